"""``fedpilot plan``: round 1's allocation before any training: budgets, modules (and their LoRA ranks
where a strategy chooses them), predicted memory, value."""

from __future__ import annotations

from typing import Any

from fedpilot.config import Config
from fedpilot.core.keys import module_id, parse_module
from fedpilot.core.sizes import mib
from fedpilot.families import MODELS
from fedpilot.federation import build_federation


def make_plan(config: Config, progress: bool = True) -> dict[str, Any]:
    """What the strategy would have each client train in round 1 (sampling and scoring included):
    the server's own :meth:`~fedpilot.runtime.server.Server.plan_round`, stopped before training."""
    federation = build_federation(config, progress)
    server = federation.server
    plan = server.plan_round(1, federation.transport())
    cost_model = federation.cost_model
    letters = MODELS[config.model.name].family.letters
    return {
        "strategy": config.strategy,
        "round": 1,
        "num_layers": federation.model.num_layers,
        "rank": config.model.lora.rank,
        "targets": list(config.model.lora.targets),
        "letters": {t: letters[t] for t in config.model.lora.targets},
        "full_lora_bytes": cost_model.full(),
        "clients": [
            {
                "cid": info.cid,
                "num_samples": info.num_samples,
                "budget_bytes": info.budget_bytes,
                "modules": list(plan.assignments[info.cid].modules) if info.cid in plan.assignments else [],
                "ranks": dict(plan.assignments[info.cid].ranks) if info.cid in plan.assignments else {},
                "checkpointing": info.cid in plan.assignments and plan.assignments[info.cid].checkpointing,
                "micro_batch": plan.assignments[info.cid].micro_batch if info.cid in plan.assignments else 0,
                "predicted_bytes": plan.assignments[info.cid].predicted_bytes(cost_model) if info.cid in plan.assignments else None,
                "value": server.strategy.allocation_value(info.cid),
            }
            for info in plan.selected
        ],
    }


def render_plan(plan: dict[str, Any]) -> str:
    """A layer x client map (top layer first; letters are the LoRA targets trained) and a summary per client."""
    clients, targets = plan["clients"], plan["targets"]
    width = max(len(targets), 6) + 1
    letters = plan["letters"]
    legend = ", ".join(f"{letters[t]}={t}" for t in targets)
    lines = [
        f"plan of {plan['strategy']} for round {plan['round']}: {len(clients)} clients; full LoRA needs "
        f"{mib(plan['full_lora_bytes']):.1f} MiB; {legend}, '.' = frozen, blank column = sits out",
        "",
        "layer  " + "".join(f"{'c' + str(c['cid']):>{width}}" for c in clients),
    ]
    for layer in reversed(range(plan["num_layers"])):
        cells = []
        for client in clients:
            chosen = {target for at, target in map(parse_module, client["modules"]) if at == layer}
            cell = "".join(letters[t] if t in chosen else "." for t in targets) if client["modules"] else ""
            cells.append(f"{cell:>{width}}")
        lines.append(f"{layer:>5}  " + "".join(cells))

    def row(label: str, values: list[str]) -> str:
        return f"{label:<7}" + "".join(f"{v:>{width}}" for v in values)

    if any(c["ranks"] for c in clients):
        lines += _rank_map(plan)
    lines += [
        "",
        row("budget", [f"{mib(c['budget_bytes']):.0f}" if c["budget_bytes"] else "inf" for c in clients]),
        row("needs", [f"{mib(c['predicted_bytes']):.1f}" if c["predicted_bytes"] is not None else "-" for c in clients]),
        row("value", [f"{c['value']:.3f}" if c["value"] is not None else "-" for c in clients]),
    ]
    checkpointed = any(c.get("checkpointing") for c in clients)
    if checkpointed:
        lines.append(row("ckpt", ["yes" if c.get("checkpointing") else "no" for c in clients]))
    micro = any(c.get("micro_batch") for c in clients)
    if micro:
        lines.append(row("micro", [str(c["micro_batch"]) if c.get("micro_batch") else "-" for c in clients]))
    lines.append("(MiB; 'needs' is the predicted peak of a training step" + (
        ", checkpointed where ckpt says yes (activations recomputed in backward)" if checkpointed else ""
    ) + (", in micro-batches of the rows micro says ('-': the whole batch)" if micro else "") + "; value is the allocation's IG-score sum)")
    return "\n".join(lines)


def _rank_map(plan: dict[str, Any]) -> list[str]:
    """The LoRA rank of every trained module (layer x client; per cell the targets in the legend's order,
    '.' = frozen), for strategies that choose ranks."""
    clients, targets, rank = plan["clients"], plan["targets"], plan.get("rank")
    cells = {}
    for client in clients:
        trained = dict.fromkeys(client["modules"], rank) | dict(client["ranks"])
        cells[client["cid"]] = {
            layer: ",".join(str(trained[module_id(layer, t)]) if module_id(layer, t) in trained else "." for t in targets)
            for layer in range(plan["num_layers"])
        } if client["modules"] else {}
    width = max([len(c) for per in cells.values() for c in per.values()] + [6]) + 1
    lines = ["", f"LoRA rank per module (global rank {rank}; per cell: {', '.join(targets)}; '.' = frozen)", "",
             "layer  " + "".join(f"{'c' + str(c['cid']):>{width}}" for c in clients)]
    for layer in reversed(range(plan["num_layers"])):
        lines.append(f"{layer:>5}  " + "".join(f"{cells[c['cid']].get(layer, ''):>{width}}" for c in clients))
    return lines
