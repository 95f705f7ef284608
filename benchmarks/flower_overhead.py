"""Wall time of a Flower loopback deployment, and of Flower's simulation engine, against the in-process simulator, on the same config.

Usage: .venv/bin/python benchmarks/flower_overhead.py [--config FILE | --small] [--rounds R] [--slots N] [--no-engine] [--cold]
       [--superlink-state memory|file] [--executor-env NAME=VALUE]... [--flower-policy normal|idle] [--perf DIR]

Runs the config (default: the embedded default, 8 clients, 5 rounds; ``--small``: the default cut to
3 clients, 3 rounds, 600 samples of 32 tokens, 4 local steps, for busy cores) with ``fedpilot run`` in a fresh
process, then on a loopback federation on this machine: a SuperLink and one SuperNode per client
(``--isolation process``, budgets from the config's tiers through each node's ``memory-budget``), each
with its warm ClientApp executor (``python -m fedpilot.flower.warm``; ``--slots N``, default 1: N executors
compute at a time, each with cores / N torch threads, so that eight nodes do not oversubscribe two cores;
0: all at once with every core), and ``flwr run`` twice: the first
run on nodes that have only imported torch and fedpilot, the second on nodes whose model, data and
partitions the first run loaded. Then the config on Flower's simulation engine (``flwr run <app>
local-simulation``, :mod:`fedpilot.flower.simulation`: one virtual SuperNode per client, Ray actors, budgets
from the config), timed from ``flwr run`` to finished results with the start of its local SuperLink, Ray and the
actors' model loads counted (it starts afresh for each run). ``--cold`` adds a run on Flower's default
SuperNodes (a ClientApp process per message). Times are from start to finished results; starting the loopback
federation is not counted (it is long-lived), loading the model and data on the nodes is (first run); the memory model is
calibrated (``fedpilot profile``, cached on disk) before anything is timed. Prints one JSON line: the
seconds, the ratios to the simulator, whether every round's accuracy and loss equal the simulator's, and the CPU
seconds each side spent (the simulator's process; on the loopback by role: the executors, the SuperNodes, the
SuperLink, the ServerApp; read from /proc four times a second, so it needs Linux), and where each run's time went
(``time_split_s``: every round's seconds as its server recorded them, and the rest: start, loading, round 0).
Run it on idle cores: the loopback federation shares them with the simulator's one process.

``--perf DIR`` runs the simulator and every warm executor under ``perf record`` (a CPU-clock sample every 5 ms of
each thread, user and kernel), keeps the recordings in DIR and adds to the JSON line where each side's CPU went:
seconds by shared object (libtorch, libgomp's barrier waits, the interpreter, the kernel, ...) and by function, for
the simulator's run and the executors' part of the warm loopback run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from fedpilot.flower.simulation import free_port, run_local_simulation
from fedpilot.flower.stage import stage_app

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port} after {seconds} s")


TICK = os.sysconf("SC_CLK_TCK")


def stat_cpu_seconds(fields: list[str]) -> float:
    """User + system CPU seconds from /proc/PID/stat's fields after the process name (state, ppid, pgrp, ...)."""
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    """CPU seconds (user + system) spent by the processes of some process groups while it runs, by role: each
    live process is read from /proc every ``every`` seconds, so one that exits in between (the ServerApp)
    counts up to its last reading."""

    def __init__(self, roles: dict[int, str], marker: bytes, every: float = 0.25) -> None:
        """``roles``: process group -> role; ``marker``: an environment entry (``FLWR_HOME=...``) that the
        processes those start in sessions of their own (the SuperLink's ServerApp) inherit."""
        self.roles, self.marker, self.every, self.seen, self.start = roles, marker, every, {}, {}
        self.stopped, self.strangers, self.adopted = threading.Event(), set(), {}  # pids known not to be ours, and ours by environment
        self.read(self.start)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def read(self, into: dict) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                role = self.roles.get(int(fields[2])) or self.adopted.get(entry.name)  # after the name: state, ppid, pgrp, ...
                if role is None and entry.name not in self.strangers:
                    if self.marker in (entry / "environ").read_bytes().split(b"\0"):
                        role = "serverapp" if b"flwr-serverapp" in (entry / "cmdline").read_bytes() else "other"
                        self.adopted[entry.name] = role
                    else:
                        self.strangers.add(entry.name)
                if role is None:
                    continue
                into[int(entry.name)] = (role, stat_cpu_seconds(fields))
            except (OSError, IndexError, ValueError):
                continue

    def loop(self) -> None:
        while not self.stopped.wait(self.every):
            self.read(self.seen)

    def stop(self) -> dict[str, float]:
        self.stopped.set()
        self.thread.join()
        self.read(self.seen)
        out: dict[str, float] = {}
        for pid, (role, cpu) in self.seen.items():
            out[role] = out.get(role, 0.0) + cpu - self.start.get(pid, (role, 0.0))[1]
        return {role: round(cpu, 1) for role, cpu in sorted(out.items())}


