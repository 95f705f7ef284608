"""Run outputs a person can read: results.json, metrics.csv and accuracy.png, rewritten every round."""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpilot.core.files import write_json

if TYPE_CHECKING:
    from fedpilot.runtime.server import RoundResult

ROUND_COLUMNS = (
    "round",
    "accuracy",
    "macro_f1",
    "loss",
    "train_loss",
    "clients",
    "upload_bytes",
    "download_bytes",
    "seconds",
)
# task: instruction: generation metrics in place of the classification ones (loss: the response tokens' mean)
INSTRUCTION_COLUMNS = ("round", "rouge_l", "exact_match", "perplexity", "loss", *ROUND_COLUMNS[4:])
# train.evaluate: both: the clients' pooled metrics beside the server's (with clients they are the headline columns)
BOTH_COLUMNS = (*ROUND_COLUMNS[:4], "clients_accuracy", "clients_macro_f1", "clients_loss", *ROUND_COLUMNS[4:])
# how each task's metrics read: (key, label) pairs, the first the metric a run reports first
METRIC_LABELS = {
    "accuracy": (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("loss", "loss")),
    "rouge_l": (("rouge_l", "ROUGE-L"), ("exact_match", "exact match"), ("perplexity", "perplexity")),
}


def primary_metric(metrics: dict[str, Any]) -> str | None:
    """The metric a round's results report first (``accuracy``, or ``rouge_l`` for instruction tuning); None if not evaluated."""
    return next((key for key in METRIC_LABELS if key in metrics), None)


def describe(metrics: dict[str, Any]) -> str:
    """E.g. ``accuracy 0.944, macro-F1 0.945, loss 0.201`` (or ROUGE-L, exact match and perplexity)."""
    key = primary_metric(metrics)
    return "not evaluated" if key is None else ", ".join(f"{label} {metrics[k]:.3f}" for k, label in METRIC_LABELS[key])


class RunRecorder:
    """Collects per-round metrics and per-client records, saving them as the run goes."""

    def __init__(self, out_dir: Path, header: dict[str, Any]) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {**header, "status": "running", "rounds": []}

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.results["rounds"]

    def record_round(
        self,
        server_round: int,
        metrics: dict[str, float],
        clients: list[dict[str, Any]],
        seconds: float,
        scoring: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        train_losses = [c["train_loss"] for c in clients]
        self.rounds.append(
            {
                "round": server_round,
                "evaluated": bool(metrics),  # False: no test metrics this round (train.eval_every), none copied
                **metrics,
                "train_loss": sum(train_losses) / len(train_losses) if train_losses else None,
                "upload_bytes": sum(c["upload_bytes"] for c in clients),
                "download_bytes": sum(c["download_bytes"] for c in clients),
                "seconds": seconds,
                "clients": clients,
                "scoring": scoring or [],
                **(extra or {}),
                "finished_at": datetime.now(timezone.utc).isoformat(),
            }
        )
        self.save()

    def record_result(self, result: RoundResult) -> None:
        """Record what :meth:`Server.run_round` returned."""
        self.record_round(
            result.server_round, result.metrics, result.clients, seconds=result.seconds, scoring=result.scoring,
            extra={"selected": result.selected, "failures": result.failures, "rejected": result.rejected, "skipped": result.skipped,
                   **({"proxy": result.proxy} if result.proxy is not None else {}),
                   **({"module_updates": result.module_updates} if result.module_updates is not None else {}),
                   **({"client_evaluations": result.client_evaluations} if result.client_evaluations is not None else {})},
        )

    def finish(self, status: str, wall_seconds: float) -> None:
        self.results["status"] = status
        self.results["wall_seconds"] = wall_seconds
        self.save()
        if self.rounds:
            plot_accuracy(self.rounds, self.out_dir / "accuracy.png", self.results.get("title", ""),
                          split=self.results.get("evaluated_on", "test"), by_clients=self.results.get("evaluated_by") == "clients")

    def save(self) -> None:
        write_json(self.out_dir / "results.json", self.results)
        columns = INSTRUCTION_COLUMNS if self.results.get("task") == "instruction" else (
            BOTH_COLUMNS if self.results.get("evaluated_by") == "both" else ROUND_COLUMNS
        )
        with open(self.out_dir / "metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in self.rounds:
                # a round not evaluated (train.eval_every) has no test metrics: empty cells
                writer.writerow({k: (len(row["clients"]) if k == "clients" else row.get(k)) for k in columns})


def plot_accuracy(rounds: list[dict[str, Any]], path: Path, title: str, split: str = "test", by_clients: bool = False) -> None:
    """Test accuracy and macro-F1 (left) and test loss (right) against the round; for instruction tuning
    ROUGE-L and exact match (left) and perplexity (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next((primary_metric(r) for r in rounds if primary_metric(r) is not None), "accuracy")
    (first, first_label), (second, second_label), (right_key, right_label) = METRIC_LABELS[key]
    if key == "accuracy":
        right_key, right_label = "loss", "cross-entropy"
    rounds = [r for r in rounds if r.get(key) is not None]  # evaluated rounds only (train.eval_every)
    x = [r["round"] for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(x, [r[first] for r in rounds], marker="o", label=first_label)
    left.plot(x, [r[second] for r in rounds], marker="s", linestyle="--", label=second_label)
    where = "the clients' held-out rows" if by_clients else f"the {split} split"
    left.set(xlabel="round", ylabel=f"{'held-out' if by_clients else split} score", ylim=(0, 1.02), title=f"Global model on {where}")
    left.grid(alpha=0.3)
    left.legend(loc="lower right")
    right.plot(x, [r[right_key] for r in rounds], marker="o", color="tab:red")
    right.set(xlabel="round", ylabel=right_label, title=("Loss" if key == "accuracy" else "Perplexity") + f" on {where}")
    right.grid(alpha=0.3)
    for axis in (left, right):
        axis.set_xticks(x)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
