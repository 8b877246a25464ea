"""Cost of each isolation step per execution (µs, p50/p95 over N runs of std.noop),
and the end-to-end latency with every optional step on vs off, in one run.

Usage: python benchmarks/isolation_costs.py [N]   (default N = 300)
"""

import statistics
import sys
import time

from mistral_sandbox import Sandbox
from mistral_sandbox.runner.steps import NAMES as STEPS, OFF

OPTIONAL = ("user_ns", "pid_ns", "net_ns", "mount_ns", "ipc_ns", "uts_ns", "no_new_privs",
            "seccomp")


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


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    full_costs, full = run(n, None, "all steps")
    _, minimal = run(n, {s: OFF for s in OPTIONAL}, "optional steps off")
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
