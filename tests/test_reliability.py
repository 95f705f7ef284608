"""Faults: corrupt client updates never reach the global model, checkpoints are never torn, runs
resume exactly, finished runs are never overwritten."""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import interrupted_at_round
from fedpilot.config import Config, TrainSettings
from fedpilot.core.errors import FedpilotError
from fedpilot.core.files import write_atomic
from fedpilot.federation import prepare_out_dir
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.checkpoint import CHECKPOINT, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from fedpilot.runtime.messages import ScoreTask, TrainTask
from fedpilot.runtime.server import Server
from fedpilot.simulation import run_simulation
from fedpilot.strategies import STRATEGIES, ClientInfo, FederationContext
from fedpilot.strategies.base import ClientScores, ClientUpdate

RANK, D = 2, 3
MODULES = [f"{layer}.{t}" for layer in range(3) for t in ("q", "v")]
KEYS = {m: [f"{m}/lora_A", f"{m}/lora_B"] for m in MODULES} | {"head": ["head/w"]}
SHAPES = {k: ((RANK, D) if k.endswith("lora_A") else (D, RANK) if k.endswith("lora_B") else (2, D)) for ks in KEYS.values() for k in ks}
COST = CostModel(
    fixed=1000, activation=(300, 200, 100), module={m: 10 for m in MODULES}, rank=RANK, rank_bytes={m: 2 for m in MODULES}
)
CONTEXT = FederationContext(MODULES, KEYS, SHAPES, 3, RANK, COST, memory_margin=0.0)
CORRUPTIONS = ["nan", "inf", "shape", "dtype", "extra", "missing", "unassigned", "huge"]


class FakeTransport:
    """Clients that answer every task with a small random change, except a victim whose reply is corrupted."""

    def __init__(self, seed: int, victim: int | None = None, corruption: str = "", drop_victim: bool = False) -> None:
        self.seed, self.victim, self.corruption, self.drop_victim = seed, victim, corruption, drop_victim
        self.victim_had_task = False

    def score(self, server_round: int, tasks: Sequence[ScoreTask]) -> list[ClientScores]:
        rng = np.random.default_rng([self.seed, server_round, 7])
        return [ClientScores(t.cid, {m: float(rng.random()) + 0.01 for m in t.modules}) for t in tasks]

    def train(self, server_round: int, tasks: Sequence[TrainTask]) -> list[ClientUpdate]:
        replies = []
        for task in tasks:
            rng = np.random.default_rng([self.seed, server_round, task.cid])
            tensors = {
                k: (task.tensors[k] + 0.01 * rng.standard_normal(task.tensors[k].shape)).astype(np.float32)
                for k in CONTEXT.reply_keys(task.assignment)
            }
            if task.cid == self.victim:
                self.victim_had_task = True
                if self.drop_victim:
                    continue
                tensors = corrupt(tensors, task, self.corruption, rng)
            replies.append(ClientUpdate(task.cid, 10 + task.cid, tensors, {"train_loss": 1.0}))
        return replies


def corrupt(tensors: dict, task: TrainTask, kind: str, rng: np.random.Generator) -> dict:
    tensors = dict(tensors)
    key = sorted(tensors)[int(rng.integers(len(tensors)))]
    value = tensors[key].copy()
    if kind in ("nan", "inf"):
        value.flat[int(rng.integers(value.size))] = np.nan if kind == "nan" else -np.inf
    elif kind == "shape":
        value = np.concatenate([value, value[:1]], axis=0)
    elif kind == "dtype":
        value = value.astype(np.float64)
    elif kind == "huge":
        value = task.tensors[key] + (value - task.tensors[key]) * 1e6
    tensors[key] = value
    if kind == "extra":
        tensors["9.q/lora_A"] = np.zeros((RANK, D), np.float32)
    elif kind == "missing":
        del tensors[key]
    elif kind == "unassigned":
        unassigned = [m for m in MODULES if m not in task.assignment.modules]
        tensors[f"{unassigned[0]}/lora_A" if unassigned else "head/bias"] = np.zeros((RANK, D), np.float32)
    return tensors


def make_server(name: str) -> Server:
    shapes = dict(SHAPES)
    if STRATEGIES[name].capabilities.base_deltas:  # strategies that merge into the frozen weights carry a delta per module
        shapes |= {f"{m}/base_delta": (D, D) for m in MODULES}
    strategy = STRATEGIES[name](FederationContext(MODULES, KEYS, shapes, 3, RANK, COST, memory_margin=0.0))
    clients = [ClientInfo(cid, 10 + cid, None) for cid in range(4)]
    initial = {k: np.random.default_rng(1).standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}
    # strategies that score on the server's proxy set get fixed scores (a layer's importance grows with depth)
    proxy = (lambda tensors: {m: 1.0 + i for i, m in enumerate(MODULES)}) if STRATEGIES[name].capabilities.needs_proxy else None
    server = Server(strategy, clients, initial, TrainSettings(), seed=0, update_norm_bound=10.0, proxy=proxy)
    server.check_budgets()  # as every driver does before round 1
    return server


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruption=st.sampled_from(CORRUPTIONS), victim=st.integers(0, 3), seed=st.integers(0, 1000))
def test_a_corrupt_update_is_rejected_and_never_reaches_the_global_model(name: str, corruption: str, victim: int, seed: int) -> None:
    corrupted, reference = make_server(name), make_server(name)
    for server_round in (1, 2):
        transport = FakeTransport(seed, victim, corruption)
        result = corrupted.run_round(server_round, transport)
        reference.run_round(server_round, FakeTransport(seed, victim, corruption, drop_victim=True))
        assert [r["cid"] for r in result.rejected] == ([victim] if transport.victim_had_task else [])
        assert victim not in {c["cid"] for c in result.clients}
        assert set(corrupted.global_tensors) == set(reference.global_tensors)
        for key, value in corrupted.global_tensors.items():
            np.testing.assert_array_equal(value, reference.global_tensors[key], err_msg=f"{name} {corruption} {key}")


