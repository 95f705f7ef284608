"""`fedpilot compare` end to end on the tiny federation: outputs, numbers, resuming, refusals."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from benchmark_scripts import load_benchmark

from fedpilot.cli import main
from fedpilot.comparison import PRESETS
from fedpilot.config import load_config, parse_config
from fedpilot.core.errors import FedpilotError
from tests.conftest import FAST, TINY, interrupted_at_round

STRATEGIES = ["fedpilot", "fedavg"]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(FAST))
    return path


def compare(config_file: Path, out: Path, *extra: str) -> int:
    return main(["compare", "--config", str(config_file), "--strategies", ",".join(STRATEGIES), "--seeds", "0",
                 "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def comparison(config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "out"
    assert compare(config_file, out) == 0
    return out


def run_results(out: Path) -> dict[str, dict]:
    return {s: json.loads((out / f"{s}-seed0" / "results.json").read_text()) for s in STRATEGIES}


def mtimes(out: Path) -> dict[str, int]:
    return {s: (out / f"{s}-seed0" / "results.json").stat().st_mtime_ns for s in STRATEGIES}


def test_outputs_exist_and_parse(comparison: Path) -> None:
    data = json.loads((comparison / "comparison.json").read_text())
    assert data["strategies"] == STRATEGIES and data["seeds"] == [0]
    assert sorted(data["executed"]) == sorted(f"{s}-seed0" for s in STRATEGIES) and data["skipped"] == []
    text = (comparison / "comparison.md").read_text()
    assert "| `fedpilot` |" in text and "| `fedavg` † |" in text  # fedavg is memory-unaware
    assert "0.9 x the best mean final accuracy" in text
    for name in ("accuracy.png", "memory.png", "allocation.png"):
        assert (comparison / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (comparison / name).stat().st_size > 5_000
    for s in STRATEGIES:
        results = json.loads((comparison / f"{s}-seed0" / "results.json").read_text())
        assert results["status"] == "finished" and results["config"]["strategy"] == s and results["config"]["seed"] == 0
        assert len(results["rounds"]) == TINY["federation"]["rounds"] + 1


def test_one_seed_shows_no_spread_and_several_seeds_show_mean_and_std(comparison: Path) -> None:
    from fedpilot.comparison import render_markdown

    data = json.loads((comparison / "comparison.json").read_text())
    final = data["summary"]["fedpilot"]["final_accuracy"]["mean"]
    one = render_markdown(data)
    assert f"| `fedpilot` | {final:.3f} |" in one and "one seed, so no spread over seeds is shown" in one
    assert not any("±" in line for line in one.splitlines() if line.startswith("| `"))
    several = render_markdown({**data, "seeds": [0, 1]})
    assert f"| `fedpilot` | {final:.3f} ± 0.000 |" in several and "mean ± sample standard deviation over seeds" in several


def test_numbers_match_the_runs(comparison: Path) -> None:
    data = json.loads((comparison / "comparison.json").read_text())
    runs = run_results(comparison)
    finals = {s: r["rounds"][-1]["accuracy"] for s, r in runs.items()}
    target = 0.9 * max(finals.values())
    assert data["target"]["source"] == "default"
    assert data["target"]["accuracy"] == pytest.approx(target)
    for s, results in runs.items():
        row, trained = data["summary"][s], results["rounds"][1:]
        records = [c for r in trained for c in r["clients"]]
        ratios = [c["peak_bytes"] / c["budget_bytes"] for c in records]
        assert row["memory_aware"] is results["memory_aware"]
        assert row["final_accuracy"] == {"mean": pytest.approx(finals[s]), "std": 0.0}
        assert row["best_accuracy"]["mean"] == pytest.approx(max(r["accuracy"] for r in trained))
        planned = results["config"]["federation"]["num_clients"] * len(trained)  # every client, every round
        assert row["client_rounds"] == {"planned": planned, "trained": len(records), "lost": planned - len(records)}
        assert row["peak_over_budget"]["mean"] == pytest.approx(statistics.fmean(ratios))
        assert row["peak_over_budget"]["max"] == pytest.approx(max(ratios))
        assert row["budget_violations"] == len(results["budget_violations"])
        assert row["upload_mib_per_round"] == pytest.approx(statistics.fmean(r["upload_bytes"] for r in trained) / 2**20)
        assert row["wall_seconds"]["mean"] == pytest.approx(results["wall_seconds"])
        first = next((r["round"] for r in results["rounds"] if r["accuracy"] >= target), None)
        assert row["rounds_to_target"]["mean"] == first
    fedavg = data["summary"]["fedavg"]
    assert fedavg["client_rounds"]["lost"] == 0  # every client trains full LoRA


def test_a_second_invocation_reruns_nothing(comparison: Path, config_file: Path, capsys: pytest.CaptureFixture) -> None:
    before = mtimes(comparison)
    capsys.readouterr()
    assert compare(config_file, comparison) == 0
    assert "0 run now, 2 skipped" in capsys.readouterr().out
    assert mtimes(comparison) == before
    data = json.loads((comparison / "comparison.json").read_text())
    assert data["executed"] == [] and all(run["skipped"] for run in data["runs"])


def test_an_unfinished_run_is_rerun(comparison: Path, config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"  # a moved comparison still counts as finished: output_dir is not compared
    shutil.copytree(comparison, out)
    path = out / "fedavg-seed0" / "results.json"
    results = json.loads(path.read_text())
    results["status"] = "running"
    results["rounds"] = results["rounds"][:1]
    path.write_text(json.dumps(results))
    before = mtimes(out)
    assert compare(config_file, out) == 0
    data = json.loads((out / "comparison.json").read_text())
    assert data["executed"] == ["fedavg-seed0"] and data["skipped"] == ["fedpilot-seed0"]
    after = mtimes(out)
    assert after["fedpilot"] == before["fedpilot"] and after["fedavg"] != before["fedavg"]
    rerun = json.loads(path.read_text())
    assert rerun["status"] == "finished" and len(rerun["rounds"]) == TINY["federation"]["rounds"] + 1


def test_report_tabulates_the_finished_runs_only_runs_nothing_and_names_the_others(comparison: Path, config_file: Path, tmp_path: Path,
                                                                                   capsys: pytest.CaptureFixture) -> None:
    """``--report`` on a comparison under way: the unfinished run is neither run nor tabulated but named; the
    table holds the finished one with the same numbers as the full comparison's; with nothing finished, one line and exit 2."""
    out = tmp_path / "copy"
    shutil.copytree(comparison, out)
    path = out / "fedavg-seed0" / "results.json"
    results = json.loads(path.read_text())
    results["status"], results["rounds"] = "running", results["rounds"][:1]
    path.write_text(json.dumps(results))
    before = mtimes(out)
    assert compare(config_file, out, "--report") == 0
    assert mtimes(out) == before  # nothing ran
    data, full = json.loads((out / "comparison.json").read_text()), json.loads((comparison / "comparison.json").read_text())
    assert data["missing"] == ["fedavg-seed0"] and data["executed"] == [] and data["strategies"] == ["fedpilot"]
    assert data["summary"]["fedpilot"]["late_accuracy"] == full["summary"]["fedpilot"]["late_accuracy"]
    table = (out / "comparison.md").read_text()
    assert "**Partial: 1 runs have not finished and are not in this table** (fedavg-seed0)" in table
    assert "| `fedpilot` |" in table and "| `fedavg`" not in table
    results["status"] = "running"
    path = out / "fedpilot-seed0" / "results.json"
    path.write_text(json.dumps(results))
    capsys.readouterr()
    assert compare(config_file, out, "--report") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--report: no run in" in err


