"""Any Hugging Face checkpoint by path: for every model type a family covers, a tiny random checkpoint
(tests/checkpoints.py) goes through one federated round of ``fedpilot run`` on a tiny CSV and a tiny
JSONL, and the exported adapter, reloaded with plain transformers + PEFT, gives the run's own outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from benchmark_scripts import load_benchmark
from checkpoints import ENCODERS, MODEL_TYPES, tiny_checkpoint_factory  # noqa: F401 (a fixture)

from fedpilot.cli import main
from fedpilot.config import parse_config
from fedpilot.core.errors import ConfigError
from fedpilot.families import MODELS

WORDS = {
    "positive": "good great film very",
    "negative": "bad awful movie this",
    "mixed": "song actor is it",
}


def write_corpus(folder: Path, kind: str, integer_labels: bool, rows_per_label: int = 8) -> Path:
    """A tiny corpus in a CSV or a JSONL, its labels strings or integers."""
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(rows_per_label):
        for index, (label, words) in enumerate(WORDS.items()):
            text = " ".join(rng.choice(words.split(), size=int(rng.integers(3, 7))))
            rows.append({"review": text, "stars": index if integer_labels else label})
    path = folder / f"tiny.{kind}"
    if kind == "csv":
        path.write_text("review,stars\n" + "".join(f"{r['review']},{r['stars']}\n" for r in rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_config(checkpoint: Path, corpus: Path, max_length: int) -> dict:
    return {
        "model": {"name": str(checkpoint), "lora": {"dropout": 0.0}},
        "data": {"dataset": str(corpus), "text_column": "review", "label_column": "stars", "max_length": max_length, "test_fraction": 0.25,
                 "partition": {"kind": "iid"}},
        "federation": {"num_clients": 2, "rounds": 1, "budgets": None},
        "train": {"local_steps": 2, "batch_size": 4, "lr": 0.01},
        "strategy": "fedavg",
    }


def plain_peft_outputs(checkpoint: Path, adapter: Path, features: dict, num_labels: int, model_type: str) -> torch.Tensor:
    """The adapter on the checkpoint through transformers and PEFT alone, scored as the family scores."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if model_type in ENCODERS:
        base = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=num_labels)
        model = PeftModel.from_pretrained(base, adapter).eval()
        with torch.no_grad():
            return model(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).logits
    base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    mask = features["attention_mask"]
    with torch.no_grad():
        logits = model(input_ids=features["input_ids"], attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    return logits[:, -1].log_softmax(-1).gather(1, features["answer_ids"])


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_one_round_on_own_checkpoint_and_file_reloads_with_plain_peft(model_type, kind, tiny_checkpoint_factory, tmp_path):
    from fedpilot.families.encoding import load_split
    from fedpilot.runtime.checkpoint import load_checkpoint
    from fedpilot.runtime.lora import LoraModel

    checkpoint = tiny_checkpoint_factory(model_type)
    # integer labels in the JSONL of an encoder; a decoder answers with the label's name, and Qwen2's tokenizer
    # splits a digit from its leading space, so that " 0", " 1" and " 2" would share their first token
    integer_labels = kind == "jsonl" and model_type in ENCODERS
    corpus = write_corpus(tmp_path, kind, integer_labels)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config(checkpoint, corpus, 16 if model_type in ENCODERS else 32)))
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    expected = ["0", "1", "2"] if integer_labels else ["mixed", "negative", "positive"]
    assert results["label_names"] == expected  # the train split's sorted labels, recorded in the run
    config = parse_config(results["config"])
    assert config.model.name == str(checkpoint.resolve())
    assert MODELS[config.model.name].family.name == ("bert-classifier" if model_type in ENCODERS else "llama-instruct")

    data = load_split(config.data, config.model.name, config.seed)
    features = {k: v for k, v in data.test.features.items()}
    ours = LoraModel(config.model, num_labels=3, seed=5)  # another seed: every trained tensor comes from the checkpoint
    ours.load_state(load_checkpoint(tmp_path / "out").global_tensors)
    ours.peft.eval()
    with torch.no_grad():
        expected_outputs = ours.forward(features)
    theirs = plain_peft_outputs(checkpoint, tmp_path / "out" / "adapter", features, 3, model_type)
    assert theirs.shape == expected_outputs.shape == (len(data.test), 3)
    torch.testing.assert_close(theirs, expected_outputs, atol=1e-5, rtol=0)
    accuracy = float((expected_outputs.argmax(1) == data.test.labels).float().mean())
    assert accuracy == pytest.approx(results["rounds"][-1]["accuracy"])


