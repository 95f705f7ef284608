"""Registry of text-classification corpora; each module of this package registers one by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedpilot.core.registry import Registry, import_submodules


@dataclass(frozen=True)
class Corpus:
    """Raw labelled texts, labels as indices into ``label_names``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]


DATASETS: Registry[Callable[[], Corpus]] = Registry("dataset")

import_submodules(__name__)
