"""``mistral-sandbox bench``: the sandbox against real baselines, in one process and one run.

Scenarios (each: p50/p95/p99 latency in ms, and throughput where it applies):

* ``fork-floor``   bare ``os.fork()`` + ``os._exit(0)`` + ``waitpid`` from a small,
                   freshly started interpreter (nothing imported);
* ``in-process``   the action's ``run()`` called directly (no isolation at all);
* ``fresh-interpreter``  ``python -I -c ...`` per action: imports the API, loads the
                   action, reads msgpack params on stdin, prints the result (StackStorm's
                   model);
* ``sandbox``      ``Sandbox.run`` with the configured (default: full) isolation: back
                   to back from one thread (this saturates the machine: each call's
                   replacement child is prepared while the next call runs), and one at
                   a time at each offered rate of :data:`LOAD_RATES` (an executor
                   receiving work at that rate), each row with the rate reached and the
                   share of the machine kept busy.

Every ``sandbox noop`` row is checked against :data:`TARGETS` (:func:`check_targets`).

Plus throughput with 1/2/4/8 concurrent submitters, RSS of supervisor + zygote (idle,
under load) and per child, the scaling curves (concurrency up to 64, payload 1 KB to
10 MB) and, with ``--soak N``, RSS/fd growth over N executions.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import msgpack
import psutil

FORK_FLOOR_CODE = r"""
import os, sys, time, json
n = int(sys.argv[1]); out = []
for _ in range(n):
    t = time.perf_counter(); pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0); out.append(time.perf_counter() - t)
print(json.dumps(out))
"""

FRESH_CODE = r"""
import sys, importlib, msgpack
from mistral_sandbox.api import ActionContext, Result
target, = sys.argv[1:]
mod, _, cls = target.partition(":")
action_cls = getattr(importlib.import_module(mod), cls)
params = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
value = action_cls(**params).run(ActionContext())
if isinstance(value, Result):
    value = value.to_dict()
