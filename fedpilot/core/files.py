"""Files written so that an interruption never leaves half of one behind.

Each write goes to a temporary file in the same folder, is flushed and fsynced, renamed over the
target (atomic on POSIX), and the folder is fsynced so the rename itself survives a power cut.
A reader therefore sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary path)``, then make its result ``path`` atomically and durably."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(partial)
        with open(partial, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON atomically and durably (a diverged metric stays NaN, as Python writes it)."""
    write_bytes(path, json.dumps(payload, indent=2).encode())
