"""A labelled corpus (or instruction data: ``data.prompt_column`` and ``data.response_column``) from the user's own files: ``.csv``, ``.jsonl``, ``.json`` (a list of records),
``.parquet``, or a folder written by ``datasets``' ``save_to_disk`` (a Dataset, or a DatasetDict whose
``train`` split is the corpus and whose ``test`` split, if any, the test split).

Every problem (missing file or column, empty file, non-UTF-8 text, a text that is not a string, labels
that mix strings and integers, a label seen only in the test split) is a :class:`DataFileError`: one line
naming the setting to fix. Labels may be strings or integers (a CSV column whose every label is an
integer reads as integers); the class list is the sorted labels of the train split. Instruction data takes
its groups (what stratifies the splits and skews the partition) from ``data.group_column``, or puts every
example in one group; a prompt or response that is not a non-empty string is an error too.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpilot.core.errors import ConfigError
from fedpilot.data.datasets import Corpus

SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


class DataFileError(ConfigError):
    """A data file that cannot be used as asked (exit code 2, one line)."""


@dataclass(frozen=True)
class FileCorpus(Corpus):
    """A corpus read from files; rows ``[test_start:]`` are a test split given as such (None: none given)."""

    test_start: int | None = None


def looks_like_path(name: str) -> bool:
    """Whether ``data.dataset`` names a file or folder rather than a registered corpus."""
    return os.sep in name or name.endswith(SUFFIXES) or Path(name).expanduser().exists()


def check_source(name: str, field: str) -> str:
    """The absolute path of a data file or ``save_to_disk`` folder; a DataFileError if unusable."""
    path = Path(name).expanduser()
    if not path.exists():
        raise DataFileError(f"{field}: {name!r} does not exist; give a registered dataset or an existing file")
    if path.is_dir():
        if not any((path / marker).is_file() for marker in ("dataset_info.json", "dataset_dict.json", "state.json")):
            raise DataFileError(f"{field}: the folder {name!r} was not written by datasets' save_to_disk; give such a folder or a file")
    elif path.suffix.lower() not in SUFFIXES:
        raise DataFileError(f"{field}: {name!r} is not a .csv, .jsonl, .json or .parquet file; convert it to one of them")
    return str(path.resolve())


def _text(path: Path, field: str) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFileError(
            f"{field}: {str(path)!r} is not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); re-save it as UTF-8"
        ) from None
    if not text.strip():
        raise DataFileError(f"{field}: {str(path)!r} is empty; give a file with a header and rows")
    return text


def _csv_rows(path: Path, field: str) -> list[dict[str, Any]]:
    text = _text(path, field)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[dict[str, Any]] = []
    try:
        for line, row in enumerate(reader, start=2):
            if None in row:
                raise DataFileError(f"{field}: {str(path)!r} line {line} has more fields than the header; quote fields that hold commas")
            rows.append(row)
    except csv.Error as err:
        raise DataFileError(f"{field}: {str(path)!r} is not valid CSV near line {reader.line_num} ({err}); fix or re-export the file") from None
    return rows


def _json_rows(path: Path, field: str) -> list[Any]:
    text = _text(path, field)
    if path.suffix.lower() == ".jsonl":
        rows = []
        for line, item in enumerate(text.splitlines(), start=1):
            if not item.strip():
                continue
            try:
                rows.append(json.loads(item))
            except (json.JSONDecodeError, RecursionError) as err:
                raise DataFileError(f"{field}: {str(path)!r} line {line} is not JSON ({getattr(err, 'msg', err)}); one JSON object per line") from None
        return rows
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise DataFileError(f"{field}: {str(path)!r} is not JSON ({getattr(err, 'msg', err)}); give a list of records or use .jsonl") from None
    if not isinstance(data, list):
        raise DataFileError(f"{field}: {str(path)!r} holds a JSON {type(data).__name__}, not a list of records; give [{{...}}, ...] or use .jsonl")
    return data


def _table_rows(table: Any) -> list[dict[str, Any]]:
    return table.to_pylist()


def _parquet_rows(path: Path, field: str) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return _table_rows(pq.read_table(path))
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(f"{field}: {str(path)!r} is not a readable Parquet file ({str(err).splitlines()[0]}); re-export it") from None


def _disk_rows(path: Path, field: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 (datasets raises many kinds; all mean the folder is unusable)
        raise DataFileError(f"{field}: {str(path)!r} cannot be loaded with datasets.load_from_disk ({type(err).__name__}); re-save it") from None
    if isinstance(loaded, Dataset):
        return _table_rows(loaded.data.table), None
    assert isinstance(loaded, DatasetDict)
    if "train" not in loaded:
        raise DataFileError(f"{field}: the DatasetDict in {str(path)!r} has no 'train' split (splits: {', '.join(loaded)}); name the training split train")
    test = _table_rows(loaded["test"].data.table) if "test" in loaded else None
    return _table_rows(loaded["train"].data.table), test


def read_rows(source: str, field: str) -> tuple[list[Any], list[Any] | None]:
    """(rows, rows of a test split the source itself holds, or None)."""
    path = Path(source)
    if path.is_dir():
        return _disk_rows(path, field)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path, field), None
    if suffix == ".parquet":
        return _parquet_rows(path, field), None
    return _json_rows(path, field), None


def _column(rows: Sequence[Any], column: str, field: str, source: str, what: str) -> list[Any]:
    if not rows:
        raise DataFileError(f"{field}: {source!r} holds no rows; give at least one example per label")
    values = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataFileError(f"{field}: row {number} of {source!r} is a {type(row).__name__}, not a record with named columns")
        if column not in row:
            columns = ", ".join(map(str, row)) or "none"
            raise DataFileError(f"{what}: {column!r} is not a column of {source!r} (row {number} has: {columns}); set {what} to one of them")
        values.append(row[column])
    return values


def _texts(values: list[Any], source: str, what: str) -> list[str]:
    for number, value in enumerate(values, start=1):
        if not isinstance(value, str):
            raise DataFileError(f"{what}: row {number} of {source!r} holds a {type(value).__name__} ({str(value)[:40]!r}), not text; every text must be a string")
    return values


def _labels(values: list[Any], source: str, what: str, from_csv: bool) -> list[str | int]:
    kinds = set()
    for number, value in enumerate(values, start=1):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataFileError(f"{what}: row {number} of {source!r} holds a {type(value).__name__} label ({str(value)[:40]!r}); labels must be strings or integers")
        if isinstance(value, str) and not value.strip():
            raise DataFileError(f"{what}: row {number} of {source!r} has an empty label; give every row a label or drop it")
        kinds.add(type(value))
    if len(kinds) > 1:
        raise DataFileError(f"{what}: labels of {source!r} mix strings and integers; use one type for every label")
    if from_csv and all(v.strip().lstrip("-").isdigit() for v in values):
        return [int(v) for v in values]
    return values


ONE_GROUP = "all"  # the group of every example of instruction data without data.group_column


def _table(source: str, rows: list[Any], settings: Any, field: str) -> tuple[list[str], list[str | int], list[str] | None]:
    """(texts or prompts, labels or groups, responses or None) of ``rows``."""
    from_csv = source.lower().endswith(".csv")
    if settings.prompt_column is None:
        texts = _texts(_column(rows, settings.text_column, field, source, "data.text_column"), source, "data.text_column")
        labels = _column(rows, settings.label_column, field, source, "data.label_column")
        return texts, _labels(labels, source, "data.label_column", from_csv), None
    prompts = _texts(_column(rows, settings.prompt_column, field, source, "data.prompt_column"), source, "data.prompt_column")
    responses = _texts(_column(rows, settings.response_column, field, source, "data.response_column"), source, "data.response_column")
    for what, values in (("data.prompt_column", prompts), ("data.response_column", responses)):
        for number, value in enumerate(values, start=1):
            if not value.strip():
                raise DataFileError(f"{what}: row {number} of {source!r} is empty; give every row a prompt and a response or drop it")
    if settings.group_column is None:
        return prompts, [ONE_GROUP] * len(prompts), responses
    groups = _column(rows, settings.group_column, field, source, "data.group_column")
    return prompts, _labels(groups, source, "data.group_column", from_csv), responses


def cached_file_corpus(settings: Any) -> FileCorpus:
    """:func:`load_file_corpus`, read once per process for the same files (by size and modification time) and columns."""
    stamps = tuple(
        (p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in (settings.dataset, settings.test_dataset) if p is not None
    )
    columns = tuple(getattr(settings, c, None) for c in COLUMNS)
    return _cached(stamps, settings.dataset, settings.test_dataset, columns)


COLUMNS = ("text_column", "label_column", "prompt_column", "response_column", "group_column")


@functools.lru_cache(maxsize=8)
def _cached(stamps: tuple, dataset: str, test_dataset: str | None, columns: tuple) -> FileCorpus:
    from types import SimpleNamespace

    return load_file_corpus(SimpleNamespace(dataset=dataset, test_dataset=test_dataset, **dict(zip(COLUMNS, columns, strict=True))))


def load_file_corpus(settings: Any) -> FileCorpus:
    """The corpus of ``settings`` (a DataSettings whose ``dataset`` is a path): texts, integer labels into the
    sorted class list of the train split, and where a given test split starts."""
    train_rows, test_rows = read_rows(settings.dataset, "data.dataset")
    texts, labels, responses = _table(settings.dataset, train_rows, settings, "data.dataset")
    label_field = "data.label_column" if responses is None else "data.group_column"
    test_source = settings.dataset
    if settings.test_dataset is not None:
        if test_rows is not None:
            raise DataFileError(f"data.test_dataset: {settings.dataset!r} already holds a test split; drop data.test_dataset or that split")
        test_rows, _ = read_rows(settings.test_dataset, "data.test_dataset")
        test_source = settings.test_dataset
    test_texts: list[str] = []
    test_labels: list[str | int] = []
    test_responses: list[str] = []
    if test_rows is not None:
        test_texts, test_labels, test_responses = _table(test_source, test_rows, settings, "data.test_dataset")
        if {type(v) for v in test_labels} - {type(v) for v in labels}:
            raise DataFileError(f"{label_field}: the test split's labels are not of the train split's type ({type(labels[0]).__name__}); use one type")
    classes = sorted(set(labels))
    unseen = sorted({v for v in test_labels if v not in set(classes)}, key=str)
    if unseen:
        raise DataFileError(
            f"data.test_dataset: label {unseen[0]!r} appears only in the test split ({test_source!r}); "
            f"add training examples of it or drop those test rows"
        )
    if len(classes) < 2 and responses is None:
        raise DataFileError(f"data.label_column: the train split has a single label ({classes[0]!r}); classification needs at least two")
    index = {label: i for i, label in enumerate(classes)}
    return FileCorpus(
        texts=texts + test_texts,
        labels=[index[v] for v in labels + test_labels],
        label_names=[str(c) for c in classes],
        responses=None if responses is None else responses + (test_responses or []),
        test_start=len(texts) if test_rows is not None else None,
    )
