"""Assembling a federation and driving its rounds: what every driver shares.

The simulator (:mod:`fedpilot.simulation`), the Flower apps (:mod:`fedpilot.flower`) and ``fedpilot plan``
build their model, cost model, strategy and server here, and run the round loop here, whatever carries
the tasks (an in-process transport or Flower messages).
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fedpilot.config import Config
from fedpilot.core.errors import FedpilotError
from fedpilot.core.sizes import mib
from fedpilot.data.partition import client_test_split, partition_indices
from fedpilot.data.split import SplitData, TensorSplit
from fedpilot.families.encoding import load_split
from fedpilot.memory.calibrate import load_or_calibrate
from fedpilot.planning.costmodel import CostModel
from fedpilot.report import RunRecorder, describe, primary_metric
from fedpilot.runtime.checkpoint import CHECKPOINT, Checkpoint, save_checkpoint
from fedpilot.runtime.client import Client, StepPeaks
from fedpilot.runtime.evaluation import Evaluator
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.proxy import ProxyScorer
from fedpilot.runtime.server import RoundResult, Server
from fedpilot.runtime.transport import InProcessTransport, Transport
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
    data = load_split(config.data, config.model.name, config.seed, config.proxy_fraction(), config.task)
    shards = partition_indices(data.train.labels.numpy(), config.federation.num_clients, config.data.partition, config.seed)
    splits = [client_rows(config, data.train.labels.numpy(), shard, cid) for cid, shard in enumerate(shards)]  # before the slow parts
    model = make_model(config, data)
    cost_model, cached = calibration_cost_model(config, data, model, progress)
    budgets = config.federation.client_budgets()
    peaks = StepPeaks()
    clients = {
        cid: Client(cid, model, data.train.subset(train), peaks, None if test is None else data.train.subset(test))
        for cid, (train, test) in enumerate(splits)
    }
    infos = [ClientInfo(cid, client.num_samples, budget, num_test_samples=client.num_test_samples)
             for (cid, client), budget in zip(clients.items(), budgets)]
    server = make_server(config, model, data, infos, cost_model)
    short = {cid: c.num_samples for cid, c in clients.items() if c.num_samples < config.train.batch_size}
    if short:  # said once; each client record carries the batch rows it really used
        listed = ", ".join(f"{cid} ({n})" for cid, n in list(short.items())[:8]) + (" ..." if len(short) > 8 else "")
        print(
            f"warning: train.batch_size {config.train.batch_size} exceeds the shard of {len(short)} clients "
            f"(id (samples): {listed}); they train on batches of their whole shard (recorded as batch_rows)",
            file=sys.stderr,
        )
    return Federation(data, model, clients, infos, cost_model, cached, server)


def client_rows(config: Config, labels: np.ndarray, shard: np.ndarray, cid: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rows it trains on, rows it holds out or None)`` of client ``cid``'s ``shard`` of the train split: the
    whole shard without ``data.client_test_fraction``, else :func:`client_test_split` (the same in every driver)."""
    fraction = config.data.client_test_fraction
    if fraction is None:
        return shard, None
    return client_test_split(shard, labels, fraction, config.seed, cid)


def calibration_cost_model(config: Config, data: SplitData, model: LoraModel, progress: bool = False) -> tuple[CostModel, bool]:
    """The cost model calibrated on the first ``train.batch_size`` rows of the train split, cached on
    disk; ``(cost model, was cached)``. Every driver (and every Flower node, on its own device) uses it.
    With the inference terms when clients evaluate (``train.evaluate``: clients or both), else without."""
    calibration_batch = data.train.subset(np.arange(min(config.train.batch_size, len(data.train))))
    return load_or_calibrate(model, calibration_batch, TrainInstructions.from_settings(config.train, config.seed), progress=progress,
                             checkpointing=plans_checkpointing(config), inference=config.train.evaluate != "server")


def plans_checkpointing(config: Config) -> bool:
    """Whether the run's strategy may plan activation checkpointing (``strategy_options.checkpointing: planned``):
    then its cost model is calibrated with the checkpointed terms too."""
    return getattr(config.strategy_settings(), "checkpointing", "off") == "planned"


def make_model(config: Config, data: SplitData) -> LoraModel:
    """The model for ``config`` on ``model.device`` in ``model.dtype`` (with base deltas where the strategy keeps them)."""
    from fedpilot.runtime.device import build_model

    strategy_class = STRATEGIES.get_or_fail(config.strategy)
    return build_model(
        config.model, num_labels=len(data.label_names), seed=config.seed, base_deltas=strategy_class.capabilities.base_deltas,
        task=config.task,
    )


