"""A base model with LoRA adapters (transformers + PEFT), seen as named tensors grouped by module.

Every LoRA module has an identity ``"<layer>.<target>"`` (:mod:`fedpilot.core.keys`) that the
allocator, the client and the server share; its tensors are ``"<module>/lora_A"`` and
``"<module>/lora_B"``, the task head's ``"head/<param>"``. Where the layers and targets sit, how the
model is loaded and what its task is come from the model's family (:mod:`fedpilot.families`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from fedpilot.core.keys import BASE_DELTA, HEAD, LORA_PARTS, check_parts, module_id, module_of, parse_module, rank_axis, tensor_key
from fedpilot.core.tensors import TensorDict
from fedpilot.families import MODELS
from fedpilot.families.base import FamilyRuntime

# PEFT 0.21 still calls a transformers method that transformers 5 renamed; harmless.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


class LoraModel:
    """One PEFT model shared by every simulated client; its LoRA state is swapped in and out.

    The base weights are loaded once; what differs between clients is only the named adapter
    tensors (:meth:`state` / :meth:`load_state`), their LoRA ranks (:meth:`set_ranks`) and which
    of them train (:meth:`set_trainable`). The LoRA scaling stays alpha / (global rank) at every
    rank, so zero-padding a lower-rank adapter to the global rank leaves its function unchanged.
    """

    def __init__(
        self, settings, num_labels: int, seed: int, device: torch.device | str | None = None, base_deltas: bool = False,
        task: str = "classification",
    ) -> None:
        """``settings`` is the config's ``model`` section (a ModelSettings).

        ``base_deltas``: the adapter state also holds ``"<module>/base_delta"``, a dense change of
        each adapted module's frozen weight (d_out x d_in), for strategies that merge updates into
        the base (FLoRA, FedEx-LoRA). Loading one sets the frozen weight to its original plus the delta.
        """
        self.spec = MODELS[settings.name]
        family = self.spec.family
        self.task = task
        self.runtime: FamilyRuntime = family.load_runtime(task)
        torch.manual_seed(seed)  # the head's initial weights and LoRA A matrices
        base = self.runtime.load_model(self.spec, num_labels, settings.base_dropout)
        self.num_layers: int = self.runtime.num_layers(base)
        self.num_labels = num_labels
        self.settings = settings
        self.rank: int = settings.lora.rank
        self.modules: list[str] = [
            module_id(layer, target) for layer in range(self.num_layers) for target in settings.lora.targets
        ]
        path_to_module = {}
        for m in self.modules:
            layer, target = parse_module(m)
            path_to_module[f"{family.layer_prefix}.{layer}.{family.targets[target]}"] = m
        lora = settings.lora
        peft_config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(path_to_module),
            modules_to_save=list(family.head_modules) or None,
        )
        self.peft = get_peft_model(base, peft_config)
        if device is not None:
            self.peft.to(device)
        self.params: dict[str, nn.Parameter] = {}
        self._holders: dict[str, nn.Module] = {}  # LoRA key -> the nn.Linear whose weight it is
        named_modules = dict(self.peft.named_modules())
        # module -> its PEFT LoRA layer (base layer, lora_A, lora_B, dropout, scaling)
        self._lora_layers: dict[str, nn.Module] = {m: named_modules[f"base_model.model.{path}"] for path, m in path_to_module.items()}
        self._folded: dict[str, Tensor | None] = {}  # inside fold_frozen: module -> its merged weight (None: low-rank path)
        for name, param in self.peft.named_parameters():
            key = _canonical_key(name, path_to_module)
            if key is not None:
                self.params[key] = param
                if module_of(key) != HEAD:
                    self._holders[key] = named_modules[name.removesuffix(".weight")]
        self.module_keys: dict[str, list[str]] = {m: [] for m in [*self.modules, HEAD]}
        for key in self.params:
            self.module_keys[module_of(key)].append(key)
        self.deltas: dict[str, torch.Tensor] = {}  # "<module>/base_delta" -> the current delta
        self._base_weights: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}  # key -> (frozen weight, its original)
        if base_deltas:
            for path, m in path_to_module.items():
                weight = named_modules[f"base_model.model.{path}"].get_base_layer().weight
                key = tensor_key(m, BASE_DELTA)
                self._base_weights[key] = (weight, weight.detach().clone())
                self.deltas[key] = torch.zeros_like(weight)
        self.shapes: dict[str, tuple[int, ...]] = {k: tuple(p.shape) for k, p in [*self.params.items(), *self.deltas.items()]}
        self.module_shapes: dict[str, tuple[int, int]] = {
            m: (self.shapes[tensor_key(m, "lora_A")][1], self.shapes[tensor_key(m, "lora_B")][0]) for m in self.modules
        }
        self.set_trainable(self.modules)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def family_name(self) -> str:
        return self.spec.family.name

    @property
    def head_keys(self) -> list[str]:
        return self.module_keys[HEAD]

    def keys_for(self, modules: Iterable[str], parts: Iterable[str] = LORA_PARTS) -> list[str]:
        """Tensor keys a client trains for ``modules`` and ``parts`` (the head included)."""
        parts = check_parts(parts)
        return [tensor_key(m, p) for m in modules for p in parts if tensor_key(m, p) in self.params] + self.head_keys

    @property
    def tensor_keys(self) -> list[str]:
        """Every key of the adapter state: LoRA matrices, the head, base deltas if enabled."""
        return [*self.params, *self.deltas]

    def state(self, keys: Iterable[str] | None = None) -> TensorDict:
        """A copy of the named adapter tensors (all of them by default), as numpy arrays."""
        keys = self.tensor_keys if keys is None else keys
        return {k: (self.params[k] if k in self.params else self.deltas[k]).detach().cpu().numpy().copy() for k in keys}

    @torch.no_grad()
    def load_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Copy named tensors into the model; every key must exist and every shape match exactly."""
        for key, value in tensors.items():
            if key in self.deltas:
                self._set_delta(key, value)
                continue
            if key not in self.params:
                raise KeyError(f"{key!r} is not a tensor of this model's adapter")
            param = self.params[key]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"{key}: received shape {tuple(value.shape)}, the model holds {tuple(param.shape)} "
                    f"(set the module's rank first; nothing is broadcast)"
                )
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)))

    @torch.no_grad()
    def _set_delta(self, key: str, value: np.ndarray) -> None:
        weight, original = self._base_weights[key]
        if tuple(value.shape) != tuple(original.shape):
            raise ValueError(f"{key}: received shape {tuple(value.shape)}, the frozen weight is {tuple(original.shape)}")
        delta = torch.from_numpy(np.ascontiguousarray(value)).to(device=original.device, dtype=original.dtype)
        self.deltas[key] = delta
        weight.copy_(original + delta)

    def merged_base_weights(self) -> dict[str, torch.Tensor]:
        """The frozen weights that base deltas changed, by their name in the base model (original + delta)."""
        out = {}
        for name, param in self.peft.base_model.model.named_parameters():
            for key, (weight, _) in self._base_weights.items():
                if param is weight and bool(self.deltas[key].any()):
                    out[name.replace(".base_layer.", ".")] = param.detach().cpu().clone()
        return out

    @torch.no_grad()
    def set_ranks(self, ranks: Mapping[str, int]) -> None:
        """Give each module in ``ranks`` that LoRA rank and every other module the global rank.

        A module whose rank changes gets new (zero) A and B parameters of the new shape; load its
        tensors afterwards.
        """
        unknown = set(ranks) - set(self.modules)
        if unknown:
            raise KeyError(f"unknown LoRA modules {sorted(unknown)}")
        for m in self.modules:
            rank = ranks.get(m, self.rank)
            for key in self.module_keys[m]:
                axis = rank_axis(key)
                if axis is None or self.params[key].shape[axis] == rank:
                    continue
                shape = list(self.shapes[key])
                shape[axis] = rank
                old = self.params[key]
                new = nn.Parameter(torch.zeros(shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad)
                holder = self._holders[key]
                holder.weight = new
                holder.in_features, holder.out_features = shape[1], shape[0]
                self.params[key] = new

    def ranks(self) -> dict[str, int]:
        """The modules whose current rank differs from the global one, with that rank."""
        current = {m: self.params[tensor_key(m, "lora_A")].shape[0] for m in self.modules}
        return {m: r for m, r in current.items() if r != self.rank}

    def set_trainable(self, modules: Iterable[str], parts: Iterable[str] = LORA_PARTS) -> list[nn.Parameter]:
        """Freeze every LoRA tensor outside ``modules`` x ``parts``; return the parameters that train.

        Gradients left by the previous trainable set are dropped: they would hold memory.
        """
        modules = list(modules)
        unknown = set(modules) - set(self.modules)
        if unknown:
            raise KeyError(f"unknown LoRA modules {sorted(unknown)}; known: {self.modules}")
        chosen = set(self.keys_for(modules, parts))
        for key, param in self.params.items():
            param.grad = None
            param.requires_grad_(key in chosen)
        return [self.params[k] for k in self.params if k in chosen]

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.runtime.forward(self.peft, features)

    @contextmanager
    def fold_frozen(self, trained: Iterable[str], merge: bool = False) -> Iterator[list[str]]:
        """Take every LoRA module outside ``trained`` off PEFT's path for the block; yields them.

        The rule: **a frozen module is dropout-free**: it is a fixed part of the function for the
        call (PEFT's path would apply LoRA dropout to it in train mode); trained modules keep PEFT's
        path, dropout included. The frozen module's layer computes, made once on entry from the
        current W, A and B (so load the adapter and set the ranks first, and change neither inside):

        - ``merge=False`` (training, scoring): ``x W^T + b + scaling * (x A^T) B^T``, two rank-r
          products and no dropout, mask or PEFT dispatch, and **no extra memory**: no copy of
          anything, and nothing stored for backward (A and B do not train);
        - ``merge=True`` (evaluation): ``x (W + scaling * B A)^T + b``, one matrix product with a
          merged weight, which costs one ``d_out x d_in`` tensor per module while the block runs
          (listed in :meth:`resident_tensors`, so a measured peak counts it). Training does not
          merge: a merged weight costs more memory than a low-rank module saves (at batch 1 the
          calibrated module terms would turn negative).

        Nothing is written into W (base deltas included): the layer's ``forward`` is swapped and
        restored, so the base weights after the block are bit-identical to before.
        """
        trained = set(trained)
        unknown = trained - set(self.modules)
        if unknown:
            raise KeyError(f"unknown LoRA modules {sorted(unknown)}")
        if self._folded:
            raise RuntimeError("fold_frozen does not nest")
        folded = [m for m in self.modules if m not in trained and _foldable(self._lora_layers[m])]
        try:
            for m in folded:
                layer = self._lora_layers[m]
                base = layer.get_base_layer()
                a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                scaling = layer.scaling["default"]
                if merge:
                    with torch.no_grad():
                        weight = torch.addmm(base.weight, b.to(base.weight.dtype), a.to(base.weight.dtype), alpha=scaling)
                    self._folded[m] = weight
                    layer.forward = _FoldedForward(weight, base.bias)
                else:
                    self._folded[m] = None
                    layer.forward = _LowRankForward(base.weight, base.bias, a, b, scaling)
            yield folded
        finally:
            for m in list(self._folded):
                self._lora_layers[m].__dict__.pop("forward", None)
            self._folded.clear()

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks (layers) of the base model, in order."""
        return list(self.peft.base_model.model.get_submodule(self.spec.family.layer_prefix))

    @contextmanager
    def checkpointed(self, trained: Iterable[str], enabled: bool = True) -> Iterator[int | None]:
        """Activation checkpointing for the block: every transformer block from the lowest layer of
        ``trained`` up keeps only its inputs in forward and recomputes itself in backward
        (``torch.utils.checkpoint``, non-reentrant, the RNG state preserved so dropout masks repeat).
        The blocks below need no gradient and store nothing anyway. Yields the lowest checkpointed
        layer (None: nothing checkpointed: ``enabled`` False or nothing but the head trains).
        Outputs and gradients are those of the plain step; the block's ``forward`` is swapped and restored.
        """
        layers = [parse_module(m)[0] for m in trained]
        if not enabled or not layers:
            yield None
            return
        lowest = min(layers)
        blocks = self.blocks()[lowest:]
        try:
            for block in blocks:
                block.forward = _CheckpointedForward(block.forward)
            yield lowest
        finally:
            for block in blocks:
                block.__dict__.pop("forward", None)

    def resident_tensors(self) -> list[Tensor]:
        """Every tensor the model keeps alive: weights, adapter, buffers, base-delta originals and
        deltas, and the folded weights of :meth:`fold_frozen` while it runs (a peak's starting point)."""
        tensors = [*self.peft.parameters(), *self.peft.buffers(), *self.deltas.values()]
        tensors += [t for t in self._folded.values() if t is not None]
        tensors += [original for _, original in self._base_weights.values()]
        return tensors

    def save_adapter(self, directory: Path) -> None:
        """Write the adapter in PEFT format (safetensors), loadable by ``PeftModel.from_pretrained``.

        Where base deltas moved frozen weights, those weights (original + delta) are written beside
        it as ``base_weights.safetensors``, named as in the base model: load the base model, then
        ``model.load_state_dict(safetensors.torch.load_file(...), strict=False)``, then the adapter.
        """
        if self.ranks():
            raise ValueError(f"cannot export an adapter while modules have non-global ranks: {self.ranks()}")
        self.peft.save_pretrained(str(directory), safe_serialization=True)
        merged = self.merged_base_weights()
        if merged:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in merged.items()}, str(Path(directory) / "base_weights.safetensors"))