def test_an_interrupted_run_continues_from_its_checkpoint_to_the_same_end(
        comparison: Path, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after round 1 continues there when the comparison runs again (no round is redone)
    and ends exactly as the uninterrupted run of the module's comparison."""
    out = tmp_path / "out"
    with interrupted_at_round(monkeypatch, 2):
        assert main(["compare", "--config", str(config_file), "--strategies", "fedpilot", "--seeds", "0", "--out", str(out), "--quiet"]) == 130
    part = json.loads((out / "fedpilot-seed0" / "results.json").read_text())
    assert part["status"] == "interrupted" and len(part["rounds"]) == 2
    first_round_at = part["rounds"][1]["finished_at"]

    assert compare(config_file, out) == 0  # fedpilot continues, fedavg is new
    resumed, full = run_results(out)["fedpilot"], run_results(comparison)["fedpilot"]
    assert resumed["status"] == "finished" and resumed["resumed_after_rounds"] == [1]
    assert resumed["rounds"][1]["finished_at"] == first_round_at  # round 1 was not trained again
    for a, b in zip(full["rounds"], resumed["rounds"], strict=True):
        assert (a["round"], a["accuracy"], a["loss"], a["train_loss"]) == (b["round"], b["accuracy"], b["loss"], b["train_loss"])
    data = json.loads((out / "comparison.json").read_text())
    assert sorted(data["executed"]) == ["fedavg-seed0", "fedpilot-seed0"]


def test_a_checkpoint_that_cannot_continue_the_run_is_named_and_the_run_starts_over(comparison: Path, tmp_path: Path) -> None:
    from fedpilot.comparison import PlannedRun, resume_blocker

    run_dir = tmp_path / "fedpilot-seed0"
    shutil.copytree(comparison / "fedpilot-seed0", run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    config = parse_config({**results["config"], "output_dir": str(run_dir)})
    assert resume_blocker(PlannedRun("fedpilot", 0, config, run_dir)) is None
    other = config.model_copy(update={"train": config.train.model_copy(update={"lr": 0.1})})
    assert resume_blocker(PlannedRun("fedpilot", 0, other, run_dir)) == (
        "its checkpoint is of another config (train.lr is 0.003 there, 0.1 here)")
    checkpoint = run_dir / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    assert resume_blocker(PlannedRun("fedpilot", 0, config, run_dir)).startswith(f"{checkpoint}: damaged checkpoint")
    checkpoint.unlink()
    assert resume_blocker(PlannedRun("fedpilot", 0, config, run_dir)) == f"{checkpoint}: no checkpoint here"


def test_a_finished_run_of_another_config_is_kept(comparison: Path, config_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "copy"
    shutil.copytree(comparison, out)
    path = out / "fedpilot-seed0" / "results.json"
    results = json.loads(path.read_text())
    results["config"]["train"]["lr"] = 0.1
    path.write_text(json.dumps(results))
    before = mtimes(out)
    capsys.readouterr()
    assert compare(config_file, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "fedpilot-seed0" in err and "train.lr" in err and "--out" in err
    assert mtimes(out) == before


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--strategies", "fedpilot,nosuch"], ["nosuch", "available"]),
        (["--strategies", "fedavg,fedavg"], ["twice"]),
        (["--seeds", "0,x"], ["'x'"]),
        (["--seeds", "-1"], ["'-1'"]),
        (["--preset", "slow"], ["slow", "quick"]),
        (["--target", "1.5"], ["--target"]),
        (["--last", "0"], ["--last", "below 1"]),
        (["--last", "five"], ["--last", "e.g. 5"]),
        (["--strategies", "fedpilot,fedavg", "--reference", "exclusive"], ["--reference", "fedpilot, fedavg"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv: list[str], words: list[str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedpilot: error:")
    assert all(word in err for word in words)
    assert not (tmp_path / "out").exists()


def test_the_quick_preset_caps_rounds_steps_and_samples() -> None:
    quick = PRESETS["quick"]
    default = load_config()
    smaller = quick.apply(default)
    assert (smaller.federation.rounds, smaller.train.local_steps, smaller.data.max_samples) == (3, 4, 1000)
    assert quick.changes(default) == {"federation.rounds": (5, 3), "train.local_steps": (8, 4), "data.max_samples": (None, 1000)}
    assert smaller.model_dump(exclude={"federation": {"rounds"}, "train": {"local_steps"}, "data": {"max_samples"}}) == \
        default.model_dump(exclude={"federation": {"rounds"}, "train": {"local_steps"}, "data": {"max_samples"}})
    tiny = parse_config(TINY)
    assert quick.changes(tiny) == {} and quick.apply(tiny) == tiny  # already smaller: unchanged


def test_the_benchmark_rewrites_only_the_generated_block(comparison: Path, tmp_path: Path) -> None:
    benchmark = load_benchmark("compare")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text(f"# Title\n\n{benchmark.BEGIN}\nold table\n{benchmark.END}\n\n## Findings\n\nhand-written\n")
    benchmark.update_docs(comparison, docs)
    text = (docs / "results.md").read_text()
    assert text.startswith("# Title\n") and text.endswith("## Findings\n\nhand-written\n")
    assert "old table" not in text and "| `fedpilot` |" in text
    for image in benchmark.IMAGES.values():
        assert f"]({image})" in text and (docs / image).is_file()
    # a named block of its own: the main block and the findings stay as they were, its plots are its own
    benchmark.update_docs(comparison, docs, "rt-strong")
    named = (docs / "results.md").read_text()
    begin, end = benchmark.markers("rt-strong")
    assert named.startswith(text.rstrip()) and named.rstrip().endswith(end)
    block = named.split(begin, 1)[1]
    assert "| `fedpilot` |" in block and "](rt-strong-accuracy.png)" in block and "](results.png)" not in block
    assert all((docs / f"rt-strong-{source}").is_file() for source in benchmark.IMAGES)
    benchmark.update_docs(comparison, docs, "rt-strong")  # written again: replaced, not appended
    assert (docs / "results.md").read_text() == named


def test_a_finished_run_from_before_a_new_config_field_still_counts_as_done(tmp_path: Path) -> None:
    """Fields added to the config since a run was made take their defaults (which keep the old
    behaviour), so a long comparison resumes across code versions; a real difference is still refused."""
    from fedpilot.comparison import PlannedRun, run_state
    from fedpilot.config import parse_config

    config = parse_config({"federation": {"rounds": 2}, "output_dir": str(tmp_path / "run")})
    stored = config.model_dump(mode="json")
    del stored["data"]["proxy_fraction"]  # as written by a version without that field
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"status": "finished", "config": stored}))
    assert run_state(PlannedRun("fedpilot", 0, config, run_dir)) == "finished"
    stored["federation"]["rounds"] = 3
    (run_dir / "results.json").write_text(json.dumps({"status": "finished", "config": stored}))
    with pytest.raises(FedpilotError, match="federation.rounds"):
        run_state(PlannedRun("fedpilot", 0, config, run_dir))


def state_with_settings(tmp_path: Path, strategy: str, changes: dict, drop: str | None = None, options: dict | None = None) -> str:
    """run_state of a finished run of ``strategy`` (with ``options`` set in the config) whose recorded settings are
    this code's with ``changes`` (and without the option ``drop``, as made before it existed)."""
    from fedpilot.comparison import PlannedRun, run_state

    config = parse_config({"strategy": strategy, "federation": {"rounds": 2}, "strategy_options": options or {}, "output_dir": str(tmp_path / "run")})
    settings = {**config.strategy_settings().model_dump(mode="json"), **changes}
    settings.pop(drop, None)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    record = {"status": "finished", "config": config.model_dump(mode="json"), "strategy_settings": settings}
    (run_dir / "results.json").write_text(json.dumps(record))
    return run_state(PlannedRun(strategy, 0, config, run_dir))


def test_a_finished_run_made_under_other_strategy_defaults_is_refused(tmp_path: Path) -> None:
    """The config holds only the options a user set; results.json also records the strategy's settings
    with the defaults of the code that ran, so a changed default is not mistaken for a finished run."""
    assert state_with_settings(tmp_path, "fedpilot", {}) == "finished"
    with pytest.raises(FedpilotError, match="ig_weight is 0.25 there, 0.5 here"):
        state_with_settings(tmp_path, "fedpilot", {"ig_weight": 0.25})
    assert state_with_settings(tmp_path, "fedpilot", {}, drop="keep_margin") == "finished"  # made before that option existed


@pytest.mark.parametrize("strategy", ["fedpilot", "fedpilot-noig"])
def test_a_run_made_before_an_option_existed_ran_what_the_code_did_then(tmp_path: Path, strategy: str) -> None:
    """spatial did not exist before runs scaled a module's step by its coverage: a record without it ran ``trainers``,
    whatever today's default, and is a finished run only for a config that asks for that."""
    assert state_with_settings(tmp_path, strategy, {}, drop="spatial", options={"spatial": "trainers"}) == "finished"
    with pytest.raises(FedpilotError, match="spatial is \"trainers\" there, \"coverage\" here"):
        state_with_settings(tmp_path, strategy, {}, drop="spatial", options={"spatial": "coverage"})
    assert state_with_settings(tmp_path, "fedpilot-nostagg", {}, drop="spatial", options={"spatial": "coverage"}) == "finished"  # inert there


def test_a_finished_run_differing_only_in_options_the_strategy_never_reads_is_kept(tmp_path: Path) -> None:
    # uniform values: neither option is read
    assert state_with_settings(tmp_path, "fedpilot-noig", {"local_scope": "client", "ig_weight": 0.25}) == "finished"
    with pytest.raises(FedpilotError, match="compensation is 0.25 there, 0.5 here"):
        state_with_settings(tmp_path, "fedpilot-noig", {"compensation": 0.25})  # stagg still runs


def test_the_runs_record_their_strategy_settings(comparison: Path) -> None:
    results = run_results(comparison)
    assert results["fedpilot"]["strategy_settings"]["ig_weight"] == 0.5
    assert results["fedpilot"]["strategy_settings"]["keep_margin"] is None
    assert results["fedavg"]["strategy_settings"] == {}


def test_the_tables_and_plot_name_the_split_the_runs_were_evaluated_on(comparison: Path, tmp_path: Path) -> None:
    from fedpilot.comparison import plot_accuracy, render_markdown

    summary = json.loads((comparison / "comparison.json").read_text())
    assert "on the test split" in render_markdown(summary)
    summary["config"]["train"]["evaluate_on"] = "validation"  # a tuning comparison
    text = render_markdown(summary)
    assert "on the validation split" in text and "on the test split" not in text
    assert "![validation accuracy per round" in text
    plot_accuracy(tmp_path / "accuracy.png", summary)
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_target_that_predicting_one_class_meets_is_named_and_not_counted(comparison: Path, config_file: Path, tmp_path: Path) -> None:
    results = run_results(comparison)["fedpilot"]
    counts = results["evaluated_label_counts"]
    assert sum(counts) == results["test_samples"] and len(counts) == len(results["label_names"])
    majority = max(counts) / sum(counts)
    copy = tmp_path / "out"
    shutil.copytree(comparison, copy)
    for target, trivial in ((majority - 0.001, True), (min(1.0, majority + 0.01), False)):
        assert compare(config_file, copy, "--target", f"{target:.6f}") == 0  # nothing reruns; the tables are made again
        data = json.loads((copy / "comparison.json").read_text())
        assert data["target"]["majority_accuracy"] == pytest.approx(majority) and data["target"]["trivial"] is trivial
        text = (copy / "comparison.md").read_text()
        assert f"Predicting the most frequent class scores {majority:.3f} on the evaluated split" in text
        rows = [line for line in text.splitlines() if line.startswith("| `")]
        assert all(line.split(" | ")[6] == "n/a" for line in rows) is trivial
        assert ("reaching it says nothing" in text) is trivial


def test_the_late_accuracy_is_the_mean_of_the_last_k_evaluated_rounds() -> None:
    from fedpilot.comparison import late_accuracy

    def rounds(*accuracies):
        return [{"round": i, "accuracy": a} for i, a in enumerate(accuracies)]

    assert late_accuracy(rounds(0.1, 0.5, None, 0.6, None, 0.7, 0.9), 3) == pytest.approx((0.6 + 0.7 + 0.9) / 3)
    assert late_accuracy(rounds(0.1, None, 0.8)) == pytest.approx(0.8)  # round 0 (untrained) never counts
    assert late_accuracy(rounds(0.3)) == pytest.approx(0.3)  # no trained round: the only evaluation


def test_the_table_shows_the_late_accuracy_of_every_run(comparison: Path) -> None:
    data = json.loads((comparison / "comparison.json").read_text())
    for run in data["runs"]:
        curve = [a for a in run["accuracy_curve"][1:] if a is not None]
        assert run["late_accuracy"] == pytest.approx(sum(curve[-5:]) / len(curve[-5:]))  # the default end point: last 5
    assert "| last-5 mean |" in (comparison / "comparison.md").read_text()


def test_the_end_point_reference_and_exclusive_check_come_from_the_command_line(comparison: Path, config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(comparison, out)
    assert compare(config_file, out, "--last", "1", "--reference", "fedpilot", "--exclusive-below") == 0  # the runs are kept: tables only
    data = json.loads((out / "comparison.json").read_text())
    for run in data["runs"]:
        curve = [a for a in run["accuracy_curve"][1:] if a is not None]
        assert run["late_accuracy"] == pytest.approx(curve[-1])
    table = (out / "comparison.md").read_text()
    assert "| last-1 mean | last-1 - `fedpilot`, paired |" in table and "exclusive" in table


def test_two_jobs_make_the_same_runs_in_processes_of_their_own(comparison: Path, config_file: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """--jobs 2: both runs at once in spawned workers (one torch thread each on 2 cores); the same
    finished runs as one at a time: same rounds, same allocations, same accuracies."""
    out = tmp_path / "parallel"
    capsys.readouterr()
    assert compare(config_file, out, "--jobs", "2") == 0
    assert "2 run now, 0 skipped" in capsys.readouterr().out
    data = json.loads((out / "comparison.json").read_text())
    assert data["executed"] == [f"{s}-seed0" for s in STRATEGIES]
    one, two = run_results(comparison), run_results(out)
    for s in STRATEGIES:
        assert two[s]["status"] == "finished"
        assert [[c["modules"] for c in r["clients"]] for r in two[s]["rounds"]] == [[c["modules"] for c in r["clients"]] for r in one[s]["rounds"]]
        assert [r["accuracy"] for r in two[s]["rounds"]] == pytest.approx([r["accuracy"] for r in one[s]["rounds"]], abs=0.02)
    assert compare(config_file, out, "--jobs", "2") == 0  # and it resumes like one job: nothing to redo
    assert "0 run now, 2 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_bad_jobs_exit_2_with_one_line(jobs: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", "--out", str(tmp_path / "out"), "--jobs", jobs]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--jobs" in err and "e.g. 2" in err
    assert not (tmp_path / "out").exists()


def test_the_cores_are_shared_equally_between_jobs() -> None:
    from fedpilot.comparison import parallel_threads

    assert [parallel_threads(jobs, cores=2) for jobs in (1, 2, 3)] == [2, 1, 1]
    assert parallel_threads(4, cores=16) == 4


def test_a_tuning_comparison_never_replaces_the_main_table(config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    benchmark = load_benchmark("compare")
    tuning = yaml.safe_load(config_file.read_text())
    tuning.setdefault("data", {})["validation_fraction"] = 0.1
    tuning.setdefault("train", {})["evaluate_on"] = "validation"
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(tuning))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("kept\n")
    monkeypatch.setattr("sys.argv", ["compare.py", "--config", str(tmp_path / "tune.yaml"), "--out", str(tmp_path / "out"),
                                     "--docs", str(tmp_path / "docs")])
    assert benchmark.main() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.evaluate_on: validation" in err and "--block" in err
    assert not (tmp_path / "out").exists() and (tmp_path / "docs" / "results.md").read_text() == "kept\n"


@pytest.mark.parametrize(("flag", "value", "fix"), [("--block", "rt strong/x", "rt-strong"), ("--docs", "results.md", "e.g. docs")])
def test_a_bad_block_or_docs_folder_is_refused_before_any_run(flag: str, value: str, fix: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    benchmark = load_benchmark("compare")
    (tmp_path / "results.md").write_text("kept\n")  # a file given as --docs: it used to end in a traceback after the runs
    arguments = {"--out": str(tmp_path / "out"), "--docs": str(tmp_path / "docs"), "--block": "rt-strong"}
    arguments[flag] = value if flag == "--block" else str(tmp_path / value)
    monkeypatch.setattr("sys.argv", ["compare.py", *[x for pair in arguments.items() for x in pair]])
    assert benchmark.main() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and fix in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "docs").exists()
    assert (tmp_path / "results.md").read_text() == "kept\n"


def test_the_config_sentence_names_the_loss_and_server_settings_that_change_every_run() -> None:
    from fedpilot.comparison import describe_config
    from fedpilot.config import parse_config

    plain = describe_config(parse_config({}).model_dump(mode="json"))
    assert "logit adjustment" not in plain and "server learning rate" not in plain
    tuned = describe_config(parse_config({"train": {"logit_adjustment": 1.0}, "federation": {"server_lr": 0.5}}).model_dump(mode="json"))
    assert "batch 16, logit adjustment tau=1, server learning rate 0.5, sequence" in tuned