def make_server(config: Config, model: LoraModel, data: SplitData, infos: list[ClientInfo], cost_model: CostModel) -> Server:
    """The strategy and the server (evaluating on ``data.test``, or ``data.validation`` with
    ``train.evaluate_on: validation``; with ``train.evaluate: clients`` it has no evaluator, the clients
    evaluate), budgets checked before round 1."""
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
        scaling=config.model.lora.alpha / config.model.lora.rank,
        micro_batch=config.train.micro_batch,
    )
    strategy = STRATEGIES.get_or_fail(config.strategy)(context, config.strategy_settings())
    evaluator = None if config.train.evaluate == "clients" else Evaluator(
        model, evaluation_split(config, data), config.train.eval_batch_size, config.train.eval_subset, config.seed
    )
    proxy = ProxyScorer(model, data.proxy) if data.proxy is not None else None
    server = Server(
        strategy, infos, model.state(), config.train, config.seed, evaluator, config.federation.update_norm_bound, proxy,
        min_replies=config.federation.min_replies, payload=config.federation.payload,
        eval_every=config.train.eval_every, final_round=config.federation.rounds, server_lr=config.federation.server_lr,
        evaluate=config.train.evaluate, client_eval_batch_size=config.train.client_batch_size(), num_labels=len(data.label_names),
    )
    server.check_budgets()
    return server


def evaluation_split(config: Config, data: SplitData) -> TensorSplit:
    """The split the server evaluates every round: ``train.evaluate_on`` (test, or validation for tuning runs)."""
    if config.train.evaluate_on == "test":
        return data.test
    if data.validation is None:
        raise FedpilotError("train.evaluate_on: validation needs a validation split; set data.validation_fraction (e.g. 0.1)")
    return data.validation


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


RUN_FILES = ("results.json", "metrics.csv", "accuracy.png", "adapter", CHECKPOINT)


def prepare_out_dir(out_dir: Path, overwrite: bool = False, resume: bool = False) -> None:
    """Check, before anything slow, that ``out_dir`` can take this run; never replace a run silently."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FedpilotError(f"output folder {str(out_dir)!r} exists and is not a folder; choose another --out")
    holds_run = any((out_dir / name).exists() for name in RUN_FILES)
    if holds_run and not (overwrite or resume):
        raise FedpilotError(
            f"{str(out_dir)!r} holds a run already; pass --resume {out_dir} to continue it or --overwrite to replace it"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".fedpilot-write-probe-{time.monotonic_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise FedpilotError(f"output folder {str(out_dir)!r} is not writable ({err.strerror}); choose another --out") from None
    if overwrite and not resume:
        for name in RUN_FILES:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while a run is going, so it saves its results and says so."""

    def interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_header(
    config: Config, data: SplitData, model: LoraModel, server: Server, clients: list[dict[str, Any]],
    cost_model: CostModel, calibration_cached: bool,
) -> dict[str, Any]:
    """The fields of results.json written before round 0; ``clients``: one record per client (cid,
    num_samples, budget_bytes, label_counts, and whatever a driver adds)."""
    return {
        "title": f"{config.strategy} on {config.data.dataset}, {config.federation.num_clients} clients, "
        f"{config.data.partition.kind} partition",
        "config": config.model_dump(mode="json"),
        **({"task": config.task} if config.task != "classification" else {}),
        "strategy_settings": config.strategy_settings().model_dump(mode="json"),  # the options with the defaults of this code
        "label_names": data.label_names,
        "train_samples": len(data.train),
        "test_samples": len(data.test),
        **({"validation_samples": len(data.validation)} if data.validation is not None else {}),
        **({"evaluated_on": config.train.evaluate_on} if config.train.evaluate_on != "test" else {}),
        **({"evaluated_by": config.train.evaluate} if config.train.evaluate != "server" else {}),
        # what predicting one class scores is read from these (fedpilot compare's tables state it); evaluated by the
        # clients: their held-out rows together (what a round evaluates when every client is sampled)
        "evaluated_label_counts": held_out_label_counts(clients, len(data.label_names)) if config.train.evaluate == "clients"
        else np.bincount(evaluation_split(config, data).labels.numpy(), minlength=len(data.label_names)).tolist(),
        "modules": model.modules,
        "memory_aware": server.strategy.capabilities.memory_aware,
        "clients": clients,
        "memory": {"cost_model": cost_model.to_dict(), "calibration_cached": calibration_cached},
        "budget_violations": [],
        "rejected_updates": [],
        "elapsed_seconds": 0.0,
        "resumed_after_rounds": [],
    }


