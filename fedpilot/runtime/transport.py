"""How the server's tasks reach clients. A driver supplies a :class:`Transport`; the round loop in
:class:`~fedpilot.runtime.server.Server` is the same whatever carries the messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from tqdm.auto import tqdm

from fedpilot.runtime.messages import ClientEvaluation, EvaluateTask, Failure, ScoreTask, TrainTask
from fedpilot.strategies.base import ClientScores, ClientUpdate


class Transport(Protocol):
    """Runs tasks on clients and returns, per task, a reply or a failure (a client that did not answer):
    training, scoring, and evaluation of the global adapter on the clients' held-out rows."""

    def train(self, server_round: int, tasks: Sequence[TrainTask]) -> list[ClientUpdate | Failure]: ...

    def score(self, server_round: int, tasks: Sequence[ScoreTask]) -> list[ClientScores | Failure]: ...

    def evaluate(self, server_round: int, tasks: Sequence[EvaluateTask]) -> list[ClientEvaluation | Failure]: ...


class InProcessTransport:
    """Calls :class:`~fedpilot.runtime.client.Client` objects of this process one after another.

    A client's exception propagates: in one process it is a bug, not a device that dropped out.
    """

    def __init__(self, clients: Mapping[int, object], progress: bool = False) -> None:
        self.clients = clients
        self.progress = progress

    def train(self, server_round: int, tasks: Sequence[TrainTask]) -> list[ClientUpdate | Failure]:
        replies: list[ClientUpdate | Failure] = []
        bar = tqdm(tasks, desc=f"round {server_round} clients", unit="client", leave=False, disable=not self.progress)
        for task in bar:
            client = self.clients.get(task.cid)
            if client is None:
                replies.append(Failure(task.cid, "no such client"))
                continue
            tensors, metrics = client.train(task.assignment, task.tensors, task.instructions)
            replies.append(ClientUpdate(task.cid, client.num_samples, tensors, metrics))
            bar.set_postfix(client=task.cid, loss=f"{metrics['train_loss']:.3f}")
        return replies

    def score(self, server_round: int, tasks: Sequence[ScoreTask]) -> list[ClientScores | Failure]:
        return self._each(tasks, lambda client, t: ClientScores(t.cid, *client.score(t.modules, t.tensors, t.instructions)))

    def evaluate(self, server_round: int, tasks: Sequence[EvaluateTask]) -> list[ClientEvaluation | Failure]:
        return self._each(tasks, lambda client, t: ClientEvaluation(t.cid, *client.evaluate(t.tensors, t.instructions)))

    def _each(self, tasks: Sequence[Any], reply: Callable[[Any, Any], Any]) -> list[Any]:
        """``reply(client, task)`` for each task in order; a task for a client this process does not hold is a Failure."""
        replies = []
        for task in tasks:
            client = self.clients.get(task.cid)
            replies.append(Failure(task.cid, "no such client") if client is None else reply(client, task))
        return replies
