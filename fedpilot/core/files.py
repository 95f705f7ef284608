"""Files written so that an interruption never leaves half of one behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON atomically: a temporary file in the same folder, then a rename."""
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(payload, indent=2))
    partial.replace(path)
