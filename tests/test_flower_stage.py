"""The staged Flower app (fedpilot/flower/stage.py) builds the same FAB as the repository it came from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedpilot.flower.stage import app_files, main, stage_app

ROOT = Path(__file__).resolve().parents[1]
PRUNED = {".venv", ".git", "runs", ".hypothesis", "__pycache__", "fedpilot.egg-info"}


def repository_files() -> dict[str, Path]:
    """What ``flwr run ROOT`` collects, without walking the folders that cannot hold a file of the app (the
    virtual environment, git's objects, run outputs): the walk that makes ``flwr run .`` slow."""
    files = {}
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in PRUNED]
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():
                files[path.relative_to(ROOT).as_posix()] = path
    return files


def test_the_staged_app_builds_the_repositorys_fab_byte_for_byte(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk, build_fab_from_files

    staged = stage_app(tmp_path / "app")
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == sorted(p.as_posix() for p in app_files())
    assert build_fab_from_disk(staged) == build_fab_from_files(repository_files())[0]
    stage_app(staged)  # staging again replaces the folder: a file left there from before is gone
    (staged / "stray.py").write_text("")
    stage_app(staged)
    assert not (staged / "stray.py").exists()


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "app")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "app") and (tmp_path / "app" / "pyproject.toml").is_file()
    assert main([]) == 2
    with pytest.raises(FileNotFoundError, match="no pyproject.toml"):
        app_files(tmp_path / "nowhere")
