"""Fault injection: the runner heals, never hangs a caller, never loses or mixes results."""

import concurrent.futures
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from mistral_sandbox import Overloaded, Sandbox, SandboxError
from tests.conftest import FIXTURES, wait_for

ROOT = os.geteuid() == 0


def busy_children(sb):
    """The processes of running executions (as the sandbox knows them)."""
    out = []
    for pid in sb.running_pids().values():
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def test_sigkill_zygote_during_20_concurrent_executions(no_leaks):
    with Sandbox(max_workers=4, extra_path=[FIXTURES]) as sb:
        old = sb.zygote_info["pid"]
        futures = [sb.submit("sample_actions:Echo", {"value": i, "delay": 0.5})
                   for i in range(20)]
        deadline = time.monotonic() + 10
        while len(busy_children(sb)) < 4 and time.monotonic() < deadline:
            concurrent.futures.wait(futures, timeout=0.01)
        os.kill(old, signal.SIGKILL)
        outcomes = [f.result(timeout=60) for f in futures]
        reasons = [o.exit_reason for o in outcomes]
        # every execution ends exactly once: in flight -> sandbox_error, later ones run
        assert set(reasons) <= {"ok", "sandbox_error"}
        assert reasons.count("sandbox_error") >= 1
        for i, o in enumerate(outcomes):
            if o.exit_reason == "ok":
                assert o.result.data == i
            else:
                assert "the zygote died" in o.message
        assert sb.zygote_info["pid"] != old and sb.restarts == 1
        assert sb.run("std.echo", {"output": "after"}).result.data == "after"


def test_zygote_that_cannot_start_is_a_clear_error(no_leaks, tmp_path):
    broken = tmp_path / "broken_preload.py"
    broken.write_text("raise ImportError('this preload is broken on purpose')\n")
    with pytest.raises(SandboxError) as err:
        Sandbox(max_workers=1, extra_path=[str(tmp_path)], preload=["broken_preload"])
    assert "the zygote failed to start" in str(err.value)
    assert "this preload is broken on purpose" in str(err.value)


def test_full_queue_is_overloaded_not_a_hang(no_leaks):
    with Sandbox(max_workers=1, max_queue=2, extra_path=[FIXTURES]) as sb:
        running = sb.submit("std.sleep", {"seconds": 0.5})
        deadline = time.monotonic() + 10
        while not busy_children(sb) and time.monotonic() < deadline:
            concurrent.futures.wait([running], timeout=0.01)
        queued = [sb.submit("std.noop"), sb.submit("std.noop")]
        with pytest.raises(Overloaded, match="queue is full.*max_queue=2"):
            sb.submit("std.noop")
        assert running.result(timeout=30).ok and all(f.result(timeout=30).ok for f in queued)
        assert sb.run("std.noop").ok  # room again


def test_cancel_queued_and_running(no_leaks):
    with Sandbox(max_workers=1, extra_path=[FIXTURES]) as sb:
        running = sb.submit("sample_actions:SleepsForever")
        queued = sb.submit("std.echo", {"output": "never"})
        deadline = time.monotonic() + 10
        while not busy_children(sb) and time.monotonic() < deadline:
            concurrent.futures.wait([running], timeout=0.01)
        assert sb.cancel(queued) and queued.cancelled()
        assert sb.cancel(running)
        out = running.result(timeout=10)
        assert out.exit_reason == "cancelled" and out.message == "the execution was cancelled"
        assert not sb.cancel(running)  # already finished
        assert sb.run("std.noop").ok


def test_shutdown_cancel_futures_semantics(no_leaks):
    sb = Sandbox(max_workers=1, extra_path=[FIXTURES])
    first = sb.submit("std.sleep", {"seconds": 0.3})
    deadline = time.monotonic() + 10
    while not first.running() and time.monotonic() < deadline:
        time.sleep(0.005)
    rest = [sb.submit("std.noop") for _ in range(5)]
    sb.shutdown(wait=True, cancel_futures=True)
    assert first.result().ok  # running ones complete (concurrent.futures semantics)
    assert all(f.cancelled() for f in rest)  # queued behind the only worker


def test_sigstopped_child_past_its_wall_limit(no_leaks):
    with Sandbox(max_workers=1, extra_path=[FIXTURES]) as sb:
        fut = sb.submit("std.sleep", {"seconds": 30}, limits={"timeout": "1s"})
        deadline = time.monotonic() + 10
        while not busy_children(sb) and time.monotonic() < deadline:
            concurrent.futures.wait([fut], timeout=0.01)
        for child in busy_children(sb):
            child.send_signal(signal.SIGSTOP)
        out = fut.result(timeout=30)
        assert out.exit_reason == "timeout" and out.signal == 9  # SIGKILL ends a stopped one
        assert out.message == "the action exceeded its wall-time limit of 1s"
        assert sb.run("std.noop").ok


@pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root")
def test_scratch_file_system_full_gives_a_clear_error(no_leaks):
    mnt = tempfile.mkdtemp(prefix="ms-tiny-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,nr_inodes=64,mode=0711",
                    "tmpfs", mnt], check=True)
    try:
        # wait_exit: each run returns once its scratch directory is removed; scratch
        # directories on the scratch root's file system (not a tmpfs each)
        with Sandbox(max_workers=1, warm=0, scratch_root=mnt, extra_path=[FIXTURES],
                     wait_exit=True, scratch_size=None) as sb:
            # an action filling the disk gets ENOSPC (not a crash, not a hang)
            out = sb.run("hostile_actions:FillsDisk", limits={"file_size": "64MiB"})
            assert out.exit_reason == "ok" and out.result.data["error"] == "ENOSPC"
            # the file system out of inodes: the scratch step fails, named
            i = 0
            while True:
                try:
                    open(os.path.join(mnt, "filler%d" % i), "w").close()
                except OSError:
                    break
                i += 1
            out = sb.run("std.noop")
            assert out.exit_reason == "sandbox_error"
            assert out.message.startswith("isolation step scratch failed:")
            assert "No space left on device" in out.message
            for j in range(i):
                os.unlink(os.path.join(mnt, "filler%d" % j))
            assert sb.run("std.noop").ok
    finally:
        subprocess.run(["umount", mnt], check=True)
        os.rmdir(mnt)


def test_supervisor_out_of_fds_degrades_with_errors(no_leaks):
    with Sandbox(max_workers=1, warm=0) as sb:
        assert sb.run("std.noop").ok
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 1, hard))
        try:
            out = sb.run("std.noop")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert out.exit_reason == "sandbox_error"
        assert "cannot create the child's channel" in out.message
        assert "Too many open files" in out.message
        assert sb.run("std.echo", {"output": 1}).result.data == 1


