"""Names shared by the allocator, the strategies, the client and the server.

A LoRA module is ``"<layer>.<target>"`` (``"3.query"``, ``"17.down_proj"``): one adapted linear map of
one layer. Its tensors travel as ``"<module>/lora_A"`` and ``"<module>/lora_B"``; the task head,
which every client trains, as ``"head/<parameter>"``. This file is the only place that builds or
splits these names.
"""

from __future__ import annotations

from collections.abc import Iterable

HEAD = "head"
LORA_A = "lora_A"
LORA_B = "lora_B"
LORA_PARTS: tuple[str, str] = (LORA_A, LORA_B)
BASE_DELTA = "base_delta"  # a dense change of a module's frozen weight (strategies that merge into the base)


def module_id(layer: int, target: str) -> str:
    return f"{layer}.{target}"


def parse_module(module: str) -> tuple[int, str]:
    """``"3.query"`` -> ``(3, "query")``; a ValueError for anything else."""
    layer, sep, target = module.partition(".")
    if not sep or not target or not layer.isdigit():
        raise ValueError(f"{module!r} is not a LoRA module name; expected '<layer>.<target>', e.g. '3.query'")
    return int(layer), target


def module_layer(module: str) -> int:
    """The layer index of a module id such as ``"3.query"``."""
    return parse_module(module)[0]


def module_target(module: str) -> str:
    """The target of a module id (``"3.query"`` -> ``"query"``)."""
    return parse_module(module)[1]


def tensor_key(module: str, part: str) -> str:
    """``("3.query", "lora_A")`` -> ``"3.query/lora_A"``."""
    return f"{module}/{part}"


def module_of(key: str) -> str:
    """The module a tensor key belongs to (``"3.query/lora_A"`` -> ``"3.query"``, head -> ``"head"``)."""
    return key.split("/", 1)[0]


def part_of(key: str) -> str:
    """The part a tensor key names (``"3.query/lora_A"`` -> ``"lora_A"``; head keys: the parameter)."""
    return key.split("/", 1)[1]


def rank_axis(key: str) -> int | None:
    """The axis of a LoRA tensor that has the rank's length (A: rows, B: columns); None for others."""
    part = part_of(key) if "/" in key else ""
    return {LORA_A: 0, LORA_B: 1}.get(part)


def check_parts(parts: Iterable[str]) -> tuple[str, ...]:
    """``parts`` as a tuple in canonical order; a ValueError unless a non-empty subset of A and B."""
    parts = tuple(parts)
    if not parts or set(parts) - set(LORA_PARTS) or len(set(parts)) != len(parts):
        raise ValueError(f"trained parts must be a non-empty subset of {LORA_PARTS}, got {parts}")
    return tuple(p for p in LORA_PARTS if p in parts)
