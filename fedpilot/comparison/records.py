"""Reading a comparison's runs: what the table takes from each run's results.json, and the
per-strategy aggregates over seeds with the target accuracy."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fedpilot.core.sizes import mib

if TYPE_CHECKING:
    from fedpilot.comparison.plan import PlannedRun

TARGET_FRACTION = 0.9  # default target: this share of the best mean final accuracy
LATE_EVALUATIONS = 5  # the end point: the mean of the last this many evaluated rounds (docs/protocol.md, "Resolution")


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise_run(results: dict[str, Any], late: int = LATE_EVALUATIONS) -> dict[str, Any]:
    """What the table needs from one run's results.json (rounds 1..R; round 0 is the untrained model);
    ``late``: how many evaluated rounds the late accuracy averages."""
    rounds = results["rounds"]
    trained_rounds = rounds[1:]
    records = [c for r in trained_rounds for c in r["clients"]]
    federation = results["config"]["federation"]
    per_round = federation["clients_per_round"] or federation["num_clients"]
    planned = per_round * len(trained_rounds)  # what the config asks; a strategy may sample fewer (e.g. only who fits)
    ratios = [c["peak_bytes"] / c["budget_bytes"] for c in records if c.get("peak_bytes") is not None and c.get("budget_bytes")]
    return {
        # None where a round was not evaluated (train.eval_every): gaps, never filled in
        "accuracy_curve": [r.get("accuracy") for r in rounds],
        "final_accuracy": rounds[-1]["accuracy"],  # the final round is always evaluated on the whole split
        "best_accuracy": max((r["accuracy"] for r in trained_rounds if r.get("accuracy") is not None), default=rounds[-1]["accuracy"]),
        "late_accuracy": late_accuracy(rounds, late),
        "final_macro_f1": rounds[-1].get("macro_f1"),
        "planned_client_rounds": planned,
        "trained_client_rounds": len(records),
        "lost_client_rounds": planned - len(records),
        "coverage": coverage(results),
        "peak_over_budget_mean": _mean(ratios),
        "peak_over_budget_max": max(ratios, default=None),
        "budget_violations": len(results.get("budget_violations", [])),
        "upload_mib_per_round": mib(statistics.fmean(r["upload_bytes"] for r in trained_rounds)) if trained_rounds else 0.0,
        "download_mib_per_round": mib(statistics.fmean(r["download_bytes"] for r in trained_rounds)) if trained_rounds else 0.0,
        "modules_per_client": _mean([len(c["modules"]) for c in records]),
        "wall_seconds": results["wall_seconds"],
        "calibration_cached": results.get("memory", {}).get("calibration_cached", True),
        "memory_aware": results.get("memory_aware", True),
        "majority_accuracy": majority_accuracy(results),
    }


def majority_accuracy(results: dict[str, Any]) -> float | None:
    """The accuracy of always predicting the evaluated split's most frequent class (None: a run made
    before results.json recorded ``evaluated_label_counts``)."""
    counts = results.get("evaluated_label_counts")
    return max(counts) / sum(counts) if counts and sum(counts) else None



def late_accuracy(rounds: Sequence[dict[str, Any]], last: int = LATE_EVALUATIONS) -> float:
    """Mean accuracy of the last ``last`` evaluated rounds after round 0 (fewer if the run has fewer): under
    partial participation and label skew the final round's accuracy swings with the few clients it
    sampled, and this mean is the steadier end point. With ``train.eval_every: 1`` these are the last
    ``last`` rounds; with a cadence, the last ``last`` evaluations."""
    if last < 1:
        raise ValueError(f"late accuracy over {last} evaluations: give at least 1")
    evaluated = [r["accuracy"] for r in rounds[1:] if r.get("accuracy") is not None] or [rounds[-1]["accuracy"]]
    return statistics.fmean(evaluated[-last:])


def coverage(results: dict[str, Any]) -> float | None:
    """The share of the federation's training rows that reached the global model: the rows of every client
    with at least one accepted update in a round that was applied (rounds 1..R), over the rows of all
    clients. A client the strategy never gives work (or never samples), whose every update failed or was
    rejected, or whose updates came only in rounds skipped for too few replies (``federation.min_replies``)
    counts as lost. None: a run whose results.json lists no clients' rows."""
    clients = results.get("clients") or []
    total = sum(c["num_samples"] for c in clients)
    if not total:
        return None
    reached = {c["cid"] for r in results["rounds"][1:] if r.get("skipped") is None for c in r["clients"]}
    unknown = reached - {c["cid"] for c in clients}
    if unknown:
        raise ValueError(f"rounds record updates from clients {sorted(unknown)[:3]} that the run's client list lacks")
    return sum(c["num_samples"] for c in clients if c["cid"] in reached) / total