class Federation:
    """A SuperLink and one SuperNode per budget on 127.0.0.1 (warm: with their executors); every process
    in a session of its own, each group stopped by :meth:`stop`."""

    def __init__(self, folder: Path, budgets: list[int | None], warm: bool, slots: int | None = None, shared: bool = False,
                 state: str = "memory", executor_env: dict[str, str] | None = None, flower_policy: str = "normal",
                 perf: Path | None = None) -> None:
        self.folder, self.procs, self.executor_env, self.flower_policy, self.perf = folder, [], executor_env or {}, flower_policy, perf
        self.windows: dict[str, tuple[float, float]] = {}  # config stem -> its run's time.monotonic() start and end
        folder.mkdir(parents=True)
        self.env = {**os.environ, "FLWR_HOME": str(folder / "flwr-home"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),  # the SuperLink starts flower-superexec by name
"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        link = free_port()
        (folder / "flwr-home").mkdir()
        (folder / "flwr-home" / "config.toml").write_text(f'[superlink]\ndefault = "loop"\n\n[superlink.loop]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
        superlink = self.start("superlink", [BIN / "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                                             *(["--database", folder / "state.db"] if state == "file" else []), "--host", "127.0.0.1", "--port", link])
        wait_for_port(link, superlink)
        ports, nodes = [], []
        for cid, budget in enumerate(budgets):
            ports.append(free_port())
            declared = f'partition-id={cid} num-partitions={len(budgets)}' + ("" if budget is None else f' memory-budget="{budget}B"')
            node = self.start(f"supernode-{cid}", [BIN / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}", "--port", ports[-1],
                                                   *(["--isolation", "process"] if warm else []), "--node-config", declared])
            nodes.append(node)
            if warm and not shared:
                self.start(f"warm-{cid}", [sys.executable, "-m", "fedpilot.flower.warm", "--runtime-api-address", f"127.0.0.1:{ports[-1]}",
                                           "--insecure", "--watch-pid", node.pid, *self.sharing(slots)])
        if warm and shared:  # one executor process for every node
            self.start("warm-shared", [sys.executable, "-m", "fedpilot.flower.warm", "--insecure",
                                       *[a for port, node in zip(ports, nodes) for a in ("--runtime-api-address", f"127.0.0.1:{port}", "--watch-pid", node.pid)]])
        for port, node in zip(ports, nodes):
            wait_for_port(port, node)
        if warm:  # every executor has imported torch and fedpilot and serves its node
            for name, proc in self.procs:
                while name.startswith("warm-") and "serving ClientApp tasks" not in (folder / f"{name}.log").read_text():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited; see {folder / name}.log")
                    time.sleep(0.2)

    def sharing(self, slots: int | None) -> list:
        """The executors' share of this machine's cores: ``slots`` ClientApps at a time, each with cores / slots threads."""
        if not slots:
            return []
        return ["--cpu-slots", slots, "--slot-dir", self.folder / "cpu-slots", "--torch-threads", max(1, (os.cpu_count() or 1) // slots)]

    def start(self, name: str, args: list) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        env = {**self.env, **self.executor_env} if name.startswith("warm-") else self.env
        idle = self.flower_policy == "idle" and not name.startswith("warm-")  # Flower's processes (and the ServerApp the SuperLink starts)
        if self.perf is not None and name.startswith("warm-"):
            args = perf_record(self.perf / f"{name}.data", args)
        proc = subprocess.Popen([str(a) for a in args], cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=sched_idle if idle else None)
        self.procs.append((name, proc))
        return proc

    def run(self, config: Path) -> float:
        start, began = time.perf_counter(), time.monotonic()
        app = self.folder / "app"
        if not app.is_dir():  # what the FAB carries (flwr run walks every file it is given, .venv included)
            stage_app(app)
        roles = {proc.pid: name.split("-")[0].replace("supernode", "supernodes").replace("warm", "executors") for name, proc in self.procs}
        meter = CpuMeter(roles, f"FLWR_HOME={self.folder / 'flwr-home'}".encode())
        done = subprocess.run([str(BIN / "flwr"), "run", str(app), "loop", "--run-config", f'config="{config}"', "--stream"],
                              cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - start
        self.windows[config.stem] = (began, time.monotonic())
        self.cpu_seconds = meter.stop()
        (self.folder / f"flwr-run-{config.stem}.log").write_text(done.stdout + done.stderr)
        if done.returncode:
            raise RuntimeError(f"flwr run exited {done.returncode}; see {self.folder}")
        return seconds

    def stop(self) -> None:
        if self.perf is not None:  # perf record writes its file on SIGINT (and ends its command), not on SIGTERM
            for name, proc in self.procs:
                if name.startswith("warm-") and proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            for name, proc in self.procs:
                if name.startswith("warm-"):
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        pass
        for _, proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for _, proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if self.perf is not None:  # the processes' logs (each task's times) beside the recordings
            for log in self.folder.glob("*.log"):
                shutil.copy(log, self.perf / f"{self.folder.name}-{log.name}")


PERF_HZ = 200


def perf_record(data: Path, args: list) -> list:
    """``args`` run under ``perf record`` (CPU-clock samples of every thread at PERF_HZ), the samples in ``data``."""
    data.parent.mkdir(parents=True, exist_ok=True)
    return ["perf", "record", "-q", "-k", "mono", "-e", "cpu-clock", "-F", PERF_HZ, "-o", data, "--", *args]


def perf_seconds(data: Path, sort: str, window: tuple[float, float] | None = None, top: int = 12) -> dict[str, float]:
    """CPU seconds by ``sort`` (``dso``, ``dso,sym``) in a ``perf record`` file: samples / PERF_HZ, the ``top`` largest;
    ``window``: only the samples between these two ``time.monotonic()`` readings."""
    cmd = ["perf", "report", "-i", str(data), "--stdio", "--sort", sort, "-F", "sample," + sort, "-q"]
    if window:
        cmd += ["--time", f"{window[0]:.6f},{window[1]:.6f}"]
    return perf_report_seconds(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout, top)


def perf_report_seconds(text: str, top: int = 12) -> dict[str, float]:
    """``perf report -q -F sample,...`` lines (a sample count, then the key) as CPU seconds by key, the ``top`` largest."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            key = " ".join(parts[1].replace("[.] ", "").replace("[k] ", "").split())
            out[key] = out.get(key, 0.0) + int(parts[0]) / PERF_HZ
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])[:top]}


def perf_summary(files: list[Path], window: tuple[float, float] | None = None) -> dict[str, dict[str, float]]:
    """Seconds by shared object and by function (the largest; libgomp's are unnamed addresses), summed over ``files``
    (``window``: between two ``time.monotonic()`` readings)."""
    summary: dict[str, dict[str, float]] = {"by_dso": {}, "by_function": {}}
    for data in files:
        for part, sort in (("by_dso", "dso"), ("by_function", "dso,sym")):
            for key, seconds in perf_seconds(data, sort, window).items():
                summary[part][key] = round(summary[part].get(key, 0.0) + seconds, 1)
    return {part: dict(sorted(d.items(), key=lambda kv: -kv[1])) for part, d in summary.items()}


def sched_idle() -> None:
    """This process (and what it starts) at Linux's SCHED_IDLE: it runs only on a core nothing else wants, and
    waking it never preempts a normal process (a training executor's threads)."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def finished_results(path: Path) -> dict:
    """The results.json of the run in ``path``, which must have finished."""
    results = json.loads((path / "results.json").read_text())
    if results.get("status") != "finished":
        raise RuntimeError(f"{path}: the run did not finish")
    return results


def rounds(path: Path) -> list[tuple[float | None, float | None]]:
    return [(r.get("accuracy"), r.get("loss")) for r in finished_results(path)["rounds"]]


def time_split(path: Path, total: float) -> dict[str, object]:
    """Where a run's ``total`` seconds (start of its command to finished results) went: each round's seconds as the
    server recorded them (its clients' work, the transport and the round's evaluation), and the rest (``outside_rounds``:
    the process's start and imports, loading the model and data, the round-0 evaluation, writing the results)."""
    rounds_s = [float(r["seconds"]) for r in finished_results(path)["rounds"] if r["round"] > 0]
    return {"rounds": [round(s, 1) for s in rounds_s], "outside_rounds": round(total - sum(rounds_s), 1)}


def benchmark_settings(config: Path | None, small: bool, rounds: int | None) -> dict:
    """The config's settings as a dict (default: the embedded default); ``small``: cut to 3 clients, 3 rounds, 600
    samples of 32 tokens, 4 local steps; ``rounds``: federation.rounds instead of the config's."""
    from fedpilot.config import load_config

    settings = load_config(config).model_dump(mode="json")
    if small:
        settings["data"] |= {"max_samples": 600, "max_length": 32}
        settings["federation"] |= {"num_clients": 3, "rounds": 3, "budgets": {"tiers": [
            {"fraction": 0.34, "memory": "150MiB"}, {"fraction": 0.33, "memory": "190MiB"}, {"fraction": 0.33, "memory": "256MiB"}]}}
        settings["train"]["local_steps"] = 4
    if rounds:
        settings["federation"]["rounds"] = rounds
    return settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a fedpilot YAML (default: the embedded default)")
    parser.add_argument("--small", action="store_true", help="the default config cut down (see above) instead of --config")
    parser.add_argument("--rounds", type=int, help="federation.rounds instead of the config's")
    parser.add_argument("--slots", type=int, default=1, help="ClientApps the warm nodes run at a time, each with cores / slots torch threads "
                        "(default 1; 0: every node computes at once with every core)")
    parser.add_argument("--shared", action="store_true", help="one warm executor process serves every SuperNode (instead of one each, --slots)")
    parser.add_argument("--superlink-state", choices=["file", "memory"], default="memory",
                        help="the SuperLink's state in memory (default, Flower's own, as scripts/flower-local.sh runs it) or in a SQLite "
                        "file (as a deployment keeps it; about 2.5 x the SuperLink's CPU)")
    parser.add_argument("--executor-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable of the warm executors only (e.g. GOMP_SPINCOUNT=10000); repeatable")
    parser.add_argument("--flower-policy", choices=["normal", "idle"], default="normal",
                        help="the scheduling policy of Flower's processes (SuperLink, its ServerApp, SuperNodes): normal (default) or idle "
                             "(Linux SCHED_IDLE: they never preempt the executors' threads; the executors stay normal)")
    parser.add_argument("--perf", type=Path, metavar="DIR", help="run the simulator and the warm executors under perf record, "
                        "the recordings in DIR, and print where their CPU went (needs Linux perf)")
    parser.add_argument("--no-engine", action="store_true", help="skip the run on Flower's simulation engine")
    parser.add_argument("--cold", action="store_true", help="also run on Flower's default SuperNodes (a ClientApp process per message)")
    args = parser.parse_args()
    if bad := [item for item in args.executor_env if "=" not in item.strip("=")]:
        parser.error(f"--executor-env takes NAME=VALUE, got {bad[0]!r}")
    executor_env = dict(item.split("=", 1) for item in args.executor_env)
    settings = benchmark_settings(args.config, args.small, args.rounds)
    with tempfile.TemporaryDirectory(prefix="flower-overhead-") as tmp:
        work = Path(tmp)

        def config_for(name: str) -> Path:
            path = work / f"{name}.yaml"
            path.write_text(yaml.safe_dump({**settings, "output_dir": str(work / name)}))
            return path

        from fedpilot.config import load_config as load

        budgets = load(config_for("sim")).federation.client_budgets()
        # calibrate the cost model first (cached on disk, as every later run finds it): no run below pays for it
        subprocess.run([str(BIN / "fedpilot"), "profile", "--config", str(config_for("sim"))], check=True, cwd=work,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load_before = os.getloadavg()[0]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        simulate = [str(BIN / "fedpilot"), "run", "--config", str(config_for("sim"))]
        subprocess.run([str(a) for a in perf_record(args.perf / "simulator.data", simulate)] if args.perf else simulate, check=True, cwd=work,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
        sim = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        sim_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        expected = rounds(work / "sim")
        out: dict[str, object] = {"config": "small" if args.small else str(args.config or "default"), "clients": len(budgets),
                                  "rounds": settings["federation"]["rounds"], "slots": None if args.shared else args.slots, "shared_executor": args.shared,
                                  "superlink_state": args.superlink_state, "flower_policy": args.flower_policy, **({"executor_env": executor_env} if executor_env else {}),
                                  "simulator_s": round(sim, 1),
                                  "simulator_cpu_s": round(sim_cpu, 1)}
        federation = Federation(work / "warm", budgets, warm=True, slots=args.slots, shared=args.shared, state=args.superlink_state,
                                executor_env=executor_env, flower_policy=args.flower_policy, perf=args.perf)
        try:
            first = federation.run(config_for("first"))
            first_cpu = federation.cpu_seconds
            second = federation.run(config_for("second"))
        finally:
            federation.stop()
        out |= {"flower_first_run_s": round(first, 1), "flower_warm_run_s": round(second, 1),
                "first_run_ratio": round(first / sim, 2), "warm_run_ratio": round(second / sim, 2),
                "equal_to_simulator": rounds(work / "first") == expected and rounds(work / "second") == expected,
                "flower_first_run_cpu_s": first_cpu, "flower_warm_run_cpu_s": federation.cpu_seconds,
                "time_split_s": {"simulator": time_split(work / "sim", sim), "flower_first_run": time_split(work / "first", first),
                                 "flower_warm_run": time_split(work / "second", second)}}
        if not args.no_engine:
            start = time.perf_counter()
            engine = run_local_simulation(config_for("engine"), work / "engine-home")
            engine_s = time.perf_counter() - start
            (work / "engine.log").write_text(engine.stdout + engine.stderr)
            if engine.returncode:
                raise RuntimeError(f"flwr run local-simulation exited {engine.returncode}:\n{(engine.stdout + engine.stderr)[-3000:]}")
            out |= {"flower_simulation_engine_s": round(engine_s, 1), "simulation_engine_ratio": round(engine_s / sim, 2),
                    "simulation_engine_equal_to_simulator": rounds(work / "engine") == expected}
        if args.cold:
            federation = Federation(work / "cold", budgets, warm=False)
            try:
                cold = federation.run(config_for("cold"))
            finally:
                federation.stop()
            out |= {"flower_cold_s": round(cold, 1), "cold_ratio": round(cold / sim, 2), "cold_equal_to_simulator": rounds(work / "cold") == expected}
        out["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        if args.perf:
            out["perf_cpu_s"] = {"simulator": perf_summary([args.perf / "simulator.data"]),
                                 "executors_warm_run": perf_summary(sorted(args.perf.glob("warm-*.data")), federation.windows["second"])}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
