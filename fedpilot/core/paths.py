"""Where fedpilot keeps what it caches on disk (encoded corpora, converted models, calibrations)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FEDPILOT_CACHE``, else ``~/.cache/fedpilot``."""
    return Path(os.environ.get("FEDPILOT_CACHE", Path.home() / ".cache" / "fedpilot"))
