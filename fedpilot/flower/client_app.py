"""The ClientApp a SuperNode runs: one fedpilot :class:`~fedpilot.runtime.client.Client` on this node's shard.

A SuperNode declares itself with ``--node-config "partition-id=0 num-partitions=3 memory-budget='150MiB'"``
(``memory-budget`` absent: the budget the run's config gives that partition, ``federation.budgets``, as the
simulator assigns it; unlimited where the config gives none; ``"unlimited"``: no budget whatever the config says).
Flower's simulation engine gives each virtual SuperNode only ``partition-id`` and ``num-partitions``, so there
the budgets always come from the config. Every message carries the run's fedpilot config (as JSON); the
node loads the bundled dataset, takes partition ``partition-id`` of ``num-partitions`` with the
config's partitioner and seed (the simulator's split, exactly), builds the model and calibrates its own
cost model on its own device (cached on disk as ``fedpilot profile`` caches it).

Message types: ``query`` (who am I: partition, sample count, held-out rows, budget, cost model), ``train``
(:meth:`Client.train`), ``train.score`` (:meth:`Client.score`) and ``evaluate`` (:meth:`Client.evaluate`: the
global adapter on the node's held-out rows, ``data.client_test_fraction``, drawn as the simulator draws them).

What a process builds it keeps (:func:`load_node`): the model, the tokenized data and its partitions in
an LRU keyed by what they are built from (model and data settings, seed, proxy share, base deltas;
``FEDPILOT_WARM_MODELS`` of them, default 1), and the node of each run (its shard, cost model, client)
keyed by run, config and partition. Under Flower's default ``--isolation subprocess`` a process serves one message, so this saves
nothing; under :mod:`fedpilot.flower.warm` one process serves every message of the SuperNode, so the
model and data load once per SuperNode. Nothing else carries over between messages: each train or score
task loads the whole received adapter into the model (or zeroes the modules an ``assigned`` payload does
not carry), sets the ranks and the trainable set, and seeds its own randomness (:meth:`Client.receive`,
:meth:`Client.train`); each run gets a fresh client and peak meter.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flwr.app import Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from fedpilot.config import Config, parse_config  # noqa: E402
from fedpilot.core.sizes import parse_memory  # noqa: E402
from fedpilot.flower.codec import (  # noqa: E402
    CONFIG,
    decode_evaluate_task,
    decode_score_task,
    decode_train_task,
    encode_evaluate_reply,
    encode_node_info,
    encode_score_reply,
    encode_train_reply,
)

PARTITION_ID, NUM_PARTITIONS, MEMORY_BUDGET = "partition-id", "num-partitions", "memory-budget"
WARM_MODELS_ENV = "FEDPILOT_WARM_MODELS"  # models (with their data) a process keeps; default 1
MAX_NODES = 4  # nodes (runs) a process keeps: cheap, they share the warm model


def node_settings(node_config: Any, config: Config | None = None) -> tuple[int, int, int | None, str]:
    """``(partition id, number of partitions, budget bytes or None, where the budget came from)`` from a
    SuperNode's node config: its ``memory-budget`` (``"node-config"``), or without one the budget ``config``
    gives this partition (``"config"``: ``federation.budgets``, the simulator's assignment; None without a config)."""
    missing = [k for k in (PARTITION_ID, NUM_PARTITIONS) if k not in node_config]
    if missing:
        raise ValueError(f"the SuperNode's --node-config lacks {', '.join(missing)}; give partition-id=<i> num-partitions=<n>")
    partition_id, num_partitions = int(node_config[PARTITION_ID]), int(node_config[NUM_PARTITIONS])
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"node config: partition-id {partition_id} is outside 0..{num_partitions - 1}")
    if config is not None and num_partitions != config.federation.num_clients:
        raise ValueError(f"node config num-partitions={num_partitions} but the run's federation.num_clients is {config.federation.num_clients}")
    budget = node_config.get(MEMORY_BUDGET)
    if budget is None:
        return partition_id, num_partitions, None if config is None else config.federation.client_budgets()[partition_id], "config"
    return partition_id, num_partitions, None if budget in ("", "unlimited") else parse_memory(budget), "node-config"


@dataclass
class Warm:
    """The model and the tokenized data, built once and shared by every node (run) that needs them."""

    data: Any  # fedpilot.data.split.SplitData
    model: Any  # fedpilot.runtime.lora.LoraModel
    labels: Any  # numpy labels of the train split
    shards: dict[tuple[int, str], list[Any]] = field(default_factory=dict)  # (partitions, partitioner) -> indices per partition
    runs: int = 0  # nodes built on it so far

    def shard(self, config: Config, partition_id: int, num_partitions: int) -> Any:
        """Partition ``partition_id`` of ``num_partitions`` with the config's partitioner (the simulator's split)."""
        key = (num_partitions, config.data.partition.model_dump_json())
        if key not in self.shards:
            from fedpilot.data.partition import partition_indices

            self.shards[key] = partition_indices(self.labels, num_partitions, config.data.partition, config.seed)
        return self.shards[key][partition_id]


