"""The ClientApp a SuperNode runs: one fedpilot :class:`~fedpilot.runtime.client.Client` on this node's shard.

A SuperNode declares itself with ``--node-config "partition-id=0 num-partitions=3 memory-budget='150MiB'"``
(``memory-budget`` absent: unlimited). Every message carries the run's fedpilot config (as JSON); the
node loads the bundled dataset, takes partition ``partition-id`` of ``num-partitions`` with the
config's partitioner and seed (the simulator's split, exactly), builds the model and calibrates its own
cost model on its own device (cached on disk as ``fedpilot profile`` caches it).

Message types: ``query`` (who am I: partition, sample count, budget, cost model), ``train``
(:meth:`Client.train`) and ``train.score`` (:meth:`Client.score`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flwr.app import Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from fedpilot.config import Config, parse_config  # noqa: E402
from fedpilot.core.sizes import parse_memory  # noqa: E402
from fedpilot.flower.codec import (  # noqa: E402
    CONFIG,
    decode_score_task,
    decode_train_task,
    encode_node_info,
    encode_score_reply,
    encode_train_reply,
)

PARTITION_ID, NUM_PARTITIONS, MEMORY_BUDGET = "partition-id", "num-partitions", "memory-budget"


def node_settings(node_config: Any) -> tuple[int, int, int | None]:
    """``(partition id, number of partitions, budget bytes or None)`` from a SuperNode's node config."""
    missing = [k for k in (PARTITION_ID, NUM_PARTITIONS) if k not in node_config]
    if missing:
        raise ValueError(f"the SuperNode's --node-config lacks {', '.join(missing)}; give partition-id=<i> num-partitions=<n>")
    partition_id, num_partitions = int(node_config[PARTITION_ID]), int(node_config[NUM_PARTITIONS])
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"node config: partition-id {partition_id} is outside 0..{num_partitions - 1}")
    budget = node_config.get(MEMORY_BUDGET)
    budget_bytes = None if budget in (None, "", "unlimited") else parse_memory(budget)
    return partition_id, num_partitions, budget_bytes


@dataclass
class Node:
    """This node's part of the federation."""

    client: Any  # fedpilot.runtime.client.Client
    partition_id: int
    num_partitions: int
    budget_bytes: int | None
    cost_model: Any  # CostModel calibrated on this device
    calibration_cached: bool
    label_counts: list[int]
    device: str


_NODES: dict[tuple[str, int, int], Node] = {}


def load_node(config: Config, node_config: Any) -> Node:
    """This node's client (cached for the life of the process, keyed by config and partition)."""
    partition_id, num_partitions, budget_bytes = node_settings(node_config)
    key = (config.model_dump_json(), partition_id, num_partitions)
    if key in _NODES:
        return _NODES[key]
    import numpy as np

    from fedpilot.data.partition import partition_indices
    from fedpilot.families.encoding import load_split
    from fedpilot.federation import calibration_cost_model, make_model
    from fedpilot.runtime.client import Client, StepPeaks

    if num_partitions != config.federation.num_clients:
        raise ValueError(f"node config num-partitions={num_partitions} but the run's federation.num_clients is {config.federation.num_clients}")
    data = load_split(config.data, config.model.name, config.seed, config.proxy_fraction())
    labels = data.train.labels.numpy()
    shard = partition_indices(labels, num_partitions, config.data.partition, config.seed)[partition_id]
    model = make_model(config, data)
    cost_model, cached = calibration_cost_model(config, data, model)
    client = Client(partition_id, model, data.train.subset(shard), StepPeaks())
    counts = np.bincount(labels[shard], minlength=len(data.label_names)).tolist()
    node = Node(client, partition_id, num_partitions, budget_bytes, cost_model, cached, counts, model.device.type)
    _NODES[key] = node
    return node


def config_of(message: Message) -> Config:
    return parse_config(json.loads(message.content.config_records[CONFIG][CONFIG]), "the run's config")


app = ClientApp()


@app.query()
def query(message: Message, context: Context) -> Message:
    """Partition, sample count, budget and this device's calibrated cost model."""
    node = load_node(config_of(message), context.node_config)
    extra = {"label_counts": node.label_counts, "device": node.device, "calibration_cached": node.calibration_cached}
    content = encode_node_info(node.partition_id, node.num_partitions, node.client.num_samples, node.budget_bytes, node.cost_model, extra)
    return Message(content, reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    node = load_node(config_of(message), context.node_config)
    assignment, tensors, instructions = decode_train_task(message.content)
    trained, metrics = node.client.train(assignment, tensors, instructions)
    return Message(encode_train_reply(node.client.num_samples, trained, metrics), reply_to=message)


@app.train("score")
def score(message: Message, context: Context) -> Message:
    node = load_node(config_of(message), context.node_config)
    modules, tensors, instructions = decode_score_task(message.content)
    scores, metrics = node.client.score(modules, tensors, instructions)
    return Message(encode_score_reply(scores, metrics), reply_to=message)
