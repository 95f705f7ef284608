"""Running a comparison's grid: the folder's lock, the runs one after another or in worker processes
(``--jobs N``), what an interruption or a failed run stops, and the outputs at the end."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpilot.comparison.plan import (
    PlannedRun,
    comparable_config,
    parse_preset,
    plan_runs,
    resume_blocker,
    run_state,
)
from fedpilot.comparison.records import LATE_EVALUATIONS, summarise
from fedpilot.comparison.resolution import assess_summary
from fedpilot.comparison.tables import write_outputs
from fedpilot.core.errors import FedpilotError

if TYPE_CHECKING:
    from fedpilot.config import Config

OUTPUTS = ("comparison.md", "comparison.json", "accuracy.png", "memory.png", "allocation.png")
LOCK_NAME = ".compare.lock"


@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """One ``fedpilot compare`` at a time per folder (the lock dies with its process)."""
    import fcntl

    with open(out_dir / LOCK_NAME, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FedpilotError(f"another fedpilot compare is writing to {out_dir}; wait for it or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class ComparisonResult:
    out_dir: Path
    summary: dict[str, Any]
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [self.out_dir / name for name in OUTPUTS]


def run_comparison(
    config: Config,
    strategies: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    *,
    preset: str | None = None,
    target: float | None = None,
    progress: bool = True,
    command: str | None = None,
    config_source: str | None = None,
    jobs: int = 1,
    late: int = LATE_EVALUATIONS,
    exclusive_below: bool = False,
    reference: str | None = None,
    report_only: bool = False,
) -> ComparisonResult:
    """Run what is not done yet, then summarise every run and write the outputs to ``out_dir``.

    ``jobs > 1`` runs that many at a time, each in a process of its own with an equal share of the
    cores as torch threads (:func:`parallel_threads`); the runs and their results are the same runs,
    each still deterministic given its config. If a run fails, the runs not started are cancelled, the
    running ones finish (and count as done), and the first failure is raised.

    ``late``: the evaluated rounds the late accuracy averages (the end point); ``reference``: the strategy
    the table pairs every other one with (default :func:`~fedpilot.comparison.resolution.default_reference`);
    ``exclusive_below``: the level is one where ``exclusive`` must be clearly below ``fedavg`` (its sanity
    order, :mod:`fedpilot.comparison.resolution`).

    ``report_only``: run nothing; the outputs tabulate the finished runs only (a level under way, in pieces
    across sessions), name the others, and pair strategies on the seeds both finished. It takes no lock (it
    only reads finished runs), so it may report on a folder whose comparison is still running."""
    from tqdm.auto import tqdm

    chosen = parse_preset(preset)
    preset_changes = chosen.changes(config) if chosen else {}
    if chosen:
        config = chosen.apply(config)
    if config.task != "classification":
        raise FedpilotError(f"task: {config.task}: fedpilot compare ranks classification runs by accuracy; run each strategy "
                            f"with fedpilot run --config FILE (strategy: NAME) and compare their ROUGE-L in results.json")
    if late < 1:
        raise FedpilotError(f"--last: {late} evaluated rounds; give at least 1, e.g. 5")
    if reference is not None and reference not in strategies:
        raise FedpilotError(f"--reference: {reference!r} is not among the compared strategies ({', '.join(strategies)}); pick one of them")
    runs = plan_runs(config, strategies, seeds, out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FedpilotError(f"--out {out_dir} is a file; give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    say = tqdm.write if progress else (lambda _message: None)

    def summary_of(done: Sequence[PlannedRun], executed: list[str], skipped: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The summary of the finished runs ``done`` that the outputs are written from, and their results."""
        results = {run.name: json.loads((run.dir / "results.json").read_text()) for run in done}
        summary = summarise(done, results, target, late)
        summary["resolution"] = assess_summary(summary, reference=reference, configured=config.strategy, exclusive_below=exclusive_below)
        summary.update(
            command=command or default_command(config_source, strategies, seeds, out_dir, preset, target),
            config_source=config_source or "the embedded default.yaml",
            preset=None if chosen is None else {"name": chosen.name, "description": chosen.description,
                                                "changes": {k: list(v) for k, v in preset_changes.items()}},
            config={k: v for k, v in comparable_config(config.model_dump(mode="json")).items() if k not in ("strategy", "seed")},
            executed=executed,
            skipped=skipped,
        )
        for entry in summary["runs"]:
            entry["skipped"] = entry["name"] in skipped
        return summary, results

    if report_only:
        states = {run.name: run_state(run) for run in runs}
        missing = [run.name for run in runs if states[run.name] != "finished"]
        done = [run for run in runs if states[run.name] == "finished"]
        if not done:
            raise FedpilotError(f"--report: no run in {out_dir} has finished yet; run the comparison without --report first")
        summary, results = summary_of(done, executed=[], skipped=[run.name for run in done])
        summary["missing"] = missing
        say(f"{len(done)} finished runs in {out_dir} tabulated; {len(missing)} not finished: {', '.join(missing) or 'none'}")
        write_outputs(out_dir, summary, results)
        return ComparisonResult(out_dir, summary, [], summary["skipped"])
    with _exclusive(out_dir):
        states = {run.name: run_state(run) for run in runs}  # every refusal before any work
        todo = [run for run in runs if states[run.name] != "finished"]
        skipped = [run.name for run in runs if states[run.name] == "finished"]
        say(f"{len(runs)} runs in {out_dir}: {len(skipped)} already finished, {len(todo)} to go")
        bar = tqdm(total=len(runs), initial=len(skipped), desc="runs", unit="run", disable=not progress)
        executed = []

        def finished(run: PlannedRun, outcome: dict[str, Any]) -> None:
            executed.append(run.name)
            bar.update(1)
            say(f"{run.name}: final accuracy {outcome['accuracy']:.3f}, "
                f"{outcome['violations']} budget violations, {outcome['wall_seconds']:.0f} s")

        resuming: set[str] = set()
        for run in todo:
            if states[run.name] != "unfinished":
                continue
            blocker = resume_blocker(run)
            if blocker is None:
                resuming.add(run.name)
                say(f"{run.name}: continuing from its checkpoint")
            else:
                say(f"{run.name}: rerunning from scratch ({blocker})")
                shutil.rmtree(run.dir)
        todo = [replace(run, resume=run.name in resuming) for run in todo]
        if jobs == 1 or len(todo) <= 1:
            for run in todo:
                bar.set_postfix_str(run.name)
                outcome = _run_one(run.config, run.dir, progress, run.resume)
                if outcome["error"] is not None:
                    raise _failure(run, outcome)
                finished(run, outcome)
        else:
            _run_parallel(todo, jobs, finished)
        executed.sort(key=[run.name for run in todo].index)
        bar.close()
        summary, results = summary_of(runs, executed=executed, skipped=skipped)
        write_outputs(out_dir, summary, results)
    return ComparisonResult(out_dir, summary, executed, skipped)


