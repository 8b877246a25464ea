import concurrent.futures
import os
import threading

import pytest

from mistral_sandbox.api import Result
from mistral_sandbox import Sandbox, SandboxError
from tests.conftest import FIXTURES, gone


def test_50_concurrent_submissions_get_their_own_results(sandbox, clean):
    futures = {}
    lock = threading.Lock()

    def submitter(k):
        for i in range(k, 50, 5):
            f = sandbox.submit("sample_actions:Echo",
                               {"value": {"i": i, "blob": "v%d" % i * (i + 1)},
                                "delay": (i % 7) / 100.0})
            with lock:
                futures[i] = f

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(futures) == 50
    for i, f in futures.items():
        out = f.result(timeout=60)
        assert out.exit_reason == "ok", out.message
        assert out.result == Result({"i": i, "blob": "v%d" % i * (i + 1)})


def test_concurrency_is_bounded_by_max_workers(sandbox, clean):
    futures = [sandbox.submit("sample_actions:Interval", {"seconds": 0.3}) for _ in range(8)]
    intervals = [f.result(timeout=60).result.data for f in futures]
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert 2 <= peak <= 4


def test_shutdown_leaves_nothing_behind(no_leaks):
    """shutdown(wait=True) returns once every queued execution ran and the zygote, its
    children, the scratch root, the fds and the I/O thread are gone (no_leaks checks
    without waiting: right after shutdown returns)."""
    sb = Sandbox(max_workers=2, extra_path=[FIXTURES])
    zpid = sb.zygote_info["pid"]
    scratch = sb.scratch_root
    futures = [sb.submit("std.echo", {"output": i}) for i in range(6)]
    sb.shutdown(wait=True)
    assert [f.result().result.data for f in futures] == list(range(6))
    assert gone(zpid)
    assert not os.path.exists(scratch)
    assert no_leaks.leftovers() == {}
    with pytest.raises(SandboxError, match="shut down"):
        sb.submit("std.noop")


def test_interrupted_caller_kills_running_children(no_leaks):
    sb = Sandbox(max_workers=2, extra_path=[FIXTURES])
    running = sb.submit("sample_actions:SleepsForever")
    queued = [sb.submit("std.noop") for _ in range(5)]
    try:
        with sb:
            while not sb.running_pids():  # the first submission's child is running
                concurrent.futures.wait([running], timeout=0.01)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    out = running.result(timeout=10)
    assert out.exit_reason == "cancelled"
    # every queued future ends: cancelled before it started, or finished/killed
    assert all(f.cancelled() or f.result(timeout=10).exit_reason in ("ok", "cancelled")
               for f in queued)
    assert no_leaks.leftovers() == {}  # (at once: __exit__ waited for everything)


def test_queued_future_can_be_cancelled(sandbox, clean):
    blockers = [sandbox.submit("std.sleep", {"seconds": 0.3}) for _ in range(4)]
    victim = sandbox.submit("std.echo", {"output": "never"})
    assert victim.cancel()
    assert all(f.result().ok for f in blockers)
    assert victim.cancelled()


def test_many_sandboxes_in_one_process_do_not_share_uids(no_leaks):
    a = Sandbox(max_workers=2)
    b = Sandbox(max_workers=2)
    try:
        if a.zygote_info["root"]:
            assert not set(a.zygote_info["uids"]) & set(b.zygote_info["uids"])
        assert a.run("std.echo", {"output": 1}).result.data == 1
        assert b.run("std.echo", {"output": 2}).result.data == 2
    finally:
        a.shutdown()
        b.shutdown()
