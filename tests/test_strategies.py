"""Every registered strategy on the same tiny heterogeneous federation (conftest's FAST: a tiny random BERT with
MiniLM's tokenizer, on real data), and ``fedpilot plan`` on the real model."""

from __future__ import annotations

import math

import pytest

from fedpilot.config import Config, FederationSettings
from fedpilot.federation import RunResult
from fedpilot.planning.costmodel import CostModel
from fedpilot.simulation import run_simulation
from fedpilot.strategies import STRATEGIES, accepted_options

MEMORY_AWARE = sorted(name for name, strategy in STRATEGIES.items() if strategy.capabilities.memory_aware)
MEMORY_UNAWARE = sorted(set(STRATEGIES) - set(MEMORY_AWARE))


def layers(cost_model: CostModel) -> int:
    return 1 + max(int(m.split(".")[0]) for m in cost_model.module)


def tiered_budgets(cost_model: CostModel) -> tuple[int, int, int]:
    """Client 0 fits only the top layer, client 1 the top half, client 2 full LoRA (the allocator's margin included)."""
    margin = FederationSettings().memory_margin
    n = layers(cost_model)
    top = [m for m in cost_model.module if int(m.split(".")[0]) == n - 1]
    upper = [m for m in cost_model.module if int(m.split(".")[0]) >= n // 2]
    return tuple(math.ceil(cost_model.cost(s) / (1 - margin)) + 1 for s in (top, upper, list(cost_model.module)))


@pytest.fixture(scope="module")
def runs(fast_config: Config, fast_cost_model: CostModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    federation = fast_config.federation.model_copy(update={"budgets": tiered_budgets(fast_cost_model)})
    out = tmp_path_factory.mktemp("strategies")
    return {
        name: run_simulation(fast_config.model_copy(update={"strategy": name, "federation": federation}), out / name, progress=False)
        for name in sorted(STRATEGIES)
    }


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_runs_and_learns(runs: dict[str, RunResult], name: str) -> None:
    rounds = runs[name].rounds
    assert runs[name].results["status"] == "finished" and len(rounds) == 3
    assert rounds[-1]["loss"] < rounds[0]["loss"]


def test_memory_awareness_is_declared_as_documented() -> None:
    assert {"exclusive", "fedpilot", "fedpilot-noig", "fedpilot-nostagg"} <= set(MEMORY_AWARE)
    assert {"fedavg", "fedpilot-additive"} <= set(MEMORY_UNAWARE)


@pytest.mark.parametrize("name", MEMORY_AWARE)
def test_memory_aware_strategies_keep_every_client_within_budget(runs: dict[str, RunResult], name: str) -> None:
    results = runs[name].results
    assert results["budget_violations"] == []
    for record in (c for r in results["rounds"][1:] for c in [*r["clients"], *r["scoring"]]):
        assert record["peak_bytes"] <= record["budget_bytes"]


def test_fedpilot_lets_every_client_train_what_fits(runs: dict[str, RunResult], fast_cost_model: CostModel) -> None:
    """At the whole batch (fedpilot-nomicro) the poorest client affords the top layer only; fedpilot's planned
    micro-batches buy it more of the model, within the same budget."""
    budgets = tiered_budgets(fast_cost_model)
    top = layers(fast_cost_model) - 1
    trained = {}
    for name in ("fedpilot-nomicro", "fedpilot"):
        for record in runs[name].rounds[1]["clients"]:
            assert record["predicted_bytes"] <= budgets[record["cid"]]
        trained[name] = {c["cid"]: (set(c["modules"]), c.get("micro_batch", 0)) for c in runs[name].rounds[1]["clients"]}
        assert set(trained[name]) == {0, 1, 2} and len(trained[name][2][0]) == len(fast_cost_model.module)
        assert runs[name].rounds[1]["scoring"], "round 1 scores modules before allocating"
    assert trained["fedpilot-nomicro"][0] == ({f"{top}.query", f"{top}.value"}, 0)
    modules, micro = trained["fedpilot"][0]
    assert micro > 0 and modules > {f"{top}.query", f"{top}.value"}


def test_each_round_records_who_trained_each_module_and_how_far_it_moved(runs: dict[str, RunResult]) -> None:
    for r in runs["fedpilot"].rounds[1:]:
        counts = {m: sum(m in c["modules"] for c in r["clients"]) for m in runs["fedpilot"].results["modules"]}
        assert {m: u["trainers"] for m, u in r["module_updates"].items() if m != "head"} == counts
        assert r["module_updates"]["head"]["trainers"] == len(r["clients"])
        assert all(u["change"] > 0 and u["norm"] > 0 for u in r["module_updates"].values() if u["trainers"])
    assert {u["trainers"] for r in runs["exclusive"].rounds[1:] for u in r["module_updates"].values()} == {1}


def test_exclusive_leaves_out_clients_that_cannot_fit_full_lora(runs: dict[str, RunResult]) -> None:
    for r in runs["exclusive"].rounds[1:]:
        assert [c["cid"] for c in r["clients"]] == [2]


@pytest.mark.parametrize("name", MEMORY_UNAWARE)
def test_memory_unaware_planning_overruns_budgets_and_says_so(runs: dict[str, RunResult], name: str) -> None:
    violations = runs[name].results["budget_violations"]
    assert {v["cid"] for v in violations} >= {0}
    assert all(v["peak_bytes"] > v["budget_bytes"] for v in violations)


def test_plan_shows_each_clients_allocation_before_training(tiny_config: Config, tiny_cost_model: CostModel, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import yaml

    from fedpilot.cli import main
    from tests.conftest import TINY

    budgets = [b >> 20 for b in tiered_budgets(tiny_cost_model)]
    config = {**TINY, "federation": {**TINY["federation"], "budgets": [f"{b + 1}MiB" for b in budgets]},
              "strategy_options": {"micro_batching": "off"}}  # at the whole batch: the budgets are sized for it
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["plan", "--config", str(tmp_path / "c.yaml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [c["cid"] for c in plan["clients"]] == [0, 1, 2]
    for client in plan["clients"]:
        assert client["predicted_bytes"] <= client["budget_bytes"] and client["value"] > 0
    assert len(plan["clients"][2]["modules"]) == 12 > len(plan["clients"][0]["modules"])
    assert main(["plan", "--config", str(tmp_path / "c.yaml")]) == 0
    text = capsys.readouterr().out
    assert "layer" in text and "budget" in text and "needs" in text and "    5 " in text


def unread_options(name: str) -> set[str]:
    """The options ``name`` accepts (its Options model) but never reads (its capabilities' ``options``)."""
    strategy = STRATEGIES[name]
    return set(strategy.Options.model_fields) - accepted_options(strategy)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_options_a_strategy_reads_are_options_of_the_strategy(name: str) -> None:
    strategy = STRATEGIES[name]
    assert accepted_options(strategy) <= set(strategy.Options.model_fields)


INERT_CHANGES = [  # every option a strategy accepts but does not read, set to another valid value
    ("fedpilot-noig", {"ig_weight": 0.9, "refresh_rounds": 1, "score_batches": 1, "global_decay": 0.1,
                       "local_term": "per-module", "global_term": "coverage", "local_scope": "client", "score_loss": "trained"}),
    ("fedpilot-nostagg", {"compensation": 0.9, "history_decay": 0.1, "staleness_horizon": 1, "dwa_temperature": 0.1}),
    ("fedpilot-nostagg", {"stagg": "memory", "memory_horizon": 1}),
    ("fedpilot-nostagg", {"spatial": "trainers"}),
    ("fedpilot-nomicro", {"micro_batching": "planned"}),
]


def test_every_inert_option_is_checked_below() -> None:
    checked: dict[str, set[str]] = {}
    for name, changes in INERT_CHANGES:
        checked.setdefault(name, set()).update(changes)
    assert checked == {name: unread_options(name) for name in STRATEGIES if unread_options(name)}


def deciding_budgets(cost_model: CostModel) -> tuple[int, int, int]:
    """Budgets where module values decide: client 0 affords the top layer and one of the next layer's query /
    value (same cost), client 1 the top two layers and one module of the third, client 2 everything."""
    margin = FederationSettings().memory_margin
    t = layers(cost_model) - 1
    sets = ([f"{t}.query", f"{t}.value", f"{t - 1}.query"], [f"{t}.query", f"{t}.value", f"{t - 1}.query", f"{t - 1}.value", f"{t - 2}.query"],
            list(cost_model.module))
    return tuple(math.ceil(cost_model.cost(s) / (1 - margin)) + 1 for s in sets)


@pytest.fixture(scope="module")
def inert_runs(fast_config: Config, fast_cost_model: CostModel, tmp_path_factory: pytest.TempPathFactory):
    """(strategy, options) -> (allocations, losses) of a 2-round run on deciding budgets, each made once
    (one local step a round: what is compared is which modules train and how updates are aggregated)."""
    federation = fast_config.federation.model_copy(update={"budgets": deciding_budgets(fast_cost_model)})
    train = fast_config.train.model_copy(update={"local_steps": 1})
    made: dict[tuple[str, str], tuple[list, list]] = {}

    def run(name: str, options: dict) -> tuple[list, list]:
        options = {"micro_batching": "off", **options}  # the budgets decide values at the whole batch
        key = (name, repr(sorted(options.items())))
        if key not in made:
            config = fast_config.model_copy(update={"strategy": name, "federation": federation, "train": train, "strategy_options": options})
            rounds = run_simulation(config, tmp_path_factory.mktemp("inert"), progress=False).rounds
            made[key] = ([[(c["cid"], c["modules"]) for c in r["clients"]] for r in rounds], [r["loss"] for r in rounds])
        return made[key]

    return run


@pytest.mark.parametrize(("name", "changes"), INERT_CHANGES, ids=lambda x: x if isinstance(x, str) else ",".join(x))
def test_a_strategy_ignores_the_options_it_does_not_read(name: str, changes: dict, inert_runs) -> None:
    """What `fedpilot compare` relies on to keep a finished run made under other values of them: the same
    allocations and the same model, every round, where the same change does move `fedpilot` itself."""
    assert inert_runs(name, changes) == inert_runs(name, {})
    assert inert_runs("fedpilot", changes) != inert_runs("fedpilot", {})  # the check can fail: these options matter there
