"""Checkpoints: everything that decides the next round, written atomically after every round.

One file, ``checkpoint.safetensors``: the global adapter tensors and every numpy array of the
strategy's state as safetensors tensors, and the rest (round number, the strategy's JSON state,
the last metrics, the results so far) as JSON in the safetensors header. No pickle: a checkpoint
is data, never code. It is written to a temporary file, fsynced, renamed and the folder fsynced
(:mod:`fedpilot.core.files`), so a crash leaves the previous checkpoint or the new one, never a
torn one. Per-round seeds derive from (run seed, round, client), so no RNG state needs saving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from fedpilot.core.errors import FedpilotError
from fedpilot.core.files import write_bytes
from fedpilot.core.tensors import TensorDict

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "fedpilot-checkpoint/1"
_GLOBAL, _STRATEGY = "global/", "strategy/"


class CheckpointError(FedpilotError):
    """A checkpoint that cannot be read or does not belong to this run.

    ``reason``: what is wrong, without the fix the message goes on to name (``fedpilot compare``
    says it when it starts such a run over instead of continuing it).
    """

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason}; {fix}")
        self.reason, self.fix = reason, fix

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # rebuilt whole across processes (compare --jobs)
        return type(self), (self.reason, self.fix)


@dataclass
class Checkpoint:
    server_round: int
    global_tensors: TensorDict
    strategy_state: dict[str, Any]
    last_metrics: dict[str, float]
    results: dict[str, Any] = field(default_factory=dict)


def _split_arrays(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` with every numpy array replaced by a reference into ``arrays``."""
    if isinstance(value, np.ndarray):
        name = f"{_STRATEGY}{len(arrays)}"
        arrays[name] = np.ascontiguousarray(value)
        return {"__array__": name}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"strategy state keys must be strings, got {[k for k in value if not isinstance(k, str)][:3]}")
        return {k: _split_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split_arrays(v, arrays) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"strategy state holds a {type(value).__name__}; use JSON values and numpy arrays")


def _join_arrays(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_arrays(v, arrays) for v in value]
    return value


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> Path:
    arrays: dict[str, np.ndarray] = {}
    strategy = _split_arrays(checkpoint.strategy_state, arrays)
    tensors = {f"{_GLOBAL}{k}": np.ascontiguousarray(v) for k, v in checkpoint.global_tensors.items()} | arrays
    header = {
        "format": FORMAT,
        "round": checkpoint.server_round,
        "global_keys": list(checkpoint.global_tensors),
        "strategy": strategy,
        "last_metrics": checkpoint.last_metrics,
        "results": checkpoint.results,
    }
    path = Path(folder) / CHECKPOINT
    write_bytes(path, save_tensors(tensors, metadata={"fedpilot": json.dumps(header)}))
    return path


def _read_header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise ValueError("too short to be a safetensors file")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("header runs past the end of the file")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


def load_checkpoint(folder: Path) -> Checkpoint:
    """The checkpoint in ``folder``; a :class:`CheckpointError` (one line) if it is absent or damaged."""
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here", "resume needs a run directory written by fedpilot run")
    try:
        data = path.read_bytes()
        header = json.loads(_read_header(data)["fedpilot"])
        tensors = load_tensors(data)
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {FORMAT!r}")
        global_tensors = {k: tensors[f"{_GLOBAL}{k}"] for k in header["global_keys"]}
        arrays = {k: v for k, v in tensors.items() if k.startswith(_STRATEGY)}
        return Checkpoint(
            server_round=int(header["round"]),
            global_tensors=global_tensors,
            strategy_state=_join_arrays(header["strategy"], arrays),
            last_metrics=dict(header["last_metrics"]),
            results=dict(header["results"]),
        )
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint ({type(err).__name__}: {err})", "rerun with --overwrite") from None
