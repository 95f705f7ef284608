"""fedpilot's messages as Flower RecordDicts, and back, exactly.

A RecordDict holds at most these records:

- ``"tensors"``: an ArrayRecord holding one uint8 Array, ``"safetensors"``: the named numpy arrays (a
  :data:`~fedpilot.core.tensors.TensorDict`) as one safetensors blob, dtype, shape and key order kept (the
  order in the blob's metadata). One object on the wire instead of one or more per array: a SuperLink
  stores, and a SuperNode pulls, every object with its own requests and database transactions, which
  cost more than training a client (benchmarks/flower_overhead.py). A record of named arrays, one per
  tensor (what older senders sent), decodes too;
- ``"assignment"``: a ConfigRecord (``modules``, ``rank_modules`` / ``rank_values``, ``parts``,
  ``own_tensors``: whether the assignment carries its own tensors, which then travel as ``"tensors"``,
  ``checkpointing``: absent in messages from before it, read as False);
- ``"train"`` / ``"score"`` / ``"evaluate"``: the instructions, one ConfigRecord field per dataclass field;
- ``"counts"``: an evaluation reply's :class:`~fedpilot.runtime.client_evaluation.EvalCounts` (``rows``,
  ``loss-sum`` as a double, the three per-label count lists);
- ``"metrics"``: int and float metrics in a MetricRecord; ``"metrics-extra"``: the others
  (str, bool, None, lists) as JSON in a ConfigRecord, so nothing changes type on the way;
- ``"scores"``: a MetricRecord, module -> score;
- ``"reply"``: a ConfigRecord with ``num-samples`` of a train reply.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedpilot.core.tensors import TensorDict
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.client_evaluation import EvalCounts
from fedpilot.runtime.messages import EvaluateInstructions, ScoreInstructions, TrainInstructions
from fedpilot.strategies.base import Assignment

TENSORS, ASSIGNMENT, TRAIN, SCORE, METRICS, METRICS_EXTRA, SCORES, REPLY, NODE = (
    "tensors", "assignment", "train", "score", "metrics", "metrics-extra", "scores", "reply", "node",
)
EVALUATE, COUNTS = "evaluate", "counts"
MODULES = "modules"  # the modules a score task asks about
T = TypeVar("T", TrainInstructions, ScoreInstructions, EvaluateInstructions)
CONFIG = "config"  # the run's fedpilot config, as JSON, in a QUERY message


# -- tensors -------------------------------------------------------------------------------------------
PACKED = "safetensors"  # the one Array of a tensors record
ORDER = "fedpilot-order"  # the blob's metadata key: the keys in the sender's order, as JSON


def tensors_to_record(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    from safetensors.numpy import save

    blob = save({key: np.ascontiguousarray(value) for key, value in tensors.items()}, metadata={ORDER: json.dumps(list(tensors))})
    return ArrayRecord({PACKED: Array(np.frombuffer(blob, dtype=np.uint8))})


def tensors_from_record(record: ArrayRecord) -> TensorDict:
    if list(record.keys()) != [PACKED]:  # one Array per tensor
        return {key: array.numpy() for key, array in record.items()}
    from safetensors.numpy import load

    blob = record[PACKED].numpy().tobytes()
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])  # the safetensors header: u64 length, then JSON
    loaded = load(blob)
    order = json.loads(header.get("__metadata__", {}).get(ORDER, "null")) or sorted(loaded)
    if sorted(order) != sorted(loaded):
        raise ValueError(f"a tensors record's key order names {len(order)} keys, its blob holds {len(loaded)}: the record is corrupt")
    return {key: loaded[key] for key in order}


# -- assignment and instructions -----------------------------------------------------------------------
def assignment_to_record(assignment: Assignment) -> ConfigRecord:
    return ConfigRecord(
        {
            "modules": list(assignment.modules),
            "rank-modules": [str(m) for m in assignment.ranks],
            "rank-values": [int(r) for r in assignment.ranks.values()],
            "parts": list(assignment.parts),
            "own-tensors": assignment.tensors is not None,
            "checkpointing": bool(assignment.checkpointing),
            "micro-batch": int(assignment.micro_batch),
        }
    )


def assignment_from_record(record: ConfigRecord, tensors: TensorDict | None = None) -> Assignment:
    """``tensors``: what came with the message; they are the assignment's own when it had some."""
    ranks = dict(zip(record["rank-modules"], (int(r) for r in record["rank-values"])))
    return Assignment(
        modules=tuple(record["modules"]),
        ranks=ranks,
        parts=tuple(record["parts"]),
        tensors=tensors if record["own-tensors"] else None,
        checkpointing=bool(record["checkpointing"]) if "checkpointing" in record else False,  # absent before checkpointing
        micro_batch=int(record["micro-batch"]) if "micro-batch" in record else 0,  # absent before micro-batches
    )


