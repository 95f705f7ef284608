"""The server's side of a round, transport-free and torch-free: the one round loop every driver runs.

``Server.run_round(round, transport)``: the strategy samples clients, an optional scoring phase
runs, the strategy assigns each client its work, the transport carries the tasks, every reply is
validated against its assignment (rejected ones are recorded and left out), the strategy
aggregates, and the new global adapter is evaluated: by the server's evaluator on its central split
(``train.evaluate: server``), by the round's sampled clients on their held-out rows (``clients``, their
counts pooled: :meth:`Server.evaluate_clients`), or both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedpilot.core.keys import HEAD, module_of
from fedpilot.core.sizes import mib
from fedpilot.core.tensors import TensorDict, tensor_bytes
from fedpilot.planning.costmodel import usable
from fedpilot.runtime.checkpoint import Checkpoint
from fedpilot.runtime.client_evaluation import CLIENTS_PREFIX, EVALUATE_MODES, pooled_metrics
from fedpilot.runtime.messages import (
    EvaluateInstructions,
    EvaluateTask,
    Failure,
    ScoreInstructions,
    ScoreTask,
    TrainInstructions,
    TrainTask,
)
from fedpilot.runtime.transport import Transport
from fedpilot.runtime.validation import outliers, update_problem, update_rms
from fedpilot.strategies.base import Assignment, ClientInfo, ClientUpdate, Strategy, derived_seed
from fedpilot.strategies.server_step import module_changes, server_step

Evaluator = Callable[[TensorDict], dict[str, float]]
ProxyScorer = Callable[[TensorDict], Mapping[str, float]]  # global adapter -> a score per module (the server's proxy set)
PAYLOADS = ("full", "assigned")  # federation.payload


def planned_with(client: ClientInfo, cost_model: Any) -> dict[str, Any]:
    """Which cost model planned ``client``, for its round record: ``"own"`` (the one it calibrated on its
    own device and reported) or ``"federation"`` (the driver's shared one), with its source and device."""
    return {
        "cost_model": "own" if client.cost_model is not None else "federation",
        "cost_model_source": cost_model.source,
        "cost_model_device": cost_model.settings.get("device"),
    }


@dataclass
class RoundPlan:
    """A round before training: who takes part, what scoring returned, what each client trains."""

    server_round: int
    selected: list[ClientInfo]
    scoring: list[dict[str, Any]]
    assignments: dict[int, Assignment]
    failures: list[dict[str, Any]] = field(default_factory=list)
    proxy: dict[str, Any] | None = None  # the server's proxy-set scoring, when the strategy asked for it


@dataclass
class RoundResult:
    """Everything a round did, as plain records (what results.json keeps)."""

    server_round: int
    metrics: dict[str, float]
    clients: list[dict[str, Any]]
    scoring: list[dict[str, Any]]
    selected: list[int]
    failures: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    violations: list[dict[str, Any]]
    skipped: str | None
    seconds: float
    proxy: dict[str, Any] | None = None
    # per module (and "head"): how many accepted updates trained it, how far the round moved its effective weight
    # and that weight's norm after the round (Frobenius norms, :func:`module_changes`); None when the model did not change
    module_updates: dict[str, dict[str, float]] | None = None
    # train.evaluate: clients / both, on a round evaluation was due: one record per client asked or skipped
    client_evaluations: list[dict[str, Any]] | None = None


@dataclass
class ClientEvaluationPhase:
    """What the clients' evaluation of a round gave: the pooled metrics (empty when no client's counts arrived),
    a record per client (evaluated, or ``skipped`` with the reason), failures and budget violations."""

    metrics: dict[str, float]
    records: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    violations: list[dict[str, Any]]


class Server:
    """Holds the global adapter tensors and runs the strategy's hooks round after round."""

    def __init__(
        self,
        strategy: Strategy,
        clients: Sequence[ClientInfo],
        initial_tensors: TensorDict,
        train_settings: Any,
        seed: int,
        evaluator: Evaluator | None = None,
        update_norm_bound: float | None = None,
        proxy: ProxyScorer | None = None,
        min_replies: int = 1,
        payload: str = "full",
        eval_every: int = 1,
        final_round: int | None = None,
        server_lr: float = 1.0,
        evaluate: str = "server",
        client_eval_batch_size: int | None = None,
        num_labels: int | None = None,
    ) -> None:
        """``train_settings`` is the config's ``train`` section (local steps, batch size, optimiser);
        ``update_norm_bound``: reject an update whose RMS change exceeds this multiple of the round's median;
        ``proxy``: scores modules on the server's proxy set, for strategies that need it (``capabilities.needs_proxy``);
        ``min_replies``: a round with fewer valid updates keeps the global model and is recorded as skipped;
        ``payload``: ``"full"`` (every task carries the whole global adapter) or ``"assigned"`` (only the
        tensors of the modules the task is about, and the head: :meth:`payload_for`);
        ``eval_every``, ``final_round``: the evaluation cadence (:meth:`evaluation_due`);
        ``server_lr``: the global state moves this share of the way to each aggregate (:func:`server_step`);
        ``evaluate`` (``train.evaluate``): ``"server"`` (the evaluator), ``"clients"`` (the round's sampled clients on
        their held-out rows, in batches of ``client_eval_batch_size`` rows, their counts of ``num_labels`` labels
        pooled: :meth:`evaluate_clients`) or ``"both"``."""
        if eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {eval_every}")
        if min_replies < 1:
            raise ValueError(f"min_replies must be >= 1, got {min_replies}")
        if not 0 < server_lr <= 1:
            raise ValueError(f"server_lr must be in (0, 1], got {server_lr}")
        if payload not in PAYLOADS:
            raise ValueError(f"payload must be one of {PAYLOADS}, got {payload!r}")
        if evaluate not in EVALUATE_MODES:
            raise ValueError(f"evaluate must be one of {EVALUATE_MODES}, got {evaluate!r}")
        if evaluate != "server" and (client_eval_batch_size is None or client_eval_batch_size < 1):
            raise ValueError(f"evaluate={evaluate!r} needs the clients' evaluation batch size, got {client_eval_batch_size!r}")
        ids = [c.cid for c in clients]
        if len(set(ids)) != len(ids):
            raise ValueError(f"client ids must be unique, got {ids}")
        if strategy.capabilities.needs_proxy and proxy is None:
            raise ValueError(
                f"strategy {type(strategy).__name__} scores layers on the server's proxy set, and this server has none "
                "(build the data with a proxy_fraction)"
            )
        self.strategy = strategy
        self.proxy = proxy
        self.clients: dict[int, ClientInfo] = {c.cid: c for c in clients}
        self.global_tensors = initial_tensors
        self.train_settings = train_settings
        self.seed = seed
        self.evaluator = evaluator
        self.update_norm_bound = update_norm_bound
        self.min_replies = min_replies
        self.payload = payload
        self.server_lr = server_lr
        self.eval_every, self.final_round = eval_every, final_round
        self.evaluate_mode, self.client_eval_batch_size, self.num_labels = evaluate, client_eval_batch_size, num_labels
        self.last_metrics: dict[str, float] = {}
        self._last_on_subset: bool | None = None  # what last_metrics was measured on (None: unknown, after a restore)

    @property
    def context(self):
        return self.strategy.context

    def check_budgets(self) -> None:
        """Before the first round: the strategy refuses budgets that would make a later round impossible."""
        self.strategy.check_budgets(list(self.clients.values()))

    def payload_for(self, modules: Sequence[str], tensors: TensorDict | None = None) -> TensorDict:
        """What a task about ``modules`` carries, taken from ``tensors`` (default: the global adapter).

        ``payload == "full"``: all of it. ``"assigned"``: only the tensors of ``modules`` (every key whose
        module is one of them) and the head's; the client runs every other LoRA module as the base model
        (:meth:`~fedpilot.runtime.client.Client.receive` zeroes it), in every driver alike.
        """
        tensors = self.global_tensors if tensors is None else tensors
        if self.payload == "full":
            return tensors
        wanted = {*modules, HEAD}
        return {key: value for key, value in tensors.items() if module_of(key) in wanted}

    def evaluate(self, subset: bool = False) -> dict[str, float]:
        """Evaluate the global adapter: on the evaluator's whole split, or its fixed subset (``subset``)."""
        if not self.evaluator:
            self.last_metrics = {}
        else:
            self.last_metrics = dict(self.evaluator(self.global_tensors, subset=True) if subset else self.evaluator(self.global_tensors))
        self._last_on_subset = subset
        return self.last_metrics

    def evaluation_due(self, server_round: int) -> tuple[bool, bool]:
        """``(evaluate after this round?, on the subset?)``: every ``eval_every`` rounds and always the
        final round; the final round on the whole split, the others on the evaluator's subset if it has one.
        A round not evaluated carries no metrics (never the last ones copied)."""
        final = server_round == self.final_round
        due = final or server_round % self.eval_every == 0
        return due, due and not final and getattr(self.evaluator, "subset_split", None) is not None

    def _round_metrics(self, server_round: int, changed: bool) -> dict[str, float]:
        due, subset = self.evaluation_due(server_round)
        if not due or self.evaluate_mode == "clients":
            return {}
        if changed or self._last_on_subset is not subset or not self.last_metrics:
            return self.evaluate(subset)
        return dict(self.last_metrics)  # the global model did not change: the same model on the same split

    # -- evaluation on the clients -------------------------------------------------------------------
    def evaluate_clients(self, server_round: int, clients: Sequence[ClientInfo], transport: Transport) -> ClientEvaluationPhase:
        """``clients`` evaluate the global adapter on their held-out rows; the server pools their counts.

        A client is asked unless its cost model predicts an evaluation pass (batches of
        ``client_eval_batch_size`` rows, at most its held-out rows) above its usable budget (after
        ``memory_margin``, as planners use it): then it is recorded as ``skipped`` with the reason and
        counts in no aggregate. A client whose cost model has no inference terms is asked whatever its
        budget (``predicted_bytes`` None). Every task carries the whole global adapter. A failed reply,
        or counts that cannot be an evaluation of its held-out rows, is a failure of phase ``evaluation``;
        a measured peak above the budget is a budget violation. The pooled metrics are those of the union
        of the evaluated rows (:func:`pooled_metrics`): accuracy and macro-F1 from the summed counts, the
        loss weighted by rows."""
        batch_size = self.client_eval_batch_size
        if batch_size is None:
            raise ValueError("this server has no client evaluation batch size (evaluate='server')")
        records: dict[int, dict[str, Any]] = {}
        tasks: list[EvaluateTask] = []
        for client in clients:
            if client.num_test_samples < 1:
                records[client.cid] = {"cid": client.cid, "skipped": "holds no rows to evaluate on", "budget_bytes": client.budget_bytes}
                continue
            cost_model = self.context.cost_model_for(client)
            predicted = cost_model.inference(min(batch_size, client.num_test_samples))
            budget = client.budget_bytes
            record = {"cid": client.cid, "budget_bytes": budget, "predicted_bytes": predicted, **planned_with(client, cost_model)}
            if predicted is not None and budget is not None and predicted > usable(budget, self.context.memory_margin):
                record["skipped"] = (
                    f"predicted evaluation peak {mib(predicted):.1f} MiB exceeds the usable budget "
                    f"{mib(usable(budget, self.context.memory_margin)):.1f} MiB"
                )
                records[client.cid] = record
                continue
            records[client.cid] = record
            tasks.append(EvaluateTask(client.cid, self.global_tensors, EvaluateInstructions(batch_size=batch_size)))
        failures, counts, answered = [], [], set()
        for reply in transport.evaluate(server_round, tasks) if tasks else []:
            if isinstance(reply, Failure):
                failures.append({"cid": reply.cid, "phase": "evaluation", "reason": reply.reason})
                records.pop(reply.cid, None)
                continue
            if reply.cid in answered or reply.cid not in records or "skipped" in records[reply.cid]:
                failures.append({"cid": reply.cid, "phase": "evaluation", "reason": "evaluation reply from a client that had no evaluation task"})
                continue
            answered.add(reply.cid)
            problem = reply.counts.problem(self.num_labels)
            if problem is None and reply.counts.rows != self.clients[reply.cid].num_test_samples:
                problem = f"it evaluated {reply.counts.rows} rows and holds {self.clients[reply.cid].num_test_samples}"
            if problem is not None:
                failures.append({"cid": reply.cid, "phase": "evaluation", "reason": f"evaluation rejected: {problem}"})
                records.pop(reply.cid)
                continue
            counts.append(reply.counts)
            records[reply.cid].update(
                {"rows": reply.counts.rows, **reply.counts.metrics(), "download_bytes": tensor_bytes(self.global_tensors),
                 **reply.metrics, "counts": reply.counts.to_dict()}
            )
        for task in tasks:  # a transport that returned nothing for a task: that client failed, never silently dropped
            if task.cid not in answered and not any(f["cid"] == task.cid and f["phase"] == "evaluation" for f in failures):
                failures.append({"cid": task.cid, "phase": "evaluation", "reason": "no evaluation reply"})
                records.pop(task.cid, None)
        ordered = [records[c.cid] for c in clients if c.cid in records]
        violations = [
            {"round": server_round, "phase": "evaluation", "cid": r["cid"], "modules": [], "peak_bytes": r["peak_bytes"], "budget_bytes": r["budget_bytes"]}
            for r in ordered
            if "skipped" not in r and self._over_budget(r)
        ]
        return ClientEvaluationPhase(pooled_metrics(counts), ordered, failures, violations)

    def _evaluate(self, server_round: int, changed: bool, clients: Sequence[ClientInfo], transport: Transport) -> tuple[dict[str, float], ClientEvaluationPhase | None]:
        """The round's metrics: the server's (:meth:`_round_metrics`), the clients' pooled ones (``clients``), or the
        server's with the clients' under ``clients_`` keys (``both``); and the clients' phase, when they evaluated."""
        metrics = self._round_metrics(server_round, changed)
        if self.evaluate_mode == "server" or not self.evaluation_due(server_round)[0]:
            return metrics, None
        phase = self.evaluate_clients(server_round, clients, transport)
        if self.evaluate_mode == "clients":
            self.last_metrics, self._last_on_subset = dict(phase.metrics), None
            return dict(phase.metrics), phase
        return {**metrics, **{f"{CLIENTS_PREFIX}{k}": v for k, v in phase.metrics.items()}}, phase

    def initial_evaluation(self, transport: Transport) -> RoundResult:
        """Round 0: the initial global adapter evaluated by the server, and with ``clients`` or ``both`` by
        every client (there is no sampling before round 1)."""
        start = time.perf_counter()
        metrics = self.evaluate() if self.evaluate_mode != "clients" else {}
        phase = None
        if self.evaluate_mode != "server":
            phase = self.evaluate_clients(0, list(self.clients.values()), transport)
            if self.evaluate_mode == "clients":
                metrics = self.last_metrics = dict(phase.metrics)
            else:
                metrics = {**metrics, **{f"{CLIENTS_PREFIX}{k}": v for k, v in phase.metrics.items()}}
        return RoundResult(
            server_round=0, metrics=metrics, clients=[], scoring=[], selected=sorted(self.clients) if phase else [],
            failures=phase.failures if phase else [], rejected=[], violations=phase.violations if phase else [], skipped=None,
            seconds=time.perf_counter() - start, client_evaluations=phase.records if phase else None,
        )

    # -- planning ------------------------------------------------------------------------------------
    def plan_round(self, server_round: int, transport: Transport) -> RoundPlan:
        """Sampling, the scoring phase and the assignments of a round; nothing is trained."""
        selected = self.strategy.sample(server_round, list(self.clients.values()))
        unknown = [c.cid for c in selected if c.cid not in self.clients]
        if unknown:
            raise ValueError(f"{type(self.strategy).__name__}.sample returned unknown clients {unknown}")
        scoring, failures = self._scoring_phase(server_round, selected, transport)
        proxy = self._proxy_phase(server_round)
        assignments = self.strategy.configure_train(server_round, selected, self.global_tensors)
        chosen = {c.cid for c in selected}
        stray = sorted(set(assignments) - chosen)
        if stray:
            raise ValueError(f"{type(self.strategy).__name__}.configure_train assigned clients it did not sample: {stray}")
        if self.context.micro_batch:  # train.micro_batch: what the strategy planned with, and what the client runs
            assignments = {cid: a if a.micro_batch else replace(a, micro_batch=self.context.micro_batch) for cid, a in assignments.items()}
        for cid, assignment in assignments.items():
            unknown_modules = set(assignment.modules) - set(self.context.modules)
            if unknown_modules:
                raise ValueError(f"assignment of client {cid} names unknown modules {sorted(unknown_modules)}")
            if not assignment.modules and not self.context.head_keys:
                raise ValueError(f"assignment of client {cid} trains nothing: no modules, and the model has no task head")
        return RoundPlan(server_round, selected, scoring, assignments, failures, proxy)

    def _proxy_phase(self, server_round: int) -> dict[str, Any] | None:
        """The server scores every module on its proxy set, when the strategy asks this round."""
        if self.proxy is None or not self.strategy.configure_proxy(server_round):
            return None
        start = time.perf_counter()
        scores = dict(self.proxy(self.global_tensors))
        unknown = set(scores) - set(self.context.modules)
        if unknown:
            raise ValueError(f"the proxy scorer returned unknown modules {sorted(unknown)[:3]}")
        self.strategy.aggregate_proxy(server_round, scores)
        return {"modules": len(scores), "seconds": time.perf_counter() - start, "scores": scores}

    def _scoring_phase(
        self, server_round: int, selected: Sequence[ClientInfo], transport: Transport
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        requests = self.strategy.configure_score(server_round, selected, self.global_tensors)
        tasks = [
            ScoreTask(
                cid=client.cid,
                modules=list(requests[client.cid]),
                tensors=self.payload_for(requests[client.cid]),
                instructions=ScoreInstructions(
                    batches=self.strategy.score_batches,
                    batch_size=self.train_settings.batch_size,
                    seed=derived_seed(self.seed, server_round, client.cid, 1),
                    payload=self.payload,
                    logit_adjustment=self.train_settings.logit_adjustment if self.strategy.score_trained_loss else 0.0,
                    micro_batch=self.strategy.score_micro_batch(client),
                ),
            )
            for client in selected
            if requests.get(client.cid)
        ]
        if not tasks:
            return [], []
        records, results, failures = [], [], []
        asked = {t.cid: t.modules for t in tasks}
        for reply in transport.score(server_round, tasks):
            if isinstance(reply, Failure):
                failures.append({"cid": reply.cid, "phase": "scoring", "reason": reply.reason})
                continue
            if set(reply.scores) != set(asked[reply.cid]):
                failures.append({"cid": reply.cid, "phase": "scoring", "reason": "scores do not match the modules asked"})
                continue
            results.append(reply)
            record = {"cid": reply.cid, "modules": asked[reply.cid], "budget_bytes": self.clients[reply.cid].budget_bytes, **reply.metrics}
            records.append(record)
        self.strategy.aggregate_score(server_round, results)
        return records, failures

    # -- a whole round -------------------------------------------------------------------------------
    def run_round(self, server_round: int, transport: Transport) -> RoundResult:
        start = time.perf_counter()
        plan = self.plan_round(server_round, transport)
        tasks = [
            TrainTask(
                cid=client.cid,
                assignment=plan.assignments[client.cid],
                tensors=self.payload_for(plan.assignments[client.cid].modules, plan.assignments[client.cid].tensors),
                instructions=TrainInstructions.from_settings(self.train_settings, derived_seed(self.seed, server_round, client.cid), self.payload),
            )
            for client in plan.selected
            if client.cid in plan.assignments
        ]
        by_cid = {t.cid: t for t in tasks}
        failures, rejected, records, updates = list(plan.failures), [], [], []
        for reply in transport.train(server_round, tasks) if tasks else []:
            if isinstance(reply, Failure):
                failures.append({"cid": reply.cid, "phase": "training", "reason": reply.reason})
                continue
            task = by_cid.get(reply.cid)
            if task is None:
                rejected.append({"round": server_round, "cid": reply.cid, "reason": "reply from a client that had no task"})
                continue
            problem = update_problem(self.context, task.assignment, reply.tensors, self.global_tensors, reply.num_samples)
            if problem is not None:
                rejected.append({"round": server_round, "cid": reply.cid, "reason": problem})
                continue
            updates.append(reply)
            records.append(self._client_record(task, reply))
        norms = [update_rms(u.tensors, by_cid[u.cid].tensors) for u in updates]
        for i in reversed(outliers(norms, self.update_norm_bound)):
            median = float(np.median(norms))
            reason = f"update RMS {norms[i]:.3g} exceeds {self.update_norm_bound:g} x the round's median {median:.3g}"
            rejected.append({"round": server_round, "cid": updates[i].cid, "reason": reason})
            del updates[i], records[i]
        skipped, module_updates = None, None
        if updates and len(updates) < self.min_replies:
            skipped = f"{len(updates)} valid update(s), fewer than federation.min_replies={self.min_replies}"
            metrics, evaluation = self._evaluate(server_round, False, plan.selected, transport)
        elif updates:
            before = self.global_tensors
            self._apply(self.strategy.aggregate_train(server_round, self.global_tensors, updates))
            module_updates = self._module_updates(before, records)
            metrics, evaluation = self._evaluate(server_round, True, plan.selected, transport)
        else:
            skipped = "no client was sampled" if not plan.selected else (
                "no sampled client was assigned work" if not tasks else "no valid update arrived"
            )
            metrics, evaluation = self._evaluate(server_round, False, plan.selected, transport)
        violations = [
            {"round": server_round, "phase": phase, "cid": r["cid"], "modules": r["modules"], "peak_bytes": r["peak_bytes"], "budget_bytes": r["budget_bytes"]}
            for phase, group in (("scoring", plan.scoring), ("training", records))
            for r in group
            if self._over_budget(r)
        ]
        if evaluation is not None:
            failures += evaluation.failures
            violations += evaluation.violations
        return RoundResult(
            server_round=server_round,
            metrics=metrics,
            clients=records,
            scoring=plan.scoring,
            selected=[c.cid for c in plan.selected],
            failures=failures,
            rejected=rejected,
            violations=violations,
            skipped=skipped,
            seconds=time.perf_counter() - start,
            proxy=plan.proxy,
            module_updates=module_updates,
            client_evaluations=None if evaluation is None else evaluation.records,
        )

    def _module_updates(self, before: TensorDict, records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
        changes = module_changes(before, self.global_tensors, self.context.modules, self.context.scaling, self.strategy.capabilities.base_deltas)
        trainers = {m: sum(m in r["modules"] for r in records) for m in changes}
        if HEAD in changes:
            trainers[HEAD] = len(records)
        return {m: {"trainers": trainers[m], "change": change, "norm": norm} for m, (change, norm) in changes.items()}

    def _client_record(self, task: TrainTask, reply: ClientUpdate) -> dict[str, Any]:
        assignment = task.assignment
        cost_model = self.context.whole_batch_cost_model(self.clients[task.cid])  # the assignment says its micro-batch
        record: dict[str, Any] = {
            "cid": task.cid,
            "modules": list(assignment.modules),
            "download_bytes": tensor_bytes(task.tensors),
            "budget_bytes": self.clients[task.cid].budget_bytes,
            "predicted_bytes": assignment.predicted_bytes(cost_model),
            **planned_with(self.clients[task.cid], cost_model),
            **reply.metrics,
        }
        if self.payload != "full":  # what the whole adapter would have cost, beside what was sent
            record["payload"] = self.payload
            record["download_bytes_full"] = tensor_bytes(assignment.tensors if assignment.tensors is not None else self.global_tensors)
        if assignment.ranks:
            record["ranks"] = dict(assignment.ranks)
        if assignment.micro_batch:
            record["micro_batch"] = assignment.micro_batch
        if len(assignment.parts) < 2:
            record["parts"] = list(assignment.parts)
        if assignment.checkpointing:
            record["checkpointing"] = True
        return record

    @staticmethod
    def _over_budget(record: dict[str, Any]) -> bool:
        """Flag (in the record) a measured peak above the client's budget."""
        budget, peak = record.get("budget_bytes"), record.get("peak_bytes")
        record["over_budget"] = budget is not None and peak is not None and peak > budget
        return record["over_budget"]

    # -- checkpoints ---------------------------------------------------------------------------------
    def snapshot(self, server_round: int, results: dict[str, Any]) -> Checkpoint:
        """What decides the rounds after ``server_round``."""
        return Checkpoint(server_round, dict(self.global_tensors), self.strategy.state_dict(), dict(self.last_metrics), results)

    def restore(self, checkpoint: Checkpoint) -> None:
        if set(checkpoint.global_tensors) != set(self.global_tensors):
            raise ValueError("the checkpoint's adapter keys differ from this model's")
        for key, value in checkpoint.global_tensors.items():
            if value.shape != self.global_tensors[key].shape or value.dtype != self.global_tensors[key].dtype:
                raise ValueError(f"the checkpoint's {key} is {value.shape} {value.dtype}, the model's {self.global_tensors[key].shape}")
        self.global_tensors = dict(checkpoint.global_tensors)
        self.strategy.load_state_dict(checkpoint.strategy_state)
        self.last_metrics = dict(checkpoint.last_metrics)

    def _apply(self, new_tensors: Mapping[str, Any]) -> None:
        """Move the global adapter to the aggregate (``server_lr`` of the way), if it keeps every key and shape
        (never a silent change)."""
        if set(new_tensors) != set(self.global_tensors):
            missing, extra = sorted(set(self.global_tensors) - set(new_tensors)), sorted(set(new_tensors) - set(self.global_tensors))
            raise ValueError(f"{type(self.strategy).__name__}.aggregate_train changed the adapter's keys (missing {missing[:3]}, extra {extra[:3]})")
        for key, value in new_tensors.items():
            old = self.global_tensors[key]
            if value.shape != old.shape or value.dtype != old.dtype:
                raise ValueError(f"{type(self.strategy).__name__}.aggregate_train changed {key} from {old.shape} {old.dtype} to {value.shape} {value.dtype}")
        self.global_tensors = server_step(
            self.global_tensors, dict(new_tensors), self.server_lr, self.context.modules, self.context.scaling,
            self.strategy.capabilities.base_deltas,
        )
