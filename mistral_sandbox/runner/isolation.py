"""Isolation steps applied inside the child, in order, each one recorded.

Each function does one step and raises :class:`IsolationError` naming the step
when it cannot be applied. :class:`Report` records what was applied (with its
detail) and what was skipped (with the reason); it travels to the parent in
the child's reply and ends up in ``Outcome.isolation``.

Steps, in the order the child applies them (:data:`STEPS`): fd table
reduced to the channel and stdio; new session/process group; scrubbed
environment; private scratch directory as cwd/HOME/TMPDIR; rlimits; Linux
namespaces (user when not root, network unless the limits allow network,
mount with a read-only view of the host and only the scratch directory
writable, ipc, uts); ``PR_SET_NO_NEW_PRIVS``; a seccomp filter; unprivileged
uid/gid when root; parent-death signal.

Each step has a policy (:data:`DEFAULT_POLICY`): ``required`` (failure fails
the execution with ``sandbox_error`` naming the step), ``best_effort``
(failure is recorded as skipped, with the reason) or ``off``.
"""

from __future__ import annotations

import _signal
import ctypes
import fcntl
import math
import os
import resource
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # same number on every architecture (new syscall table)

REQUIRED, BEST_EFFORT, OFF = "required", "best_effort", "off"
STEPS = ("fds", "session", "environment", "scratch", "rlimits", "user_ns", "pid_ns", "net_ns",
         "mount_ns", "ipc_ns", "uts_ns", "no_new_privs", "seccomp", "uid", "pdeathsig")
DEFAULT_POLICY = {
    "session": REQUIRED, "fds": REQUIRED, "environment": REQUIRED, "scratch": REQUIRED,
    "rlimits": REQUIRED,
    # namespaces: used wherever the kernel permits; seccomp already refuses inet
    # sockets when network is off, so a host without netns still has no network.
    "user_ns": BEST_EFFORT, "pid_ns": BEST_EFFORT, "net_ns": BEST_EFFORT,
    "mount_ns": BEST_EFFORT,
    "ipc_ns": BEST_EFFORT, "uts_ns": BEST_EFFORT,
    "no_new_privs": REQUIRED, "seccomp": REQUIRED, "uid": REQUIRED, "pdeathsig": REQUIRED,
}

CHANNEL_FD = 3
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

_libc = ctypes.CDLL(None, use_errno=True)
# Resolved now (in the zygote), not on first use in each child: a CDLL attribute is
# created on first access, which a fresh child would pay for in allocations and
# copy-on-write faults for every function it calls.
for _name in ("prctl", "capset", "unshare", "mount", "syscall", "setns", "sethostname"):
    getattr(_libc, _name)
del _name
# The same libc, called with the GIL held (for fork: see fork_light).
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_libc_gil.fork.restype = ctypes.c_int
_libc_gil.fork.argtypes = ()
for _name in ("unshare", "setns"):
    getattr(_libc_gil, _name).restype = ctypes.c_int
del _name


def fork_light() -> int:
    """``fork(2)`` without CPython's after-fork machinery; for single-threaded callers.

    ``os.fork()`` runs CPython's after-fork hooks in the child (re-creating
    runtime locks, ``threading``'s and ``logging``'s handlers...). Each touches
    objects all over the inherited heap, and every page touched is a
    copy-on-write fault: about 200 faults (0.4 ms here) per child of the
    zygote. In a process with a single thread, which holds the GIL through
    the call (``PyDLL``), none of that is needed: no lock can be held by
    another thread, and the thread state stays valid. What the hooks did
    that does matter is redone here: the ``random`` module is reseeded (or
    every child would draw the same numbers). Python signal handlers of the
    parent stay installed until the child replaces them: they must be
    harmless in a child (the zygote's check the pid).
    Returns the child's pid in the parent, 0 in the child; raises OSError.
    """
    pid = _libc_gil.fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, "fork: %s" % os.strerror(err))
    if pid == 0:
        random = sys.modules.get("random")
        if random is not None:
            random.seed()
    return pid


