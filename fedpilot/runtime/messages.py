"""What travels from the server to clients: plain dataclasses of scalars and named numpy tensors,
so any transport (in-process calls, Flower messages) can carry them. What comes back is the
strategies' own :class:`~fedpilot.strategies.base.ClientUpdate` / :class:`~fedpilot.strategies.base.ClientScores`,
a :class:`ClientEvaluation` (or a :class:`Failure`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fedpilot.core.tensors import TensorDict
from fedpilot.runtime.client_evaluation import EvalCounts
from fedpilot.strategies.base import Assignment


@dataclass(frozen=True)
class TrainInstructions:
    """How a client trains locally."""

    local_steps: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    seed: int
    payload: str = "full"  # federation.payload: what the task's tensors hold (Client.receive)
    logit_adjustment: float = 0.0  # train.logit_adjustment: tau of the local label prior added to the logits (0: off)

    @classmethod
    def from_settings(cls, settings: Any, seed: int, payload: str = "full") -> TrainInstructions:
        """From the config's ``train`` section (a TrainSettings) and ``federation.payload``."""
        return cls(
            local_steps=settings.local_steps,
            batch_size=settings.batch_size,
            optimizer=settings.optimizer,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            seed=seed,
            payload=payload,
            logit_adjustment=settings.logit_adjustment,
        )

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass(frozen=True)
class ScoreInstructions:
    """How a client computes its local information terms: a few batches of squared gradients."""

    batches: int
    batch_size: int
    seed: int
    payload: str = "full"  # federation.payload: what the task's tensors hold (Client.receive)
    logit_adjustment: float = 0.0  # tau of the loss differentiated (0: the plain loss; Client.score)
    micro_batch: int = 0  # each batch's gradient accumulated over micro-batches of this many rows (0: whole batch; Strategy.score_micro_batch)


@dataclass(frozen=True)
class EvaluateInstructions:
    """How a client evaluates the global adapter on its held-out rows (train.evaluate: clients or both)."""

    batch_size: int  # train.client_eval_batch_size (null: train.batch_size)


@dataclass(frozen=True)
class TrainTask:
    cid: int
    assignment: Assignment
    tensors: TensorDict  # what the client receives
    instructions: TrainInstructions


@dataclass(frozen=True)
class ScoreTask:
    cid: int
    modules: list[str]
    tensors: TensorDict
    instructions: ScoreInstructions


@dataclass(frozen=True)
class EvaluateTask:
    cid: int
    tensors: TensorDict  # the whole global adapter: every module takes part in the evaluated function
    instructions: EvaluateInstructions


@dataclass(frozen=True)
class ClientEvaluation:
    """A client's evaluation of the global adapter on its held-out rows: the counts the server pools, and
    the pass's own figures (seconds, ``peak_bytes`` when measured, the batch rows)."""

    cid: int
    counts: EvalCounts
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    """A client that did not answer, or answered with an error."""

    cid: int
    reason: str
