"""``fedpilot compare``: every (strategy, seed) on one config, resumable, summarised in one table and three plots.

A driver, like :mod:`fedpilot.simulation`, which it calls once per run. Every run of a comparison gets
the same config except ``strategy`` and ``seed`` (and ``output_dir``, its folder), so for one seed all
strategies see the same data split, partition and budgets. Runs live in ``OUT/<strategy>-seed<seed>/``;
a run counts as done only when its ``results.json`` says ``"status": "finished"`` and holds the config
this comparison would run (``output_dir`` aside) and the same strategy settings, defaults included
(so a run made before a strategy's default changed is not taken for a run of the new default). Done runs are skipped when the command is run again;
an unfinished run continues from its last checkpoint (every round writes one) when that checkpoint
holds this run's config and settings, and ends exactly as an uninterrupted run would; otherwise (no
readable checkpoint, another config) it is deleted and rerun from scratch, saying why. A finished run
of a different config is never touched: the command refuses, naming the folder.

Outputs in OUT: ``comparison.md``, ``comparison.json``, ``accuracy.png``, ``memory.png``, ``allocation.png``.

This module imports only light modules at load time (the CLI builds its help from :data:`PRESETS`);
torch comes in with :mod:`fedpilot.simulation` when a run starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpilot.core.errors import FedpilotError
from fedpilot.core.files import write_json
from fedpilot.core.keys import module_layer
from fedpilot.core.sizes import mib, parse_memory

if TYPE_CHECKING:
    from fedpilot.config import Config

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_OUT = Path("runs/compare")
TARGET_FRACTION = 0.9  # default target: this share of the best mean final accuracy
OUTPUTS = ("comparison.md", "comparison.json", "accuracy.png", "memory.png", "allocation.png")
LOCK_NAME = ".compare.lock"


# -- presets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A smaller variant of any config: caps on rounds, local steps and samples, nothing else changed."""

    name: str
    rounds: int
    local_steps: int
    max_samples: int
    timing: str = ""

    @property
    def description(self) -> str:
        return (
            f"federation.rounds at most {self.rounds}, train.local_steps at most {self.local_steps}, "
            f"data.max_samples at most {self.max_samples} (a stratified subset, split into train and test by "
            f"data.test_fraction); everything else as in the config: batch size and sequence length stay, "
            f"because they set what each LoRA module costs in memory and the budgets are sized for that"
        )

    def changes(self, config: Config) -> dict[str, tuple[Any, Any]]:
        """``{"federation.rounds": (old, new), ...}`` for the fields this preset changes in ``config``."""
        samples = config.data.max_samples
        wanted = {
            ("federation", "rounds"): (config.federation.rounds, min(config.federation.rounds, self.rounds)),
            ("train", "local_steps"): (config.train.local_steps, min(config.train.local_steps, self.local_steps)),
            ("data", "max_samples"): (samples, self.max_samples if samples is None else min(samples, self.max_samples)),
        }
        return {f"{section}.{name}": pair for (section, name), pair in wanted.items() if pair[0] != pair[1]}

    def apply(self, config: Config) -> Config:
        data = config.model_dump(mode="json")
        data["federation"]["rounds"] = min(config.federation.rounds, self.rounds)
        data["train"]["local_steps"] = min(config.train.local_steps, self.local_steps)
        data["data"]["max_samples"] = self.max_samples if config.data.max_samples is None else min(config.data.max_samples, self.max_samples)
        return _validated(data, f"preset {self.name}")


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "quick", rounds=3, local_steps=4, max_samples=1000,
        timing="on the default config about 40 s per strategy and seed on 2 idle cores, plus a one-off memory calibration",
    ),
}


def default_out(preset: str | None) -> Path:
    """``runs/compare``, or ``runs/compare-<preset>``: a preset's runs never collide with the full ones."""
    return DEFAULT_OUT if preset is None else DEFAULT_OUT.with_name(f"{DEFAULT_OUT.name}-{preset}")


