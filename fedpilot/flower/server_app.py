"""The ServerApp: the same :class:`~fedpilot.runtime.server.Server` round loop as the simulator, its
tasks carried to SuperNodes by :class:`~fedpilot.flower.transport.FlowerTransport`.

Run config key ``config``: the path of a fedpilot YAML config (empty: the embedded default; a
relative path is taken from the ServerApp process's working directory, so give an absolute one).
The ServerApp waits for ``federation.num_clients`` nodes, asks each who it is (QUERY: partition id,
sample count, held-out rows, budget, its own calibrated cost model), runs the rounds, evaluates on the test
split itself (or has the clients evaluate on their held-out rows: ``train.evaluate``) and writes what
``fedpilot run`` writes (results.json, metrics.csv, accuracy.png, adapter/,
checkpoint.safetensors) to the config's ``output_dir``.

Each client is planned with the cost model it calibrated on its own device (``ClientInfo.cost_model``);
the ServerApp calibrates the federation's model too (recorded in results.json, the fallback of a client
that reported none). A node's cost model must describe this run's model (its modules, layers and rank) and
calibration settings (batch size, sequence length, optimiser), else the run stops with one line.

``federation.round_timeout``: seconds a phase waits for replies. Environment (read by the ServerApp
process): ``FEDPILOT_NODE_WAIT`` (seconds to wait for the nodes to connect, default 300).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fedpilot.config import Config, load_config  # noqa: E402
from fedpilot.core.errors import FedpilotError  # noqa: E402
from fedpilot.flower.codec import CONFIG, decode_node_info  # noqa: E402
from fedpilot.flower.transport import FlowerTransport, send_and_receive  # noqa: E402
from fedpilot.report import primary_metric  # noqa: E402


def _log(line: str) -> None:
    print(f"[fedpilot] {line}", file=sys.stderr, flush=True)


def simulated(grid: Any) -> bool:
    """Whether ``grid`` is Flower's simulation engine's (every virtual SuperNode is there from the start)."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid  # noqa: PLC0415

    return isinstance(grid, InMemoryGrid)


def wait_for_nodes(grid: Any, count: int, wait: float) -> list[int]:
    """The ids of the connected nodes once ``count`` are there (or all there are after ``wait`` seconds).

    In Flower's simulation engine the virtual SuperNodes are all there at once: another number than ``count``
    stops the run at once with one line (waiting would not bring more, and their partitions would not match)."""
    if simulated(grid):
        nodes = sorted(grid.get_node_ids())
        if len(nodes) != count:
            raise FedpilotError(
                f"the simulation engine runs {len(nodes)} virtual SuperNodes but federation.num_clients is {count}; "
                f"run it with --federation-config 'num-supernodes={count}'"
            )
        return nodes
    deadline = time.monotonic() + wait
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() > deadline:
            return nodes
        time.sleep(0.5)