class PidNamespaceForker:
    """``fork_light`` with the child as pid 1 of a new pid namespace: ``unshare
    (CLONE_NEWPID)``, fork, then ``setns`` back to ours (``pidns_fd``) so the next fork
    can do it again.

    Lean on purpose: after each fork every page the caller writes is a copy-on-write
    fault (the new child still shares it), and the zygote forks for every execution.
    The ctypes arguments are converted once, messages are only formatted on failure,
    and libc is called with the GIL held (nothing to release it for).
    """

    __slots__ = ("_flag", "_fd", "_unshare", "_setns", "_fork", "_native", "_fd_number")

    def __init__(self, pidns_fd: int, native=None):
        self._flag = ctypes.c_int(CLONE_NEWPID)
        self._fd = ctypes.c_int(pidns_fd)
        self._fd_number = pidns_fd
        self._unshare = _libc_gil.unshare
        self._setns = _libc_gil.setns
        self._fork = _libc_gil.fork
        # the C helper's fork_in_new_pidns, if built: the same calls without ctypes
        # (measured: fewer copy-on-write faults in the zygote and in each child)
        self._native = native

    def fork(self) -> Tuple[int, str]:
        """(pid, "") — 0 in the child, pid 1 of its namespace — or, if the namespace
        could not be created, ``(pid, why)`` of a plain fork. Raises OSError if fork
        fails (the caller is back in its own namespace then)."""
        if self._native is not None:
            pid = self._native(self._fd_number)
            if pid < 0:
                return fork_light(), "unshare(pid): %s" % os.strerror(-pid)
            if pid == 0:
                random = sys.modules.get("random")  # (as fork_light does)
                if random is not None:
                    random.seed()
            return pid, ""
        if self._unshare(self._flag) != 0:
            return fork_light(), "unshare(pid): %s" % os.strerror(ctypes.get_errno())
        pid = self._fork()
        if pid == 0:  # the child: stays in the new namespace (its children too)
            random = sys.modules.get("random")  # (as fork_light does)
            if random is not None:
                random.seed()
            return 0, ""
        err = ctypes.get_errno() if pid < 0 else 0
        if self._setns(self._fd, self._flag) != 0:  # (cannot fail for our own namespace)
            raise OSError(ctypes.get_errno(), "setns(pid) back to our own namespace failed")
        if pid < 0:
            raise OSError(err, "fork: %s" % os.strerror(err))
        return pid, ""


class IsolationError(Exception):
    """A required isolation step failed; ``step`` names it."""

    def __init__(self, step: str, message: str):
        super().__init__("isolation step %s failed: %s" % (step, message))
        self.step = step
        self.reason = message


class Report:
    """Ordered record of isolation steps: ``{"applied": [...], "skipped": [...]}``."""

    __slots__ = ("applied", "skipped", "cost_us", "warm")

    def __init__(self) -> None:
        self.warm = False  # isolated ahead of time, before the request arrived
        self.applied: List[str] = []
        self.skipped: List[Dict[str, str]] = []
        self.cost_us: Dict[str, int] = {}  # step -> microseconds it took in this child

    def ok(self, step: str) -> None:
        self.applied.append(step)

    def skip(self, step: str, why: str) -> None:
        self.skipped.append({"step": step, "reason": why})

    def to_dict(self) -> Dict[str, Any]:
        return {"applied": list(self.applied), "skipped": list(self.skipped),
                "cost_us": dict(self.cost_us), "prepared_ahead": self.warm}


class PolicyError(ValueError):
    """An isolation policy names an unknown step or level."""


