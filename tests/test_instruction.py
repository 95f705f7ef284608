"""Instruction tuning (``task: instruction``): the encoding puts each response at the end of its row, the loss is
transformers' causal-LM loss on the response tokens alone, ROUGE-L is exact against brute force, one federated
round through ``fedpilot run`` on a CSV and a JSONL reloads with plain PEFT to the same outputs and metrics, the
calibrated memory model prices the instruction step within 5 %, and bad settings or files are one-line errors."""

from __future__ import annotations

import csv
import io
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from checkpoints import DECODERS, tiny_checkpoint_factory  # noqa: F401 (a fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpilot.cli import main
from fedpilot.config import parse_config
from fedpilot.core.errors import ConfigError
from fedpilot.data.files import load_file_corpus
from fedpilot.families.text_metrics import exact_match, lcs_length, rouge_l

TOPICS = {
    "film": ("film movie actor song good great", "great film"),
    "sport": ("match goal team good bad", "team goal"),
    "market": ("shares bank market phone", "bank shares"),
}


def write_instructions(folder: Path, kind: str, rows_per_topic: int = 8) -> Path:
    """Tiny instruction data: a prompt of the topic's words, the response two of them; the topic is its group."""
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(rows_per_topic):
        for topic, (words, response) in TOPICS.items():
            prompt = "classify the text " + " ".join(rng.choice(words.split(), size=int(rng.integers(3, 7))))
            rows.append({"question": prompt, "answer": response, "topic": topic})
    path = folder / f"instructions.{kind}"
    if kind == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["question", "answer", "topic"])
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(out.getvalue(), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def instruction_config(checkpoint: Path, corpus: Path, **data) -> dict:
    return {
        "task": "instruction",
        "model": {"name": str(checkpoint), "lora": {"dropout": 0.0}},
        "data": {"dataset": str(corpus), "prompt_column": "question", "response_column": "answer", "group_column": "topic",
                 "max_length": 24, "max_response_length": 6, "test_fraction": 0.25, "partition": {"kind": "iid"}, **data},
        "federation": {"num_clients": 2, "rounds": 1, "budgets": None},
        "train": {"local_steps": 2, "batch_size": 4, "lr": 0.01, "eval_batch_size": 5},
        "strategy": "fedavg",
    }


# -- text metrics -----------------------------------------------------------------------------------------------


def brute_lcs(a: list[str], b: list[str]) -> int:
    for size in range(min(len(a), len(b)), 0, -1):
        subsequences = set(itertools.combinations(b, size))
        if any(c in subsequences for c in itertools.combinations(a, size)):
            return size
    return 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=7), st.lists(st.sampled_from("abcd"), max_size=7))
def test_lcs_and_rouge_l_match_brute_force(a, b):
    assert lcs_length(a, b) == brute_lcs(a, b)
    lcs = brute_lcs(a, b)
    expected = 0.0 if lcs == 0 else 2 * (lcs / len(a)) * (lcs / len(b)) / (lcs / len(a) + lcs / len(b))
    assert rouge_l(" ".join(a), " ".join(b)) == pytest.approx(expected)


def test_rouge_l_and_exact_match_by_hand():
    # LCS "the cat on the mat": 5 of 6 words either way
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("", "a headline") == 0.0
    assert exact_match("Macy's owner buys rival!", "macy s owner  buys rival") == 1.0
    assert exact_match("owner buys rival", "Macy's owner buys rival") == 0.0


# -- encoding and loss ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_instruction(tiny_checkpoint_factory, tmp_path_factory):
    """(config, data, model) of instruction tuning on the tiny llama checkpoint and a tiny JSONL."""
    from fedpilot.families.encoding import load_split
    from fedpilot.runtime.lora import LoraModel

    folder = tmp_path_factory.mktemp("instruction")
    config = parse_config(instruction_config(tiny_checkpoint_factory("llama"), write_instructions(folder, "jsonl")))
    data = load_split(config.data, config.model.name, config.seed, task="instruction")
    model = LoraModel(config.model, num_labels=len(data.label_names), seed=0, task="instruction")
    return config, data, model


