"""The Flower driver: codecs round-trip exactly, the transport over a fake Grid (timeouts, errors), and a
loopback federation on a real SuperLink and three SuperNodes that ends as the simulator does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedpilot.flower import codec
from fedpilot.flower.simulation import free_port
from fedpilot.flower.stage import stage_app
from fedpilot.flower.transport import SCORE_TYPE, TRAIN_TYPE, FlowerTransport, send_and_receive
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.messages import Failure, ScoreInstructions, ScoreTask, TrainInstructions, TrainTask
from fedpilot.strategies.base import Assignment, ClientScores, ClientUpdate

from flwr.app import Error, Message, RecordDict  # noqa: E402
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def wire(content: RecordDict) -> RecordDict:
    """Through protobuf and back, as on the wire."""
    return recorddict_from_proto(recorddict_to_proto(content))


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "0.query/lora_A": rng.standard_normal((4, 8)).astype(np.float32),
        "0.query/lora_B": rng.standard_normal((8, 4)).astype(np.float32),
        "1.value/lora_A": np.asfortranarray(rng.standard_normal((2, 8)).astype(np.float32)),
        "head/classifier.weight": rng.standard_normal((5, 8)).astype(np.float64),
        "head/classifier.bias": np.zeros((0,), dtype=np.float16),
    }


def same_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key]), key


# -- codecs ---------------------------------------------------------------------------------------------
def test_tensors_round_trip_exactly() -> None:
    sent = tensors()
    same_tensors(codec.tensors_from_record(wire(RecordDict({"t": codec.tensors_to_record(sent)})).array_records["t"]), sent)


def test_tensors_travel_as_one_array_and_a_record_of_named_arrays_still_decodes() -> None:
    """One object on the wire, whatever the number of tensors (the SuperLink's cost is per object); a
    record of one Array per tensor, as older senders sent, decodes to the same tensors; a blob whose key
    order does not name its tensors is an error, not a quietly reordered adapter."""
    from flwr.app import Array, ArrayRecord
    from safetensors.numpy import save

    sent = tensors()
    record = codec.tensors_to_record(sent)
    assert list(record.keys()) == [codec.PACKED] and record[codec.PACKED].dtype == "uint8"
    older = ArrayRecord({key: Array(np.asarray(value)) for key, value in sent.items()})
    same_tensors(codec.tensors_from_record(wire(RecordDict({"t": older})).array_records["t"]), sent)
    decoded = codec.tensors_from_record(record)
    decoded["0.query/lora_A"] += 1  # the client may update what it received in place
    blob = save({"a": np.zeros(2, np.float32)}, metadata={codec.ORDER: '["a", "b"]'})
    with pytest.raises(ValueError, match="corrupt"):
        codec.tensors_from_record(ArrayRecord({codec.PACKED: Array(np.frombuffer(blob, dtype=np.uint8))}))


@pytest.mark.parametrize(
    "assignment",
    [
        Assignment(("0.query", "1.value")),
        Assignment(("1.value",), ranks={"1.value": 2}, parts=("lora_B",)),
        Assignment((), ranks={}),
        Assignment(("0.query", "1.value"), checkpointing=True),
    ],
)
def test_train_tasks_round_trip_exactly(assignment: Assignment) -> None:
    instructions = TrainInstructions(local_steps=3, batch_size=8, optimizer="adamw", lr=0.003, weight_decay=0.01, seed=2**31 - 1, logit_adjustment=0.5)
    got_assignment, got_tensors, got_instructions = codec.decode_train_task(wire(codec.encode_train_task(assignment, tensors(), instructions)))
    assert got_assignment == assignment and got_instructions == instructions
    assert dict(got_assignment.ranks) == dict(assignment.ranks) and got_assignment.parts == assignment.parts
    same_tensors(got_tensors, tensors())


def test_an_assignment_record_from_before_checkpointing_decodes_without_it() -> None:
    record = codec.assignment_to_record(Assignment(("0.query",)))
    del record["checkpointing"]
    assert codec.assignment_from_record(record) == Assignment(("0.query",))


def test_an_assignment_with_its_own_tensors_gets_them_back() -> None:
    own = {k: v for k, v in tensors().items() if k.startswith("1.")}
    assignment = Assignment(("1.value",), ranks={"1.value": 2}, tensors=own)
    instructions = TrainInstructions(1, 2, "sgd", 0.1, 0.0, 5)
    got, got_tensors, _ = codec.decode_train_task(wire(codec.encode_train_task(assignment, own, instructions)))
    same_tensors(got.tensors, own)
    assert got.modules == assignment.modules and got.ranks == assignment.ranks


def test_score_tasks_and_replies_round_trip_exactly() -> None:
    instructions = ScoreInstructions(batches=2, batch_size=8, seed=7, logit_adjustment=0.5)
    modules, got_tensors, got_instructions = codec.decode_score_task(wire(codec.encode_score_task(["5.query", "4.value"], tensors(), instructions)))
    assert modules == ["5.query", "4.value"] and got_instructions == instructions
    same_tensors(got_tensors, tensors())
    scores = {"5.query": 1.2345678901234567e-9, "4.value": 0.0}
    metrics = {"seconds": 0.25, "scored": 2, "peak_bytes": 123456789012}
    got_scores, got_metrics = codec.decode_score_reply(wire(codec.encode_score_reply(scores, metrics)))
    assert got_scores == scores and got_metrics == metrics
    assert [type(v) for v in got_metrics.values()] == [float, int, int]


def test_train_replies_round_trip_exactly_metrics_keep_their_types() -> None:
    metrics = {"train_loss": 1.0 / 3.0, "num_samples": 40, "steps": 4, "batch_rows": 8, "upload_bytes": 2**40, "peak_bytes": None,
               "note": "x", "flag": True, "ranks": [1, 2]}
    num_samples, got_tensors, got_metrics = codec.decode_train_reply(wire(codec.encode_train_reply(40, tensors(), metrics)))
    assert num_samples == 40 and got_metrics == metrics and list(got_metrics) == list(metrics)
    assert [type(v) for v in got_metrics.values()] == [type(v) for v in metrics.values()]
    same_tensors(got_tensors, tensors())


def test_node_info_round_trips() -> None:
    cost = CostModel(fixed=100, activation=(50, 20), module={"0.query": 7, "1.query": 9}, rank=8, rank_bytes={"0.query": 1, "1.query": 1})
    for budget in (None, 150 * 2**20):
        info = codec.decode_node_info(wire(codec.encode_node_info(2, 3, 41, budget, cost, {"label_counts": [1, 2], "device": "cpu"})))
        assert info == {"partition_id": 2, "num_partitions": 3, "num_samples": 41, "budget_bytes": budget, "cost_model": cost,
                        "label_counts": [1, 2], "device": "cpu"}


# -- the transport over a fake Grid ---------------------------------------------------------------------
class FakeGrid:
    """push_messages and pull_messages as Flower's Grid has them: a reply can be pulled once its node answered.

    ``behaviour[node]``: "ok" (echo through a fedpilot handler), "silent" (never answers: a timeout),
    "error" (an error reply), "garbage" (a reply that does not decode), "unavailable" (the SuperLink's reply
    for a node that stopped sending heartbeats). ``late[node]``: pulls that come back without its reply.
    """

    def __init__(self, behaviour: dict[int, str], late: dict[int, int] | None = None) -> None:
        self.behaviour = behaviour
        self.late = late or {}
        self.sent: list[Message] = []
        self.pushes = self.pulls = 0
        self.ready: dict[str, tuple[Message, int]] = {}  # message id -> (reply, the first pull that returns it)

    def push_messages(self, messages):
        self.pushes += 1
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message_id = f"message-{len(self.sent)}"  # as Grid.push_messages does
            self.sent.append(message)
            ids.append(message_id)
            reply = self.answer(message, wire(message.content))
            if reply is not None:
                self.ready[message_id] = (reply, self.pulls + 1 + self.late.get(message.metadata.dst_node_id, 0))
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        arrived = [i for i in message_ids if i in self.ready and self.ready[i][1] <= self.pulls]
        return [self.ready.pop(i)[0] for i in arrived]

    def answer(self, message: Message, content: RecordDict) -> Message | None:
        kind = self.behaviour[message.metadata.dst_node_id]
        if kind == "silent":
            return None
        if kind == "unavailable":
            reply = Message(Error(code=3, reason="Error: Node Unavailable"), reply_to=message)
            reply.metadata.__dict__["_src_node_id"] = 1
            return reply
        if kind == "error":
            return Message(Error(code=0, reason="ClientApp raised ValueError: boom"), reply_to=message)
        if kind == "garbage":
            return Message(RecordDict(), reply_to=message)
        if message.metadata.message_type == TRAIN_TYPE:
            assignment, received, _ = codec.decode_train_task(content)
            trained = {k: v + 1 for k, v in received.items() if k.split("/")[0] in assignment.modules}
            return Message(codec.encode_train_reply(10, trained, {"train_loss": 0.5, "peak_bytes": 99}), reply_to=message)
        modules, _, _ = codec.decode_score_task(content)
        return Message(codec.encode_score_reply({m: 1.0 for m in modules}, {"seconds": 0.1}), reply_to=message)


def train_tasks(cids) -> list[TrainTask]:
    instructions = TrainInstructions(1, 2, "adamw", 0.01, 0.0, 3)
    return [TrainTask(cid, Assignment(("0.query",)), tensors(), instructions) for cid in cids]


def test_the_transport_sends_one_message_per_node_and_decodes_replies() -> None:
    grid = FakeGrid({100: "ok", 101: "ok"})
    transport = FlowerTransport(grid, {0: 100, 1: 101}, timeout=30.0, run_config="{}")
    replies = transport.train(1, train_tasks([1, 0]))
    assert [r.cid for r in replies] == [1, 0] and all(isinstance(r, ClientUpdate) for r in replies)
    assert [m.metadata.dst_node_id for m in grid.sent] == [101, 100] and grid.pushes == 1
    assert all(m.metadata.message_type == TRAIN_TYPE and m.metadata.group_id == "1" for m in grid.sent)
    assert replies[0].num_samples == 10 and replies[0].metrics["peak_bytes"] == 99
    assert np.array_equal(replies[0].tensors["0.query/lora_A"], tensors()["0.query/lora_A"] + 1)
    assert replies[0].metrics["wire_down_bytes"] > sum(v.nbytes for v in tensors().values())
    assert [(w["round"], w["phase"], w["cid"]) for w in transport.wire_log] == [(1, "training", 1), (1, "training", 0)]
    scores = transport.score(2, [ScoreTask(0, ["0.query"], tensors(), ScoreInstructions(1, 2, 3))])
    assert isinstance(scores[0], ClientScores) and scores[0].scores == {"0.query": 1.0}
    assert grid.sent[-1].metadata.message_type == SCORE_TYPE


def test_replies_are_pulled_until_every_node_answered() -> None:
    """Each pull takes the replies that have arrived; the transport pulls again until the last one is in."""
    grid = FakeGrid({100: "ok", 101: "ok", 102: "ok"}, late={101: 3, 102: 1})
    transport = FlowerTransport(grid, {0: 100, 1: 101, 2: 102}, timeout=60.0, run_config="{}", poll=0.001)
    replies = transport.train(1, train_tasks([0, 1, 2]))
    assert [r.cid for r in replies] == [0, 1, 2] and all(isinstance(r, ClientUpdate) for r in replies)
    assert grid.pushes == 1 and grid.pulls == 4 and not grid.ready


def test_work_given_as_meanwhile_runs_after_the_push_and_before_the_first_pull() -> None:
    """The ServerApp loads its model while the nodes pick up the query: between the push and the pulls."""
    grid = FakeGrid({100: "ok", 101: "ok"}, late={101: 2})
    seen: list[tuple[int, int]] = []
    messages = [Message(codec.encode_score_task(["0.query"], tensors(), ScoreInstructions(1, 2, 3)), dst_node_id=node,
                        message_type=SCORE_TYPE) for node in (100, 101)]
    replies = send_and_receive(grid, messages, timeout=60.0, poll=0.001, meanwhile=lambda: seen.append((grid.pushes, grid.pulls)))
    assert seen == [(1, 0)]
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["message-0", "message-1"] and grid.pulls == 3


def test_a_silent_node_an_error_and_garbage_become_failures_with_reasons() -> None:
    grid = FakeGrid({100: "ok", 101: "silent", 102: "error", 103: "garbage", 105: "unavailable"})
    transport = FlowerTransport(grid, {0: 100, 1: 101, 2: 102, 3: 103, 5: 105}, timeout=0.2, run_config="{}")
    replies = transport.train(2, train_tasks([0, 1, 2, 3, 4, 5]))
    assert isinstance(replies[0], ClientUpdate)
    assert all(isinstance(r, Failure) for r in replies[1:])
    reasons = {r.cid: r.reason for r in replies[1:]}
    assert reasons[1].startswith("no reply")
    assert reasons[5] == "SuperLink answered with an error (code 3): Error: Node Unavailable"
    assert reasons[2].startswith("node answered with an error") and "boom" in reasons[2]
    assert "does not decode" in reasons[3]
    assert "no Flower node" in reasons[4]


def test_a_node_silent_past_the_timeout_is_a_failure_that_says_so() -> None:
    """The replies are pulled until the timeout; then the silent node's task is a failure that says so."""
    grid = FakeGrid({100: "ok", 101: "silent"})
    transport = FlowerTransport(grid, {0: 100, 1: 101}, timeout=0.2, run_config="{}", poll=0.05)
    replies = transport.train(1, train_tasks([0, 1]))
    assert isinstance(replies[0], ClientUpdate)
    assert replies[1] == Failure(1, "no reply within the round timeout of 0.2 s")


def test_the_server_round_loop_runs_over_the_flower_transport(tiny_config, tiny_data, shared_model, tiny_cost_model) -> None:
    """Server.run_round with a FlowerTransport whose fake Grid calls real Clients: a dropped node is a
    failure, the round aggregates the others."""
    from fedpilot.data.partition import partition_indices
    from fedpilot.federation import make_server
    from fedpilot.runtime.client import Client, StepPeaks
    from fedpilot.strategies import ClientInfo

    config = tiny_config
    shards = partition_indices(tiny_data.train.labels.numpy(), 3, config.data.partition, config.seed)
    clients = {cid: Client(cid, shared_model, tiny_data.train.subset(s), StepPeaks()) for cid, s in enumerate(shards)}
    infos = [ClientInfo(cid, c.num_samples, None) for cid, c in clients.items()]
    server = make_server(config, shared_model, tiny_data, infos, tiny_cost_model)

    class ClientGrid(FakeGrid):
        def answer(self, message, content):
            cid = message.metadata.dst_node_id - 100
            if cid == 2:
                return None  # node 102 dropped out
            if message.metadata.message_type == TRAIN_TYPE:
                assignment, received, instructions = codec.decode_train_task(content)
                trained, metrics = clients[cid].train(assignment, received, instructions)
                return Message(codec.encode_train_reply(clients[cid].num_samples, trained, metrics), reply_to=message)
            modules, received, instructions = codec.decode_score_task(content)
            scores, metrics = clients[cid].score(modules, received, instructions)
            return Message(codec.encode_score_reply(scores, metrics), reply_to=message)

    transport = FlowerTransport(ClientGrid({}), {cid: 100 + cid for cid in clients}, timeout=0.2, run_config="{}", poll=0.05)
    result = server.run_round(1, transport)
    assert sorted(r["cid"] for r in result.clients) == [0, 1]
    assert {(f["cid"], f["phase"]) for f in result.failures} >= {(2, "training")}
    assert result.skipped is None and "accuracy" in result.metrics
    assert all(r["wire_up_bytes"] > r["upload_bytes"] for r in result.clients)


# -- a real loopback federation: one SuperLink, three SuperNodes, `flwr run` ---------------------------
class Certificates:
    """What a TLS deployment needs, made here with ``cryptography`` (a dependency of flwr): a CA, a server
    certificate for 127.0.0.1 and localhost signed by it, and SuperNode key pairs (ECDSA P-384, OpenSSH format,
    as ``ssh-keygen -t ecdsa -b 384`` writes them)."""

    def __init__(self, folder: Path) -> None:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        now = datetime.datetime.now(datetime.timezone.utc)

        def certificate(subject: str, public_key, issuer: x509.Name, signer, ca: bool, names=()):
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(issuer)
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            return builder.sign(signer, hashes.SHA256())

        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedpilot test CA")])
        ca = certificate("fedpilot test CA", ca_key.public_key(), ca_name, ca_key, ca=True)
        key = ec.generate_private_key(ec.SECP384R1())
        names = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        cert = certificate("127.0.0.1", key.public_key(), ca_name, ca_key, ca=False, names=names)
        pem = serialization.Encoding.PEM
        self.ca, self.cert, self.key = folder / "ca.crt", folder / "server.pem", folder / "server.key"
        self.ca.write_bytes(ca.public_bytes(pem))
        self.cert.write_bytes(cert.public_bytes(pem))
        self.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def node_key(self, name: str) -> Path:
        """A SuperNode's private key at ``folder/name`` and its public key at ``folder/name.pub``."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP384R1())
        private = self.folder / name
        private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        private.chmod(0o600)
        (self.folder / f"{name}.pub").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        )
        return private


class Loopback:
    """Processes started in their own sessions, each stopped (its whole process group) on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[tuple[str, subprocess.Popen]] = []
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(folder / "flwr-home"),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "FEDPILOT_NODE_WAIT": "120",
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),  # the fedpilot the FAB carries
        }
        self.env.setdefault("FEDPILOT_CACHE", str(Path.home() / ".cache" / "fedpilot"))

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def start_federation(self, budgets: list[int], tls: Certificates | None = None, warm: bool = True, shared: bool = False) -> None:
        """A SuperLink on a free port and one SuperNode per budget (partition i of len(budgets)).

        ``tls``: HTTPS with these certificates (the SuperLink's, the CA the nodes and ``flwr`` trust), and
        SuperNode authentication: each node's public key is registered with ``flwr supernode register``
        before it starts with its private key. None: ``--insecure``.
        ``warm``: each SuperNode runs with ``--isolation process`` next to its own warm ClientApp executor
        (``python -m fedpilot.flower.warm``, importing this repository's fedpilot); False: Flower's default,
        a ClientApp process per message. ``shared``: one warm executor process serves every SuperNode instead.
        """
        self.port = port = free_port()
        home = Path(self.env["FLWR_HOME"])
        home.mkdir()
        security = f'root-certificates = "{tls.ca}"' if tls else "insecure = true"
        (home / "config.toml").write_text(f'[superlink]\ndefault = "loop"\n\n[superlink.loop]\naddress = "127.0.0.1:{port}"\n{security}\n')
        bin_dir = Path(sys.executable).parent
        link_security = (
            ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key), "--enable-supernode-auth"]
            if tls else ["--insecure"]
        )
        superlink = self.start(
            "superlink",
            [str(bin_dir / "flower-superlink"), *link_security, "--disable-runtime-dependency-installation",
             "--database", str(self.folder / "state.db"), "--host", "127.0.0.1", "--port", str(port)],
        )
        wait_for_port(port, superlink)
        keys = [tls.node_key(f"node-{cid}") for cid in range(len(budgets))] if tls else []
        registering = [self.start(f"register-{cid}", [str(bin_dir / "flwr"), "supernode", "register", f"{key}.pub", "loop"]) for cid, key in enumerate(keys)]
        for cid, proc in enumerate(registering):
            assert proc.wait(timeout=120) == 0, (self.folder / f"register-{cid}.log").read_text()
        self.nodes: list[subprocess.Popen] = []
        self.executors: list[subprocess.Popen] = []
        node_ports = []
        for cid, budget in enumerate(budgets):
            node_security = ["--root-certificates", str(tls.ca), "--auth-supernode-private-key", str(keys[cid])] if tls else ["--insecure"]
            node_ports.append(free_port())
            self.nodes.append(self.start(
                f"supernode-{cid}",
                [str(bin_dir / "flower-supernode"), *node_security, "--superlink", f"127.0.0.1:{port}", "--port", str(node_ports[-1]),
                 *(["--isolation", "process"] if warm else []),
                 "--node-config", f'partition-id={cid} num-partitions={len(budgets)} memory-budget="{budget}B"'],
            ))
            if warm and not shared:  # it waits for its SuperNode's Runtime API by itself
                self.executors.append(self.start(
                    f"warm-{cid}",
                    [sys.executable, "-m", "fedpilot.flower.warm", "--runtime-api-address", f"127.0.0.1:{node_ports[-1]}", "--insecure",
                     "--watch-pid", str(self.nodes[-1].pid)],
                ))
        if shared:
            served = [a for node_port, node in zip(node_ports, self.nodes) for a in
                      ("--runtime-api-address", f"127.0.0.1:{node_port}", "--watch-pid", str(node.pid))]
            self.executors.append(self.start("warm-shared", [sys.executable, "-m", "fedpilot.flower.warm", "--insecure", *served]))
        for node_port, node in zip(node_ports, self.nodes):
            wait_for_port(node_port, node)

    def flwr(self, *args: str) -> str:
        """A ``flwr`` command against this federation (its FLWR_HOME); its output, or AssertionError with it."""
        run = subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], cwd=self.folder, env=self.env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"flwr {' '.join(args)} exited {run.returncode}: {run.stdout}{run.stderr}"
        return run.stdout

    def flwr_run(self, config_path: Path, background: bool = False):
        """``flwr run ROOT loop --run-config 'config="..."' --stream``; its output in flwr-run.log."""
        app = self.folder / "app"
        if not app.is_dir():  # what the FAB carries, staged once: flwr run walks every file of ROOT, .venv included
            stage_app(app)
        args = [str(Path(sys.executable).parent / "flwr"), "run", str(app), "loop", "--run-config", f'config="{config_path}"', "--stream"]
        if background:
            return self.start("flwr-run", args)
        run = subprocess.run(args, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=900)
        (self.folder / "flwr-run.log").write_text(f"exit {run.returncode}\n{run.stdout}\n{run.stderr}")
        return run

    def logs(self, tail: int = 3000) -> str:
        """Every process's log tail, and the SuperLink's tasks (why a run ended: e.g. "No heartbeat received from the task")."""
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in sorted(self.folder.glob("*.log")))
        return f"{logs}\n--- SuperLink tasks\n{self.tasks()}"

    def tasks(self) -> str:
        import sqlite3

        try:
            with sqlite3.connect(f"file:{self.folder / 'state.db'}?mode=ro", uri=True, timeout=5) as db:
                rows = db.execute("select run_id, type, starting_at, running_at, finished_at, sub_status, details from task").fetchall()
        except sqlite3.Error as err:
            return f"(unreadable: {err})"
        return "\n".join(" | ".join(str(v) for v in row) for row in rows)

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group may hold children (SuperExec, ServerApp, ClientApp processes) that outlive it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {port} after {seconds} s")


