"""Command line: ``fedpilot run``, ``compare``, ``profile``, ``plan`` and ``solve`` (thin: each verb loads only what it needs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedpilot.core.errors import FedpilotError

DEVICE_HELP = "where the model runs: auto (cuda when available, else cpu), cpu, cuda or cuda:N (default: the config's model.device)"


def _with_device(config, device: str | None):
    """``config`` with ``model.device`` set to ``--device`` (validated like the config field)."""
    if device is None:
        return config
    from fedpilot.config import parse_config

    data = config.model_dump(mode="json")
    data["model"]["device"] = device
    return parse_config(data, "--device")


def _run(args: argparse.Namespace) -> int:
    from fedpilot.config import load_config

    if args.resume is not None:
        if args.out is not None and args.out != args.resume:
            raise FedpilotError("--out and --resume name different folders; --resume DIR continues the run in DIR")
        if args.overwrite:
            raise FedpilotError("--resume continues a run and --overwrite replaces it; give one of them")
        if args.device is not None:
            raise FedpilotError("--device applies to a new run; a resumed run uses its own config's model.device (auto: cuda when available)")
        config = load_config(args.config) if args.config is not None else None
        from fedpilot.simulation import run_simulation  # torch and the model stack, once the config is known good

        result = run_simulation(config, args.resume, progress=not args.quiet, resume=True)
    else:
        config = _with_device(load_config(args.config), args.device)
        from fedpilot.simulation import run_simulation

        result = run_simulation(config, args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(f"results: {result.out_dir / 'results.json'}  plot: {result.out_dir / 'accuracy.png'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from fedpilot import comparison
    from fedpilot.config import load_config

    strategies = comparison.parse_strategies(args.strategies)
    seeds = comparison.parse_seeds(args.seeds)
    target = comparison.parse_target(args.target)
    comparison.parse_preset(args.preset)
    jobs = comparison.parse_jobs(args.jobs)
    last = comparison.parse_last(args.last, comparison.LATE_EVALUATIONS)
    reference = comparison.parse_reference(args.reference, strategies)
    config = _with_device(load_config(args.config), args.device)
    out = args.out or comparison.default_out(args.preset)
    result = comparison.run_comparison(
        config, strategies, seeds, out, preset=args.preset, target=target, progress=not args.quiet,
        config_source=None if args.config is None else str(args.config), jobs=jobs,
        late=last, reference=reference, exclusive_below=args.exclusive_below, report_only=args.report,
    )
    print(f"runs: {len(result.executed)} run now, {len(result.skipped)} skipped (already finished) in {result.out_dir}")
    print("outputs: " + "  ".join(str(path) for path in result.paths))
    return 0


def _profile(args: argparse.Namespace) -> int:
    import json

    from fedpilot.config import load_config
    from fedpilot.cli.profile import profile_memory, render_profile

    config = _with_device(load_config(args.config), args.device)
    report = profile_memory(config, analytic=args.analytic, progress=not args.json)
    print(json.dumps(report, indent=2) if args.json else render_profile(report))
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from fedpilot.config import load_config
    from fedpilot.cli.plan import make_plan, render_plan

    plan = make_plan(_with_device(load_config(args.config), args.device), progress=not args.json)
    print(json.dumps(plan, indent=2) if args.json else render_plan(plan))
    return 0


def _add_compare(verb) -> None:
    from fedpilot.comparison import DEFAULT_OUT, PRESETS, TARGET_FRACTION

    presets = "; ".join(f"{name}: {preset.description} ({preset.timing})" for name, preset in PRESETS.items())
    compare = verb(
        "compare",
        help="run strategies x seeds on one config and compare them (resumable)",
        description="Run every (strategy, seed) on one config (same data, partitions, budgets, seeds), keep each "
        "finished run in OUT/<strategy>-seed<seed>/ and skip it when run again, then write comparison.md, "
        "comparison.json, accuracy.png, memory.png and allocation.png to OUT.",
    )
    compare.add_argument("--config", type=Path, help="YAML config (default: the embedded default.yaml)")
    compare.add_argument("--strategies", metavar="A,B,...", help="comma-separated strategy names (default: every registered strategy)")
    compare.add_argument("--seeds", metavar="0,1,2", help="comma-separated seeds, integers >= 0 (default: 0,1,2)")
    compare.add_argument(
        "--out", type=Path,
        help=f"comparison folder (default: {DEFAULT_OUT}, or {DEFAULT_OUT}-<preset> with --preset); finished runs in it are reused",
    )
    compare.add_argument("--preset", metavar="NAME", help=f"a smaller variant of the config. {presets}")
    compare.add_argument(
        "--target", metavar="ACCURACY",
        help=f"test accuracy for the rounds-to-target column (default: {TARGET_FRACTION:g} x the best mean final accuracy)",
    )
    compare.add_argument("--jobs", metavar="N", help="runs at a time, each in a process of its own with the cores shared "
                         "equally as torch threads (default 1; 2 on 2 cores made 1.1-1.4x the runs per hour, docs/protocol.md)")
    compare.add_argument("--last", metavar="K", help="the end point: the mean of each run's last K evaluated rounds (default 5); "
                         "the table states the resolution (the standard error of a seed-paired difference) at this end point")
    compare.add_argument("--reference", metavar="STRATEGY", help="pair every strategy with this one in the table (default: fedavg if compared)")
    compare.add_argument("--report", action="store_true", help="run nothing: tabulate the finished runs in --out, name the others "
                         "(a comparison under way; it may still be running)")
    compare.add_argument("--exclusive-below", action="store_true", help="a level where the poor clients hold data the rich lack: "
                         "its sanity order also needs exclusive clearly below fedavg (docs/protocol.md, \"Resolution\")")
    compare.add_argument("--device", help=DEVICE_HELP)
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    compare.set_defaults(handler=_compare)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    parser = argparse.ArgumentParser(prog="fedpilot", description="Memory-aware federated LoRA fine-tuning.", parents=[common])
    verbs = parser.add_subparsers(dest="verb", required=True)

    def verb(name: str, **kwargs) -> argparse.ArgumentParser:  # every verb takes --debug
        return verbs.add_parser(name, parents=[common], **kwargs)

    run = verb("run", help="run a federation as an in-process simulation (results and a checkpoint after every round)")
    run.add_argument("--config", type=Path, help="YAML config (default: the embedded default.yaml; with --resume: the run's own)")
    run.add_argument("--out", type=Path, help="run directory (default: the config's output_dir); an existing run there is never replaced silently")
    run.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its last finished round")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    run.add_argument("--device", help=DEVICE_HELP)
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)
    _add_compare(verb)
    profile = verb("profile", help="what training each LoRA module costs in memory, per layer")
    profile.add_argument("--config", type=Path, help="YAML config (default: the embedded default.yaml)")
    profile.add_argument("--json", action="store_true", help="print the same as JSON")
    profile.add_argument("--analytic", action="store_true", help="estimate from the model config alone (no forward pass)")
    profile.add_argument("--device", help=DEVICE_HELP + "; the calibration is measured there")
    profile.set_defaults(handler=_profile)
    plan = verb("plan", help="each client's budget, allocated modules, predicted memory and value, before training")
    plan.add_argument("--config", type=Path, help="YAML config (default: the embedded default.yaml)")
    plan.add_argument("--json", action="store_true", help="print the same as JSON")
    plan.add_argument("--device", help=DEVICE_HELP)
    plan.set_defaults(handler=_plan)
    from fedpilot.cli import solve as solve_verb

    solve = verb("solve", help="exact module allocation for a JSON problem on stdin (see fedpilot/cli/solve.py)")
    solve_verb.add_arguments(solve)
    solve.set_defaults(handler=solve_verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FedpilotError as err:
        if getattr(args, "debug", False):
            raise
        print(f"fedpilot: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("fedpilot: interrupted; results so far are saved", file=sys.stderr)
        return 130


