"""benchmarks/flower_overhead.py's ``--perf`` accounting: perf report lines to CPU seconds, and a real recording."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def overhead():
    return load_benchmark("flower_overhead")


def test_report_lines_become_seconds_summed_by_key(overhead):
    hz = overhead.PERF_HZ
    text = "\n".join([
        f"   {3 * hz}  libgomp.so.1          [.] 0x000000000001e02a",
        f"   {hz}  libtorch_cpu.so       [.] mkl_blas_avx512_sgemm_kernel_0",
        f"   {hz // 2}  libgomp.so.1          [.] 0x000000000001e02a",  # the same key again: summed
        "",
        "# a comment line",
        f"   {hz // 10}  [kernel.kallsyms]     [k] clear_page_erms",
    ])
    seconds = overhead.perf_report_seconds(text)
    assert seconds == {"libgomp.so.1 0x000000000001e02a": 3.5, "libtorch_cpu.so mkl_blas_avx512_sgemm_kernel_0": 1.0,
                       "[kernel.kallsyms] clear_page_erms": 0.1}
    assert list(seconds) == sorted(seconds, key=lambda k: -seconds[k])  # largest first
    assert overhead.perf_report_seconds(text, top=1) == {"libgomp.so.1 0x000000000001e02a": 3.5}


def test_perf_record_wraps_the_command_on_the_monotonic_clock(overhead, tmp_path):
    command = overhead.perf_record(tmp_path / "x" / "a.data", ["python", "-c", "pass"])
    assert command[:2] == ["perf", "record"] and command[-4:] == ["--", "python", "-c", "pass"]
    assert command[command.index("-k") + 1] == "mono" and (tmp_path / "x").is_dir()


@pytest.mark.skipif(shutil.which("perf") is None, reason="needs Linux perf")
def test_a_recorded_busy_loop_is_counted_in_its_window_only(overhead, tmp_path):
    """A busy Python loop that burns one second of CPU (however loaded the machine) after half a second of sleep:
    about a second of CPU in the recording, almost none of it in the window of the sleep."""
    data = tmp_path / "loop.data"
    began = time.monotonic()
    loop = "import time; time.sleep(0.5); t = time.process_time()\nwhile time.process_time() - t < 1.0: pass"
    done = subprocess.run([str(a) for a in overhead.perf_record(data, [sys.executable, "-c", loop])], capture_output=True, text=True)
    if done.returncode or not data.exists():
        pytest.skip(f"perf record cannot sample here: {done.stderr.strip()[:200]}")
    total = sum(overhead.perf_summary([data])["by_dso"].values())
    assert 0.7 <= total <= 1.5, total
    asleep = overhead.perf_summary([data], (began, began + 0.3))["by_dso"]
    assert sum(asleep.values()) <= 0.2, asleep


def test_time_split_puts_what_no_round_recorded_outside_the_rounds(overhead, tmp_path):
    rounds = [{"round": 0, "seconds": 0.0}, {"round": 1, "seconds": 20.04}, {"round": 2, "seconds": 14.96}]
    (tmp_path / "results.json").write_text(json.dumps({"status": "finished", "rounds": rounds}))
    assert overhead.time_split(tmp_path, 50.0) == {"rounds": [20.0, 15.0], "outside_rounds": 15.0}
    (tmp_path / "results.json").write_text(json.dumps({"status": "interrupted", "rounds": rounds}))
    with pytest.raises(RuntimeError, match="did not finish"):
        overhead.time_split(tmp_path, 50.0)
