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

This package imports only light modules at load time (the CLI builds its help from :data:`PRESETS`);
torch comes in with :mod:`fedpilot.simulation` when a run starts.

The package, by concern: :mod:`~fedpilot.comparison.plan` (presets, arguments, the planned runs and
the state of their folders), :mod:`~fedpilot.comparison.run` (running the grid), :mod:`~fedpilot.comparison.records`
(reading the runs' results: end points and coverage), :mod:`~fedpilot.comparison.resolution` (whether
the comparison can rank its strategies: resolution and sanity order), :mod:`~fedpilot.comparison.tables`
(the table and the outputs) and :mod:`~fedpilot.comparison.plots`.
"""

from __future__ import annotations

from fedpilot.comparison.plan import (
    DEFAULT_OUT,
    DEFAULT_SEEDS,
    PRESETS,
    PlannedRun,
    Preset,
    accepted_options,
    comparable_config,
    default_out,
    parse_jobs,
    parse_last,
    parse_reference,
    parse_preset,
    parse_seeds,
    parse_strategies,
    parse_target,
    plan_runs,
    resume_blocker,
    run_dir_name,
    run_state,
)
from fedpilot.comparison.plots import allocation_shares, plot_accuracy, plot_allocation, plot_memory
from fedpilot.comparison.records import (
    LATE_EVALUATIONS,
    TARGET_FRACTION,
    coverage,
    evaluated_split,
    late_accuracy,
    majority_accuracy,
    rounds_to_target,
    summarise,
    summarise_run,
)
from fedpilot.comparison.resolution import RESOLUTION_LIMIT, assess, assess_summary, paired_difference, sanity_order
from fedpilot.comparison.run import (
    INTERRUPTED,
    LOCK_NAME,
    OUTPUTS,
    ComparisonResult,
    default_command,
    parallel_threads,
    run_comparison,
)
from fedpilot.comparison.tables import describe_config, render_markdown, resolution_lines, write_outputs

__all__ = [
    "DEFAULT_OUT", "DEFAULT_SEEDS", "INTERRUPTED", "LATE_EVALUATIONS", "LOCK_NAME", "OUTPUTS", "PRESETS", "RESOLUTION_LIMIT",
    "TARGET_FRACTION", "ComparisonResult", "PlannedRun", "Preset", "accepted_options", "allocation_shares", "assess",
    "assess_summary", "comparable_config", "coverage", "default_command", "default_out", "describe_config", "evaluated_split",
    "late_accuracy", "majority_accuracy", "paired_difference", "parallel_threads", "parse_jobs", "parse_last", "parse_reference", "parse_preset", "parse_seeds",
    "parse_strategies", "parse_target", "plan_runs", "plot_accuracy", "plot_allocation", "plot_memory", "render_markdown",
    "resolution_lines", "resume_blocker", "rounds_to_target", "run_comparison", "run_dir_name", "run_state", "sanity_order",
    "summarise", "summarise_run", "write_outputs",
]