def test_a_round_with_no_valid_update_keeps_the_global_model() -> None:
    server = make_server("fedavg")
    before = {k: v.copy() for k, v in server.global_tensors.items()}

    class AllNaN(FakeTransport):
        def train(self, server_round, tasks):
            return [ClientUpdate(t.cid, 5, {k: np.full_like(t.tensors[k], np.nan) for k in CONTEXT.reply_keys(t.assignment)}) for t in tasks]

    result = server.run_round(1, AllNaN(0))
    assert result.skipped == "no valid update arrived" and len(result.rejected) == 4
    assert all(np.array_equal(server.global_tensors[k], before[k]) for k in before)


def test_a_checkpoint_round_trips_arrays_and_json(tmp_path: Path) -> None:
    state = {"history": {"0.q/lora_A": np.arange(6, dtype=np.float32).reshape(2, 3)}, "staleness": {"0.q": 2}, "scores": [0.5, None]}
    tensors = {"0.q/lora_A": np.ones((2, 3), np.float32), "head/w": np.zeros((2, 3), np.float32)}
    save_checkpoint(tmp_path, Checkpoint(3, tensors, state, {"accuracy": 0.5}, {"rounds": [1, 2, 3]}))
    loaded = load_checkpoint(tmp_path)
    assert loaded.server_round == 3 and loaded.last_metrics == {"accuracy": 0.5} and loaded.results == {"rounds": [1, 2, 3]}
    assert all(np.array_equal(loaded.global_tensors[k], v) for k, v in tensors.items())
    assert np.array_equal(loaded.strategy_state["history"]["0.q/lora_A"], state["history"]["0.q/lora_A"])
    assert loaded.strategy_state["staleness"] == {"0.q": 2} and loaded.strategy_state["scores"] == [0.5, None]


