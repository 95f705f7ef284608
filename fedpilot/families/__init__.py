"""Model families, PEFT-style: one folder per family registers itself and its pretrained models.

``MODELS`` maps a model name (the config's ``model.name``) to its :class:`~fedpilot.families.base.ModelSpec`,
which names its :class:`~fedpilot.families.base.ModelFamily`. A name that is not registered is looked up as
a checkpoint folder (or a Hub id in the local cache) and its family inferred from ``config.model_type``
(:mod:`fedpilot.families.resolve`). Pure: loading this package imports no torch (only the family folders
register; torch-side modules shared by families, like ``classification``, load with a family's runtime).
"""

from __future__ import annotations

from fedpilot.core.registry import Registry, import_submodules
from fedpilot.families.base import FamilyRuntime, ModelFamily, ModelSpec



class ModelRegistry(Registry[ModelSpec]):
    """The bundled models by name; any other name is resolved as a checkpoint folder or cached Hub id
    (resolved once, and not listed among the bundled names)."""

    def __init__(self) -> None:
        super().__init__("model")
        self._resolved: dict[str, ModelSpec] = {}

    def __missing__(self, name: str) -> ModelSpec:
        from fedpilot.families.resolve import resolve_checkpoint

        if name not in self._resolved:
            spec = resolve_checkpoint(name, FAMILIES)
            self._resolved[name] = self._resolved[spec.name] = spec
        return self._resolved[name]

    def check(self, name: str) -> str:
        """``name`` if bundled, else the canonical name of its checkpoint (an absolute folder or the Hub id);
        a ValueError naming the bundled models and the supported model types otherwise."""
        if name in self:
            return name
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"give a bundled model ({', '.join(sorted(self))}) or a checkpoint folder")
        from fedpilot.families.resolve import checkpoint_folder

        if checkpoint_folder(name) is None:
            raise ValueError(
                f"unknown model {name!r}; available: {', '.join(sorted(self))}; or give a folder holding config.json and "
                f"the weights (or a Hub id in the local Hugging Face cache)"
            )
        return self[name].name


FAMILIES: Registry[ModelFamily] = Registry("model family")
MODELS: ModelRegistry = ModelRegistry()

import_submodules(__name__, packages_only=True)

__all__ = ["FAMILIES", "MODELS", "FamilyRuntime", "ModelFamily", "ModelRegistry", "ModelSpec"]