@dataclass
class Node:
    """This node's part of one run."""

    client: Any  # fedpilot.runtime.client.Client
    partition_id: int
    num_partitions: int
    budget_bytes: int | None
    budget_from: str  # "node-config" (its memory-budget) or "config" (federation.budgets for its partition)
    cost_model: Any  # CostModel calibrated on this device
    calibration_cached: bool
    label_counts: dict[str, Any]  # label_counts of its training rows (and num_test_samples, test_label_counts of its held-out rows)
    device: str
    warm: bool  # the model and data were built for an earlier run of this process


_WARM: OrderedDict[str, Warm] = OrderedDict()
_NODES: OrderedDict[tuple[Any, ...], Node] = OrderedDict()


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def warm_key(config: Config) -> str:
    """What the model and the data are built from (the arguments of ``load_split`` and ``make_model``): not the
    partition (the shards are kept per partitioner, :meth:`Warm.shard`) nor the held-out share of each shard
    (``data.client_test_fraction``, drawn per node), so runs that differ only in those share one warm model."""
    from fedpilot.strategies import STRATEGIES

    return _digest(
        {
            "model": config.model.model_dump(mode="json"),
            "data": config.data.model_dump(mode="json", exclude={"partition", "client_test_fraction"}),
            "seed": config.seed,
            "proxy_fraction": config.proxy_fraction(),
            "base_deltas": STRATEGIES.get_or_fail(config.strategy).capabilities.base_deltas,
        }
    )


def warm_models() -> int:
    raw = os.environ.get(WARM_MODELS_ENV, "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{WARM_MODELS_ENV}={raw!r}: give a whole number >= 1 (models a SuperNode process keeps)")
    return int(raw)


def warm_state(config: Config) -> Warm:
    """The model and data for ``config``: from the LRU, or built (evicting the least recently used)."""
    key = warm_key(config)
    if key in _WARM:
        _WARM.move_to_end(key)
        return _WARM[key]
    from fedpilot.families.encoding import load_split
    from fedpilot.federation import make_model

    capacity = warm_models()
    while len(_WARM) >= capacity:
        _, evicted = _WARM.popitem(last=False)
        for node_key in [k for k, n in _NODES.items() if n.client.model is evicted.model]:
            del _NODES[node_key]
    data = load_split(config.data, config.model.name, config.seed, config.proxy_fraction(), config.task)
    warm = Warm(data, make_model(config, data), data.train.labels.numpy())
    _WARM[key] = warm
    return warm


def load_node(config: Config, node_config: Any, run_id: int = 0) -> Node:
    """This node's client for run ``run_id``: cached for the run, built on the warm model and data."""
    partition_id, num_partitions, budget_bytes, budget_from = node_settings(node_config, config)
    key = (run_id, hashlib.sha256(config.model_dump_json().encode()).hexdigest(), partition_id, num_partitions)
    if key in _NODES:
        _NODES.move_to_end(key)
        return _NODES[key]
    from fedpilot.federation import calibration_cost_model, client_record_counts, client_rows
    from fedpilot.runtime.client import Client, StepPeaks

    warm = warm_state(config)
    shard = warm.shard(config, partition_id, num_partitions)
    train_rows, test_rows = client_rows(config, warm.labels, shard, partition_id)
    cost_model, cached = calibration_cost_model(config, warm.data, warm.model)
    test_data = None if test_rows is None else warm.data.train.subset(test_rows)
    client = Client(partition_id, warm.model, warm.data.train.subset(train_rows), StepPeaks(), test_data)
    counts = client_record_counts(client, len(warm.data.label_names))
    node = Node(client, partition_id, num_partitions, budget_bytes, budget_from, cost_model, cached, counts, warm.model.device.type, warm.runs > 0)
    warm.runs += 1
    _NODES[key] = node
    while len(_NODES) > MAX_NODES:
        _NODES.popitem(last=False)
    return node


def config_of(message: Message) -> Config:
    return parse_config(json.loads(message.content.config_records[CONFIG][CONFIG]), "the run's config")


def node_of(message: Message, context: Context) -> Node:
    return load_node(config_of(message), context.node_config, context.run_id)


app = ClientApp()


@app.query()
def query(message: Message, context: Context) -> Message:
    """Partition, sample count, budget and this device's calibrated cost model."""
    node = node_of(message, context)
    extra = {
        **node.label_counts, "device": node.device, "calibration_cached": node.calibration_cached,
        "process": os.getpid(), "warm": node.warm, "budget_from": node.budget_from,
    }
    content = encode_node_info(node.partition_id, node.num_partitions, node.client.num_samples, node.budget_bytes, node.cost_model, extra)
    return Message(content, reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    node = node_of(message, context)
    assignment, tensors, instructions = decode_train_task(message.content)
    trained, metrics = node.client.train(assignment, tensors, instructions)
    return Message(encode_train_reply(node.client.num_samples, trained, metrics), reply_to=message)


@app.train("score")
def score(message: Message, context: Context) -> Message:
    node = node_of(message, context)
    modules, tensors, instructions = decode_score_task(message.content)
    scores, metrics = node.client.score(modules, tensors, instructions)
    return Message(encode_score_reply(scores, metrics), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """The global adapter on this node's held-out rows: the counts the ServerApp pools."""
    node = node_of(message, context)
    tensors, instructions = decode_evaluate_task(message.content)
    counts, metrics = node.client.evaluate(tensors, instructions)
    return Message(encode_evaluate_reply(counts, metrics), reply_to=message)
