"""Flower's simulation engine (``flwr run <app> local-simulation``, Ray-backed, the ``flwr[simulation]`` extra): the
ServerApp and ClientApp on virtual SuperNodes give the simulator's history, each client's budget taken from the
config through its node config (only ``partition-id`` and ``num-partitions`` there), the clients' evaluation included.

Ray must start here: a run that does not finish fails the test with Flower's and the SuperLink's logs, never a skip."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fedpilot.config import parse_config
from fedpilot.core.errors import FedpilotError
from fedpilot.flower import simulation
from fedpilot.flower.client_app import node_settings
from fedpilot.flower.stage import stage_app
from test_flower import (  # noqa: F401 - simulated: a fixture
    assert_client_2_cannot_evaluate,
    assert_client_evaluations_as_simulated,
    assert_ends_as_simulated,
    fast_flower_config,
    simulated,
)

ROOT = Path(__file__).resolve().parents[1]


class LocalSimulation:
    """A FLWR_HOME with the ``local-simulation`` connection; :meth:`run` starts Flower's local SuperLink (on free
    ports, no runtime dependency installation) through ``flwr run``; :meth:`stop` ends it and all it started."""

    def __init__(self, folder: Path) -> None:
        self.home = folder / "flwr-home"
        simulation.write_connection(self.home)
        self.env = simulation.environment(self.home)
        self.app = stage_app(folder / "app")
        self.output = ""

    def run(self, config: Path, num_supernodes: int):
        done = simulation.flwr_run(self.app, config, num_supernodes, self.env, timeout=600)
        self.output = f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def logs(self, tail: int = 6000) -> str:
        link = self.home / "local-superlink" / "superlink.log"
        return f"--- flwr run\n{self.output[-tail:]}\n--- {link}\n{link.read_text(errors='replace')[-tail:] if link.is_file() else '(none)'}"

    def stop(self) -> list[int]:
        return simulation.stop_local_superlink(self.home)


@pytest.fixture
def local_simulation(tmp_path: Path):
    runner = LocalSimulation(tmp_path)
    try:
        yield runner
    finally:
        runner.stop()


def test_flowers_simulation_engine_gives_the_simulators_history_with_the_configs_budgets(
    local_simulation: LocalSimulation, simulated, fast_cost_model, tmp_path: Path
) -> None:
    """``flwr run app local-simulation --federation-config num-supernodes=3`` on test_flower's loopback config
    (FAST, three budgets that buy different module sets, ``train.evaluate: both``, client 2 unable to afford an
    evaluation pass): every round's plan, accuracy and loss, and every client's evaluation record (client 2's skip
    and its reason included), equal the in-process simulator's, bit for bit; the budgets came
    from the config's ``federation.budgets`` by partition id; no dependency was installed at run time; stopping
    the local SuperLink leaves no process of it behind."""
    budgets, settings, config_path = fast_flower_config(fast_cost_model, tmp_path, evaluate="both")
    simulated, sim_seconds = simulated
    start = time.perf_counter()
    done = local_simulation.run(config_path, num_supernodes=3)
    seconds = time.perf_counter() - start
    results_path = tmp_path / "flower-run" / "results.json"
    assert done.returncode == 0 and results_path.is_file(), f"Flower's simulation engine (Ray) did not finish the run\n{local_simulation.logs()}"
    results = json.loads(results_path.read_text())
    assert results["status"] == "finished" and results["driver"] == "flower", local_simulation.logs()
    assert [(c["cid"], c["budget_bytes"], c["budget_from"]) for c in results["clients"]] == [(cid, b, "config") for cid, b in enumerate(budgets)]
    assert_ends_as_simulated(results, simulated, budgets)
    assert_client_2_cannot_evaluate(assert_client_evaluations_as_simulated(results, simulated), rounds=2)
    assert "Installing application dependencies" not in local_simulation.output
    assert not (local_simulation.home / "runtime-envs").exists() or not any((local_simulation.home / "runtime-envs").iterdir())
    assert local_simulation.stop() and simulation.carriers(local_simulation.home) == []
    print(json.dumps({"flower_simulation_seconds": round(seconds, 1), "simulator_seconds": round(sim_seconds, 1)}))


def test_a_node_without_a_memory_budget_takes_the_configs_budget_for_its_partition(fast_config) -> None:
    budgets = fast_config.federation.client_budgets()
    assert node_settings({"partition-id": 1, "num-partitions": 3}, fast_config) == (1, 3, budgets[1], "config")
    assert node_settings({"partition-id": 1, "num-partitions": 3, "memory-budget": "1GiB"}, fast_config) == (1, 3, 2**30, "node-config")
    assert node_settings({"partition-id": 2, "num-partitions": 3, "memory-budget": "unlimited"}, fast_config) == (2, 3, None, "node-config")
    unbudgeted = parse_config({**json.loads(fast_config.model_dump_json()), "federation": {"num_clients": 3, "rounds": 2, "budgets": None}})
    assert node_settings({"partition-id": 0, "num-partitions": 3}, unbudgeted) == (0, 3, None, "config")
    with pytest.raises(ValueError, match="num-partitions=4 but the run's federation.num_clients is 3"):
        node_settings({"partition-id": 0, "num-partitions": 4}, fast_config)


def test_the_simulation_engine_with_another_number_of_supernodes_stops_at_once_with_one_line() -> None:
    """The virtual SuperNodes are all there from the start: waiting would bring no more, so the ServerApp says
    how to run it instead of waiting FEDPILOT_NODE_WAIT seconds."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from fedpilot.flower.server_app import wait_for_nodes

    grid = InMemoryGrid.__new__(InMemoryGrid)
    grid.get_node_ids = lambda: [11, 12]
    started = time.monotonic()
    with pytest.raises(FedpilotError, match=r"runs 2 virtual SuperNodes but federation.num_clients is 3; run it with --federation-config 'num-supernodes=3'"):
        wait_for_nodes(grid, 3, wait=300)
    assert time.monotonic() - started < 1
    assert wait_for_nodes(grid, 2, wait=300) == [11, 12]


def test_the_connection_is_added_to_an_existing_flower_configuration_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "site"\n\n[superlink.site]\naddress = "10.0.0.5:9093"\n')
    simulation.write_connection(home)
    simulation.write_connection(home)
    import tomllib

    parsed = tomllib.loads((home / "config.toml").read_text())
    assert parsed["superlink"] == {"default": "site", "site": {"address": "10.0.0.5:9093"}, "local-simulation": {"address": ":local:"}}
    fresh = tomllib.loads(simulation.write_connection(tmp_path / "fresh").read_text())
    assert fresh["superlink"] == {"default": "local-simulation", "local-simulation": {"address": ":local:"}}
    env = simulation.environment(home, base={"PATH": "/usr/bin"})
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1" and env["FLWR_HOME"] == str(home)
    assert all(env[p].isdigit() for p in simulation.PORTS) and env["PYTHONPATH"].split(":")[0] == str(ROOT)
