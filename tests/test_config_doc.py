"""docs/config.md is what the generator writes, and default.yaml spells out every field at its default."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fedpilot.cli.configdoc import REGENERATE, field_paths, render_config_doc
from fedpilot.config import DEFAULT_CONFIG, Config, load_config
from fedpilot.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]


def default_yaml() -> dict[str, Any]:
    return yaml.safe_load(resources.files("fedpilot.configs").joinpath(DEFAULT_CONFIG).read_text())


def test_config_doc_is_up_to_date() -> None:
    page = ROOT / "docs" / "config.md"
    assert page.exists() and page.read_text() == render_config_doc(), (
        f"docs/config.md differs from the config models; regenerate it with: {REGENERATE}"
    )


def test_config_doc_names_every_field_and_strategy() -> None:
    text = render_config_doc()
    for path in field_paths(Config):
        assert f"| `{path}` |" in text, path
    for name, strategy in STRATEGIES.items():
        assert f"### `{name}`" in text, name
    for path in field_paths(STRATEGIES["fedpilot"].Options, "strategy_options"):
        assert f"| `{path}` |" in text, path


def _present(data: Any, parts: list[str], path: str) -> None:
    if not parts:
        return
    head, rest = parts[0], parts[1:]
    key, is_list = head.removesuffix("[]"), head.endswith("[]")
    assert isinstance(data, dict) and key in data, f"default.yaml does not show {path}"
    value = data[key]
    if is_list:
        assert isinstance(value, list) and value, f"default.yaml shows no element of {path}"
        for element in value:
            _present(element, rest, path)
    else:
        _present(value, rest, path)


def test_default_yaml_shows_every_field() -> None:
    data = default_yaml()
    paths = field_paths(Config)
    assert "federation.server_lr" in paths and "federation.budgets.tiers[].memory" in paths
    for path in paths:
        _present(data, path.split("."), path)


def test_default_yaml_holds_the_defaults() -> None:
    """default.yaml changes nothing against Config(): `make demo` runs the models' defaults."""
    assert default_yaml() == Config().model_dump(mode="json")
    assert load_config(None) == Config()