@pytest.fixture
def loopback(tmp_path: Path):
    group = Loopback(tmp_path)
    try:
        yield group
    finally:
        group.stop()


def three_budgets(cost_model: CostModel, margin: float) -> list[int]:
    """Three budgets that buy different module sets: all, half and a quarter of the way from the cheapest
    trainable set to full LoRA (plus the planner's margin). The smallest goes to client 2, which holds out the
    most rows when the clients evaluate (30 of FAST's shards at :data:`CLIENT_TEST_FRACTION`): in one batch of
    them (:data:`CLIENT_EVAL_BATCH_SIZE`) an evaluation pass outgrows its budget while a training step fits."""
    cheapest, full = cost_model.cheapest()[1], cost_model.full()
    return [int(np.ceil((cheapest + f * (full - cheapest)) / (1 - margin))) + 1 for f in (1.0, 0.5, 0.25)]


CLIENT_TEST_FRACTION = 0.25  # the held-out share of each shard when the clients evaluate (train.evaluate: clients or both)
CLIENT_EVAL_BATCH_SIZE = 32  # their evaluation batch: client 2's 30 held-out rows in one pass, more than its budget holds


def fast_config_settings_with(budgets: list[int], out_dir: Path, evaluate: str = "server", **federation) -> dict:
    from conftest import FAST

    settings = json.loads(json.dumps(FAST))
    settings["federation"]["budgets"] = [f"{b}B" for b in budgets]
    settings["federation"]["round_timeout"] = 300
    settings["federation"].update(federation)
    settings["strategy"] = "fedpilot"
    settings["output_dir"] = str(out_dir)
    if evaluate != "server":
        settings["train"]["evaluate"] = evaluate
        settings["data"]["client_test_fraction"] = CLIENT_TEST_FRACTION
        settings["train"]["client_eval_batch_size"] = CLIENT_EVAL_BATCH_SIZE
    return settings


