"""`fedpilot compare --jobs 2` stopped half-way: its worker processes never go on alone.

Killing the comparison (SIGTERM to its process only) or pressing Ctrl-C (SIGINT to its process group)
must end every worker within seconds, save the runs they were making (marked interrupted), and start
none of the runs still queued, so a comparison started again on the same folder is the only writer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import FAST, default_sigint

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["fedavg", "fedpilot", "exclusive"]  # two workers: the third run is queued behind them


def status(run: Path) -> tuple[str | None, int]:
    try:
        results = json.loads((run / "results.json").read_text())
    except (OSError, ValueError):
        return None, 0
    return results.get("status"), len(results.get("rounds", []))


def start(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump({**FAST, "federation": {**FAST["federation"], "rounds": 200}}))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "fedpilot.cli", "compare", "--jobs", "2", "--config", str(config),
               "--strategies", ",".join(STRATEGIES), "--seeds", "0", "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # both workers inside their rounds
        if all(status(out / f"{s}-seed0")[1] >= 3 for s in STRATEGIES[:2]):
            return process, out
        assert process.poll() is None, process.communicate()
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"the two first runs did not reach round 2 in 240 s: {process.communicate()}")


def gone_within(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    for p in alive:
        p.kill()
    return alive


@pytest.mark.parametrize("how", ["sigterm-to-the-comparison", "ctrl-c"])
def test_stopping_a_parallel_comparison_stops_its_workers(how: str, tmp_path: Path) -> None:
    process, out = start(tmp_path)
    try:
        check_stop(how, process, out)
    finally:  # never leave a comparison or its workers behind, whatever failed
        for p in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)] if process.poll() is None else []:
            p.kill()


def check_stop(how: str, process: subprocess.Popen, out: Path) -> None:
    workers = psutil.Process(process.pid).children(recursive=True)
    commands = [" ".join(w.cmdline()) for w in workers]
    assert len([c for c in commands if "spawn_main" in c]) == 2, commands
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)  # the comparison alone: its workers are orphaned
    _, err = process.communicate(timeout=120)
    alive = gone_within(workers, 60)
    assert not alive, f"workers still running after the comparison stopped: {[p.cmdline() for p in alive]}"
    if how == "ctrl-c":
        assert process.returncode == 130
        assert "fedpilot: interrupted; results so far are saved" in err.strip().splitlines()
    else:
        assert process.returncode == -signal.SIGTERM
    for s in STRATEGIES[:2]:  # the runs going on saved what they had, marked interrupted
        state, rounds = status(out / f"{s}-seed0")
        assert state == "interrupted" and rounds >= 3
    # Only the comparison spawns workers and only its two workers (counted above) run anything; all of them
    # have exited, so nothing is left that could still start the queued run: no waiting to know it never will.
    assert not (out / f"{STRATEGIES[2]}-seed0").exists()  # the queued run never started


def test_a_failed_run_lets_the_others_finish_and_starts_no_queued_run(tmp_path: Path) -> None:
    """Budgets that fit no module: fedpilot refuses at start-up, memory-unaware fedavg runs anyway (its
    rounds go on after fedpilot fails: fedpilot stops before its first round), and exclusive, queued
    behind them, must not start."""
    tight = {**FAST["federation"], "rounds": 8, "budgets": {"tiers": [{"fraction": 1.0, "memory": "3MiB"}]}}  # below the weights alone
    config = tmp_path / "tight.yaml"
    config.write_text(yaml.safe_dump({**FAST, "federation": tight}))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fedpilot.cli", "compare", "--jobs", "2", "--config", str(config),
               "--strategies", "fedpilot,fedavg,exclusive", "--seeds", "0", "--out", str(out), "--quiet"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("fedpilot: error: fedpilot-seed0: federation.budgets"), done.stderr
    assert status(out / "fedavg-seed0")[0] == "finished"
    assert not (out / "exclusive-seed0").exists()
