"""Model families, PEFT-style: one folder per family registers itself and its pretrained models.

``MODELS`` maps a model name (the config's ``model.name``) to its :class:`~fedpilot.families.base.ModelSpec`,
which names its :class:`~fedpilot.families.base.ModelFamily`. Pure: loading this package imports no torch
(only the family folders register; torch-side modules shared by families, like ``classification``, load
with a family's runtime).
"""

from __future__ import annotations

from fedpilot.core.registry import Registry, import_submodules
from fedpilot.families.base import FamilyRuntime, ModelFamily, ModelSpec

FAMILIES: Registry[ModelFamily] = Registry("model family")
MODELS: Registry[ModelSpec] = Registry("model")

import_submodules(__name__, packages_only=True)

__all__ = ["FAMILIES", "MODELS", "FamilyRuntime", "ModelFamily", "ModelSpec"]
