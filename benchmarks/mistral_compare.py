"""Through real Mistral: `mistral-sandbox serve` against Mistral's own executor, one run.

One Mistral 23 stack (RabbitMQ, API + engine on sqlite), the same one-task `std.echo`
workflow, and the two executors taking turns on the executor topic (round by round,
so the VM's drift hits both alike). Per round and executor: end-to-end latency of
workflows started one after another (POST /executions until the API reports SUCCESS,
polled every 5 ms), and the time 100 workflows started at once take to all succeed.

Usage::

    python benchmarks/mistral_compare.py [--rounds 3] [--sequential 40] [--parallel 100]
                                         [--out benchmarks/results]

Prints a table and the ratios serve / Mistral; writes ``mistral_compare.json``.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.integration.stack import MistralStack, RabbitMQ  # noqa: E402

WORKFLOW = """
version: '2.0'
bench_echo:
  tasks:
    t1:
      action: std.echo output="hello"
"""


def end_to_end(stack, workflow):
    t0 = time.perf_counter()
    ex_id = stack.start(workflow)
    while True:
        state = stack.execution(ex_id)["state"]
        if state != "RUNNING":
            break
        time.sleep(0.005)
    if state != "SUCCESS":
        infos = [t.get("state_info") for t in stack.tasks(ex_id)]
        raise RuntimeError("workflow %s ended %s: %s" % (ex_id, state, infos))
    return time.perf_counter() - t0


def parallel(stack, workflow, n):
    t0 = time.perf_counter()
    ids = [stack.start(workflow) for _ in range(n)]
    states = [stack.wait_execution(ex_id, 300)["state"] for ex_id in ids]
    if states.count("SUCCESS") != n:
        raise RuntimeError("parallel workflows ended %s" % sorted(set(states)))
    return n / (time.perf_counter() - t0)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def measure(stack, kind, args, progress):
    name = "serve" if kind == "serve" else "mistral-executor"
    stack.start_executor(name, ours=(kind == "serve"))
    try:
        for _ in range(10):  # warm-up: connections, caches, the warm pool
            end_to_end(stack, "bench_echo")
        lat = []
        for i in range(args.sequential):
            lat.append(end_to_end(stack, "bench_echo"))
            progress("%s: sequential %d/%d" % (kind, i + 1, args.sequential))
        rate = parallel(stack, "bench_echo", args.parallel)
        progress("%s: %d parallel done" % (kind, args.parallel))
        return {"latencies": lat, "wf_per_s": rate}
    finally:
        stack.stop_process(name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sequential", type=int, default=40)
    p.add_argument("--parallel", type=int, default=100)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)

    def progress(text):
        sys.stderr.write("\r%-60s" % text)
        sys.stderr.flush()

    broker = RabbitMQ()
    broker.ensure()
    # Mistral's default heartbeat interval (the tests use 1 s to see a dead executor soon)
    stack = MistralStack(sandbox_options="max_workers = 8\n", heartbeat=20)
    rounds = {"serve": [], "mistral": []}
    try:
        stack.start_mistral()
        stack.create_workflow(WORKFLOW)
        for r in range(args.rounds):
            order = ("serve", "mistral") if r % 2 == 0 else ("mistral", "serve")
            for kind in order:
                rounds[kind].append(measure(stack, kind, args, progress))
    finally:
        stack.stop()
        broker.stop()
    sys.stderr.write("\n")
    report = {"rounds": args.rounds, "sequential": args.sequential,
              "parallel": args.parallel, "executors": {}}
    for kind, runs in rounds.items():
        lat = [x for run in runs for x in run["latencies"]]
        report["executors"][kind] = {
            "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * pct(lat, 0.99),
            "wf_per_s": statistics.median(run["wf_per_s"] for run in runs),
            "per_round_p50_ms": [1000 * statistics.median(run["latencies"]) for run in runs],
            "per_round_wf_per_s": [run["wf_per_s"] for run in runs]}
    s, m = report["executors"]["serve"], report["executors"]["mistral"]
    report["ratios"] = {"p50": s["p50_ms"] / m["p50_ms"], "p99": s["p99_ms"] / m["p99_ms"],
                        "wf_per_s": s["wf_per_s"] / m["wf_per_s"]}
    header = ("executor (one-task std.echo)", "p50 ms", "p99 ms", "100 par wf/s")
    print("%-28s %10s %10s %12s" % header)
    for kind, label in (("mistral", "Mistral's own executor"), ("serve", "mistral-sandbox serve")):
        e = report["executors"][kind]
        print("%-28s %10.1f %10.1f %12.1f" % (label, e["p50_ms"], e["p99_ms"], e["wf_per_s"]))
    r = report["ratios"]
    print("serve / Mistral: p50 x%.3f, p99 x%.3f, workflows/s x%.3f"
          % (r["p50"], r["p99"], r["wf_per_s"]))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "mistral_compare.json"), "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
