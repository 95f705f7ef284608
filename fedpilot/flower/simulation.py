"""Flower's simulation engine: ``flwr run <app> local-simulation`` runs the same ServerApp and ClientApp on
virtual SuperNodes (Ray actors) under a local SuperLink that ``flwr`` starts and manages itself.

What it takes (flwr 1.42, the ``flwr[simulation]`` extra):

- a SuperLink connection in ``$FLWR_HOME/config.toml`` whose address is ``":local:"`` (:func:`write_connection`);
  the number of virtual SuperNodes comes with each run: ``--federation-config "num-supernodes=N"``, N =
  ``federation.num_clients`` (the ServerApp stops with one line on another number);
- ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` in the environment of the ``flwr run`` that starts the local
  SuperLink: otherwise it runs ``uv sync`` on the app's dependencies into a fresh environment per run, which
  resolves ``torch==2.13.0`` from PyPI to the CUDA build (several GB);
- each virtual SuperNode's node config holds only ``partition-id`` and ``num-partitions``: the ClientApp takes its
  memory budget from the run's config, ``federation.budgets`` for that partition (as the simulator assigns it).

The local SuperLink keeps running after the run (Flower's design: later ``flwr`` commands reuse it, on the ports
``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``, default 39091, and ``FLWR_LOCAL_CONTROL_API_PORT``, default 39093).
:func:`run_local_simulation` runs one config end to end and stops the SuperLink (and every process it started)
afterwards::

    python -m fedpilot.flower.simulation my.yaml      # FLWR_HOME: a fresh folder unless set
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONNECTION = "local-simulation"
NO_DEPENDENCY_INSTALL = "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"
PORTS = ("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT")
BIN = Path(sys.executable).parent


def write_connection(flwr_home: Path) -> Path:
    """``flwr_home/config.toml`` with the ``local-simulation`` connection (a local SuperLink, ``address = ":local:"``)
    added, as the default where the file is new; its path."""
    path = flwr_home / "config.toml"
    flwr_home.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.is_file() else f'[superlink]\ndefault = "{CONNECTION}"\n'
    if f"[superlink.{CONNECTION}]" not in text:
        text = f'{text.rstrip()}\n\n[superlink.{CONNECTION}]\naddress = ":local:"\n'
    path.write_text(text)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the loopback rehearsals and benchmarks take theirs here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(flwr_home: Path, base: dict[str, str] | None = None, free_ports: bool = True) -> dict[str, str]:
    """The environment of ``flwr run``: ``FLWR_HOME``, no runtime dependency installation, this interpreter's
    ``bin`` first on ``PATH`` (flwr starts ``flower-superlink`` by name), fedpilot's checkout first on ``PYTHONPATH``
    (the code the FAB carries) and, with ``free_ports``, the local SuperLink on free ports (not the fixed defaults)."""
    root = str(Path(__file__).resolve().parents[2])
    base = dict(os.environ if base is None else base)
    env = {
        **base,
        "FLWR_HOME": str(flwr_home),
        NO_DEPENDENCY_INSTALL: "1",
        "HF_HUB_OFFLINE": base.get("HF_HUB_OFFLINE", "1"),
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join([str(BIN), base.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [root, base.get("PYTHONPATH")])),
    }
    if free_ports:
        env.update({name: str(free_port()) for name in PORTS})
    return env


def flwr_run(app: Path, config: Path, num_supernodes: int, env: dict[str, str], timeout: float = 3600) -> subprocess.CompletedProcess:
    """``flwr run APP local-simulation --federation-config num-supernodes=N --run-config config="CONFIG" --stream``."""
    args = [str(BIN / "flwr"), "run", str(app), CONNECTION, "--federation-config", f"num-supernodes={num_supernodes}",
            "--run-config", f'config="{config.resolve()}"', "--stream"]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def carriers(flwr_home: Path) -> list[int]:
    """Pids of the live processes whose environment holds ``FLWR_HOME=flwr_home`` (the local SuperLink, its
    SuperExec, the simulation and Ray's processes), from /proc; empty where there is none."""
    needle = f"FLWR_HOME={flwr_home}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0") and int(entry.name) != os.getpid():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop_local_superlink(flwr_home: Path, wait: float = 10.0) -> list[int]:
    """Stop the local SuperLink of ``flwr_home`` and everything it started (SIGTERM, then SIGKILL after ``wait``
    seconds); the pids it found."""
    found = carriers(flwr_home)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in found:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (wait if sig == signal.SIGTERM else 0)
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in found):
            time.sleep(0.1)
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def run_local_simulation(config_path: Path, flwr_home: Path, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run the fedpilot config at ``config_path`` on Flower's simulation engine with ``federation.num_clients``
    virtual SuperNodes (the app staged into ``flwr_home/app``), then stop the local SuperLink; ``flwr run``'s outcome."""
    from fedpilot.config import load_config
    from fedpilot.flower.stage import stage_app

    num_clients = load_config(config_path).federation.num_clients
    write_connection(flwr_home)
    app = stage_app(flwr_home / "app")
    try:
        return flwr_run(app, config_path, num_clients, environment(flwr_home), timeout)
    finally:
        stop_local_superlink(flwr_home)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m fedpilot.flower.simulation CONFIG.yaml   (FLWR_HOME: a fresh folder unless set)", file=sys.stderr)
        return 2
    from fedpilot.config import load_config
    from fedpilot.core.errors import FedpilotError

    try:
        load_config(args[0])
    except FedpilotError as err:
        print(f"fedpilot: error: {err}", file=sys.stderr)
        return err.exit_code
    home = Path(os.environ.get("FLWR_HOME") or tempfile.mkdtemp(prefix="fedpilot-flower-sim-"))
    print(f"FLWR_HOME={home}", file=sys.stderr)
    done = run_local_simulation(Path(args[0]), home)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
