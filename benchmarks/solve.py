"""Solve time of the exact allocator on 200-module instances.

Usage: .venv/bin/python benchmarks/solve.py [--instances 200] [--modules 200]

Prints the median and worst solve time (the solver's own clock, as `fedpilot solve` reports it)
and exits 1 if the median exceeds 10 ms or the worst 50 ms (the limits are for 200 modules;
`--modules 1000` shows how it scales: tens of milliseconds).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from fedpilot.planning.allocation import random_problem, solve

MEDIAN_LIMIT_MS, WORST_LIMIT_MS = 10.0, 50.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--modules", type=int, default=200)
    args = parser.parse_args()
    times = []
    for seed in range(args.instances):
        allocation = solve(random_problem(args.modules, seed))
        if allocation is not None:
            assert allocation.optimal  # no time limit was given
            times.append(allocation.solve_ms)
    median, worst = statistics.median(times), max(times)
    print(f"solve: {len(times)} instances of {args.modules} modules, median {median:.2f} ms, worst {worst:.2f} ms")
    return 0 if median <= MEDIAN_LIMIT_MS and worst <= WORST_LIMIT_MS else 1


if __name__ == "__main__":
    sys.exit(main())
