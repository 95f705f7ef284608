"""The :class:`~fedpilot.runtime.transport.Transport` of a Flower deployment: one Message per node per
task, sent through the ServerApp's Grid with a per-round timeout (replies pulled 0.05 s to 1 s apart).

A node that does not answer in time, answers with an error, or answers with a message that does not
decode becomes a :class:`~fedpilot.runtime.messages.Failure` naming why; the round goes on with the
others (``Server.run_round`` records the failures).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedpilot.flower.codec import (
    CONFIG,
    decode_evaluate_reply,
    decode_score_reply,
    decode_train_reply,
    encode_evaluate_task,
    encode_score_task,
    encode_train_task,
)
from fedpilot.runtime.messages import ClientEvaluation, EvaluateTask, Failure, ScoreTask, TrainTask
from fedpilot.strategies.base import ClientScores, ClientUpdate

TRAIN_TYPE = "train"  # ClientApp @app.train()
SCORE_TYPE = "train.score"  # ClientApp @app.train("score"): backpropagation, like training
EVALUATE_TYPE = MessageType.EVALUATE  # ClientApp @app.evaluate(): "evaluate"
FIRST_POLL, POLL_SECONDS = 0.05, 1.0  # wait before the first pull of replies, and the longest between two (Flower's: 3 s)


def send_and_receive(grid: Any, messages: Sequence[Message], timeout: float | None, poll: float = POLL_SECONDS,
                     meanwhile: Callable[[], None] | None = None) -> list[Message]:
    """What ``Grid.send_and_receive`` does, polling sooner: push the messages, then pull their replies
    until each has one or ``timeout`` seconds have passed (None: no limit). The first pull comes after
    0.05 s, each next one 1.5 x later than the last, up to ``poll`` seconds apart (a pull costs the
    SuperLink a query). ``meanwhile``: work of the caller's that runs once the messages are out, while
    the nodes pick them up (the timeout counts from the push, so it includes that work)."""
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    if meanwhile is not None:
        meanwhile()
    replies: list[Message] = []
    wait = min(FIRST_POLL, poll)
    while pending:
        time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic())))
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending -= {reply.metadata.reply_to_message_id for reply in got}
        if deadline is not None and time.monotonic() >= deadline:
            break
        wait = min(wait * 1.5, poll)
    return replies


def content_bytes(content: RecordDict) -> int:
    """Serialized size of a message's content: what travels on the wire besides a few metadata bytes."""
    from flwr.common.serde import recorddict_to_proto

    return int(recorddict_to_proto(content).ByteSize())


