"""Model families, PEFT-style: one folder per family registers itself and its pretrained models.

``MODELS`` maps a model name (the config's ``model.name``) to its :class:`~fedpilot.families.base.ModelSpec`,
which names its :class:`~fedpilot.families.base.ModelFamily`. Pure: loading this package imports no torch.
"""

from __future__ import annotations

from fedpilot.core.registry import Registry, import_submodules
from fedpilot.families.base import FamilyRuntime, ModelFamily, ModelSpec

FAMILIES: Registry[ModelFamily] = Registry("model family")
MODELS: Registry[ModelSpec] = Registry("model")

import_submodules(__name__)

__all__ = ["FAMILIES", "MODELS", "FamilyRuntime", "ModelFamily", "ModelSpec"]
