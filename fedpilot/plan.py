"""``fedpilot plan``: round 1's allocation before any training: budgets, modules, predicted memory, value."""

from __future__ import annotations

from typing import Any

from fedpilot.config import Config
from fedpilot.memsize import mib
from fedpilot.models import module_layer
from fedpilot.simulation import build_federation, run_scoring

TARGET_LETTERS = {"query": "q", "key": "k", "value": "v", "attn_out": "o", "ffn_in": "i", "ffn_out": "f"}


def make_plan(config: Config, progress: bool = True) -> dict[str, Any]:
    """What the strategy would have each client train in round 1 (scoring phase included)."""
    federation = build_federation(config, progress)
    server = federation.server
    selected = server.select_clients(1)
    run_scoring(federation, 1, selected)
    assignment = server.strategy.configure_train(1, selected, server.global_tensors)
    cost_model = federation.cost_model
    return {
        "strategy": config.strategy,
        "round": 1,
        "num_layers": federation.model.num_layers,
        "targets": list(config.model.lora.targets),
        "full_lora_bytes": cost_model.full(),
        "clients": [
            {
                "cid": info.cid,
                "num_samples": info.num_samples,
                "budget_bytes": info.budget_bytes,
                "modules": assignment.get(info.cid, []),
                "predicted_bytes": cost_model.cost(assignment[info.cid]) if info.cid in assignment else None,
                "value": server.strategy.allocation_value(info.cid),
            }
            for info in selected
        ],
    }


def render_plan(plan: dict[str, Any]) -> str:
    """A layer x client map (top layer first; letters are the LoRA targets trained) and a summary per client."""
    clients, targets = plan["clients"], plan["targets"]
    width = max(len(targets), 6) + 1
    legend = ", ".join(f"{TARGET_LETTERS[t]}={t}" for t in targets)
    lines = [
        f"plan of {plan['strategy']} for round {plan['round']}: {len(clients)} clients; full LoRA needs "
        f"{mib(plan['full_lora_bytes']):.1f} MiB; {legend}, '.' = frozen, blank column = sits out",
        "",
        "layer  " + "".join(f"{'c' + str(c['cid']):>{width}}" for c in clients),
    ]
    for layer in reversed(range(plan["num_layers"])):
        cells = []
        for client in clients:
            chosen = {m.split(".", 1)[1] for m in client["modules"] if module_layer(m) == layer}
            cell = "".join(TARGET_LETTERS[t] if t in chosen else "." for t in targets) if client["modules"] else ""
            cells.append(f"{cell:>{width}}")
        lines.append(f"{layer:>5}  " + "".join(cells))

    def row(label: str, values: list[str]) -> str:
        return f"{label:<7}" + "".join(f"{v:>{width}}" for v in values)

    lines += [
        "",
        row("budget", [f"{mib(c['budget_bytes']):.0f}" if c["budget_bytes"] else "inf" for c in clients]),
        row("needs", [f"{mib(c['predicted_bytes']):.1f}" if c["predicted_bytes"] is not None else "-" for c in clients]),
        row("value", [f"{c['value']:.3f}" if c["value"] is not None else "-" for c in clients]),
        "(MiB; 'needs' is the predicted peak of a training step; value is the allocation's IG-score sum)",
    ]
    return "\n".join(lines)