def test_caller_killed_leaves_nothing_behind(no_leaks):
    """SIGKILL the process that owns a Sandbox mid-execution: its zygote notices (EOF),
    kills the children and removes every directory; nothing of it survives."""
    code = ("import sys, time\n"
            "from mistral_sandbox import Sandbox\n"
            "sb = Sandbox(max_workers=2)\n"
            "futures = [sb.submit('std.sleep', {'seconds': 60}) for _ in range(2)]\n"
            "print(sb.zygote_info['pid'], sb.scratch_root, flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    zpid, root = proc.stdout.readline().split()
    proc.stdout.close()
    zygote = psutil.Process(int(zpid))
    deadline = time.monotonic() + 10
    while len(zygote.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    tree = [zygote] + zygote.children(recursive=True)
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == []
    assert not os.path.exists(root), sorted(os.walk(root))


def test_a_cancelled_queued_execution_frees_its_place_at_once(no_leaks):
    with Sandbox(max_workers=1, max_queue=2, extra_path=[FIXTURES]) as sb:
        running = sb.submit("sample_actions:SleepsForever")
        deadline = time.monotonic() + 10
        while not busy_children(sb) and time.monotonic() < deadline:
            concurrent.futures.wait([running], timeout=0.01)
        queued = [sb.submit("std.noop"), sb.submit("std.noop")]
        assert all(sb.cancel(f) for f in queued) and all(f.cancelled() for f in queued)
        assert sb.status()["queued"] == 0
        again = [sb.submit("std.echo", {"output": i}) for i in range(2)]  # not Overloaded
        with pytest.raises(Overloaded):
            sb.submit("std.noop")  # (the queue is full again)
        assert sb.cancel(running)
        assert [f.result(timeout=30).result.data for f in again] == [0, 1]


def _flaky_preload(tmp_path):
    """A preload module that breaks every zygote started once the flag file exists."""
    flag = tmp_path / "broken"
    (tmp_path / "flaky_preload.py").write_text(
        "import os\nif os.path.exists(%r):\n    raise ImportError('broken on purpose')\n"
        % str(flag))
    return flag


def test_restart_backoff_does_not_block_the_loop(no_leaks, tmp_path, monkeypatch):
    """While a restart waits out its backoff the sandbox keeps serving its callers: a
    queued execution can be cancelled, and shutdown returns at once instead of after
    the remaining attempts."""
    from mistral_sandbox.runner.zygote_client import ZygoteClient
    monkeypatch.setattr(ZygoteClient, "backoff", (0.0, 600.0, 600.0))
    flag = _flaky_preload(tmp_path)
    sb = Sandbox(max_workers=1, warm=0, extra_path=[str(tmp_path)], preload=["flaky_preload"])
    try:
        flag.write_text("")
        os.kill(sb.zygote_info["pid"], signal.SIGKILL)
        # the first attempt (at once) fails; the second waits 600 s
        assert wait_for(lambda: sb.status()["restart_attempts"] == 1, timeout=30)
        assert sb.status()["zygote"] == "restarting" and sb.status()["generations"] == 2
        queued = sb.submit("std.noop")
        assert sb.status()["queued"] == 1
        assert sb.cancel(queued) and queued.cancelled()
    finally:
        sb.shutdown(wait=True)
    assert sb.status()["zygote"] == "stopped" and sb.status()["generations"] == 2
    assert sb.status()["restart_attempts"] == 1  # (the second never came)


def test_a_zygote_that_cannot_restart_breaks_the_sandbox(no_leaks, tmp_path, monkeypatch):
    from mistral_sandbox.runner.zygote_client import ZygoteClient
    monkeypatch.setattr(ZygoteClient, "backoff", (0.0, 0.0))
    flag = _flaky_preload(tmp_path)
    with Sandbox(max_workers=1, warm=0, extra_path=[str(tmp_path)],
                 preload=["flaky_preload"]) as sb:
        flag.write_text("")
        os.kill(sb.zygote_info["pid"], signal.SIGKILL)
        assert wait_for(lambda: sb.status()["zygote"] == "broken", timeout=30)
        assert sb.status()["generations"] == 3  # the first, and two failed restarts
        with pytest.raises(SandboxError, match="(?s)the sandbox is broken: the zygote could not "
                                               "be restarted.*broken on purpose"):
            sb.submit("std.noop")


def test_a_zygote_that_terminated_itself_is_restarted(no_leaks):
    """SIGTERM makes the zygote clean up and exit: it removes its own generation only
    (not the sandbox's scratch root), and the next zygote starts in a new one."""
    with Sandbox(max_workers=1, warm=0) as sb:
        old, old_dir = sb.zygote_info["pid"], sb.scratch_dir
        os.kill(old, signal.SIGTERM)
        assert wait_for(lambda: sb.status()["zygote"] == "up" and sb.restarts == 1,
                        timeout=60), sb.status()
        assert sb.scratch_dir != old_dir and os.path.isdir(sb.scratch_root)
        assert sb.run("std.echo", {"output": "again"}).result.data == "again"


def test_an_operators_scratch_root_is_kept_and_can_be_shared(no_leaks, shared_tmp_path):
    root = os.path.join(shared_tmp_path, "root")
    os.mkdir(root, 0o711)
    with Sandbox(max_workers=1, warm=0, scratch_root=root) as a, \
            Sandbox(max_workers=1, warm=0, scratch_root=root) as b:
        assert a.scratch_dir != b.scratch_dir
        assert a.run("std.noop").ok and b.run("std.noop").ok
    assert os.path.isdir(root) and os.listdir(root) == []
    with Sandbox(max_workers=1, warm=0, scratch_root=root) as c:  # (the root is still usable)
        assert c.run("std.noop").ok


def test_a_reply_in_hand_stands_when_the_zygote_dies(no_leaks):
    """The action ran and replied; its exit was not yet reported when the zygote died:
    the outcome is its result, not sandbox_error (it must not be run again)."""
    with Sandbox(max_workers=1, warm=0, wait_exit=True) as sb:
        zygote = sb.zygote_info["pid"]
        fut = sb.submit("std.sleep", {"seconds": 1})
        try:
            assert wait_for(lambda: sb.started_pids())
            os.kill(zygote, signal.SIGSTOP)  # (no exit report can come now)
            assert wait_for(lambda: all(ex.reply for ex in sb._engine.running.values()))
        finally:
            os.kill(zygote, signal.SIGKILL)
        out = fut.result(timeout=60)
        assert out.exit_reason == "ok" and out.result.data is None, out.message
        assert out.usage.source == "child"  # (no exit report: the child's own account)
        assert wait_for(lambda: sb.status()["zygote"] == "up", timeout=60)
