"""The suite's own leak checks (tests/conftest.py): they see everything the suite
started — also what it orphaned — and nothing else: not an unrelated sandbox running on
the same host, with the same default uid range and the same system temp dir."""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

import psutil

from mistral_sandbox import Sandbox
from mistral_sandbox.runner import linux
from mistral_sandbox.runner.settings import DEFAULT_UID_COUNT, DEFAULT_UID_START
from tests.conftest import (FIXTURES, HOST_ENV, SYSTEM_TMP, LeakCheck, Snapshot, gone,
                            processes_as, reap_orphans, sandbox_strays, suite_pids,
                            wait_for_value, wait_gone)

DEFAULT_RANGE = range(DEFAULT_UID_START, DEFAULT_UID_START + DEFAULT_UID_COUNT)

# A production executor, as far as the host can tell: a Sandbox with the default uid
# range and temp dir, running short executions back to back, and one that lingers.
NEIGHBOUR = r"""
import json, os, signal, threading
from mistral_sandbox import Sandbox

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
with Sandbox(max_workers=2) as sb:
    lingering = sb.submit("std.sleep", {"seconds": 3600})
    while not sb.started_pids() and not stop.is_set():
        stop.wait(0.01)
    print(json.dumps({"pid": os.getpid(), "zygote": sb.zygote_info["pid"],
                      "uids": sb.zygote_info["uids"], "scratch_root": sb.scratch_root,
                      "lingering": sorted(sb.started_pids().values())}), flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    while not stop.is_set():
        sb.run("std.sleep", {"seconds": 0.01})
        sb.run("std.noop")
    sb.cancel(lingering)
"""


def read_lines(fd, n, timeout):
    """Up to ``n`` lines from ``fd`` within ``timeout`` seconds (fewer at EOF/timeout)."""
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode().splitlines()


def start_neighbour(log_path):
    """Start :data:`NEIGHBOUR` in a process that is not a descendant of pytest; its pid
    and what it printed (None if it said nothing in time).

    pytest is a child subreaper for the whole session: whatever it starts, even
    double-forked, is reparented to pytest when its parent exits, and stays in its
    tree. So the flag is cleared while a ``/bin/sh`` launcher starts the neighbour in the
    background and exits: the orphaned neighbour goes to pytest's nearest subreaper
    ancestor (or init), as a process of the host would be. The flag is set again once
    the launcher is reaped (the orphan was reparented as it exited). Nothing else of the
    suite runs meanwhile (its sandboxes are idle; their zygotes are subreapers of their
    own), so nothing else can be orphaned out of the tree in that window.
    """
    env = dict(HOST_ENV)  # the host's TMPDIR (or none), not the session's
    with open(log_path, "wb") as log:
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 0)
        try:
            launcher = subprocess.Popen(
                ["/bin/sh", "-c", '"$0" -c "$1" </dev/null & echo $!', sys.executable,
                 NEIGHBOUR], stdout=subprocess.PIPE, stderr=log, env=env, cwd="/",
                start_new_session=True)
            launcher.wait(timeout=30)
        finally:
            linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    try:
        lines = read_lines(launcher.stdout.fileno(), 2, timeout=60)
    finally:
        launcher.stdout.close()
    pid = int(lines[0])
    return pid, json.loads(lines[1]) if len(lines) > 1 else None


def stop_neighbour(pid, info):
    """SIGTERM: its Sandbox shuts down and removes everything. Returns what was still
    running after a bounded wait (then killed by pid: its zygote cleans up on EOF)."""
    pids = [pid] + ([info["zygote"]] + info["lingering"] if info else [])
    os.kill(pid, signal.SIGTERM)
    left = wait_gone(pids, timeout=60)
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_gone(pids, timeout=30)
    return left


def test_an_unrelated_sandbox_on_the_host_is_not_the_suites(sandbox, shared_tmp_path):
    log = os.path.join(shared_tmp_path, "neighbour.log")
    pid, info = start_neighbour(log)
    try:
        with open(log) as f:
            assert info is not None, "the neighbour did not start: " + f.read()
        theirs = {pid, info["zygote"], *info["lingering"]}
        # not started by the suite, as far as its checks can tell...
        assert os.getpid() not in [p.pid for p in psutil.Process(pid).parents()]
        assert not theirs & suite_pids()
        # ...but what a machine-wide check counted: processes in the default uid range
        # (the lingering execution, its idle warm children), a scratch root in the
        # system temp dir
        in_range = {p.pid for p in processes_as(DEFAULT_RANGE)}
        assert set(info["lingering"]) <= in_range
        assert all(uid in DEFAULT_RANGE for uid in info["uids"])
        root = info["scratch_root"]
        assert os.path.dirname(root) == SYSTEM_TMP and os.path.isdir(root)
        assert os.path.basename(root).startswith("mistral-sandbox-")

        # the suite's checks, while it runs: an execution on the shared sandbox that
        # leaves a daemon behind (which the sandbox kills)...
        check = LeakCheck(sandbox)
        out = sandbox.run("sample_actions:DoubleFork")
        assert out.exit_reason == "ok", out.message
        check.assert_clean()
        assert sandbox_strays(sandbox) == {}
        # ...and a sandbox of the test's own, from start to shutdown
        own = Snapshot()
        with Sandbox(max_workers=1, extra_path=[FIXTURES]) as sb:
            assert sb.run("std.echo", {"output": "ours"}).result.data == "ours"
        own.assert_clean()
        # the neighbour was running all along
        assert [p for p in theirs if gone(p)] == []
    finally:
        left = stop_neighbour(pid, info)
    assert left == [], "the neighbour did not stop on SIGTERM"
    # and it left nothing: no process as its uids, no scratch root
    assert wait_for_value(lambda: processes_as(frozenset(info["uids"]))) == []
    assert not os.path.exists(info["scratch_root"])


def test_the_checks_see_an_orphan_and_a_temp_dir_the_suite_left(sandbox):
    """A process the suite orphaned (its parent exited) is adopted by pytest, the
    subreaper, so the checks still see it; and reaped once it exits. A directory left
    in the session temp dir is seen too."""
    snap = Snapshot()
    out = subprocess.run(["/bin/sh", "-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True, timeout=30)
    orphan = int(out.stdout)
    left = tempfile.mkdtemp(prefix="mistral-sandbox-")
    try:
        assert psutil.Process(orphan).ppid() == os.getpid()
        found = snap.leftovers()
        assert list(found["processes"]) == [orphan]
        assert found["temp dir entries"]["now"] == sorted(snap.temp + [os.path.basename(left)])
        assert set(found) == {"processes", "temp dir entries"}
    finally:
        os.kill(orphan, signal.SIGKILL)
        os.rmdir(left)
    assert wait_gone([orphan]) == []
    snap.assert_clean()
    assert orphan not in [p.pid for p in psutil.Process().children()]  # reaped


def test_the_reaper_leaves_a_popen_its_exit_status():
    """A zombie that a subprocess.Popen will wait for is not reaped by the checks: its
    owner still gets the exit status."""
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    assert wait_for_value(
        lambda: psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE, 30) is False
    reap_orphans()
    assert proc.wait(timeout=30) == 7
