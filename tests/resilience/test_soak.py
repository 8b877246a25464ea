"""Soak: N executions from 8 concurrent submitters, echo payloads of 1 B - 1 MB mixed with
attacks. Every future completes, every echo gets exactly its own input back, nothing
leaks, and supervisor + zygote memory stays flat. CI runs N = 1,000; ``tox -e soak``
runs N = 20,000 (``SOAK_N``)."""

import ctypes
import gc
import os
import random
import threading
import time

import psutil

from mistral_sandbox import Sandbox
from tests.conftest import FIXTURES

N = int(os.environ.get("SOAK_N", "1000"))
SUBMITTERS = 8

ATTACKS = [  # (ref, params, limits, the exit_reasons it may end in)
    ("sample_actions:ForkBomb", {"n": 200}, {"procs": 8}, {"ok"}),
    ("sample_actions:KillsSelf", {}, None, {"killed", "ok"}),  # ok: as its ns's init
    ("sample_actions:WritesGarbage", {}, None, {"protocol_error"}),
    ("sample_actions:PrintsHuge", {"mb": 3}, None, {"output_limit"}),
    ("sample_actions:SleepsForever", {}, {"timeout": "200ms"}, {"timeout"}),
    ("sample_actions:MemoryBomb", {"gb": 4}, None, {"memory_limit"}),
    ("sample_actions:Raises", {}, None, {"action_error"}),
    ("sample_actions:ClosesPipe", {}, None, {"protocol_error"}),
    ("sample_actions:DoubleFork", {}, None, {"ok"}),
    ("hostile_actions:KillsEveryone", {}, None, {"ok", "action_error"}),
]


def payload(rng):
    size = int(10 ** rng.uniform(0, 6))  # 1 B .. 1 MB, log-uniform
    return rng.choice([lambda: "s" * size, lambda: os.urandom(size),
                       lambda: {"k": ["x" * (size // 2), size]}])()


def footprint(sb):
    """RSS of supervisor (this process) + zygote, after handing freed heap back to the OS
    (glibc keeps freed 1 MB payload buffers otherwise: a high-water mark, not a leak)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except AttributeError:  # not glibc
        pass
    return psutil.Process().memory_info().rss + \
        psutil.Process(sb.zygote_info["pid"]).memory_info().rss


def test_soak(no_leaks):
    failures = []
    counts = {"echo": 0, "attack": 0}
    lock = threading.Lock()
    done = [0]
    latencies = []
    with Sandbox(max_workers=SUBMITTERS, extra_path=[FIXTURES]) as sb:
        samples = {"start": footprint(sb)}

        def submitter(seed):
            rng = random.Random(seed)
            while True:
                with lock:
                    if done[0] >= N:
                        return
                    done[0] += 1
                    i = done[0]
                    if i == N // 2:  # warm-up: the allocator reaches its high-water mark
                        samples["warm"] = footprint(sb)
                if rng.random() < 0.1:
                    ref, params, limits, expected = rng.choice(ATTACKS)
                    out = sb.submit(ref, params, limits=limits).result(timeout=120)
                    kind = "attack"
                    if out.exit_reason not in expected:
                        failures.append((ref, out.exit_reason, out.message))
                else:
                    value = payload(rng)
                    t = time.perf_counter()
                    out = sb.submit("std.echo", {"output": value}).result(timeout=120)
                    with lock:
                        latencies.append(time.perf_counter() - t)
                    kind = "echo"
                    if not out.ok or out.result.data != value:
                        failures.append(("std.echo", out.exit_reason, out.message))
                with lock:
                    counts[kind] += 1

        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(SUBMITTERS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        gc.collect()
        end = footprint(sb)
        latencies.sort()
        print("\nsoak: %d executions (%d echo, %d attacks) in %.1fs = %.0f/s; echo latency "
              "p50 %.1f ms p99 %.1f ms; supervisor+zygote RSS %.1f at start, %.1f after "
              "warm-up, %.1f MiB at the end" % (
                  N, counts["echo"], counts["attack"], wall, N / wall,
                  latencies[len(latencies) // 2] * 1e3, latencies[len(latencies) * 99 // 100] * 1e3,
                  samples["start"] / 2 ** 20, samples["warm"] / 2 ** 20, end / 2 ** 20))
        assert failures == []
        assert counts["echo"] + counts["attack"] == N
        assert end <= samples["warm"] * 1.10, "memory grew more than 10% after warm-up"
    # no process, scratch root, fd or thread once the sandbox is shut down
    assert no_leaks.leftovers() == {}
