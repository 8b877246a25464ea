"""Shared fixtures: a real Sandbox, and leak checks that judge only what the suite started.

Another sandbox may run on the same host while the suite runs (a production executor,
a parallel CI job): it uses the same default uid range and makes its scratch roots in
the same system temp dir. So no check here looks at the whole machine. Two arrangements,
made once per session by :func:`suite_boundary`, turn "what the suite started" into
something the checks can list:

* **Processes.** pytest is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): every
  process the suite starts — a test's subprocess, a CLI run, a Sandbox's zygote, its
  children, and whatever any of them orphans — stays a descendant of this process (an
  orphan is reparented to its nearest subreaper ancestor: the zygote, which is one, or
  pytest). A process leak is a live (non-zombie) descendant of pytest that is not part
  of a shared sandbox still in use (its zygote, its idle warm children and theirs); and,
  for such a sandbox, any process running as one of the uids *it* claimed (they are
  flock-held by it: nobody else can run as them) other than its idle pool. Zombies that
  were reparented to pytest are reaped (:func:`reap_orphans`) so they do not pile up.
* **Temp dirs.** Every scratch root the suite makes (``Sandbox()`` uses
  ``tempfile.mkdtemp``), in this process and in the subprocesses it starts (``TMPDIR``),
  lands in a private session directory: "temp dirs left" is what is left in it.

File descriptors are this process's own already; the checks leave out the fds the
shared sandboxes hold for their idle warm children (their pools refill at any time).
"""

import contextlib
import gc
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import psutil
import pytest

from mistral_sandbox import Sandbox
from mistral_sandbox.runner import linux

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# the host's temp dir and environment, before the session's own replace them (for what
# must look like a process of the host, not of the suite: see test_leak_checks)
SYSTEM_TMP = tempfile.gettempdir()
HOST_ENV = dict(os.environ)
SESSION = {"tmp": None}  # the session temp dir, set by suite_boundary
SETTLE = 5.0  # seconds a check waits for the sandboxes' own bookkeeping to catch up


# ---------------------------------------------------------------- the session boundary

@pytest.fixture(scope="session", autouse=True)
def suite_boundary(tmp_path_factory):
    """Make pytest a child subreaper and give the session a private temp dir; at the end,
    assert the whole suite left no process, temp dir or thread behind (and remove what
    it left anyway, so that a failing run does not leave it on the host either)."""
    tmp_path_factory.getbasetemp()  # pytest's own tmp_path stays in the system temp dir
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    session_tmp = tempfile.mkdtemp(prefix="mistral-sandbox-tests-")
    # sandbox uids traverse it to reach their scratch directories (0711: list nothing)
    readable_by_sandbox_uids(session_tmp, 0o711)
    SESSION["tmp"] = session_tmp
    old_tempdir, old_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = session_tmp
    os.environ["TMPDIR"] = session_tmp
    try:
        yield session_tmp
        procs = wait_for_value(lambda: {p.pid: describe(p) for p in suite_processes()})
        threads = wait_for_value(other_threads)
        left = sorted(os.listdir(session_tmp))
    finally:
        for pid in list(suite_pids()):  # (only on failure: none are left otherwise)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        tempfile.tempdir = old_tempdir
        if old_env is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = old_env
        shutil.rmtree(session_tmp, ignore_errors=True)
        reap_orphans()
    assert procs == {}, "the suite left processes running"
    assert left == [], "the suite left files in its temp dir %s" % session_tmp
    assert threads == [], "the suite left threads running"


def session_tmp():
    """The session's private temp dir (``tempfile.gettempdir()`` during the session)."""
    return SESSION["tmp"]


@contextlib.contextmanager
def traversable_by_others(*paths):
    """Grant ``o+x`` on the directories leading to ``paths`` that lack it, for the
    duration of the block, then restore their modes: for the one test that runs the
    CLI as another user (not root), which must be able to start the installed Python.
    As root the minimal view makes such grants unnecessary."""
    changed = {}
    try:
        for path in paths:
            parts = os.path.realpath(path).split(os.sep)
            for i in range(2, len(parts) + 1):
                d = os.sep.join(parts[:i])
                mode = os.stat(d).st_mode
                if os.path.isdir(d) and not mode & 0o001 and d not in changed:
                    changed[d] = mode & 0o7777
                    os.chmod(d, changed[d] | 0o001)
        yield
    finally:
        for d, mode in changed.items():
            os.chmod(d, mode)


