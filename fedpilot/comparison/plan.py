"""What a comparison runs: presets, the command's arguments, the planned runs, and whether a run
already in its folder is finished, can continue from its checkpoint, or is another config's.

Every read of a strategy's class attributes that the comparison makes goes through this module:
:func:`accepted_options` (the options a strategy reads) and :func:`_options_for` (whether its Options
model takes the config's ``strategy_options``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpilot.core.errors import FedpilotError

if TYPE_CHECKING:
    from fedpilot.config import Config

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_OUT = Path("runs/compare")


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


def _positive_whole(flag: str, value: int | str | None, default: int, fix: str) -> int:
    """``flag``'s value as a whole number >= 1 (``default`` when not given), or one line naming the flag and ``fix``."""
    if value is None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise FedpilotError(f"{flag}: {value!r} is not a whole number; {fix}") from None
    if number < 1:
        raise FedpilotError(f"{flag}: {number} is below 1; {fix}")
    return number


def parse_last(value: int | str | None, default: int) -> int:
    """The end point's evaluated rounds for ``--last``: a whole number >= 1 (default ``default``)."""
    return _positive_whole("--last", value, default, "give how many final evaluations to average, e.g. 5")


def parse_reference(value: str | None, strategies: list[str]) -> str | None:
    """``--reference``: one of the compared strategies (None: fedavg if compared)."""
    if value is not None and value not in strategies:
        raise FedpilotError(f"--reference: {value!r} is not among the compared strategies; give one of {', '.join(strategies)}")
    return value


def parse_jobs(value: int | str | None) -> int:
    """Runs at a time for ``--jobs``: a whole number >= 1 (default 1)."""
    return _positive_whole("--jobs", value, 1, "give the runs to make at a time, e.g. 2")


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


def accepted_options(strategy: str) -> frozenset[str]:
    """The option names the strategy named ``strategy`` reads, from its declared capabilities (an option
    its Options model inherits but it never reads leaves a finished run the same run)."""
    from fedpilot.strategies import STRATEGIES
    from fedpilot.strategies import accepted_options as declared

    return declared(STRATEGIES.get_or_fail(strategy))


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
    declares inert aside); None when they agree or the run recorded none (made before runs recorded them)."""
    if not isinstance(stored, dict):
        return None
    settings = run.config.strategy_settings()
    current = settings.model_dump(mode="json")
    inert = set(current) - accepted_options(run.config.strategy)
    # an option added since, whose default is not what the code ran before it existed: a record without it ran that
    stored = {**getattr(type(settings), "before_recorded", {}), **stored}
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
