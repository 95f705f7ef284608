"""A comparison's plots: accuracy per round, measured peaks against budgets, and how often each
client trained each layer. matplotlib is imported when a plot is drawn."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from fedpilot.comparison.records import evaluated_split
from fedpilot.core.keys import module_layer
from fedpilot.core.sizes import mib


def plot_accuracy(path: Path, summary: dict[str, Any]) -> None:
    """Mean test accuracy per round for each strategy, with the min-max band over seeds."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from fedpilot.config import Config

    flagship = Config.model_fields["strategy"].default  # the config's default strategy is drawn thicker
    fig, axis = plt.subplots(figsize=(10.5, 4.8))
    tab20 = plt.get_cmap("tab20").colors
    colors = tab20[0::2] + tab20[1::2]  # 20 distinct colours, the strong ones first: the 15 strategies never share one
    for index, strategy in enumerate(summary["strategies"]):
        curves = [r["accuracy_curve"] for r in summary["runs"] if r["strategy"] == strategy]
        length = min(len(c) for c in curves)
        # rounds every seed evaluated (train.eval_every leaves gaps); x is the round number
        x = [i for i in range(length) if all(c[i] is not None for c in curves)]
        columns = [[c[i] for c in curves] for i in x]
        aware = summary["summary"][strategy]["memory_aware"]
        (line,) = axis.plot(x, [statistics.fmean(c) for c in columns], marker="o", markersize=3, color=colors[index % len(colors)],
                            linewidth=2.5 if strategy == flagship else 1.3,
                            linestyle="-" if aware else "--", label=strategy + ("" if aware else " (memory-unaware)"))
        if len(curves) > 1:
            axis.fill_between(x, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(), alpha=0.08)
    axis.axhline(summary["target"]["accuracy"], color="grey", linestyle=":", linewidth=1, label="target")
    seeds = summary["seeds"]
    title = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {', '.join(map(str, seeds))} (band: min-max)"
    split = evaluated_split(summary)
    axis.set(xlabel="round", ylabel=f"{split} accuracy", ylim=(0, 1.02), title=f"{split.capitalize()} accuracy, {title}")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the curves, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_memory(path: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    """Per client: its budget (black line) and each strategy's largest measured training peak (bar)."""
    import matplotlib.pyplot as plt

    strategies = summary["strategies"]
    budgets: dict[int, int | None] = {}
    peaks: dict[str, dict[int, int]] = {s: {} for s in strategies}
    for run in summary["runs"]:
        data = results[run["name"]]
        for client in data["clients"]:
            budgets.setdefault(client["cid"], client["budget_bytes"])
        for record in (c for r in data["rounds"][1:] for c in r["clients"]):
            if record.get("peak_bytes") is not None:
                best = peaks[run["strategy"]].get(record["cid"], 0)
                peaks[run["strategy"]][record["cid"]] = max(best, record["peak_bytes"])
    cids = sorted(budgets)
    fig, axis = plt.subplots(figsize=(max(6.0, 3.0 + (0.5 + 0.25 * len(strategies)) * len(cids)), 4.5))
    width = 0.8 / max(1, len(strategies))
    for i, strategy in enumerate(strategies):
        aware = summary["summary"][strategy]["memory_aware"]
        offsets = [cid - 0.4 + width * (i + 0.5) for cid in cids]
        axis.bar(offsets, [mib(peaks[strategy].get(cid, 0)) for cid in cids], width=width,
                 hatch=None if aware else "//", label=strategy + ("" if aware else " (memory-unaware)"))
    for cid in cids:
        if budgets[cid] is not None:
            axis.hlines(mib(budgets[cid]), cid - 0.45, cid + 0.45, colors="black", linewidth=2,
                        label="budget" if cid == next(c for c in cids if budgets[c] is not None) else None)
    axis.set(xlabel="client", ylabel="MiB", xticks=cids,
             title="Largest measured training peak per client (over rounds and seeds) against its budget")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def allocation_shares(summary: dict[str, Any], results: dict[str, dict[str, Any]], strategy: str) -> dict[str, Any]:
    """How often each client trained each layer: ``shares[layer][client]`` is the share of the strategy's
    (round, seed) pairs in which the client trained at least one module of the layer; ``module_sets`` is
    how many distinct module sets its client-rounds trained (1: the allocation never varies)."""
    runs = [r for r in summary["runs"] if r["strategy"] == strategy]
    first = results[runs[0]["name"]]
    layers = sorted({module_layer(m) for m in first["modules"]})
    cids = sorted(c["cid"] for c in first["clients"])
    counts = [[0] * len(cids) for _ in layers]
    row, column = {layer: i for i, layer in enumerate(layers)}, {cid: j for j, cid in enumerate(cids)}
    sets: set[frozenset[str]] = set()
    total = 0
    for run in runs:
        rounds = results[run["name"]]["rounds"][1:]
        total += len(rounds)
        for record in (c for r in rounds for c in r["clients"]):
            sets.add(frozenset(record["modules"]))
            for layer in {module_layer(m) for m in record["modules"]}:
                counts[row[layer]][column[record["cid"]]] += 1
    shares = [[count / max(1, total) for count in line] for line in counts]
    return {"layers": layers, "clients": cids, "shares": shares, "module_sets": len(sets)}


def plot_allocation(path: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One layer x client panel per strategy whose allocations vary; returns the maps and who was left out."""
    import matplotlib.pyplot as plt

    maps, uniform = {}, []
    for strategy in summary["strategies"]:
        allocation = allocation_shares(summary, results, strategy)
        if allocation["module_sets"] > 1:
            maps[strategy] = allocation
        else:
            uniform.append(strategy)
    if not maps:
        fig, axis = plt.subplots(figsize=(6, 2))
        axis.axis("off")
        axis.text(0.5, 0.5, "No strategy's allocations vary:\nevery client-round trained the same modules.",
                  ha="center", va="center")
    else:
        fig, axes = plt.subplots(1, len(maps), figsize=(1.5 + 3.2 * len(maps), 3.8), squeeze=False)
        image = None
        for axis, (strategy, allocation) in zip(axes[0], maps.items()):
            shares = allocation["shares"]
            image = axis.imshow(shares, origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
            axis.set(title=strategy, xlabel="client", ylabel="layer")
            axis.set_xticks(range(len(allocation["clients"])), [str(c) for c in allocation["clients"]])
            axis.set_yticks(range(len(allocation["layers"])), [str(layer) for layer in allocation["layers"]])
            if len(shares) * len(shares[0]) <= 120:
                for i, line in enumerate(shares):
                    for j, value in enumerate(line):
                        axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                                  color="white" if value < 0.6 else "black")
        fig.colorbar(image, ax=axes[0].tolist(), label="share of rounds trained (over seeds)")
        fig.suptitle("How often each client trained each layer")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return {"shown": {s: {k: v for k, v in a.items() if k != "module_sets"} for s, a in maps.items()}, "uniform": uniform}