def fast_flower_config(cost_model: CostModel, folder: Path, evaluate: str = "server", **federation) -> tuple[list[int], dict, Path]:
    """conftest's FAST federation (the tiny random BERT) with the fedpilot strategy, three budgets bought
    from ``cost_model`` (FAST's), ``federation`` settings changed, evaluated by ``evaluate`` (``clients`` or
    ``both``: on :data:`CLIENT_TEST_FRACTION` of each shard) and outputs in ``folder / "flower-run"``."""
    from conftest import FAST

    from fedpilot.config import parse_config

    budgets = three_budgets(cost_model, parse_config(FAST).federation.memory_margin)
    settings = fast_config_settings_with(budgets, folder / "flower-run", evaluate, **federation)
    config_path = folder / "fast.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    return budgets, settings, config_path


NEEDS_FLOWER = pytest.mark.skipif(shutil.which("flower-superlink", path=str(Path(sys.executable).parent)) is None, reason="flwr not installed")


@pytest.fixture(scope="module")
def simulated(fast_cost_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, float]:
    """The in-process simulator's results for the loopback config (evaluated by the server and by the clients:
    ``train.evaluate: both``), and its wall seconds."""
    from fedpilot.config import parse_config
    from fedpilot.simulation import run_simulation

    folder = tmp_path_factory.mktemp("simulated")
    _, settings, _ = fast_flower_config(fast_cost_model, folder, evaluate="both")
    start = time.perf_counter()
    results = run_simulation(parse_config(settings), folder / "sim-run", progress=False).results
    return results, time.perf_counter() - start


