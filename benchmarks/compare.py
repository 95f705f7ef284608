"""Compare strategies and publish the result: `fedpilot compare`, then docs/results.md's generated block.

Usage: .venv/bin/python benchmarks/compare.py [--config FILE] [--strategies a,b] [--seeds 0,1,2]
       [--out runs/compare] [--docs docs] [--block NAME] [--jobs N] [--clients-per-round N] [--preset quick] [--target ACC]
       [--last K] [--reference STRATEGY] [--exclusive-below]

Runs (and resumes) the comparison with :func:`fedpilot.comparison.run_comparison`, then copies
OUT/comparison.md into the block between BEGIN and END of DOCS/results.md (the hand-written findings
outside it are kept) and its plots next to it as results.png, results-memory.png and
results-allocation.png. ``--block NAME`` writes a block of its own instead (markers that name it,
plots NAME-accuracy.png, NAME-memory.png, NAME-allocation.png), so one results.md holds several
comparisons (the benchmark protocol's three levels). ``--clients-per-round N`` sets ``federation.clients_per_round`` in the config
(use another --out than the full-participation runs'). Lists may be given with commas or spaces.
A config that evaluates on the validation split (a tuning comparison) needs ``--block``: it never
replaces the main, test-split table.

Every table states the level's resolution (the median standard error of the seed-paired difference of
the last-K mean between two strategies, ``--last K``, default 5) and its sanity order (``fedavg`` at or
above every memory-aware strategy; with ``--exclusive-below``, for the levels where the poor clients hold
data the rich lack, ``exclusive`` clearly below ``fedavg``), and says "cannot rank methods" where either
fails (fedpilot.comparison.resolution); both are printed here too. ``--reference`` is the strategy every
row is paired with (default ``fedavg`` if compared). ``--report`` runs nothing: the table of the finished runs of a
level under way (across sessions, or while its comparison still runs), the unfinished ones named above it.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from fedpilot import comparison
from fedpilot.core.errors import FedpilotError

COMMAND = "make install && .venv/bin/python " + shlex.join(sys.argv)
BEGIN, END = "<!-- results:begin (written by benchmarks/compare.py) -->", "<!-- results:end -->"
IMAGES = {"accuracy.png": "results.png", "memory.png": "results-memory.png", "allocation.png": "results-allocation.png"}


def markers(block: str | None) -> tuple[str, str]:
    """The begin and end markers of the generated block (the default one, or the one named ``block``)."""
    if block is None:
        return BEGIN, END
    return f"<!-- results:{block}:begin (written by benchmarks/compare.py) -->", f"<!-- results:{block}:end -->"


def update_docs(out_dir: Path, docs: Path, block: str | None = None) -> Path:
    """Put ``out_dir/comparison.md`` (without its title) into a generated block of ``docs/results.md``:
    the default one, or the one named ``block`` (added at the end if the file has none yet)."""
    begin, end = markers(block)
    images = IMAGES if block is None else {source: f"{block}-{source}" for source in IMAGES}
    docs.mkdir(parents=True, exist_ok=True)
    body = (out_dir / "comparison.md").read_text()
    if body.startswith("# "):
        body = body.split("\n", 1)[1]
    for source, target in images.items():
        shutil.copyfile(out_dir / source, docs / target)
        body = body.replace(f"]({source})", f"]({target})")
    path = docs / "results.md"
    text = path.read_text() if path.is_file() else f"# Strategy comparison\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        text = f"{text.rstrip()}\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    path.write_text(f"{head}{begin}\n{body.strip()}\n{end}{rest.split(end, 1)[1]}")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML config (default: the embedded default.yaml)")
    parser.add_argument("--strategies", nargs="+", help="default: every registered strategy")
    parser.add_argument("--seeds", nargs="+", default=["0,1,2"])
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--block", help="name of the generated block in results.md (default: the main one)")
    parser.add_argument("--clients-per-round", type=int, help="sample this many clients a round (default: the config's)")
    parser.add_argument("--preset", help="see `fedpilot compare --help`")
    parser.add_argument("--target", help="test accuracy for the rounds-to-target column")
    parser.add_argument("--jobs", help="runs at a time (see `fedpilot compare --help`)")
    parser.add_argument("--last", type=int, default=comparison.LATE_EVALUATIONS,
                        help=f"the end point: mean of the last K evaluated rounds (default {comparison.LATE_EVALUATIONS})")
    parser.add_argument("--reference", help="pair every strategy with this one in the table (default: fedavg if compared)")
    parser.add_argument("--exclusive-below", action="store_true",
                        help="a level where the poor clients hold data the rich lack: exclusive must be clearly below fedavg")
    parser.add_argument("--report", action="store_true", help="run nothing: tabulate the finished runs, name the others (see `fedpilot compare --help`)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    try:
        if args.block is not None and not args.block.replace("-", "").isalnum():  # before hours of runs, not after
            raise FedpilotError(f"--block: {args.block!r} is not a name; use letters, digits and '-', e.g. rt-strong")
        if args.docs.exists() and not args.docs.is_dir():  # before hours of runs: the docs are written last
            raise FedpilotError(f"--docs: {args.docs} is a file; give the folder that holds (or will hold) results.md, e.g. docs")
        from fedpilot.config import load_config, parse_config

        config = load_config(args.config)
        if config.train.evaluate_on != "test" and args.block is None:  # a tuning comparison must not replace the main table
            raise FedpilotError(
                f"train.evaluate_on: {config.train.evaluate_on} makes this a tuning comparison, and without --block it would "
                "replace docs/results.md's main (test-split) table; run it with `fedpilot compare`, or pass --block NAME"
            )
        if args.clients_per_round is not None:
            data = config.model_dump(mode="json")
            data["federation"]["clients_per_round"] = args.clients_per_round
            config = parse_config(data, "--clients-per-round")
        result = comparison.run_comparison(
            config,
            comparison.parse_strategies(None if args.strategies is None else ",".join(args.strategies)),
            comparison.parse_seeds(",".join(args.seeds)),
            args.out,
            preset=args.preset,
            target=comparison.parse_target(args.target),
            progress=not args.quiet,
            command=COMMAND,
            config_source=None if args.config is None else str(args.config),
            jobs=comparison.parse_jobs(args.jobs),
            late=args.last,
            reference=args.reference,
            exclusive_below=args.exclusive_below,
            report_only=args.report,
        )
        path = update_docs(result.out_dir, args.docs, args.block)
    except FedpilotError as err:
        print(f"compare.py: error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"runs: {len(result.executed)} run now, {len(result.skipped)} skipped; wrote {path} and its plots")
    for line in comparison.resolution_lines(result.summary):
        print(line.replace("**", "").removeprefix("- "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
