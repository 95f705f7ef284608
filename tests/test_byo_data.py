"""Own data files: .csv, .jsonl, .json, .parquet and save_to_disk folders read into the same corpus, string
or integer labels with the class list from the train split, and every malformed file a one-line exit-2
error naming the setting to fix (a hypothesis test throws random malformed files at the loader)."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpilot.cli import main
from fedpilot.config import parse_config
from fedpilot.core.errors import ConfigError
from fedpilot.data.files import load_file_corpus

ROWS = [("a fine film", "pos"), ("dull and long", "neg"), ("loved it", "pos"), ("awful", "neg"), ("great cast", "pos"),
        ("boring", "neg"), ("superb", "pos"), ("weak plot", "neg")]


def data_settings(path: Path, **extra):
    return parse_config({"data": {"dataset": str(path), **extra}}).data


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def test_every_format_reads_the_same_corpus_with_sorted_train_labels(tmp_path):
    import datasets

    records = [{"text": t, "label": l} for t, l in ROWS]
    write_csv(tmp_path / "d.csv", ROWS)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (tmp_path / "d.json").write_text(json.dumps(records), encoding="utf-8")
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "disk"))
    for name in ("d.csv", "d.jsonl", "d.json", "d.parquet", "disk"):
        corpus = load_file_corpus(data_settings(tmp_path / name))
        assert corpus.label_names == ["neg", "pos"]
        assert corpus.texts == [t for t, _ in ROWS]
        assert corpus.labels == [1 if l == "pos" else 0 for _, l in ROWS]
        assert corpus.test_start is None


def test_integer_labels_sort_numerically_and_a_given_test_split_is_kept(tmp_path):
    import datasets

    train = [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 2, 2, 10, 7, 7])]
    test = [{"text": "u", "label": 7}, {"text": "v", "label": 2}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}).save_to_disk(str(tmp_path / "dd"))
    corpus = load_file_corpus(data_settings(tmp_path / "dd"))
    assert corpus.label_names == ["2", "7", "10"]
    assert corpus.labels == [2, 0, 0, 2, 1, 1, 1, 0]
    assert corpus.test_start == 6
    write_csv(tmp_path / "ints.csv", [(f"t{i}", label) for i, label in enumerate([10, 2, 2, 10])])
    assert load_file_corpus(data_settings(tmp_path / "ints.csv", test_fraction=0.5)).label_names == ["2", "10"]

    from fedpilot.data.indices import train_test_indices
    import numpy as np

    settings = data_settings(tmp_path / "dd")
    train_rows, test_rows = train_test_indices(np.asarray(corpus.labels), settings, seed=3, test_start=corpus.test_start)
    assert train_rows.tolist() == [0, 1, 2, 3, 4, 5] and test_rows.tolist() == [6, 7]


def bad_case(name: str, d: Path) -> tuple[Path, dict]:
    """A data file with one problem, and the data settings that meet it."""
    if name == "missing text column":
        return write_csv(d / "x.csv", ROWS, header=("body", "label")), {}
    if name == "missing label column":
        return write_csv(d / "x.csv", ROWS), {"label_column": "stars"}
    if name == "empty file":
        (d / "x.csv").write_text("")
        return d / "x.csv", {}
    if name == "header only":
        return write_csv(d / "x.csv", []), {}
    if name == "latin-1":
        (d / "x.csv").write_bytes("text,label\ncaf\xe9,pos\nthe,neg\n".encode("latin-1"))
        return d / "x.csv", {}
    if name == "mixed labels":
        (d / "x.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n')
        return d / "x.jsonl", {}
    if name == "number as text":
        (d / "x.jsonl").write_text('{"text": 3, "label": "a"}\n')
        return d / "x.jsonl", {}
    if name == "label only in test":
        return write_csv(d / "x.csv", ROWS), {"test_dataset": str(write_csv(d / "t.csv", [("odd", "meh")]))}
    if name == "too few to split":
        return write_csv(d / "x.csv", [("a", "p"), ("b", "q"), ("c", "q")]), {}
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing text column", "data.text_column: 'text' is not a column"),
        ("missing label column", "data.label_column: 'stars' is not a column"),
        ("empty file", "is empty"),
        ("header only", "holds no rows"),
        ("latin-1", "is not UTF-8"),
        ("mixed labels", "mix strings and integers"),
        ("number as text", "data.text_column: row 1"),
        ("label only in test", "label 'meh' appears only in the test split"),
        ("too few to split", "cannot be split"),
    ],
)
def test_bad_data_is_one_line_naming_the_field(tmp_path, case, message, capsys):
    path, extra = bad_case(case, tmp_path)
    with pytest.raises(ConfigError, match=message):
        data_settings(path, **extra)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"data": {"dataset": str(path), **extra}}))
    assert main(["profile", "--analytic", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedpilot: error: ") and "Traceback" not in err


def test_a_damaged_save_to_disk_folder_is_one_line(tmp_path):
    (tmp_path / "disk").mkdir()
    (tmp_path / "disk" / "state.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be loaded with datasets.load_from_disk"):
        data_settings(tmp_path / "disk")


def test_a_path_that_is_missing_or_of_another_kind_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        data_settings(tmp_path / "missing.csv")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a .csv, .jsonl, .json or .parquet"):
        data_settings(tmp_path / "x.txt")
    with pytest.raises(ConfigError, match="not written by datasets' save_to_disk"):
        data_settings(tmp_path)


values = st.one_of(
    st.text(max_size=20), st.integers(-5, 5), st.booleans(), st.none(), st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=2), st.just("x" * 200_000),
)
records = st.lists(st.dictionaries(st.sampled_from(["text", "label", "other"]), values, max_size=3), max_size=12)


@st.composite
def data_files(draw):
    kind = draw(st.sampled_from(["csv", "jsonl", "json", "bytes"]))
    rows = draw(records)
    if kind == "bytes":
        return draw(st.sampled_from(["jsonl", "csv", "json", "parquet"])), draw(st.binary(max_size=300))
    if kind == "csv":
        out = io.StringIO()
        columns = draw(st.lists(st.sampled_from(["text", "label", "other"]), unique=True, max_size=3))
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns])
        return "csv", out.getvalue().encode("utf-8", "replace")
    text = "".join(json.dumps(r) + "\n" for r in rows) if kind == "jsonl" else json.dumps(draw(st.one_of(st.just(rows), values)))
    return kind, text.encode("utf-8", "replace")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data_files())
def test_malformed_files_only_ever_raise_clean_config_errors(file):
    suffix, content = file
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data.{suffix}"
        path.write_bytes(content)
        try:
            settings_ = data_settings(path)
        except ConfigError as err:
            message = str(err)
            assert "\n" not in message and message.startswith(("data", "data.")), message
            return
        corpus = load_file_corpus(settings_)  # accepted: a usable corpus
        assert len(corpus.texts) == len(corpus.labels) >= 2 and len(corpus.label_names) >= 2
        assert all(isinstance(t, str) for t in corpus.texts)
        assert sorted(set(corpus.labels)) == list(range(len(corpus.label_names)))