def readable_by_sandbox_uids(path, mode):
    """Give ``path`` ``mode`` so that an action can reach it: the one place the suite
    changes permissions for sandbox uids.

    As root, actions run as unprivileged sandbox uids. A test that hands an action a
    host path — to show that the sandbox (the minimal view, seccomp), not the path's
    permissions, stops it — or that runs in the host's view (``mount_ns`` off) must make
    that path reachable by "others": this sets ``mode`` on ``path`` and fails the test
    if a directory above it is not traversable (it never widens a directory the test
    did not make; pytest's ``tmp_path`` is under a 0700 directory: use
    :func:`shared_tmp_path` instead).
    """
    os.chmod(path, mode)
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        if not os.stat(parent).st_mode & 0o001:
            raise AssertionError("%s is not traversable by sandbox uids: %s cannot be "
                                 "reached (use the shared_tmp_path fixture)" % (parent, path))
        if parent == "/":
            return
        parent = os.path.dirname(parent)


@pytest.fixture
def shared_tmp_path():
    """A fresh directory in the session temp dir (which sandbox uids can traverse; give
    it and what is in it a mode with :func:`readable_by_sandbox_uids`), removed after
    the test."""
    path = tempfile.mkdtemp(prefix="shared-", dir=session_tmp())
    try:
        yield path
    finally:
        shutil.rmtree(path)


# ---------------------------------------------------------------- processes

def describe(p):
    try:
        return "%s (uid %d, parent %d)" % (p.name(), p.uids().real, p.ppid())
    except psutil.Error:
        return "gone"


_POPEN_PIDS = set()  # pids known to belong to a subprocess.Popen (its owner reaps them)


def reap_orphans():
    """Reap the zombies reparented to pytest (the subreaper): the orphans the suite
    adopted, whose exit status nobody else will collect.

    A zombie child of pytest is either such an orphan or a process some code here
    started and will wait for itself: a ``subprocess.Popen`` (a Sandbox's zygote, a
    test's CLI run). Those are left alone — reaping them would steal the exit status
    their ``wait()`` reports. They are found among the live Popen objects (a gc scan, only
    when a zombie of an unknown pid shows up). Only pytest's own children are reaped,
    and only with WNOHANG, by pid."""
    try:
        zombies = [p.pid for p in psutil.Process().children()
                   if p.status() == psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return
    if not zombies:
        return
    if set(zombies) - _POPEN_PIDS:
        _POPEN_PIDS.update(o.pid for o in gc.get_objects()
                           if isinstance(o, subprocess.Popen) and o.returncode is None)
    for pid in zombies:
        if pid in _POPEN_PIDS:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def suite_processes():
    """Live (non-zombie) descendants of this process: every process the suite started
    that is still running (pytest is a subreaper: nothing of it can leave the tree)."""
    reap_orphans()
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def suite_pids():
    return {p.pid for p in suite_processes()}


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


def claimed_uids(sandbox):
    """The sandbox uids ``sandbox``'s zygote claimed (flock-held: only it runs as them);
    empty when not root (children then run in a user namespace instead)."""
    return frozenset(sandbox.zygote_info.get("uids") or ())


def processes_as(uids):
    """Live processes running as one of ``uids``, anywhere on the host."""
    out = []
    if uids:
        for p in psutil.process_iter(["uids", "status"]):
            try:
                if p.info["uids"] and p.info["uids"].real in uids \
                        and p.info["status"] != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return out


# module-scoped sandboxes alive now: their warm pools refill at any time, also during
# another test (whose leak check must count neither their processes nor their fds)
SHARED_SANDBOXES: list = []


def stray_processes():
    """{pid: description} of what the suite started that still runs, outside the shared
    sandboxes (their zygote, idle warm children and theirs); plus, for each shared
    sandbox, the processes running as a uid it claimed other than its idle pool."""
    shared = set()
    for sb in SHARED_SANDBOXES:
        shared |= pool_pids(sb)
        shared.add(sb.zygote_info["pid"])
    out = {p.pid: describe(p) for p in suite_processes() if p.pid not in shared}
    for sb in SHARED_SANDBOXES:
        pool = pool_pids(sb)
        out.update((p.pid, describe(p)) for p in processes_as(claimed_uids(sb))
                   if p.pid not in pool)
    return out


def sandbox_strays(sandbox):
    """{pid: description} of ``sandbox``'s processes other than its idle pool: the
    zygote's descendants and the processes running as its claimed uids. A warm child
    being forked is not in the pool until the zygote announced it, and an execution's
    process still exits after its outcome: waits (bounded) for both to catch up."""
    def strays():
        pool = pool_pids(sandbox)
        out = {p.pid: describe(p) for p in descendants(sandbox.zygote_info["pid"])
               if p.pid not in pool}
        out.update((p.pid, describe(p)) for p in processes_as(claimed_uids(sandbox))
                   if p.pid not in pool)
        return out
    return wait_for_value(strays)


def other_threads():
    return sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())


