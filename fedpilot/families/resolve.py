"""A model named by path: a local folder holding a Hugging Face checkpoint (``config.json`` and its
weights), or a Hub id whose snapshot is in the local Hugging Face cache (nothing is downloaded).

The family comes from the checkpoint's ``config.model_type``: each registered family lists the
model types whose module layout it knows (:attr:`~fedpilot.families.base.ModelFamily.model_types`).
Pure: reads ``config.json`` only, imports no torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from fedpilot.families.base import ModelFamily, ModelSpec

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def supported_model_types(families: Mapping[str, ModelFamily]) -> dict[str, str]:
    """model_type -> the name of the family that covers it, sorted by model_type."""
    return {mt: family.name for family in families.values() for mt in family.model_types}


def describe_supported(families: Mapping[str, ModelFamily]) -> str:
    by_family: dict[str, list[str]] = {}
    for model_type, family in sorted(supported_model_types(families).items()):
        by_family.setdefault(family, []).append(model_type)
    return "; ".join(f"{family}: {', '.join(types)}" for family, types in by_family.items())


def checkpoint_folder(name: str) -> Path | None:
    """The folder of ``name``: a local folder as given, else the cached snapshot of a Hub id; None if neither."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if HUB_ID.fullmatch(name) and not path.exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return Path(cached).parent
    return None


def resolve_checkpoint(name: str, families: Mapping[str, ModelFamily]) -> ModelSpec:
    """The :class:`ModelSpec` of the checkpoint ``name`` (a folder or a cached Hub id); a ValueError in one line otherwise."""
    folder = checkpoint_folder(name)
    if folder is None:
        raise ValueError(
            f"{name!r} is neither a bundled model nor a folder (nor a Hub id in the local Hugging Face cache); "
            f"give a folder holding config.json and the weights"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{str(folder)!r} has no config.json; give the folder that save_pretrained wrote")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(config_file)!r} is not a readable JSON config ({err}); re-save the model with save_pretrained") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(config_file)!r} holds no JSON object; re-save the model with save_pretrained")
    if not any((folder / weights).is_file() for weights in WEIGHT_FILES):
        raise ValueError(f"{str(folder)!r} holds no weights ({' or '.join(WEIGHT_FILES)}); save the model with save_pretrained")
    model_type = config.get("model_type")
    supported = supported_model_types(families)
    if model_type not in supported:
        raise ValueError(
            f"{str(folder)!r} is a {model_type!r} model, which no family supports; supported model types: "
            f"{describe_supported(families)}"
        )
    family = families[supported[model_type]].for_model_type(model_type)
    canonical = str(folder) if Path(name).expanduser().is_dir() else name
    return ModelSpec(name=canonical, family=family, package="", directory=str(folder), model_type=model_type)
