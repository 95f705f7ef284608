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
from fedpilot.data import SplitData, load_split
from fedpilot.memory.calibrate import load_or_calibrate
from fedpilot.memory.costmodel import CostModel, check_budgets
from fedpilot.memsize import mib
from fedpilot.models import LoraModel, tensor_bytes
from fedpilot.partition import partition_indices
from fedpilot.report import RunRecorder
from fedpilot.server import Server, evaluate
from fedpilot.strategies import STRATEGIES, ClientInfo, ClientScores, ClientUpdate, FederationContext


@dataclass
class Federation:
    """Everything a simulated federation is made of, before its first round."""

    data: SplitData
    model: LoraModel
    clients: list[Client]
    infos: list[ClientInfo]
    cost_model: CostModel
    calibration_cached: bool
    server: Server


def build_federation(config: Config, progress: bool = True) -> Federation:
    """Load data and model, partition, calibrate the memory model, check budgets, make the strategy."""
    data = load_split(config.data, config.model.name, config.seed)
    shards = partition_indices(data.train.labels.numpy(), config.federation.num_clients, config.data.partition, config.seed)
    model = LoraModel(config.model, num_labels=len(data.label_names), seed=config.seed)
    calibration_batch = data.train.subset(np.arange(min(config.train.batch_size, len(data.train))))
    cost_model, cached = load_or_calibrate(
        model, calibration_batch, TrainInstructions.from_settings(config.train, config.seed), progress=progress
    )
    budgets = config.federation.client_budgets()
    check_budgets(cost_model, budgets)
    peaks = StepPeaks()
    clients = [Client(cid, model, data.train.subset(shard), peaks) for cid, shard in enumerate(shards)]
    infos = [ClientInfo(c.cid, c.num_samples, budget) for c, budget in zip(clients, budgets)]
    context = FederationContext(model.modules, model.module_keys, model.num_layers, cost_model)
    strategy = STRATEGIES.get_or_fail(config.strategy)(context, config.strategy_settings())
    server = Server(strategy, model.state(), infos, config)
    return Federation(data, model, clients, infos, cost_model, cached, server)


def run_scoring(federation: Federation, server_round: int, selected: list[ClientInfo]) -> list[dict[str, Any]]:
    """The round's scoring phase, if the strategy asks for one; returns a record per scoring client."""
    server, clients = federation.server, federation.clients
    records, results = [], []
    for task in server.configure_scoring(server_round, selected):
        scores, metrics = clients[task.cid].score(task.modules, server.global_tensors, task.instructions)
        results.append(ClientScores(task.cid, scores))
        records.append({"cid": task.cid, "modules": task.modules, "budget_bytes": federation.infos[task.cid].budget_bytes, **metrics})
    server.aggregate_scoring(server_round, results)
    return records


@dataclass
class RunResult:
    out_dir: Path
    results: dict[str, Any]

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.results["rounds"]


def _over_budget(record: dict[str, Any], phase: str, server_round: int, recorder: RunRecorder) -> None:
    """Flag a measured peak above the client's budget: in the record, the results and on stderr."""
    budget = record["budget_bytes"]
    record["over_budget"] = budget is not None and record["peak_bytes"] > budget
    if record["over_budget"]:
        recorder.results["budget_violations"].append(
            {"round": server_round, "phase": phase, "cid": record["cid"], "modules": record["modules"],
             "peak_bytes": record["peak_bytes"], "budget_bytes": budget}
        )
        tqdm.write(
            f"warning: round {server_round}, client {record['cid']} ({phase}): measured peak "
            f"{mib(record['peak_bytes']):.1f} MiB exceeds its budget {mib(budget):.1f} MiB",
            file=sys.stderr,
        )


def run_simulation(config: Config, out_dir: Path | None = None, progress: bool = True) -> RunResult:
    """Run ``config.federation.rounds`` rounds; results are saved to ``out_dir`` after every round."""
    start = time.perf_counter()
    out_dir = Path(out_dir or config.output_dir)
    federation = build_federation(config, progress)
    data, model, clients, server, cost_model = (
        federation.data, federation.model, federation.clients, federation.server, federation.cost_model
    )
    budgets = [info.budget_bytes for info in federation.infos]
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
            "memory": {"cost_model": cost_model.to_dict(), "calibration_cached": federation.calibration_cached},
            "budget_violations": [],
        },
    )
    say = tqdm.write if progress else (lambda _message: None)
    status = "interrupted"
    try:
        metrics = evaluate(model, server.global_tensors, data.test, config.train.eval_batch_size)
        recorder.record_round(0, metrics, [], seconds=0.0)
        say(f"round 0: test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, loss {metrics['loss']:.3f}")
        rounds_bar = tqdm(range(1, config.federation.rounds + 1), desc="rounds", unit="round", disable=not progress)
        for server_round in rounds_bar:
            round_start = time.perf_counter()
            selected = server.select_clients(server_round)
            scoring = run_scoring(federation, server_round, selected)
            for record in scoring:
                _over_budget(record, "scoring", server_round, recorder)
            tasks = server.configure_round(server_round, selected)
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
                _over_budget(record, "training", server_round, recorder)
                records.append(record)
                clients_bar.set_postfix(client=task.cid, loss=f"{client_metrics['train_loss']:.3f}")
            server.aggregate_round(server_round, updates)
            metrics = evaluate(model, server.global_tensors, data.test, config.train.eval_batch_size)
            recorder.record_round(server_round, metrics, records, seconds=time.perf_counter() - round_start, scoring=scoring)
            rounds_bar.set_postfix(acc=f"{metrics['accuracy']:.3f}", loss=f"{metrics['loss']:.3f}")
        model.load_state(server.global_tensors)
        model.save_adapter(out_dir / "adapter")
        status = "finished"
        say(f"final (round {config.federation.rounds}): test accuracy {metrics['accuracy']:.3f}, "
            f"macro-F1 {metrics['macro_f1']:.3f}, loss {metrics['loss']:.3f}")
    finally:
        recorder.finish(status, wall_seconds=time.perf_counter() - start)
    return RunResult(out_dir, recorder.results)