def finished_flower_run(loopback: Loopback, out_dir: Path) -> dict:
    results_path = out_dir / "results.json"
    assert results_path.is_file(), loopback.logs()
    results = json.loads(results_path.read_text())
    assert results["status"] == "finished", loopback.logs()
    for name in ("metrics.csv", "accuracy.png", "adapter", "checkpoint.safetensors"):
        assert (out_dir / name).exists(), name
    return results


def assert_ends_as_simulated(results: dict, simulated: dict, budgets: list[int]) -> None:
    """Every client trained what the simulator's plan gave it, within its budget, planned with the cost model
    its node calibrated (the record says so), and every round's accuracy and loss are the simulator's."""
    assert [c["budget_bytes"] for c in results["clients"]] == budgets
    assert [c["planned_with"] for c in results["clients"]] == ["own"] * len(budgets)
    planned_sets = set()
    for flower_round, sim_round in zip(results["rounds"][1:], simulated["rounds"][1:], strict=True):
        assert not flower_round["failures"] and not flower_round["rejected"]
        by_cid = {c["cid"]: c for c in sim_round["clients"]}
        for record in flower_round["clients"]:
            # trained exactly what the plan gave it: validation accepted exactly the assigned tensors, and the
            # plan is the simulator's plan for the same budgets
            assert record["modules"] == by_cid[record["cid"]]["modules"]
            assert record.get("micro_batch", 0) == by_cid[record["cid"]].get("micro_batch", 0)  # and at its micro-batch
            assert record["peak_bytes"] <= record["budget_bytes"], record
            assert record["predicted_bytes"] <= record["budget_bytes"]
            assert (record["cost_model"], record["cost_model_device"]) == ("own", "cpu"), record
            assert by_cid[record["cid"]]["cost_model"] == "federation"  # the simulator shares one
            planned_sets.add((tuple(record["modules"]), record.get("micro_batch", 0)))
    assert len(planned_sets) >= 2, "three budgets should buy different plans (module sets or micro-batches)"
    assert not results["budget_violations"]
    assert [(r.get("accuracy"), r.get("loss")) for r in results["rounds"]] == [(r.get("accuracy"), r.get("loss")) for r in simulated["rounds"]]


