"""Does an ablation differ from fedpilot by more than the seed spread? Paired by seed, from the finished
runs of one comparison folder.

Usage: .venv/bin/python benchmarks/ablation_gap.py runs/rt-strong [--reference fedpilot]
       [--against fedpilot-noig fedpilot-nostagg ...]

For each strategy B against the reference A, on the seeds both finished, for the final accuracy and the
last-3 mean (fedpilot.comparison.summarise_run): the per-seed differences A - B, their mean and sample
standard deviation, and the seed spread (sample std over seeds) of A and of B. "gap > spread" says
whether |mean difference| exceeds the larger of the two spreads, the issue's criterion. A seed that
only one of the two finished is named on stderr, never silently left out.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from fedpilot.comparison import _std, summarise_run  # _std: the sample std over seeds of the compare tables (0 for one)

METRICS = {"final": "final_accuracy", "last-3": "late_accuracy"}


def finished_runs(out: Path) -> dict[str, dict[int, dict]]:
    """strategy -> seed -> summary of every finished run in a comparison folder."""
    runs: dict[str, dict[int, dict]] = {}
    for results_path in sorted(out.glob("*-seed*/results.json")):
        match = re.fullmatch(r"(.+)-seed(\d+)", results_path.parent.name)
        results = json.loads(results_path.read_text())
        if match and results.get("status") == "finished":
            runs.setdefault(match[1], {})[int(match[2])] = summarise_run(results)
    return runs


def gaps(runs: dict[str, dict[int, dict]], reference: str, against: str) -> dict[str, dict]:
    """Per metric: seeds, per-seed differences reference - against, their mean and std, both spreads."""
    seeds = sorted(set(runs.get(reference, {})) & set(runs.get(against, {})))
    table = {}
    for label, key in METRICS.items():
        a = [runs[reference][s][key] for s in seeds]
        b = [runs[against][s][key] for s in seeds]
        diffs = [x - y for x, y in zip(a, b)]
        spread = max(_std(a), _std(b))
        mean = statistics.fmean(diffs) if diffs else float("nan")
        table[label] = {"seeds": seeds, "diffs": diffs, "mean": mean, "std": _std(diffs),
                        "spread_reference": _std(a), "spread_against": _std(b),
                        "beyond_spread": len(seeds) > 1 and abs(mean) > spread}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a fedpilot compare folder")
    parser.add_argument("--reference", default="fedpilot")
    parser.add_argument("--against", nargs="+", default=["fedpilot-noig", "fedpilot-nostagg"])
    args = parser.parse_args(argv)
    try:
        runs = finished_runs(args.out)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"ablation_gap.py: {args.out}: cannot read its runs ({error!r}); give a fedpilot compare folder", file=sys.stderr)
        return 2
    for name in [args.reference, *args.against]:
        if name not in runs:
            print(f"ablation_gap.py: {args.out} holds no finished {name} run; check --reference / --against", file=sys.stderr)
            return 2
    print(f"| {args.reference} - strategy | metric | seeds | per-seed difference | mean ± std | spread ({args.reference}; strategy) | gap > spread |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for against in args.against:
        unpaired = set(runs[args.reference]) ^ set(runs[against])
        if unpaired:
            print(f"ablation_gap.py: seeds {sorted(unpaired)} finished for only one of {args.reference}, {against}: left out", file=sys.stderr)
        for label, g in gaps(runs, args.reference, against).items():
            diffs = ", ".join(f"{d:+.3f}" for d in g["diffs"])
            print(f"| {against} | {label} | {','.join(map(str, g['seeds']))} | {diffs} | {g['mean']:+.3f} ± {g['std']:.3f} | "
                  f"{g['spread_reference']:.3f}; {g['spread_against']:.3f} | {'yes' if g['beyond_spread'] else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