def rounds_to_target(curve: Sequence[float | None], target: float) -> int | None:
    """The first evaluated round whose test accuracy reaches ``target`` (None: never); rounds not
    evaluated (None, train.eval_every) are passed over, so with a cadence it is the first evaluated one."""
    return next((i for i, accuracy in enumerate(curve) if accuracy is not None and accuracy >= target), None)


def summarise(runs: Sequence[PlannedRun], results: dict[str, dict[str, Any]], target: float | None,
              late: int = LATE_EVALUATIONS) -> dict[str, Any]:
    """Per-run numbers, per-strategy aggregates over seeds, and the target accuracy with where it came from;
    ``late``: the evaluations the late accuracy averages (the end point the resolution is measured on)."""
    per_run = [{"name": run.name, "strategy": run.strategy, "seed": run.seed, "dir": str(run.dir), **summarise_run(results[run.name], late)}
               for run in runs]
    strategies = list(dict.fromkeys(run.strategy for run in runs))
    by_strategy = {s: [r for r in per_run if r["strategy"] == s] for s in strategies}
    mean_final = {s: statistics.fmean(r["final_accuracy"] for r in rs) for s, rs in by_strategy.items()}
    if target is None:
        leader = max(mean_final, key=mean_final.get)
        target_info = {"accuracy": TARGET_FRACTION * mean_final[leader], "source": "default",
                       "rule": f"{TARGET_FRACTION:g} x the best mean final accuracy", "from_strategy": leader,
                       "best_mean_final_accuracy": mean_final[leader]}
    else:
        target_info = {"accuracy": target, "source": "--target"}
    majorities = [r["majority_accuracy"] for r in per_run if r["majority_accuracy"] is not None]
    if majorities:  # the highest over the runs' splits: a target at or below it is met by predicting one class
        target_info["majority_accuracy"] = max(majorities)
        target_info["trivial"] = target_info["accuracy"] <= max(majorities)
    for entry in per_run:
        entry["rounds_to_target"] = rounds_to_target(entry["accuracy_curve"], target_info["accuracy"])
    table = {}
    for strategy, rs in by_strategy.items():
        finals, bests = [r["final_accuracy"] for r in rs], [r["best_accuracy"] for r in rs]
        lates = [r["late_accuracy"] for r in rs]
        f1s = [r["final_macro_f1"] for r in rs if r["final_macro_f1"] is not None]
        reached = [r["rounds_to_target"] for r in rs if r["rounds_to_target"] is not None]
        means = [r["peak_over_budget_mean"] for r in rs if r["peak_over_budget_mean"] is not None]
        maxes = [r["peak_over_budget_max"] for r in rs if r["peak_over_budget_max"] is not None]
        coverages = [r["coverage"] for r in rs if r["coverage"] is not None]
        table[strategy] = {
            "seeds": [r["seed"] for r in rs],
            "memory_aware": all(r["memory_aware"] for r in rs),
            "final_accuracy": {"mean": statistics.fmean(finals), "std": _std(finals)},
            "best_accuracy": {"mean": statistics.fmean(bests), "std": _std(bests)},
            "late_accuracy": {"mean": statistics.fmean(lates), "std": _std(lates)},
            "final_macro_f1": {"mean": _mean(f1s), "std": _std(f1s)},
            "rounds_to_target": {"mean": _mean(reached), "reached": len(reached), "runs": len(rs)},
            "client_rounds": {key: sum(r[f"{key}_client_rounds"] for r in rs) for key in ("planned", "trained", "lost")},
            "coverage": {"mean": _mean(coverages), "std": _std(coverages)},
            "peak_over_budget": {"mean": _mean(means), "max": max(maxes, default=None)},
            "budget_violations": sum(r["budget_violations"] for r in rs),
            "upload_mib_per_round": statistics.fmean(r["upload_mib_per_round"] for r in rs),
            "download_mib_per_round": statistics.fmean(r["download_mib_per_round"] for r in rs),
            "modules_per_client": _mean([r["modules_per_client"] for r in rs if r["modules_per_client"] is not None]),
            "wall_seconds": {"mean": statistics.fmean(r["wall_seconds"] for r in rs), "total": sum(r["wall_seconds"] for r in rs)},
        }
    seeds = list(dict.fromkeys(run.seed for run in runs))
    return {"strategies": strategies, "seeds": seeds, "target": target_info, "summary": table, "runs": per_run, "late": late}


def evaluated_split(summary: dict[str, Any]) -> str:
    """The split every accuracy of the comparison was measured on: the config's ``train.evaluate_on``."""
    return str(summary["config"].get("train", {}).get("evaluate_on", "test"))
