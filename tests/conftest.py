"""Shared fixtures: the real model and a small slice of the real corpus, loaded once per session."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from checkpoints import fast_bert  # noqa: E402
from fedpilot.config import Config, parse_config  # noqa: E402
from fedpilot.core.paths import cache_dir  # noqa: E402
from fedpilot.data.split import SplitData  # noqa: E402
from fedpilot.families.encoding import load_split  # noqa: E402
from fedpilot.runtime.lora import LoraModel  # noqa: E402

TINY = {
    "data": {"max_samples": 240, "max_length": 16, "partition": {"kind": "dirichlet", "alpha": 0.5, "min_partition_size": 5}},
    "federation": {"num_clients": 3, "rounds": 2},
    "train": {"local_steps": 4, "batch_size": 8, "lr": 0.003},
}

# TINY on a tiny random BERT (4 layers, hidden 32, MiniLM's real tokenizer; tests/checkpoints.py) with budgets
# that make the three clients train 2, 4 and 8 of its 8 modules: for the tests of federation behaviour
# (resume, stop, compare, drivers) that need a real model path but not real weights. A run costs about a
# fifth of TINY's CPU time. A folder path, so that processes a test starts load the same model.
FAST_MODEL = fast_bert(cache_dir() / "test-models")
FAST = {**TINY, "model": {"name": str(FAST_MODEL)}, "federation": {**TINY["federation"], "budgets": ["4443KiB", "4687KiB", "5176KiB"]}}



@contextlib.contextmanager
def interrupted_at_round(monkeypatch: pytest.MonkeyPatch, number: int):
    """Inside: ``Server.run_round`` raises KeyboardInterrupt (a Ctrl-C) when it reaches round ``number``; the real
    one again on leaving, so a test can then resume the run it stopped."""
    from fedpilot.runtime.server import Server

    original = Server.run_round

    def stop(self, server_round, transport):
        if server_round == number:
            raise KeyboardInterrupt
        return original(self, server_round, transport)

    monkeypatch.setattr(Server, "run_round", stop)
    try:
        yield
    finally:
        monkeypatch.setattr(Server, "run_round", original)


def default_sigint() -> None:
    """``preexec_fn`` of a child a test stops with Ctrl-C: SIGINT back to its default, so the test holds
    when pytest itself was started with SIGINT ignored (under nohup or as a shell's background job,
    whose children inherit the ignore and, for bash, cannot undo it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    """A federation small enough for a unit test, on the real model and a slice of the real data."""
    return parse_config(TINY)


@pytest.fixture(scope="session")
def fast_config() -> Config:
    """:data:`FAST`: TINY's federation on the tiny random BERT, with budgets that force partial allocation."""
    return parse_config(FAST)


@pytest.fixture(scope="session")
def tiny_data(tiny_config: Config) -> SplitData:
    return load_split(tiny_config.data, tiny_config.model.name, tiny_config.seed)


@pytest.fixture(scope="session")
def shared_model(tiny_config: Config, tiny_data: SplitData) -> LoraModel:
    """One real model for the tests that load their own adapter state into it."""
    return LoraModel(tiny_config.model, num_labels=len(tiny_data.label_names), seed=0)


@pytest.fixture(scope="session")
def tiny_cost_model(tiny_config: Config, tiny_data: SplitData, shared_model: LoraModel):
    """The calibrated cost model of the tiny configuration (cached on disk like any run's)."""
    return calibrated(tiny_config, tiny_data, shared_model)


@pytest.fixture(scope="session")
def fast_data(fast_config: Config) -> SplitData:
    return load_split(fast_config.data, fast_config.model.name, fast_config.seed)


@pytest.fixture(scope="session")
def fast_model(fast_config: Config, fast_data: SplitData) -> LoraModel:
    """One tiny random BERT (:data:`FAST`) for the tests that load their own adapter state into it."""
    return LoraModel(fast_config.model, num_labels=len(fast_data.label_names), seed=0)


@pytest.fixture(scope="session")
def fast_cost_model(fast_config: Config, fast_data: SplitData, fast_model: LoraModel):
    """The calibrated cost model of :data:`FAST` (cached on disk like any run's)."""
    return calibrated(fast_config, fast_data, fast_model)


def calibrated(config: Config, data: SplitData, model: LoraModel):
    import numpy as np

    from fedpilot.memory.calibrate import load_or_calibrate
    from fedpilot.runtime.messages import TrainInstructions

    batch = data.train.subset(np.arange(config.train.batch_size))
    return load_or_calibrate(model, batch, TrainInstructions.from_settings(config.train, config.seed))[0]


@pytest.fixture
def flower_task_identity():
    """Flower messages take their run, node and task ids from the process's TaskIdentity, which a real ServerApp
    or ClientApp process sets: set here for the tests that build messages in this process, and restored after."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
