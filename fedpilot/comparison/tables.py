"""A comparison's outputs: the Markdown table with its notes (``comparison.md``), ``comparison.json``
and the three plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedpilot.comparison.plan import _options_for
from fedpilot.comparison.plots import plot_accuracy, plot_allocation, plot_memory
from fedpilot.comparison.records import LATE_EVALUATIONS, evaluated_split
from fedpilot.comparison.resolution import CEILING, CEILING_TOLERANCE_SE, CLEARLY_BELOW_SE, EXCLUDER, RESOLUTION_LIMIT
from fedpilot.core.files import write_json
from fedpilot.core.sizes import mib, parse_memory


def write_outputs(out_dir: Path, summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    plot_accuracy(out_dir / "accuracy.png", summary)
    plot_memory(out_dir / "memory.png", summary, results)
    summary["allocation_plot"] = plot_allocation(out_dir / "allocation.png", summary, results)
    write_json(out_dir / "comparison.json", summary)
    (out_dir / "comparison.md").write_text(render_markdown(summary, summary["allocation_plot"]))


def describe_config(config: dict[str, Any]) -> str:
    """One sentence on what every run of the comparison shares."""
    model, data, fed, train = config["model"], config["data"], config["federation"], config["train"]
    budgets = fed["budgets"]

    def size(value: Any) -> str:  # ints (bytes) or sizes with their unit, as the config writes them
        return f"{mib(value if isinstance(value, int) else parse_memory(value)):g} MiB"

    if budgets is None:
        memory = "no memory budgets"
    elif isinstance(budgets, dict):
        memory = "memory tiers " + ", ".join(f"{t['fraction']:.0%} at {size(t['memory'])}" for t in budgets["tiers"])
    elif isinstance(budgets, list):
        memory = "budgets " + ", ".join(size(b) for b in budgets)
    else:
        memory = f"every client {size(budgets)}"
    partition = data["partition"]
    skew = {"iid": "IID", "dirichlet": f"Dirichlet({partition['alpha']:g}) labels",
            "pathological": f"{partition['classes_per_client']} labels per client",
            "label-tiers": "label mix by client tier (shares " + "; ".join(
                f"{f:.0%}: {'/'.join(f'{x:g}' for x in row)}" for f, row in zip(partition.get("tier_fractions") or (), partition.get("tier_labels") or ())
            ) + ")"}.get(partition["kind"], partition["kind"])
    samples = "all samples" if data["max_samples"] is None else f"{data['max_samples']} samples"
    extras = []  # settings away from their defaults that change what every run learns
    if train.get("logit_adjustment"):
        extras.append(f"logit adjustment tau={train['logit_adjustment']:g}")
    if fed.get("server_lr", 1.0) != 1.0:
        extras.append(f"server learning rate {fed['server_lr']:g}")
    return (
        f"{model['name']}, LoRA r={model['lora']['rank']} on {'/'.join(model['lora']['targets'])}, {data['dataset']} "
        f"({samples}, {data['test_fraction']:.0%} test), {fed['num_clients']} clients, {skew}, "
        f"{fed['rounds']} rounds x {train['local_steps']} local steps, batch {train['batch_size']}"
        f"{''.join(', ' + e for e in extras)}, "
        f"sequence {data['max_length']}; {memory}; {fed['clients_per_round'] or fed['num_clients']} clients sampled per round"
    )


def _pm(stat: dict[str, Any], spread: bool = True) -> str:
    """Mean ± sample std; the mean alone where ``spread`` is False (one seed: no spread to show)."""
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if spread else f"{stat['mean']:.3f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _paired(diff: dict[str, Any] | None) -> str:
    """A seed-paired difference: mean ± its standard error (the mean alone for one seed)."""
    if diff is None:
        return "(reference)"
    if diff["mean"] is None:
        return "n/a"
    return f"{diff['mean']:+.3f}" + ("" if diff["se"] is None else f" ± {diff['se']:.3f}")


def resolution_lines(summary: dict[str, Any]) -> list[str]:
    """The comparison's resolution, sanity order and verdict (:mod:`fedpilot.comparison.resolution`), as
    Markdown lines; none for a summary made before comparisons measured them."""
    assessed = summary.get("resolution")
    if assessed is None:
        return []
    late = assessed.get("late") or summary.get("late", LATE_EVALUATIONS)
    median = assessed["median_se"]
    pairs = assessed.get("pairs_with_se", len(assessed["pairs"]))
    measured = "unknown (no two strategies share two seeds)" if median is None else f"{median:.4f}"
    lines = [
        f"- **Resolution {measured}**: the median, over the {pairs} pair{'s' if pairs != 1 else ''} of strategies that share "
        "two seeds or more, of the standard error of the "
        f"seed-paired difference of the last-{late} mean (per seed the difference A - B; its sample standard deviation "
        f"over sqrt(seeds)); a level ranks methods only at {RESOLUTION_LIMIT:g} or below.",
    ]
    sanity = assessed["sanity"]
    ceiling = [c for c in sanity["checks"] if c["check"] == "ceiling"]
    if ceiling:
        held = [c for c in ceiling if c["ok"]]
        lines.append(
            f"- **Sanity order**: `{CEILING}` (memory-unaware) at or above every memory-aware strategy within "
            f"{CEILING_TOLERANCE_SE:g} standard error: {len(held)} of {len(ceiling)} hold"
            + "".join(f"; `{c['strategy']}` {'unknown' if c['ok'] is None else 'fails'} ({_paired(c)})" for c in ceiling if not c["ok"])
            + "."
        )
    for check in (c for c in sanity["checks"] if c["check"] == "exclusive_below"):
        bar = "unknown" if check["bar"] is None else f"{check['bar']:.4f}"
        verdict = {True: "holds", False: "fails", None: "unknown"}[check["ok"]]
        lines.append(f"- This level is marked exclusive-below: `{CEILING}` - `{EXCLUDER}` = {_paired(check)} must exceed "
                     f"max({CLEARLY_BELOW_SE:g} standard errors, {RESOLUTION_LIMIT:g}) = {bar}: {verdict}.")
    if assessed["can_rank"]:
        lines.append(f"- **This level can rank methods** at its resolution (differences below about {2 * median:.3f} are within two "
                     "standard errors).")
    else:
        lines.append("- **This level cannot rank methods**: " + "; ".join(assessed["reasons"]) + ".")
    return lines


def render_markdown(summary: dict[str, Any], allocations: dict[str, Any] | None = None) -> str:
    target = summary["target"]
    if target["source"] == "default":
        target_line = (f"Target accuracy {target['accuracy']:.3f}: the default, {target['rule']} "
                       f"(`{target['from_strategy']}`, {target['best_mean_final_accuracy']:.3f}).")
    else:
        target_line = f"Target accuracy {target['accuracy']:.3f}, given by --target."
    trivial = target.get("trivial", False)
    if "majority_accuracy" in target:
        target_line += f" Predicting the most frequent class scores {target['majority_accuracy']:.3f} on the evaluated split" + (
            ": the target is no higher, so reaching it says nothing and rounds to target are not shown (give --target above it)."
            if trivial else "."
        )
    seeds = ", ".join(map(str, summary["seeds"]))
    preset = summary.get("preset")
    late = summary.get("late", LATE_EVALUATIONS)
    assessed = summary.get("resolution")
    reference = assessed["reference"] if assessed else None
    vs_reference = assessed["vs_reference"] if assessed else {}
    lines = [
        "# Strategy comparison",
        "",
        f"Config: {summary['config_source']}"
        + (f", with preset `{preset['name']}` ({preset['description']})" if preset else "")
        + f". {describe_config(summary['config'])}.",
        f"Seeds {seeds}: for each seed every strategy ran on the same data split, partition, budgets and seed.",
        *([f"**Partial: {len(summary['missing'])} runs have not finished and are not in this table** ({', '.join(summary['missing'])}); "
           "a strategy with fewer seeds names them, and each paired difference is over the seeds both strategies finished."]
          if summary.get("missing") else []),
        "",
        f"Made by: `{summary['command']}`.",
        "",
        target_line,
        "",
        f"| strategy | final accuracy | best accuracy | last-{late} mean | last-{late} - `{reference}`, paired | final macro-F1 "
        "| rounds to target | client-rounds trained / planned (lost) | coverage "
        "| peak / budget, mean | peak / budget, max | budget violations | upload MiB / round | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    unaware, spread = [], len(summary["seeds"]) > 1
    for strategy, row in summary["summary"].items():
        mark = "" if row["memory_aware"] else " †"
        if summary.get("missing") and row["seeds"] != summary["seeds"]:  # a partial report: this strategy has not finished every seed
            mark += f" (seed{'s' if len(row['seeds']) > 1 else ''} {', '.join(map(str, row['seeds']))})"
        if not row["memory_aware"]:
            unaware.append(strategy)
        reach = row["rounds_to_target"]
        if trivial:
            to_target = "n/a"
        elif reach["reached"] == 0:
            to_target = "not reached"
        else:
            to_target = f"{reach['mean']:.1f}" + ("" if reach["reached"] == reach["runs"] else f" ({reach['reached']} of {reach['runs']} seeds)")
        cr = row["client_rounds"]
        covered = row.get("coverage", {}).get("mean")
        spread_here = spread and (len(row["seeds"]) > 1 or not summary.get("missing"))  # a partial report's one-seed row: no spread
        lines.append(
            f"| `{strategy}`{mark} | {_pm(row['final_accuracy'], spread_here)} | {_pm(row['best_accuracy'], spread_here)} "
            f"| {_pm(row['late_accuracy'], spread_here)} | {_paired(vs_reference.get(strategy)) if assessed else 'n/a'} "
            f"| {_pm(row['final_macro_f1'], spread_here)} "
            f"| {to_target} | {cr['trained']} / {cr['planned']} ({cr['lost']}) | {_ratio(covered)} "
            f"| {_ratio(row['peak_over_budget']['mean'])} "
            f"| {_ratio(row['peak_over_budget']['max'])} | {row['budget_violations']} | {row['upload_mib_per_round']:.2f} "
            f"| {row['wall_seconds']['mean']:.0f} |"
        )
    lines += [
        "",
        f"- Accuracies are on the {evaluated_split(summary)} split, "
        + ("mean ± sample standard deviation over seeds" if spread else "one seed, so no spread over seeds is shown")
        + "; best is the highest of rounds 1 to R; "
        f"last-{late} mean is the mean of the last {late} evaluated rounds (the final one included), "
        "steadier than the final round where a round's few sampled clients swing the accuracy; "
        f"last-{late} - `{reference}`, paired: per seed the strategy's last-{late} mean minus `{reference}`'s, "
        "mean over the seeds both have ± its standard error.",
        "- Rounds to target: the first round whose accuracy reaches the target, mean over the seeds that reached it.",
        "- Client-rounds are totals over seeds and rounds: planned (what the config asks each round: "
        "clients_per_round, or every client), trained (a valid update arrived), and lost (planned but not trained: "
        "a client the strategy leaves out because nothing it trains fits its budget, given no work, failed, or rejected).",
        "- Coverage: the share of the federation's training rows that reached the global model (rows of the clients with "
        "at least one accepted update in an applied round, over all clients' rows; mean over seeds): a strategy that "
        "never trains some clients, or leaves them out of its sampling, loses their rows.",
        "- Peak / budget: each trained client-round's peak memory measured at the allocator over its budget; mean and max "
        "over client-rounds. Budget violations: client-rounds (training or scoring) whose measured peak exceeded the budget, "
        "total over seeds.",
    ]
    calibrated = [r["name"] for r in summary["runs"] if not r["calibration_cached"]]
    if calibrated:
        lines.append(f"- Wall time includes calibrating the memory model (not yet cached) in {', '.join(f'`{n}`' for n in calibrated)}.")
    if unaware:
        lines.append(f"- † memory-unaware: {', '.join(f'`{s}`' for s in unaware)} ignores the budgets; its violations show what would fail on real devices.")
    options = summary["config"].get("strategy_options") or {}
    if options:
        given = sorted({r["strategy"] for r in summary["runs"] if r["strategy"] in _accepting(summary, options)})
        lines.append(f"- `strategy_options` {json.dumps(options)} went to {', '.join(f'`{s}`' for s in given) or 'no strategy'}; "
                     "the others ran with their defaults.")
    if allocations is not None:
        same = allocations["uniform"]
        if same:
            lines.append(f"- allocation.png leaves out {', '.join(f'`{s}`' for s in same)}: every client-round trained the same modules.")
    verdict = resolution_lines(summary)
    if verdict:
        lines += ["", *verdict]
    lines += [
        "",
        f"![{evaluated_split(summary)} accuracy per round, mean over seeds with the min-max band](accuracy.png)",
        "",
        "![measured peak memory against each client's budget](memory.png)",
        "",
        "![how often each client trained each layer](allocation.png)",
    ]
    return "\n".join(lines) + "\n"


def _accepting(summary: dict[str, Any], options: dict[str, Any]) -> set[str]:
    return {s for s in summary["strategies"] if _options_for(s, options)}
