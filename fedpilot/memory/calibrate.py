"""Fit the cost model to measured peaks: L + 2 profiled steps, cached on disk by their settings.

Probes: the head alone (gives ``fixed``), every target of one layer for each layer l (gives
``activation[l]``), and full LoRA. What full LoRA adds over the layer-0 probe is what the modules of
layers 1..L-1 cost; it is shared between targets in proportion to their analytic sizes, which is
exact when, as in a transformer, every layer is alike.

With ``checkpointing`` (asked for by a run that plans it: ``strategy_options.checkpointing: planned``),
the same probes again with activation checkpointing on (the blocks from the probe's lowest layer up
recomputed in backward, :meth:`LoraModel.checkpointed`) give the checkpointed terms the same way:
``activation_checkpointed[l]`` from the layer probes, ``module_checkpointed`` from what checkpointed
full LoRA adds over the checkpointed layer-0 probe, shared in proportion to the modules' analytic
parameter bytes (with checkpointing a module keeps its parameters and their state, not its inputs).
A calibration without them is cached under its own key, one with them under another.

**Stages** (:attr:`ModelFamily.stages`: query, key and value read the block's input, attn_out follows
attention, the feed-forward projections follow): one more probe per probed layer and stage of the run's
targets, the stage's first target alone. Near the fixed cost the whole-layer terms misprice such small
sets (docs/memory.md, "Stages within a layer"): training 5.query alone stores the whole
block's backward, which the layer's share of the full-LoRA probe does not cover. ``stage_extra[l][0]``
is what the probe of (l, 0) measured above the whole-layer prediction of that set, or 0 when it measured
less (the layer probe, whose lowest stage is 0, fitted the whole-layer terms, so it stays priced at or above
its peak); ``stage_extra[l][s]`` of a later stage is the difference either way: a set whose lowest module sits
later in the block stops its backward earlier and may store less than the whole-layer terms say (DeBERTa's
value beside its relative-attention query and key; BERT's ffn_out at the top layer). Every probe is then
predicted at or above its measured peak, and a later stage's probe exactly. Unprobed layers of a deep model interpolate the extras like the activation terms.
L + 2 + L·S probes (S stages), with checkpointing L + 1 more, and the head-only step on one row of the batch:
the fixed cost of a micro-batch runs linearly between it and the batch's (:meth:`CostModel.at_batch`).

**Inference** (asked for by a run whose clients evaluate, ``train.evaluate: clients`` or ``both``): two
more probes, a client's evaluation pass (:func:`~fedpilot.runtime.evaluation.count_split`: every module
merged, no gradient) on the calibration batch (B rows) and on the batch twice over (2B rows), give the
affine ``inference_fixed + rows * inference_row``: exact at B rows (the default client evaluation batch,
``train.batch_size``), extrapolated linearly elsewhere. A cached calibration made without them gets them
added (the two probes alone) the first time a run asks; its other terms, and its cache key, stay as they
were, so a calibration cached by an earlier version loads unchanged. A run that does not ask gets a model
without them.

A model deeper than ``MAX_LAYER_PROBES`` layers (a decoder LLM) has only that many layers probed,
evenly spaced from the first to the last, and the peaks of the layers between them interpolated
linearly: with identical layers the activation term is linear in the number of layers that
backpropagation crosses (``benchmarks/memory_model.py`` measures the result on random sets).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm

from fedpilot.core.files import write_json
from fedpilot.core.keys import module_layer, module_target
from fedpilot.core.paths import cache_dir
from fedpilot.data.split import TensorSplit
from fedpilot.planning.costmodel import CostModel, lora_module_bytes, lora_param_bytes
from fedpilot.runtime.evaluation import count_split
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.measure import PeakMeter, StepMemory, measure_step, optimizer_tensors, release_gradients
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.training import batch_loss, make_optimizer, training_step

CALIBRATION_VERSION = 8  # 2: per-rank module terms and explicit layers; 4: frozen modules off PEFT's path, resident-based meter; 5: a former checkpointed format (its cache files exist); 6: stages; 7: signed extras of later stages; 8: the one-row probe (micro-batches)
MAX_LAYER_PROBES = 8  # deeper models: this many evenly spaced layer probes, linear in between


def probed_layers(layers: int) -> list[int]:
    """The layers whose probe is profiled: all of them, or ``MAX_LAYER_PROBES`` evenly spaced ones, first and last included."""
    if layers <= MAX_LAYER_PROBES:
        return list(range(layers))
    return sorted({round(i * (layers - 1) / (MAX_LAYER_PROBES - 1)) for i in range(MAX_LAYER_PROBES)})


def _prepare(model: LoraModel, modules: Sequence[str], batch: TensorSplit, instructions: TrainInstructions):
    model.set_ranks({})
    params = model.set_trainable(modules)
    model.peft.train()
    rows = torch.arange(len(batch))
    if not params:  # nothing trains (a family without a task head): the probe is the forward pass alone
        return None, lambda: batch_loss(model, batch, rows).item()
    optimizer = make_optimizer(params, instructions)
    training_step(model, optimizer, batch, rows)  # the optimiser state exists in every later step
    return optimizer, lambda: training_step(model, optimizer, batch, rows)


def measure_peak(
    model: LoraModel, modules: Sequence[str], batch: TensorSplit, instructions: TrainInstructions, checkpointing: bool = False
) -> int:
    """Peak bytes of a steady-state training step of ``modules`` on ``batch`` (adapter state restored after).

    Measured as a client measures its own step: the other modules folded (:meth:`LoraModel.fold_frozen`),
    with activation checkpointing when ``checkpointing`` (:meth:`LoraModel.checkpointed`), counted from
    the model's resident tensors and the optimiser state.
    """
    saved = model.state()
    try:
        model.set_ranks({})
        with model.fold_frozen(modules), model.checkpointed(modules, checkpointing):
            optimizer, step = _prepare(model, modules, batch, instructions)
            if optimizer is not None:
                release_gradients(optimizer)
            resident = [*model.resident_tensors(), *(optimizer_tensors(optimizer) if optimizer is not None else [])]
            with PeakMeter(model.device, resident=resident) as meter:
                step()
        return meter.peak_bytes
    finally:
        model.load_state(saved)


def measure_inference_peak(model: LoraModel, batch: TensorSplit, batch_size: int) -> int:
    """Peak bytes of a client's evaluation pass over ``batch`` in batches of ``batch_size`` rows (adapter state
    restored after), measured as a client measures its own (:meth:`Client.evaluate`): from the model's resident
    tensors, the merged weights counted."""
    saved = model.state()
    try:
        model.set_ranks({})
        model.set_trainable([])
        with PeakMeter(model.device, resident=model.resident_tensors()) as meter:
            count_split(model, batch, batch_size)
        return meter.peak_bytes
    finally:
        model.load_state(saved)


def inference_terms(model: LoraModel, batch: TensorSplit) -> dict[str, int]:
    """``inference_fixed`` and ``inference_row`` from passes over ``batch`` (B rows) and over it twice (2B rows)."""
    rows = len(batch)
    one = measure_inference_peak(model, batch, rows)
    two = measure_inference_peak(model, batch.subset(np.concatenate([np.arange(rows), np.arange(rows)])), 2 * rows)
    per_row = int(round((two - one) / rows))
    return {"inference_fixed": one - rows * per_row, "inference_row": per_row}


def decompose_step(model: LoraModel, modules: Sequence[str], batch: TensorSplit, instructions: TrainInstructions) -> StepMemory:
    """Peak of a steady-state step and its parts (adapter state restored after)."""
    saved = model.state()
    try:
        model.set_ranks({})
        with model.fold_frozen(modules):
            optimizer, step = _prepare(model, modules, batch, instructions)
            return measure_step(model.peft, optimizer, step, model.device)
    finally:
        model.load_state(saved)


def calibration_settings(model: LoraModel, batch_size: int, seq_len: int, optimizer: str, checkpointing: bool = False) -> dict[str, object]:
    """Everything a calibration depends on: its cache key (``checkpointing``: with the checkpointed terms)."""
    return {
        "version": CALIBRATION_VERSION,
        "model": model.settings.name,
        "base_dropout": model.settings.base_dropout,
        "lora": model.settings.lora.model_dump(mode="json", exclude={"alpha"}),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "optimizer": optimizer,
        "family": model.family_name,
        "dtype": str(next(iter(model.params.values())).dtype),
        "device": model.device.type,
        "torch": torch.__version__,
    } | ({"layer_probes": MAX_LAYER_PROBES} if model.num_layers > MAX_LAYER_PROBES else {}) | (
        {"base_deltas": True} if model.deltas else {}  # their originals and deltas are resident memory
    ) | (
        {"base_dtype": model.settings.dtype} if model.settings.dtype != "float32" else {}
    ) | ({"checkpointing": True} if checkpointing else {}) | (
        {"task": model.task} if model.task != "classification" else {}  # another loss, other logits kept
    )


def target_stages(model: LoraModel) -> dict[str, int]:
    """The stage (0, 1, ...) of each of the run's targets: the family's stages of those targets, numbered densely."""
    targets = model.settings.lora.targets
    family = model.spec.family.stages
    used = sorted({family.get(t, 0) for t in targets})
    return {t: used.index(family.get(t, 0)) for t in targets}


def calibrate(model: LoraModel, batch: TensorSplit, instructions: TrainInstructions, progress: bool = False,
              checkpointing: bool = False, inference: bool = False) -> CostModel:
    """Profile the probes on ``batch`` (the checkpointed ones too with ``checkpointing``, the evaluation passes
    with ``inference``) and fit the cost model (not cached; see :func:`load_or_calibrate`)."""
    layers = model.num_layers
    targets = model.settings.lora.targets
    probed = probed_layers(layers)
    stage_of = target_stages(model)
    stage_target = [next(t for t in targets if stage_of[t] == s) for s in range(max(stage_of.values()) + 1)]
    sets = [[f"{l}.{t}" for t in targets] for l in probed] + [list(model.modules)]
    # (name, modules, checkpointed, rows: None for the whole batch)
    probes: list[tuple[str, list[str], bool, int | None]] = [("head only", [], False, None)]
    for checkpointed_probe in (False, True) if checkpointing else (False,):
        suffix = ", checkpointed" if checkpointed_probe else ""
        names = [f"layer {l}{suffix}" for l in probed] + [f"full LoRA{suffix}"]
        probes += [(name, modules, checkpointed_probe, None) for name, modules in zip(names, sets)]
    singles = [(l, s, f"{l}.{t}") for l in probed for s, t in enumerate(stage_target)]
    probes += [(f"{m} alone", [m], False, None) for _, _, m in singles]
    if len(batch) > 1:  # with the batch's head-only probe: the fixed cost per micro-batch (last, popped below)
        probes += [("head only, one row", [], False, 1)]
    bar = tqdm(probes, desc="calibrating memory model", unit="probe", leave=False, disable=not progress)
    peaks = []
    for name, modules, checkpointed_probe, rows in bar:
        bar.set_postfix_str(name)
        peaks.append(measure_peak(model, modules, batch if rows is None else batch.subset(list(range(rows))), instructions, checkpointed_probe))
    fixed = peaks[0]
    one_row = peaks.pop() if len(batch) > 1 else None
    single_peaks = peaks[len(peaks) - len(singles):]
    peaks = peaks[:len(peaks) - len(singles)]
    plain, checkpointed = peaks[1:len(sets) + 1], peaks[len(sets) + 1:]

    tokens, rank, optimizer = len(batch) * batch.seq_len, model.rank, instructions.optimizer
    shapes = {t: model.module_shapes[f"0.{t}"] for t in targets}
    module, activation = _fitted_terms(model, probed, plain, fixed, {t: lora_module_bytes(*shapes[t], rank, tokens, optimizer) for t in targets})
    # What a unit of rank adds is priced analytically (parameters, their state, the rank-r projection).
    rank_bytes = {
        m: lora_module_bytes(*model.module_shapes[m], rank + 1, tokens, optimizer) - lora_module_bytes(*model.module_shapes[m], rank, tokens, optimizer)
        for m in model.modules
    }
    # checkpointed, a module keeps its parameters and their state, not its inputs: shared by those sizes
    module_checkpointed, activation_checkpointed = (
        _fitted_terms(model, probed, checkpointed, fixed, {t: lora_param_bytes(*shapes[t], rank, optimizer) for t in targets})
        if checkpointing else (None, None)
    )
    # each stage's probe against what the whole-layer terms predict for it, interpolated between probed layers: at
    # stage 0 only above (the layer probe, whose lowest stage is 0, fitted those terms), at a later stage either way
    # (its backward stops earlier in the block: a discount, e.g. DeBERTa's value beside its relative-attention query)
    measured_extra = [[0] * len(stage_target) for _ in probed]
    for (l, s, m), peak in zip(singles, single_peaks):
        difference = peak - (fixed + activation[l] + module[m])
        measured_extra[probed.index(l)][s] = max(0, difference) if s == 0 else difference
    stage_extra = tuple(zip(*(
        [int(round(e)) for e in np.interp(range(layers), probed, [row[s] for row in measured_extra])] for s in range(len(stage_target))
    )))
    settings = calibration_settings(model, len(batch), batch.seq_len, optimizer, checkpointing)
    return CostModel(
        fixed=fixed, activation=activation, module=module, layer={m: module_layer(m) for m in model.modules},
        rank=rank, rank_bytes=rank_bytes, source="calibrated", settings=settings,
        activation_checkpointed=activation_checkpointed, module_checkpointed=module_checkpointed,
        stage={m: stage_of[module_target(m)] for m in model.modules}, stage_extra=stage_extra,
        batch_rows=len(batch), fixed_one_row=fixed if one_row is None else min(fixed, one_row),
        module_state={m: lora_param_bytes(*model.module_shapes[m], rank, optimizer) for m in model.modules},
        **(inference_terms(model, batch) if inference else {}),
    )


def _fitted_terms(
    model: LoraModel, probed: Sequence[int], peaks: Sequence[int], fixed: int, sizes: dict[str, float]
) -> tuple[dict[str, int], tuple[int, ...]]:
    """(module terms, activation terms) from one series of probes: a peak per probed layer, then full LoRA.
    The layers' peaks are interpolated between probed layers (exact at each); what full LoRA adds over the
    layer-0 probe is what the modules of layers 1..L-1 cost, shared between targets in proportion to ``sizes``."""
    layers, targets = model.num_layers, model.settings.lora.targets
    layer_peaks = [float(p) for p in np.interp(range(layers), probed, peaks[:-1])]
    if layers > 1:
        per_layer = (peaks[-1] - layer_peaks[0]) / (layers - 1)
        per_target = {t: per_layer * sizes[t] / sum(sizes.values()) for t in targets}
    else:
        per_target = {t: float(s) for t, s in sizes.items()}
    module = {m: int(round(per_target[module_target(m)])) for m in model.modules}
    layer_modules = sum(int(round(per_target[t])) for t in targets)
    return module, tuple(int(round(layer_peaks[l])) - fixed - layer_modules for l in range(layers))


def load_or_calibrate(
    model: LoraModel, batch: TensorSplit, instructions: TrainInstructions, progress: bool = False, checkpointing: bool = False,
    inference: bool = False,
) -> tuple[CostModel, bool]:
    """The calibrated cost model for these settings (``checkpointing``: with the checkpointed terms), from the
    disk cache when it holds one; ``(model, was_cached)``.

    ``inference``: with the inference terms; a cached model without them gets them measured and added (the
    file rewritten, ``was_cached`` False). Without ``inference`` the model comes without them, whatever the cache holds.
    """
    settings = calibration_settings(model, len(batch), batch.seq_len, instructions.optimizer, checkpointing)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "memory" / f"calibration-{digest}.json"
    if path.is_file():
        cached = CostModel.from_dict(json.loads(path.read_text()))
        if not inference:
            return cached.without_inference(), True
        if cached.prices_inference:
            return cached, True
        cost_model = replace(cached, **inference_terms(model, batch))
    else:
        cost_model = calibrate(model, batch, instructions, progress, checkpointing, inference)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, cost_model.to_dict())
    return (cost_model if inference else cost_model.without_inference()), False
