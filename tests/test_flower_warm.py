"""The warm ClientApp, in process: one process serves the messages of several runs and configs from one
model (an LRU of models and data), each answer exactly what a fresh process would give; and the warm
executor runs a run's app only when it carries the fedpilot the executor imported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedpilot.flower import client_app, codec
from fedpilot.flower.transport import SCORE_TYPE, TRAIN_TYPE
from fedpilot.runtime.messages import ScoreInstructions, TrainInstructions
from fedpilot.strategies.base import Assignment

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NODE = {"partition-id": 1, "num-partitions": 3, "memory-budget": "1GiB"}


pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture
def fresh_process(monkeypatch):
    """The ClientApp module's caches empty, as in a process that has served nothing yet."""
    monkeypatch.setattr(client_app, "_WARM", type(client_app._WARM)())
    monkeypatch.setattr(client_app, "_NODES", type(client_app._NODES)())
    monkeypatch.delenv(client_app.WARM_MODELS_ENV, raising=False)


def settings(**changes) -> dict:
    from conftest import TINY

    out = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        section, _, field = dotted.rpartition(".")
        (out.setdefault(section, {}) if section else out)[field] = value
    return out


def ask(kind: str, content: RecordDict, config: dict, run_id: int) -> RecordDict:
    """One message through the ClientApp as a SuperNode delivers it; the reply's content, through the wire."""
    from fedpilot.config import parse_config

    content[codec.CONFIG] = ConfigRecord({codec.CONFIG: parse_config(config).model_dump_json()})
    message = Message(recorddict_from_proto(recorddict_to_proto(content)), dst_node_id=7, message_type=kind, group_id="1")
    reply = client_app.app(message=message, context=Context(run_id, 7, dict(NODE), RecordDict(), {}))
    assert not reply.has_error(), reply.error
    return recorddict_from_proto(recorddict_to_proto(reply.content))