class FlowerTransport:
    """Carries train, score and evaluate tasks to SuperNodes over a Flower Grid.

    ``nodes`` maps a client id (its partition id) to its Flower node id. ``run_config`` (the
    fedpilot config as JSON) travels in every message, since a ClientApp process lives for one
    message. ``wire_log`` gets one row per task: round, phase, cid, bytes down and up on the wire.
    """

    def __init__(
        self,
        grid: Any,
        nodes: Mapping[int, int],
        timeout: float | None,
        run_config: str,
        measure_wire: bool = True,
        log: Callable[[str], None] | None = None,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.grid = grid
        self.nodes = dict(nodes)
        self.timeout = timeout
        self.run_config = run_config
        self.measure_wire = measure_wire
        self.log = log
        self.poll = poll
        self.wire_log: list[dict[str, Any]] = []

    # -- the phases ----------------------------------------------------------------------------------
    def train(self, server_round: int, tasks: Sequence[TrainTask]) -> list[ClientUpdate | Failure]:
        contents = {t.cid: encode_train_task(t.assignment, t.tensors, t.instructions) for t in tasks}

        def decode(cid: int, content: RecordDict) -> ClientUpdate:
            num_samples, tensors, metrics = decode_train_reply(content)
            return ClientUpdate(cid, num_samples, tensors, metrics)

        return self._exchange(server_round, "training", TRAIN_TYPE, contents, decode)

    def score(self, server_round: int, tasks: Sequence[ScoreTask]) -> list[ClientScores | Failure]:
        contents = {t.cid: encode_score_task(t.modules, t.tensors, t.instructions) for t in tasks}

        def decode(cid: int, content: RecordDict) -> ClientScores:
            scores, metrics = decode_score_reply(content)
            return ClientScores(cid, scores, metrics)

        return self._exchange(server_round, "scoring", SCORE_TYPE, contents, decode)

    def evaluate(self, server_round: int, tasks: Sequence[EvaluateTask]) -> list[ClientEvaluation | Failure]:
        contents = {t.cid: encode_evaluate_task(t.tensors, t.instructions) for t in tasks}

        def decode(cid: int, content: RecordDict) -> ClientEvaluation:
            counts, metrics = decode_evaluate_reply(content)
            return ClientEvaluation(cid, counts, metrics)

        return self._exchange(server_round, "evaluation", EVALUATE_TYPE, contents, decode)

    # -- one exchange --------------------------------------------------------------------------------
    def _exchange(self, server_round: int, phase: str, message_type: str, contents: Mapping[int, RecordDict], decode) -> list:
        answers: dict[int, Any] = {}
        messages, cid_of_node = [], {}
        for cid, content in contents.items():
            node = self.nodes.get(cid)
            if node is None:
                answers[cid] = Failure(cid, "no Flower node serves this client")
                continue
            content[CONFIG] = ConfigRecord({CONFIG: self.run_config})
            messages.append(Message(content=content, dst_node_id=node, message_type=message_type, group_id=str(server_round)))
            cid_of_node[node] = cid
        down = {cid_of_node[m.metadata.dst_node_id]: content_bytes(m.content) for m in messages} if self.measure_wire else {}
        start = time.monotonic()
        replies = send_and_receive(self.grid, messages, self.timeout, self.poll) if messages else []
        waited = time.monotonic() - start
        # Flower's Grid sets each message's id when it pushes it; a reply names the message it answers
        # (the SuperLink's own error replies, e.g. "node unavailable", come from the SuperLink's node id).
        cid_of_message = {m.metadata.message_id: cid_of_node[m.metadata.dst_node_id] for m in messages if m.metadata.message_id}
        up: dict[int, int] = {}
        for reply in replies:
            cid = cid_of_message.get(reply.metadata.reply_to_message_id, cid_of_node.get(reply.metadata.src_node_id))
            if cid is None or cid in answers:
                continue  # a node we did not ask, or a second answer: ignored
            if reply.has_error():
                who = "node" if reply.metadata.src_node_id == self.nodes[cid] else "SuperLink"
                answers[cid] = Failure(cid, f"{who} answered with an error (code {reply.error.code}): {reply.error.reason}")
                continue
            try:
                answers[cid] = decode(cid, reply.content)
            except Exception as err:  # noqa: BLE001 - a malformed reply is that client's failure
                answers[cid] = Failure(cid, f"reply does not decode: {type(err).__name__}: {err}")
                continue
            if self.measure_wire:
                up[cid] = content_bytes(reply.content)
        for cid in contents:
            if cid not in answers:
                within = f" within the round timeout of {self.timeout:g} s" if self.timeout and waited >= self.timeout else f" (the grid returned after {waited:.0f} s)"
                answers[cid] = Failure(cid, f"no reply{within}")
        for cid in contents:
            if isinstance(answers[cid], Failure) and self.log:
                self.log(f"round {server_round}, client {cid} ({phase}): {answers[cid].reason}")
            if self.measure_wire:
                self.wire_log.append(
                    {"round": server_round, "phase": phase, "cid": cid, "wire_down_bytes": down.get(cid), "wire_up_bytes": up.get(cid)}
                )
        return [self._with_wire(answers[cid], down.get(cid), up.get(cid)) for cid in contents]

    @staticmethod
    def _with_wire(answer: Any, down: int | None, up: int | None) -> Any:
        """A reply's metrics gain the bytes its messages took on the wire (they land in results.json)."""
        if isinstance(answer, Failure) or down is None:
            return answer
        metrics = {**answer.metrics, "wire_down_bytes": down, "wire_up_bytes": up}
        if isinstance(answer, ClientUpdate):
            return ClientUpdate(answer.cid, answer.num_samples, answer.tensors, metrics)
        if isinstance(answer, ClientEvaluation):
            return ClientEvaluation(answer.cid, answer.counts, metrics)
        return ClientScores(answer.cid, answer.scores, metrics)
