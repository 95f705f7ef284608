"""Where the model runs and in which dtype: ``model.device`` and ``model.dtype`` of the config.

``auto`` is CUDA when torch sees a GPU, else the CPU. ``model.dtype: bfloat16`` stores the frozen base
weights in bfloat16 while the LoRA matrices (and so their gradients and optimiser state) stay float32;
PEFT casts a LoRA module's input to float32 and its output back. Training, scoring and evaluation
move every batch to the model's device (``TensorSplit.batch(rows, model.device)``), and peaks are
read at that device's allocator (:mod:`fedpilot.runtime.measure`).
"""

from __future__ import annotations

import torch

from fedpilot.core.errors import FedpilotError
from fedpilot.runtime.lora import LoraModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; a CUDA device that is not there is one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FedpilotError(f"model.device is {name} but torch sees no CUDA device here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FedpilotError(
                f"model.device is {name} but torch sees {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    return device


@torch.no_grad()
def cast_base(model: LoraModel, dtype: str) -> None:
    """Store every frozen base weight of ``model`` in ``dtype``; the LoRA tensors (``model.params``) stay as they are."""
    target = DTYPES[dtype]
    own = {id(p) for p in model.params.values()}
    for param in model.peft.parameters():
        if id(param) not in own and param.dtype.is_floating_point and param.dtype != target:
            param.data = param.data.to(target)


def build_model(settings, num_labels: int, seed: int, base_deltas: bool = False, task: str = "classification") -> LoraModel:
    """The :class:`LoraModel` of a ``model`` config section on its device (``settings.device``) and dtype, for ``task``."""
    model = LoraModel(
        settings, num_labels=num_labels, seed=seed, device=resolve_device(settings.device), base_deltas=base_deltas, task=task
    )
    if settings.dtype != "float32":
        cast_base(model, settings.dtype)
    return model


def base_dtype(model: LoraModel) -> str:
    """The dtype the frozen base weights are stored in, e.g. ``"torch.bfloat16"``."""
    own = {id(p) for p in model.params.values()}
    return str(next(p.dtype for p in model.peft.parameters() if id(p) not in own))
