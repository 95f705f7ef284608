"""Does an ablation differ from fedpilot by more than the seed spread? Paired by seed, from the finished
runs of one or more comparison folders.

Usage: .venv/bin/python benchmarks/ablation_gap.py runs/rt-strong [runs/rt-mild ...] [--reference fedpilot]
       [--against fedpilot-noig fedpilot-nostagg ...] [--last K]

For each strategy B against the reference A, on the seeds both finished, for the final accuracy and the
last-K mean (fedpilot.comparison.summarise_run; K = 3, the 40-client levels' end point, or --last 5 for the
compact levels'): the per-seed differences A - B, their mean and sample
standard deviation, and the seed spread (sample std over seeds) of A and of B. "gap > spread" says
whether |mean difference| exceeds the larger of the two spreads, the issue's criterion. A seed that
only one of the two finished is named on stderr, never silently left out.

With several folders (protocols), each gets its table, and a last table pools the pairs of all of them
(a pair: one folder's seed): how many pairs the reference is ahead in, and the exact two-sided sign test
p = min(1, 2 P(X >= max(k, n - k))), X ~ Binomial(n, 1/2), with n the pairs that differ and k those the
reference is ahead in. The spread of the levels mostly measures how hard each seed's partition is, which
both strategies of a pair share; the sign of the paired difference does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

from fedpilot.comparison.records import _std, summarise_run  # _std: the sample std over seeds of the compare tables (0 for one)

def metrics(late: int) -> dict[str, str]:
    """Label -> summary key of the two end points compared."""
    return {"final": "final_accuracy", f"last-{late}": "late_accuracy"}


def finished_runs(out: Path, late: int = 3) -> dict[str, dict[int, dict]]:
    """strategy -> seed -> summary of every finished run in a comparison folder, its late accuracy the mean of the
    last ``late`` evaluated rounds."""
    runs: dict[str, dict[int, dict]] = {}
    for results_path in sorted(out.glob("*-seed*/results.json")):
        match = re.fullmatch(r"(.+)-seed(\d+)", results_path.parent.name)
        results = json.loads(results_path.read_text())
        if match and results.get("status") == "finished":
            runs.setdefault(match[1], {})[int(match[2])] = summarise_run(results, late=late)
    return runs


def gaps(runs: dict[str, dict[int, dict]], reference: str, against: str, late: int = 3) -> dict[str, dict]:
    """Per metric: seeds, per-seed differences reference - against, their mean and std, both spreads."""
    seeds = sorted(set(runs.get(reference, {})) & set(runs.get(against, {})))
    table = {}
    for label, key in metrics(late).items():
        a = [runs[reference][s][key] for s in seeds]
        b = [runs[against][s][key] for s in seeds]
        diffs = [x - y for x, y in zip(a, b)]
        spread = max(_std(a), _std(b))
        mean = statistics.fmean(diffs) if diffs else float("nan")
        table[label] = {"seeds": seeds, "diffs": diffs, "mean": mean, "std": _std(diffs),
                        "spread_reference": _std(a), "spread_against": _std(b),
                        "beyond_spread": len(seeds) > 1 and abs(mean) > spread}
    return table


def sign_test(diffs: list[float]) -> tuple[int, int, float]:
    """(pairs the reference is ahead in, pairs that differ, exact two-sided sign-test p); ties are left out."""
    ahead, n = sum(d > 0 for d in diffs), sum(d != 0 for d in diffs)
    extreme = max(ahead, n - ahead)
    tail = sum(math.comb(n, i) for i in range(extreme, n + 1)) / 2**n
    return ahead, n, min(1.0, 2 * tail)


def print_table(runs: dict[str, dict[int, dict]], reference: str, against: list[str], where: Path,
                late: int = 3) -> dict[str, dict[str, list[float]]]:
    """One folder's table; returns its paired differences, strategy -> metric -> differences."""
    print(f"{where}:\n")
    print(f"| {reference} - strategy | metric | seeds | per-seed difference | mean ± std | spread ({reference}; strategy) | gap > spread |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    paired: dict[str, dict[str, list[float]]] = {}
    for name in against:
        unpaired = set(runs[reference]) ^ set(runs[name])
        if unpaired:
            print(f"ablation_gap.py: {where}: seeds {sorted(unpaired)} finished for only one of {reference}, {name}: left out", file=sys.stderr)
        for label, g in gaps(runs, reference, name, late).items():
            paired.setdefault(name, {})[label] = g["diffs"]
            diffs = ", ".join(f"{d:+.3f}" for d in g["diffs"])
            print(f"| {name} | {label} | {','.join(map(str, g['seeds']))} | {diffs} | {g['mean']:+.3f} ± {g['std']:.3f} | "
                  f"{g['spread_reference']:.3f}; {g['spread_against']:.3f} | {'yes' if g['beyond_spread'] else 'no'} |")
    print()
    return paired


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="+", help="fedpilot compare folders (one per protocol)")
    parser.add_argument("--reference", default="fedpilot")
    parser.add_argument("--against", nargs="+", default=["fedpilot-noig", "fedpilot-nostagg"])
    parser.add_argument("--last", type=int, default=3, help="K: the late end point, the mean of the last K evaluated rounds (default 3)")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error("--last takes a positive number of rounds")
    folders = {}
    for out in args.out:
        try:
            folders[out] = finished_runs(out, args.last)
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"ablation_gap.py: {out}: cannot read its runs ({error!r}); give a fedpilot compare folder", file=sys.stderr)
            return 2
        for name in [args.reference, *args.against]:
            if name not in folders[out]:
                print(f"ablation_gap.py: {out} holds no finished {name} run; check --reference / --against", file=sys.stderr)
                return 2
    pooled: dict[str, dict[str, list[float]]] = {}
    for out, runs in folders.items():
        for name, metrics in print_table(runs, args.reference, args.against, out, args.last).items():
            for label, diffs in metrics.items():
                pooled.setdefault(name, {}).setdefault(label, []).extend(diffs)
    print("all folders, pairs (folder, seed) pooled:\n")
    print(f"| {args.reference} - strategy | metric | pairs | {args.reference} ahead | mean ± std | sign test p (two-sided) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, metrics in pooled.items():
        for label, diffs in metrics.items():
            ahead, n, p = sign_test(diffs)
            print(f"| {name} | {label} | {len(diffs)} | {ahead} of {n} | {statistics.fmean(diffs):+.3f} ± {_std(diffs):.3f} | {p:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
