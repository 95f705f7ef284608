"""docs/config.md, generated from the pydantic models: every field of :class:`fedpilot.config.Config`
(nested sections, lists of sections, unions) and every strategy's ``Options``, with its type, default
and meaning (the field's ``description``).

``python scripts/config_doc.py`` writes the page; ``tests/test_config_doc.py`` fails when it is stale.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from fedpilot.config import Config
from fedpilot.strategies import STRATEGIES, accepted_options

REGENERATE = "python scripts/config_doc.py"

_CONSTRAINTS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
                (annotated_types.Lt, "lt", "<"))


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _members(tp: Any) -> tuple[Any, ...]:
    """The parts of a union (one part for anything else)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def type_name(tp: Any) -> str:
    """A readable type: ``int``, ``float | None``, ``"iid" | "dirichlet"``, ``list[str]``, ``mapping``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(part) for part in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(f'"{v}"' if isinstance(v, str) else repr(v) for v in typing.get_args(tp))
    if origin is typing.Annotated:
        return type_name(typing.get_args(tp)[0])
    if origin in (tuple, list, set, frozenset):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list[{type_name(args[0])}]" if len(args) == 1 else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    if _is_model(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _constraints(field: FieldInfo) -> str:
    parts = [f"{sign} {getattr(m, attr)}" for m in field.metadata for kind, attr, sign in _CONSTRAINTS if isinstance(m, kind)]
    return f" ({', '.join(parts)})" if parts else ""


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return text.removesuffix("...").strip()


def default_text(model: type[BaseModel], name: str) -> str:
    """The field's default as it would be written in YAML (a model default as its JSON dump)."""
    field = model.model_fields[name]
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        if _is_model(field.annotation):
            return "(section below)"
        value = value.model_dump(mode="json")
    elif isinstance(value, tuple):
        value = list(value)
    return _flow(value)


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _code(default: str) -> str:
    return _cell(default) if default.startswith("(") or default == "required" else f"`{_cell(default)}`"


def _sections(model: type[BaseModel], path: str) -> Iterator[tuple[str, type[BaseModel], list[tuple[str, str]]]]:
    """(path, model, [(field, field path)]) of ``model`` and, after it, every model reachable from its fields."""
    rows = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        field_path = f"{path}.{name}" if path else name
        rows.append((name, field_path))
        for part in _members(field.annotation):
            inner = part
            suffix = ""
            if typing.get_origin(part) in (tuple, list, set, frozenset):
                args = [a for a in typing.get_args(part) if a is not Ellipsis]
                inner, suffix = (args[0], "[]") if len(args) == 1 else (None, "")
            if _is_model(inner):
                nested.append((field_path + suffix, inner))
    yield path, model, rows
    for sub_path, sub_model in nested:
        yield from _sections(sub_model, sub_path)


def field_paths(model: type[BaseModel], path: str = "") -> list[str]:
    """Every field's dotted path (``federation.budgets.tiers[].memory``), sections included."""
    return [field_path for _, _, rows in _sections(model, path) for _, field_path in rows]


def _table(model: type[BaseModel], rows: list[tuple[str, str]]) -> list[str]:
    lines = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field_path in rows:
        field = model.model_fields[name]
        kind = _cell(type_name(field.annotation) + _constraints(field))
        lines.append(
            f"| `{field_path}` | `{kind}` | {_code(default_text(model, name))} | {_cell(field.description or '')} |"
        )
    return lines


def _model_sections(model: type[BaseModel], root: str, level: str) -> list[str]:
    lines: list[str] = []
    for path, section, rows in _sections(model, root):
        title = f"`{path}`" if path else "Top level"
        lines += [f"{level} {title}", ""]
        doc = (section.__doc__ or "").strip()
        if doc and section.__doc__ is not BaseModel.__doc__:
            lines += [_cell(doc.split("\n\n")[0]), ""]
        if rows:
            lines += _table(section, rows)
        else:
            lines.append("No options.")
        lines.append("")
    return lines


def render_config_doc() -> str:
    """The whole of docs/config.md."""
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from the pydantic models by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "A run is configured by one YAML file. Every field has a default, so a file only states what differs",
        "from the embedded default, `fedpilot/configs/default.yaml`, which spells out every field with a comment.",
        "A wrong field stops the run before anything starts, with one line naming the field and what is",
        "allowed (exit code 2). Sizes are written with a unit (`150MiB`, `1GiB`); `null` is YAML's None.",
        "A path with `[]` is a field of each element of a list.",
        "",
    ]
    lines += _model_sections(Config, "", "##")
    lines += [
        "## Strategy options (`strategy_options`)",
        "",
        "Each strategy checks `strategy_options` with its own `Options` model; an option it does not declare is",
        "an error. Inert options are inherited but not among the options the strategy's capabilities say it reads (a finished run made under other",
        "values of them is the same run for `fedpilot compare`).",
        "",
    ]
    documented: dict[type[BaseModel], str] = {}
    for name in sorted(STRATEGIES):
        strategy = STRATEGIES[name]
        options = strategy.Options
        lines += [f"### `{name}`", ""]
        notes = [] if strategy.capabilities.memory_aware else ["Memory-unaware: it ignores the budgets."]
        inert = sorted(set(options.model_fields) - accepted_options(strategy))
        if options in documented:
            notes.append(f"The options of `{documented[options]}` (above).")
        elif options.model_fields:
            documented[options] = name
        if inert:
            notes.append("Inert: " + ", ".join(f"`{o}`" for o in inert) + ".")
        if notes:
            lines += [" ".join(notes), ""]
        if documented.get(options) == name:
            lines += _model_sections(options, "strategy_options", "####")[2:]
        elif not options.model_fields:
            lines += ["No options.", ""]
    return "\n".join(lines).rstrip() + "\n"
