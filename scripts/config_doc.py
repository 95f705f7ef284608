"""Write docs/config.md from the pydantic models (fedpilot.cli.configdoc); --check only compares.

    .venv/bin/python scripts/config_doc.py           # regenerate docs/config.md
    .venv/bin/python scripts/config_doc.py --check   # exit 1 if docs/config.md is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedpilot.cli.configdoc import render_config_doc  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if docs/config.md differs")
    args = parser.parse_args()
    text = render_config_doc()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is stale; regenerate it with: python scripts/config_doc.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
