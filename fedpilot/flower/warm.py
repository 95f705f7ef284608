"""A warm ClientApp executor: one long-lived process per SuperNode runs every ClientApp task of that
SuperNode in-process, so torch, the model, the tokenizer and the partition load once, not per message.

Flower 1.42's SuperNode, by default (``--isolation subprocess``), has its SuperExec start a fresh
``flwr-clientapp`` process per message, which exits after replying. With ``--isolation process`` the
SuperNode starts nothing: an executor of one's own claims the ClientApp tasks from the SuperNode's
Runtime API. This module is that executor, for fedpilot's ClientApp::

    flower-supernode --isolation process --port 9094 --superlink ... --node-config ... &
    python -m fedpilot.flower.warm --runtime-api-address 127.0.0.1:9094 --insecure --watch-pid $!

Each task goes as in ``flwr-clientapp`` (claim it with AcquireTask, pull the message, context, run
and FAB, heartbeat while it runs, push the reply, then the context and the task's final status), but
the process stays and takes the next task. What stays warm is the ClientApp module and what it caches
(:mod:`fedpilot.flower.client_app`: the model and data in an LRU, one node per run); every train or
score task loads its whole adapter from the message.

The process runs the fedpilot it imported, so it checks that each run's FAB carries the same fedpilot
source (file by file, against the FAB's manifest); a run whose app differs gets an error reply naming
the first differing file (restart the executor from that fedpilot). A task that raises is answered
with an error reply, as ``flwr-clientapp`` answers, and the executor goes on to the next task.

One process may serve several SuperNodes of one machine (``--runtime-api-address`` and ``--watch-pid`` repeated):
it takes their tasks one at a time, all on one model in memory, and exits once every watched SuperNode is gone.

SuperNodes that share one machine (a loopback federation, several nodes on one host) would otherwise all
compute at once, each with every core: ``--cpu-slots N --slot-dir DIR`` lets at most N of their executors
(those given the same DIR) run a ClientApp at a time, and ``--torch-threads T`` gives each T threads; N x T
= the machine's cores keeps them from oversubscribing it (benchmarks/flower_overhead.py measures the
choices). A task waiting for a slot keeps its heartbeat.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import os
import signal
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLIENTAPP_PREFIX = "fedpilot."  # the only ClientApps this executor runs
FIRST_POLL = 0.05  # seconds before the first claim after a task; each empty claim waits 1.5 x longer, up to --poll


class CpuSlots:
    """At most ``count`` holders at a time across processes: an exclusive ``flock`` on one of ``count``
    files in ``folder`` (released by the kernel if the holder dies)."""

    def __init__(self, folder: Path, count: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = [folder / f"slot-{i}.lock" for i in range(count)]

    @contextlib.contextmanager
    def hold(self):
        """A free slot if one is, else this process's own slot (by pid) once its holder lets go: a blocking
        wait in the kernel, so the executors that wait for the cores do not spend them polling."""
        handle = None
        for path in self.paths:
            handle = open(path, "a")  # noqa: SIM115 - closed on release
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.close()
                handle = None
        if handle is None:
            path = self.paths[os.getpid() % len(self.paths)]
            handle = open(path, "a")  # noqa: SIM115
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            handle.close()


def _log(line: str) -> None:
    print(f"[fedpilot warm] {line}", file=sys.stderr, flush=True)


def inspect_fab(fab_content: bytes, package_root: Path) -> tuple[str, str | None]:
    """The FAB's ClientApp reference, and None when that is fedpilot's and each fedpilot file the FAB carries
    is byte for byte the one under ``package_root`` (the folder holding the imported ``fedpilot``); else
    what differs."""
    import tomllib

    with zipfile.ZipFile(io.BytesIO(fab_content)) as fab:
        project = tomllib.loads(fab.read("pyproject.toml").decode())
        ref = project.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {}).get("clientapp", "")
        if not ref.startswith(CLIENTAPP_PREFIX):
            return ref, f"the run's ClientApp is {ref!r}; this executor runs fedpilot's only"
        if ".info/CONTENT" in fab.namelist():  # the manifest: path,sha256,size
            rows = fab.read(".info/CONTENT").decode().splitlines()
            digests = dict(row.split(",")[:2] for row in rows if row.count(",") >= 2)
        else:
            digests = {n: hashlib.sha256(fab.read(n)).hexdigest() for n in fab.namelist() if not n.endswith("/")}
    for name in sorted(n for n in digests if n.startswith("fedpilot/")):
        local = package_root / name
        if not local.is_file():
            return ref, f"{name} is in the run's app but not in {package_root}"
        if hashlib.sha256(local.read_bytes()).hexdigest() != digests[name]:
            return ref, f"{name} differs between the run's app and {package_root}"
    return ref, None


def load_clientapp(ref: str) -> Any:
    """``module:attribute`` from this process's modules (imported once, kept with everything it caches)."""
    import importlib

    module, _, attributes = ref.partition(":")
    target: Any = importlib.import_module(module)
    for name in attributes.split("."):
        target = getattr(target, name)
    return target


