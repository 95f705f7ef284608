"""``fedpilot profile``, ``plan``, ``solve``, ``run`` and ``compare`` on the llama-instruct family.

Everything but the solve test runs on the TINY RANDOMLY INITIALISED Llama of test_llama_family (2 layers,
q/v LoRA) on BBC News, through the CLI entry point, in one calibration cache per module: profile
calibrates, its numbers size the budgets of plan and compare. The solve test feeds the shipped
SmolLM2 config's analytic cost model (30 layers x 7 targets, no weights needed) to ``fedpilot solve``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from test_llama_family import TINY, tiny_spec  # noqa: F401 (fixture)

from fedpilot.cli import main

BASE = {
    "model": {"name": TINY, "lora": {"dropout": 0.0}},
    "data": {"max_samples": 60, "max_length": 28, "partition": {"kind": "iid"}},
    "federation": {"num_clients": 2, "rounds": 1, "budgets": None},
    "train": {"local_steps": 2, "batch_size": 4, "eval_batch_size": 16},
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_spec):  # noqa: F811
    """One fedpilot cache for the module (encodings of the tiny tokenizer, the calibration)."""
    folder = tmp_path_factory.mktemp("fedpilot-cache")
    previous = os.environ.get("FEDPILOT_CACHE")
    os.environ["FEDPILOT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["FEDPILOT_CACHE"]
    else:
        os.environ["FEDPILOT_CACHE"] = previous


def write_config(folder, data) -> str:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def budgets_config(tmp_path_factory, cache):
    """The tiny config with two clients: one that cannot afford full LoRA, one that can (from ``fedpilot profile``)."""
    folder = tmp_path_factory.mktemp("config")
    path = write_config(folder, BASE)
    import contextlib  # a module fixture cannot take capsys: capture stdout directly
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["profile", "--config", path, "--json", "--device", "cpu"]) == 0
    report = json.loads(stdout.getvalue())
    full, cheapest = report["full_lora_mib"], report["cheapest"]["mib"]
    assert report["source"] == "calibrated" and len(report["layers"]) == 2 and cheapest < full
    small = cheapest + 0.25 * (full - cheapest)  # the top layer fits (with the 1 % margin), full LoRA does not
    data = {**BASE, "federation": {**BASE["federation"], "budgets": [f"{int(small * 1024)}KiB", f"{int(full * 1.2 * 1024)}KiB"]}}
    return write_config(folder, data), report


def test_tiny_llama_profile_is_calibrated_and_cached(budgets_config, capsys):
    path, report = budgets_config
    code, out, _ = run_cli(capsys, "profile", "--config", path, "--json")
    again = json.loads(out)
    assert code == 0 and again["cached"] and again["full_lora_mib"] == report["full_lora_mib"]
    assert set(again["layers"][0]["modules_mib"]) == {"q_proj", "v_proj"}
    code, out, _ = run_cli(capsys, "profile", "--config", path, "--analytic")
    assert code == 0 and "estimated from the model config" in out and "q_proj" in out


def test_tiny_llama_plan_fits_each_budget(budgets_config, capsys, tmp_path):
    path, _ = budgets_config
    whole_batch = yaml.safe_load(Path(path).read_text()) | {"strategy_options": {"micro_batching": "off"}}
    for config, micro in ((write_config(tmp_path, whole_batch), False), (path, True)):
        code, out, _ = run_cli(capsys, "plan", "--config", config, "--json", "--device", "cpu")
        assert code == 0
        plan = json.loads(out)
        assert plan["num_layers"] == 2 and plan["targets"] == ["q_proj", "v_proj"]
        small, big = plan["clients"]
        if micro:  # the default plans micro-batches: the small client affords more of the model one micro-batch at a time
            assert small["micro_batch"] > 0 and len(small["modules"]) > len(plan_off["clients"][0]["modules"]) and len(big["modules"]) == 4
        else:
            assert 0 < len(small["modules"]) < len(big["modules"]) == 4 and small["micro_batch"] == 0
            assert all(m.startswith("1.") for m in small["modules"])  # the lower layer's activations do not fit
            plan_off = plan
        for client in plan["clients"]:
            assert client["predicted_bytes"] <= 0.99 * client["budget_bytes"]
    code, out, _ = run_cli(capsys, "plan", "--config", path)
    assert code == 0 and "q=q_proj" in out


def test_tiny_llama_compare_fedpilot_and_fedavg(budgets_config, tmp_path, capsys):
    path, _ = budgets_config
    out_dir = tmp_path / "compare"
    code, out, err = run_cli(capsys, "compare", "--config", path, "--strategies", "fedpilot,fedavg", "--seeds", "0",
                             "--preset", "quick", "--out", str(out_dir), "--quiet", "--device", "cpu")
    assert code == 0, err
    summary = json.loads((out_dir / "comparison.json").read_text())["summary"]
    assert set(summary) == {"fedpilot", "fedavg"}
    assert summary["fedpilot"]["budget_violations"] == 0  # memory-aware: within every budget
    assert summary["fedavg"]["budget_violations"] >= 1  # full LoRA on the small client is over its budget, and recorded
    results = json.loads((out_dir / "fedpilot-seed0" / "results.json").read_text())
    assert results["status"] == "finished" and results["config"]["model"]["name"] == TINY
    assert (out_dir / "comparison.md").is_file()
    # Run again with another --device spelling: the finished runs are reused (the device is where, not what, ran).
    code, out, err = run_cli(capsys, "compare", "--config", path, "--strategies", "fedpilot,fedavg", "--seeds", "0",
                             "--preset", "quick", "--out", str(out_dir), "--quiet", "--device", "auto")
    assert code == 0 and "0 run now, 2 skipped" in out, err


def test_tiny_llama_run_and_device_errors(budgets_config, tmp_path, capsys):
    path, _ = budgets_config
    code, out, err = run_cli(capsys, "run", "--config", path, "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu")
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["model"]["device"] == "cpu" and results["memory"]["cost_model"]["settings"]["device"] == "cpu"
    assert not results["budget_violations"]
    code, _, err = run_cli(capsys, "run", "--config", path, "--out", str(tmp_path / "bad"), "--device", "gpu")
    assert code == 2 and err.count("\n") == 1 and "--device: model.device: 'gpu' is not a device" in err
    code, _, err = run_cli(capsys, "run", "--resume", str(tmp_path / "run"), "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and "--device applies to a new run" in err
    import torch

    if not torch.cuda.is_available():
        code, _, err = run_cli(capsys, "plan", "--config", path, "--device", "cuda")
        assert code == 2 and err.count("\n") == 1 and "torch sees no CUDA device" in err


def test_smollm2_analytic_cost_model_solves_with_fedpilot_solve(capsys, monkeypatch):
    """The shipped LLM config's cost model (30 layers x 7 targets) as a `fedpilot solve` problem: a budget
    below full LoRA gets an optimal set above layer 0 that fits; the cheapest set costs what the model says."""
    import io

    from fedpilot.cli.profile import analytic_cost_model
    from fedpilot.config import load_config, parse_config
    from fedpilot.core.keys import module_layer

    shipped = load_config("fedpilot/configs/smollm2-bbc.yaml").model_dump(mode="json")
    shipped["model"]["lora"]["targets"] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cost = analytic_cost_model(parse_config(shipped))
    budget = cost.fixed + cost.activation[20] + sum(b for m, b in cost.module.items() if module_layer(m) >= 20)
    problem = {
        "budget_bytes": budget, "fixed_bytes": cost.fixed, "activation_bytes": list(cost.activation),
        "modules": [{"name": m, "layer": cost.layer[m], "bytes": b, "value": 1.0 + cost.layer[m] / 30} for m, b in cost.module.items()],
    }
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(problem)))
    code, out, _ = run_cli(capsys, "solve")
    answer = json.loads(out)
    assert code == 0 and answer["optimal"] and len(cost.module) == 210
    assert answer["predicted_bytes"] == cost.cost(answer["modules"]) <= budget
    assert min(module_layer(m) for m in answer["modules"]) >= 20 and len(answer["modules"]) >= 70
