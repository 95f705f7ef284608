"""Federated evaluation on the clients (``train.evaluate: clients | both``): the pooled counts against a
hand-computed case, each client's held-out rows (``data.client_test_fraction``), the skip of a client whose
budget cannot hold an evaluation, the inference term of the cost model, a simulator run whose aggregate is
recomputed from its per-client records, and the Flower path (ServerApp, codec, ClientApp handlers) giving the
simulator's per-round figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from conftest import FAST, interrupted_at_round
from fedpilot.config import TrainSettings, parse_config
from fedpilot.core.errors import ConfigError, FedpilotError
from fedpilot.data.partition import client_test_split
from fedpilot.planning.costmodel import CostModel, usable
from fedpilot.runtime.client_evaluation import EvalCounts, pooled, pooled_metrics
from fedpilot.runtime.messages import ClientEvaluation, EvaluateTask, Failure
from fedpilot.runtime.server import Server
from fedpilot.strategies import STRATEGIES, ClientInfo, FederationContext

ROOT = Path(__file__).resolve().parents[1]


# -- the pooled counts -----------------------------------------------------------------------------------
def test_two_clients_pool_to_the_metrics_of_their_union_computed_by_hand() -> None:
    """Client A: 3 rows, labels (0, 1, 1) predicted (0, 1, 0), summed loss 1.5; client B: 1 row, label 2
    predicted 1, loss 2.5. Union: 4 rows, 2 right: accuracy 1/2. F1 per label (2 TP / (true + predicted)):
    label 0: 2*1/(1+2) = 2/3; label 1: 2*1/(2+2) = 1/2; label 2: 0/(1+0) = 0; macro-F1 = (2/3 + 1/2 + 0) / 3
    = 7/18. Loss: (1.5 + 2.5) / 4 = 1.0, not the clients' unweighted mean (0.5 + 2.5) / 2 = 1.5."""
    a = EvalCounts.from_predictions(np.array([0, 1, 0]), np.array([0, 1, 1]), 1.5, num_labels=3)
    b = EvalCounts.from_predictions(np.array([1]), np.array([2]), 2.5, num_labels=3)
    assert a == EvalCounts(3, 1.5, (1, 2, 0), (2, 1, 0), (1, 1, 0))
    assert b == EvalCounts(1, 2.5, (0, 0, 1), (0, 1, 0), (0, 0, 0))
    metrics = pooled_metrics([a, b])
    assert metrics == {"accuracy": 0.5, "macro_f1": pytest.approx(7 / 18, abs=1e-15), "loss": 1.0, "eval_samples": 4, "eval_clients": 2}
    assert a.metrics() == {"accuracy": pytest.approx(2 / 3), "macro_f1": pytest.approx((2 / 3 + 2 / 3) / 2), "loss": 0.5}
    # scikit-learn on the union of the rows agrees (it averages over the labels present, true or predicted)
    union_true, union_pred = np.array([0, 1, 1, 2]), np.array([0, 1, 0, 1])
    assert metrics["macro_f1"] == pytest.approx(f1_score(union_true, union_pred, average="macro", zero_division=0), abs=1e-15)


