"""Keep a comparison's finished runs in git: their results.json and metrics.csv, packed into
benchmarks/records/NAME.tar.xz (a few KiB a run; no checkpoints or adapters).

Usage: .venv/bin/python benchmarks/pack_records.py runs/rt-strong [runs/rt-mild ...] [--records benchmarks/records]

Each folder becomes RECORDS/<folder name>.tar.xz holding <folder>/<run>/results.json and metrics.csv
for every run whose results.json says "status": "finished" (unfinished runs are left out and named: they
continue from their checkpoint on the machine that has it). Paths inside are relative to the working
directory (run it from the repository root; an absolute folder path is made relative to it), so unpack
there with `tar xJf benchmarks/records/NAME.tar.xz`; `fedpilot compare` then skips those runs. An existing
archive is replaced only when the new one holds every run it held.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from pathlib import Path

FILES = ("results.json", "metrics.csv")


def finished_runs(folder: Path) -> tuple[list[Path], list[Path]]:
    """The run folders in ``folder`` whose results.json says finished, and the others that hold one."""
    done, other = [], []
    for results in sorted(folder.glob("*/results.json")):
        try:
            status = json.loads(results.read_text()).get("status")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            status = None
        (done if status == "finished" else other).append(results.parent)
    return done, other


def archived_runs(archive: Path) -> set[str]:
    with tarfile.open(archive, "r:xz") as tar:
        return {str(Path(name).parent) for name in tar.getnames() if name.endswith("/results.json")}


class RecordsError(Exception):
    """Bad input: one line naming what and the fix (exit code 2)."""


def pack(folder: Path, records: Path) -> Path:
    """Write RECORDS/<folder name>.tar.xz from ``folder``'s finished runs; refuses to drop archived runs."""
    if not folder.is_dir():
        raise RecordsError(f"{folder} is not a folder; give a comparison folder such as runs/rt-strong")
    try:  # names in the archive are relative to the working directory, however the folder was given;
        # lexically (abspath, not resolve), so a runs/ that is a symlink to another disk stays runs/
        folder = Path(os.path.abspath(folder)).relative_to(Path.cwd())
    except ValueError:
        raise RecordsError(f"{folder} is outside the working directory; run from the repository root "
                           "and give the folder under it, such as runs/rt-strong") from None
    done, other = finished_runs(folder)
    if not done:
        raise RecordsError(f"{folder} holds no finished run; give a comparison folder such as runs/rt-strong")
    archive = records / f"{folder.name}.tar.xz"
    if archive.exists():
        missing = archived_runs(archive) - {str(run) for run in done}
        if missing:
            raise RecordsError(f"{archive} holds runs {folder} lacks ({', '.join(sorted(missing))}); "
                               f"unpack it first (tar xJf {archive}) so nothing is lost")
    records.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, "w:xz") as tar:
        for run in done:
            for name in FILES:
                if (run / name).is_file():
                    tar.add(run / name)
    partial.replace(archive)
    print(f"{archive}: {len(done)} finished runs, {archive.stat().st_size / 1024:.0f} KiB"
          + (f"; left out (not finished): {', '.join(run.name for run in other)}" if other else ""))
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="comparison folders, e.g. runs/rt-strong")
    parser.add_argument("--records", type=Path, default=Path("benchmarks/records"), help="where the archives go")
    args = parser.parse_args(argv)
    try:
        for folder in args.folders:
            pack(folder, args.records)
    except RecordsError as err:
        print(f"pack_records: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