def adapter(model, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (0.05 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in model.state().items()}


def train(config: dict, run_id: int, assignment: Assignment, tensors: dict, payload: str = "full", seed: int = 3):
    instructions = TrainInstructions(local_steps=2, batch_size=8, optimizer="adamw", lr=config["train"]["lr"], weight_decay=0.0, seed=seed, payload=payload)
    return codec.decode_train_reply(ask(TRAIN_TYPE, codec.encode_train_task(assignment, tensors, instructions), config, run_id))


def test_one_process_serves_two_configs_and_runs_from_one_model_and_leaks_nothing(fresh_process) -> None:
    """Config A trains; config B (same model and data, other lr, an ``assigned`` payload at other ranks,
    a score task) reuses the same model in the same process; config A again, in a later run, gives
    exactly what it gave first: nothing of B (adapter, ranks, trainable set, optimiser, randomness) is
    left in the model."""
    a = settings(**{"train.lr": 0.003})
    b = settings(**{"train.lr": 0.01, "federation.payload": "assigned"})
    info = codec.decode_node_info(ask(MessageType.QUERY, RecordDict(), a, run_id=1))
    assert info["partition_id"] == 1 and info["budget_bytes"] == 2**30 and info["warm"] is False
    model = next(iter(client_app._WARM.values())).model
    modules = model.modules
    sent_a, sent_b, sent_score = (adapter(model, seed) for seed in range(3))  # full-rank adapters
    first_samples, first, first_metrics = train(a, 1, Assignment(tuple(modules[:4])), sent_a)

    info_b = codec.decode_node_info(ask(MessageType.QUERY, RecordDict(), b, run_id=2))
    assert info_b["warm"] is True and info_b["process"] == info["process"] and len(client_app._WARM) == 1
    assert client_app._NODES[next(reversed(client_app._NODES))].client.model is model  # B runs on A's model
    head = {k: v for k, v in sent_b.items() if k.startswith("head/")}
    own = {k: v[:2] if k.endswith("lora_A") else v[:, :2] for k, v in sent_b.items() if k.split("/")[0] == modules[-1]}
    train(b, 2, Assignment((modules[-1],), ranks={modules[-1]: 2}), {**own, **head}, payload="assigned", seed=9)
    scores = codec.decode_score_reply(ask(SCORE_TYPE, codec.encode_score_task(modules[:2], sent_score, ScoreInstructions(2, 8, 5)), b, 2))[0]
    assert set(scores) == set(modules[:2]) and all(s > 0 for s in scores.values())

    samples, again, metrics = train(a, 3, Assignment(tuple(modules[:4])), sent_a)
    assert samples == first_samples and list(again) == list(first)
    for key in first:
        assert np.array_equal(again[key], first[key]), key
    assert metrics["train_loss"] == first_metrics["train_loss"]


def test_the_lru_keeps_as_many_models_as_it_is_given(fresh_process, monkeypatch) -> None:
    """A config of another seed (other split, other model) builds another model; with FEDPILOT_WARM_MODELS=1
    it evicts the first (and the nodes on it), with 2 both stay."""
    from fedpilot.config import parse_config

    a, other = parse_config(settings()), parse_config(settings(seed=1))
    assert client_app.warm_key(a) != client_app.warm_key(other)
    assert client_app.warm_key(a) == client_app.warm_key(parse_config(settings(**{"train.lr": 0.1, "federation.rounds": 9})))
    # nor the partition (shards are kept per partitioner) or the held-out share (drawn per node): the same model and data
    held_out = settings(**{"data.client_test_fraction": 0.25, "train.evaluate": "both"})
    held_out["data"]["partition"] = {"kind": "iid"}
    assert client_app.warm_key(a) == client_app.warm_key(parse_config(held_out))
    assert client_app.warm_key(a) != client_app.warm_key(parse_config(settings(**{"data.max_length": 24})))
    first = client_app.load_node(a, NODE, run_id=1).client.model
    client_app.load_node(other, NODE, run_id=2)
    assert len(client_app._WARM) == 1 and all(n.client.model is not first for n in client_app._NODES.values())
    monkeypatch.setenv(client_app.WARM_MODELS_ENV, "2")
    rebuilt = client_app.load_node(a, NODE, run_id=3)
    assert len(client_app._WARM) == 2 and rebuilt.warm is False and rebuilt.client.model is not first
    assert client_app.load_node(other, NODE, run_id=4).warm is True
    monkeypatch.setenv(client_app.WARM_MODELS_ENV, "0")
    with pytest.raises(ValueError, match="FEDPILOT_WARM_MODELS"):
        client_app.warm_models()


def test_the_warm_executor_runs_a_fab_of_its_own_fedpilot_only() -> None:
    """A FAB built from this repository runs here; one whose fedpilot differs in a file, or adds one, or
    whose ClientApp is not fedpilot's, is refused naming why."""
    from flwr.cli.build import build_fab_from_files
    from flwr.cli.utils import collect_files

    from fedpilot.flower.warm import inspect_fab

    files = collect_files(ROOT)
    assert inspect_fab(build_fab_from_files(files)[0], ROOT) == ("fedpilot.flower.client_app:app", None)
    changed = {**files, "fedpilot/flower/codec.py": (ROOT / "fedpilot/flower/codec.py").read_bytes() + b"\n# changed\n"}
    assert inspect_fab(build_fab_from_files(changed)[0], ROOT)[1] == f"fedpilot/flower/codec.py differs between the run's app and {ROOT}"
    added = {**files, "fedpilot/flower/extra.py": b"x = 1\n"}
    assert inspect_fab(build_fab_from_files(added)[0], ROOT)[1] == f"fedpilot/flower/extra.py is in the run's app but not in {ROOT}"
    pyproject = (ROOT / "pyproject.toml").read_text().replace('"fedpilot.flower.client_app:app"', '"other.client:app"')
    ref, why = inspect_fab(build_fab_from_files({**files, "pyproject.toml": pyproject.encode()})[0], ROOT)
    assert ref == "other.client:app" and why == "the run's ClientApp is 'other.client:app'; this executor runs fedpilot's only"


@pytest.mark.parametrize("count", [1, 2])
def test_cpu_slots_let_at_most_their_count_compute_at_once(tmp_path, count) -> None:
    """Executors sharing a slot folder: of six tasks started together, never more than ``count`` hold a slot
    at once, and every task gets one."""
    import threading
    import time

    from fedpilot.flower.warm import CpuSlots

    slots, lock, holding, peak, done = CpuSlots(tmp_path / "slots", count), threading.Lock(), [0], [0], []

    def task(i: int) -> None:
        with CpuSlots(tmp_path / "slots", count).hold():  # each executor opens the folder itself
            with lock:
                holding[0] += 1
                peak[0] = max(peak[0], holding[0])
            time.sleep(0.05)
            with lock:
                holding[0] -= 1
        done.append(i)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(done) == list(range(6)) and peak[0] == count
    assert len(slots.paths) == count


def test_a_slot_is_free_again_once_its_holder_dies(tmp_path) -> None:
    """The kernel drops a killed holder's lock: the slot is not lost with the process."""
    import subprocess
    import sys
    import time

    from fedpilot.flower.warm import CpuSlots

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
                               "from fedpilot.flower.warm import CpuSlots\nwith CpuSlots(Path(sys.argv[2]), 1).hold():\n"
                               " print('held', flush=True); time.sleep(60)", str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    got = []
    waiter = __import__("threading").Thread(target=lambda: got.append(CpuSlots(tmp_path, 1).hold().__enter__()))
    waiter.start()
    time.sleep(0.3)
    assert not got  # the one slot is held
    holder.kill()
    holder.wait()
    waiter.join(10)
    assert got == [tmp_path / "slot-0.lock"]


@pytest.mark.parametrize("argv", [["--cpu-slots", "2"], ["--slot-dir", "x"], ["--cpu-slots", "0", "--slot-dir", "x"], ["--torch-threads", "0"]])
def test_the_warm_executor_refuses_half_or_bad_sharing_options_in_one_line(argv, capsys) -> None:
    from fedpilot.flower.warm import main

    assert main(["--runtime-api-address", "127.0.0.1:1", "--insecure", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("--cpu-slots" in err or "--torch-threads" in err)


def test_one_executor_takes_the_tasks_of_several_nodes_one_at_a_time_each_node_s_waiting_tasks_first() -> None:
    """``serve`` over several SuperNodes: every task of every node runs, one at a time, in claim order: a node's
    waiting tasks before the next node's; nothing runs after the stop."""
    import threading

    from fedpilot.flower.warm import serve

    stop, ran, running = threading.Event(), [], [0]

    class Node:
        def __init__(self, name: str, tasks: list[str]) -> None:
            self.address, self.tasks, self.refused = name, tasks, False

        def claim(self):
            return self.tasks.pop(0) if self.tasks else None

        def run_task(self, token: str) -> None:
            running[0] += 1
            assert running[0] == 1  # one at a time
            ran.append(token)
            running[0] -= 1
            if token == "b2":
                stop.set()

    a, b, c = Node("a", ["a1", "a2"]), Node("b", ["b1", "b2", "b3"]), Node("c", ["c1"])
    serve([a, b, c], stop, poll=0.1)
    assert ran == ["a1", "a2", "b1", "b2"] and b.tasks == ["b3"] and c.tasks == ["c1"]


def test_after_a_refused_claim_the_executor_waits_its_poll_before_claiming_again() -> None:
    """A SuperNode that refuses claims is asked again only every ``poll`` seconds, not at the fast post-task pace."""
    import threading

    from fedpilot.flower.warm import serve

    stop, claims = threading.Event(), []

    class Refusing:
        address, refused = "r", False

        def claim(self):
            claims.append(1)
            self.refused = True
            return None

    threading.Timer(0.5, stop.set).start()
    serve([Refusing()], stop, poll=0.3)
    assert len(claims) == 2  # at 0 s and 0.3 s; without the refusal's wait, 0.05 s apart and growing: five or more
