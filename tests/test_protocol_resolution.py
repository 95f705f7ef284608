"""Can a comparison rank its strategies? The last-K end point, the resolution (standard error of the
seed-paired difference), the sanity order and the verdict, exactly against numpy on hand-made records;
and the protocol levels that use them."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

from fedpilot.comparison import (
    RESOLUTION_LIMIT,
    assess,
    assess_summary,
    late_accuracy,
    paired_difference,
    render_markdown,
    resolution_lines,
    sanity_order,
    summarise,
)
from fedpilot.comparison.plan import PlannedRun
from fedpilot.comparison.resolution import resolution
from fedpilot.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]

# last-K accuracies by strategy and seed (seed 3 of fedpilot has no partner in the others)
LATE = {
    "fedavg": {0: 0.80, 1: 0.74, 2: 0.77},
    "exclusive": {0: 0.70, 1: 0.69, 2: 0.66},
    "fedpilot": {0: 0.78, 1: 0.75, 2: 0.74, 3: 0.10},
}
AWARE = {"fedavg": False, "exclusive": True, "fedpilot": True}


def se(diffs) -> float:
    diffs = np.asarray(diffs, dtype=float)
    return float(diffs.std(ddof=1) / np.sqrt(len(diffs)))


def rounds(*accuracies):
    return [{"round": i, "accuracy": a} for i, a in enumerate(accuracies)]


def test_the_late_accuracy_is_the_mean_of_the_last_k_evaluated_rounds() -> None:
    curve = rounds(0.1, 0.5, 0.55, 0.6, None, 0.7, 0.9, 0.8)  # round 0 never counts; unevaluated rounds are passed over
    assert late_accuracy(curve) == pytest.approx(np.mean([0.5, 0.55, 0.6, 0.7, 0.9, 0.8][-5:]))  # the default: 5
    assert late_accuracy(curve, 3) == pytest.approx(np.mean([0.7, 0.9, 0.8]))
    assert late_accuracy(curve, 10) == pytest.approx(np.mean([0.5, 0.55, 0.6, 0.7, 0.9, 0.8]))  # fewer evaluated: all of them
    with pytest.raises(ValueError, match="at least 1"):
        late_accuracy(curve, 0)


def test_the_paired_difference_and_its_standard_error_match_numpy() -> None:
    diff = paired_difference(LATE["fedpilot"], LATE["exclusive"])
    expected = np.array([0.78 - 0.70, 0.75 - 0.69, 0.74 - 0.66])
    assert diff["seeds"] == [0, 1, 2]  # seed 3 is fedpilot's alone: never paired
    assert np.allclose(diff["diffs"], expected)
    assert diff["mean"] == pytest.approx(expected.mean()) and diff["se"] == pytest.approx(se(expected))
    one = paired_difference({0: 0.5}, {0: 0.4, 1: 0.3})
    assert one["mean"] == pytest.approx(0.1) and one["se"] is None  # one seed: no spread to estimate
    assert paired_difference({0: 0.5}, {1: 0.4}) == {"seeds": [], "diffs": [], "mean": None, "se": None}


def test_the_resolution_is_the_median_standard_error_over_every_pair() -> None:
    measured = resolution(LATE)
    names = list(LATE)
    brute = []
    for a, b in itertools.combinations(names, 2):
        seeds = sorted(set(LATE[a]) & set(LATE[b]))
        brute.append(se([LATE[a][s] - LATE[b][s] for s in seeds]))
    assert [(p["a"], p["b"]) for p in measured["pairs"]] == list(itertools.combinations(names, 2))
    assert [p["se"] for p in measured["pairs"]] == pytest.approx(brute)
    assert measured["median_se"] == pytest.approx(float(np.median(brute)))
    four = {**LATE, "flexlora": {0: 0.71, 1: 0.73, 2: 0.70}}  # six pairs: the median of an even count is the mean of the middle two
    errors = [se([four[a][s] - four[b][s] for s in sorted(set(four[a]) & set(four[b]))]) for a, b in itertools.combinations(four, 2)]
    assert resolution(four)["median_se"] == pytest.approx(float(np.median(errors)))


def test_the_sanity_order_holds_within_one_standard_error_and_fails_beyond() -> None:
    held = sanity_order(LATE, AWARE, exclusive_below=True)
    # fedavg - fedpilot = 0.02, -0.01, 0.03: mean 0.0133 >= -SE; fedavg - exclusive = 0.10, 0.05, 0.11 (mean 0.0867)
    # is above max(2 SE, 0.01) = 2 x 0.0186
    assert held["ok"] and held["problems"] == []
    bar = next(c["bar"] for c in held["checks"] if c["check"] == "exclusive_below")
    assert bar == pytest.approx(max(2 * se([0.10, 0.05, 0.11]), RESOLUTION_LIMIT))
    # fedpilot above fedavg by 0.02 on every seed but one: the mean is beyond one standard error -> the order fails
    above = {**LATE, "fedpilot": {0: 0.82, 1: 0.77, 2: 0.78}}
    diffs = np.array([0.80 - 0.82, 0.74 - 0.77, 0.77 - 0.78])
    assert diffs.mean() < -se(diffs)
    failed = sanity_order(above, AWARE)
    assert not failed["ok"] and "`fedavg` is below `fedpilot`" in failed["problems"][0]
    # within one standard error (noisy pairs): the order holds
    near = {**LATE, "fedpilot": {0: 0.85, 1: 0.70, 2: 0.79}}
    diffs = np.array([0.80 - 0.85, 0.74 - 0.70, 0.77 - 0.79])
    assert -se(diffs) <= diffs.mean() < 0
    assert sanity_order(near, AWARE)["ok"]
    # memory-unaware strategies other than fedavg are never held to the ceiling
    assert sanity_order({**above, "flora": {0: 0.99, 1: 0.99, 2: 0.99}}, {**AWARE, "flora": False})["problems"] == failed["problems"]


def test_exclusive_must_be_clearly_below_the_ceiling_only_where_the_level_says_so() -> None:
    close = {**LATE, "exclusive": {0: 0.79, 1: 0.74, 2: 0.76}}  # fedavg - exclusive = 0.01, 0.00, 0.01: mean 0.0067 < 0.01
    assert sanity_order(close, AWARE)["ok"]
    marked = sanity_order(close, AWARE, exclusive_below=True)
    assert not marked["ok"] and "`exclusive` is not clearly below `fedavg`" in marked["problems"][0]
    assert "not run" in sanity_order({k: v for k, v in LATE.items() if k != "exclusive"}, AWARE, exclusive_below=True)["problems"][0]
    assert "`fedavg` was not run" in sanity_order({"fedpilot": LATE["fedpilot"]}, AWARE)["problems"][0]
    one_seed = {s: {0: v[0]} for s, v in LATE.items()}
    assert "fewer than two seeds" in sanity_order(one_seed, AWARE)["problems"][0]


def test_the_verdict_needs_the_resolution_at_the_limit_and_the_sanity_order() -> None:
    noisy = assess(LATE, AWARE, reference="fedavg", exclusive_below=True)
    assert noisy["median_se"] > RESOLUTION_LIMIT and not noisy["can_rank"]
    assert noisy["reasons"] == [f"its resolution {noisy['median_se']:.4f} is above 0.01"]
    assert noisy["vs_reference"]["fedpilot"]["mean"] == pytest.approx(np.mean([-0.02, 0.01, -0.03]))
    assert "fedavg" not in noisy["vs_reference"]
    steady = {"fedavg": {0: 0.80, 1: 0.74, 2: 0.77}, "fedpilot": {0: 0.79, 1: 0.735, 2: 0.762},
              "exclusive": {0: 0.70, 1: 0.645, 2: 0.668}}
    ranked = assess(steady, AWARE, reference="fedpilot", exclusive_below=True)
    assert ranked["median_se"] <= RESOLUTION_LIMIT and ranked["can_rank"] and ranked["reasons"] == []
    with pytest.raises(ValueError, match="reference strategy 'nope'"):
        assess(steady, AWARE, reference="nope")


# --- through the comparison's summary and table ------------------------------------------------------


def results_json(strategy: str, seed: int, curve: list[float], aware: bool, rows_reached: list[int]) -> dict:
    config = parse_config({"strategy": strategy, "seed": seed}).model_dump(mode="json")
    clients = [{"cid": c, "num_samples": 100 * (c + 1), "budget_bytes": 10} for c in range(4)]
    trained = [{"cid": c, "num_samples": 100 * (c + 1), "modules": ["0.query"], "upload_bytes": 8, "download_bytes": 8,
                "train_loss": 0.4, "peak_bytes": 9, "budget_bytes": 10} for c in rows_reached]
    return {
        "config": config, "memory_aware": aware, "clients": clients, "wall_seconds": 2.0, "budget_violations": [],
        "evaluated_label_counts": [6, 4],
        "rounds": [{"round": 0, "accuracy": 0.5, "clients": [], "upload_bytes": 0, "download_bytes": 0}]
        + [{"round": i, "accuracy": a, "macro_f1": a, "clients": trained, "upload_bytes": 8, "download_bytes": 8, "skipped": None}
           for i, a in enumerate(curve, 1)],
    }


def hand_comparison(late: int = 5) -> dict:
    curves = {  # 6 rounds per run: last-5 = rounds 2-6
        ("fedavg", 0): [0.5, 0.70, 0.72, 0.74, 0.76, 0.78], ("fedavg", 1): [0.5, 0.60, 0.66, 0.70, 0.72, 0.72],
        ("exclusive", 0): [0.5, 0.60, 0.62, 0.64, 0.66, 0.68], ("exclusive", 1): [0.5, 0.58, 0.60, 0.61, 0.63, 0.63],
    }
    reached = {"fedavg": [0, 1, 2, 3], "exclusive": [3]}  # exclusive trains only client 3: 400 of 1,000 rows
    config = parse_config({})
    runs = [PlannedRun(s, seed, config, Path(f"/nowhere/{s}-seed{seed}")) for seed in (0, 1) for s in ("fedavg", "exclusive")]
    results = {r.name: results_json(r.strategy, r.seed, curves[r.strategy, r.seed], r.strategy != "fedavg", reached[r.strategy])
               for r in runs}
    summary = summarise(runs, results, None, late)
    summary.update(command="fedpilot compare", config_source="hand.yaml", preset=None,
                   config={k: v for k, v in config.model_dump(mode="json").items() if k not in ("strategy", "seed")})
    summary["resolution"] = assess_summary(summary, exclusive_below=True)
    return summary


def test_the_table_shows_the_paired_column_the_coverage_and_the_verdict() -> None:
    summary = hand_comparison()
    fedavg = [np.mean([0.70, 0.72, 0.74, 0.76, 0.78]), np.mean([0.60, 0.66, 0.70, 0.72, 0.72])]
    exclusive = [np.mean([0.60, 0.62, 0.64, 0.66, 0.68]), np.mean([0.58, 0.60, 0.61, 0.63, 0.63])]
    diffs = np.array(exclusive) - np.array(fedavg)
    assessed = summary["resolution"]
    assert assessed["reference"] == "fedavg" and assessed["late"] == 5
    assert assessed["median_se"] == pytest.approx(se(diffs))  # one pair
    assert summary["summary"]["exclusive"]["coverage"]["mean"] == pytest.approx(0.4)
    assert summary["summary"]["fedavg"]["coverage"]["mean"] == pytest.approx(1.0)
    text = render_markdown(summary)
    header = next(line for line in text.splitlines() if line.startswith("| strategy"))
    assert "| last-5 mean | last-5 - `fedavg`, paired |" in header and "| coverage |" in header
    row = next(line for line in text.splitlines() if line.startswith("| `exclusive`")).split(" | ")
    columns = header.split(" | ")
    assert row[columns.index("last-5 - `fedavg`, paired")] == f"{diffs.mean():+.3f} ± {se(diffs):.3f}"
    assert row[columns.index("coverage")] == "0.40"
    assert next(line for line in text.splitlines() if line.startswith("| `fedavg`")).split(" | ")[4] == "(reference)"
    # resolution 0.012 > 0.01: it cannot rank, and says why; the exclusive check holds (0.086 > 2 SE)
    assert f"- **Resolution {se(diffs):.4f}**" in text and "over the 1 pair of strategies that share two seeds" in text
    assert "- **This level cannot rank methods**: its resolution" in text
    assert "This level is marked exclusive-below" in text and ": holds." in text
    assert resolution_lines(summary)[-1].startswith("- **This level cannot rank methods**")
    three = hand_comparison(late=3)
    assert three["runs"][0]["late_accuracy"] == pytest.approx(np.mean([0.74, 0.76, 0.78]))
    assert "| last-3 mean | last-3 - `fedavg`, paired |" in render_markdown(three)


def test_compare_py_passes_the_end_point_and_the_level_mark_and_prints_the_verdict(tmp_path, monkeypatch, capsys) -> None:
    benchmark = load_benchmark("compare")
    from fedpilot import comparison
    from fedpilot.comparison.run import ComparisonResult

    seen = {}

    def fake_run(config, strategies, seeds, out_dir, **kwargs):
        seen.update(kwargs, strategies=strategies)
        summary = hand_comparison(kwargs["late"])
        summary["resolution"] = assess_summary(summary, reference=kwargs["reference"], exclusive_below=kwargs["exclusive_below"])
        out_dir.mkdir(parents=True)
        (out_dir / "comparison.md").write_text(render_markdown(summary))
        for name in ("accuracy.png", "memory.png", "allocation.png"):
            (out_dir / name).write_bytes(b"png")
        return ComparisonResult(out_dir, summary)

    monkeypatch.setattr(comparison, "run_comparison", fake_run)
    monkeypatch.setattr("sys.argv", ["compare.py", "--strategies", "fedavg,exclusive", "--seeds", "0,1", "--out", str(tmp_path / "out"),
                                     "--docs", str(tmp_path / "docs"), "--block", "screen", "--last", "3", "--exclusive-below",
                                     "--reference", "exclusive"])
    assert benchmark.main() == 0
    assert seen["late"] == 3 and seen["exclusive_below"] is True and seen["reference"] == "exclusive"
    out = capsys.readouterr().out
    # last-3: the paired differences -0.100, -0.090 have a standard error of 0.005: at the limit, it can rank
    assert "\nResolution 0.0050" in out and "\nThis level can rank methods" in out and "**" not in out
    assert "last-3 - `exclusive`, paired" in (tmp_path / "docs" / "results.md").read_text()


# --- the levels ------------------------------------------------------------------------------------------


def test_the_tier_skew_level_gives_the_poor_tier_a_label_the_rich_lack() -> None:
    from fedpilot.data.partition import partition_indices, tier_sizes

    config = load_config(ROOT / "benchmarks" / "configs" / "rt-tier-skew.yaml")
    budgets = config.federation.client_budgets()
    fractions = list(config.data.partition.tier_fractions)
    # the partition's groups are the memory tiers: same fractions, same rounding, same client order
    assert fractions == [t.fraction for t in config.federation.budgets.tiers]
    sizes = tier_sizes(fractions, config.federation.num_clients)
    assert sizes == [n for _, n in sorted(Counter(budgets).items())]
    labels = np.repeat([0, 1, 2], [5330, 790, 3890])  # fresh, plot, rotten: the train split's counts, about
    shards = partition_indices(labels, config.federation.num_clients, config.data.partition, config.seed)
    poor, rich = slice(0, sizes[0]), slice(sum(sizes[:2]), None)
    assert all(np.bincount(labels[s], minlength=3)[1] > 0 for s in shards[poor])  # every poor client holds `plot`
    assert all(np.bincount(labels[s], minlength=3)[1] == 0 for s in shards[sizes[0]:])  # no other client does
    assert max(budgets[poor]) < min(budgets[rich])
    from fedpilot.comparison import describe_config

    assert "label mix by client tier (shares 34%: 0.2/1/0.5; 33%: 0.3/0/0.3; 33%: 0.5/0/0.2)" in describe_config(config.model_dump(mode="json"))
    rich_rows = sum(len(s) for s in shards[rich])
    assert 0.3 < rich_rows / len(labels) < 0.4  # exclusive's coverage here: about a third of the rows


def test_the_few_rich_level_has_a_tenth_of_its_clients_able_to_hold_full_lora() -> None:
    config = load_config(ROOT / "benchmarks" / "configs" / "rt-few-rich.yaml")
    budgets = config.federation.client_budgets()
    assert Counter(budgets)[max(budgets)] == config.federation.num_clients // 10
    strong = load_config(ROOT / "benchmarks" / "configs" / "rt-strong.yaml")
    assert max(budgets) == max(strong.federation.client_budgets())  # the same full-LoRA tier as the other levels


def test_the_new_levels_evaluate_every_round_and_the_screen_tunes_on_validation() -> None:
    for name in ("rt-tier-skew", "rt-few-rich"):
        config = load_config(ROOT / "benchmarks" / "configs" / f"{name}.yaml")
        assert config.train.eval_every == 1 and config.train.evaluate_on == "test", name
    screen = load_config(ROOT / "benchmarks" / "configs" / "rt-screen.yaml")
    assert screen.train.evaluate_on == "validation" and screen.train.eval_every == 1
    assert screen.federation.num_clients < 40 and screen.federation.rounds < 20
    assert json.dumps(screen.data.partition.model_dump(mode="json")) == json.dumps(
        load_config(ROOT / "benchmarks" / "configs" / "rt-tier-skew.yaml").data.partition.model_dump(mode="json"))



def test_each_screen_variant_is_the_screen_with_only_its_knobs_changed() -> None:
    """benchmarks/configs/screens/*.yaml: rt-screen.yaml with the knobs its name says (low: the tiers below the checkpointed
    full-LoRA peak), and its own output folder."""
    screen = load_config(ROOT / "benchmarks" / "configs" / "rt-screen.yaml").model_dump(mode="json")
    low = {("federation", "budgets"): {"tiers": [{"fraction": f, "memory": m} for f, m in ((0.34, "115MiB"), (0.33, "130MiB"), (0.33, "295MiB"))]}}
    ckpt = {"strategy_options": {"checkpointing": "planned"}}
    micro = {"strategy_options": {"micro_batching": "planned"}}
    knobs = {"rt-screen-slr05": {("federation", "server_lr"): 0.5}, "rt-screen-ckpt": ckpt, "rt-screen-low": low, "rt-screen-low-ckpt": {**low, **ckpt},
             "rt-screen-low-mb": {**low, **micro},
             "rt-screen-floor": {("federation", "budgets"): {"tiers": [{"fraction": f, "memory": m} for f, m in
                                                                      ((0.34, "95MiB"), (0.33, "100MiB"), (0.33, "295MiB"))]}, **micro}}
    # the compact protocol's shape screens: every client every round, the floor tiers, baselines at micro-batch 1 (fedpilot
    # plans micro-batches by default now), and 12 clients x 4 steps or 9 clients x 8 steps
    compact = {("federation", "clients_per_round"): None, ("federation", "budgets"): knobs["rt-screen-floor"][("federation", "budgets")],
               ("train", "micro_batch"): 1}
    knobs |= {"compact-12x4": {**compact, ("train", "local_steps"): 4}, "compact-9x8": {**compact, ("federation", "num_clients"): 9}}
    assert_variants(screen, knobs)


def assert_variants(base: dict, knobs: dict) -> None:
    """Each benchmarks/configs/screens/<name>.yaml of ``knobs`` is ``base`` with exactly the knobs ``knobs[name]`` changed
    (``(section, key): value``, or ``strategy_options``) and its own output folder, runs/<name>."""
    for name, expected in knobs.items():
        path = ROOT / "benchmarks" / "configs" / "screens" / f"{name}.yaml"
        variant = load_config(path).model_dump(mode="json")
        changed = {(section, key): value for section, fields in variant.items() if isinstance(fields, dict) and section != "strategy_options"
                   for key, value in fields.items() if base[section][key] != value}
        if variant["strategy_options"] != base["strategy_options"]:
            changed["strategy_options"] = variant["strategy_options"]
        assert changed == expected, path.name
        assert variant["output_dir"] == f"runs/{path.stem}" != base["output_dir"]
        assert {k: v for k, v in variant.items() if not isinstance(v, dict) and k != "output_dir"} == {
            k: v for k, v in base.items() if not isinstance(v, dict) and k != "output_dir"}


COMPACT_LEVEL_SCREENS = ("compact-few-rich-val", "compact-few-rich-val-nest", "compact-few-rich-val-slr05", "compact-few-rich-val-coverage",
                         "compact-tier-skew-val-coverage", "compact-strong-val", "compact-strong-val-slr05", "compact-strong-val-la0")


def test_the_compact_level_screens_are_their_level_on_validation_with_only_their_knobs_changed() -> None:
    """The rt-few-rich screens (docs/protocol.md, "rt-few-rich: why fedpilot collapsed"): compact/rt-few-rich.yaml on the
    validation split, then each with one knob; the tier-skew check of the chosen knob is screens/compact-9x8.yaml with it;
    the rt-strong screens ("Compact rt-strong: the swing") the same from compact/rt-strong.yaml."""
    level = load_config(ROOT / "benchmarks" / "configs" / "compact" / "rt-few-rich.yaml").model_dump(mode="json")
    assert_variants(level, {"compact-few-rich-val": {("train", "evaluate_on"): "validation"}})
    on_validation = load_config(ROOT / "benchmarks" / "configs" / "screens" / "compact-few-rich-val.yaml").model_dump(mode="json")
    assert_variants(on_validation, {"compact-few-rich-val-nest": {"strategy_options": {"nesting": "round"}},
                                    "compact-few-rich-val-slr05": {("federation", "server_lr"): 0.5},
                                    "compact-few-rich-val-coverage": {"strategy_options": {"spatial": "coverage"}}})
    tier_skew = load_config(ROOT / "benchmarks" / "configs" / "screens" / "compact-9x8.yaml").model_dump(mode="json")
    assert_variants(tier_skew, {"compact-tier-skew-val-coverage": {"strategy_options": {"spatial": "coverage"}}})
    strong = load_config(ROOT / "benchmarks" / "configs" / "compact" / "rt-strong.yaml").model_dump(mode="json")
    assert_variants(strong, {"compact-strong-val": {("train", "evaluate_on"): "validation"}})
    strong_on_validation = load_config(ROOT / "benchmarks" / "configs" / "screens" / "compact-strong-val.yaml").model_dump(mode="json")
    assert_variants(strong_on_validation, {"compact-strong-val-slr05": {("federation", "server_lr"): 0.5},
                                           "compact-strong-val-la0": {("train", "logit_adjustment"): 0.0}})


def test_every_screen_config_is_checked_by_a_test_above() -> None:
    rt_screen = {"rt-screen-slr05", "rt-screen-ckpt", "rt-screen-low", "rt-screen-low-ckpt", "rt-screen-low-mb", "rt-screen-floor",
                 "compact-12x4", "compact-9x8"}
    assert {p.stem for p in (ROOT / "benchmarks" / "configs" / "screens").glob("*.yaml")} == rt_screen | set(COMPACT_LEVEL_SCREENS)


def test_resolution_py_replays_a_cadence_and_an_end_point_from_runs_evaluated_every_round(tmp_path, capsys) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import resolution as resolution_benchmark
    finally:
        sys.path.pop(0)
    curves = {("fedavg", 0): [0.5, 0.6, 0.7, 0.8], ("fedavg", 1): [0.5, 0.5, 0.6, 0.9],
              ("fedpilot", 0): [0.4, 0.7, 0.6, 0.7], ("fedpilot", 1): [0.6, 0.4, 0.7, 0.8]}
    for (strategy, seed), curve in curves.items():
        folder = tmp_path / f"{strategy}-seed{seed}"
        folder.mkdir()
        rounds = [{"round": i, "accuracy": a} for i, a in enumerate([0.3, *curve])]
        (folder / "results.json").write_text(json.dumps({"status": "finished", "memory_aware": strategy != "fedavg", "rounds": rounds}))
    (tmp_path / "fedavg-seed2").mkdir()  # unfinished: left out
    (tmp_path / "fedavg-seed2" / "results.json").write_text(json.dumps({"status": "running", "rounds": []}))
    assert resolution_benchmark.main([str(tmp_path), "--last", "2", "--every", "1", "2", "--json", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())[str(tmp_path)]
    every1, every2 = rows
    # every round, last 2: fedavg (0.75, 0.75), fedpilot (0.65, 0.75): differences 0.10, 0.00
    assert every1["values"]["fedavg"] == {"0": pytest.approx(0.75), "1": pytest.approx(0.75)}
    assert every1["median_se"] == pytest.approx(se([0.10, 0.0]))
    # every 2nd round (rounds 2 and 4, the last): fedavg (0.7, 0.7), fedpilot (0.7, 0.6)
    assert every2["values"]["fedavg"] == {"0": pytest.approx(0.7), "1": pytest.approx(0.7)}
    assert every2["values"]["fedpilot"] == {"0": pytest.approx(0.7), "1": pytest.approx(0.6)}
    assert every2["median_se"] == pytest.approx(se([0.0, 0.1]))
    assert resolution_benchmark.thinned([{"round": i, "accuracy": 0.1 * i} for i in range(5)], 3)[1:] == [
        {"round": 1, "accuracy": None}, {"round": 2, "accuracy": None}, {"round": 3, "accuracy": pytest.approx(0.3)},
        {"round": 4, "accuracy": pytest.approx(0.4)}]
    with pytest.raises(ValueError, match="round 2 was not evaluated"):
        resolution_benchmark.thinned([{"round": 0, "accuracy": 0.1}, {"round": 1, "accuracy": None}, {"round": 2, "accuracy": None},
                                      {"round": 3, "accuracy": 0.5}], 2)
    assert "| every 2 | last-2 mean | 0,1 | 1 (1) |" in capsys.readouterr().out
    assert resolution_benchmark.main([str(tmp_path / "fedavg-seed0")]) == 2  # no runs in it: one line, exit 2
