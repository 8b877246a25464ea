"""Compare two versions of the sandbox the way this VM allows: interleaved.

The host's speed drifts by up to ±25 % within an hour, so two benchmark runs taken
minutes apart cannot tell a 3 % change from noise. This alternates the versions
round by round, each in a fresh interpreter, and reports the median per version of:
machine CPU and page faults per execution (2 submitters, 2 s; /proc/stat and
/proc/vmstat, so every process counts: supervisor, zygote, children, kernel threads),
back-to-back latency (p50, p99, mean) and latency at 250 requests/s (p50).

Usage::

    git worktree add /tmp/before HEAD~1
    python benchmarks/ab_compare.py --rounds 6 /tmp/before .

Each version is a source tree (its ``mistral_sandbox`` is imported from there, and its
zygote runs from there). ``--measure SRC`` runs one round of one version and prints
JSON (what the comparison calls).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

KEYS = ("cpu_ms", "faults", "b2b_p50_ms", "b2b_p99_ms", "b2b_mean_ms", "paced_p50_ms")


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # all but idle and iowait


def _page_faults() -> int:
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith("pgfault "):
                return int(line.split()[1])
    raise RuntimeError("no pgfault counter in /proc/vmstat")


def _q(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def measure(n_back_to_back: int = 1000, n_paced: int = 200, seconds: float = 2.0) -> dict:
    """One round against the ``mistral_sandbox`` importable now; a dict of KEYS."""
    try:
        from mistral_sandbox import Sandbox
        Sandbox.__name__  # (a version without the package-level export raises here)
    except (ImportError, AttributeError):  # versions before the package-level export
        from mistral_sandbox.runner.supervisor import Sandbox
    with Sandbox(max_workers=8) as sb:
        for _ in range(100):
            sb.run("std.noop")
        done = [0, 0]
        stop = time.monotonic() + seconds

        def submitter(i):
            while time.monotonic() < stop:
                sb.run("std.noop")
                done[i] += 1
        threads = [threading.Thread(target=submitter, args=(i,)) for i in range(2)]
        c0, f0 = _busy_jiffies(), _page_faults()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        c1, f1 = _busy_jiffies(), _page_faults()
        n = sum(done)
        lat = []
        for _ in range(n_back_to_back):
            t = time.perf_counter()
            sb.run("std.noop")
            lat.append(time.perf_counter() - t)
        paced = []
        period = 1 / 250.0
        next_at = time.perf_counter()
        for _ in range(n_paced):
            next_at += period
            time.sleep(max(0.0, next_at - time.perf_counter()))
            t = time.perf_counter()
            sb.run("std.noop")
            paced.append(time.perf_counter() - t)
    return {"cpu_ms": (c1 - c0) / os.sysconf("SC_CLK_TCK") * 1000 / n,
            "faults": (f1 - f0) / n,
            "b2b_p50_ms": _q(lat, 0.5) * 1e3, "b2b_p99_ms": _q(lat, 0.99) * 1e3,
            "b2b_mean_ms": statistics.fmean(lat) * 1e3,
            "paced_p50_ms": _q(paced, 0.5) * 1e3}


def _round(src: str, n: int) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", src,
                          "--n", str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(r: dict) -> str:
    return ("CPU %.2f ms, faults %.0f, b2b p50 %.3f p99 %.2f mean %.3f ms, @250/s p50 %.3f ms"
            % tuple(r[k] for k in KEYS))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="*", metavar="SRC", help="source trees to compare")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=1000, help="back-to-back runs per round")
    ap.add_argument("--measure", metavar="SRC", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        sys.path.insert(0, os.path.abspath(args.measure))
        import mistral_sandbox
        if not os.path.abspath(mistral_sandbox.__file__).startswith(
                os.path.abspath(args.measure) + os.sep):  # (an installed copy came first)
            sys.exit("%s: imported %s instead" % (args.measure, mistral_sandbox.__file__))
        print(json.dumps(measure(n_back_to_back=args.n)))
        return
    if len(args.sources) < 2:
        ap.error("give at least two source trees")
    for src in args.sources:
        if not os.path.isfile(os.path.join(src, "mistral_sandbox", "__init__.py")):
            ap.error("%s is not a source tree of mistral_sandbox" % src)
    results = {src: [] for src in args.sources}
    for i in range(args.rounds):
        for src in args.sources:
            r = _round(src, args.n)
            results[src].append(r)
            print("round %d/%d  %-24s %s" % (i + 1, args.rounds, src[-24:], _fmt(r)),
                  flush=True)
    print("medians over %d rounds:" % args.rounds)
    for src, rs in results.items():
        medians = {k: statistics.median(r[k] for r in rs) for k in KEYS}
        print("  %-24s %s" % (src[-24:], _fmt(medians)))


if __name__ == "__main__":
    main()