# -- arguments as people type them -----------------------------------------------------------------
def parse_strategies(text: str | None) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` checked against the registry; None: every registered strategy."""
    from fedpilot.strategies import STRATEGIES

    if text is None:
        return sorted(STRATEGIES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise FedpilotError(f"--strategies: give a comma-separated list, e.g. fedpilot,fedavg; available: {', '.join(sorted(STRATEGIES))}")
    for name in names:
        if name not in STRATEGIES:
            raise FedpilotError(f"--strategies: unknown strategy {name!r}; available: {', '.join(sorted(STRATEGIES))}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FedpilotError(f"--strategies: {repeated[0]!r} is listed twice")
    return names


def parse_seeds(text: str | None) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: distinct integers >= 0; None: 0, 1, 2."""
    if text is None:
        return list(DEFAULT_SEEDS)
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise FedpilotError("--seeds: give a comma-separated list of integers >= 0, e.g. 0,1,2")
    seeds = []
    for part in parts:
        if not part.isdigit():
            raise FedpilotError(f"--seeds: {part!r} is not an integer >= 0; give e.g. 0,1,2")
        seeds.append(int(part))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise FedpilotError(f"--seeds: seed {repeated[0]} is listed twice")
    return seeds


def parse_target(text: str | None) -> float | None:
    """A test accuracy in (0, 1], or None for the default (0.9 x the best mean final accuracy)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise FedpilotError(f"--target: {text!r} is not a number; give a test accuracy in (0, 1], e.g. 0.8") from None
    if not 0 < value <= 1:
        raise FedpilotError(f"--target: {value:g} is not a test accuracy in (0, 1]")
    return value


def parse_preset(name: str | None) -> Preset | None:
    if name is None:
        return None
    if name not in PRESETS:
        raise FedpilotError(f"--preset: unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


# -- the runs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedRun:
    strategy: str
    seed: int
    config: Config
    dir: Path
    resume: bool = False  # continue the unfinished run in ``dir`` from its checkpoint

    @property
    def name(self) -> str:
        return self.dir.name


def run_dir_name(strategy: str, seed: int) -> str:
    return f"{strategy}-seed{seed}"


def _validated(data: dict[str, Any], source: str) -> Config:
    from fedpilot.config import parse_config

    return parse_config(data, source)


def _options_for(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    """The config's strategy_options if ``strategy`` accepts them (fedpilot's go to its ablations), else {}."""
    from pydantic import ValidationError

    from fedpilot.strategies import STRATEGIES

    if not options:
        return {}
    try:
        STRATEGIES[strategy].Options.model_validate(options)
    except ValidationError:
        return {}
    return dict(options)


def plan_runs(config: Config, strategies: Sequence[str], seeds: Sequence[int], out_dir: Path) -> list[PlannedRun]:
    """One run per (seed, strategy), seed-major, so that an interrupted comparison has whole seeds first."""
    base = config.model_dump(mode="json")
    runs = []
    for seed in seeds:
        for strategy in strategies:
            folder = out_dir / run_dir_name(strategy, seed)
            data = {**base, "strategy": strategy, "seed": seed, "output_dir": str(folder),
                    "strategy_options": _options_for(strategy, base["strategy_options"])}
            runs.append(PlannedRun(strategy, seed, _validated(data, folder.name), folder))
    return runs


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as results.json stores it, without ``output_dir`` and ``model.device`` (where it ran, not what it ran)."""
    copied = {k: v for k, v in json.loads(json.dumps(config)).items() if k != "output_dir"}
    if isinstance(copied.get("model"), dict):
        copied["model"].pop("device", None)
    return copied


def _first_difference(ours: Any, theirs: Any, path: str = "") -> str:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key, "<absent>") != theirs.get(key, "<absent>"):
                return _first_difference(ours.get(key, "<absent>"), theirs.get(key, "<absent>"), f"{path}.{key}" if path else key)
    return f"{path or 'config'} is {json.dumps(theirs)} there, {json.dumps(ours)} here"


def _with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config re-validated, so that fields added since that run was made take their defaults
    (which keep the old behaviour) and the run still counts as done; as stored if it no longer validates."""
    from fedpilot.config import parse_config

    try:
        return parse_config({k: v for k, v in stored.items()}, "stored config").model_dump(mode="json")
    except FedpilotError:
        return stored


def _config_difference(run: PlannedRun, stored: Any) -> str | None:
    """How a config a run recorded differs from ``run``'s (``output_dir`` and ``model.device`` aside, fields
    added since at their defaults); None when they agree."""
    ours = comparable_config(run.config.model_dump(mode="json"))
    theirs = comparable_config(_with_defaults(stored)) if isinstance(stored, dict) else stored
    return None if ours == theirs else _first_difference(ours, theirs)


def _settings_difference(run: PlannedRun, stored: Any) -> str | None:
    """How the strategy settings a run recorded differ from this code's for ``run`` (options the strategy
    does not read aside); None when they agree or the run recorded none (made before runs recorded them)."""
    if not isinstance(stored, dict):
        return None
    from fedpilot.strategies import STRATEGIES, accepted_options

    strategy = STRATEGIES.get_or_fail(run.config.strategy)
    inert = set(strategy.Options.model_fields) - accepted_options(strategy)
    current = run.config.strategy_settings().model_dump(mode="json")
    current = {k: current.get(k, "<absent>") for k in stored if k not in inert}
    stored = {k: v for k, v in stored.items() if k not in inert}
    return None if current == stored else _first_difference(current, stored)


def resume_blocker(run: PlannedRun) -> str | None:
    """Why the unfinished run in ``run.dir`` cannot continue from its checkpoint; None when it can (the
    checkpoint reads and holds this run's config, ``output_dir`` aside, and strategy settings)."""
    from fedpilot.runtime.checkpoint import CheckpointError, load_checkpoint

    try:
        checkpoint = load_checkpoint(run.dir)
    except CheckpointError as err:
        return err.reason
    stored = checkpoint.results.get("config")
    if not isinstance(stored, dict):
        return "its checkpoint records no config"
    difference = _config_difference(run, stored)
    if difference is not None:
        return f"its checkpoint is of another config ({difference})"
    difference = _settings_difference(run, checkpoint.results.get("strategy_settings"))
    if difference is not None:
        return f"its checkpoint was made with other {run.config.strategy} settings ({difference})"
    return None


def run_state(run: PlannedRun) -> str:
    """``"finished"`` (keep), ``"missing"`` or ``"unfinished"`` (continue from its checkpoint, or from
    scratch: :func:`resume_blocker`); refuses what it must not delete."""
    results_path = run.dir / "results.json"
    if not run.dir.exists():
        return "missing"
    if not run.dir.is_dir():
        raise FedpilotError(f"{run.dir} is a file, not a run folder; move it or choose another --out")
    if not results_path.is_file():
        if any(run.dir.iterdir()):
            raise FedpilotError(f"{run.dir} holds files but no results.json, so it is not a fedpilot run; move it or choose another --out")
        return "missing"
    try:
        results = json.loads(results_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return "unfinished"
    if not isinstance(results, dict) or results.get("status") != "finished":
        return "unfinished"
    difference = _config_difference(run, results.get("config"))
    if difference is not None:
        raise FedpilotError(
            f"{run.dir} holds a finished run of a different config ({difference}); "
            f"it is kept: choose another --out, or move that folder"
        )
    # absent before runs recorded it; options added since keep their old behaviour
    difference = _settings_difference(run, results.get("strategy_settings"))
    if difference is not None:
        raise FedpilotError(
            f"{run.dir} holds a finished run made with other {run.config.strategy} settings (strategy option "
            f"{difference}: its defaults changed since); it is kept: choose another --out, or move that folder"
        )
    return "finished"


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
) -> ComparisonResult:
    """Run what is not done yet, then summarise every run and write the outputs to ``out_dir``.

    ``jobs > 1`` runs that many at a time, each in a process of its own with an equal share of the
    cores as torch threads (:func:`parallel_threads`); the runs and their results are the same runs,
    each still deterministic given its config. If a run fails, the runs not started are cancelled, the
    running ones finish (and count as done), and the first failure is raised."""
    from tqdm.auto import tqdm

    chosen = parse_preset(preset)
    preset_changes = chosen.changes(config) if chosen else {}
    if chosen:
        config = chosen.apply(config)
    runs = plan_runs(config, strategies, seeds, out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FedpilotError(f"--out {out_dir} is a file; give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    say = tqdm.write if progress else (lambda _message: None)
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
        results = {run.name: json.loads((run.dir / "results.json").read_text()) for run in runs}
        summary = summarise(runs, results, target)
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
        write_outputs(out_dir, summary, results)
    return ComparisonResult(out_dir, summary, executed, skipped)


def parse_jobs(value: int | str | None) -> int:
    """Runs at a time for ``--jobs``: a whole number >= 1 (default 1)."""
    if value is None:
        return 1
    try:
        jobs = int(value)
    except (TypeError, ValueError):
        raise FedpilotError(f"--jobs: {value!r} is not a whole number; give the runs to make at a time, e.g. 2") from None
    if jobs < 1:
        raise FedpilotError(f"--jobs: {jobs} is below 1; give the runs to make at a time, e.g. 2")
    return jobs


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


# -- summaries -------------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise_run(results: dict[str, Any]) -> dict[str, Any]:
    """What the table needs from one run's results.json (rounds 1..R; round 0 is the untrained model)."""
    rounds = results["rounds"]
    trained_rounds = rounds[1:]
    records = [c for r in trained_rounds for c in r["clients"]]
    federation = results["config"]["federation"]
    per_round = federation["clients_per_round"] or federation["num_clients"]
    planned = per_round * len(trained_rounds)  # what the config asks; a strategy may sample fewer (e.g. only who fits)
    ratios = [c["peak_bytes"] / c["budget_bytes"] for c in records if c.get("peak_bytes") is not None and c.get("budget_bytes")]
    return {
        # None where a round was not evaluated (train.eval_every): gaps, never filled in
        "accuracy_curve": [r.get("accuracy") for r in rounds],
        "final_accuracy": rounds[-1]["accuracy"],  # the final round is always evaluated on the whole split
        "best_accuracy": max((r["accuracy"] for r in trained_rounds if r.get("accuracy") is not None), default=rounds[-1]["accuracy"]),
        "late_accuracy": late_accuracy(rounds),
        "final_macro_f1": rounds[-1].get("macro_f1"),
        "planned_client_rounds": planned,
        "trained_client_rounds": len(records),
        "lost_client_rounds": planned - len(records),
        "peak_over_budget_mean": _mean(ratios),
        "peak_over_budget_max": max(ratios, default=None),
        "budget_violations": len(results.get("budget_violations", [])),
        "upload_mib_per_round": mib(statistics.fmean(r["upload_bytes"] for r in trained_rounds)) if trained_rounds else 0.0,
        "download_mib_per_round": mib(statistics.fmean(r["download_bytes"] for r in trained_rounds)) if trained_rounds else 0.0,
        "modules_per_client": _mean([len(c["modules"]) for c in records]),
        "wall_seconds": results["wall_seconds"],
        "calibration_cached": results.get("memory", {}).get("calibration_cached", True),
        "memory_aware": results.get("memory_aware", True),
        "majority_accuracy": majority_accuracy(results),
    }


def majority_accuracy(results: dict[str, Any]) -> float | None:
    """The accuracy of always predicting the evaluated split's most frequent class (None: a run made
    before results.json recorded ``evaluated_label_counts``)."""
    counts = results.get("evaluated_label_counts")
    return max(counts) / sum(counts) if counts and sum(counts) else None


LATE_EVALUATIONS = 3


def late_accuracy(rounds: Sequence[dict[str, Any]]) -> float:
    """Mean accuracy of the last ``LATE_EVALUATIONS`` evaluated rounds after round 0 (fewer if the run has
    fewer): under partial participation and label skew the final round's accuracy swings with the few
    clients it sampled, and this mean is the steadier end point."""
    evaluated = [r["accuracy"] for r in rounds[1:] if r.get("accuracy") is not None] or [rounds[-1]["accuracy"]]
    return statistics.fmean(evaluated[-LATE_EVALUATIONS:])


def rounds_to_target(curve: Sequence[float | None], target: float) -> int | None:
    """The first evaluated round whose test accuracy reaches ``target`` (None: never); rounds not
    evaluated (None, train.eval_every) are passed over, so with a cadence it is the first evaluated one."""
    return next((i for i, accuracy in enumerate(curve) if accuracy is not None and accuracy >= target), None)


def summarise(runs: Sequence[PlannedRun], results: dict[str, dict[str, Any]], target: float | None) -> dict[str, Any]:
    """Per-run numbers, per-strategy aggregates over seeds, and the target accuracy with where it came from."""
    per_run = [{"name": run.name, "strategy": run.strategy, "seed": run.seed, "dir": str(run.dir), **summarise_run(results[run.name])}
               for run in runs]
    strategies = list(dict.fromkeys(run.strategy for run in runs))
    by_strategy = {s: [r for r in per_run if r["strategy"] == s] for s in strategies}
    mean_final = {s: statistics.fmean(r["final_accuracy"] for r in rs) for s, rs in by_strategy.items()}
    if target is None:
        leader = max(mean_final, key=mean_final.get)
        target_info = {"accuracy": TARGET_FRACTION * mean_final[leader], "source": "default",
                       "rule": f"{TARGET_FRACTION:g} x the best mean final accuracy", "from_strategy": leader,
                       "best_mean_final_accuracy": mean_final[leader]}
    else:
        target_info = {"accuracy": target, "source": "--target"}
    majorities = [r["majority_accuracy"] for r in per_run if r["majority_accuracy"] is not None]
    if majorities:  # the highest over the runs' splits: a target at or below it is met by predicting one class
        target_info["majority_accuracy"] = max(majorities)
        target_info["trivial"] = target_info["accuracy"] <= max(majorities)
    for entry in per_run:
        entry["rounds_to_target"] = rounds_to_target(entry["accuracy_curve"], target_info["accuracy"])
    table = {}
    for strategy, rs in by_strategy.items():
        finals, bests = [r["final_accuracy"] for r in rs], [r["best_accuracy"] for r in rs]
        lates = [r["late_accuracy"] for r in rs]
        f1s = [r["final_macro_f1"] for r in rs if r["final_macro_f1"] is not None]
        reached = [r["rounds_to_target"] for r in rs if r["rounds_to_target"] is not None]
        means = [r["peak_over_budget_mean"] for r in rs if r["peak_over_budget_mean"] is not None]
        maxes = [r["peak_over_budget_max"] for r in rs if r["peak_over_budget_max"] is not None]
        table[strategy] = {
            "seeds": [r["seed"] for r in rs],
            "memory_aware": all(r["memory_aware"] for r in rs),
            "final_accuracy": {"mean": statistics.fmean(finals), "std": _std(finals)},
            "best_accuracy": {"mean": statistics.fmean(bests), "std": _std(bests)},
            "late_accuracy": {"mean": statistics.fmean(lates), "std": _std(lates)},
            "final_macro_f1": {"mean": _mean(f1s), "std": _std(f1s)},
            "rounds_to_target": {"mean": _mean(reached), "reached": len(reached), "runs": len(rs)},
            "client_rounds": {key: sum(r[f"{key}_client_rounds"] for r in rs) for key in ("planned", "trained", "lost")},
            "peak_over_budget": {"mean": _mean(means), "max": max(maxes, default=None)},
            "budget_violations": sum(r["budget_violations"] for r in rs),
            "upload_mib_per_round": statistics.fmean(r["upload_mib_per_round"] for r in rs),
            "download_mib_per_round": statistics.fmean(r["download_mib_per_round"] for r in rs),
            "modules_per_client": _mean([r["modules_per_client"] for r in rs if r["modules_per_client"] is not None]),
            "wall_seconds": {"mean": statistics.fmean(r["wall_seconds"] for r in rs), "total": sum(r["wall_seconds"] for r in rs)},
        }
    seeds = list(dict.fromkeys(run.seed for run in runs))
    return {"strategies": strategies, "seeds": seeds, "target": target_info, "summary": table, "runs": per_run}


# -- outputs ---------------------------------------------------------------------------------------
def write_outputs(out_dir: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    plot_accuracy(out_dir / "accuracy.png", summary)
    plot_memory(out_dir / "memory.png", summary, results)
    summary["allocation_plot"] = plot_allocation(out_dir / "allocation.png", summary, results)
    write_json(out_dir / "comparison.json", summary)
    (out_dir / "comparison.md").write_text(render_markdown(summary, summary["allocation_plot"]))


def describe_config(config: dict[str, Any]) -> str:
    """One sentence on what every run of the comparison shares."""
    model, data, fed, train = config["model"], config["data"], config["federation"], config["train"]
    budgets = fed["budgets"]

    def size(value: Any) -> str:  # ints (bytes) or sizes with their unit, as the config writes them
        return f"{mib(value if isinstance(value, int) else parse_memory(value)):g} MiB"

    if budgets is None:
        memory = "no memory budgets"
    elif isinstance(budgets, dict):
        memory = "memory tiers " + ", ".join(f"{t['fraction']:.0%} at {size(t['memory'])}" for t in budgets["tiers"])
    elif isinstance(budgets, list):
        memory = "budgets " + ", ".join(size(b) for b in budgets)
    else:
        memory = f"every client {size(budgets)}"
    partition = data["partition"]
    skew = {"iid": "IID", "dirichlet": f"Dirichlet({partition['alpha']:g}) labels",
            "pathological": f"{partition['classes_per_client']} labels per client"}.get(partition["kind"], partition["kind"])
    samples = "all samples" if data["max_samples"] is None else f"{data['max_samples']} samples"
    extras = []  # settings away from their defaults that change what every run learns
    if train.get("logit_adjustment"):
        extras.append(f"logit adjustment tau={train['logit_adjustment']:g}")
    if fed.get("server_lr", 1.0) != 1.0:
        extras.append(f"server learning rate {fed['server_lr']:g}")
    return (
        f"{model['name']}, LoRA r={model['lora']['rank']} on {'/'.join(model['lora']['targets'])}, {data['dataset']} "
        f"({samples}, {data['test_fraction']:.0%} test), {fed['num_clients']} clients, {skew}, "
        f"{fed['rounds']} rounds x {train['local_steps']} local steps, batch {train['batch_size']}"
        f"{''.join(', ' + e for e in extras)}, "
        f"sequence {data['max_length']}; {memory}; {fed['clients_per_round'] or fed['num_clients']} clients sampled per round"
    )


def _pm(stat: dict[str, Any], spread: bool = True) -> str:
    """Mean ± sample std; the mean alone where ``spread`` is False (one seed: no spread to show)."""
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if spread else f"{stat['mean']:.3f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render_markdown(summary: dict[str, Any], allocations: dict[str, Any] | None = None) -> str:
    target = summary["target"]
    if target["source"] == "default":
        target_line = (f"Target accuracy {target['accuracy']:.3f}: the default, {target['rule']} "
                       f"(`{target['from_strategy']}`, {target['best_mean_final_accuracy']:.3f}).")
    else:
        target_line = f"Target accuracy {target['accuracy']:.3f}, given by --target."
    trivial = target.get("trivial", False)
    if "majority_accuracy" in target:
        target_line += f" Predicting the most frequent class scores {target['majority_accuracy']:.3f} on the evaluated split" + (
            ": the target is no higher, so reaching it says nothing and rounds to target are not shown (give --target above it)."
            if trivial else "."
        )
    seeds = ", ".join(map(str, summary["seeds"]))
    preset = summary.get("preset")
    lines = [
        "# Strategy comparison",
        "",
        f"Config: {summary['config_source']}"
        + (f", with preset `{preset['name']}` ({preset['description']})" if preset else "")
        + f". {describe_config(summary['config'])}.",
        f"Seeds {seeds}: for each seed every strategy ran on the same data split, partition, budgets and seed.",
        "",
        f"Made by: `{summary['command']}`.",
        "",
        target_line,
        "",
        f"| strategy | final accuracy | best accuracy | last-{LATE_EVALUATIONS} mean | final macro-F1 | rounds to target | client-rounds trained / planned (lost) "
        "| peak / budget, mean | peak / budget, max | budget violations | upload MiB / round | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    unaware, spread = [], len(summary["seeds"]) > 1
    for strategy, row in summary["summary"].items():
        mark = "" if row["memory_aware"] else " †"
        if not row["memory_aware"]:
            unaware.append(strategy)
        reach = row["rounds_to_target"]
        if trivial:
            to_target = "n/a"
        elif reach["reached"] == 0:
            to_target = "not reached"
        else:
            to_target = f"{reach['mean']:.1f}" + ("" if reach["reached"] == reach["runs"] else f" ({reach['reached']} of {reach['runs']} seeds)")
        cr = row["client_rounds"]
        lines.append(
            f"| `{strategy}`{mark} | {_pm(row['final_accuracy'], spread)} | {_pm(row['best_accuracy'], spread)} "
            f"| {_pm(row['late_accuracy'], spread)} | {_pm(row['final_macro_f1'], spread)} "
            f"| {to_target} | {cr['trained']} / {cr['planned']} ({cr['lost']}) | {_ratio(row['peak_over_budget']['mean'])} "
            f"| {_ratio(row['peak_over_budget']['max'])} | {row['budget_violations']} | {row['upload_mib_per_round']:.2f} "
            f"| {row['wall_seconds']['mean']:.0f} |"
        )
    lines += [
        "",
        f"- Accuracies are on the {evaluated_split(summary)} split, "
        + ("mean ± sample standard deviation over seeds" if spread else "one seed, so no spread over seeds is shown")
        + "; best is the highest of rounds 1 to R; "
        f"last-{LATE_EVALUATIONS} mean is the mean of the last {LATE_EVALUATIONS} evaluated rounds (the final one included), "
        "steadier than the final round where a round's few sampled clients swing the accuracy.",
        "- Rounds to target: the first round whose accuracy reaches the target, mean over the seeds that reached it.",
        "- Client-rounds are totals over seeds and rounds: planned (what the config asks each round: "
        "clients_per_round, or every client), trained (a valid update arrived), and lost (planned but not trained: "
        "a client the strategy leaves out because nothing it trains fits its budget, given no work, failed, or rejected).",
        "- Peak / budget: each trained client-round's peak memory measured at the allocator over its budget; mean and max "
        "over client-rounds. Budget violations: client-rounds (training or scoring) whose measured peak exceeded the budget, "
        "total over seeds.",
    ]
    calibrated = [r["name"] for r in summary["runs"] if not r["calibration_cached"]]
    if calibrated:
        lines.append(f"- Wall time includes calibrating the memory model (not yet cached) in {', '.join(f'`{n}`' for n in calibrated)}.")
    if unaware:
        lines.append(f"- † memory-unaware: {', '.join(f'`{s}`' for s in unaware)} ignores the budgets; its violations show what would fail on real devices.")
    options = summary["config"].get("strategy_options") or {}
    if options:
        given = sorted({r["strategy"] for r in summary["runs"] if r["strategy"] in _accepting(summary, options)})
        lines.append(f"- `strategy_options` {json.dumps(options)} went to {', '.join(f'`{s}`' for s in given) or 'no strategy'}; "
                     "the others ran with their defaults.")
    if allocations is not None:
        same = allocations["uniform"]
        if same:
            lines.append(f"- allocation.png leaves out {', '.join(f'`{s}`' for s in same)}: every client-round trained the same modules.")
    lines += [
        "",
        f"![{evaluated_split(summary)} accuracy per round, mean over seeds with the min-max band](accuracy.png)",
        "",
        "![measured peak memory against each client's budget](memory.png)",
        "",
        "![how often each client trained each layer](allocation.png)",
    ]
    return "\n".join(lines) + "\n"


def evaluated_split(summary: dict[str, Any]) -> str:
    """The split every accuracy of the comparison was measured on: the config's ``train.evaluate_on``."""
    return str(summary["config"].get("train", {}).get("evaluate_on", "test"))


def _accepting(summary: dict[str, Any], options: dict[str, Any]) -> set[str]:
    return {s for s in summary["strategies"] if _options_for(s, options)}


# -- plots -----------------------------------------------------------------------------------------
def plot_accuracy(path: Path, summary: dict[str, Any]) -> None:
    """Mean test accuracy per round for each strategy, with the min-max band over seeds."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axis = plt.subplots(figsize=(10.5, 4.8))
    tab20 = plt.get_cmap("tab20").colors
    colors = tab20[0::2] + tab20[1::2]  # 20 distinct colours, the strong ones first: the 15 strategies never share one
    for index, strategy in enumerate(summary["strategies"]):
        curves = [r["accuracy_curve"] for r in summary["runs"] if r["strategy"] == strategy]
        length = min(len(c) for c in curves)
        # rounds every seed evaluated (train.eval_every leaves gaps); x is the round number
        x = [i for i in range(length) if all(c[i] is not None for c in curves)]
        columns = [[c[i] for c in curves] for i in x]
        aware = summary["summary"][strategy]["memory_aware"]
        (line,) = axis.plot(x, [statistics.fmean(c) for c in columns], marker="o", markersize=3, color=colors[index % len(colors)],
                            linewidth=2.5 if strategy == "fedpilot" else 1.3,
                            linestyle="-" if aware else "--", label=strategy + ("" if aware else " (memory-unaware)"))
        if len(curves) > 1:
            axis.fill_between(x, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(), alpha=0.08)
    axis.axhline(summary["target"]["accuracy"], color="grey", linestyle=":", linewidth=1, label="target")
    seeds = summary["seeds"]
    title = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {', '.join(map(str, seeds))} (band: min-max)"
    split = evaluated_split(summary)
    axis.set(xlabel="round", ylabel=f"{split} accuracy", ylim=(0, 1.02), title=f"{split.capitalize()} accuracy, {title}")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the curves, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_memory(path: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    """Per client: its budget (black line) and each strategy's largest measured training peak (bar)."""
    import matplotlib.pyplot as plt

    strategies = summary["strategies"]
    budgets: dict[int, int | None] = {}
    peaks: dict[str, dict[int, int]] = {s: {} for s in strategies}
    for run in summary["runs"]:
        data = results[run["name"]]
        for client in data["clients"]:
            budgets.setdefault(client["cid"], client["budget_bytes"])
        for record in (c for r in data["rounds"][1:] for c in r["clients"]):
            if record.get("peak_bytes") is not None:
                best = peaks[run["strategy"]].get(record["cid"], 0)
                peaks[run["strategy"]][record["cid"]] = max(best, record["peak_bytes"])
    cids = sorted(budgets)
    fig, axis = plt.subplots(figsize=(max(6.0, 3.0 + (0.5 + 0.25 * len(strategies)) * len(cids)), 4.5))
    width = 0.8 / max(1, len(strategies))
    for i, strategy in enumerate(strategies):
        aware = summary["summary"][strategy]["memory_aware"]
        offsets = [cid - 0.4 + width * (i + 0.5) for cid in cids]
        axis.bar(offsets, [mib(peaks[strategy].get(cid, 0)) for cid in cids], width=width,
                 hatch=None if aware else "//", label=strategy + ("" if aware else " (memory-unaware)"))
    for cid in cids:
        if budgets[cid] is not None:
            axis.hlines(mib(budgets[cid]), cid - 0.45, cid + 0.45, colors="black", linewidth=2,
                        label="budget" if cid == next(c for c in cids if budgets[c] is not None) else None)
    axis.set(xlabel="client", ylabel="MiB", xticks=cids,
             title="Largest measured training peak per client (over rounds and seeds) against its budget")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def allocation_shares(summary: dict[str, Any], results: dict[str, dict[str, Any]], strategy: str) -> dict[str, Any]:
    """How often each client trained each layer: ``shares[layer][client]`` is the share of the strategy's
    (round, seed) pairs in which the client trained at least one module of the layer; ``module_sets`` is
    how many distinct module sets its client-rounds trained (1: the allocation never varies)."""
    runs = [r for r in summary["runs"] if r["strategy"] == strategy]
    first = results[runs[0]["name"]]
    layers = sorted({module_layer(m) for m in first["modules"]})
    cids = sorted(c["cid"] for c in first["clients"])
    counts = [[0] * len(cids) for _ in layers]
    row, column = {layer: i for i, layer in enumerate(layers)}, {cid: j for j, cid in enumerate(cids)}
    sets: set[frozenset[str]] = set()
    total = 0
    for run in runs:
        rounds = results[run["name"]]["rounds"][1:]
        total += len(rounds)
        for record in (c for r in rounds for c in r["clients"]):
            sets.add(frozenset(record["modules"]))
            for layer in {module_layer(m) for m in record["modules"]}:
                counts[row[layer]][column[record["cid"]]] += 1
    shares = [[count / max(1, total) for count in line] for line in counts]
    return {"layers": layers, "clients": cids, "shares": shares, "module_sets": len(sets)}


def plot_allocation(path: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One layer x client panel per strategy whose allocations vary; returns the maps and who was left out."""
    import matplotlib.pyplot as plt

    maps, uniform = {}, []
    for strategy in summary["strategies"]:
        allocation = allocation_shares(summary, results, strategy)
        if allocation["module_sets"] > 1:
            maps[strategy] = allocation
        else:
            uniform.append(strategy)
    if not maps:
        fig, axis = plt.subplots(figsize=(6, 2))
        axis.axis("off")
        axis.text(0.5, 0.5, "No strategy's allocations vary:\nevery client-round trained the same modules.",
                  ha="center", va="center")
    else:
        fig, axes = plt.subplots(1, len(maps), figsize=(1.5 + 3.2 * len(maps), 3.8), squeeze=False)
        image = None
        for axis, (strategy, allocation) in zip(axes[0], maps.items()):
            shares = allocation["shares"]
            image = axis.imshow(shares, origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
            axis.set(title=strategy, xlabel="client", ylabel="layer")
            axis.set_xticks(range(len(allocation["clients"])), [str(c) for c in allocation["clients"]])
            axis.set_yticks(range(len(allocation["layers"])), [str(layer) for layer in allocation["layers"]])
            if len(shares) * len(shares[0]) <= 120:
                for i, line in enumerate(shares):
                    for j, value in enumerate(line):
                        axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                                  color="white" if value < 0.6 else "black")
        fig.colorbar(image, ax=axes[0].tolist(), label="share of rounds trained (over seeds)")
        fig.suptitle("How often each client trained each layer")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return {"shown": {s: {k: v for k, v in a.items() if k != "module_sets"} for s, a in maps.items()}, "uniform": uniform}
