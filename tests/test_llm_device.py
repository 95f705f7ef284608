"""Device and dtype of the model (``model.device``, ``model.dtype``, ``--device``) and the CPU side of
benchmarks/cuda_memory.py, on the TINY RANDOMLY INITIALISED Llama of test_llama_family (no GPU needed;
the CUDA path itself is exercised only where torch sees a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from benchmark_scripts import load_benchmark
from test_llama_family import TINY, tiny_spec, tiny_split  # noqa: F401 (fixture)

from fedpilot.config import parse_config
from fedpilot.core.errors import FedpilotError
from fedpilot.core.keys import tensor_key
from fedpilot.memory.calibrate import calibration_settings, measure_peak
from fedpilot.runtime.client import Client
from fedpilot.runtime.device import base_dtype, build_model, resolve_device
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.strategies.base import Assignment

STEP = TrainInstructions(local_steps=2, batch_size=4, optimizer="adamw", lr=0.01, weight_decay=0.0, seed=0)


def settings(dtype="float32", device="cpu"):
    return parse_config({"model": {"name": TINY, "lora": {"dropout": 0.0}, "dtype": dtype, "device": device}}).model


def test_device_auto_is_cuda_when_available_and_a_missing_gpu_is_one_clear_error():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FedpilotError, match="torch sees no CUDA device here; use --device cpu"):
            resolve_device("cuda")


def test_bfloat16_base_weights_with_float32_lora_train_and_cost_less(tiny_spec):
    """bf16: frozen weights in bfloat16, LoRA (what trains, is sent and aggregated) in float32; a client step
    trains, and the measured step peak is below float32's."""
    split = tiny_split(tiny_spec)
    peaks = {}
    for dtype in ("float32", "bfloat16"):
        model = build_model(settings(dtype), num_labels=3, seed=0)
        assert base_dtype(model) == f"torch.{dtype}"
        assert all(p.dtype == torch.float32 for p in model.params.values())
        assert model.peft.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == getattr(torch, dtype)
        key = calibration_settings(model, 4, split.seq_len, "adamw")
        assert key.get("base_dtype") == (None if dtype == "float32" else dtype)  # its own calibration cache entry
        trained, metrics = Client(0, model, split).train(Assignment(modules=("0.q_proj", "1.v_proj")), model.state(), STEP)
        assert np.isfinite(metrics["train_loss"]) and all(v.dtype == np.float32 for v in trained.values())
        assert np.abs(trained[tensor_key("1.v_proj", "lora_B")]).sum() > 0
        model.load_state(trained)
        model.peft.eval()
        with torch.no_grad():
            output = model.forward(split.features)
        assert output.dtype == torch.float32 and torch.isfinite(output).all()
        peaks[dtype] = measure_peak(model, list(model.modules), split.subset(list(range(4))), STEP)
    assert peaks["bfloat16"] < peaks["float32"]


def test_smollm2_analytic_bfloat16_halves_weights_keeps_lora_float32():
    from fedpilot.families import MODELS
    from fedpilot.families.llama.analytic import analytic_cost_model

    spec = MODELS["smollm2-135m-instruct"]
    costs = {
        dtype: analytic_cost_model(spec, parse_config({"model": {"name": spec.name, "dtype": dtype}}).model, 5, 4, 48, "adamw")
        for dtype in ("float32", "bfloat16")
    }
    full, half = costs["float32"], costs["bfloat16"]
    assert half.module == full.module  # LoRA parameters, gradients, optimiser state and inputs stay float32
    assert 0.45 < half.fixed / full.fixed < 0.55  # 134.5 M weights at 2 bytes instead of 4
    assert 0.5 < half.activation[0] / full.activation[0] < 0.6  # the RMSNorm inputs stay float32
    assert half.settings["dtype"] == "bfloat16"


def test_bfloat16_is_refused_for_a_family_that_does_not_price_it():
    from fedpilot.core.errors import ConfigError

    with pytest.raises(ConfigError, match="model.dtype: bfloat16 is not supported by the bert-classifier family"):
        parse_config({"model": {"dtype": "bfloat16"}})
    with pytest.raises(ConfigError, match="model.device: 'tpu' is not a device; use auto, cpu, cuda or cuda:N"):
        parse_config({"model": {"device": "tpu"}})


def test_cuda_memory_benchmark_without_a_gpu_says_so_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert load_benchmark("cuda_memory").main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device here" in err and "--device cpu" in err


def test_cuda_memory_benchmark_cpu_path_on_both_families(tiny_spec, tmp_path, monkeypatch, capsys):
    """The script's own logic on the CPU (small configs: the tiny Llama in both dtypes, the encoder at batch 4 x 16)."""
    monkeypatch.setenv("FEDPILOT_CACHE", str(tmp_path / "cache"))
    small = {"data": {"max_samples": 60, "max_length": 16, "partition": {"kind": "iid"}},
             "train": {"local_steps": 1, "batch_size": 4, "eval_batch_size": 16}}
    configs = {
        "llama-instruct": parse_config({**small, "model": {"name": TINY}, "data": {**small["data"], "max_length": 28}}),
        "bert-classifier": parse_config(small),
    }
    code = load_benchmark("cuda_memory").main(["--device", "cpu", "--sets", "3", "--rounds", "1"], configs=configs)
    out = capsys.readouterr().out
    assert code == 0
    for label in ("bert-classifier", "llama-instruct float32", "llama-instruct bfloat16"):
        line = next(l for l in out.splitlines() if l.startswith(f"cuda-memory {label}:"))
        assert "calibrated max" in line and "(3 random sets, on cpu)" in line
    assert out.count("round 1: accuracy") == 3 and "measured" in out and "base weights bfloat16" in out
    assert "budget violations 0" in out.split("checks on cpu")[1]
