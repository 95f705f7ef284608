"""Tiny randomly initialised Hugging Face checkpoints, built locally (no network) for tests.

``tiny_checkpoint(model_type, root)`` builds ``AutoConfig.for_model(model_type, <tiny sizes>)`` →
``from_config`` → ``save_pretrained`` into ``root/<model_type>`` with a word-piece tokenizer of its own
(``tokenizers``: for encoders a word-piece vocabulary of about 150 entries, letters and ``##`` letter
continuations so that any ASCII text tokenizes, plus whole words for the bundled corpora's labels and the
test corpora; for decoders a byte-level BPE of 512 entries trained on those words), and returns the folder; a folder already built is reused. Each checkpoint is a few hundred kB and builds in well under a second.

The ``tiny_checkpoint`` fixture below wraps it with one folder per test session (import it into a test
module: ``from checkpoints import tiny_checkpoint_factory``; then ``tiny_checkpoint_factory("roberta") -> Path``).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "deberta-v2")
DECODERS = ("llama", "qwen2", "mistral", "gemma")
MODEL_TYPES = ENCODERS + DECODERS

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "business entertainment politics sport tech fresh rotten plot positive negative neutral "
    "classify the text as one of answer good bad great awful film movie match goal team shares bank market "
    "phone software computer election minister vote song actor was is it and a very this"
).split()
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, POSITIONS = 32, 64, 2, 4, 2, 128


def vocabulary() -> list[str]:
    letters = list(string.ascii_lowercase + string.digits)
    tokens = SPECIAL + list(string.punctuation) + letters + [f"##{c}" for c in letters] + sorted(set(WORDS))
    return list(dict.fromkeys(tokens))  # each once (single-letter words are letters already)


def tiny_config(model_type: str, vocab_size: int) -> Any:
    from transformers import AutoConfig

    if model_type == "distilbert":
        sizes: dict[str, Any] = {"dim": HIDDEN, "hidden_dim": FFN, "n_layers": LAYERS, "n_heads": HEADS}
    else:
        sizes = {"hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS}
    sizes |= {"vocab_size": vocab_size, "max_position_embeddings": POSITIONS, "pad_token_id": 0}
    if model_type in DECODERS:
        sizes |= {"num_key_value_heads": KV_HEADS, "head_dim": HIDDEN // HEADS, "bos_token_id": 2, "eos_token_id": 3}
    if model_type == "deberta-v2":  # the layout of real DeBERTa-v3 checkpoints: relative attention, both disentangled terms
        sizes |= {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16,
                  "max_relative_positions": -1, "position_biased_input": False, "share_att_key": True,
                  "norm_rel_ebd": "layer_norm"}
    return AutoConfig.for_model(model_type, **sizes)


def save_tokenizer(folder: Path, decoder: bool) -> int:
    """Save a tokenizer in ``folder``; its vocabulary size. Encoders: word-piece, ``[CLS] text [SEP]``.
    Decoders: byte-level BPE (GPT-2 style, as Llama-3, Qwen2 and Mistral use) trained on :data:`WORDS`,
    so that each of them is one token with its leading space; no special tokens added."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if decoder:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        corpus = [" ".join(WORDS), *(f" {w}" for w in WORDS), *(f"{w.capitalize()}:" for w in WORDS), *(f" {d}" for d in range(10))] * 4
        tokenizer.train_from_iterator(corpus, trainer)
        special = {"unk_token": "[UNK]", "pad_token": "[PAD]", "bos_token": "[CLS]", "eos_token": "[SEP]"}
    else:
        vocab = {token: i for i, token in enumerate(vocabulary())}
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=1000))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        special = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special).save_pretrained(folder)
    return tokenizer.get_vocab_size()


def tiny_checkpoint(model_type: str, root: Path, seed: int = 0) -> Path:
    """``root/<model_type>``: a tiny random checkpoint of ``model_type`` with its tokenizer (built once)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    folder = Path(root) / model_type
    if (folder / "config.json").is_file():
        return folder
    if model_type not in MODEL_TYPES:
        raise ValueError(f"no tiny checkpoint for {model_type!r}; choose from {', '.join(MODEL_TYPES)}")
    staging = Path(root) / f".{model_type}.staging"
    decoder = model_type in DECODERS
    size = save_tokenizer(staging, decoder)
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        auto = AutoModelForCausalLM if decoder else AutoModel  # an encoder ships without a task head, as pretrained ones do
        auto.from_config(tiny_config(model_type, size)).save_pretrained(staging)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    staging.rename(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``make(model_type) -> Path``: the session's tiny checkpoint of that model type (built on first use)."""
    root = tmp_path_factory.getbasetemp() / "tiny-checkpoints"
    root.mkdir(exist_ok=True)
    return lambda model_type: tiny_checkpoint(model_type, root)


def fast_bert(root: Path, layers: int = 4) -> Path:
    """``root/fast-bert-L<layers>``: a tiny random BERT (hidden 32, ``layers`` layers) with the real word-piece
    tokenizer of the bundled all-MiniLM-L6-v2, so that texts of the bundled corpora keep their words (a model
    that can learn something in a few steps) while a training step costs about a hundredth of MiniLM's.
    For the tests of federation behaviour (resume, stop, compare, strategies) that do not need real weights.
    Built once, atomically (a staging folder renamed), so concurrent test sessions may share ``root``."""
    import json
    import os
    import shutil
    import tempfile

    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    from fedpilot.families import MODELS

    folder = Path(root) / f"fast-bert-L{layers}"
    if (folder / "config.json").is_file():
        return folder
    source = MODELS["all-minilm-l6-v2"].path()
    vocab_size = json.loads((source / "config.json").read_text())["vocab_size"]
    Path(root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fast-bert-", dir=root))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        BertModel(config).save_pretrained(staging)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, staging / name)
    try:
        os.rename(staging, folder)
    except OSError:  # another session built it first
        shutil.rmtree(staging, ignore_errors=True)
    return folder
