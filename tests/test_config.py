"""Config validation: defaults, budgets, and one clear line with exit code 2 for each bad field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedpilot.cli import main
from fedpilot.config import Config, load_config, parse_config
from fedpilot.core.errors import ConfigError
from fedpilot.core.sizes import MIB, parse_memory


def test_embedded_default_spells_out_the_model_defaults() -> None:
    assert load_config() == Config()


@pytest.mark.parametrize(
    ("text", "size"),
    [("600MiB", 600 * MIB), ("1.5 GiB", 1536 * MIB), ("900", 900 * MIB), (256, 256 * MIB), ("1GB", 10**9), ("512kib", 512 * 1024)],
)
def test_memory_sizes_parse(text: object, size: int) -> None:
    assert parse_memory(text) == size


def test_budget_forms_expand_per_client() -> None:
    uniform = parse_config({"federation": {"num_clients": 3, "budgets": "1GiB"}}).federation
    assert uniform.client_budgets() == [1024 * MIB] * 3
    listed = parse_config({"federation": {"num_clients": 2, "budgets": ["600MiB", 900]}}).federation
    assert listed.client_budgets() == [600 * MIB, 900 * MIB]
    tiers = {"tiers": [{"fraction": 0.4, "memory": "600MiB"}, {"fraction": 0.3, "memory": "900MiB"}, {"fraction": 0.3, "memory": "1.5GiB"}]}
    tiered = parse_config({"federation": {"num_clients": 10, "budgets": tiers}}).federation
    assert tiered.client_budgets() == [600 * MIB] * 4 + [900 * MIB] * 3 + [1536 * MIB] * 3
    assert parse_config({"federation": {"budgets": None}}).federation.client_budgets() == [None] * 8


BAD_CONFIGS = [
    ("colour: red", "bad.yaml: unknown key 'colour'"),
    ("federation: {rounds: 0}", "federation.rounds: Input should be greater than or equal to 1"),
    ("federation: {rounds: five}", "federation.rounds: Input should be a valid integer"),
    ("federation: {num_clients: 0}", "federation.num_clients: Input should be greater than or equal to 1"),
    ("federation: {num_clients: 4, clients_per_round: 5}", "clients_per_round (5) exceeds num_clients (4)"),
    ("federation: {budgets: 12 parsecs}", "federation.budgets: unknown unit 'parsecs'"),
    ("federation: {budgets: [1GiB, 2GiB]}", "budgets lists 2 sizes for 8 clients"),
    ("federation: {budgets: {tiers: [{fraction: 0.5, memory: 1GiB}]}}", "tier fractions must sum to 1"),
    ("model: {lora: {rank: 0}}", "model.lora.rank: Input should be greater than or equal to 1"),
    ("model: {lora: {targets: [query, gate]}}", "model.lora: targets: 'gate' is not a LoRA target of the bert-classifier family; choose from query, key"),
    ("model: {lora: {targets: [query, query]}}", "model.lora: targets: each target may appear only once"),
    ("model: {name: gpt5}", "model.name: unknown model 'gpt5'; available: all-minilm-l6-v2"),
    ("strategy_options: {memory_margin: 0.1}", "strategy_options: unknown key 'memory_margin'"),
    ("model: {lora: {rnak: 8}}", "model.lora: unknown key 'rnak'; allowed keys: rank, alpha, dropout, targets"),
    ("data: {partition: {kind: dirichlet, alpha: 0}}", "data.partition.alpha: Input should be greater than 0"),
    ("data: {partition: {kind: zipf}}", "data.partition.kind: Input should be 'iid', 'dirichlet', 'pathological' or 'label-tiers'"),
    ("data: {dataset: imagenet}", "data.dataset: unknown dataset 'imagenet'; available: bbc-headlines, bbc-news, rotten-tomatoes"),
    ("strategy: fedsgd", "strategy: unknown strategy 'fedsgd'; available:"),
    ("train: {lr: -1}", "train.lr: Input should be greater than 0"),
    ("federation: {server_lr: 1.5}", "federation.server_lr: Input should be less than or equal to 1"),
    ("federation: {server_lr: 0}", "federation.server_lr: Input should be greater than 0"),
    ("train: {logit_adjustment: -1}", "train.logit_adjustment: Input should be greater than or equal to 0"),
    ("[1, 2]", "expected a mapping of settings, got list"),
    ("federation: {rounds: [", "not valid YAML at line 1"),
]


@pytest.mark.parametrize(("yaml_text", "message"), BAD_CONFIGS)
def test_bad_config_gives_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_cli_process_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("federation: {rounds: 0}\n")
    for args in (["--config", str(path)], ["--config", str(tmp_path / "absent.yaml")]):
        proc = subprocess.run([sys.executable, "-m", "fedpilot.cli", "run", *args], capture_output=True, text=True)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("fedpilot: error:")


def test_default_tiers_leave_the_smallest_unable_to_afford_full_lora() -> None:
    from fedpilot.cli.profile import analytic_cost_model

    config = load_config()
    budgets = config.federation.client_budgets()
    full = analytic_cost_model(config).full()
    assert len(set(budgets)) >= 3 and config.strategy == "fedpilot"
    assert min(budgets) < full < max(budgets)


def test_random_malformed_configs_are_one_line_errors() -> None:
    """Whatever a config file holds, loading it gives a Config or one ConfigError line, never another exception."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12), st.sampled_from(["1GiB", "600MiB", ".inf", "-3", "0B", "query", "dirichlet", "fedpilot"]),
    )
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none()), inner, max_size=4)), max_leaves=12)
    fields = {
        "model": ["name", "base_dropout", "lora"], "data": ["dataset", "test_fraction", "max_length", "max_samples", "partition"],
        "federation": ["num_clients", "clients_per_round", "rounds", "budgets", "memory_margin", "update_norm_bound"],
        "train": ["local_steps", "batch_size", "lr", "optimizer"], "strategy": [], "strategy_options": [], "seed": [],
    }
    sections = st.sampled_from(sorted(fields)).flatmap(
        lambda section: st.tuples(st.just(section), st.dictionaries(st.sampled_from(fields[section] or ["x"]), values, max_size=3) if fields[section] else values)
    )
    documents = st.one_of(values, st.lists(sections, max_size=4).map(dict))

    @settings(max_examples=300, deadline=None)
    @given(documents)
    def check(document) -> None:
        try:
            parse_config(document)
        except ConfigError as err:
            assert "\n" not in str(err) and str(err)

    check()