def test_each_response_ends_its_row_and_the_targets_are_the_next_tokens(tiny_instruction):
    config, data, _ = tiny_instruction
    f = data.train.features
    keep = config.data.max_response_length + 1
    T = config.data.max_length
    assert f["input_ids"].shape[1] == T and f["targets"].shape[1] == keep
    for row in range(len(data.train)):
        ids, targets = f["input_ids"][row], f["targets"][row]
        kept = targets != -100
        # the target at kept position j is the token after it: input position T - keep + j + 1
        positions = torch.nonzero(kept).squeeze(1) + T - keep + 1
        assert torch.equal(targets[kept], ids[positions])
        assert positions[-1] == T - 1 and targets[-1] == -100  # the response (end token included) ends the row
        prompt = f["prompt_ids"][row][f["prompt_mask"][row].bool()]
        n = int(f["attention_mask"][row].sum())
        assert torch.equal(ids[T - n: T - n + len(prompt)], prompt)  # the same prompt, then the response
        assert int(kept.sum()) == n - len(prompt)
    assert data.label_names == ["film", "market", "sport"]  # the groups, sorted like labels


def test_the_loss_is_the_causal_lm_loss_on_the_response_tokens_only(tiny_instruction):
    _, data, model = tiny_instruction
    features, labels = data.train.batch(slice(0, 6), model.device)
    model.peft.eval()
    with torch.no_grad():
        ours = model.runtime.loss(model.forward(features), labels)
        ids, mask = features["input_ids"], features["attention_mask"]
        hf_labels = torch.full_like(ids, -100)
        keep = features["targets"].shape[1]
        # transformers shifts labels left by one: the label at position p is the target of the logit at p - 1
        hf_labels[:, -keep + 1:] = features["targets"][:, :-1]
        theirs = model.peft(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), labels=hf_labels).loss
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        rows = model.runtime.loss(model.forward(features), labels, "none")
    counts = (features["targets"] != -100).sum(1)
    assert float((rows * counts).sum() / counts.sum()) == pytest.approx(float(ours), rel=1e-5)


def test_a_micro_batched_instruction_step_is_the_whole_batch_step(tiny_instruction):
    """Rows hold different numbers of response tokens: each micro-batch's summed token loss over the batch's token
    count (FamilyRuntime.normaliser) accumulates to the whole batch's token-mean gradient (SGD shows any misweighting)."""
    from dataclasses import replace

    from fedpilot.runtime.client import Client
    from fedpilot.runtime.messages import TrainInstructions
    from fedpilot.strategies.base import Assignment

    config, data, model = tiny_instruction
    train = data.train.subset(np.arange(len(data.train)))  # a copy: responses of 1, 2 and 3 tokens
    for row in range(len(train)):
        kept = torch.nonzero(train.features["targets"][row] != -100).squeeze(1)
        train.features["targets"][row, kept[: row % 3]] = -100
    tokens = (train.features["targets"] != -100).sum(1)
    assert len(set(tokens.tolist())) == 3  # the weighting matters
    client = Client(0, model, train)
    tensors = model.state()
    sgd = replace(TrainInstructions.from_settings(config.train, seed=1), optimizer="sgd", lr=0.5)
    modules = tuple(model.modules[-3:])
    whole, whole_metrics = client.train(Assignment(modules), tensors, sgd)
    for rows in (3, 1):
        micro, metrics = client.train(Assignment(modules, micro_batch=rows), tensors, sgd)
        for key in whole:
            torch.testing.assert_close(torch.as_tensor(micro[key]), torch.as_tensor(whole[key]), atol=1e-6, rtol=1e-5)
        assert metrics["train_loss"] == pytest.approx(whole_metrics["train_loss"], rel=1e-5)


def test_the_calibrated_model_prices_the_instruction_step_within_5_percent(tiny_instruction):
    from fedpilot.memory.calibrate import calibrate, calibration_settings
    from fedpilot.memory.validate import compare_predictions, random_module_sets
    from fedpilot.runtime.messages import TrainInstructions

    config, data, model = tiny_instruction
    batch = data.train.subset(np.arange(config.train.batch_size))
    instructions = TrainInstructions.from_settings(config.train, seed=0)
    calibrated = calibrate(model, batch, instructions)
    rows = compare_predictions(model, batch, instructions, random_module_sets(model.modules, 6, seed=2), {"calibrated": calibrated})
    assert max(r["calibrated_error"] for r in rows) <= 0.05
    assert calibration_settings(model, 4, 24, "adamw")["task"] == "instruction"  # cached apart from classification


