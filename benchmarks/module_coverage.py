"""How much room a run left for stagg: per module and round, the share of the round's samples whose
client trained the module (coverage c), the rounds it went untrained (staleness s), and the weight
TemporalCompensation gives its update history, w = eta (1 - c) min(1, (s + 1) / tau)
(fedpilot.strategies.compensation.TemporalCompensation).

Usage: .venv/bin/python benchmarks/module_coverage.py RUN [RUN ...]   (run folders holding results.json)

Prints, per run, over the module-rounds after round 0: the share trained by every participant (c = 1,
stagg is FedAvg there), by some (0 < c < 1), by none (c = 0), the mean and 90th percentile of w, and
the share of modules never trained in the whole run. eta and tau are the run's recorded settings
(the code's defaults when it recorded none). Used in docs/protocol.md to explain with numbers why the
stagg ablation does or does not move accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def coverage_stats(results: dict) -> dict[str, float]:
    from fedpilot.strategies.fedpilot import FedPilotOptions
    from fedpilot.strategies.compensation import compensation_weight

    settings = FedPilotOptions.model_validate(
        {k: v for k, v in (results.get("strategy_settings") or {}).items() if k in FedPilotOptions.model_fields}
    )
    eta, tau = settings.compensation, settings.staleness_horizon
    modules = results["modules"]
    staleness = {m: 0 for m in modules}
    ever: set[str] = set()
    covers, weights = [], []
    for record in results["rounds"]:
        clients = record.get("clients") or []
        if not clients:
            continue
        total = sum(c["num_samples"] for c in clients)
        for m in modules:
            share = sum(c["num_samples"] for c in clients if m in c["modules"]) / total
            staleness[m] = 0 if share > 0 else staleness[m] + 1
            if share > 0:
                ever.add(m)
            covers.append(share)
            weights.append(compensation_weight(eta, share, staleness[m], tau))
    c, w = np.asarray(covers), np.asarray(weights)
    return {
        "module_rounds": float(len(c)),
        "full": float(np.mean(c == 1.0)),
        "partial": float(np.mean((c > 0) & (c < 1))),
        "none": float(np.mean(c == 0)),
        "mean_coverage": float(c.mean()),
        "mean_weight": float(w.mean()),
        "p90_weight": float(np.quantile(w, 0.9)),
        "never_trained": 1 - len(ever) / len(modules),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    stats = {}
    for run in args.runs:  # every file read before anything is printed
        path = run / "results.json"
        try:
            stats[run] = coverage_stats(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"module_coverage.py: {path}: cannot read a run ({error!r}); give run folders holding a results.json", file=sys.stderr)
            return 2
    print("| run | module-rounds | c = 1 | 0 < c < 1 | c = 0 | mean c | mean w | p90 w | never trained |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run, s in stats.items():
        print(
            f"| {run} | {s['module_rounds']:.0f} | {s['full']:.2f} | {s['partial']:.2f} | {s['none']:.2f} | "
            f"{s['mean_coverage']:.2f} | {s['mean_weight']:.3f} | {s['p90_weight']:.3f} | {s['never_trained']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