def instructions_to_record(instructions: TrainInstructions | ScoreInstructions | EvaluateInstructions) -> ConfigRecord:
    return ConfigRecord(dict(asdict(instructions)))


def instructions_from_record(kind: type[T], record: ConfigRecord, added: tuple[str, ...] = ()) -> T:
    """The ``kind`` instructions a record holds, one field per dataclass field; a field named in ``added`` (one
    added since older senders) may be absent and takes its default; any other absent field is an error."""
    return kind(**{f.name: record[f.name] for f in fields(kind) if f.name in record or f.name not in added})


def train_instructions_from_record(record: ConfigRecord) -> TrainInstructions:
    return instructions_from_record(TrainInstructions, record)


def score_instructions_from_record(record: ConfigRecord) -> ScoreInstructions:
    return instructions_from_record(ScoreInstructions, record, added=("micro_batch",))


# -- metrics -------------------------------------------------------------------------------------------
def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (not isinstance(value, int) or -(2**63) <= value < 2**63)


def metrics_to_records(metrics: Mapping[str, Any]) -> dict[str, MetricRecord | ConfigRecord]:
    """Numbers in a MetricRecord, everything else as JSON in a ConfigRecord (both kept in key order)."""
    numbers = {k: (float(v) if isinstance(v, float) else int(v)) for k, v in metrics.items() if _numeric(v)}
    others = {k: json.dumps(v) for k, v in metrics.items() if not _numeric(v)}
    order = list(metrics)
    return {METRICS: MetricRecord(numbers), METRICS_EXTRA: ConfigRecord({**others, "__order__": json.dumps(order)})}


def metrics_from_records(content: RecordDict) -> dict[str, Any]:
    numbers = dict(content.metric_records[METRICS]) if METRICS in content.metric_records else {}
    extra = dict(content.config_records[METRICS_EXTRA]) if METRICS_EXTRA in content.config_records else {}
    order = json.loads(extra.pop("__order__", "[]"))
    values = {**numbers, **{k: json.loads(v) for k, v in extra.items()}}
    return {k: values[k] for k in order if k in values} | {k: v for k, v in values.items() if k not in order}


# -- whole messages ------------------------------------------------------------------------------------
def encode_train_task(assignment: Assignment, tensors: Mapping[str, np.ndarray], instructions: TrainInstructions) -> RecordDict:
    return RecordDict(
        {TENSORS: tensors_to_record(tensors), ASSIGNMENT: assignment_to_record(assignment), TRAIN: instructions_to_record(instructions)}
    )


def decode_train_task(content: RecordDict) -> tuple[Assignment, TensorDict, TrainInstructions]:
    tensors = tensors_from_record(content.array_records[TENSORS])
    assignment = assignment_from_record(content.config_records[ASSIGNMENT], tensors)
    return assignment, tensors, train_instructions_from_record(content.config_records[TRAIN])


def encode_score_task(modules: list[str], tensors: Mapping[str, np.ndarray], instructions: ScoreInstructions) -> RecordDict:
    return RecordDict(
        {TENSORS: tensors_to_record(tensors), SCORE: instructions_to_record(instructions), MODULES: ConfigRecord({MODULES: list(modules)})}
    )


