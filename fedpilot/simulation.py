"""In-process federation: every client is simulated on one machine over one shared base model."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fedpilot.client import Client, StepPeaks, TrainInstructions
from fedpilot.config import Config
from fedpilot.data import load_split
from fedpilot.memory.calibrate import load_or_calibrate
from fedpilot.memory.costmodel import check_budgets
from fedpilot.memsize import mib
from fedpilot.models import LoraModel, tensor_bytes
from fedpilot.partition import partition_indices
from fedpilot.report import RunRecorder
from fedpilot.server import Server, evaluate
from fedpilot.strategies import STRATEGIES, ClientInfo, ClientUpdate, FederationContext


@dataclass
class RunResult:
    out_dir: Path
    results: dict[str, Any]

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.results["rounds"]


def run_simulation(config: Config, out_dir: Path | None = None, progress: bool = True) -> RunResult:
    """Run ``config.federation.rounds`` rounds; results are saved to ``out_dir`` after every round."""
    start = time.perf_counter()
    out_dir = Path(out_dir or config.output_dir)
    data = load_split(config.data, config.model.name, config.seed)
    shards = partition_indices(data.train.labels.numpy(), config.federation.num_clients, config.data.partition, config.seed)
    model = LoraModel(config.model, num_labels=len(data.label_names), seed=config.seed)
    say = tqdm.write if progress else (lambda _message: None)
    calibration_batch = data.train.subset(np.arange(min(config.train.batch_size, len(data.train))))
    cost_model, cached = load_or_calibrate(
        model, calibration_batch, TrainInstructions.from_settings(config.train, config.seed), progress=progress
    )
    budgets = config.federation.client_budgets()
    check_budgets(cost_model, budgets)
    peaks = StepPeaks()
    clients = [Client(cid, model, data.train.subset(shard), peaks) for cid, shard in enumerate(shards)]
    infos = [ClientInfo(c.cid, c.num_samples, budget) for c, budget in zip(clients, budgets)]
    context = FederationContext(model.modules, model.module_keys, model.num_layers)
    server = Server(STRATEGIES.get_or_fail(config.strategy)(context), model.state(), infos, config)

    recorder = RunRecorder(
        out_dir,
        {
            "title": f"{config.strategy} on {config.data.dataset}, {config.federation.num_clients} clients, "
            f"{config.data.partition.kind} partition",
            "config": config.model_dump(mode="json"),
            "label_names": data.label_names,
            "train_samples": len(data.train),
            "test_samples": len(data.test),
            "modules": model.modules,
            "clients": [
                {
                    "cid": c.cid,
                    "num_samples": c.num_samples,
                    "budget_bytes": budget,
                    "label_counts": np.bincount(c.data.labels.numpy(), minlength=len(data.label_names)).tolist(),
                }
                for c, budget in zip(clients, budgets)
            ],
            "memory": {"cost_model": cost_model.to_dict(), "calibration_cached": cached},
            "budget_violations": [],
        },
    )
    status = "interrupted"
    try:
        metrics = evaluate(model, server.global_tensors, data.test, config.train.eval_batch_size)
        recorder.record_round(0, metrics, [], seconds=0.0)
        say(f"round 0: test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, loss {metrics['loss']:.3f}")
        rounds_bar = tqdm(range(1, config.federation.rounds + 1), desc="rounds", unit="round", disable=not progress)
        for server_round in rounds_bar:
            round_start = time.perf_counter()
            tasks = server.configure_round(server_round)
            download = tensor_bytes(server.global_tensors)
            updates, records = [], []
            clients_bar = tqdm(tasks, desc=f"round {server_round} clients", unit="client", leave=False, disable=not progress)
            for task in clients_bar:
                tensors, client_metrics = clients[task.cid].train(task.modules, server.global_tensors, task.instructions)
                updates.append(ClientUpdate(task.cid, clients[task.cid].num_samples, tensors, client_metrics))
                record = {
                    "cid": task.cid,
                    "modules": task.modules,
                    "download_bytes": download,
                    "budget_bytes": budgets[task.cid],
                    "predicted_bytes": cost_model.cost(task.modules),
                    **client_metrics,
                }
                record["over_budget"] = budgets[task.cid] is not None and record["peak_bytes"] > budgets[task.cid]
                if record["over_budget"]:
                    recorder.results["budget_violations"].append(
                        {k: record[k] for k in ("cid", "modules", "peak_bytes", "budget_bytes")} | {"round": server_round}
                    )
                    tqdm.write(
                        f"warning: round {server_round}, client {task.cid}: measured peak {mib(record['peak_bytes']):.1f} MiB "
                        f"exceeds its budget {mib(budgets[task.cid]):.1f} MiB",
                        file=sys.stderr,
                    )
                records.append(record)
                clients_bar.set_postfix(client=task.cid, loss=f"{client_metrics['train_loss']:.3f}")
            server.aggregate_round(server_round, updates)
            metrics = evaluate(model, server.global_tensors, data.test, config.train.eval_batch_size)
            recorder.record_round(server_round, metrics, records, seconds=time.perf_counter() - round_start)
            rounds_bar.set_postfix(acc=f"{metrics['accuracy']:.3f}", loss=f"{metrics['loss']:.3f}")
        model.load_state(server.global_tensors)
        model.save_adapter(out_dir / "adapter")
        status = "finished"
        say(f"final (round {config.federation.rounds}): test accuracy {metrics['accuracy']:.3f}, "
            f"macro-F1 {metrics['macro_f1']:.3f}, loss {metrics['loss']:.3f}")
    finally:
        recorder.finish(status, wall_seconds=time.perf_counter() - start)
    return RunResult(out_dir, recorder.results)