# ---------------------------------------------------------------- fds, temp dirs

def open_fds():
    """{fd: what it points to} of this process (the listing's own fd excluded)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink("/proc/self/fd/%s" % fd)
        except OSError:
            pass  # the fd of the listing itself, already closed
    return out


def fds_outside_shared_pools():
    """Open fds, without those the shared sandboxes hold for their idle warm children
    (read before and after the listing, so an announcement in between counts as warm)."""
    while True:
        before = set().union(*(sb.warm_fds() for sb in SHARED_SANDBOXES))
        fds = open_fds()
        after = set().union(*(sb.warm_fds() for sb in SHARED_SANDBOXES))
        if before == after:
            return {fd: what for fd, what in fds.items() if fd not in after}


def session_temp_entries():
    """What is in the session temp dir: the suite's scratch roots and temp files."""
    return sorted(os.listdir(session_tmp()))


# ---------------------------------------------------------------- the checks

def wait_for(condition, timeout=10.0):
    """Poll ``condition()`` (bounded): True once it holds, False if ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def wait_for_value(compute, timeout=SETTLE):
    """``compute()`` until it is empty or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = compute()
        if not value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


class Snapshot:
    """What the suite had started before a test; :meth:`assert_clean` after it fails if
    anything new remains: a process (see :func:`stray_processes`), an entry in the
    session temp dir, an fd, a thread."""

    def __init__(self):
        # An outcome arrives while its process is still exiting: the baseline is taken
        # once the shared sandboxes' executions have all been reaped...
        deadline = time.monotonic() + SETTLE
        while any(sb.running_pids() for sb in SHARED_SANDBOXES) \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        # ...and no warm child's announcement is half-received
        self.fds = fds_outside_shared_pools()
        while time.monotonic() < deadline:
            time.sleep(0.005)
            again = fds_outside_shared_pools()
            if again == self.fds:
                break
            self.fds = again
        self.procs = set(stray_processes())
        self.temp = session_temp_entries()
        self.threads = {t.ident for t in threading.enumerate()}

    def leftovers(self):
        """{kind: what is left} for each kind of leak found now (empty if none)."""
        out = {}
        procs = {pid: what for pid, what in stray_processes().items()
                 if pid not in self.procs}
        if procs:
            out["processes"] = procs
        temp = session_temp_entries()
        if temp != self.temp:
            out["temp dir entries"] = {"before": self.temp, "now": temp}
        fds = fds_outside_shared_pools()
        if fds != self.fds:
            out["fds"] = {"new": {fd: w for fd, w in fds.items() if self.fds.get(fd) != w},
                          "closed": {fd: w for fd, w in self.fds.items() if fds.get(fd) != w}}
        threads = [t.name for t in threading.enumerate()
                   if t.ident not in self.threads and t.is_alive()]
        if threads:
            out["threads"] = threads
        return out

    def assert_clean(self, timeout=SETTLE):
        left = wait_for_value(self.leftovers, timeout)
        assert left == {}, "left behind: %r" % (left,)


class LeakCheck(Snapshot):
    """:class:`Snapshot` for a test on a shared sandbox: also none of its processes but
    its idle pool, and no scratch directory but its idle warm children's (empty) ones."""

    def __init__(self, sandbox):
        self.sandbox = sandbox
        super().__init__()

    def leftovers(self):
        out = super().leftovers()
        strays = {}
        pool = pool_pids(self.sandbox)
        for p in descendants(self.sandbox.zygote_info["pid"]):
            if p.pid not in pool:
                strays[p.pid] = describe(p)
        if strays:
            out["children of the zygote"] = strays
        dirs = sorted(os.listdir(self.sandbox.scratch_dir))
        if [d for d in dirs if not d.startswith("w")] or len(dirs) > len(pool):
            out["scratch directories"] = dirs
        return out


# ---------------------------------------------------------------- fixtures

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
    """For tests with their own Sandbox (or subprocesses): once the test is done, no
    process it started runs, nothing it made is left in the session temp dir, and no fd
    or thread of it remains."""
    check = Snapshot()
    yield check
    check.assert_clean()


def gone(pid):
    """True if ``pid`` has exited (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids, timeout=30.0):
    """Wait (bounded) until every pid in ``pids`` has exited; those still running."""
    return wait_for_value(lambda: [pid for pid in pids if not gone(pid)], timeout)
