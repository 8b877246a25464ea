"""What isolation costs, in one run.

* Each isolation step's own cost per execution (µs in the child, p50/p95 over N runs
  of std.noop), and the end-to-end latency with every optional step on vs off.
* ``--price STEP``: the whole price of one step, zygote and kernel included: two
  sandboxes, one with the step off, measured in alternating rounds (machine CPU per
  execution at 2 submitters, back-to-back p50 and p99). Only meaningful for a step
  whose absence keeps native isolation on (``cgroup``); for the others the comparison
  would also turn native isolation off.

Usage: python benchmarks/isolation_costs.py [N] [--price STEP] [--rounds R]
"""

import argparse
import statistics
import sys
import threading
import time

from mistral_sandbox import Sandbox
from mistral_sandbox.runner.steps import NAMES as STEPS, OFF

OPTIONAL = ("cgroup", "user_ns", "pid_ns", "net_ns", "mount_ns", "ipc_ns", "uts_ns",
            "no_new_privs", "seccomp")


def run(n, policy, label):
    costs = {}
    walls = []
    with Sandbox(max_workers=1, isolation=policy) as sb:
        for _ in range(20):
            sb.run("std.noop")
        for i in range(n):
            t = time.perf_counter()
            out = sb.run("std.noop")
            walls.append(time.perf_counter() - t)
            assert out.ok, out.message
            for step, us in out.isolation.get("cost_us", {}).items():
                costs.setdefault(step, []).append(us)
            if (i + 1) % max(1, n // 10) == 0:
                sys.stderr.write("\r%s: %d/%d" % (label, i + 1, n))
    sys.stderr.write("\n")
    return costs, walls


def q(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # all but idle and iowait


def _cpu_per_execution(sb, seconds=2.0) -> float:
    """Machine CPU ms per std.noop with 2 submitters."""
    count = [0, 0]
    stop = time.monotonic() + seconds

    def submitter(i):
        while time.monotonic() < stop:
            sb.run("std.noop")
            count[i] += 1
    before = _busy_jiffies()
    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (_busy_jiffies() - before) * 1000.0 / 100 / max(1, sum(count))


def _back_to_back(sb, n=500):
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        sb.run("std.noop")
        lat.append(time.perf_counter() - t)
    return q(lat, .5) * 1e3, q(lat, .99) * 1e3


def price(step, rounds):
    """Alternating rounds of the default sandbox and one with ``step`` off."""
    sandboxes = {"on": Sandbox(max_workers=8), "off": Sandbox(max_workers=8,
                                                              isolation={step: OFF})}
    got = {k: [] for k in sandboxes}
    try:
        for sb in sandboxes.values():
            for _ in range(100):
                sb.run("std.noop")
        for r in range(rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for k in order:
                got[k].append((_cpu_per_execution(sandboxes[k]),) +
                              _back_to_back(sandboxes[k]))
            sys.stderr.write("\r%s: round %d/%d" % (step, r + 1, rounds))
        sys.stderr.write("\n")
    finally:
        for sb in sandboxes.values():
            sb.shutdown()
    print("price of %s (native isolation %s), medians of %d rounds:" % (
        step, sandboxes["off"].zygote_info.get("native_isolation"), rounds))
    for k in ("off", "on"):
        print("  %-3s  CPU %.2f ms/execution, back-to-back p50 %.3f ms, p99 %.3f ms" % (
            (k,) + tuple(statistics.median(x[i] for x in got[k]) for i in range(3))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=300)
    parser.add_argument("--price", metavar="STEP", choices=STEPS)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    if args.price:
        price(args.price, args.rounds)
        return
    full_costs, full = run(args.n, None, "all steps")
    _, minimal = run(args.n, {s: OFF for s in OPTIONAL}, "optional steps off")
    print("%-14s %10s %10s" % ("step", "p50 µs", "p95 µs"))
    for step in STEPS:
        if step in full_costs:
            print("%-14s %10d %10d" % (step, q(full_costs[step], .5), q(full_costs[step], .95)))
    print("sum of p50s: %d µs" % sum(q(v, .5) for v in full_costs.values()))
    print("std.noop p50: all steps %.2f ms, optional steps off %.2f ms (mean %.2f / %.2f)" % (
        q(full, .5) * 1e3, q(minimal, .5) * 1e3, statistics.mean(full) * 1e3,
        statistics.mean(minimal) * 1e3))


if __name__ == "__main__":
    main()
