"""Runs per hour of `fedpilot compare --jobs N` against one run at a time, measured in one go.

Usage: .venv/bin/python benchmarks/jobs_throughput.py [--config FILE] [--rounds 2] [--jobs 2]
                                                       [--strategies fedpilot,fedavg]

Makes the same comparison (the strategies x seed 0, ``federation.rounds`` cut to ``--rounds``) twice in
fresh temporary folders: one run at a time with every core as torch threads, then ``--jobs`` runs at a
time with the cores shared. Prints both wall times and their ratio (the speed-up of ``--jobs``), and
whether the two made the same final accuracies. Run it on idle cores: anything else running skews both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from fedpilot import comparison
from fedpilot.config import load_config, parse_config
from fedpilot.core.errors import FedpilotError


def timed(config, strategies: list[str], out: Path, jobs: int) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    result = comparison.run_comparison(config, strategies, [0], out, progress=False, jobs=jobs)
    seconds = time.perf_counter() - start
    finals = {run["name"]: run["final_accuracy"] for run in result.summary["runs"]}
    return seconds, finals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("benchmarks/configs/rt-strong.yaml"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", default="2")
    parser.add_argument("--strategies", default="fedpilot,fedavg")
    args = parser.parse_args()
    try:
        jobs = comparison.parse_jobs(args.jobs)
        strategies = comparison.parse_strategies(args.strategies)
        data = load_config(args.config).model_dump(mode="json")
        data["federation"]["rounds"] = args.rounds
        config = parse_config(data, "--rounds")
        with tempfile.TemporaryDirectory() as tmp:
            serial, serial_finals = timed(config, strategies, Path(tmp) / "one", 1)
            parallel, parallel_finals = timed(config, strategies, Path(tmp) / "many", jobs)
    except FedpilotError as err:
        print(f"jobs_throughput.py: error: {err}", file=sys.stderr)
        return err.exit_code
    print(json.dumps({"runs": len(strategies), "rounds": args.rounds, "jobs": jobs,
                      "threads_per_job": comparison.parallel_threads(jobs),
                      "one_at_a_time_s": round(serial, 1), "jobs_s": round(parallel, 1),
                      "speed_up": round(serial / parallel, 2),
                      "max_final_accuracy_difference": max(abs(serial_finals[k] - parallel_finals[k]) for k in serial_finals)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