def make_policy(overrides=None) -> Dict[str, str]:
    """DEFAULT_POLICY updated with ``overrides``; PolicyError names bad entries."""
    policy = dict(DEFAULT_POLICY)
    for step, level in (overrides or {}).items():
        if step not in DEFAULT_POLICY:
            raise PolicyError("unknown isolation step %r (steps: %s)" % (step, ", ".join(STEPS)))
        if level not in (REQUIRED, BEST_EFFORT, OFF):
            raise PolicyError("isolation step %s: level must be required, best_effort or off, "
                              "got %r" % (step, level))
        policy[step] = level
    return policy


def apply_step(report: "Report", policy: Dict[str, str], step: str, fn, *args) -> Any:
    """Run one step under its policy; returns fn's value (None when skipped)."""
    level = policy.get(step, REQUIRED)
    if level == OFF:
        report.skip(step, "disabled by policy")
        return None
    started = time.perf_counter()
    try:
        value = fn(*args)
        report.cost_us[step] = int((time.perf_counter() - started) * 1e6)
        return value
    except IsolationError as exc:
        reason = exc.reason
    except (OSError, ValueError) as exc:
        reason = str(exc)
    if level == REQUIRED:
        raise IsolationError(step, reason) from None
    report.skip(step, reason)
    return None


def prctl(option: int, arg2: int = 0) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg2), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


PR_SET_NAME = 15


