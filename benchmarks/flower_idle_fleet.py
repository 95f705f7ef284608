"""How much an idle Flower loopback fleet slows client updates computed in another process.

Usage: .venv/bin/python benchmarks/flower_idle_fleet.py [--config FILE | --small] [--rounds R] [--pairs P]

The warm executors of a loopback run (docs/flower.md) spend about a quarter more time on a client's update
than the in-process simulator on the same one. This separates the fleet from the run: it runs the config
(default: the embedded default at 3 rounds) with ``fedpilot run`` alone, then with a loopback fleet up and
idle beside it (a SuperLink, one SuperNode per client and their warm executors, as
``benchmarks/flower_overhead.py`` starts them, but no ``flwr run``), ``--pairs`` times, and once more alone at
the end, so that every run with the fleet sits between two runs without. It prints one JSON line: the mean
client-update seconds of each run (``results.json``), the ratio of each fleet run to the mean of its two
neighbours, and the idle fleet's CPU seconds and context switches a second by role (read from /proc over
10 s, so it needs Linux). Run it on idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flower_overhead import BIN, Federation, benchmark_settings, finished_results, stat_cpu_seconds  # noqa: E402

ROLES = {"superlink": "superlink", "supernode": "supernodes", "warm": "executors"}


def fleet_activity(fleet: Federation, seconds: float = 10.0) -> dict[str, dict[str, float]]:
    """CPU seconds and context switches a second of the idle fleet's processes, by role, over ``seconds``."""

    def sample() -> dict[str, list[float]]:
        totals: dict[str, list[float]] = {}
        for name, proc in fleet.procs:
            role = ROLES.get(name.split("-")[0], "other")
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu = stat_cpu_seconds(fields)
                switches = 0
                for task in Path(f"/proc/{proc.pid}/task").iterdir():
                    for line in (task / "status").read_text().splitlines():
                        if "ctxt_switches:" in line:
                            switches += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            total = totals.setdefault(role, [0.0, 0.0])
            total[0] += cpu
            total[1] += switches
        return totals

    before = sample()
    time.sleep(seconds)
    after = sample()
    return {role: {"cpu_s": round(after[role][0] - before[role][0], 2),
                   "switches_per_s": round((after[role][1] - before[role][1]) / seconds)} for role in after if role in before}


def client_seconds(path: Path) -> float:
    return statistics.mean(c["seconds"] for r in finished_results(path)["rounds"] for c in r.get("clients", []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="a fedpilot YAML (default: the embedded default)")
    parser.add_argument("--small", action="store_true", help="the default cut as flower_overhead.py --small cuts it (a quick check; --rounds still applies)")
    parser.add_argument("--rounds", type=int, default=3, help="federation.rounds (default 3)")
    parser.add_argument("--pairs", type=int, default=1, help="runs with the fleet, each after a run without (default 1)")
    args = parser.parse_args()
    if args.rounds < 1 or args.pairs < 1:
        parser.error("--rounds and --pairs take a positive number")
    settings = benchmark_settings(args.config, args.small, args.rounds)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="flower-idle-fleet-") as tmp:
        work = Path(tmp)

        def config_for(name: str) -> Path:
            config = work / f"{name}.yaml"
            config.write_text(yaml.safe_dump({**settings, "output_dir": str(work / name)}))
            return config

        def run(name: str) -> float:
            subprocess.run([str(BIN / "fedpilot"), "run", "--config", str(config_for(name))], check=True, cwd=work, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return client_seconds(work / name)

        # the memory model calibrated before anything is timed (cached on disk, as every run then finds it)
        subprocess.run([str(BIN / "fedpilot"), "profile", "--config", str(config_for("profile"))], check=True, cwd=work, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        idle_nodes = [None] * settings["federation"]["num_clients"]  # no run reaches them: their budgets do not matter
        alone, fleet_runs, activity = [run("alone-0")], [], None
        for pair in range(args.pairs):
            fleet = Federation(work / f"fleet-{pair}", idle_nodes, warm=True, slots=1)
            try:
                time.sleep(5)  # the executors have imported everything; let the start settle
                activity = activity or fleet_activity(fleet)
                fleet_runs.append(run(f"fleet-{pair}-run"))
            finally:
                fleet.stop()
            alone.append(run(f"alone-{pair + 1}"))
        ratios = [fleet_runs[i] / statistics.mean(alone[i:i + 2]) for i in range(args.pairs)]
        print(json.dumps({"config": "small" if args.small else str(args.config or "default"), "rounds": args.rounds,
                          "clients": settings["federation"]["num_clients"],
                          "client_s_alone": [round(s, 3) for s in alone], "client_s_with_fleet": [round(s, 3) for s in fleet_runs],
                          "ratio_to_neighbours": [round(r, 3) for r in ratios], "idle_fleet": activity}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