def test_a_torn_checkpoint_is_never_loaded(tmp_path: Path) -> None:
    tensors = {"head/w": np.ones((2, 3), np.float32)}
    save_checkpoint(tmp_path, Checkpoint(1, tensors, {}, {}, {}))
    good = (tmp_path / CHECKPOINT).read_bytes()

    def dies_mid_write(tmp: Path) -> None:
        tmp.write_bytes(good[: len(good) // 2])
        raise KeyboardInterrupt  # the process is stopped half-way through writing round 2's checkpoint

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / CHECKPOINT, dies_mid_write)
    assert (tmp_path / CHECKPOINT).read_bytes() == good and load_checkpoint(tmp_path).server_round == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary file left behind
    for cut in (0, 7, 100, len(good) - 1):  # a file torn by some other hand is refused, with one line
        (tmp_path / CHECKPOINT).write_bytes(good[:cut])
        with pytest.raises(CheckpointError, match="damaged checkpoint") as err:
            load_checkpoint(tmp_path)
        assert "\n" not in str(err.value)
        assert err.value.reason.endswith(")") and str(err.value) == f"{err.value.reason}; rerun with --overwrite"
        copied = pickle.loads(pickle.dumps(err.value))  # as a compare --jobs worker hands it back
        assert type(copied) is CheckpointError and (copied.reason, str(copied)) == (err.value.reason, str(err.value))


def test_an_existing_run_is_never_overwritten_silently(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    with pytest.raises(FedpilotError, match="holds a run already; pass --resume .* or --overwrite"):
        prepare_out_dir(tmp_path / "run")
    prepare_out_dir(tmp_path / "run", overwrite=True)
    assert not (tmp_path / "run" / "results.json").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FedpilotError, match="exists and is not a folder"):
        prepare_out_dir(tmp_path / "file")
    with pytest.raises(FedpilotError, match="is not writable"):
        prepare_out_dir(Path("/proc/fedpilot-cannot-write-here"))


def test_an_interrupted_run_resumes_to_the_same_end(fast_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = fast_config.model_copy(update={"federation": fast_config.federation.model_copy(update={"rounds": 3})})
    full = run_simulation(config, tmp_path / "full", progress=False)
    with interrupted_at_round(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        run_simulation(config, tmp_path / "part", progress=False)
    interrupted = json.loads((tmp_path / "part" / "results.json").read_text())
    assert interrupted["status"] == "interrupted" and len(interrupted["rounds"]) == 3
    with pytest.raises(FedpilotError, match="differs from the config of the run"):
        run_simulation(config.model_copy(update={"seed": 5}), tmp_path / "part", progress=False, resume=True)

    resumed = run_simulation(None, tmp_path / "part", progress=False, resume=True)

    assert resumed.results["status"] == "finished" and resumed.results["resumed_after_rounds"] == [2]
    assert [r["finished_at"] for r in resumed.rounds[:3]] == [r["finished_at"] for r in interrupted["rounds"]]
    for a, b in zip(full.rounds, resumed.rounds):
        assert (a["round"], a["accuracy"], a["loss"], a["train_loss"]) == (b["round"], b["accuracy"], b["loss"], b["train_loss"])
    from safetensors.numpy import load_file

    ours, theirs = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors"), load_file(tmp_path / "part" / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def _cli(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "fedpilot.cli", *args]


def _stop_after_a_round(argv: list[str], run_dir: Path, sig: int) -> tuple[int, str]:
    """Start ``fedpilot`` as a real process, send it ``sig`` once round 1 is checkpointed; (exit code, stderr).
    The process is always gone when this returns."""
    import subprocess
    import time

    proc = subprocess.Popen(_cli(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / CHECKPOINT).exists() and load_checkpoint(run_dir).server_round >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_a_sigkilled_run_resumes_through_the_cli_to_the_same_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real process killed with SIGKILL after a round: --resume finishes it exactly as an uninterrupted run."""
    import signal

    import yaml

    from fedpilot.cli import main
    from tests.conftest import FAST

    config = {**FAST, "federation": {**FAST["federation"], "rounds": 3}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "killed"
    code, _ = _stop_after_a_round(["run", "--config", str(tmp_path / "c.yaml"), "--out", str(run_dir), "--quiet"], run_dir, signal.SIGKILL)
    assert code == -signal.SIGKILL
    done = load_checkpoint(run_dir).server_round
    assert 1 <= done < 3
    before = json.loads((run_dir / "results.json").read_text())
    assert before["status"] == "running"  # nothing had the chance to say otherwise

    # the kill needed a real process; what follows is the CLI's own main in this process (same parser,
    # handler and exit codes, without starting an interpreter and loading the model three more times)
    assert main(["run", "--config", str(tmp_path / "c.yaml"), "--out", str(run_dir)]) == 2
    refused = capsys.readouterr().err
    assert "holds a run already; pass --resume" in refused and refused.count("\n") == 1
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 0, capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "straight"), "--quiet"]) == 0, capsys.readouterr().err

    after = json.loads((run_dir / "results.json").read_text())
    reference = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert after["status"] == "finished" and after["resumed_after_rounds"] == [done]
    assert [r["finished_at"] for r in after["rounds"][: done + 1]] == [r["finished_at"] for r in before["rounds"][: done + 1]]
    for a, b in zip(after["rounds"], reference["rounds"], strict=True):
        assert (a["accuracy"], a["loss"], a["train_loss"]) == (b["accuracy"], b["loss"], b["train_loss"])
    from safetensors.numpy import load_file

    ours, theirs = load_file(run_dir / "adapter" / "adapter_model.safetensors"), load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_cli_run_flags_and_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedpilot.cli import main

    (tmp_path / "file").write_text("x")
    cases = [
        (["run", "--out", str(tmp_path / "file")], "exists and is not a folder"),
        (["run", "--resume", str(tmp_path / "nothing")], "no checkpoint here"),
        (["run", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b")], "--out and --resume name different folders"),
        (["run", "--resume", str(tmp_path / "a"), "--overwrite"], "give one of them"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    with pytest.raises(FedpilotError):
        main(["run", "--debug", "--out", str(tmp_path / "file")])


def test_sigterm_saves_results_and_marks_the_run_interrupted(tmp_path: Path) -> None:
    import signal

    import yaml

    from tests.conftest import FAST

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**FAST, "federation": {**FAST["federation"], "rounds": 6}}))
    run_dir = tmp_path / "run"
    code, err = _stop_after_a_round(["run", "--config", str(tmp_path / "c.yaml"), "--out", str(run_dir), "--quiet"], run_dir, signal.SIGTERM)
    assert code == 130 and "interrupted; results so far are saved" in err and "Traceback" not in err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and len(results["rounds"]) >= 2


def test_a_batch_larger_than_a_shard_is_said_once_and_recorded(fast_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = fast_config.model_copy(update={
        "strategy": "fedavg",
        "federation": fast_config.federation.model_copy(update={"rounds": 1, "budgets": None}),
        "train": fast_config.train.model_copy(update={"batch_size": 70, "local_steps": 1}),
    })
    result = run_simulation(config, tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    shards = {c["cid"]: c["num_samples"] for c in result.results["clients"]}
    short = {cid for cid, n in shards.items() if n < 70}
    assert short and err.count("train.batch_size 70 exceeds the shard of") == 1
    for record in result.rounds[1]["clients"]:
        assert record["batch_rows"] == min(70, shards[record["cid"]])