def test_pooled_counts_equal_counts_of_the_union_on_random_splits() -> None:
    """Counts add: for random predictions split over random clients, the pooled metrics are those of the union."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        labels, predicted = rng.integers(0, 5, 60), rng.integers(0, 5, 60)
        losses = rng.random(60)
        cuts = np.sort(rng.choice(np.arange(1, 60), size=3, replace=False))
        parts = [EvalCounts.from_predictions(p, t, float(l.sum()), 5)
                 for p, t, l in zip(np.split(predicted, cuts), np.split(labels, cuts), np.split(losses, cuts))]
        metrics = pooled_metrics(parts)
        assert metrics["accuracy"] == pytest.approx(float((predicted == labels).mean()), abs=1e-15)
        assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro", zero_division=0), abs=1e-12)
        assert metrics["loss"] == pytest.approx(losses.sum() / 60, abs=1e-12)


def test_counts_of_different_label_sets_are_refused_and_no_counts_pool_to_nothing() -> None:
    with pytest.raises(ValueError, match="different label sets"):
        pooled([EvalCounts(1, 0.1, (1, 0), (1, 0), (1, 0)), EvalCounts(1, 0.1, (1, 0, 0), (1, 0, 0), (1, 0, 0))])
    assert pooled([]) is None and pooled_metrics([]) == {}


@pytest.mark.parametrize(
    ("counts", "problem"),
    [
        (EvalCounts(2, 0.5, (1, 1), (2, 0), (1, 0)), None),
        (EvalCounts(2, 0.5, (1, 1, 0), (2, 0, 0), (1, 0, 0)), "counts of [3] labels, expected 2"),
        (EvalCounts(2, 0.5, (1, 1), (1, 0), (1, 0)), "per-label counts sum to 2 true and 1 predicted"),
        (EvalCounts(2, 0.5, (1, 1), (2, 0), (2, 0)), "more rows right than true or predicted"),
        (EvalCounts(2, float("nan"), (1, 1), (2, 0), (1, 0)), "not a finite non-negative number"),
        (EvalCounts(0, 0.0, (0, 0), (0, 0), (0, 0)), "no rows evaluated"),
        (EvalCounts(2, 0.5, (3, -1), (2, 0), (0, 0)), "negative"),
    ],
)
def test_counts_that_no_evaluation_can_give_are_named(counts: EvalCounts, problem: str | None) -> None:
    found = counts.problem(num_labels=2)
    assert found == problem if problem is None else problem in found


# -- each client's held-out rows ------------------------------------------------------------------------
def test_a_shard_splits_deterministically_disjoint_stratified_and_whole() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    shard = np.sort(rng.choice(500, size=97, replace=False))
    train, test = client_test_split(shard, labels, 0.2, seed=7, cid=3)
    again = client_test_split(shard, labels, 0.2, seed=7, cid=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert len(test) == math.ceil(0.2 * 97) and not set(train) & set(test)
    assert np.array_equal(np.sort(np.concatenate([train, test])), shard)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    # stratified: each label's held-out count is its share of the 20 rows, rounded down or up
    for label in range(4):
        share = (labels[shard] == label).sum() * len(test) / len(shard)
        assert math.floor(share) <= (labels[test] == label).sum() <= math.ceil(share)
    other_client = client_test_split(shard, labels, 0.2, seed=7, cid=4)[1]
    other_seed = client_test_split(shard, labels, 0.2, seed=8, cid=3)[1]
    assert not np.array_equal(test, other_client) and not np.array_equal(test, other_seed)
    assert len(client_test_split(np.arange(30), labels, 0.1, 0, 0)[1]) == 3  # 0.1 x 30 is 3.0000000000000004 in floats


def test_a_fraction_that_leaves_a_client_no_training_or_no_held_out_row_is_a_config_error() -> None:
    labels = np.zeros(10, dtype=np.int64)
    with pytest.raises(ConfigError, match=r"client 2's 1 row\(s\) holds out 1 and leaves 0 to train on"):
        client_test_split(np.array([4]), labels, 0.5, 0, 2)
    with pytest.raises(ConfigError, match="holds out 0 and leaves 0"):
        client_test_split(np.array([], dtype=np.int64), labels, 0.5, 0, 0)
    train, test = client_test_split(np.array([1, 2]), labels, 0.01, 0, 0)  # at least one row each side
    assert len(train) == len(test) == 1


def test_without_a_fraction_the_federation_keeps_its_shards_and_with_one_splits_them(fast_config) -> None:
    """``client_test_fraction: null`` leaves every client's rows exactly the partition's shard, no held-out rows."""
    from fedpilot.data.partition import partition_indices
    from fedpilot.federation import client_rows

    labels = np.random.default_rng(1).integers(0, 5, 200)
    shards = partition_indices(labels, 3, fast_config.data.partition, fast_config.seed)
    for cid, shard in enumerate(shards):
        train, test = client_rows(fast_config, labels, shard, cid)
        assert train is shard and test is None
    split = parse_config({**FAST, "data": {**FAST["data"], "client_test_fraction": 0.25}})
    for cid, shard in enumerate(shards):
        train, test = client_rows(split, labels, shard, cid)
        assert np.array_equal(np.sort(np.concatenate([train, test])), shard) and len(test) == math.ceil(0.25 * len(shard))


# -- the config --------------------------------------------------------------------------------------------
def test_evaluate_settings_are_checked_with_one_line() -> None:
    config = parse_config({"train": {"evaluate": "clients"}, "data": {"client_test_fraction": 0.2}})
    assert (config.train.evaluate, config.data.client_test_fraction, config.train.client_batch_size()) == ("clients", 0.2, 16)
    assert parse_config({}).train.evaluate == "server" and parse_config({}).data.client_test_fraction is None
    assert parse_config({"train": {"client_eval_batch_size": 4}}).train.client_batch_size() == 4
    with pytest.raises(ConfigError, match=r"train.evaluate: clients needs held-out rows on every client; set data.client_test_fraction"):
        parse_config({"train": {"evaluate": "clients"}})
    with pytest.raises(ConfigError, match="train.evaluate: both needs held-out rows"):
        parse_config({"train": {"evaluate": "both"}})
    with pytest.raises(ConfigError, match="data.client_test_fraction"):
        parse_config({"data": {"client_test_fraction": 1.0}})
    with pytest.raises(ConfigError, match="train.evaluate"):
        parse_config({"train": {"evaluate": "nobody"}})
    instruction = {"task": "instruction", "model": {"name": "smollm2-135m-instruct"}, "data": {"dataset": "bbc-headlines", "client_test_fraction": 0.2}}
    assert parse_config(instruction).train.evaluate == "server"
    with pytest.raises(ConfigError, match="train.evaluate: clients pools classification counts; task: instruction is evaluated by the server only"):
        parse_config({**instruction, "train": {"evaluate": "clients"}})


def test_the_cli_refuses_evaluate_clients_without_held_out_rows_and_a_fraction_no_shard_can_take(tmp_path: Path) -> None:
    """Exit code 2 and one line: at load time without client_test_fraction; after partitioning when a client's
    shard cannot give one row to each side."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**FAST, "train": {**FAST["train"], "evaluate": "clients"}}))
    proc = subprocess.run([sys.executable, "-m", "fedpilot", "run", "--config", str(bad), "--out", str(tmp_path / "a")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "set data.client_test_fraction" in proc.stderr
    huge = tmp_path / "huge.yaml"  # 0.99 of a shard of 5 or more rows holds every row out
    huge.write_text(json.dumps({**FAST, "data": {**FAST["data"], "client_test_fraction": 0.99}, "train": {**FAST["train"], "evaluate": "clients"}}))
    proc = subprocess.run([sys.executable, "-m", "fedpilot", "run", "--config", str(huge), "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "data.client_test_fraction: 0.99 of client 0's" in lines[0] and "leaves 0 to train on" in lines[0]


# -- the server's evaluation phase (no torch) ---------------------------------------------------------------
LAYERS, TARGETS, RANK = 2, ("q", "v"), 2
MODULES = [f"{layer}.{t}" for layer in range(LAYERS) for t in TARGETS]
COSTS = CostModel(fixed=1000, activation=(300, 100), module={m: 40 for m in MODULES}, rank=RANK, rank_bytes={m: 5 for m in MODULES},
                  settings={"device": "cpu"}, inference_fixed=900, inference_row=50)


class CountingTransport:
    """Clients answer each evaluate task with fixed counts (and a measured peak); ``silent`` ones fail."""

    def __init__(self, counts: dict[int, EvalCounts], peaks: dict[int, int], silent: frozenset[int] = frozenset()) -> None:
        self.counts, self.peaks, self.silent, self.asked = counts, peaks, silent, []

    def evaluate(self, server_round, tasks: list[EvaluateTask]):
        self.asked.append([t.cid for t in tasks])
        return [Failure(t.cid, "silent") if t.cid in self.silent else
                ClientEvaluation(t.cid, self.counts[t.cid], {"batch_rows": min(t.instructions.batch_size, self.counts[t.cid].rows), "peak_bytes": self.peaks[t.cid]})
                for t in tasks]


def evaluating_server(clients: list[ClientInfo], batch_size: int = 4) -> Server:
    keys = {m: [f"{m}/lora_A", f"{m}/lora_B"] for m in MODULES} | {"head": ["head/w"]}
    shapes = {k: ((RANK, 3) if k.endswith("lora_A") else (3, RANK) if k.endswith("lora_B") else (2, 3)) for ks in keys.values() for k in ks}
    ctx = FederationContext(MODULES, keys, shapes, LAYERS, RANK, COSTS, memory_margin=0.01, seed=0)
    tensors = {k: np.zeros(shape, dtype=np.float32) for k, shape in shapes.items()}
    return Server(STRATEGIES["fedavg"](ctx), clients, tensors, TrainSettings(), seed=0, evaluate="clients",
                  client_eval_batch_size=batch_size, num_labels=3)


def test_a_client_whose_budget_cannot_hold_an_evaluation_is_skipped_with_the_reason_and_left_out_of_the_aggregate() -> None:
    """Client 1's budget is below the predicted pass (900 + 4 rows x 50 = 1100 bytes > usable(1050)): it is not
    asked, its record says why, and the pooled metrics are client 0's and 2's alone. Client 2's measured peak
    exceeds its budget: a budget violation of phase evaluation (it still counts: it answered)."""
    a = EvalCounts(3, 1.5, (1, 2, 0), (2, 1, 0), (1, 1, 0))
    b = EvalCounts(5, 99.0, (5, 0, 0), (5, 0, 0), (5, 0, 0))  # would move every figure if it were pooled
    c = EvalCounts(1, 2.5, (0, 0, 1), (0, 1, 0), (0, 0, 0))
    clients = [ClientInfo(0, 10, 2000, num_test_samples=3), ClientInfo(1, 10, 1050, num_test_samples=5), ClientInfo(2, 10, 1200, num_test_samples=1)]
    server = evaluating_server(clients)
    transport = CountingTransport({0: a, 1: b, 2: c}, {0: 1040, 1: 0, 2: 1250})
    phase = server.evaluate_clients(1, clients, transport)
    assert transport.asked == [[0, 2]]
    records = {r["cid"]: r for r in phase.records}
    assert records[1]["skipped"] == "predicted evaluation peak 0.0 MiB exceeds the usable budget 0.0 MiB"
    assert records[1]["predicted_bytes"] == 1100 > usable(1050, 0.01) and "accuracy" not in records[1]
    assert records[0]["predicted_bytes"] == 900 + 3 * 50 and records[2]["predicted_bytes"] == 900 + 1 * 50
    assert phase.metrics == pooled_metrics([a, c]) and phase.metrics["eval_clients"] == 2 and phase.metrics["eval_samples"] == 4
    assert (records[0]["accuracy"], records[0]["loss"], records[0]["rows"]) == (pytest.approx(2 / 3), 0.5, 3)
    assert [(v["cid"], v["phase"]) for v in phase.violations] == [(2, "evaluation")] and records[2]["over_budget"]
    assert not phase.failures


def test_a_failed_or_impossible_evaluation_is_a_recorded_failure_never_pooled() -> None:
    good = EvalCounts(3, 1.5, (1, 2, 0), (2, 1, 0), (1, 1, 0))
    wrong_rows = EvalCounts(2, 1.0, (1, 1, 0), (1, 1, 0), (1, 1, 0))  # the client holds 3 rows
    clients = [ClientInfo(cid, 10, None, num_test_samples=3) for cid in range(3)]
    server = evaluating_server(clients)
    phase = server.evaluate_clients(2, clients, CountingTransport({0: good, 1: wrong_rows, 2: good}, {0: 1, 1: 1, 2: 1}, silent=frozenset({2})))
    reasons = {f["cid"]: f["reason"] for f in phase.failures}
    assert reasons == {1: "evaluation rejected: it evaluated 2 rows and holds 3", 2: "silent"}
    assert all(f["phase"] == "evaluation" for f in phase.failures)
    assert [r["cid"] for r in phase.records] == [0] and phase.metrics == pooled_metrics([good])


def test_a_round_on_the_clients_takes_the_pooled_metrics_as_its_headline_and_both_keeps_the_servers() -> None:
    """With clients the round's accuracy, macro_f1 and loss are the pooled ones; with both the server's stay
    and the pooled ones come under clients_ keys; the sampled clients evaluate, after aggregation."""
    from test_flower_planning import EchoTransport

    a, c = EvalCounts(3, 1.5, (1, 2, 0), (2, 1, 0), (1, 1, 0)), EvalCounts(1, 2.5, (0, 0, 1), (0, 1, 0), (0, 0, 0))
    clients = [ClientInfo(0, 10, None, num_test_samples=3), ClientInfo(1, 10, None, num_test_samples=1)]

    class Both(EchoTransport, CountingTransport):
        def __init__(self, ctx):
            EchoTransport.__init__(self, ctx)
            CountingTransport.__init__(self, {0: a, 1: c}, {0: 1, 1: 1})

    server = evaluating_server(clients)
    result = server.run_round(1, Both(server.context))
    assert result.metrics == pooled_metrics([a, c]) and server.last_metrics == result.metrics
    assert [r["cid"] for r in result.client_evaluations] == [0, 1]
    server.evaluate_mode, server.evaluator = "both", lambda tensors, subset=False: {"accuracy": 0.125, "loss": 9.0}
    result = server.run_round(2, Both(server.context))
    assert result.metrics == {"accuracy": 0.125, "loss": 9.0, **{f"clients_{k}": v for k, v in pooled_metrics([a, c]).items()}}


# -- the cost model's inference term ---------------------------------------------------------------------
def test_the_inference_term_prices_an_evaluation_pass_and_old_cost_models_load_without_it() -> None:
    assert COSTS.inference(4) == 1100 and COSTS.prices_inference
    assert CostModel.from_dict(COSTS.to_dict()) == COSTS
    old = {k: v for k, v in COSTS.to_dict().items() if not k.startswith("inference")}  # a cache file of before
    loaded = CostModel.from_dict(old)
    assert loaded.inference(4) is None and not loaded.prices_inference and loaded == COSTS.without_inference()
    assert "inference_fixed" not in COSTS.without_inference().to_dict()
    with pytest.raises(ValueError, match="come together"):
        replace(COSTS, inference_row=None)


def test_calibration_adds_the_inference_term_to_a_cached_model_and_predicts_the_measured_pass(fast_config, fast_data, fast_model) -> None:
    """A cached calibration without the inference terms gets them added (the other terms unchanged); the
    term is exact at the calibration batch and predicts a client's measured pass at other batch rows."""
    import fedpilot.memory.calibrate as calibrate
    from fedpilot.runtime.client import Client, StepPeaks
    from fedpilot.runtime.messages import EvaluateInstructions, TrainInstructions

    batch = fast_data.train.subset(np.arange(fast_config.train.batch_size))
    instructions = TrainInstructions.from_settings(fast_config.train, fast_config.seed)
    plain, _ = calibrate.load_or_calibrate(fast_model, batch, instructions)
    assert not plain.prices_inference
    priced, _ = calibrate.load_or_calibrate(fast_model, batch, instructions, inference=True)
    assert priced.without_inference() == plain and priced.prices_inference
    again, cached = calibrate.load_or_calibrate(fast_model, batch, instructions, inference=True)
    assert cached and again == priced
    assert calibrate.load_or_calibrate(fast_model, batch, instructions)[0] == plain  # a server run: no inference term
    for rows in (3, 8):
        client = Client(0, fast_model, fast_data.train.subset(np.arange(8, 20)), StepPeaks(), fast_data.train.subset(np.arange(20, 20 + rows)))
        _, metrics = client.evaluate(fast_model.state(), EvaluateInstructions(batch_size=8))
        assert metrics["batch_rows"] == rows
        assert abs(priced.inference(rows) - metrics["peak_bytes"]) <= 0.02 * metrics["peak_bytes"], (rows, priced.inference(rows), metrics)


def test_a_clients_evaluation_is_the_servers_evaluation_of_its_rows(fast_config, fast_data, fast_model) -> None:
    """The counts a client reports give the metrics the server's evaluator gives on the same rows."""
    from fedpilot.runtime.client import Client
    from fedpilot.runtime.evaluation import evaluate
    from fedpilot.runtime.messages import EvaluateInstructions

    rng = np.random.default_rng(0)
    tensors = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in fast_model.state().items()}
    rows = fast_data.test.subset(np.arange(21))
    counts, _ = Client(0, fast_model, fast_data.train, None, rows).evaluate(tensors, EvaluateInstructions(batch_size=8))
    central = evaluate(fast_model, tensors, rows, 8)
    assert counts.rows == 21 and counts.metrics() == {k: central[k] for k in ("accuracy", "macro_f1", "loss")}
    with pytest.raises(ValueError, match="holds no rows to evaluate on"):
        Client(1, fast_model, fast_data.train).evaluate(tensors, EvaluateInstructions(batch_size=8))


# -- whole runs ----------------------------------------------------------------------------------------------
def clients_settings(evaluate: str = "clients", out: Path | None = None) -> dict:
    settings = json.loads(json.dumps(FAST))
    settings["data"]["client_test_fraction"] = 0.25
    settings["train"]["evaluate"] = evaluate
    if out is not None:
        settings["output_dir"] = str(out)
    return settings


@pytest.fixture(scope="module")
def simulated_clients(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from fedpilot.simulation import run_simulation

    out = tmp_path_factory.mktemp("clients") / "sim"
    return run_simulation(parse_config(clients_settings()), out, progress=False).results


def test_a_simulated_run_evaluated_by_its_clients_records_per_client_figures_and_their_exact_aggregate(simulated_clients) -> None:
    results = simulated_clients
    assert results["evaluated_by"] == "clients" and results["status"] == "finished"
    held = [c["num_test_samples"] for c in results["clients"]]
    assert all(n >= 1 for n in held) and results["evaluated_label_counts"] == np.sum([c["test_label_counts"] for c in results["clients"]], axis=0).tolist()
    for record in results["rounds"]:
        evaluations = record["client_evaluations"]
        asked = [e for e in evaluations if "skipped" not in e]
        assert [e["cid"] for e in evaluations] == (sorted(c["cid"] for c in results["clients"]) if record["round"] == 0 else record["selected"])
        assert asked and all(e["rows"] == held[e["cid"]] and e["peak_bytes"] <= e["budget_bytes"] for e in asked)
        recomputed = pooled_metrics([EvalCounts.from_dict(e["counts"]) for e in asked])
        assert {k: record[k] for k in recomputed} == recomputed
        assert record["eval_samples"] == sum(e["rows"] for e in asked)
        assert record["loss"] == pytest.approx(sum(e["loss"] * e["rows"] for e in asked) / record["eval_samples"], rel=1e-12)
        assert all(e["predicted_bytes"] == pytest.approx(e["peak_bytes"], rel=0.02) for e in asked)
    assert not results["budget_violations"]


def test_resuming_a_run_evaluated_by_its_clients_ends_as_the_uninterrupted_one(
    simulated_clients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints need nothing new: a run interrupted in round 2 and resumed records the uninterrupted rounds."""
    from fedpilot.simulation import run_simulation

    with interrupted_at_round(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        run_simulation(parse_config(clients_settings()), tmp_path / "part", progress=False)
    resumed = run_simulation(None, tmp_path / "part", progress=False, resume=True).results
    assert resumed["status"] == "finished" and resumed["resumed_after_rounds"] == [1]
    keys = ("accuracy", "macro_f1", "loss", "eval_samples", "client_evaluations")
    strip = lambda rounds: [{k: (v if k != "client_evaluations" else [{**e, "seconds": 0, "peak_bytes": 0} for e in v]) for k, v in r.items() if k in keys} for r in rounds]  # noqa: E731
    assert strip(resumed["rounds"]) == strip(simulated_clients["rounds"])


def test_evaluate_both_keeps_the_servers_figures_and_adds_the_clients(simulated_clients, tmp_path: Path) -> None:
    """Server numbers with both equal those of a server run on the same rows (same client_test_fraction);
    the clients_ keys equal the clients run's pooled figures, and metrics.csv gains their columns."""
    from fedpilot.simulation import run_simulation

    both = run_simulation(parse_config(clients_settings("both")), tmp_path / "both", progress=False).results
    server = run_simulation(parse_config(clients_settings("server")), tmp_path / "server", progress=False).results
    assert both["evaluated_by"] == "both" and "evaluated_by" not in server
    assert "client_evaluations" not in server["rounds"][1] and "clients_accuracy" not in server["rounds"][1]
    for b, s, c in zip(both["rounds"], server["rounds"], simulated_clients["rounds"], strict=True):
        assert {k: b[k] for k in ("accuracy", "macro_f1", "loss")} == {k: s[k] for k in ("accuracy", "macro_f1", "loss")}
        assert {k: b[f"clients_{k}"] for k in ("accuracy", "macro_f1", "loss")} == {k: c[k] for k in ("accuracy", "macro_f1", "loss")}
    header = (tmp_path / "both" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("round,accuracy,macro_f1,loss,clients_accuracy,clients_macro_f1,clients_loss,train_loss")
    assert (tmp_path / "server" / "metrics.csv").read_text().splitlines()[0] == "round,accuracy,macro_f1,loss,train_loss,clients,upload_bytes,download_bytes,seconds"


def test_a_client_that_can_train_but_not_evaluate_is_skipped_in_every_round_of_a_run(fast_data, fast_model, tmp_path: Path) -> None:
    """Client 2 (30 held-out rows, evaluated in one batch of 30: client_eval_batch_size 64) gets a budget between
    its cheapest training step and its predicted evaluation pass: it trains every round, is skipped from every
    evaluation with the reason, and each round's aggregate is the other two clients' alone."""
    from fedpilot.memory.calibrate import load_or_calibrate
    from fedpilot.runtime.messages import TrainInstructions
    from fedpilot.simulation import run_simulation

    settings = clients_settings()
    settings["train"]["client_eval_batch_size"] = 64
    config = parse_config(settings)
    batch = fast_data.train.subset(np.arange(config.train.batch_size))
    cost = load_or_calibrate(fast_model, batch, TrainInstructions.from_settings(config.train, config.seed), inference=True)[0]
    margin, held = config.federation.memory_margin, 30
    assert cost.cheapest()[1] < cost.inference(held), "on this device the cheapest training step outgrows an evaluation pass"
    room = (cost.cheapest()[1] + cost.inference(held)) // 2
    settings["federation"]["budgets"] = [*FAST["federation"]["budgets"][:2], f"{math.ceil(room / (1 - margin))}B"]
    results = run_simulation(parse_config(settings), tmp_path / "poor", progress=False).results
    assert results["clients"][2]["num_test_samples"] == held
    for record in results["rounds"]:
        evaluations = {e["cid"]: e for e in record["client_evaluations"]}
        assert evaluations[2]["skipped"].startswith("predicted evaluation peak") and "accuracy" not in evaluations[2]
        assert evaluations[2]["predicted_bytes"] == cost.inference(held) > usable(evaluations[2]["budget_bytes"], margin)
        assert record["eval_clients"] == 2 and record["eval_samples"] == evaluations[0]["rows"] + evaluations[1]["rows"]
        assert {k: record[k] for k in ("accuracy", "loss")} == {k: v for k, v in pooled_metrics(
            [EvalCounts.from_dict(evaluations[c]["counts"]) for c in (0, 1)]).items() if k in ("accuracy", "loss")}
        if record["round"] > 0:
            assert 2 in [c["cid"] for c in record["clients"]]  # it trained


# -- Flower: the codec, the transport, then the ServerApp and ClientApp handlers in one process -------------------
@pytest.mark.usefixtures("flower_task_identity")
def test_evaluate_tasks_and_replies_round_trip_exactly() -> None:
    from fedpilot.flower import codec
    from fedpilot.runtime.messages import EvaluateInstructions
    from test_flower import same_tensors, tensors, wire

    got_tensors, instructions = codec.decode_evaluate_task(wire(codec.encode_evaluate_task(tensors(), EvaluateInstructions(batch_size=12))))
    same_tensors(got_tensors, tensors())
    assert instructions == EvaluateInstructions(batch_size=12)
    counts = EvalCounts(7, 1.2345678901234567e3 / 3, (3, 0, 4), (2, 2, 3), (2, 0, 3))
    metrics = {"batch_rows": 7, "seconds": 0.25, "peak_bytes": 2**40}
    got_counts, got_metrics = codec.decode_evaluate_reply(wire(codec.encode_evaluate_reply(counts, metrics)))
    assert got_counts == counts and got_metrics == metrics and [type(v) for v in got_metrics.values()] == [int, float, int]


@pytest.mark.usefixtures("flower_task_identity")
def test_the_flower_transport_sends_evaluate_messages_and_a_silent_or_failing_node_is_a_failure() -> None:
    from flwr.app import Message

    from fedpilot.flower import codec
    from fedpilot.flower.transport import EVALUATE_TYPE, FlowerTransport
    from fedpilot.runtime.messages import EvaluateInstructions
    from test_flower import FakeGrid, tensors

    counts = EvalCounts(2, 0.5, (1, 1), (2, 0), (1, 0))

    class EvaluatingGrid(FakeGrid):
        def answer(self, message, content):
            if self.behaviour[message.metadata.dst_node_id] != "ok":
                return super().answer(message, content)
            assert message.metadata.message_type == EVALUATE_TYPE == "evaluate"
            received, instructions = codec.decode_evaluate_task(content)
            assert instructions.batch_size == 4 and set(received) == set(tensors())
            return Message(codec.encode_evaluate_reply(counts, {"peak_bytes": 5}), reply_to=message)

    grid = EvaluatingGrid({100: "ok", 101: "silent", 102: "error"})
    transport = FlowerTransport(grid, {0: 100, 1: 101, 2: 102}, timeout=0.2, run_config="{}", poll=0.05)
    replies = transport.evaluate(3, [EvaluateTask(cid, tensors(), EvaluateInstructions(batch_size=4)) for cid in (0, 1, 2)])
    assert isinstance(replies[0], ClientEvaluation) and replies[0].counts == counts and replies[0].metrics["wire_down_bytes"] > 0
    assert replies[1] == Failure(1, "no reply within the round timeout of 0.2 s")
    assert isinstance(replies[2], Failure) and "boom" in replies[2].reason
    assert [(w["phase"], w["cid"]) for w in transport.wire_log] == [("evaluation", 0), ("evaluation", 1), ("evaluation", 2)]



class ClientAppGrid:
    """A Flower Grid whose nodes are fedpilot's real ClientApp handlers, called in this process: each message
    goes through protobuf to the handler of its type (query, train, train.score, evaluate) with the node's
    Context, and the reply back through protobuf. ``budgets``: each node's memory-budget (bytes)."""

    def __init__(self, budgets: list[int]) -> None:
        from fedpilot.flower import client_app

        self.handlers = {"query": client_app.query, "train": client_app.train, "train.score": client_app.score, "evaluate": client_app.evaluate}
        self.budgets, self.ready, self.sent = budgets, {}, 0

    def get_node_ids(self):
        return [100 + cid for cid in range(len(self.budgets))]

    def push_messages(self, messages):
        from flwr.app import Context, Message, RecordDict
        from test_flower import wire

        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message_id = f"message-{self.sent}"
            self.sent += 1
            cid = message.metadata.dst_node_id - 100
            copy = Message(wire(message.content), dst_node_id=message.metadata.dst_node_id, message_type=message.metadata.message_type)
            copy.metadata.__dict__["_message_id"] = message_id
            node_config = {"partition-id": cid, "num-partitions": len(self.budgets), "memory-budget": f"{self.budgets[cid]}B"}
            context = Context(run_id=7, node_id=message.metadata.dst_node_id, node_config=node_config, state=RecordDict(), run_config={})
            reply = self.handlers[message.metadata.message_type](copy, context)
            self.ready[message_id] = Message(wire(reply.content), reply_to=copy)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.ready.pop(i) for i in list(message_ids) if i in self.ready]


@pytest.mark.usefixtures("flower_task_identity")
def test_the_flower_path_evaluated_by_clients_gives_the_simulators_per_round_figures(simulated_clients, tmp_path: Path) -> None:
    """The ServerApp's run (query, plan, train, EVALUATE messages through the codec, ClientApp handlers on
    their nodes' shards and held-out rows) records every round's pooled and per-client figures as the simulator."""
    from fedpilot.flower.server_app import run_flower

    config = parse_config(clients_settings())
    budgets = config.federation.client_budgets()
    results = run_flower(ClientAppGrid(budgets), config, tmp_path / "flower", node_wait=1.0).results
    assert results["driver"] == "flower" and results["evaluated_by"] == "clients"
    assert [c["num_test_samples"] for c in results["clients"]] == [c["num_test_samples"] for c in simulated_clients["clients"]]
    keys = ("accuracy", "macro_f1", "loss", "eval_samples", "eval_clients")
    for flower_round, sim_round in zip(results["rounds"], simulated_clients["rounds"], strict=True):
        assert not flower_round.get("failures")
        for key in keys:
            assert flower_round[key] == pytest.approx(sim_round[key], abs=1e-6), (flower_round["round"], key)
        per_client = [(e["cid"], e["rows"], e["accuracy"], e["loss"]) for e in flower_round["client_evaluations"]]
        expected = [(e["cid"], e["rows"], e["accuracy"], e["loss"]) for e in sim_round["client_evaluations"]]
        assert [p[:3] for p in per_client] == [e[:3] for e in expected]
        assert [p[3] for p in per_client] == pytest.approx([e[3] for e in expected], abs=1e-6)
        assert all(e["cost_model"] == "own" for e in flower_round["client_evaluations"])
    assert [w["phase"] for w in results["wire"]].count("evaluation") == sum(len(r["client_evaluations"]) for r in results["rounds"])
