"""The coverage column of `fedpilot compare`: the share of the federation's training rows that reached the
global model, on hand-computed runs."""

from __future__ import annotations

import pytest

from fedpilot.comparison import coverage, summarise_run


def client(cid: int, rows: int) -> dict:
    return {"cid": cid, "num_samples": rows, "modules": ["0.query"], "upload_bytes": 0, "download_bytes": 0, "train_loss": 0.5,
            "peak_bytes": 1, "budget_bytes": 2}


def run(rounds: list[dict], rows: dict[int, int], per_round: int = 2) -> dict:
    """A results.json as the federation writes it: the clients' rows, round 0 (untrained) and ``rounds``."""
    return {
        "config": {"federation": {"clients_per_round": per_round, "num_clients": len(rows)}},
        "clients": [{"cid": cid, "num_samples": n, "budget_bytes": 2} for cid, n in rows.items()],
        "rounds": [{"round": 0, "accuracy": 0.3, "clients": [], "upload_bytes": 0, "download_bytes": 0}]
        + [{"round": i, "accuracy": 0.5, "upload_bytes": 0, "download_bytes": 0, **r} for i, r in enumerate(rounds, 1)],
        "wall_seconds": 1.0,
    }


ROWS = {0: 100, 1: 250, 2: 50, 3: 400, 4: 200}  # 1,000 rows


def test_coverage_counts_the_rows_of_clients_whose_update_reached_the_global_model() -> None:
    rounds = [
        # client 0 and 1 trained and were averaged; client 3's update was rejected (never in "clients")
        {"clients": [client(0, 100), client(1, 250)], "rejected": [{"round": 1, "cid": 3, "reason": "RMS"}], "skipped": None},
        # client 2 trained, but the round had too few replies and was skipped: the global model never saw it
        {"clients": [client(2, 50)], "skipped": "1 valid update(s), fewer than federation.min_replies=2"},
        # client 1 again (counted once), client 4 failed
        {"clients": [client(1, 250)], "failures": [{"cid": 4, "phase": "training", "reason": "oom"}], "skipped": None},
    ]
    results = run(rounds, ROWS)
    # reached: clients 0 and 1 -> (100 + 250) / 1000; lost: 2 (skipped round), 3 (rejected), 4 (failed)
    assert coverage(results) == pytest.approx(0.35)
    assert summarise_run(results)["coverage"] == pytest.approx(0.35)


def test_a_strategy_that_trains_only_the_rich_clients_covers_only_their_rows() -> None:
    # exclusive-like: every planned client-round trained (none lost), but only clients 3 and 4 ever take part
    rounds = [{"clients": [client(3, 400), client(4, 200)]}] * 3  # rounds written before "skipped" existed: applied
    summary = summarise_run(run(rounds, ROWS))
    assert summary["lost_client_rounds"] == 0
    assert summary["coverage"] == pytest.approx(600 / 1000)


def test_round_zero_never_counts_and_a_run_without_client_rows_has_no_coverage() -> None:
    results = run([{"clients": [client(0, 100)], "skipped": None}], ROWS)
    results["rounds"][0]["clients"] = [client(1, 250)]  # round 0 is the untrained model: nothing it lists reached it
    assert coverage(results) == pytest.approx(0.1)
    assert coverage({**results, "clients": []}) is None


def test_an_update_from_a_client_the_run_does_not_list_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match=r"clients \[9\]"):
        coverage(run([{"clients": [client(9, 10)]}], ROWS))
