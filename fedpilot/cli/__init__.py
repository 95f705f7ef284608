"""Command line: ``fedpilot run``, ``profile``, ``plan`` and ``solve`` (thin: each verb loads only what it needs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedpilot.core.errors import FedpilotError


def _run(args: argparse.Namespace) -> int:
    from fedpilot.config import load_config
    from fedpilot.simulation import run_simulation

    config = load_config(args.config)
    result = run_simulation(config, args.out, progress=not args.quiet)
    print(f"results: {result.out_dir / 'results.json'}  plot: {result.out_dir / 'accuracy.png'}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    import json

    from fedpilot.config import load_config
    from fedpilot.cli.profile import profile_memory, render_profile

    config = load_config(args.config)
    report = profile_memory(config, analytic=args.analytic, progress=not args.json)
    print(json.dumps(report, indent=2) if args.json else render_profile(report))
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from fedpilot.config import load_config
    from fedpilot.cli.plan import make_plan, render_plan

    plan = make_plan(load_config(args.config), progress=not args.json)
    print(json.dumps(plan, indent=2) if args.json else render_plan(plan))
    return 0


def _solve(args: argparse.Namespace) -> int:
    import json

    from fedpilot.cli.solve import solve_text

    print(json.dumps(solve_text(sys.stdin.read())))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedpilot", description="Memory-aware federated LoRA fine-tuning.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("run", help="run a federation as an in-process simulation")
    run.add_argument("--config", type=Path, help="YAML config (default: the embedded default.yaml)")
    run.add_argument("--out", type=Path, help="run directory (default: the config's output_dir)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)
    profile = verbs.add_parser("profile", help="what training each LoRA module costs in memory, per layer")
    profile.add_argument("--config", type=Path, help="YAML config (default: the embedded default.yaml)")
    profile.add_argument("--json", action="store_true", help="print the same as JSON")
    profile.add_argument("--analytic", action="store_true", help="estimate from the model config alone (no forward pass)")
    profile.set_defaults(handler=_profile)
    plan = verbs.add_parser("plan", help="each client's budget, allocated modules, predicted memory and value, before training")
    plan.add_argument("--config", type=Path, help="YAML config (default: the embedded default.yaml)")
    plan.add_argument("--json", action="store_true", help="print the same as JSON")
    plan.set_defaults(handler=_plan)
    solve = verbs.add_parser("solve", help="exact module allocation for a JSON problem on stdin (see fedpilot/solve.py)")
    solve.set_defaults(handler=_solve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FedpilotError as err:
        print(f"fedpilot: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("fedpilot: interrupted; results so far are saved", file=sys.stderr)
        return 130