def set_thread_name(name: bytes) -> None:
    """Name the calling thread (what ``ps``/``top`` show; 15 bytes at most)."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


def new_session(report: Report) -> None:
    """Own process group (so the whole group can be killed), in the zygote's session.

    The zygote leads a session of its own with no controlling terminal (see
    :func:`own_session`); a child stays in it, so it has no controlling terminal
    either (and inherits no terminal fd: the fds step closes them). A session
    per child (``setsid``) would give every child its own scheduling group where
    the kernel groups tasks by session (``CONFIG_SCHED_AUTOGROUP``, on by default
    in common distributions): each preparing or running child then weighs as much
    as the whole supervisor, and a task group is created and destroyed per child.
    Sharing the zygote's group (interleaved runs, 6 and 8 rounds): one request at a
    time (idle pool) p50 0.76 -> 0.53 and 0.81 -> 0.52 ms; back to back p99 5.8 ->
    4.7 and 5.7 -> 5.0 ms, p50 1.32 -> 1.34 and 1.29 -> 1.36 ms (a request now shares
    its group's CPU with the children being prepared). Beside 6 CPU-spinning actions,
    std.noop every 10 ms (3 rounds): p50 1.3–4.0 -> 0.7–1.8 ms, p90 8–13 -> 6 ms — the
    hogs no longer each weigh as much as the supervisor.
    """
    try:
        os.setpgid(0, 0)
    except OSError as exc:
        raise IsolationError("session", str(exc)) from None
    report.ok("session")


def own_session() -> None:
    """Make the calling process (the zygote) lead a new session, without a controlling
    terminal, unless it does already; its children share it (see new_session)."""
    if os.getsid(0) != os.getpid():
        os.setsid()


def parent_death_signal(report: Report, expected_parent: int) -> None:
    """SIGKILL this process if the zygote dies; must follow any uid change."""
    try:
        prctl(PR_SET_PDEATHSIG, SIGKILL)
    except OSError as exc:
        raise IsolationError("pdeathsig", str(exc)) from None
    if os.getppid() != expected_parent:  # zygote already gone
        os._exit(137)
    report.ok("pdeathsig")


def setup_fds(report: Report, stdio, keep=()) -> None:
    """The child's fd table: 0 → /dev/null; 1, 2 → ``stdio``'s out/err pipes; 3 → its
    channel; every other fd closed except ``keep``. ``stdio`` is (channel, out, err)."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        # move what we keep above 3 first, so the dup2s below cannot clobber it
        moved = [fd if fd > CHANNEL_FD else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
                 for fd in (devnull,) + tuple(stdio) + tuple(keep)]
        devnull, channel, out, err = moved[:4]
        keep = moved[4:]
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(channel, CHANNEL_FD, inheritable=False)
        low = CHANNEL_FD + 1
        for fd in sorted(keep) + [_max_fd()]:
            if fd > low:
                os.closerange(low, fd)
            low = fd + 1
    except OSError as exc:
        raise IsolationError("fds", str(exc)) from None
    report.ok("fds")
    return keep


def _max_fd() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY and hard < 1 << 20 else 1 << 20


# Where the scratch directory appears inside a child with its own mount namespace: it is
# mounted over the directory that holds every child's scratch directory (the zygote's
# generation directory, set by the zygote) — one path for all its children, so HOME and
# TMPDIR are set once, in the zygote, and a child sees no other execution's directory.
SCRATCH_VIEW: List[str] = [""]
BASE_ENVIRONMENT = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def scrub_base_environment(scratch_view: str = "") -> None:
    """Replace this process's environment with :data:`BASE_ENVIRONMENT` (the zygote does
    it once, for every child), HOME and TMPDIR being ``scratch_view`` if given."""
    os.environ.clear()
    os.environ.update(BASE_ENVIRONMENT)
    if scratch_view:
        os.environ["HOME"] = os.environ["TMPDIR"] = scratch_view


def scrub_environment(report: Report, scratch: str) -> None:
    """The minimal allow-listed environment; HOME and TMPDIR are the scratch directory
    (as :data:`SCRATCH_VIEW`; :func:`scratch_outside_view` fixes them up if the mount
    namespace that puts it there is not applied)."""
    if len(os.environ) != len(BASE_ENVIRONMENT) + 2:  # the zygote did not scrub it
        scrub_base_environment()
        scratch_outside_view(scratch)
    report.ok("environment")


def scratch_outside_view(scratch: str) -> None:
    """No mount namespace: the scratch directory is only at its real path."""
    os.environ["HOME"] = scratch
    os.environ["TMPDIR"] = scratch
    point_tempfile(scratch)


def make_scratch(report: Report, path: str, uid: Optional[int]) -> str:
    """Create the private scratch directory (0700), own it by ``uid``, chdir into it —
    unless the mount_ns step has already made a tmpfs the scratch directory (then
    nothing is created on the host: returns :data:`SCRATCH_VIEW`, the cwd already)."""
    if SCRATCH_TMPFS[0] is not None and "mount_ns" in report.applied:
        report.ok("scratch")
        return SCRATCH_VIEW[0]
    try:
        os.mkdir(path, 0o700)
        if uid is not None:
            os.chown(path, uid, uid)
        os.chdir(path)
    except OSError as exc:
        raise IsolationError("scratch", "%s: %s" % (path, exc.strerror or exc)) from None
    report.ok("scratch")
    return path


def point_tempfile(path: str) -> None:
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:  # preloaded: make sure it did not cache another directory
        tempfile.tempdir = path


_RLIMITS = (
    ("address_space", "RLIMIT_AS"),
    ("core_file_size", "RLIMIT_CORE"),
    ("data_size", "RLIMIT_DATA"),
    ("file_size", "RLIMIT_FSIZE"),
    ("memory_locked", "RLIMIT_MEMLOCK"),
    ("number_files", "RLIMIT_NOFILE"),
    ("number_processes", "RLIMIT_NPROC"),
    ("resident_set_size", "RLIMIT_RSS"),
    ("stack_size", "RLIMIT_STACK"),
)


def rlimit_plan(limits: Dict[str, Any]) -> List[Any]:
    """``[(resource, field, soft, hard)]`` for ``limits`` (soft = hard, except CPU), never
    above the current hard limits. The zygote computes its ceiling's plan once; its
    children inherit both the plan and the limits it was clamped against."""
    plan = []
    for field, name in _RLIMITS:
        value = limits.get(field)
        if value is not None:
            plan.append((getattr(resource, name), field, int(value), int(value)))
    cpu = limits.get("cpu_time")
    if cpu is not None:
        soft = max(1, math.ceil(cpu))
        plan.append((resource.RLIMIT_CPU, "cpu_time", soft, soft + 1))  # SIGXCPU, then SIGKILL
    out = []
    for res, field, soft, hard in plan:
        cur_hard = resource.getrlimit(res)[1]
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        out.append((res, field, soft, hard))
    return out


def apply_rlimits(report: Report, limits: Dict[str, Any], plan=None) -> None:
    """Kernel rlimits for every limit that has one (``plan``: :func:`rlimit_plan` of
    ``limits``, if already computed)."""
    for res, field, soft, hard in plan if plan is not None else rlimit_plan(limits):
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as exc:
            raise IsolationError("rlimits", "%s=%s: %s" % (field, soft, exc)) from None
    if limits.get("file_size") is not None:
        ignore_sigxfsz()
    if "rlimits" not in report.applied:  # applied ahead, then lowered for the request
        report.ok("rlimits")


def ignore_sigxfsz() -> None:
    """With a file size limit: over-size writes fail with EFBIG instead of killing the
    process."""
    _signal.signal(_SIGXFSZ, _SIG_IGN)


_SIGXFSZ, _SIG_IGN = int(signal.SIGXFSZ), int(signal.SIG_IGN)
SIGKILL = int(signal.SIGKILL)  # a plain int: no enum touched in a child


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """Clear the effective, permitted and inheritable capability sets (ambient follows)."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def drop_privileges(report: Report, uid: Optional[int]) -> None:
    """As root: setgroups([]), setresgid, setresuid to ``uid`` (gid = uid).

    Not root on the host (``uid`` None): the process is root only inside its own user
    namespace (if that step ran); every capability is dropped, so it holds none there
    either.
    """
    if uid is None:
        if IN_USER_NS[0]:
            drop_capabilities()
            report.ok("uid")
            return
        if os.geteuid() == 0:
            raise IsolationError("uid", "running as root but no unprivileged uid was assigned")
        report.skip("uid", "not running as root: actions run as uid %d" % os.geteuid())
        return
    try:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise IsolationError("uid", str(exc)) from None
    if os.getuid() != uid or os.geteuid() != uid:
        raise IsolationError("uid", "still uid %d after setresuid(%d)" % (os.geteuid(), uid))
    report.ok("uid")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def unshare(flags: int, what: str) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare(%s)" % what)


def _mount(source: Optional[str], target: str, fstype: Optional[str], flags: int,
           data: Optional[bytes] = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags), data),
           "mount %s" % target)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _mount_setattr(path: str, flags: int, attr_set: int, attr_clr: int) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD),
                         path.encode(), ctypes.c_uint(flags), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr %s" % path)


IN_USER_NS = [False]  # set once this process is root of its own user namespace
ROOT_SKIPS_USER_NS = "running as root: privileges are dropped to a sandbox uid instead"


def user_namespace(report: Report) -> None:
    """Non-root only: a user namespace where we are root, so the others can be created."""
    if os.geteuid() == 0:
        report.skip("user_ns", ROOT_SKIPS_USER_NS)
        return
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER, "user")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write("0 %d 1" % uid)
    with open("/proc/self/gid_map", "w") as f:
        f.write("0 %d 1" % gid)
    IN_USER_NS[0] = True
    report.ok("user_ns")


# True once this process is pid 1 of its own pid namespace
IN_PID_NS = [False]


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def pid_namespace(report: Report, created: Optional[str]) -> bool:
    """Confirm that this process is pid 1 of the pid namespace the zygote made for it.

    ``created`` is "" when the zygote forked this process as pid 1 of a new pid
    namespace, else the reason it could not (raised as the step's failure).
    The action runs as that namespace's init (as a Python service does in a
    container without an init): it sees only its own processes (with the
    private /proc of the mount_ns step), orphans of anything it starts are
    reparented to it, and when it ends the kernel kills and reaps whatever
    else is left in the namespace before the zygote can reap the action — so
    nothing an execution starts outlives it. What a tenant notices: its
    parent pid is 0, and a signal it sends to itself (or that a process it
    started sends to it) with the default action is ignored, as for any init.
    Signals from the zygote, and faults, still kill it.
    """
    if created is None:
        raise IsolationError("pid_ns", "not created by the zygote")
    if created:
        raise IsolationError("pid_ns", created)
    IN_PID_NS[0] = True
    report.ok("pid_ns")
    return True


# Namespaces the zygote made once for all its children: CLONE_NEW* flag -> an fd to
# it. A child joins (``setns``) instead of creating its own; each step removes (and
# closes) the fd it used, the fds step closes those the child will not join.
SHARED_NS: Dict[int, int] = {}
_NS_NAMES = {CLONE_NEWNET: "net", CLONE_NEWIPC: "ipc", CLONE_NEWUTS: "uts"}
HOSTNAME = b"sandbox"


def make_shared_namespace(flag: int) -> int:
    """Create an empty namespace of type ``flag`` (net, ipc or uts: the hostname is
    set to :data:`HOSTNAME` first) and return an fd to it; we stay in ours.

    Children join it instead of creating one each. Creating and destroying a
    namespace per child costs the kernel CPU: a network namespace ≈ 1 ms (sysctl
    tables, per-namespace state, deferred cleanup), an ipc namespace ≈ 0.07 ms (its
    own mqueue file system), a uts namespace ≈ 0.04 ms (measured here, interleaved).
    What sharing could expose is closed elsewhere (the zygote shares one only when
    the seccomp step is required):

    * network: the only device, ``lo``, is down and nobody in it holds a capability
      to bring it up; the seccomp filter of a child without network refuses
      ``socket()`` for every family but netlink, so no inet, packet or unix socket can
      be created, and the namespace's abstract socket names cannot be bound or
      reached (``socketpair`` still works);
    * ipc: the filter refuses every System V IPC and POSIX message queue call, so no
      object can be made or reached in it (the host's are in another namespace);
    * uts: changing the hostname needs a capability no action holds.
    """
    name = _NS_NAMES[flag]
    own = os.open("/proc/self/ns/" + name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(flag, name)
        try:
            if flag == CLONE_NEWUTS:
                _check(_libc.sethostname(HOSTNAME, ctypes.c_size_t(len(HOSTNAME))),
                       "sethostname")
            return os.open("/proc/self/ns/" + name, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            setns(own, flag)
    finally:
        os.close(own)


def join_shared(flag: int) -> bool:
    """Join the shared namespace of type ``flag`` if there is one (its fd is closed
    then); False if there is none."""
    fd = SHARED_NS.pop(flag, None)
    if fd is None:
        return False
    try:
        setns(fd, flag)
    finally:
        os.close(fd)
    return True


def net_namespace(report: Report, network: bool) -> None:
    """No network: join the shared empty network namespace, or create one."""
    if network:
        report.skip("net_ns", "the limits allow network")
        return
    if not join_shared(CLONE_NEWNET):
        unshare(CLONE_NEWNET, "net")
    report.ok("net_ns")


# namespaces already created by unshare_together() in this process (CLONE_* flags)
UNSHARED: List[int] = []


def unshare_together(policy: Dict[str, str]) -> None:
    """One ``unshare`` for the mount, ipc and uts steps the policy enables (one syscall
    instead of three); if it fails, each step tries alone and reports its own error."""
    flags = 0
    for step, flag in (("mount_ns", CLONE_NEWNS), ("ipc_ns", CLONE_NEWIPC),
                       ("uts_ns", CLONE_NEWUTS)):
        if policy.get(step, REQUIRED) != OFF and flag not in SHARED_NS:
            flags |= flag
    if flags and _libc.unshare(ctypes.c_int(flags)) == 0:
        UNSHARED[:] = [flag for flag in (CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUTS)
                       if flags & flag]


def _unshare_once(flag: int, what: str) -> None:
    if flag not in UNSHARED:
        unshare(flag, what)


# Size in bytes of the private tmpfs the mount_ns step mounts as the scratch directory;
# None: the scratch directory is a directory made under the scratch root (the scratch
# step) and bind-mounted. Set once by the zygote (``Sandbox(scratch_size=...)``).
SCRATCH_TMPFS: List[Optional[int]] = [None]
TMPFS_BYTES_PER_INODE = 4096  # files (and directories) a scratch tmpfs may hold: size / this


def tmpfs_options(size: int, uid: Optional[int]) -> bytes:
    """Mount options of a scratch tmpfs of ``size`` bytes owned by ``uid`` (None: by
    the mounting process, i.e. root of its user namespace). The inode count is capped
    too: empty files cost the kernel memory that ``size`` does not count."""
    opts = "size=%d,nr_inodes=%d,mode=0700" % (size, max(64, size // TMPFS_BYTES_PER_INODE))
    if uid is not None:
        opts += ",uid=%d,gid=%d" % (uid, uid)
    return opts.encode()


def mount_namespace(report: Report, scratch: str, uid: Optional[int] = None) -> None:
    """Private mount namespace: everything read-only except the scratch directory at
    :data:`SCRATCH_VIEW` (the action's cwd, HOME and TMPDIR; the other executions'
    directories are out of its sight).

    The scratch directory is a new tmpfs of :data:`SCRATCH_TMPFS` bytes owned by
    ``uid`` — it vanishes with the namespace, and bounds what an execution can write
    in all (an action filling it gets ENOSPC) — or, without a size, the directory
    ``scratch`` made by the scratch step, bind-mounted.
    """
    view = SCRATCH_VIEW[0] or scratch
    size = SCRATCH_TMPFS[0]
    _unshare_once(CLONE_NEWNS, "mnt")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if size is None:
        _mount(scratch, view, None, MS_BIND | MS_NOSUID | MS_NODEV)
    if IN_PID_NS[0]:  # a /proc that shows only this namespace's processes
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    try:
        _mount_setattr("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY, 0)
    except OSError as exc:
        if exc.errno != 38:  # ENOSYS: kernel older than 5.12
            raise
        _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        report.skip("mount_ns:recursive_ro", "mount_setattr unavailable: only / is read-only")
    if size is None:
        _mount_setattr(view, 0, 0, MOUNT_ATTR_RDONLY)
    else:  # (mounted after the read-only pass: stays writable)
        _mount("tmpfs", view, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_options(size, uid))
    os.chdir(view)
    point_tempfile(view)
    report.ok("mount_ns")


def ipc_namespace(report: Report) -> None:
    """Join the shared ipc namespace, or create one."""
    if not join_shared(CLONE_NEWIPC):
        _unshare_once(CLONE_NEWIPC, "ipc")
    report.ok("ipc_ns")


def uts_namespace(report: Report) -> None:
    """Join the shared uts namespace (hostname :data:`HOSTNAME`), or create one and
    set the hostname."""
    if not join_shared(CLONE_NEWUTS):
        _unshare_once(CLONE_NEWUTS, "uts")
        _check(_libc.sethostname(HOSTNAME, ctypes.c_size_t(len(HOSTNAME))), "sethostname")
    report.ok("uts_ns")


def no_new_privs(report: Report) -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    report.ok("no_new_privs")


def load_seccomp(report: Report, program) -> None:
    if program is None:
        why = SECCOMP_UNAVAILABLE[0] or "not built"
        raise IsolationError("seccomp", "no filter: %s" % why)
    program.load()
    report.ok("seccomp")


# set by the zygote when the filter could not be built (reason text)
SECCOMP_UNAVAILABLE: List[str] = [""]
