"""Registry of corpora (text classification, and instruction data: a prompt and its response); each module of this
package registers one by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedpilot.core.registry import Registry, import_submodules


@dataclass(frozen=True)
class Corpus:
    """Raw labelled texts, labels as indices into ``label_names``.

    An instruction corpus also holds one ``responses`` entry per text (the text is the prompt); its labels are
    then groups of examples (e.g. a topic, or one group for all), which stratify the splits and skew the
    partition as labels do, and are never predicted."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    responses: list[str] | None = None

    @property
    def task(self) -> str:
        """``classification`` or ``instruction`` (the corpus has responses)."""
        return "classification" if self.responses is None else "instruction"


DATASETS: Registry[Callable[[], Corpus]] = Registry("dataset")


def registered_task(name: str) -> str:
    """The task of the registered corpus ``name`` without loading it: its loader's ``task`` attribute, else classification."""
    return getattr(DATASETS[name], "task", "classification")

import_submodules(__name__)