def _foldable(layer: nn.Module) -> bool:
    """Plain LoRA on an nn.Linear (no DoRA, no transposed weights, one adapter): what the fold assumes."""
    return (
        isinstance(layer.get_base_layer(), nn.Linear)
        and not getattr(layer, "fan_in_fan_out", False)
        and not layer.use_dora.get("default", False)
        and not layer.lora_variant
        and not getattr(layer, "lora_bias", {}).get("default", False)
        and list(layer.lora_A) == ["default"]
        and not layer.merged
        and not layer.disable_adapters
    )


class _LowRankForward:
    """A frozen LoRA layer's forward without PEFT: the base map plus the scaled rank-r product, no dropout."""

    def __init__(self, weight: Tensor, bias: Tensor | None, a: Tensor, b: Tensor, scaling: float) -> None:
        self.weight, self.bias, self.a, self.b, self.scaling = weight, bias, a, b, scaling

    def __call__(self, x: Tensor, *args: object, **kwargs: object) -> Tensor:
        result = F.linear(x, self.weight, self.bias)
        low = F.linear(F.linear(x.to(self.a.dtype), self.a), self.b)
        return (result + low * self.scaling).to(result.dtype)  # as PEFT: added in the LoRA dtype, then cast back


class _CheckpointedForward:
    """A block's forward under non-reentrant activation checkpointing: inputs kept, the rest recomputed in backward."""

    def __init__(self, forward) -> None:
        self.forward = forward

    def __call__(self, *args: object, **kwargs: object) -> object:
        return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)


class _FoldedForward:
    """A merged LoRA layer's forward: one linear map with the merged weight (no LoRA branch)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: Tensor, *args: object, **kwargs: object) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def _canonical_key(name: str, path_to_module: Mapping[str, str]) -> str | None:
    """``base_model.model.<path>.lora_A.default.weight`` -> ``"<module>/lora_A"``; head -> ``"head/..."``."""
    name = name.removeprefix("base_model.model.")
    for part in LORA_PARTS:
        marker = f".{part}.default.weight"
        if name.endswith(marker):
            return tensor_key(path_to_module[name.removesuffix(marker)], part)
    if ".modules_to_save.default." in name:
        return f"{HEAD}/{name.replace('.modules_to_save.default', '')}"
    return None
