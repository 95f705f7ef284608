"""In-process federation: every client is simulated on one machine over one shared base model.

A thin driver: it builds the federation (data, model, partitions, calibrated cost model, strategy,
server), then calls :meth:`~fedpilot.runtime.server.Server.run_round` with an in-process transport
and records what each round returns.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fedpilot.config import Config
from fedpilot.core.sizes import mib
from fedpilot.data.partition import partition_indices
from fedpilot.data.split import SplitData, load_split
from fedpilot.memory.calibrate import load_or_calibrate
from fedpilot.planning.costmodel import CostModel
from fedpilot.report import RunRecorder
from fedpilot.runtime.client import Client, StepPeaks
from fedpilot.runtime.evaluation import Evaluator
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.server import RoundResult, Server
from fedpilot.runtime.transport import InProcessTransport
from fedpilot.strategies import STRATEGIES, ClientInfo, FederationContext


@dataclass
class Federation:
    """Everything a simulated federation is made of, before its first round."""

    data: SplitData
    model: LoraModel
    clients: dict[int, Client]
    infos: list[ClientInfo]
    cost_model: CostModel
    calibration_cached: bool
    server: Server

    def transport(self, progress: bool = False) -> InProcessTransport:
        return InProcessTransport(self.clients, progress)


def build_federation(config: Config, progress: bool = True) -> Federation:
    """Load data and model, partition, calibrate the memory model, make the strategy, check budgets."""
    data = load_split(config.data, config.model.name, config.seed)
    shards = partition_indices(data.train.labels.numpy(), config.federation.num_clients, config.data.partition, config.seed)
    model = LoraModel(config.model, num_labels=len(data.label_names), seed=config.seed)
    calibration_batch = data.train.subset(np.arange(min(config.train.batch_size, len(data.train))))
    cost_model, cached = load_or_calibrate(
        model, calibration_batch, TrainInstructions.from_settings(config.train, config.seed), progress=progress
    )
    budgets = config.federation.client_budgets()
    peaks = StepPeaks()
    clients = {cid: Client(cid, model, data.train.subset(shard), peaks) for cid, shard in enumerate(shards)}
    infos = [ClientInfo(cid, client.num_samples, budget) for (cid, client), budget in zip(clients.items(), budgets)]
    context = FederationContext(
        modules=model.modules,
        module_keys=model.module_keys,
        shapes=model.shapes,
        num_layers=model.num_layers,
        rank=model.rank,
        cost_model=cost_model,
        memory_margin=config.federation.memory_margin,
        clients_per_round=config.federation.clients_per_round,
        seed=config.seed,
    )
    strategy = STRATEGIES.get_or_fail(config.strategy)(context, config.strategy_settings())
    evaluator = Evaluator(model, data.test, config.train.eval_batch_size)
    server = Server(strategy, infos, model.state(), config.train, config.seed, evaluator)
    server.check_budgets()
    return Federation(data, model, clients, infos, cost_model, cached, server)


@dataclass
class RunResult:
    out_dir: Path
    results: dict[str, Any]

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.results["rounds"]


def _report(result: RoundResult, recorder: RunRecorder) -> None:
    """Warnings on stderr for what went wrong in a round, and the run-level lists in results.json."""
    for v in result.violations:
        recorder.results["budget_violations"].append(v)
        tqdm.write(
            f"warning: round {v['round']}, client {v['cid']} ({v['phase']}): measured peak "
            f"{mib(v['peak_bytes']):.1f} MiB exceeds its budget {mib(v['budget_bytes']):.1f} MiB",
            file=sys.stderr,
        )
    for r in result.rejected:
        recorder.results["rejected_updates"].append(r)
        tqdm.write(f"warning: round {r['round']}, client {r['cid']}: update rejected: {r['reason']}", file=sys.stderr)
    if result.skipped:
        tqdm.write(f"round {result.server_round}: global model unchanged: {result.skipped}", file=sys.stderr)


def run_simulation(config: Config, out_dir: Path | None = None, progress: bool = True) -> RunResult:
    """Run ``config.federation.rounds`` rounds; results are saved to ``out_dir`` after every round."""
    start = time.perf_counter()
    out_dir = Path(out_dir or config.output_dir)
    federation = build_federation(config, progress)
    data, model, server = federation.data, federation.model, federation.server
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
            "memory_aware": server.strategy.memory_aware,
            "clients": [
                {
                    "cid": info.cid,
                    "num_samples": info.num_samples,
                    "budget_bytes": info.budget_bytes,
                    "label_counts": np.bincount(federation.clients[info.cid].data.labels.numpy(), minlength=len(data.label_names)).tolist(),
                }
                for info in federation.infos
            ],
            "memory": {"cost_model": federation.cost_model.to_dict(), "calibration_cached": federation.calibration_cached},
            "budget_violations": [],
            "rejected_updates": [],
        },
    )
    say = tqdm.write if progress else (lambda _message: None)
    transport = federation.transport(progress)
    status = "interrupted"
    try:
        metrics = server.evaluate()
        recorder.record_round(0, metrics, [], seconds=0.0)
        say(f"round 0: test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, loss {metrics['loss']:.3f}")
        rounds_bar = tqdm(range(1, config.federation.rounds + 1), desc="rounds", unit="round", disable=not progress)
        for server_round in rounds_bar:
            result = server.run_round(server_round, transport)
            _report(result, recorder)
            recorder.record_result(result)
            metrics = result.metrics
            rounds_bar.set_postfix(acc=f"{metrics['accuracy']:.3f}", loss=f"{metrics['loss']:.3f}")
        model.set_ranks({})
        model.load_state(server.global_tensors)
        model.save_adapter(out_dir / "adapter")
        status = "finished"
        say(f"final (round {config.federation.rounds}): test accuracy {metrics['accuracy']:.3f}, "
            f"macro-F1 {metrics['macro_f1']:.3f}, loss {metrics['loss']:.3f}")
    finally:
        recorder.finish(status, wall_seconds=time.perf_counter() - start)
    return RunResult(out_dir, recorder.results)
