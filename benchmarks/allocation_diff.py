"""How differently two runs allocated: per memory tier, the client-rounds whose trained module sets
differ, by how many modules, and the mean number of modules trained.

Usage: .venv/bin/python benchmarks/allocation_diff.py RUN_A RUN_B   (run folders holding results.json)

Both runs must come from one config and seed (the same clients are sampled each round); a (round,
client) pair found in only one of them is counted and reported, never silently skipped. Used in
docs/protocol.md to show whether the IG-score changes what clients train (fedpilot against
fedpilot-noig).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def allocations(run: Path) -> tuple[dict[tuple[int, int], frozenset[str]], dict[int, int]]:
    results = json.loads((run / "results.json").read_text())
    budgets = {c["cid"]: c["budget_bytes"] for c in results["clients"]}
    sets = {
        (r["round"], c["cid"]): frozenset(c["modules"])
        for r in results["rounds"]
        for c in r.get("clients") or []
    }
    return sets, budgets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    for run in (args.run_a, args.run_b):
        if not (run / "results.json").is_file():
            print(f"{run}: no results.json; give a run folder", file=sys.stderr)
            return 2
    a, budgets = allocations(args.run_a)
    b, _ = allocations(args.run_b)
    rows: dict[int, list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for key in sorted(a.keys() & b.keys()):
        row = rows[budgets[key[1]]]
        row[0] += 1
        row[1] += a[key] != b[key]
        row[2] += len(a[key] ^ b[key])
        row[3] += len(a[key])
        row[4] += len(b[key])
    print(f"A = {args.run_a}, B = {args.run_b}")
    print("budget MiB | client-rounds in both | sets differ | modules differing, mean | modules A, mean | modules B, mean")
    for budget, (n, differ, sym, size_a, size_b) in sorted(rows.items()):
        print(f"{budget / 2**20:10.0f} | {n:21d} | {differ:11d} | {sym / n:23.2f} | {size_a / n:15.2f} | {size_b / n:15.2f}")
    only = len(a.keys() ^ b.keys())
    if only:
        print(f"{only} client-rounds trained in only one of the runs (different sampling or lost rounds) are not compared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