# -- a federated round through the CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("model_type", DECODERS)
def test_one_instruction_round_through_fedpilot_run_reloads_with_plain_peft(model_type, kind, tiny_checkpoint_factory, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedpilot.families.encoding import load_split
    from fedpilot.runtime.checkpoint import load_checkpoint
    from fedpilot.runtime.evaluation import evaluate
    from fedpilot.runtime.lora import LoraModel

    checkpoint = tiny_checkpoint_factory(model_type)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(instruction_config(checkpoint, write_instructions(tmp_path, kind))))
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["task"] == "instruction" and results["status"] == "finished"
    for record in results["rounds"]:
        assert {"rouge_l", "exact_match", "perplexity", "loss"} <= set(record) and "accuracy" not in record
        assert 0 <= record["rouge_l"] <= 1 and record["perplexity"] == pytest.approx(np.exp(record["loss"]))
    header = (tmp_path / "out" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("round,rouge_l,exact_match,perplexity,loss,train_loss")
    assert (tmp_path / "out" / "accuracy.png").is_file()

    config = parse_config(results["config"])
    data = load_split(config.data, config.model.name, config.seed, task="instruction")
    tensors = load_checkpoint(tmp_path / "out").global_tensors
    ours = LoraModel(config.model, num_labels=len(data.label_names), seed=5, task="instruction")
    metrics = evaluate(ours, tensors, data.test, 5)
    for key in ("rouge_l", "exact_match", "loss"):  # the run's last evaluation, made again from its checkpoint
        assert metrics[key] == pytest.approx(results["rounds"][-1][key], abs=1e-6)

    base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    theirs = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
    ours.load_state(tensors)
    ours.peft.eval()
    features = data.test.features
    with torch.no_grad():
        expected = ours.forward(features)
        got = ours.runtime.forward(theirs, features)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# -- bad settings and files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"name": "all-minilm-l6-v2"}}, "task: instruction is not served by the bert-classifier family"),
        ({"task": "classification"}, "task: classification needs classification data"),
        ({"data": {"response_column": None}}, "set data.response_column"),
        ({"train": {"logit_adjustment": 1.0}}, "set it to 0 for task: instruction"),
        ({"data": {"prompt_column": "nope"}}, "data.prompt_column: 'nope' is not a column"),
        ({"data": {"max_length": 8}}, "data.max_length"),
    ],
)
def test_bad_instruction_settings_are_one_line_exit_2(change, message, tiny_checkpoint_factory, tmp_path, capsys):
    config = instruction_config(tiny_checkpoint_factory("llama"), write_instructions(tmp_path, "jsonl"))
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_registered_instruction_corpus_needs_task_instruction():
    with pytest.raises(ConfigError, match="task: classification needs classification data"):
        parse_config({"data": {"dataset": "bbc-headlines"}})
    config = parse_config({"task": "instruction", "model": {"name": "smollm2-135m-instruct"}, "data": {"dataset": "bbc-headlines"}})
    assert config.data.task == "instruction"


values = st.one_of(st.text(max_size=20), st.integers(-5, 5), st.booleans(), st.none(), st.just(" "), st.just("x" * 100_000))
records = st.lists(st.dictionaries(st.sampled_from(["prompt", "response", "group", "other"]), values, max_size=4), max_size=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(["csv", "jsonl"]), records, st.booleans())
def test_malformed_instruction_files_only_ever_raise_clean_config_errors(kind, rows, grouped):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data.{kind}"
        if kind == "csv":
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(["prompt", "response", "group"])
            for row in rows:
                writer.writerow(["" if row.get(c) is None else row.get(c) for c in ("prompt", "response", "group")])
            path.write_text(out.getvalue(), encoding="utf-8")
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        data = {"dataset": str(path), "prompt_column": "prompt", "response_column": "response", **({"group_column": "group"} if grouped else {})}
        try:
            config = parse_config({"task": "instruction", "model": {"name": "smollm2-135m-instruct"}, "data": data})
        except ConfigError as err:
            message = str(err)
            assert "\n" not in message and message.startswith(("data", "config")), message
            return
        corpus = load_file_corpus(config.data)  # accepted: a usable instruction corpus
        assert corpus.responses is not None and len(corpus.responses) == len(corpus.texts) == len(corpus.labels) >= 1
        assert all(isinstance(t, str) and t.strip() for t in corpus.texts + corpus.responses)


def test_compare_refuses_instruction_runs_in_one_line(tiny_checkpoint_factory, tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(instruction_config(tiny_checkpoint_factory("llama"), write_instructions(tmp_path, "csv"))))
    assert main(["compare", "--config", str(tmp_path / "run.yaml"), "--strategies", "fedavg", "--seeds", "0", "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fedpilot compare ranks classification runs" in err[0]