def parallel_threads(jobs: int, cores: int | None = None) -> int:
    """torch threads for each of ``jobs`` runs at a time: the cores shared equally, at least one. Two
    one-thread runs side by side on 2 cores made 1.1-1.4x the runs per hour of one two-thread run
    (docs/protocol.md, "Time"): small matrices use a second thread poorly."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // jobs)


def _run_one(config: Config, run_dir: Path, progress: bool, resume: bool = False) -> dict[str, Any]:
    """One run (``resume``: continued from the checkpoint in ``run_dir``, which holds ``config``, checked
    by :func:`resume_blocker`); what the comparison reports of it, or its error (message and exit code)."""
    from fedpilot.simulation import run_simulation

    try:
        result = run_simulation(None, run_dir, progress=progress, resume=True) if resume else run_simulation(config, run_dir, progress=progress)
    except FedpilotError as err:
        return {"error": str(err), "exit_code": err.exit_code}
    return {"error": None, "accuracy": result.rounds[-1]["accuracy"],
            "violations": len(result.results["budget_violations"]), "wall_seconds": result.results["wall_seconds"]}


# -- worker processes of --jobs N ---------------------------------------------------------------------
# A worker must never go on alone: ProcessPoolExecutor hands each worker its next run ahead of time, and
# a worker outlives a parent killed by SIGTERM, so without these guards it would start that run with
# nobody watching, beside a comparison started again on the same folder. Each worker watches its parent
# and the comparison's stop event; when either says stop it interrupts the run it is making (SIGTERM,
# which a run treats as Ctrl-C: it saves its results, marked interrupted) and starts no other. After a
# failed run the comparison sets its drain event instead: the runs going on finish, no other starts.
_EVENTS: tuple[Any, Any] | None = None  # the comparison's stop and drain events, in a worker
_PARENT = 0  # the comparison's process id, in a worker
INTERRUPTED = {"error": "interrupted: what it had done is saved, marked interrupted; run the comparison again to continue it",
               "exit_code": 130}


def _worker_init(threads: int, stop: Any, drain: Any, parent: int) -> None:
    import signal
    import threading

    import torch

    global _EVENTS, _PARENT
    # Ctrl-C reaches a worker through the comparison's stop event only (one SIGTERM from _watch): a second
    # interrupt straight from the terminal could break the run's save of the first
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _EVENTS, _PARENT = (stop, drain), parent
    threading.Thread(target=_watch, args=(stop, parent), daemon=True, name="fedpilot-watch").start()


def _stopping() -> bool:
    return _EVENTS is not None and (any(event.is_set() for event in _EVENTS) or os.getppid() != _PARENT)


def _watch(stop: Any, parent: int, every: float = 0.5) -> None:
    """In a worker: once the comparison stops or its process is gone, interrupt the run going on."""
    import signal

    while not (stop.wait(every) or os.getppid() != parent):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _run_in_worker(config: Config, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """:func:`_run_one` in a worker: nothing once the comparison is stopping; an orphaned worker exits."""
    if _stopping():
        outcome = INTERRUPTED
    else:
        try:
            outcome = _run_one(config, run_dir, False, resume)
        except KeyboardInterrupt:  # SIGTERM from _watch, or Ctrl-C: the run saved its results as interrupted
            outcome = INTERRUPTED
        if outcome["error"] is not None and _EVENTS is not None:
            _EVENTS[1].set()  # drain now: this worker may take its next run before the comparison hears of this one
    if os.getppid() != _PARENT:
        os._exit(130)  # nobody to report to, and no next run to start
    return outcome


def _failure(run: PlannedRun, outcome: dict[str, Any]) -> FedpilotError:
    error = FedpilotError(f"{run.name}: {outcome['error']}")
    error.exit_code = outcome["exit_code"]
    return error


def _run_parallel(todo: Sequence[PlannedRun], jobs: int, finished: Callable[[PlannedRun, dict[str, Any]], None]) -> None:
    """``todo`` with ``jobs`` worker processes (spawned: no state shared with this one). A failed run
    lets the runs going on finish and starts no other; Ctrl-C, or this process ending, interrupts
    every worker's run (saved, marked interrupted) and starts no other."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    workers = min(jobs, len(todo))
    failure: FedpilotError | None = None
    context = multiprocessing.get_context("spawn")
    stop, drain = context.Event(), context.Event()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=(parallel_threads(workers), stop, drain, os.getpid())) as pool:
        futures = {pool.submit(_run_in_worker, run.config, run.dir, run.resume): run for run in todo}
        try:
            for future in as_completed(futures):
                run = futures[future]
                if future.cancelled():
                    continue
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    outcome = {"error": "its worker process died (out of memory or killed); run the comparison again to redo it",
                               "exit_code": 1}
                if outcome["error"] is None:
                    finished(run, outcome)
                elif failure is None:
                    failure = _failure(run, outcome)
                    drain.set()  # the runs going on finish; the one a worker already holds does not start
                    for pending in futures:
                        pending.cancel()
        except BaseException:  # Ctrl-C (or SIGTERM in a run of this process): stop the workers' runs too
            stop.set()
            for pending in futures:
                pending.cancel()
            raise
    if failure is not None:
        raise failure


def default_command(config_source: str | None, strategies: Sequence[str], seeds: Sequence[int], out_dir: Path,
                    preset: str | None, target: float | None) -> str:
    words = ["fedpilot", "compare"]
    if config_source:
        words += ["--config", config_source]
    words += ["--strategies", ",".join(strategies), "--seeds", ",".join(map(str, seeds)), "--out", str(out_dir)]
    if preset:
        words += ["--preset", preset]
    if target is not None:
        words += ["--target", f"{target:g}"]
    return shlex.join(words)
