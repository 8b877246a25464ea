"""p50/p95/p99 of a sandboxed ``std.noop`` next to ``python3 -c pass``, in one run.

Usage: python benchmarks/noop_latency.py [N]   (default N = 200)
"""

import statistics
import subprocess
import sys
import time

from mistral_sandbox import Sandbox


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(fn, n, label):
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
        if (i + 1) % max(1, n // 10) == 0:
            sys.stderr.write("\r%s: %d/%d" % (label, i + 1, n))
    sys.stderr.write("\n")
    return out


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with Sandbox() as sb:  # defaults: 4 workers, warm pool of 4
        for _ in range(20):
            sb.run("std.noop")

        def sandboxed():
            out = sb.run("std.noop")
            assert out.ok, out.message

        sandbox = measure(sandboxed, n, "sandbox std.noop")
    fresh = measure(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), n,
                    "python -c pass")
    rows = [("sandbox std.noop", sandbox), ("python -c pass", fresh)]
    print("%-20s %9s %9s %9s %9s" % ("", "p50 ms", "p95 ms", "p99 ms", "mean ms"))
    for name, s in rows:
        print("%-20s %9.2f %9.2f %9.2f %9.2f" % (name, pct(s, .5) * 1e3, pct(s, .95) * 1e3,
                                                 pct(s, .99) * 1e3, statistics.mean(s) * 1e3))
    print("ratio python -c pass / sandbox (p50): %.1fx" % (pct(fresh, .5) / pct(sandbox, .5)))


if __name__ == "__main__":
    main()