def decode_score_task(content: RecordDict) -> tuple[list[str], TensorDict, ScoreInstructions]:
    modules = list(content.config_records[MODULES][MODULES])
    return modules, tensors_from_record(content.array_records[TENSORS]), score_instructions_from_record(content.config_records[SCORE])


def encode_train_reply(num_samples: int, tensors: Mapping[str, np.ndarray], metrics: Mapping[str, Any]) -> RecordDict:
    return RecordDict({TENSORS: tensors_to_record(tensors), REPLY: ConfigRecord({"num-samples": int(num_samples)}), **metrics_to_records(metrics)})


def decode_train_reply(content: RecordDict) -> tuple[int, TensorDict, dict[str, Any]]:
    num_samples = int(content.config_records[REPLY]["num-samples"])
    return num_samples, tensors_from_record(content.array_records[TENSORS]), metrics_from_records(content)


def encode_score_reply(scores: Mapping[str, float], metrics: Mapping[str, Any]) -> RecordDict:
    return RecordDict({SCORES: MetricRecord({k: float(v) for k, v in scores.items()}), **metrics_to_records(metrics)})


def decode_score_reply(content: RecordDict) -> tuple[dict[str, float], dict[str, Any]]:
    return dict(content.metric_records[SCORES]), metrics_from_records(content)


def encode_evaluate_task(tensors: Mapping[str, np.ndarray], instructions: EvaluateInstructions) -> RecordDict:
    return RecordDict({TENSORS: tensors_to_record(tensors), EVALUATE: instructions_to_record(instructions)})


def decode_evaluate_task(content: RecordDict) -> tuple[TensorDict, EvaluateInstructions]:
    instructions = instructions_from_record(EvaluateInstructions, content.config_records[EVALUATE])
    return tensors_from_record(content.array_records[TENSORS]), instructions


def encode_evaluate_reply(counts: EvalCounts, metrics: Mapping[str, Any]) -> RecordDict:
    record = ConfigRecord(
        {
            "rows": int(counts.rows),
            "loss-sum": float(counts.loss_sum),
            "true-counts": [int(c) for c in counts.true_counts],
            "predicted-counts": [int(c) for c in counts.predicted_counts],
            "correct-counts": [int(c) for c in counts.correct_counts],
        }
    )
    return RecordDict({COUNTS: record, **metrics_to_records(metrics)})


def decode_evaluate_reply(content: RecordDict) -> tuple[EvalCounts, dict[str, Any]]:
    record = content.config_records[COUNTS]
    counts = EvalCounts(
        rows=int(record["rows"]),
        loss_sum=float(record["loss-sum"]),
        true_counts=tuple(int(c) for c in record["true-counts"]),
        predicted_counts=tuple(int(c) for c in record["predicted-counts"]),
        correct_counts=tuple(int(c) for c in record["correct-counts"]),
    )
    return counts, metrics_from_records(content)


# -- the QUERY round: what a node says about itself ----------------------------------------------------
def encode_node_info(
    partition_id: int, num_partitions: int, num_samples: int, budget_bytes: int | None, cost_model: CostModel, extra: Mapping[str, Any]
) -> RecordDict:
    return RecordDict(
        {
            NODE: ConfigRecord(
                {
                    "partition-id": int(partition_id),
                    "num-partitions": int(num_partitions),
                    "num-samples": int(num_samples),
                    "memory-budget": -1 if budget_bytes is None else int(budget_bytes),
                    "cost-model": json.dumps(cost_model.to_dict()),
                    "extra": json.dumps(dict(extra)),
                }
            )
        }
    )


def decode_node_info(content: RecordDict) -> dict[str, Any]:
    record = content.config_records[NODE]
    budget = int(record["memory-budget"])
    return {
        "partition_id": int(record["partition-id"]),
        "num_partitions": int(record["num-partitions"]),
        "num_samples": int(record["num-samples"]),
        "budget_bytes": None if budget < 0 else budget,
        "cost_model": CostModel.from_dict(json.loads(record["cost-model"])),
        **json.loads(record["extra"]),
    }