def test_unknown_model_type_is_one_line_naming_the_supported_ones(tmp_path, capsys):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "model.safetensors").write_bytes(b"")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {"name": str(folder)}}))
    assert main(["profile", "--analytic", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gpt2' model, which no family supports" in err
    assert "bert-classifier: bert, deberta-v2, distilbert, roberta, xlm-roberta; llama-instruct: gemma, llama, mistral, qwen2" in err
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="holds no weights"):
        parse_config({"model": {"name": str(folder)}})
    with pytest.raises(ConfigError, match="unknown model 'gpt5'; available: all-minilm-l6-v2"):
        parse_config({"model": {"name": "gpt5"}})


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_analytic_geometry_from_the_config_matches_the_loaded_modules(model_type, tiny_checkpoint_factory):
    """Every LoRA target's (in, out) features as the analytic model reads them from config.json equal the loaded model's."""
    from fedpilot.runtime.lora import LoraModel

    checkpoint = tiny_checkpoint_factory(model_type)
    family = MODELS[str(checkpoint.resolve())].family
    config = parse_config({"model": {"name": str(checkpoint), "lora": {"targets": list(family.targets)}}})
    model = LoraModel(config.model, num_labels=3, seed=0)
    analytic = family.analytic(MODELS[config.model.name], config.model, 3, 4, 16, "adamw")
    assert set(analytic.module) == set(model.modules)
    for module, (d_in, d_out) in model.module_shapes.items():
        from fedpilot.planning.costmodel import lora_module_bytes

        assert analytic.module[module] == lora_module_bytes(d_in, d_out, 8, 4 * 16, "adamw")


def test_a_hub_id_resolves_from_the_local_cache_only(tmp_path, tiny_checkpoint_factory, monkeypatch):
    import shutil

    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--someone--tiny-bert" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_checkpoint_factory("bert"), snapshot)
    (tmp_path / "hub" / "models--someone--tiny-bert" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-bert" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    config = parse_config({"model": {"name": "someone/tiny-bert"}})
    assert config.model.name == "someone/tiny-bert"
    assert MODELS["someone/tiny-bert"].path() == snapshot and MODELS["someone/tiny-bert"].family.name == "bert-classifier"
    with pytest.raises(ConfigError, match="unknown model 'someone/absent'"):
        parse_config({"model": {"name": "someone/absent"}})


def test_profile_lists_the_inferred_family_its_targets_and_module_costs(tmp_path, tiny_checkpoint_factory, capsys):
    from fedpilot.cli.profile import analytic_cost_model

    checkpoint = tiny_checkpoint_factory("distilbert")
    corpus = write_corpus(tmp_path, "csv", integer_labels=False)
    raw = run_config(checkpoint, corpus, 16) | {"model": {"name": str(checkpoint), "lora": {"targets": ["query", "ffn_out"]}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["profile", "--analytic", "--json", "--config", str(tmp_path / "c.yaml")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["family"] == "bert-classifier" and report["model"]["model_type"] == "distilbert"
    assert report["model"]["targets"]["query"] == "distilbert.transformer.layer.<layer>.attention.q_lin"
    assert report["model"]["trained_targets"] == ["query", "ffn_out"] and report["model"]["head"] == ["pre_classifier", "classifier"]
    cost = analytic_cost_model(parse_config(raw))
    assert [row["modules_mib"]["ffn_out"] for row in report["layers"]] == [round(cost.module[f"{l}.ffn_out"] / 2**20, 2) for l in range(2)]
    assert main(["profile", "--analytic", "--config", str(tmp_path / "c.yaml")]) == 0
    text = capsys.readouterr().out
    assert "family bert-classifier" in text and "* query      distilbert.transformer.layer.<layer>.attention.q_lin" in text


def test_a_given_test_file_is_the_test_split_row_for_row(tmp_path, tiny_checkpoint_factory):
    """data.test_dataset: the test split is that file's rows in order, the train split every row of dataset
    (max_samples off); the class list is the train file's, the test labels indexed into it."""
    from fedpilot.families.encoding import load_split

    train = write_corpus(tmp_path, "csv", integer_labels=False, rows_per_label=4)
    test = tmp_path / "test.jsonl"
    test.write_text('{"review": "great film", "stars": "positive"}\n{"review": "awful", "stars": "negative"}\n', encoding="utf-8")
    raw = run_config(tiny_checkpoint_factory("bert"), train, 16)
    raw["data"] |= {"test_dataset": str(test)}
    config = parse_config(raw)
    data = load_split(config.data, config.model.name, config.seed)
    assert data.label_names == ["mixed", "negative", "positive"]
    assert data.test.labels.tolist() == [2, 1] and len(data.train) == 12
    runtime = MODELS[config.model.name].family.load_runtime()
    expected = runtime.encode(runtime.load_tokenizer(MODELS[config.model.name]), ["great film", "awful"], 16)
    assert torch.equal(data.test.features["input_ids"], expected["input_ids"])


@pytest.mark.parametrize("all_targets", [False, True], ids=["default-targets", "all-targets"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_both_memory_models_hold_on_every_tiny_family(model_type, all_targets, tmp_path):
    """benchmarks/memory_families.py's check: on 8 random sets the calibrated model within 5 % of the measured
    peak and the analytic one within 25 % (its stage terms, and DeBERTa's forward floor, included)."""
    bench = load_benchmark("memory_families")
    seq = 32 if model_type not in ENCODERS else 16
    errors = bench.check_model_type(model_type, tmp_path, sets=8, batch_size=16, seq=seq, all_targets=all_targets)
    assert max(errors["calibrated"]) <= 0.05, errors
    assert max(errors["analytic"]) <= 0.25, errors
