"""Simulate 8, 100 and 1,000 clients on the default model: peak RSS and time per client-step against 8 clients.

Usage: .venv/bin/python benchmarks/scale.py [--rounds 3] [--local-steps 2] [--batch-size 1] [--strategy fedpilot]

Each federation runs in its own process (peak RSS is a process's high-water mark), on the default
config with these changes:

- ``federation.num_clients`` 8 / 100 / 1,000 and ``clients_per_round`` all / 10 / 20;
- an **iid** partition: the default Dirichlet(0.5) with ``min_partition_size: 10`` cannot give 1,000
  clients 10 samples each out of 1,780 training samples (it stops with one line, exit 2), while iid
  gives every client 1 or 2 samples;
- ``train.batch_size`` 1 (``--batch-size``): with 1,000 clients a shard holds 1 or 2 samples, so a
  client step is one row at every scale and the time per client-step compares like with like (at the
  default 16 rows, the small shards would make the large federations look faster than they are);
- ``rounds`` and ``local_steps`` small (``--rounds``, ``--local-steps``) so the three runs take minutes.

Printed per federation: build time, peak RSS, time per client-step (the clients' own ``seconds``,
training and scoring together, over their local steps) and wall time per round; then
``rss <n> vs 8: <ratio>`` and ``step-time <n> vs 8: <ratio>`` (targets: RSS within 1.3x, time within 1.2x).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = ((8, None), (100, 10), (1000, 20))


def run_one(num_clients: int, per_round: int | None, args: argparse.Namespace) -> dict:
    from fedpilot.config import load_config, parse_config
    from fedpilot.simulation import run_simulation

    base = load_config(None).model_dump(mode="json")
    base["federation"].update(num_clients=num_clients, clients_per_round=per_round, rounds=args.rounds)
    base["data"]["partition"].update(kind="iid")
    base["train"].update(local_steps=args.local_steps, batch_size=args.batch_size)
    base["strategy"] = args.strategy
    config = parse_config(base)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_simulation(config, Path(out) / "run", progress=False)
    wall = time.perf_counter() - start
    rounds = result.rounds[1:]
    records = [c for r in rounds for c in r["clients"]]
    scoring = [s for r in rounds for s in r["scoring"]]
    steps = sum(c["steps"] for c in records)
    seconds = sum(c["seconds"] for c in records) + sum(s["seconds"] for s in scoring)
    score_steps = len(scoring) * getattr(config.strategy_settings(), "score_batches", 0)  # a scoring batch: forward + backward
    return {
        "clients": num_clients,
        "per_round": per_round or num_clients,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds_per_client_step": seconds / max(1, steps + score_steps),
        "seconds_per_round": statistics.fmean(r["seconds"] for r in rounds),
        "client_steps": steps + score_steps,
        "wall_seconds": wall,
        "violations": len(result.results["budget_violations"]),
        "final_accuracy": result.rounds[-1]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--strategy", default="fedpilot")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size in this process
    args = parser.parse_args()
    if args.one is not None:
        per_round = dict(SIZES)[args.one]
        print(json.dumps(run_one(args.one, per_round, args)))
        return
    rows = {}
    for n, _ in SIZES:
        command = [sys.executable, __file__, "--one", str(n), "--rounds", str(args.rounds), "--local-steps", str(args.local_steps),
                   "--batch-size", str(args.batch_size), "--strategy", args.strategy]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
        if done.returncode != 0:
            sys.exit(f"{n} clients failed:\n{done.stderr[-3000:]}")
        rows[n] = json.loads(done.stdout.strip().splitlines()[-1])
        r = rows[n]
        print(f"  {n} clients ({r['per_round']} a round): peak RSS {r['peak_rss_mib']:.0f} MiB, "
              f"{r['seconds_per_client_step'] * 1e3:.0f} ms per client-step ({r['client_steps']} steps), "
              f"{r['seconds_per_round']:.1f} s per round, {r['violations']} violations, final accuracy {r['final_accuracy']:.3f}",
              flush=True)
    for n, _ in SIZES[1:]:
        print(f"rss {n} vs 8: {rows[n]['peak_rss_mib'] / rows[8]['peak_rss_mib']:.3f}")
        print(f"step-time {n} vs 8: {rows[n]['seconds_per_client_step'] / rows[8]['seconds_per_client_step']:.3f}")


if __name__ == "__main__":
    main()