def query_nodes(grid: Any, node_ids: list[int], config_json: str, timeout: float,
                meanwhile: Callable[[], None] | None = None) -> dict[int, dict[str, Any]]:
    """Ask every node who it is; partition id -> what it said (and its ``node_id``). ``meanwhile`` runs
    while the nodes answer (the server's own loading: a node picks a message up seconds after it is sent)."""
    messages = [
        Message(RecordDict({CONFIG: ConfigRecord({CONFIG: config_json})}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]
    infos: dict[int, dict[str, Any]] = {}
    for reply in send_and_receive(grid, messages, timeout, meanwhile=meanwhile):
        node = reply.metadata.src_node_id
        if reply.has_error():
            _log(f"node {node} did not describe itself: {reply.error.reason}")
            continue
        info = decode_node_info(reply.content)
        if info["partition_id"] in infos:
            raise FedpilotError(f"two nodes ({infos[info['partition_id']]['node_id']}, {node}) declare partition-id {info['partition_id']}")
        infos[info["partition_id"]] = {**info, "node_id": node}
    return infos


SAME_CALIBRATION = ("model", "base_dropout", "lora", "batch_size", "seq_len", "optimizer", "family")  # device, dtype, torch may differ


def check_node_cost_model(cid: int, node_cost: Any, federation_cost: Any) -> None:
    """A node's own cost model must price this run's modules, at this run's settings (one-line error otherwise)."""
    if set(node_cost.module) != set(federation_cost.module) or len(node_cost.activation) != len(federation_cost.activation):
        raise FedpilotError(
            f"node of partition {cid} reports a cost model of {len(node_cost.module)} modules over {len(node_cost.activation)} layers, "
            f"this run's model has {len(federation_cost.module)} over {len(federation_cost.activation)}; run the same fedpilot on every node"
        )
    if node_cost.rank != federation_cost.rank:
        raise FedpilotError(f"node of partition {cid} calibrated at LoRA rank {node_cost.rank}, the run's is {federation_cost.rank}")
    differ = [k for k in SAME_CALIBRATION if k in node_cost.settings and k in federation_cost.settings and node_cost.settings[k] != federation_cost.settings[k]]
    if differ:
        k = differ[0]
        raise FedpilotError(
            f"node of partition {cid} calibrated with {k}={node_cost.settings[k]!r}, the run's is {federation_cost.settings[k]!r}; "
            "every node must run the ServerApp's config"
        )


def run_flower(grid: Any, config: Config, out_dir: Path | None = None, node_wait: float = 300.0):
    """Query the nodes, build the server side, run the rounds; the :class:`~fedpilot.federation.RunResult`.

    Phases wait ``config.federation.round_timeout`` seconds for replies."""
    from fedpilot.families.encoding import load_split
    from fedpilot.federation import calibration_cost_model, drive_rounds, make_model, make_server, prepare_out_dir, run_header
    from fedpilot.strategies import ClientInfo

    start = time.perf_counter()
    round_timeout = config.federation.round_timeout
    out_dir = Path(out_dir or config.output_dir)
    prepare_out_dir(out_dir)  # a folder that holds a run is refused, as by fedpilot run
    wanted = config.federation.num_clients
    node_ids = wait_for_nodes(grid, wanted, node_wait)
    _log(f"{len(node_ids)} nodes connected: {node_ids}")
    config_json = config.model_dump_json()
    loaded: dict[str, Any] = {}

    def load() -> None:  # the server's data, model and cost model, built while the nodes answer the query
        loaded["data"] = data = load_split(config.data, config.model.name, config.seed, config.proxy_fraction(), config.task)
        loaded["model"] = make_model(config, data)
        loaded["cost"] = calibration_cost_model(config, data, loaded["model"])

    described = query_nodes(grid, node_ids, config_json, round_timeout, meanwhile=load)
    bad = [cid for cid, info in described.items() if info["num_partitions"] != wanted]
    if bad:
        raise FedpilotError(f"nodes of partitions {bad} declare num-partitions other than federation.num_clients={wanted}")
    if len(described) < wanted:
        _log(f"only {len(described)} of {wanted} partitions answered: {sorted(described)}; the run goes on with them")
    if not described:
        raise FedpilotError("no node described itself; check the SuperNodes' --node-config")

    data, model, (cost_model, cached) = loaded["data"], loaded["model"], loaded["cost"]
    for cid in sorted(described):
        check_node_cost_model(cid, described[cid]["cost_model"], cost_model)
    if config.train.evaluate != "server":
        missing = [cid for cid in sorted(described) if not described[cid].get("num_test_samples")]
        if missing:
            raise FedpilotError(f"nodes of partitions {missing} hold no rows to evaluate on; run the ServerApp's fedpilot and config on every node")
    infos = [
        ClientInfo(cid, described[cid]["num_samples"], described[cid]["budget_bytes"], cost_model=described[cid]["cost_model"],
                   num_test_samples=int(described[cid].get("num_test_samples", 0)))
        for cid in sorted(described)
    ]
    server = make_server(config, model, data, infos, cost_model)
    federation_costs = cost_model.to_dict()
    clients = [
        {
            "cid": cid,
            "node_id": described[cid]["node_id"],
            "num_samples": described[cid]["num_samples"],
            "budget_bytes": described[cid]["budget_bytes"],
            "budget_from": described[cid].get("budget_from"),  # the node's memory-budget, or the config's budget for its partition
            "label_counts": described[cid].get("label_counts"),
            **{k: described[cid][k] for k in ("num_test_samples", "test_label_counts") if k in described[cid]},
            "device": described[cid].get("device"),
            # Planned with its own cost model (ClientInfo.cost_model); each round's client record says so too.
            "planned_with": "own",
            "calibration_cached": described[cid].get("calibration_cached"),
            # the node's process, and whether its model and data were already loaded by an earlier run (fedpilot.flower.warm)
            "node_process": described[cid].get("process"),
            "node_warm": described[cid].get("warm"),
            "own_cost_model": described[cid]["cost_model"].to_dict(),
            "own_cost_model_equals_federation": described[cid]["cost_model"].to_dict() == federation_costs,
        }
        for cid in sorted(described)
    ]
    header = run_header(config, data, model, server, clients, cost_model, cached)
    header["driver"] = "flower"
    transport = FlowerTransport(grid, {cid: described[cid]["node_id"] for cid in described}, round_timeout, config_json, log=_log)
    result = drive_rounds(config, model, server, transport, out_dir, header, progress=False)
    result.results["wire"] = transport.wire_log
    result.results["driver_seconds"] = time.perf_counter() - start
    from fedpilot.core.files import write_json

    write_json(out_dir / "results.json", result.results)
    return result


class HeartbeatKeeper:
    """A second heartbeat for the ServerApp's task, sent every ``interval`` seconds until stopped.

    Flower (1.42, ``flwr/supercore/heartbeat.py``) sends the task's heartbeat from one thread that ends
    on any HTTP error other than 503/504: one 500 from a SuperLink whose SQLite state stayed locked past
    its 5 s busy timeout (a loaded machine) ends it, the SuperLink expires the task 60 s later
    (``HEARTBEAT_PATIENCE`` x 30 s) and every next call of the run is refused ("task-token authentication
    failed"). This keeper sends the same ``SendTaskHeartbeat`` through the Grid's runtime client and lives
    through any error (it tries again at the next interval); it stops when asked or when the SuperLink
    answers that the task is gone (success false). ``send`` is the call: True while the task lives."""

    def __init__(self, send: Any, interval: float = 10.0, log: Any = None) -> None:
        import threading

        self.send, self.interval, self.log = send, interval, log or _log
        self.stopped = threading.Event()
        self.sent, self.errors = 0, 0
        self.thread = threading.Thread(target=self._run, name="fedpilot-heartbeat", daemon=True)

    @classmethod
    def for_grid(cls, grid: Any, interval: float = 10.0) -> HeartbeatKeeper | None:
        """A keeper sending through ``grid``'s runtime client, or None for a Grid without one (the simulation engine's)."""
        client = getattr(grid, "_runtime_client", None)
        if client is None or not hasattr(client, "SendTaskHeartbeat"):
            return None
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # noqa: PLC0415

        return cls(lambda: client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success, interval)

    def start(self) -> HeartbeatKeeper:
        self.thread.start()
        return self

    def stop(self, wait: float = 1.0) -> None:
        """Stop; wait up to ``wait`` seconds for the thread (a send stuck in the client's retries is left to die with the process)."""
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(wait)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                alive = self.send()
            except Exception as err:  # noqa: BLE001 - any failure: try again at the next interval
                self.errors += 1
                if self.errors == 1 or self.errors % 10 == 0:
                    self.log(f"task heartbeat failed ({type(err).__name__}: {err}); trying again in {self.interval:g} s")
                continue
            self.sent += 1
            if not alive:
                self.log("the SuperLink says this task is gone; the task heartbeat stops")
                return


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    path = str(context.run_config.get("config", "") or "")
    config = load_config(path or None)
    node_wait = float(os.environ.get("FEDPILOT_NODE_WAIT", "300"))
    keeper = HeartbeatKeeper.for_grid(grid)
    if keeper is not None:
        keeper.start()
    try:
        result = run_flower(grid, config, node_wait=node_wait)
    finally:
        if keeper is not None:
            keeper.stop()
    final = result.rounds[-1]
    key = primary_metric(final)
    score = "not evaluated" if key is None else f"{'clients' if config.train.evaluate == 'clients' else 'test'} {key} {final[key]:.4f}"
    _log(f"finished: round {final['round']} {score}; outputs in {result.out_dir}")
