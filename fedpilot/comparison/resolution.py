"""Can a comparison rank its strategies? Its resolution and its sanity order, from the runs' end points.

The end point of a run is its late accuracy (the mean of the last K evaluated rounds,
:func:`~fedpilot.comparison.records.late_accuracy`). For two strategies A and B run on the same seeds
(same data split, partition, budgets and sampling), the **seed-paired difference** is
d_s = A_s - B_s for each seed s both finished; its mean is the effect and its standard error
SE = sd(d) / sqrt(n) (sd: the sample standard deviation, n - 1 in the denominator; n: the paired seeds)
is how precisely the comparison measures it. The comparison's **resolution** is the median of SE over
every pair of its strategies: a difference between two methods much below it cannot be told from the
noise of which clients were sampled and how each seed's partition fell.

The **sanity order** a valid memory protocol must show (docs/protocol.md, "Resolution"):

- memory-unaware ``fedavg`` (full LoRA on every client, the ceiling of a federation) is at or above
  every memory-aware strategy: fedavg - S >= -SE(fedavg - S) for each memory-aware S (one standard
  error of tolerance);
- on a level marked ``exclusive_below`` (the poor clients hold data the rich lack), ``exclusive``
  (only the clients that can hold full LoRA) is clearly below it: fedavg - exclusive > max(2 SE,
  :data:`RESOLUTION_LIMIT`).

A comparison **can rank** its strategies when its resolution is at most :data:`RESOLUTION_LIMIT` and its
sanity order holds; otherwise the table says it cannot, and why.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

RESOLUTION_LIMIT = 0.01  # a level whose resolution is above this is not used to rank methods
CEILING = "fedavg"  # memory-unaware, full LoRA on every client
EXCLUDER = "exclusive"  # only the clients that can hold full LoRA
CEILING_TOLERANCE_SE = 1.0  # the ceiling may sit this many standard errors below a memory-aware strategy
CLEARLY_BELOW_SE = 2.0  # on an exclusive_below level, exclusive is at least this many standard errors below the ceiling


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any]:
    """``a - b`` on the seeds both have: the seeds, the differences, their mean and its standard error
    (sd / sqrt(n); None with fewer than two paired seeds, where there is no spread to estimate)."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs) if diffs else None
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "se": se}


def resolution(values: Mapping[str, Mapping[int, float]]) -> dict[str, Any]:
    """Every pair of strategies' paired difference (in the order given: earlier - later) and the median of
    their standard errors (None: no pair has two seeds)."""
    names = list(values)
    pairs = [{"a": a, "b": b, **paired_difference(values[a], values[b])} for i, a in enumerate(names) for b in names[i + 1:]]
    errors = [p["se"] for p in pairs if p["se"] is not None]
    return {"pairs": pairs, "median_se": statistics.median(errors) if errors else None, "pairs_with_se": len(errors)}


def sanity_order(values: Mapping[str, Mapping[int, float]], memory_aware: Mapping[str, bool],
                 exclusive_below: bool = False) -> dict[str, Any]:
    """The checks of the sanity order (module docstring), each with its paired difference and verdict
    (``ok`` None: it cannot be checked, fewer than two paired seeds), and the problems as sentences."""
    checks, problems = [], []
    if CEILING not in values:
        problems.append(f"`{CEILING}` was not run, so the sanity order (the memory-unaware ceiling at or above every "
                        "memory-aware strategy) cannot be checked")
        return {"checks": checks, "problems": problems, "ok": False}
    for name in values:
        if name == CEILING or not memory_aware.get(name, True):
            continue
        diff = paired_difference(values[CEILING], values[name])
        ok = None if diff["se"] is None else diff["mean"] >= -CEILING_TOLERANCE_SE * diff["se"]
        checks.append({"check": "ceiling", "strategy": name, **diff, "ok": ok})
        if ok is False:
            problems.append(f"`{CEILING}` is below `{name}` by {-diff['mean']:.4f}, more than "
                            f"{CEILING_TOLERANCE_SE:g} standard error ({diff['se']:.4f})")
    if exclusive_below:
        if EXCLUDER not in values:
            problems.append(f"the level is marked exclusive-below, but `{EXCLUDER}` was not run")
        else:
            diff = paired_difference(values[CEILING], values[EXCLUDER])
            bar = None if diff["se"] is None else max(CLEARLY_BELOW_SE * diff["se"], RESOLUTION_LIMIT)
            ok = None if bar is None else diff["mean"] > bar
            checks.append({"check": "exclusive_below", "strategy": EXCLUDER, **diff, "bar": bar, "ok": ok})
            if ok is False:
                problems.append(f"`{EXCLUDER}` is not clearly below `{CEILING}`: the paired difference {diff['mean']:.4f} "
                                f"is not above max({CLEARLY_BELOW_SE:g} standard errors, {RESOLUTION_LIMIT:g}) = {bar:.4f}")
    unchecked = [c["strategy"] for c in checks if c["ok"] is None]
    if unchecked:
        problems.append(f"fewer than two seeds pair `{CEILING}` with {', '.join(f'`{s}`' for s in unchecked)}: "
                        "the sanity order cannot be checked")
    return {"checks": checks, "problems": problems, "ok": not problems}


def default_reference(strategies: Sequence[str], configured: str | None = None) -> str:
    """The strategy every other one is paired against in the table: ``fedavg`` (the ceiling) if it ran,
    else the config's strategy if it ran, else the first."""
    for name in (CEILING, configured):
        if name in strategies:
            return name
    return strategies[0]


def assess(values: Mapping[str, Mapping[int, float]], memory_aware: Mapping[str, bool], *,
           reference: str, exclusive_below: bool = False) -> dict[str, Any]:
    """Resolution, sanity order, each strategy's paired difference with ``reference`` (strategy -
    reference), and the verdict: ``can_rank`` and, where it cannot, the reasons."""
    if reference not in values:
        raise ValueError(f"reference strategy {reference!r} is not among the compared: {', '.join(values)}")
    measured = resolution(values)
    sanity = sanity_order(values, memory_aware, exclusive_below)
    reasons = []
    if measured["median_se"] is None:
        reasons.append("fewer than two seeds pair any two strategies, so the resolution is unknown")
    elif measured["median_se"] > RESOLUTION_LIMIT:
        reasons.append(f"its resolution {measured['median_se']:.4f} is above {RESOLUTION_LIMIT:g}")
    reasons += sanity["problems"]
    return {
        **measured,
        "limit": RESOLUTION_LIMIT,
        "reference": reference,
        "vs_reference": {name: paired_difference(values[name], values[reference]) for name in values if name != reference},
        "sanity": sanity,
        "exclusive_below": exclusive_below,
        "can_rank": not reasons,
        "reasons": reasons,
    }


def assess_summary(summary: Mapping[str, Any], *, reference: str | None = None, configured: str | None = None,
                   exclusive_below: bool = False) -> dict[str, Any]:
    """:func:`assess` on a comparison's summary (:func:`~fedpilot.comparison.records.summarise`): each run's
    late accuracy by strategy and seed, each strategy's memory-awareness; ``reference`` None: the
    :func:`default_reference` (``configured``: the config's strategy)."""
    strategies = list(summary["strategies"])
    values = {s: {r["seed"]: r["late_accuracy"] for r in summary["runs"] if r["strategy"] == s} for s in strategies}
    aware = {s: row["memory_aware"] for s, row in summary["summary"].items()}
    return {"late": summary.get("late"),
            **assess(values, aware, reference=reference or default_reference(strategies, configured), exclusive_below=exclusive_below)}
