"""The server's own look at its model: per-module Fisher information on a small held-out proxy set.

Fed-HeLLo's FIM-HLA (arXiv 2506.12213) ranks layers by the diagonal empirical Fisher information of
their LoRA parameters, computed by the server on a proxy set it holds (about 0.2 % of each class,
removed from the clients' data: :func:`fedpilot.data.split.hold_out_per_class`). Here:

    F_t = (1/N) sum_i (d loss_i / d theta_t)^2      (per sample i, elementwise, for each LoRA tensor t)
    score(module) = sum over the module's tensors t of ||F_t||_F

with the family's loss of one example at a time (dropout off). The strategy sums module scores per
layer. The global adapter is loaded at the global rank; the model is left with nothing trainable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedpilot.core.tensors import TensorDict
from fedpilot.data.split import TensorSplit
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.training import batch_loss


class ProxyScorer:
    """Scores modules on the server's proxy set: ``scorer(global_tensors, modules) -> {module: score}``."""

    def __init__(self, model: LoraModel, data: TensorSplit) -> None:
        if len(data) == 0:
            raise ValueError("the server's proxy set is empty; raise data.proxy_fraction")
        self.model = model
        self.data = data

    def __call__(self, global_tensors: TensorDict, modules: Sequence[str] | None = None) -> dict[str, float]:
        model = self.model
        modules = list(model.modules if modules is None else modules)
        model.set_ranks({})
        model.load_state(global_tensors)
        params = {key: model.params[key] for m in modules for key in model.module_keys[m]}
        model.set_trainable(modules)
        model.peft.eval()
        squared = {key: torch.zeros_like(p, dtype=torch.float64) for key, p in params.items()}
        try:
            for i in range(len(self.data)):
                for p in params.values():
                    p.grad = None
                batch_loss(model, self.data, torch.tensor([i])).backward()
                for key, p in params.items():
                    if p.grad is not None:
                        squared[key] += p.grad.detach().double() ** 2
        finally:
            model.set_trainable([])
        n = len(self.data)
        return {m: float(sum(torch.linalg.vector_norm(squared[k] / n).item() for k in model.module_keys[m] if k in squared)) for m in modules}

