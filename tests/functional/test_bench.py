"""The benchmark's measuring pieces work (no timing is asserted here)."""

import time

from mistral_sandbox import bench
from mistral_sandbox.actions.std import NoOpAction


def test_fork_floor_measures_real_forks():
    samples = bench.fork_floor(5)
    assert len(samples) == 5 and all(s > 0 for s in samples)


def test_fresh_interpreter_baseline_runs_the_action():
    assert bench.fresh_interpreter(bench.ECHO, {"output": {"a": [1]}}) == {"a": [1]}
    assert bench.fresh_interpreter(bench.NOOP, {}) is None


def test_stats_and_table_shapes():
    s = bench.stats([0.001, 0.002, 0.003, 0.004])
    assert s["n"] == 4 and s["p50_ms"] == 3.0 and s["min_ms"] == 1.0
    assert bench._size(1024 ** 2) == "1MB" and bench._size(10) == "10B"
    assert NoOpAction().run(None) is None


def test_throughput_counts_every_execution(sandbox, clean):
    r = bench.throughput(sandbox, 2, 5, {"output": "x"})
    assert r["n"] == 10 and r["errors"] == 0 and r["per_second"] > 0
    assert r["action"] == "std.echo" and r["cpu_ms_per_execution"] > 0


def test_paced_calls_keep_their_schedule():
    calls = []
    samples = bench.paced(lambda: calls.append(time.perf_counter()), 5, 50.0, "x",
                          bench.Progress(False))
    assert len(samples) == 5 and len(calls) == 5
    # one call per 20 ms slot: the 5th call cannot start before 80 ms after the first
    assert calls[-1] - calls[0] >= 4 / 50.0 * 0.99


def test_busy_cpu_seconds_grows_with_work():
    before = bench.busy_cpu_seconds()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert bench.busy_cpu_seconds() > before


def test_install_kind_tells_an_installed_package_from_a_source_tree(monkeypatch):
    import mistral_sandbox
    monkeypatch.setattr(mistral_sandbox, "__file__",
                        "/v/lib/python3.11/site-packages/mistral_sandbox/__init__.py")
    assert bench.install_kind() == "site-packages"
    monkeypatch.setattr(mistral_sandbox, "__file__", "/src/mistral_sandbox/__init__.py")
    assert bench.install_kind() == "source tree"
    assert bench.machine_facts()["install"] == "source tree"


def test_ab_compare_measures_one_round_of_a_source_tree():
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "ab_compare.py"),
                          "--measure", root, "--n", "20"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["cpu_ms"] > 0 and r["faults"] > 0
    assert 0 < r["b2b_p50_ms"] <= r["b2b_p99_ms"] and r["paced_p50_ms"] > 0