# what a client's evaluation record may differ in: time, measured peak, which cost model planned it, Flower's wire bytes
EVALUATION_NOISE = ("seconds", "peak_bytes", "over_budget", "cost_model", "cost_model_source", "wire_down_bytes", "wire_up_bytes")


def assert_client_evaluations_as_simulated(results: dict, simulated: dict) -> dict[int, list[tuple[int, str]]]:
    """Every round's evaluation by the clients equals the simulator's: the pooled figures (``clients_*`` with
    ``evaluate: both``, the headline with ``clients``) and each client's record (its rows, accuracy, macro-F1,
    loss, counts, budget, predicted peak, or the reason it was skipped), all exactly; only the seconds, the
    measured peak (within the budget), which cost model planned it (the node's own, or the federation's) and the
    bytes Flower's messages took on the wire may differ. Returns each round's skipped clients: ``[(cid, reason)]``."""
    prefix = "clients_" if results["evaluated_by"] == "both" else ""
    assert results["evaluated_by"] == simulated["evaluated_by"] != "server"
    assert [(c["num_test_samples"], c["test_label_counts"]) for c in results["clients"]] == \
        [(c["num_test_samples"], c["test_label_counts"]) for c in simulated["clients"]]
    for got, expected in zip(results["rounds"], simulated["rounds"], strict=True):
        if "client_evaluations" not in expected:
            assert "client_evaluations" not in got, got["round"]
            continue
        pooled = [f"{prefix}{k}" for k in ("accuracy", "macro_f1", "loss", "eval_samples", "eval_clients")]
        assert {k: got.get(k) for k in pooled} == {k: expected.get(k) for k in pooled}, got["round"]
        assert not [f for f in got.get("failures", []) if f["phase"] == "evaluation"], got["failures"]
        strip = lambda records: [{k: v for k, v in e.items() if k not in EVALUATION_NOISE} for e in records]  # noqa: E731
        assert strip(got["client_evaluations"]) == strip(expected["client_evaluations"]), got["round"]
        for record in got["client_evaluations"]:
            assert "skipped" in record or record["peak_bytes"] <= record["budget_bytes"], record
    return {r["round"]: [(e["cid"], e["skipped"]) for e in r["client_evaluations"] if "skipped" in e] for r in results["rounds"] if "client_evaluations" in r}


