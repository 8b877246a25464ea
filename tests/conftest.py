"""Shared fixtures: a real Sandbox, and leak checks over processes, fds and temp dirs."""

import os
import tempfile
import time

import psutil
import pytest

from mistral_sandbox import Sandbox
from mistral_sandbox.runner.settings import DEFAULT_UID_COUNT, DEFAULT_UID_START

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def open_fds():
    """{fd: what it points to} of this process (the listing's own fd excluded)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink("/proc/self/fd/%s" % fd)
        except OSError:
            pass  # the fd of the listing itself, already closed
    return out


def sandbox_uid_processes():
    """Live processes running as a sandbox uid (zombies count as gone)."""
    out = []
    for p in psutil.process_iter(["uids", "status"]):
        try:
            uids = p.info["uids"]
            if uids and DEFAULT_UID_START <= uids.real < DEFAULT_UID_START + DEFAULT_UID_COUNT \
                    and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def sandbox_temp_dirs():
    tmp = tempfile.gettempdir()
    return sorted(d for d in os.listdir(tmp) if d.startswith("mistral-sandbox-")
                  and d != "mistral-sandbox-uids")


def descendants(pid):
    try:
        return [c for c in psutil.Process(pid).children(recursive=True)
                if c.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def pool_pids(sandbox):
    """Idle warm children and their own processes (pid-namespace init and action)."""
    pids = set()
    for pid in sandbox.warm_pids():
        pids.add(pid)
        pids.update(p.pid for p in descendants(pid))
    return pids


def stray_sandbox_processes(sandbox):
    """Sandbox-uid processes that are not ``sandbox``'s idle warm children.

    A warm child being forked right now is not in the pool until the zygote has
    announced it: waits (bounded) for the announcement to catch up."""
    deadline = time.monotonic() + 5
    while True:
        pool = pool_pids(sandbox)
        stray = [p for p in sandbox_uid_processes() if p not in pool]
        if not stray or time.monotonic() > deadline:
            return stray
        time.sleep(0.01)


class LeakCheck:
    """Snapshot before, assert nothing new after (for one shared Sandbox)."""

    def __init__(self, sandbox):
        self.sandbox = sandbox
        # An outcome arrives while its process is still exiting: the baseline is taken
        # once the previous test's executions have all been reaped.
        deadline = time.monotonic() + 5
        while sandbox.running_pids() and time.monotonic() < deadline:
            time.sleep(0.005)
        self.fds = self.own_fds()
        while time.monotonic() < deadline:  # (and no announcement is half-received)
            time.sleep(0.005)
            again = self.own_fds()
            if again == self.fds:
                break
            self.fds = again

    def own_fds(self):
        """Open fds, without those the sandbox holds for its idle warm children (a
        warm child announced during the listing counts as warm: read before and after)."""
        while True:
            before = self.sandbox.warm_fds()
            fds = open_fds()
            after = self.sandbox.warm_fds()
            if before == after:
                return {fd: what for fd, what in fds.items() if fd not in after}

    def assert_clean(self):
        zpid = self.sandbox.zygote_info["pid"]
        # Idle warm children (and their empty w<n> scratch dirs) are the pool, not
        # leftovers. The zygote announces a refill just after an outcome, so wait
        # (bounded) until its announcement and the process table agree.
        deadline = time.monotonic() + 5
        while True:
            warm = pool_pids(self.sandbox)
            extra = [p.pid for p in descendants(zpid) if p.pid not in warm]
            uid_procs = [pid for pid in sandbox_uid_processes() if pid not in warm]
            dirs = sorted(os.listdir(self.sandbox.scratch_dir))
            stray_dirs = [d for d in dirs if not d.startswith("w")]
            settled = len(dirs) <= len(warm)
            fds_back = self.own_fds() == self.fds
            if not (extra or uid_procs or stray_dirs) and settled and fds_back \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert extra == [], "children of the zygote survived"
        assert uid_procs == [], "processes still run as a sandbox uid"
        assert stray_dirs == [] and settled, "scratch directories left behind: %s" % dirs
        assert self.own_fds() == self.fds, "the parent leaked file descriptors"


# module-scoped sandboxes alive now: their warm pools refill at any time, also during
# another test (whose leak check must not count the fds of such a refill)
SHARED_SANDBOXES: list = []


def fds_outside_shared_pools():
    """Open fds, without those the shared sandboxes hold for their idle warm children
    (read before and after the listing, so an announcement in between counts as warm)."""
    while True:
        before = set().union(*(sb.warm_fds() for sb in SHARED_SANDBOXES))
        fds = open_fds()
        after = set().union(*(sb.warm_fds() for sb in SHARED_SANDBOXES))
        if before == after:
            return {fd: what for fd, what in fds.items() if fd not in after}


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(max_workers=4, extra_path=[FIXTURES])
    SHARED_SANDBOXES.append(sb)
    try:
        yield sb
    finally:
        SHARED_SANDBOXES.remove(sb)
        sb.shutdown()


@pytest.fixture
def clean(sandbox):
    """Use in tests on the shared sandbox: asserts no leak once the test is done."""
    check = LeakCheck(sandbox)
    yield check
    check.assert_clean()


@pytest.fixture
def then_works(sandbox, clean):
    """After the test: nothing leaked, and the next execution on the same sandbox works."""
    yield
    out = sandbox.run("std.echo", {"output": "after"})
    assert out.exit_reason == "ok" and out.result.data == "after", out.message


@pytest.fixture
def no_leaks():
    """For tests with their own Sandbox: no fd, temp dir or sandbox-uid process remains."""
    fds, dirs, procs = fds_outside_shared_pools(), sandbox_temp_dirs(), \
        set(sandbox_uid_processes())
    yield
    deadline = time.monotonic() + 5  # (a shared pool's announcement may be half-received)
    while fds_outside_shared_pools() != fds and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fds_outside_shared_pools() == fds
    assert sandbox_temp_dirs() == dirs
    # (processes that ran before, e.g. a module sandbox's idle warm children, are not ours)
    assert set(sandbox_uid_processes()) <= procs
