"""Whole-layer planning: layer probability patterns, layer orders, and fitting whole layers to a budget.

The layer-wise baselines (straggler, FedRA, Fed-HeLLo's GD-HLA / RGD-HLA) hand out whole layers (every
LoRA target of a layer) rather than single modules. They differ only in the ORDER in which layers are
offered; :func:`fit_layers` then takes them greedily under the position-aware cost model
(:meth:`CostModel.cost`), and :func:`most_modules` is the partial-layer fallback for a budget that
fits no whole layer. Pure: numpy and the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedpilot.core.keys import module_layer
from fedpilot.planning.allocation import Problem, solve
from fedpilot.planning.costmodel import CostModel

# Fed-HeLLo's bottleneck prior for a 12-layer model (verified in the released code); sums to 1.
BOTTLENECK_12: tuple[float, ...] = (1 / 9, 1 / 9, 1 / 9, 2 / 27, 2 / 27, 1 / 27, 1 / 27, 1 / 27, 2 / 27, 1 / 9, 1 / 9, 1 / 9)
PROBABILITY_PATTERNS: tuple[str, ...] = ("uniform", "triangle", "inverted-triangle", "bottleneck")
PATTERNS: tuple[str, ...] = ("top", *PROBABILITY_PATTERNS)
TIE_DECIMALS = 12  # probabilities equal to this many decimals are ties (interpolation leaves float noise)


def pattern_probabilities(pattern: str, num_layers: int) -> np.ndarray:
    """Per-layer probabilities (layer 0 = the lowest), summing to 1.

    - ``uniform``: 1 / L each;
    - ``triangle``: linear in depth, p_l proportional to l + 1 (more weight on later layers; inferred,
      Fed-HeLLo does not release its triangle vectors);
    - ``inverted-triangle``: the mirror, p_l proportional to L - l;
    - ``bottleneck``: :data:`BOTTLENECK_12` exactly for 12 layers; for another depth L the 12 values are
      placed at relative depths i / 11, linearly interpolated at l / (L - 1) and renormalised to sum 1
      (so the shape, high at both ends and lowest in the middle, is kept at any depth).

    ``top`` has no probabilities (it is an order, see :func:`top_order`): a ValueError.
    """
    if num_layers < 1:
        raise ValueError(f"a pattern needs at least one layer, got {num_layers}")
    depth = np.arange(num_layers, dtype=np.float64)
    if pattern == "uniform":
        weights = np.ones(num_layers)
    elif pattern == "triangle":
        weights = depth + 1
    elif pattern == "inverted-triangle":
        weights = num_layers - depth
    elif pattern == "bottleneck":
        if num_layers == len(BOTTLENECK_12):
            return np.array(BOTTLENECK_12)
        source = np.linspace(0.0, 1.0, len(BOTTLENECK_12))
        target = np.linspace(0.0, 1.0, num_layers) if num_layers > 1 else np.zeros(1)
        weights = np.interp(target, source, np.array(BOTTLENECK_12))
    else:
        raise ValueError(f"unknown layer pattern {pattern!r}; probability patterns: {', '.join(PROBABILITY_PATTERNS)}")
    return weights / weights.sum()


def top_order(num_layers: int) -> list[int]:
    """The layers from the top (last) down."""
    return list(reversed(range(num_layers)))


def priority_order(probabilities: Sequence[float]) -> list[int]:
    """Layers by descending probability; ties (to :data:`TIE_DECIMALS` decimals) go to the higher layer,
    which stores less activation memory under the position-aware cost model, so more layers fit."""
    rounded = [round(float(p), TIE_DECIMALS) for p in probabilities]
    return sorted(range(len(rounded)), key=lambda l: (-rounded[l], -l))


def weighted_order(probabilities: Sequence[float], rng: np.random.Generator) -> list[int]:
    """Every layer, drawn one at a time without replacement, each draw proportional to the remaining
    layers' probabilities. Layers of probability 0 come last, top first."""
    weights = np.asarray(probabilities, dtype=np.float64)
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError(f"probabilities must be finite and >= 0, got {list(weights)}")
    remaining = [l for l in range(len(weights)) if weights[l] > 0]
    order: list[int] = []
    while remaining:
        w = weights[remaining]
        pick = int(rng.choice(len(remaining), p=w / w.sum()))
        order.append(remaining.pop(pick))
    return order + [l for l in top_order(len(weights)) if weights[l] == 0]


def layer_groups(modules: Sequence[str]) -> dict[int, list[str]]:
    """Layer -> its modules, in the order of ``modules``."""
    groups: dict[int, list[str]] = {}
    for module in modules:
        groups.setdefault(module_layer(module), []).append(module)
    return groups


def fit_layers(
    order: Sequence[int], groups: Mapping[int, Sequence[str]], cost_model: CostModel, room: int, stop_at_miss: bool = False
) -> list[int]:
    """Whole layers taken greedily in ``order``: a layer joins when the union of its modules with those
    already chosen costs at most ``room``; one that does not fit is skipped and the next one tried
    (``stop_at_miss``: the first miss ends the fill, for contiguous blocks). Layers without modules
    are skipped. The result is in the order the layers were taken."""
    chosen: list[int] = []
    modules: list[str] = []
    for layer in order:
        group = list(groups.get(layer, ()))
        if not group or layer in chosen:
            continue
        if cost_model.cost([*modules, *group]) <= room:
            chosen.append(layer)
            modules.extend(group)
        elif stop_at_miss:
            break
    return chosen


def most_modules(cost_model: CostModel, modules: Sequence[str], room: int) -> list[str] | None:
    """The largest module set that costs at most ``room`` (ties: the exact allocator with uniform
    values decides), in the order of ``modules``; None when not even the cheapest module fits."""
    allocation = solve(Problem(room, cost_model, {m: 1.0 for m in modules}))
    if allocation is None:
        return None
    chosen = set(allocation.modules)
    return [m for m in modules if m in chosen]


def plan_whole_layers(
    order: Sequence[int], modules: Sequence[str], cost_model: CostModel, room: int, stop_at_miss: bool = False
) -> list[str] | None:
    """The modules of the whole layers :func:`fit_layers` takes in ``order``, in the order of
    ``modules``; when no whole layer fits, :func:`most_modules` (a partial layer set); None when
    nothing fits at all (exactly when :func:`~fedpilot.planning.costmodel.fits_something` is false)."""
    layers = set(fit_layers(order, layer_groups(modules), cost_model, room, stop_at_miss))
    if not layers:
        return most_modules(cost_model, modules, room)
    return [m for m in modules if module_layer(m) in layers]
