"""fedpilot.flower.supernode: Flower's SuperNode with its two fixed waits shortened, and nothing else changed."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from fedpilot.flower import supernode


def test_the_waits_shorten_only_the_idle_pull_and_the_reply_check(monkeypatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    waits = supernode.Waits(idle=0.25, reply=0.05)
    for seconds in (3, 0.5, 0.1, 2):
        waits.sleep(seconds)
    assert slept == [0.25, 0.05, 0.1, 2]
    assert waits.monotonic is time.monotonic and waits.time is time.time  # every other call is time's own


def test_flower_s_supernode_loop_gets_the_short_waits(monkeypatch) -> None:
    from flwr.supernode import start_client_internal as loop

    monkeypatch.setattr(loop, "time", loop.time)  # undone after the test
    assert supernode.shorten_waits(loop, idle=0.2, reply=0.05)
    assert isinstance(loop.time, supernode.Waits) and (loop.time.idle, loop.time.reply) == (0.2, 0.05)
    assert not supernode.shorten_waits(loop, idle=0.2, reply=0.05)  # already shortened: left as it is


def test_a_loop_without_those_waits_is_left_unchanged(tmp_path: Path) -> None:
    source = tmp_path / "other_loop.py"
    source.write_text("import time\n\n\ndef loop():\n    time.sleep(2)\n")
    spec = importlib.util.spec_from_file_location("other_loop", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not supernode.shorten_waits(module, idle=0.2, reply=0.05)
    assert module.time is time


@pytest.mark.parametrize("argv", [["--idle-poll", "0"], ["--reply-poll", "abc"], ["--idle-poll", "61"]])
def test_bad_waits_get_one_line_and_exit_2(argv, capsys) -> None:
    assert supernode.main([*argv, "--insecure"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and argv[0] in err
