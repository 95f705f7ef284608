"""The server's side of a round, transport-free: select clients, instruct them, aggregate, evaluate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from fedpilot.client import ScoreInstructions, TrainInstructions
from fedpilot.config import Config
from fedpilot.data import TokenizedSplit
from fedpilot.models import LoraModel, TensorDict
from fedpilot.strategies import ClientInfo, ClientScores, ClientUpdate, Strategy


@dataclass(frozen=True)
class ClientTask:
    """One client's job for a round: which modules to train, and how."""

    cid: int
    modules: list[str]
    instructions: TrainInstructions


@dataclass(frozen=True)
class ScoreTask:
    """One client's scoring job for a round: which modules to score, and how."""

    cid: int
    modules: list[str]
    instructions: ScoreInstructions


def derived_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part (run seed, round, client), so runs replay exactly."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


class Server:
    """Holds the global adapter tensors and runs the strategy's hooks round after round."""

    def __init__(
        self, strategy: Strategy, initial_tensors: TensorDict, clients: Sequence[ClientInfo], config: Config
    ) -> None:
        self.strategy = strategy
        self.global_tensors = initial_tensors
        self.clients = list(clients)
        self.config = config

    def select_clients(self, server_round: int) -> list[ClientInfo]:
        wanted = self.config.federation.clients_per_round
        if wanted is None or wanted >= len(self.clients):
            return list(self.clients)
        rng = np.random.default_rng(derived_seed(self.config.seed, server_round))
        chosen = sorted(rng.choice(len(self.clients), size=wanted, replace=False))
        return [self.clients[i] for i in chosen]

    def configure_scoring(self, server_round: int, selected: Sequence[ClientInfo]) -> list[ScoreTask]:
        requests = self.strategy.configure_score(server_round, selected, self.global_tensors)
        return [
            ScoreTask(
                cid=client.cid,
                modules=requests[client.cid],
                instructions=ScoreInstructions(
                    batches=self.strategy.score_batches,
                    batch_size=self.config.train.batch_size,
                    seed=derived_seed(self.config.seed, server_round, client.cid, 1),
                ),
            )
            for client in selected
            if requests.get(client.cid)
        ]

    def aggregate_scoring(self, server_round: int, scores: Sequence[ClientScores]) -> None:
        self.strategy.aggregate_score(server_round, scores)

    def configure_round(self, server_round: int, selected: Sequence[ClientInfo]) -> list[ClientTask]:
        assignment = self.strategy.configure_train(server_round, selected, self.global_tensors)
        return [
            ClientTask(
                cid=client.cid,
                modules=assignment[client.cid],
                instructions=TrainInstructions.from_settings(
                    self.config.train, derived_seed(self.config.seed, server_round, client.cid)
                ),
            )
            for client in selected
            if client.cid in assignment
        ]

    def aggregate_round(self, server_round: int, updates: Sequence[ClientUpdate]) -> None:
        self.global_tensors = self.strategy.aggregate_train(server_round, self.global_tensors, updates)


@torch.no_grad()
def evaluate(model: LoraModel, tensors: TensorDict, split: TokenizedSplit, batch_size: int) -> dict[str, float]:
    """Test loss, accuracy and macro-F1 of the global adapter ``tensors``."""
    model.load_state(tensors)
    model.peft.eval()
    losses, predictions = [], []
    for start in range(0, len(split), batch_size):
        rows = slice(start, start + batch_size)
        logits = model.logits(split.input_ids[rows], split.attention_mask[rows])
        losses.append(F.cross_entropy(logits, split.labels[rows], reduction="sum").item())
        predictions.append(logits.argmax(dim=-1))
    predicted = torch.cat(predictions).numpy()
    labels = split.labels.numpy()
    return {
        "loss": float(sum(losses) / len(split)),
        "accuracy": float((predicted == labels).mean()),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }
