"""The ServerApp: the same :class:`~fedpilot.runtime.server.Server` round loop as the simulator, its
tasks carried to SuperNodes by :class:`~fedpilot.flower.transport.FlowerTransport`.

Run config key ``config``: the path of a fedpilot YAML config (empty: the embedded default; a
relative path is taken from the ServerApp process's working directory, so give an absolute one).
The ServerApp waits for ``federation.num_clients`` nodes, asks each who it is (QUERY: partition id,
sample count, budget, its own calibrated cost model), runs the rounds, evaluates on the test split
itself and writes what ``fedpilot run`` writes (results.json, metrics.csv, accuracy.png, adapter/,
checkpoint.safetensors) to the config's ``output_dir``.

Environment (read by the ServerApp process): ``FEDPILOT_ROUND_TIMEOUT`` (seconds a phase waits for
replies, default 600), ``FEDPILOT_NODE_WAIT`` (seconds to wait for the nodes to connect, default 300).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fedpilot.config import Config, load_config  # noqa: E402
from fedpilot.core.errors import FedpilotError  # noqa: E402
from fedpilot.flower.codec import CONFIG, decode_node_info  # noqa: E402
from fedpilot.flower.transport import FlowerTransport  # noqa: E402


def _log(line: str) -> None:
    print(f"[fedpilot] {line}", file=sys.stderr, flush=True)


def wait_for_nodes(grid: Any, count: int, wait: float) -> list[int]:
    """The ids of the connected nodes once ``count`` are there (or all there are after ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() > deadline:
            return nodes
        time.sleep(1.0)


def query_nodes(grid: Any, node_ids: list[int], config_json: str, timeout: float) -> dict[int, dict[str, Any]]:
    """Ask every node who it is; partition id -> what it said (and its ``node_id``)."""
    messages = [
        Message(RecordDict({CONFIG: ConfigRecord({CONFIG: config_json})}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]
    infos: dict[int, dict[str, Any]] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            _log(f"node {node} did not describe itself: {reply.error.reason}")
            continue
        info = decode_node_info(reply.content)
        if info["partition_id"] in infos:
            raise FedpilotError(f"two nodes ({infos[info['partition_id']]['node_id']}, {node}) declare partition-id {info['partition_id']}")
        infos[info["partition_id"]] = {**info, "node_id": node}
    return infos


def run_flower(grid: Any, config: Config, out_dir: Path | None = None, round_timeout: float = 600.0, node_wait: float = 300.0):
    """Query the nodes, build the server side, run the rounds; the :class:`~fedpilot.simulation.RunResult`."""
    from fedpilot.data.split import load_split
    from fedpilot.simulation import calibration_cost_model, drive_rounds, make_model, make_server, prepare_out_dir, run_header
    from fedpilot.strategies import ClientInfo

    start = time.perf_counter()
    out_dir = Path(out_dir or config.output_dir)
    prepare_out_dir(out_dir)  # a folder that holds a run is refused, as by fedpilot run
    wanted = config.federation.num_clients
    node_ids = wait_for_nodes(grid, wanted, node_wait)
    _log(f"{len(node_ids)} nodes connected: {node_ids}")
    config_json = config.model_dump_json()
    described = query_nodes(grid, node_ids, config_json, round_timeout)
    bad = [cid for cid, info in described.items() if info["num_partitions"] != wanted]
    if bad:
        raise FedpilotError(f"nodes of partitions {bad} declare num-partitions other than federation.num_clients={wanted}")
    if len(described) < wanted:
        _log(f"only {len(described)} of {wanted} partitions answered: {sorted(described)}; the run goes on with them")
    if not described:
        raise FedpilotError("no node described itself; check the SuperNodes' --node-config")

    data = load_split(config.data, config.model.name, config.seed)
    model = make_model(config, data)
    cost_model, cached = calibration_cost_model(config, data, model)
    infos = [ClientInfo(cid, described[cid]["num_samples"], described[cid]["budget_bytes"]) for cid in sorted(described)]
    server = make_server(config, model, data, infos, cost_model)
    federation_costs = cost_model.to_dict()
    clients = [
        {
            "cid": cid,
            "node_id": described[cid]["node_id"],
            "num_samples": described[cid]["num_samples"],
            "budget_bytes": described[cid]["budget_bytes"],
            "label_counts": described[cid].get("label_counts"),
            "device": described[cid].get("device"),
            # Planned with the federation's cost model (calibrated by the ServerApp); the node's own is kept
            # beside it. Planning each client with its own needs a per-client cost model in FederationContext.
            "planned_with": "federation",
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


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    path = str(context.run_config.get("config", "") or "")
    config = load_config(path or None)
    round_timeout = float(os.environ.get("FEDPILOT_ROUND_TIMEOUT", "600"))
    node_wait = float(os.environ.get("FEDPILOT_NODE_WAIT", "300"))
    result = run_flower(grid, config, round_timeout=round_timeout, node_wait=node_wait)
    final = result.rounds[-1]
    _log(f"finished: round {final['round']} test accuracy {final['accuracy']:.4f}; outputs in {result.out_dir}")