sys.stdout.buffer.write(msgpack.packb(value, use_bin_type=True))
"""

# offered load, requests per second sent one at a time on a schedule: the latency of an
# executor's actions as its rate grows towards what the machine can do
LOAD_RATES = (100, 200, 300, 400, 500)
# the performance targets, checked against every sandbox noop row
TARGETS = {"p50_ms": 1.5, "p99_ms": 5.0, "p50_over_fork_floor": 3.0,
           "fresh_interpreter_over_p50": 25.0}
ECHO = "mistral_sandbox.actions.std:EchoAction"
NOOP = "mistral_sandbox.actions.std:NoOpAction"


class Progress:
    """One updating line on stderr (a person watching long work)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty() or enabled == "always"

    def show(self, label: str, done: int, total: int) -> None:
        if self.enabled and (done == total or done % max(1, total // 20) == 0):
            sys.stderr.write("\r\033[K%-40s %5d/%d" % (label, done, total))
            sys.stderr.flush()

    def end(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def stats(samples: List[float]) -> Dict[str, float]:
    s = sorted(samples)
    n = len(s)

    def q(p):
        return s[min(n - 1, int(p * n))] * 1e3

    return {"n": n, "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99),
            "mean_ms": statistics.mean(s) * 1e3, "min_ms": s[0] * 1e3}


def timed(fn: Callable[[], Any], n: int, label: str, progress: Progress) -> List[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
        progress.show(label, i + 1, n)
    return out


def fork_floor(n: int) -> List[float]:
    p = subprocess.run([sys.executable, "-I", "-c", FORK_FLOOR_CODE, str(n)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def fresh_interpreter(target: str, params: dict) -> Any:
    p = subprocess.run([sys.executable, "-I", "-c", FRESH_CODE, target],
                       input=msgpack.packb(params, use_bin_type=True), capture_output=True,
                       check=True)
    return msgpack.unpackb(p.stdout, raw=False)


def process_rss(pid: int) -> int:
    """Resident set of one process (bytes)."""
    return psutil.Process(pid).memory_info().rss


def install_kind() -> str:
    """``site-packages`` for an installed package, ``source tree`` for an editable or
    in-place one: an editable install adds a finder that every fresh interpreter
    imports at start-up, which flatters the fresh-interpreter ratio."""
    import mistral_sandbox
    where = os.path.abspath(mistral_sandbox.__file__)
    return "site-packages" if os.sep + "site-packages" + os.sep in where else "source tree"


def machine_facts() -> Dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "root": os.geteuid() == 0,
            "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "install": install_kind(),
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def paced(fn: Callable[[], Any], n: int, rate: float, label: str,
          progress: Progress, clock: Callable[[], float] = time.perf_counter,
          sleep: Callable[[float], None] = time.sleep) -> List[float]:
    """Latency of ``fn`` called one at a time on a fixed schedule of ``rate`` per second
    (an executor receiving work at that rate); one sample (seconds) per call.

    A call its predecessor made late starts at once and its sample counts from the
    moment it was due, so a slow call also shows in the calls it delayed (no
    coordinated omission); a call on time counts from its actual start (the
    harness's own oversleep is not the sandbox's)."""
    out = []
    start = clock()
    previous_end = start
    for i in range(n):
        due = start + i / rate
        if previous_end > due:
            begin = due
        else:
            delay = due - clock()
            if delay > 0:
                sleep(delay)
            begin = clock()
        fn()
        previous_end = clock()
        out.append(previous_end - begin)
        progress.show(label, i + 1, n)
    return out


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy since boot (every process, kernel included)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def throughput(sandbox, submitters: int, per_submitter: int, params: dict,
               ref: str = "std.echo") -> Dict[str, Any]:
    lat: List[float] = []
    lock = threading.Lock()
    errors = []

    def work():
        mine = []
        for _ in range(per_submitter):
            t = time.perf_counter()
            out = sandbox.run(ref, params)
            mine.append(time.perf_counter() - t)
            if not out.ok:
                errors.append(out.exit_reason)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(submitters)]
    cpu0 = busy_cpu_seconds()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = busy_cpu_seconds() - cpu0
    result = stats(lat)
    result.update(submitters=submitters, per_second=len(lat) / wall, errors=len(errors),
                  action=ref, cpu_ms_per_execution=1e3 * cpu / max(1, len(lat)))
    return result


def own_fds(sandbox) -> int:
    """Open fds of this process once the sandbox is idle, without the three it holds
    for each idle warm child (the pool's size varies as it refills)."""
    deadline = time.monotonic() + 5
    while sandbox.running_pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(os.listdir("/proc/self/fd")) - len(sandbox.warm_fds())


def run(quick: bool = False, soak: int = 0, isolation: Optional[dict] = None,
        progress: Optional[Progress] = None, warm: Optional[int] = None) -> Dict[str, Any]:
    """All scenarios; returns the plain-data report. ``isolation``: policy overrides;
    ``warm``: the sandboxes' warm pool size (None: Sandbox's default)."""
    from mistral_sandbox import Sandbox

    progress = progress or Progress()
    n = 100 if quick else 300
    # back-to-back sandbox rows: a p99 of 300 samples is the 3rd-worst one, too noisy
    n_b2b = 200 if quick else 2000
    report: Dict[str, Any] = {"machine": machine_facts(), "quick": quick, "n": n,
                              "n_back_to_back": n_b2b,
                              "latency": {}, "throughput": [], "memory": {}, "scaling": {}}
    _baselines(report["latency"], n, progress)
    with Sandbox(max_workers=8, isolation=isolation, warm=warm) as sb:
        report["warm_pool"] = sb.warm
        report["native_isolation"] = sb.zygote_info.get("native_isolation", "?")
        time.sleep(0.5)  # let the warm pool fill before measuring idle memory
        report["memory"]["idle_supervisor_rss"] = psutil.Process().memory_info().rss
        report["memory"]["idle_zygote_rss"] = process_rss(sb.zygote_info["pid"])
        for _ in range(20):
            sb.run("std.noop")
        _sandbox_rows(sb, report, n, n_b2b, progress)
        _throughput_rows(sb, report, 200 if quick else 1500, progress)
        if soak:
            report["memory"]["soak"] = _soak(sb, soak)
    _scaling(report, quick, isolation, warm, progress)
    _nested_rows(report, n, isolation, progress)
    progress.end()
    lat = report["latency"]
    floor = lat["fork-floor"]["p50_ms"]
    sandbox = lat["sandbox noop"]["p50_ms"]
    fresh = lat["fresh-interpreter noop"]["p50_ms"]
    report["ratios"] = {
        "sandbox_noop_over_fork_floor_p50": sandbox / floor,
        "fresh_interpreter_over_sandbox_p50": fresh / sandbox,
        "sandbox_over_in_process_p50": sandbox / lat["in-process noop"]["p50_ms"],
    }
    report["targets"] = check_targets(report)
    return report


def _checked(out):
    """A benchmark execution's outcome; RuntimeError if it failed."""
    if not out.ok:
        raise RuntimeError("benchmark execution failed: %s: %s" % (out.exit_reason, out.message))
    return out


def _baselines(lat: Dict[str, Any], n: int, progress: Progress) -> None:
    """The fork floor, the action called in-process, and a fresh interpreter per call."""
    from mistral_sandbox.actions.std import EchoAction, NoOpAction
    from mistral_sandbox.api import ActionContext

    kb = "x" * 1024
    lat["fork-floor"] = stats(fork_floor(n))
    ctx = ActionContext()
    lat["in-process noop"] = stats(timed(lambda: NoOpAction().run(ctx), n * 10,
                                         "in-process noop", progress))
    lat["in-process echo 1KB"] = stats(timed(lambda: EchoAction(kb).run(ctx), n * 10,
                                             "in-process echo 1KB", progress))
    fresh_n = max(20, n // 5)
    lat["fresh-interpreter noop"] = stats(timed(lambda: fresh_interpreter(NOOP, {}), fresh_n,
                                                "fresh-interpreter noop", progress))
    lat["fresh-interpreter echo 1KB"] = stats(timed(
        lambda: fresh_interpreter(ECHO, {"output": kb}), fresh_n, "fresh-interpreter 1KB",
        progress))


def _sandbox_rows(sb, report: Dict[str, Any], n: int, n_b2b: int, progress: Progress) -> None:
    """Back to back, at each offered rate, with payloads; the children's peak RSS."""
    lat = report["latency"]
    kb, mb = "x" * 1024, "x" * (1024 * 1024)
    cpu0, t0 = busy_cpu_seconds(), time.perf_counter()
    lat["sandbox noop"] = stats(timed(lambda: _checked(sb.run("std.noop")), n_b2b,
                                      "sandbox noop", progress))
    lat["sandbox noop"].update(_load(n_b2b, t0, cpu0))
    for rate in LOAD_RATES:
        label = "sandbox noop @%d/s" % rate
        cpu0, t0 = busy_cpu_seconds(), time.perf_counter()
        lat[label] = stats(paced(lambda: _checked(sb.run("std.noop")), n, rate, label,
                                 progress))
        lat[label].update(_load(n, t0, cpu0), offered_per_second=rate)
    lat["sandbox echo 1KB"] = stats(timed(lambda: _checked(sb.run("std.echo", {"output": kb})),
                                          n_b2b, "sandbox echo 1KB", progress))
    lat["sandbox echo 1MB"] = stats(timed(lambda: _checked(sb.run("std.echo", {"output": mb})),
                                          max(20, n // 3), "sandbox echo 1MB", progress))
    child_rss = [sb.run("std.noop").usage.max_rss for _ in range(20)]
    report["memory"]["child_max_rss_p50"] = sorted(child_rss)[10]


NESTED_SOURCE = """
from mistral_sandbox.api import Action, utils


class Caller(Action):
    def __init__(self, nested):
        self.nested = nested

    def run(self, context):
        return utils.run_action("std.noop").data if self.nested else None
"""


def _nested_rows(report: Dict[str, Any], n: int, isolation, progress: Progress) -> None:
    """The price of one brokered nested call: an action calling ``std.noop`` through
    the runner against the same action without the call (interleaved blocks)."""
    from mistral_sandbox import Sandbox
    from mistral_sandbox.actions.catalog import SourceRef

    ref = SourceRef(NESTED_SOURCE, "Caller", "bench_nested")
    rows = {False: "action alone (tenant source)", True: "action + 1 nested noop"}
    samples: Dict[bool, List[float]] = {False: [], True: []}
    with Sandbox(max_workers=2, isolation=isolation,
                 ceiling={"nested_calls": 1, "nested_depth": 1}) as sb:
        for nested in (False, True):
            _checked(sb.run(ref, {"nested": nested}))
        for block in range(10):
            for nested in ((False, True) if block % 2 == 0 else (True, False)):
                samples[nested] += timed(lambda: _checked(sb.run(ref, {"nested": nested})),
                                         max(5, n // 20), rows[nested], progress)
    for nested, label in rows.items():
        report["latency"][label] = stats(samples[nested])
    report["nested_call_ms"] = (report["latency"][rows[True]]["p50_ms"]
                                - report["latency"][rows[False]]["p50_ms"])


def _throughput_rows(sb, report: Dict[str, Any], total: int, progress: Progress) -> None:
    """noop and echo 1KB with 1, 2, 4 and 8 submitters; peak RSS of supervisor + zygote."""
    me, zygote = psutil.Process(), sb.zygote_info["pid"]
    peak = {"rss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                total_rss = me.memory_info().rss + process_rss(zygote)
            except psutil.Error:
                total_rss = 0
            peak["rss"] = max(peak["rss"], total_rss)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for ref, params in (("std.noop", {}), ("std.echo", {"output": "x" * 1024})):
        for k in (1, 2, 4, 8):
            progress.show("throughput %s, %d submitters" % (ref, k), 0, 1)
            report["throughput"].append(throughput(sb, k, total // k, params, ref))
    stop.set()
    sampler.join()
    report["memory"]["load_supervisor_plus_zygote_peak_rss"] = peak["rss"]


def _soak(sb, executions: int) -> Dict[str, Any]:
    """RSS of supervisor + zygote and our fds before and after ``executions``."""
    me, zygote = psutil.Process(), sb.zygote_info["pid"]
    before = me.memory_info().rss + process_rss(zygote)
    fds_before = own_fds(sb)
    throughput(sb, 4, executions // 4, {"output": "x" * 1024})
    after = me.memory_info().rss + process_rss(zygote)
    return {"executions": executions // 4 * 4, "rss_before": before, "rss_after": after,
            "growth_pct": 100.0 * (after - before) / before,
            "fds_before": fds_before, "fds_after": own_fds(sb)}


def _scaling(report: Dict[str, Any], quick: bool, isolation, warm, progress: Progress) -> None:
    """Throughput as concurrency grows; latency as the payload grows."""
    from mistral_sandbox import Sandbox

    report["scaling"]["concurrency"] = []
    for c in ([1, 4, 16, 64] if quick else [1, 2, 4, 8, 16, 32, 64]):
        with Sandbox(max_workers=c, isolation=isolation,
                     warm=None if warm is None else min(warm, c)) as sb:
            r = throughput(sb, c, max(4, (40 if quick else 120) // c), {"output": "x" * 1024})
            r["concurrency"] = c
            report["scaling"]["concurrency"].append(r)
            progress.show("scaling: concurrency %d" % c, 1, 1)
    report["scaling"]["payload"] = []
    from mistral_sandbox.runner.limits import DEFAULT_CEILING
    # (the default ceiling keeps results to 1 MiB, as Mistral stores them)
    ceiling = dataclasses.replace(DEFAULT_CEILING, max_result_bytes=16 * 1024 ** 2)
    with Sandbox(max_workers=2, isolation=isolation, ceiling=ceiling,
                 warm=None if warm is None else min(warm, 2)) as sb:
        for size in (1024, 10 * 1024, 100 * 1024, 1024 ** 2, 10 * 1024 ** 2):
            payload = {"output": "x" * size}
            reps = 10 if size >= 1024 ** 2 else 40
            if quick:
                reps = max(5, reps // 3)
            r = stats(timed(lambda: _checked(sb.run("std.echo", payload)), reps,
                            "scaling: payload %d B" % size, progress))
            r["bytes"] = size
            report["scaling"]["payload"].append(r)


def _load(n: int, t0: float, cpu0: float) -> Dict[str, float]:
    """What a row of ``n`` calls begun at ``t0`` (``busy_cpu_seconds`` was ``cpu0``)
    asked of the machine: calls per second, the share of all CPUs kept busy, and the
    machine's busy CPU time per call."""
    wall = time.perf_counter() - t0
    cpu = busy_cpu_seconds() - cpu0
    return {"achieved_per_second": n / wall,
            "machine_busy_pct": 100.0 * cpu / (wall * (os.cpu_count() or 1)),
            "cpu_ms_per_execution": 1e3 * cpu / n}


def check_targets(report: Dict[str, Any]) -> Dict[str, Any]:
    """Every ``sandbox noop`` row (back to back, and each offered rate) against
    :data:`TARGETS`, with the ratios to the fork floor and the fresh interpreter.

    Returns ``{"rows": {name: {...ratios, "met": bool, "missed": [target, ...]}},
    "met_up_to_per_second": the highest offered rate up to which every rate met all
    targets (0: none), "capacity_per_second": the best noop throughput measured}``.
    """
    lat = report["latency"]
    floor = lat["fork-floor"]["p50_ms"]
    fresh = lat["fresh-interpreter noop"]["p50_ms"]
    rows = {}
    for name, s in lat.items():
        if name != "sandbox noop" and not name.startswith("sandbox noop @"):
            continue
        values = {"p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                  "p50_over_fork_floor": s["p50_ms"] / floor,
                  "fresh_interpreter_over_p50": fresh / s["p50_ms"]}
        missed = [k for k, limit in TARGETS.items()
                  if (values[k] < limit if k == "fresh_interpreter_over_p50"
                      else values[k] > limit)]
        rows[name] = dict(values, met=not missed, missed=missed)
    met_up_to = 0
    for name, s in sorted(((k, v) for k, v in lat.items() if "offered_per_second" in v),
                          key=lambda kv: kv[1]["offered_per_second"]):
        if not rows[name]["met"]:
            break
        met_up_to = s["offered_per_second"]
    capacity = max([t["per_second"] for t in report.get("throughput", ())
                    if t.get("action") == "std.noop"] or [0])
    return {"rows": rows, "met_up_to_per_second": met_up_to,
            "capacity_per_second": capacity}


def format_table(report: Dict[str, Any]) -> str:
    lines = ["%-28s %9s %9s %9s %9s" % ("latency", "p50 ms", "p95 ms", "p99 ms", "n")]
    for name, s in report["latency"].items():
        row = (name, s["p50_ms"], s["p95_ms"], s["p99_ms"], s["n"])
        lines.append("%-28s %9.3f %9.3f %9.3f %9d" % row)
    lines.append("")
    lines.append("%-28s %9s %9s %9s %9s" % ("throughput", "per s", "p50 ms", "p99 ms",
                                            "CPU ms"))
    for t in report["throughput"]:
        what = {"std.noop": "noop", "std.echo": "echo 1KB"}.get(t.get("action"), t.get("action"))
        row = ("%s, %d submitters" % (what, t["submitters"]), t["per_second"], t["p50_ms"],
               t["p99_ms"], t.get("cpu_ms_per_execution", 0))
        lines.append("%-28s %9.0f %9.3f %9.3f %9.2f" % row)
    lines.append("(CPU ms: busy CPU time of the whole machine per execution)")
    lines.append("")
    lines.extend(format_targets(report))
    m = report["memory"]
    lines.append("memory: idle supervisor %.1f MiB + zygote %.1f MiB; peak under load %.1f MiB;"
                 " child max RSS p50 %.1f MiB" % (
                     m["idle_supervisor_rss"] / 2 ** 20, m["idle_zygote_rss"] / 2 ** 20,
                     m["load_supervisor_plus_zygote_peak_rss"] / 2 ** 20,
                     m["child_max_rss_p50"] / 2 ** 20))
    if "nested_call_ms" in report:
        lines.append("one brokered nested call (std.noop) adds %.2f ms at p50"
                     % report["nested_call_ms"])
    if "soak" in m:
        s = m["soak"]
        lines.append("soak: %d executions, supervisor+zygote RSS %.1f -> %.1f MiB (%+.1f%%), "
                     "fds %d -> %d" % (s["executions"], s["rss_before"] / 2 ** 20,
                                       s["rss_after"] / 2 ** 20, s["growth_pct"],
                                       s["fds_before"], s["fds_after"]))
    lines.append("scaling, concurrency: " + "  ".join(
        "%d: %.0f/s p50 %.1fms" % (c["concurrency"], c["per_second"], c["p50_ms"])
        for c in report["scaling"]["concurrency"]))
    lines.append("scaling, payload: " + "  ".join(
        "%s: p50 %.1fms" % (_size(p["bytes"]), p["p50_ms"]) for p in report["scaling"]["payload"]))
    mf = report["machine"]
    lines.append("machine: %s CPUs %s, kernel %s, Python %s, %s, package from %s; warm pool %s"
                 ", native isolation %s"
                 % (mf["cpus"], mf["cpu_model"] or "?", mf["kernel"], mf["python"],
                    "root" if mf["root"] else "not root", mf.get("install", "?"),
                    report.get("warm_pool", "?"), report.get("native_isolation", "?")))
    return "\n".join(lines)


def _plot_load(ax, report: Dict[str, Any]) -> None:
    """p50/p99 of std.noop against the rate it was offered, the back-to-back row at the
    rate it reached, and the strictest p50 target and the p99 target as lines."""
    lat = report["latency"]
    load = sorted((v for v in lat.values() if "offered_per_second" in v),
                  key=lambda v: v["offered_per_second"])
    rates = [v["offered_per_second"] for v in load]
    ax.plot(rates, [v["p50_ms"] for v in load], "o-", label="p50, one at a time")
    ax.plot(rates, [v["p99_ms"] for v in load], "s-", label="p99, one at a time")
    b2b = lat["sandbox noop"]
    if "achieved_per_second" in b2b:
        ax.plot([b2b["achieved_per_second"]] * 2, [b2b["p50_ms"], b2b["p99_ms"]], "kx",
                markersize=9, label="back to back (p50, p99)")
    strict = min(TARGETS["p50_ms"],
                 TARGETS["p50_over_fork_floor"] * lat["fork-floor"]["p50_ms"],
                 lat["fresh-interpreter noop"]["p50_ms"] / TARGETS["fresh_interpreter_over_p50"])
    ax.axhline(strict, color="C0", linestyle=":", label="p50 target (%.2f ms)" % strict)
    ax.axhline(TARGETS["p99_ms"], color="C1", linestyle=":", label="p99 target")
    top = max([TARGETS["p99_ms"]] + [v["p99_ms"] for v in load] + [b2b["p99_ms"]])
    ax.set_ylim(0, top * 1.1)
    ax.set_xlabel("std.noop offered (per s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency vs offered load")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


def format_targets(report: Dict[str, Any]) -> List[str]:
    """The target check (:func:`check_targets`) as lines of the table."""
    t = report["targets"]
    lines = ["targets: p50 <= %.1f ms, p99 <= %.0f ms, p50 <= %.0fx fork-floor, "
             "fresh-interpreter >= %.0fx p50" % tuple(TARGETS.values())]
    for name, row in t["rows"].items():
        s = report["latency"][name]
        lines.append("  %-26s %5.0f/s, machine %3.0f%% busy: %.1fx fork-floor, %.1fx fresh"
                     " -> %s" % (name, s.get("achieved_per_second", 0),
                                 s.get("machine_busy_pct", 0), row["p50_over_fork_floor"],
                                 row["fresh_interpreter_over_p50"],
                                 "met" if row["met"] else "missed: " + ", ".join(row["missed"])))
    b2b = report["latency"]["sandbox noop"]
    if "cpu_ms_per_execution" in b2b:
        cpus = report.get("machine", {}).get("cpus") or os.cpu_count() or 1
        lines.append("  (back to back: mean %.2f ms >= CPU per execution %.2f ms / %d CPUs = "
                     "%.2f ms: one caller in a loop cannot average less, whatever the "
                     "scheduling)" % (
                         b2b["mean_ms"], b2b["cpu_ms_per_execution"], cpus,
                         b2b["cpu_ms_per_execution"] / cpus))
    lines.append("  all targets met at every offered rate up to %d/s (noop capacity "
                 "measured: %.0f/s)" % (t["met_up_to_per_second"], t["capacity_per_second"]))
    return lines


def _size(n: int) -> str:
    for unit, mult in (("MB", 1024 ** 2), ("KB", 1024)):
        if n >= mult:
            return "%d%s" % (n // mult, unit)
    return "%dB" % n


def save(report: Dict[str, Any], directory: str) -> List[str]:
    """Write the JSON (and PNG charts when matplotlib is installed); returns the paths."""
    os.makedirs(directory, exist_ok=True)
    stamp = report["machine"]["when"].replace(":", "").replace("+0000", "Z")
    path = os.path.join(directory, "bench-%s.json" % stamp)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    paths = [path]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    lat = report["latency"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(lat)
    ax.barh(names, [lat[k]["p50_ms"] for k in names], label="p50")
    ax.barh(names, [lat[k]["p99_ms"] - lat[k]["p50_ms"] for k in names],
            left=[lat[k]["p50_ms"] for k in names], alpha=0.4, label="p50→p99")
    ax.set_xscale("log")
    ax.set_xlabel("latency per action (ms, log scale)")
    ax.set_title("mistral-sandbox vs baselines (%s, %d CPUs)" % (
        report["machine"]["kernel"], report["machine"]["cpus"]))
    ax.legend()
    fig.tight_layout()
    p1 = os.path.join(directory, "bench-%s-latency.png" % stamp)
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 5.2))
    conc = report["scaling"]["concurrency"]
    a1.plot([c["concurrency"] for c in conc], [c["per_second"] for c in conc], "o-",
            label="actions/s")
    a1.set_xscale("log", base=2)
    a1.set_xlabel("concurrent executions")
    a1.set_ylabel("actions/s")
    a1b = a1.twinx()
    a1b.plot([c["concurrency"] for c in conc], [c["p50_ms"] for c in conc], "s--", color="C1",
             label="p50 ms")
    a1b.set_ylabel("p50 latency (ms)")
    a1.set_title("throughput and latency vs concurrency")
    pay = report["scaling"]["payload"]
    a2.plot([p["bytes"] for p in pay], [p["p50_ms"] for p in pay], "o-")
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("std.echo payload (bytes)")
    a2.set_ylabel("p50 latency (ms)")
    a2.set_title("latency vs payload")
    _plot_load(a3, report)
    fig.tight_layout()
    p2 = os.path.join(directory, "bench-%s-scaling.png" % stamp)
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return paths + [p1, p2]
