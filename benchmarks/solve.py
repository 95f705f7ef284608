"""Solve time of the exact allocators on 200-module instances: the module-set knapsack and the joint
(module, rank) multiple-choice knapsack.

Usage: .venv/bin/python benchmarks/solve.py [--instances 200] [--modules 200] [--ranks 1,2,4,8,16]

Prints the median and worst solve time of each, on the solver's own clock (as `fedpilot solve`
reports it) and in CPU time (this process's, time.process_time), and exits 1 if, in CPU time, the
module-set solver's median exceeds 10 ms or its worst 50 ms, or the joint solver's worst exceeds 1 s
(on a shared machine the wall clock also counts the other processes' work). The limits are for 200 modules; the
joint instances offer every module at each of ``--ranks`` besides rank 0
(`fedpilot.planning.joint.random_joint_problem`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from fedpilot.planning.allocation import random_problem, solve
from fedpilot.planning.joint import random_joint_problem, solve_joint

MEDIAN_LIMIT_MS, WORST_LIMIT_MS = 10.0, 50.0
JOINT_WORST_LIMIT_MS = 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--modules", type=int, default=200)
    parser.add_argument("--ranks", default="1,2,4,8,16", help="the non-zero rank options of the joint instances")
    args = parser.parse_args()
    times, cpu = [], []
    for seed in range(args.instances):
        problem = random_problem(args.modules, seed)
        start = time.process_time()
        allocation = solve(problem)
        cpu_ms = (time.process_time() - start) * 1000
        if allocation is not None:
            assert allocation.optimal  # no time limit was given
            times.append(allocation.solve_ms)
            cpu.append(cpu_ms)
    median, worst = statistics.median(cpu), max(cpu)
    print(f"solve: {len(times)} instances of {args.modules} modules, median {statistics.median(times):.2f} ms, worst {max(times):.2f} ms "
          f"(CPU: median {median:.2f} ms, worst {worst:.2f} ms)")
    ranks = tuple(int(r) for r in args.ranks.split(","))
    joint, joint_cpu = [], []
    for seed in range(args.instances):
        problem = random_joint_problem(args.modules, seed, ranks)
        start = time.process_time()
        answer = solve_joint(problem)
        cpu_ms = (time.process_time() - start) * 1000
        if answer is not None:
            assert answer.optimal
            joint.append(answer.solve_ms)
            joint_cpu.append(cpu_ms)
    joint_median, joint_worst = statistics.median(joint), max(joint)
    cpu_median, cpu_worst = statistics.median(joint_cpu), max(joint_cpu)
    print(f"joint: {len(joint)} instances of {args.modules} modules x ranks {{0,{','.join(map(str, ranks))}}}, "
          f"median {joint_median:.2f} ms, worst {joint_worst:.2f} ms (CPU: median {cpu_median:.2f} ms, worst {cpu_worst:.2f} ms)")
    ok = median <= MEDIAN_LIMIT_MS and worst <= WORST_LIMIT_MS and cpu_worst <= JOINT_WORST_LIMIT_MS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
