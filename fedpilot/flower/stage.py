"""Stage the Flower app: a folder holding only what the FAB carries (pyproject.toml and the files its
``fab-include`` patterns name), for ``flwr run <folder>``.

``flwr run <project>`` walks every file under the project before it applies the app's include patterns
(flwr.cli.utils.collect_files, resolving each path), so a project with its virtual environment inside
(fedpilot's Makefile puts one in .venv: about 53,000 files) spends 12 s of CPU per ``flwr run`` on files
it then drops. Staged, the build walks about a hundred files. The FAB is the same either way: the same
paths, the same bytes, so the same hash and the same code check on the warm executors.

    python -m fedpilot.flower.stage DEST      # prints DEST after copying; DEST is replaced
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def app_files(project: Path = PROJECT) -> list[Path]:
    """pyproject.toml and the files its ``[tool.flwr.app] fab-include`` patterns match, relative to ``project``."""
    pyproject = project / "pyproject.toml"
    if not pyproject.is_file():
        raise FileNotFoundError(f"no pyproject.toml in {project}: stage the app from a source checkout of fedpilot")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["fab-include"]
    found = {p.relative_to(project) for pattern in patterns for p in project.glob(pattern) if p.is_file()}
    return [Path("pyproject.toml"), *sorted(p for p in found if "__pycache__" not in p.parts)]


def stage_app(dest: Path, project: Path = PROJECT) -> Path:
    """Copy the app's files from ``project`` into ``dest`` (emptied first, then written); ``dest``."""
    files = app_files(project)
    if dest.exists():
        shutil.rmtree(dest)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(project / rel, dest / rel)
    return dest


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fedpilot.flower.stage DEST", file=sys.stderr)
        return 2
    print(stage_app(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
