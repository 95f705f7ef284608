"""``flower-supernode`` with shorter waits: ``python -m fedpilot.flower.supernode [--idle-poll S] [--reply-poll S] <flower-supernode options>``.

Flower 1.42's SuperNode loop (``flwr.supernode.start_client_internal``) waits a fixed 3 s after every pull
from the SuperLink that found no message, and checks every 0.5 s whether the ClientApp has replied. On one
machine those waits, not the work, set the pace of a short phase: every phase of a round starts up to 3 s
after the ServerApp sent it (the QUERY phase waits for the slowest of all nodes) and ends up to 0.5 s after
the last client finished. This launcher runs the same SuperNode with those two waits set to ``--idle-poll``
(default 1 s) and ``--reply-poll`` (default 0.1 s); everything else, options included, is Flower's.

A shorter idle poll costs the SuperLink more pulls (one every ``--idle-poll`` seconds from every idle node,
each a few database transactions), so it is a trade (benchmarks/flower_overhead.py ``--node-poll`` measures
it). The waits are found by their values in Flower's own loop: where this Flower's loop no longer has them,
the launcher says so in one line and runs the SuperNode unchanged.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from types import ModuleType
from typing import Any

IDLE_WAIT, REPLY_WAIT = 3, 0.5  # the fixed waits of flwr 1.42's SuperNode loop (start_client_internal)


class Waits:
    """The SuperNode loop module's ``time``: ``time`` itself, but ``sleep(IDLE_WAIT)`` and ``sleep(REPLY_WAIT)``
    sleep ``idle`` and ``reply`` seconds instead; every other call (and every other wait) is unchanged."""

    def __init__(self, idle: float, reply: float) -> None:
        self.idle, self.reply = idle, reply

    def sleep(self, seconds: float) -> None:
        time.sleep(self.idle if seconds == IDLE_WAIT else self.reply if seconds == REPLY_WAIT else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def shorten_waits(module: ModuleType, idle: float, reply: float) -> bool:
    """Give ``module`` (Flower's SuperNode loop) :class:`Waits` as its ``time``, if its source still has both
    fixed waits as ``time.sleep(3)`` and ``time.sleep(0.5)``; False (and nothing changed) where it does not."""
    source = inspect.getsource(module)
    if f"time.sleep({IDLE_WAIT})" not in source or f"time.sleep({REPLY_WAIT})" not in source or getattr(module, "time", None) is not time:
        return False
    module.time = Waits(idle, reply)  # type: ignore[attr-defined]
    return True


def seconds(text: str) -> float | None:
    """``text`` as seconds above 0 (and at most 60), else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value <= 60 else None


def main(argv: list[str] | None = None) -> int:
    """Shorten the waits, then run Flower's SuperNode with every other argument. Bad waits: one line, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m fedpilot.flower.supernode", add_help=False,
                                     description="flower-supernode with shorter waits; every other option goes to flower-supernode")
    parser.add_argument("--idle-poll", default="1", help="seconds between two pulls that found no message (default 1; Flower: 3)")
    parser.add_argument("--reply-poll", default="0.1", help="seconds between two checks for the ClientApp's reply (default 0.1; Flower: 0.5)")
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    idle, reply = seconds(ours.idle_poll), seconds(ours.reply_poll)
    for name, text, value in (("--idle-poll", ours.idle_poll, idle), ("--reply-poll", ours.reply_poll, reply)):
        if value is None:
            print(f"{name} {text}: give seconds above 0 and at most 60", file=sys.stderr)
            return 2
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    if not shorten_waits(start_client_internal, idle, reply):  # type: ignore[arg-type]
        print("fedpilot.flower.supernode: this Flower's SuperNode loop has no fixed 3 s and 0.5 s waits; running it unchanged", file=sys.stderr)
    sys.argv = ["flower-supernode", *rest]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
