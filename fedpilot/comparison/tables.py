"""A comparison's outputs: the Markdown table with its notes (``comparison.md``), ``comparison.json``
and the three plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedpilot.comparison.plan import _options_for
from fedpilot.comparison.plots import plot_accuracy, plot_allocation, plot_memory
from fedpilot.comparison.records import LATE_EVALUATIONS, evaluated_split
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
            "pathological": f"{partition['classes_per_client']} labels per client"}.get(partition["kind"], partition["kind"])
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
    lines = [
        "# Strategy comparison",
        "",
        f"Config: {summary['config_source']}"
        + (f", with preset `{preset['name']}` ({preset['description']})" if preset else "")
        + f". {describe_config(summary['config'])}.",
        f"Seeds {seeds}: for each seed every strategy ran on the same data split, partition, budgets and seed.",
        "",
        f"Made by: `{summary['command']}`.",
        "",
        target_line,
        "",
        f"| strategy | final accuracy | best accuracy | last-{LATE_EVALUATIONS} mean | final macro-F1 | rounds to target | client-rounds trained / planned (lost) "
        "| peak / budget, mean | peak / budget, max | budget violations | upload MiB / round | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    unaware, spread = [], len(summary["seeds"]) > 1
    for strategy, row in summary["summary"].items():
        mark = "" if row["memory_aware"] else " †"
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
        lines.append(
            f"| `{strategy}`{mark} | {_pm(row['final_accuracy'], spread)} | {_pm(row['best_accuracy'], spread)} "
            f"| {_pm(row['late_accuracy'], spread)} | {_pm(row['final_macro_f1'], spread)} "
            f"| {to_target} | {cr['trained']} / {cr['planned']} ({cr['lost']}) | {_ratio(row['peak_over_budget']['mean'])} "
            f"| {_ratio(row['peak_over_budget']['max'])} | {row['budget_violations']} | {row['upload_mib_per_round']:.2f} "
            f"| {row['wall_seconds']['mean']:.0f} |"
        )
    lines += [
        "",
        f"- Accuracies are on the {evaluated_split(summary)} split, "
        + ("mean ± sample standard deviation over seeds" if spread else "one seed, so no spread over seeds is shown")
        + "; best is the highest of rounds 1 to R; "
        f"last-{LATE_EVALUATIONS} mean is the mean of the last {LATE_EVALUATIONS} evaluated rounds (the final one included), "
        "steadier than the final round where a round's few sampled clients swing the accuracy.",
        "- Rounds to target: the first round whose accuracy reaches the target, mean over the seeds that reached it.",
        "- Client-rounds are totals over seeds and rounds: planned (what the config asks each round: "
        "clients_per_round, or every client), trained (a valid update arrived), and lost (planned but not trained: "
        "a client the strategy leaves out because nothing it trains fits its budget, given no work, failed, or rejected).",
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