def assert_client_2_cannot_evaluate(skipped: dict[int, list[tuple[int, str]]], rounds: int) -> None:
    """Client 2 (the smallest budget, the most held-out rows) is skipped from every evaluation, round 0 included,
    with the reason; the others are asked (what :func:`three_budgets` arranges on this device's cost model)."""
    assert sorted(skipped) == list(range(rounds + 1)), skipped
    for reasons in skipped.values():
        assert [cid for cid, _ in reasons] == [2] and reasons[0][1].startswith("predicted evaluation peak"), reasons


def wait_for_round(results_path: Path, number: int, run: subprocess.Popen, seconds: float = 300) -> None:
    """Until ``results.json`` records round ``number`` (checked every 0.05 s: the next round is under way)."""
    deadline, seen = time.monotonic() + seconds, None
    while time.monotonic() < deadline and run.poll() is None:
        stamp = results_path.stat().st_mtime_ns if results_path.is_file() else None
        if stamp != seen:
            seen = stamp
            try:
                if len(json.loads(results_path.read_text() or "{}").get("rounds", [])) > number:  # round 0 is the start
                    return
            except json.JSONDecodeError:  # caught mid-write
                seen = None
        time.sleep(0.05)


@NEEDS_FLOWER
def test_a_tls_federation_of_warm_nodes_runs_two_configs_as_the_simulator_and_survives_a_killed_node(
    loopback: Loopback, simulated, fast_cost_model, tmp_path: Path
) -> None:
    """The loopback rehearsal with TLS on: HTTPS everywhere (certificates made by the test, no --insecure), every
    SuperNode registered and authenticated by its key, a node whose key was not registered refused, and each
    SuperNode served by one warm ClientApp executor process.

    Run 1 (the FAST fedpilot federation, evaluated by the server and, through EVALUATE messages, by the clients on
    their held-out rows: ``train.evaluate: both``) ends as the simulator, every client's evaluation record too. Run 2 is another config (``payload: assigned``,
    another learning rate) through the same executor processes, their model and data already loaded; node 2
    goes down once round 1 is recorded (its executor killed, its SuperNode stopped): round 2 records it as failed
    and aggregates the others, and every round equals the same federation in process with client 2 dropping out of round 2. So
    nothing of run 1 leaks into run 2, and Flower and the simulator agree on partial payloads too (each client
    receives only its assigned modules and the head)."""
    from fedpilot.config import parse_config
    from fedpilot.core.keys import HEAD, module_of
    from fedpilot.federation import build_federation
    from fedpilot.runtime.messages import Failure

    tls = Certificates(tmp_path / "certificates")
    budgets, settings, config_path = fast_flower_config(fast_cost_model, tmp_path, evaluate="both")
    loopback.start_federation(budgets, tls=tls)
    stranger = loopback.start(
        "supernode-unregistered",
        [str(Path(sys.executable).parent / "flower-supernode"), "--root-certificates", str(tls.ca), "--superlink", f"127.0.0.1:{loopback.port}",
         "--auth-supernode-private-key", str(tls.node_key("stranger")), "--port", str(free_port()), "--max-retries", "0",
         "--node-config", "partition-id=0 num-partitions=3"],
    )

    # Run 1
    start = time.perf_counter()
    loopback.flwr_run(config_path)
    flower_seconds = time.perf_counter() - start
    results = finished_flower_run(loopback, tmp_path / "flower-run")
    simulated, sim_seconds = simulated
    assert_ends_as_simulated(results, simulated, budgets)
    assert_client_2_cannot_evaluate(assert_client_evaluations_as_simulated(results, simulated), rounds=2)  # EVALUATE through the warm SuperNodes
    evaluations = [e for r in results["rounds"] for e in r["client_evaluations"] if "skipped" not in e]
    assert [w["phase"] for w in results["wire"]].count("evaluation") == len(evaluations) > 0
    assert stranger.wait(timeout=120) != 0, loopback.logs()
    assert "Failed to activate SuperNode" in (tmp_path / "supernode-unregistered.log").read_text()
    listed = loopback.flwr("supernode", "list", "loop", "--format", "json")
    nodes = json.loads(listed[listed.index("{"):])["nodes"]
    assert sorted(n["status"] for n in nodes) == ["online"] * 3, listed  # the three registered nodes, no stranger
    assert "insecure" not in (Path(loopback.env["FLWR_HOME"]) / "config.toml").read_text()
    assert all("--insecure" not in proc.args for name, proc in loopback.procs if not name.startswith("warm-"))  # executors: loopback HTTP to their node
    assert [c["node_process"] for c in results["clients"]] == [p.pid for p in loopback.executors]  # each node's messages ran in its executor
    assert [c["node_warm"] for c in results["clients"]] == [False] * 3

    # Run 2: another config through the same executors; node 2 dies during round 2
    second = tmp_path / "second"
    second.mkdir()
    _, settings_2, config_2 = fast_flower_config(fast_cost_model, second, payload="assigned")
    settings_2["train"]["lr"] = 0.005
    config_2.write_text(yaml.safe_dump(settings_2))
    run = loopback.flwr_run(config_2, background=True)
    results_path = second / "flower-run" / "results.json"
    wait_for_round(results_path, 1, run)
    assert run.poll() is None, loopback.logs()
    # Node 2 goes: its executor is killed mid-round and its SuperNode stopped, which leaves the federation on its way
    # out, so the SuperLink answers for it at once. (A SuperNode killed outright is answered for once it misses its
    # heartbeats, up to 60 s, or the phase's round_timeout passes: the same failure, later; the transport tests
    # cover a node that never answers.)
    os.killpg(loopback.executors[2].pid, signal.SIGKILL)
    os.killpg(loopback.nodes[2].pid, signal.SIGTERM)
    run.wait(timeout=300)
    results_2 = json.loads(results_path.read_text())
    assert results_2["status"] == "finished", loopback.logs()
    assert [(c["node_process"], c["node_warm"]) for c in results_2["clients"]] == [(p.pid, True) for p in loopback.executors]
    assert not results_2["rounds"][1]["failures"] and sorted(c["cid"] for c in results_2["rounds"][1]["clients"]) == [0, 1, 2]
    last = results_2["rounds"][-1]
    assert sorted(c["cid"] for c in last["clients"]) == [0, 1]
    assert [(f["cid"], f["phase"]) for f in last["failures"]] == [(2, "training")], last["failures"]
    reason = last["failures"][0]["reason"]
    assert "Node Unavailable" in reason or reason.startswith("no reply within the round timeout"), reason
    assert last["skipped"] is None
    for record in (c for r in results_2["rounds"][1:] for c in r["clients"]):  # only what each client trains went down
        assert record["payload"] == "assigned" and record["download_bytes"] <= record["download_bytes_full"]
        if len(record["modules"]) < len(results_2["modules"]):
            assert record["download_bytes"] < record["download_bytes_full"]

    # The same federation in process, client 2 dropping out of round 2: the same global model, round by round.
    federation = build_federation(parse_config(settings_2), progress=False)
    inner = federation.transport()

    class Dropping:
        def score(self, server_round, tasks):
            return inner.score(server_round, tasks)

        def train(self, server_round, tasks):
            kept = [t for t in tasks if not (server_round == 2 and t.cid == 2)]
            return inner.train(server_round, kept) + [Failure(2, "dropped")] * (len(tasks) - len(kept))

    federation.server.evaluate()
    for server_round in (1, 2):
        expected = federation.server.run_round(server_round, Dropping())
        got = results_2["rounds"][server_round]
        assert (got["accuracy"], got["loss"]) == (expected.metrics["accuracy"], expected.metrics["loss"]), server_round
        assert [c["download_bytes"] for c in got["clients"]] == [c["download_bytes"] for c in expected.clients]
    sizes = {k: v.nbytes for k, v in federation.model.state().items()}
    for record in (c for r in results_2["rounds"][1:] for c in r["clients"]):  # exactly the assigned tensors' bytes
        assert record["download_bytes"] == sum(n for k, n in sizes.items() if module_of(k) in {*record["modules"], HEAD})
        assert record["download_bytes_full"] == sum(sizes.values())

    report = {
        "flower_seconds": flower_seconds, "simulator_seconds": sim_seconds,
        "final_accuracy": [results["rounds"][-1]["accuracy"], simulated["rounds"][-1]["accuracy"]],
        "wire": results["wire"],
        "tensor_bytes": [[c["download_bytes"] + c["upload_bytes"] for c in r["clients"]] for r in results["rounds"][1:]],
    }
    (tmp_path / "loopback-report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    report_to = os.environ.get("FEDPILOT_LOOPBACK_REPORT")
    if report_to:
        Path(report_to).write_text(json.dumps(report, indent=1))


# -- scripts/flower-local.sh ----------------------------------------------------------------------------
def processes_with(variable: str) -> list[int]:
    """Pids of the live processes whose environment holds ``variable`` (``NAME=value``), from /proc."""
    found = []
    needle = variable.encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes() + b"\0":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@NEEDS_FLOWER
def test_one_warm_executor_serves_every_supernode_of_a_machine_as_the_simulator(loopback: Loopback, simulated, fast_cost_model, tmp_path: Path) -> None:
    """One executor process for the three SuperNodes (``--runtime-api-address`` and ``--watch-pid`` repeated): the run
    ends as the simulator, every node's messages ran in that process on one model (the first node served loaded it, the
    others found it warm), and the executor outlives a stopped SuperNode while another remains, then exits."""
    budgets, _, config_path = fast_flower_config(fast_cost_model, tmp_path, evaluate="both")
    loopback.start_federation(budgets, shared=True)
    loopback.flwr_run(config_path)
    results = finished_flower_run(loopback, tmp_path / "flower-run")
    assert_ends_as_simulated(results, simulated[0], budgets)
    assert_client_2_cannot_evaluate(assert_client_evaluations_as_simulated(results, simulated[0]), rounds=2)
    (executor,) = loopback.executors
    # every node's messages ran in the one executor; the first node it served (whichever node pulled its query first) loaded the model
    assert [c["node_process"] for c in results["clients"]] == [executor.pid] * 3
    assert sorted(c["node_warm"] for c in results["clients"]) == [False, True, True]
    for node in loopback.nodes[:2]:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
    time.sleep(1.5)  # the watcher looks every 0.5 s
    assert executor.poll() is None, loopback.logs()
    os.killpg(loopback.nodes[2].pid, signal.SIGKILL)  # not reaped: a zombie counts as gone
    assert executor.wait(timeout=30) is not None
    assert "SuperNode process" in (tmp_path / "warm-shared.log").read_text()


@pytest.mark.skipif(not Path("/proc/self/environ").exists() or shutil.which("setsid") is None, reason="needs Linux /proc and setsid")
def test_flower_local_sh_stops_every_process_it_started_on_ctrl_c(tmp_path: Path) -> None:
    """The launcher starts a SuperLink, N SuperNodes with their warm executors and `flwr run`; Ctrl-C while the run is under way
    stops every one of them, the processes they started included, and the script exits 130. (N = 2: the script's loop over
    nodes is exercised, and each process that imports fedpilot costs about 15 s of CPU here.)"""
    from conftest import FAST, default_sigint

    work, config = tmp_path / "work", tmp_path / "fast.yaml"
    federation = {k: v for k, v in FAST["federation"].items() if k != "budgets"} | {"num_clients": 2}  # the nodes declare budgets
    config.write_text(yaml.safe_dump({**FAST, "federation": federation, "output_dir": str(tmp_path / "run")}))
    env = {**os.environ, "FLOWER_LOCAL_DIR": str(work), "FEDPILOT_BIN": str(Path(sys.executable).parent), "FEDPILOT_NODE_WAIT": "60"}
    with open(tmp_path / "script.log", "wb") as log:
        script = subprocess.Popen(["bash", str(ROOT / "scripts" / "flower-local.sh"), "2", str(config)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 180
        run_log = work / "flwr-run.log"
        while time.monotonic() < deadline and script.poll() is None:  # the run is submitted: its id is logged
            if run_log.is_file() and "run" in run_log.read_text(errors="replace").lower():
                break
            time.sleep(0.5)
        assert script.poll() is None, (tmp_path / "script.log").read_text()
        started = [int(line.split()[0]) for line in (work / "pids").read_text().splitlines()]
        assert len(started) == 1 + 2 + 2 + 1  # SuperLink, two SuperNodes, their warm executors, flwr run
        assert len(processes_with(f"FLWR_HOME={work / 'flwr-home'}")) >= 6
        os.killpg(script.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
        try:
            code = script.wait(timeout=60)
        except subprocess.TimeoutExpired:  # say what the script and its processes were doing
            listing = subprocess.run(["ps", "-eo", "pid,pgid,stat,etime,args"], capture_output=True, text=True).stdout
            pytest.fail(f"flower-local.sh still running 60 s after Ctrl-C\n--- script.log\n"
                        f"{(tmp_path / 'script.log').read_text()}\n--- ps\n{listing}")
        assert code == 130, (tmp_path / "script.log").read_text()
        for pid in started:
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)
        time.sleep(0.5)
        assert processes_with(f"FLWR_HOME={work / 'flwr-home'}") == [], "a process of the rehearsal outlived the script"
        assert "stopping 6 processes" in (tmp_path / "script.log").read_text()
    finally:
        for pid in [script.pid, *processes_with(f"FLWR_HOME={work / 'flwr-home'}")]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        script.wait()


# -- the ServerApp's own task heartbeat -----------------------------------------------------------------
def test_the_heartbeat_keeper_lives_through_errors_and_stops_when_the_task_is_gone() -> None:
    """Flower's task heartbeat thread ends on an HTTP 500; the keeper sends again at the next interval after any
    error, and stops once the SuperLink answers that the task is gone (success false)."""
    import httpx

    from fedpilot.flower.server_app import HeartbeatKeeper

    request = httpx.Request("POST", "https://127.0.0.1/v1/runtime/send-task-heartbeat")
    answers = [httpx.HTTPStatusError("500", request=request, response=httpx.Response(500, request=request)),
               True, httpx.ReadTimeout("slow"), True, True, False]
    calls, logged = [], []

    def send() -> bool:
        calls.append(len(calls))
        answer = answers[len(calls) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    keeper = HeartbeatKeeper(send, interval=0.0, log=logged.append).start()
    keeper.thread.join(timeout=30)
    assert not keeper.thread.is_alive()  # it ended by itself, at the answer "gone"
    assert len(calls) == len(answers) and (keeper.sent, keeper.errors) == (4, 2)
    assert "HTTPStatusError" in logged[0] and "gone" in logged[-1]


def test_the_heartbeat_keeper_stops_when_asked_and_a_grid_without_a_runtime_client_gets_none() -> None:
    from fedpilot.flower.server_app import HeartbeatKeeper

    keeper = HeartbeatKeeper(lambda: True, interval=3600.0).start()
    keeper.stop()
    assert not keeper.thread.is_alive() and keeper.sent == 0
    assert HeartbeatKeeper.for_grid(object()) is None
