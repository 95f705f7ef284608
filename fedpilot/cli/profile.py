"""``fedpilot profile``: the cost model of a config as a per-layer table (MiB) or JSON."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedpilot.config import Config
from fedpilot.core.keys import module_id
from fedpilot.core.sizes import mib
from fedpilot.data.datasets import DATASETS
from fedpilot.families import MODELS
from fedpilot.planning.costmodel import CostModel


def corpus_label_names(config: Config) -> list[str]:
    """The class list of the config's corpus: a registered one's, or the train split's labels of the user's files."""
    if config.data.dataset in DATASETS:
        return DATASETS[config.data.dataset]().label_names
    from fedpilot.data.files import cached_file_corpus

    return cached_file_corpus(config.data).label_names


def model_description(config: Config) -> dict[str, Any]:
    """What the model is: its family (inferred from config.model_type for a folder), where its layers sit,
    every LoRA target with its submodule, and the targets the config trains."""
    spec = MODELS[config.model.name]
    family = spec.family
    return {
        "model": spec.name,
        "model_type": spec.model_type or "bundled",
        "family": family.name,
        "layer_prefix": family.layer_prefix,
        "targets": {t: f"{family.layer_prefix}.<layer>.{path}" for t, path in family.targets.items()},
        "default_targets": list(family.default_targets),
        "trained_targets": list(config.model.lora.targets),
        "head": list(family.head_modules),
    }


def analytic_cost_model(config: Config) -> CostModel:
    """The family's analytic cost model of ``config``: from the model's config.json alone."""
    spec = MODELS[config.model.name]
    num_labels = len(corpus_label_names(config))
    # instruction tuning keeps the logits of the response positions (data.max_response_length + 1), not of one answer token
    extra = {"logit_positions": config.data.max_response_length + 1} if config.task == "instruction" else {}
    return spec.family.analytic(spec, config.model, num_labels, config.train.batch_size, config.data.max_length, config.train.optimizer, **extra)


def profile_memory(config: Config, analytic: bool = False, progress: bool = True) -> dict[str, Any]:
    """The cost model for ``config``'s model, batch size, sequence length and optimiser, in MiB."""
    if analytic:
        cost_model = analytic_cost_model(config)
        cached = False
    else:
        # The torch side, only when a forward pass is wanted (--analytic must stay light).
        from fedpilot.families.encoding import load_split
        from fedpilot.memory.calibrate import decompose_step, load_or_calibrate
        from fedpilot.runtime.device import build_model
        from fedpilot.runtime.messages import TrainInstructions

        data = load_split(config.data, config.model.name, config.seed, task=config.task)
        model = build_model(config.model, num_labels=len(data.label_names), seed=config.seed, task=config.task)
        batch = data.train.subset(np.arange(min(config.train.batch_size, len(data.train))))
        instructions = TrainInstructions.from_settings(config.train, config.seed)
        cost_model, cached = load_or_calibrate(model, batch, instructions, progress=progress)
        breakdown = decompose_step(model, model.modules, batch, instructions)
        return {"model": model_description(config)} | describe(cost_model, config.model.lora.targets, cached) | {
            "full_lora_step_mib": {part: round(mib(size), 2) for part, size in breakdown.to_dict().items()}
        }
    return {"model": model_description(config)} | describe(cost_model, config.model.lora.targets, cached)


def describe(cost_model: CostModel, targets: tuple[str, ...], cached: bool) -> dict[str, Any]:
    cheapest, cheapest_cost = cost_model.cheapest()
    return {
        "source": cost_model.source,
        "cached": cached,
        "settings": dict(cost_model.settings),
        "fixed_mib": round(mib(cost_model.fixed), 2),
        "layers": [
            {
                "layer": layer,
                "activation_mib": round(mib(activation), 2),
                "modules_mib": {t: round(mib(cost_model.module[module_id(layer, t)]), 2) for t in targets},
            } | ({} if cost_model.stage_extra is None else {"stage_extra_mib": [round(mib(e), 2) for e in cost_model.stage_extra[layer]]})
            for layer, activation in enumerate(cost_model.activation)
        ],
        "full_lora_mib": round(mib(cost_model.full()), 2),
        "cheapest": {"modules": [cheapest], "mib": round(mib(cheapest_cost), 2)},
    }


def render_profile(report: dict[str, Any]) -> str:
    settings = report["settings"]
    origin = "estimated from the model config" if report["source"] == "analytic" else (
        "calibrated on the real model" + (" (from cache)" if report["cached"] else "")
    )
    targets = list(report["layers"][0]["modules_mib"])
    lines = []
    if "model" in report:
        about = report["model"]
        lines += [
            f"model {about['model']}: {about['model_type']}, family {about['family']}, head: {', '.join(about['head']) or 'none'}",
            "LoRA targets (* trained by this config, default " + ", ".join(about["default_targets"]) + "):",
            *(f"  {'*' if t in about['trained_targets'] else ' '} {t:<10} {path}" for t, path in about["targets"].items()),
            "",
        ]
    staged = "stage_extra_mib" in report["layers"][0]
    lines += [
        f"memory model of {settings.get('model')}: batch {settings.get('batch_size')}, sequence {settings.get('seq_len')}, "
        f"{settings.get('optimizer')}; {origin}",
        "cost(S) = fixed + activation[lowest layer of S] + " + ("extra[that layer, stage of its lowest module] + " if staged else "")
        + "sum of module costs   (MiB)",
        "",
        f"fixed (weights, head, forward buffers): {report['fixed_mib']:.1f}",
        "",
        f"{'layer':>5}  {'activation':>10}  " + "  ".join(f"{t:>8}" for t in targets) + ("  extra by stage" if staged else ""),
    ]
    for row in report["layers"]:
        lines.append(
            f"{row['layer']:>5}  {row['activation_mib']:>10.1f}  " + "  ".join(f"{row['modules_mib'][t]:>8.2f}" for t in targets)
            + ("  " + " ".join(f"{e:.1f}" for e in row["stage_extra_mib"]) if staged else "")
        )
    lines += [
        "",
        f"full LoRA: {report['full_lora_mib']:.1f} MiB",
        f"cheapest trainable set: {', '.join(report['cheapest']['modules'])} at {report['cheapest']['mib']:.1f} MiB",
    ]
    if "full_lora_step_mib" in report:
        parts = report["full_lora_step_mib"]
        lines += [
            "",
            f"measured full-LoRA step: peak {parts['peak']:.1f} = frozen weights {parts['frozen_weights']:.1f} "
            f"+ trainable {parts['trainable_params']:.2f} + gradients {parts['gradients']:.2f} "
            f"+ optimiser state {parts['optimizer_state']:.2f} + saved for backward {parts['saved_activations']:.1f} "
            f"+ transient {parts['transient']:.1f}",
        ]
    return "\n".join(lines)
