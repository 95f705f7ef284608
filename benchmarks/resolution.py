"""How finely can a comparison's runs rank methods, under other end points? The resolution and sanity order of
fedpilot.comparison.resolution, recomputed from finished runs for several measurement choices at once.

Usage: .venv/bin/python benchmarks/resolution.py runs/rt-screen [runs/rt-strong ...] [--last 1 3 5] [--every 1 4]
       [--strategies fedavg,exclusive,...] [--exclusive-below] [--metric accuracy|macro_f1] [--json FILE]

For each folder, each cadence N of ``--every`` (keep only the evaluations of rounds that are multiples of N, and
the last round, as ``train.eval_every: N`` would have made them; a run that did not evaluate one of those rounds
is refused for that N) and each K of ``--last`` (the end point: the mean of the last K kept evaluations after
round 0), one row: the seeds, the pairs, the resolution (median standard error of the seed-paired difference
over every pair of strategies), the largest and smallest standard error, the sanity order and whether the level
can rank methods at that end point. Seeds only some strategies finished are left out of their pairs, as the
comparison does. The final round is evaluated on the whole split, the others on the config's subset: a cadence
keeps that as it is. ``--metric macro_f1`` measures the same end points on each evaluation's macro-F1 instead of
its accuracy (on a level where one tier alone holds a class, accuracy hardly sees that class; macro-F1 weighs it
as much as the others).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from fedpilot.comparison.records import late_accuracy
from fedpilot.comparison.resolution import assess, default_reference


def finished(out: Path, strategies: list[str] | None, metric: str = "accuracy") -> dict[str, dict[int, dict[str, Any]]]:
    """strategy -> seed -> results.json of every finished run in a comparison folder (``metric``: the evaluation
    field read as the end point, put in each round's ``accuracy``)."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(out.glob("*-seed*/results.json")):
        match = re.fullmatch(r"(.+)-seed(\d+)", path.parent.name)
        if not match or (strategies and match[1] not in strategies):
            continue
        results = json.loads(path.read_text())
        if metric != "accuracy":
            results["rounds"] = [{**r, "accuracy": r.get(metric)} for r in results["rounds"]]
        if results.get("status") == "finished":
            runs.setdefault(match[1], {})[int(match[2])] = results
    return runs


def thinned(rounds: list[dict[str, Any]], every: int) -> list[dict[str, Any]]:
    """The rounds as a cadence of ``every`` would have evaluated them: the others carry no accuracy."""
    last = rounds[-1]["round"]
    kept = []
    for r in rounds:
        due = r["round"] == 0 or r["round"] == last or r["round"] % every == 0
        if due and r.get("accuracy") is None:
            raise ValueError(f"round {r['round']} was not evaluated, so a cadence of {every} cannot be replayed")
        kept.append(r if due else {**r, "accuracy": None})
    return kept


def rows(runs: dict[str, dict[int, dict[str, Any]]], lasts: list[int], everies: list[int], exclusive_below: bool) -> list[dict[str, Any]]:
    strategies = sorted(runs)
    aware = {s: all(r.get("memory_aware", True) for r in runs[s].values()) for s in strategies}
    table = []
    for every in everies:
        for last in lasts:
            values = {s: {seed: late_accuracy(thinned(r["rounds"], every), last) for seed, r in runs[s].items()} for s in strategies}
            assessed = assess(values, aware, reference=default_reference(strategies), exclusive_below=exclusive_below)
            errors = [p["se"] for p in assessed["pairs"] if p["se"] is not None]
            table.append({"every": every, "last": last, "seeds": sorted({seed for v in values.values() for seed in v}),
                          "strategies": strategies, "values": values, "median_se": assessed["median_se"],
                          "max_se": max(errors, default=None), "min_se": min(errors, default=None),
                          "pairs": len(assessed["pairs"]), "pairs_with_se": assessed["pairs_with_se"], "sanity_ok": assessed["sanity"]["ok"],
                          "sanity": assessed["sanity"]["problems"], "can_rank": assessed["can_rank"], "reasons": assessed["reasons"]})
    return table


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--last", nargs="+", type=int, default=[1, 3, 5])
    parser.add_argument("--every", nargs="+", type=int, default=[1])
    parser.add_argument("--strategies", help="comma-separated; default: every strategy with a finished run")
    parser.add_argument("--exclusive-below", action="store_true", help="the level's sanity order also needs exclusive clearly below fedavg")
    parser.add_argument("--metric", choices=["accuracy", "macro_f1"], default="accuracy", help="the evaluation figure the end point averages")
    parser.add_argument("--json", type=Path, help="also write every row (with each run's end point) to this file")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.last) or any(n < 1 for n in args.every):
        print("resolution.py: error: --last and --every take whole numbers >= 1, e.g. --last 3 5", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.strategies.split(",")] if args.strategies else None
    everything = {}
    print("| runs | cadence | end point | seeds | pairs (with 2+ seeds) | resolution (median SE) | SE min - max | sanity order | can rank |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for folder in args.folders:
        runs = finished(folder, wanted, args.metric)
        if len(runs) < 2:
            print(f"resolution.py: error: {folder} holds finished runs of {len(runs)} strategies; a resolution needs two", file=sys.stderr)
            return 2
        try:
            table = rows(runs, args.last, args.every, args.exclusive_below)
        except ValueError as err:
            print(f"resolution.py: error: {folder}: {err}; give --every 1 or the config's train.eval_every", file=sys.stderr)
            return 2
        everything[str(folder)] = table
        for row in table:
            sanity = "holds" if row["sanity_ok"] else "fails: " + "; ".join(row["sanity"])
            print(f"| {folder} | every {row['every']} | last-{row['last']} mean | {','.join(map(str, row['seeds']))} | {row['pairs']} ({row['pairs_with_se']}) "
                  f"| {_f(row['median_se'])} | {_f(row['min_se'])} - {_f(row['max_se'])} | {sanity} | {'yes' if row['can_rank'] else 'no'} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(everything, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
