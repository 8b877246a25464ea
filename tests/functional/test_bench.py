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


class _FakeClock:
    """A clock the test moves: ``sleep`` and each call of the measured function
    advance it, so the schedule arithmetic is checked exactly."""

    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_paced_counts_the_wait_a_late_call_caused():
    clock = _FakeClock()
    durations = iter([0.035, 0.001, 0.001, 0.001, 0.001])  # the first call overruns

    def call():
        clock.now += next(durations)

    samples = bench.paced(call, 5, 100.0, "x", bench.Progress(False), clock=clock,
                          sleep=clock.sleep)
    # due at 0, 10, 20, 30, 40 ms; the first ends at 35 ms: calls 2-4 start late, back
    # to back, and count from when they were due; call 5 (due at 40) waits for its slot
    ms = [round(s * 1e3, 6) for s in samples]
    assert ms == [35.0, 26.0, 17.0, 8.0, 1.0]
    assert [round(s * 1e3, 6) for s in clock.slept] == [2.0]


def test_paced_does_not_count_an_early_finish_or_the_harness_oversleep():
    clock = _FakeClock()

    def oversleep(seconds):  # the harness wakes 0.3 ms late every time
        clock.sleep(seconds + 0.0003)

    samples = bench.paced(lambda: setattr(clock, "now", clock.now + 0.002), 3, 100.0, "x",
                          bench.Progress(False), clock=clock, sleep=oversleep)
    assert [round(s * 1e3, 6) for s in samples] == [2.0, 2.0, 2.0]


def _report(b2b_p50, rows):
    """A report with the fields :func:`bench.check_targets` reads: fork floor 0.4 ms,
    fresh interpreter 30 ms; ``rows``: {rate: (p50, p99)}."""
    lat = {"fork-floor": {"p50_ms": 0.4}, "fresh-interpreter noop": {"p50_ms": 30.0},
           "sandbox noop": {"p50_ms": b2b_p50, "p99_ms": 4.0}}
    for rate, (p50, p99) in rows.items():
        lat["sandbox noop @%d/s" % rate] = {"p50_ms": p50, "p99_ms": p99,
                                            "offered_per_second": rate}
    return {"latency": lat, "throughput": [
        {"action": "std.noop", "per_second": 610.0}, {"action": "std.echo", "per_second": 900}]}


def test_check_targets_names_each_missed_target():
    t = bench.check_targets(_report(1.3, {100: (0.6, 1.5), 200: (1.25, 6.0)}))
    b2b = t["rows"]["sandbox noop"]
    # 1.3 ms: under 1.5 ms but 3.25x the floor and 23x the fresh interpreter
    assert not b2b["met"]
    assert b2b["missed"] == ["p50_over_fork_floor", "fresh_interpreter_over_p50"]
    assert round(b2b["p50_over_fork_floor"], 3) == 3.25
    assert t["rows"]["sandbox noop @100/s"]["met"]
    assert t["rows"]["sandbox noop @200/s"]["missed"] == [  # 1.25 ms: 3.1x, 24x
        "p99_ms", "p50_over_fork_floor", "fresh_interpreter_over_p50"]
    assert t["met_up_to_per_second"] == 100
    assert t["capacity_per_second"] == 610.0  # noop only, not echo


def test_check_targets_stops_at_the_first_rate_that_misses():
    t = bench.check_targets(_report(1.0, {300: (0.5, 1.0), 100: (0.5, 1.0),
                                          200: (2.0, 9.0)}))
    assert t["rows"]["sandbox noop"]["met"]
    assert t["met_up_to_per_second"] == 100  # 300/s met, but 200/s did not
    assert bench.check_targets(_report(1.0, {100: (1.6, 2.0)}))["met_up_to_per_second"] == 0


def test_table_shows_the_verdict_of_every_row():
    report = _report(1.3, {100: (0.6, 1.5)})
    report["targets"] = bench.check_targets(report)
    lines = bench.format_targets(report)
    assert "missed: p50_over_fork_floor, fresh_interpreter_over_p50" in lines[1]
    assert lines[2].endswith("-> met") and "up to 100/s" in lines[-1]
    assert not any("CPU per execution" in line for line in lines)
    report["latency"]["sandbox noop"].update(mean_ms=1.6, cpu_ms_per_execution=3.0)
    report["machine"] = {"cpus": 2}
    assert "mean 1.60 ms >= CPU per execution 3.00 ms / 2 CPUs = 1.50 ms" in "\n".join(
        bench.format_targets(report))


def test_load_row_reports_rate_busy_share_and_cpu_per_call():
    cpu0, t0 = bench.busy_cpu_seconds(), time.perf_counter()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    r = bench._load(10, t0, cpu0)
    assert r["achieved_per_second"] > 0 and r["cpu_ms_per_execution"] > 0
    assert r["machine_busy_pct"] > 0  # (no upper check: /proc/stat counts in 10 ms ticks)


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