class WarmExecutor:
    """Claims ClientApp tasks from one SuperNode's Runtime API and runs them in this process."""

    def __init__(self, address: str, insecure: bool, root_certificates: str | None, poll: float, auth_secret: bytes | None = None,
                 slots: CpuSlots | None = None) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address, self.insecure, self.root_certificates, self.poll = address, insecure, root_certificates, poll
        self.package_root = Path(__file__).resolve().parents[2]  # the folder holding this fedpilot
        self.checked: dict[str, tuple[str, str | None]] = {}  # FAB hash -> (ClientApp reference, None or why it cannot run here)
        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if auth_secret:
            interceptors.append(SuperExecAuthHttpInterceptor(master_secret=auth_secret, protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
        self.client = RuntimeHttpClient.from_server_address(address, insecure, root_certificates, interceptors, retry_invoker=self._retrier(None))
        self.tasks, self.slots, self.refused = 0, slots, False

    @staticmethod
    def _retrier(max_tries: int | None):
        """Retries on connection errors only (the SuperNode starting up or busy); an HTTP error is final."""
        import httpx
        from flwr.supercore.retry import RetryInvoker, exponential

        return RetryInvoker(lambda: exponential(base_delay=0.2, max_delay=5), httpx.TransportError, max_tries=max_tries, max_time=None)

    def claim(self) -> str | None:
        """A task's token if the SuperNode has one for this executor, else None (a refused claim is logged and
        sets ``refused``, so that :func:`serve` waits ``--poll`` before the next round of claims)."""
        import httpx
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType

        self.refused = False
        try:
            claimed = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        except httpx.HTTPStatusError as err:  # the SuperNode refused this claim; the next may pass
            _log(f"the SuperNode at {self.address} refused a task claim: {err.response.status_code} {err.response.text[:200]}")
            self.refused = True
            return None
        return claimed.token if claimed.HasField("task") and claimed.token else None

    def run_task(self, token: str) -> None:
        """One task, as ``flwr-clientapp`` runs it, without leaving the process."""
        from flwr.app import Error, Message, MessageType
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        client = RuntimeHttpClient.from_server_address(
            self.address, self.insecure, self.root_certificates,
            [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(token)],
            retry_invoker=self._retrier(5),
        )

        def heartbeat() -> bool:
            """True once the SuperNode answered; False: the sender tries again, backing off."""
            try:
                client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
            except Exception:  # noqa: BLE001 - the sender retries with backoff
                return False
            return True

        beats = HeartbeatSender(heartbeat)
        beats.start()
        message = context = reply = None
        status, details, start = SubStatus.FAILED, "ClientApp task failed", time.perf_counter()
        waited = ran = cpu = None
        self.tasks += 1
        try:
            message, context, run, fab = pull_task_input(client)
            if fab.hash_str not in self.checked:
                self.checked[fab.hash_str] = inspect_fab(fab.content, self.package_root)
            ref, why = self.checked[fab.hash_str]
            if why is not None:
                raise RuntimeError(f"this SuperNode's warm executor runs fedpilot from {self.package_root}: {why}; restart it from the run's fedpilot")
            claimed = time.perf_counter()
            # a query (the node's facts; the first loads its model and data) runs at once: its phase trains nothing
            computes = message.metadata.message_type != MessageType.QUERY
            with self.slots.hold() if self.slots and computes else contextlib.nullcontext():
                waited, began, cpu = time.perf_counter() - claimed, time.perf_counter(), time.process_time()
                reply = load_clientapp(ref)(message=message, context=context)
                ran, cpu = time.perf_counter() - began, time.process_time() - cpu
            status, details = SubStatus.COMPLETED, ""
        except Exception as err:  # noqa: BLE001 - the task's failure, answered as flwr-clientapp answers it
            details = f"{type(err)}:<'{err}'>"
            _log(f"task {self.tasks} raised {type(err).__name__}: {err}")
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as err:  # noqa: BLE001
                _log(f"task {self.tasks}: the reply could not be pushed: {err}")
            push_task_output(client, context, status, details)
            beats.stop()
            client.close()
        kind = message.metadata.message_type if message is not None else "?"
        parts = "" if ran is None else f" (the ClientApp {ran:.2f} s, {cpu:.2f} s of CPU" + (f", after {waited:.2f} s waiting for a CPU slot)" if self.slots and waited else ")")
        _log(f"task {self.tasks} ({kind}, run {context.run_id if context else '?'}): {status} in {time.perf_counter() - start:.2f} s{parts}"
             f", at {time.strftime('%H:%M:%S')}")


def serve(executors: list[WarmExecutor], stop: threading.Event, poll: float) -> None:
    """Take the tasks of every executor's SuperNode, one at a time, in this process: after a task, the same
    node's next claim first (the next task may be waiting already), then the others in turn; when none has a
    task, wait from FIRST_POLL up to ``poll`` seconds between rounds of claims (``poll`` after a refused claim)."""
    for executor in executors:
        _log(f"serving ClientApp tasks of the SuperNode at {executor.address} (pid {os.getpid()})")
    idle = 0  # rounds of claims that found nothing since the last task
    while not stop.is_set():
        ran = False
        for executor in executors:
            while not stop.is_set() and (token := executor.claim()) is not None:
                executor.run_task(token)
                ran = True
        if ran:
            idle = 0
            continue
        refused = any(executor.refused for executor in executors)
        stop.wait(poll if refused else min(FIRST_POLL * 1.5**idle, poll))
        idle = min(idle + 1, 64)


def running(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie (exited, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux): what kill says
        return True


def watch(pids: list[int], stop: threading.Event) -> None:
    """Stop this process once every one of ``pids`` (its SuperNodes) is gone."""

    def loop() -> None:
        alive = set(pids)
        while not stop.wait(0.5):
            for pid in [p for p in alive if not running(p)]:
                alive.discard(pid)
                _log(f"SuperNode process {pid} is gone" + ("; exiting" if not alive else ""))
            if not alive:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=loop, name="watch-supernode", daemon=True).start()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fedpilot.flower.warm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-api-address", required=True, action="append",
                        help="the SuperNode's Runtime API, host:port (its --port); repeat it to serve several SuperNodes of this "
                        "machine from this one process, one task at a time (one model in memory for all)")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API (a SuperNode without --ssl-certfile)")
    security.add_argument("--root-certificates", help="CA certificate that signed the Runtime API's --ssl-certfile")
    parser.add_argument("--superexec-auth-secret-file", help="the SuperNode's --superexec-auth-secret-file, if it has one")
    parser.add_argument("--watch-pid", type=int, action="append", help="exit when this process (the SuperNode) is gone; repeated: when all are")
    parser.add_argument("--poll", type=float, default=1.0, help="the longest wait between two task claims when idle, in seconds (default 1; "
                        "right after a task it polls every 0.05 s, 1.5 x longer each time)")
    parser.add_argument("--cpu-slots", type=int, help="with --slot-dir: at most this many executors sharing that folder run a ClientApp at a time")
    parser.add_argument("--slot-dir", type=Path, help="the folder of the shared slots' lock files (one per machine)")
    parser.add_argument("--torch-threads", type=int, help="torch's threads in this process (default: torch's, every core)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not FIRST_POLL <= args.poll <= 60:
        print(f"--poll {args.poll}: give seconds between {FIRST_POLL} and 60", file=sys.stderr)
        return 2
    if (args.cpu_slots is None) != (args.slot_dir is None) or (args.cpu_slots is not None and args.cpu_slots < 1):
        print("--cpu-slots and --slot-dir: give both (a count of at least 1 and a folder), or neither", file=sys.stderr)
        return 2
    if args.torch_threads is not None and args.torch_threads < 1:
        print(f"--torch-threads {args.torch_threads}: give at least 1", file=sys.stderr)
        return 2
    secret = None
    if args.superexec_auth_secret_file:
        from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret

        secret = load_superexec_auth_secret(secret_file=args.superexec_auth_secret_file)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.watch_pid:
        watch(args.watch_pid, stop)
    import datasets  # noqa: F401 - torch, transformers, the partitioners and fedpilot load now, before the first task
    import flwr_datasets.partitioner  # noqa: F401

    import fedpilot.federation  # noqa: F401
    import fedpilot.flower.client_app  # noqa: F401

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    slots = CpuSlots(args.slot_dir, args.cpu_slots) if args.cpu_slots else None
    executors = [WarmExecutor(address, args.insecure, args.root_certificates, args.poll, secret, slots) for address in args.runtime_api_address]
    if len(executors) > fedpilot.flower.client_app.MAX_NODES:
        fedpilot.flower.client_app.MAX_NODES = len(executors)  # each node's client stays built
    serve(executors, stop, args.poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