def held_out_label_counts(clients: list[dict[str, Any]], num_labels: int) -> list[int]:
    """Per label, the held-out rows of all ``clients`` (their records' ``test_label_counts``) together."""
    total = np.zeros(num_labels, dtype=np.int64)
    for client in clients:
        total += np.asarray(client["test_label_counts"], dtype=np.int64)
    return total.tolist()


def client_record_counts(client: Client, num_labels: int) -> dict[str, Any]:
    """A client's rows in its run-header record: ``label_counts`` of the rows it trains on and, when it holds rows
    out (``data.client_test_fraction``), ``num_test_samples`` and ``test_label_counts``."""
    record: dict[str, Any] = {"label_counts": np.bincount(client.data.labels.numpy(), minlength=num_labels).tolist()}
    if client.test_data is not None:
        record["num_test_samples"] = client.num_test_samples
        record["test_label_counts"] = np.bincount(client.test_data.labels.numpy(), minlength=num_labels).tolist()
    return record


def evaluated_where(config: Config) -> str:
    """What a run's headline metrics were measured on, for its progress lines."""
    return "clients' held-out rows" if config.train.evaluate == "clients" else config.train.evaluate_on


def drive_rounds(
    config: Config, model: LoraModel, server: Server, transport: Transport, out_dir: Path, header: dict[str, Any],
    progress: bool = True, checkpoint: Checkpoint | None = None,
) -> RunResult:
    """The round loop of every driver, whatever the transport: evaluate, ``config.federation.rounds``
    rounds of ``server.run_round``, results and a checkpoint after every round, the final adapter in
    ``out_dir / "adapter"``. With ``checkpoint``, continue after its round."""
    start = time.perf_counter()
    recorder = RunRecorder(out_dir, header)
    say = tqdm.write if progress else (lambda _message: None)
    status, first_round, elapsed_before = "interrupted", 1, 0.0
    if checkpoint is not None:
        server.restore(checkpoint)
        recorder.results = {**checkpoint.results, "status": "running"}
        recorder.results["resumed_after_rounds"] = [*checkpoint.results.get("resumed_after_rounds", []), checkpoint.server_round]
        first_round, elapsed_before = checkpoint.server_round + 1, float(checkpoint.results.get("elapsed_seconds", 0.0))
        say(f"resuming after round {checkpoint.server_round} of {config.federation.rounds}")

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start

    try:
        with sigterm_as_interrupt():
            if checkpoint is None:
                if server.evaluate_mode == "server":
                    metrics = server.evaluate()
                    recorder.record_round(0, metrics, [], seconds=0.0)
                else:  # the clients evaluate the initial adapter too
                    initial = server.initial_evaluation(transport)
                    _report(initial, recorder)
                    recorder.record_result(initial)
                    metrics = initial.metrics
                recorder.results["elapsed_seconds"] = elapsed()
                save_checkpoint(out_dir, server.snapshot(0, recorder.results))
                say(f"round 0: {evaluated_where(config)} {describe(metrics)}")
            metrics = server.last_metrics
            rounds_bar = tqdm(
                range(first_round, config.federation.rounds + 1), desc="rounds", unit="round", disable=not progress,
                initial=first_round - 1, total=config.federation.rounds,
            )
            for server_round in rounds_bar:
                result = server.run_round(server_round, transport)
                _report(result, recorder)
                recorder.results["elapsed_seconds"] = elapsed()
                recorder.record_result(result)
                save_checkpoint(out_dir, server.snapshot(server_round, recorder.results))
                metrics = result.metrics
                key = primary_metric(metrics)
                if key is not None:  # rounds between evaluations (train.eval_every) carry none
                    rounds_bar.set_postfix({key: f"{metrics[key]:.3f}", "loss": f"{metrics['loss']:.3f}"})
            model.set_ranks({})
            model.load_state(server.global_tensors)
            model.save_adapter(out_dir / "adapter")
            status = "finished"
        say(f"final (round {config.federation.rounds}): {evaluated_where(config)} {describe(metrics)}")
    finally:
        recorder.finish(status, wall_seconds=elapsed())
    return RunResult(out_dir, recorder.results)
