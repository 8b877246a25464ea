"""Isolation steps applied inside the child, in order, each one recorded.

Each function does one step and raises :class:`IsolationError` naming the step
when it cannot be applied. :class:`Report` records what was applied (with its
detail) and what was skipped (with the reason); it travels to the parent in
the child's reply and ends up in ``Outcome.isolation``.

Steps (this module): new session/process group, parent-death signal, fd
table reduced to the channel and stdio, scrubbed environment, private scratch
directory as cwd/HOME/TMPDIR, rlimits, unprivileged uid/gid when root.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import signal
from typing import Any, Dict, List, Optional

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

CHANNEL_FD = 3
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

_libc = ctypes.CDLL(None, use_errno=True)


class IsolationError(Exception):
    """A required isolation step failed; ``step`` names it."""

    def __init__(self, step: str, message: str):
        super().__init__("isolation step %s failed: %s" % (step, message))
        self.step = step


class Report:
    """Ordered record of isolation steps: ``{"applied": [...], "skipped": [...]}``."""

    __slots__ = ("applied", "skipped")

    def __init__(self) -> None:
        self.applied: List[str] = []
        self.skipped: List[Dict[str, str]] = []

    def ok(self, step: str) -> None:
        self.applied.append(step)

    def skip(self, step: str, why: str) -> None:
        self.skipped.append({"step": step, "reason": why})

    def to_dict(self) -> Dict[str, Any]:
        return {"applied": list(self.applied), "skipped": list(self.skipped)}


def prctl(option: int, arg2: int = 0) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg2), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def new_session(report: Report) -> None:
    """Own session and process group (so the whole group can be killed)."""
    try:
        os.setsid()
    except OSError as exc:
        raise IsolationError("session", str(exc)) from None
    report.ok("session")


def parent_death_signal(report: Report, expected_parent: int) -> None:
    """SIGKILL this process if the zygote dies; must follow any uid change."""
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError as exc:
        raise IsolationError("pdeathsig", str(exc)) from None
    if os.getppid() != expected_parent:  # zygote already gone
        os._exit(137)
    report.ok("pdeathsig")


def setup_fds(report: Report, channel: int, out: int, err: int) -> int:
    """stdin=/dev/null, stdout/stderr=the capture pipes, channel on fd 3, all else closed."""
    try:
        # zygote's own 0-2 are open, so the received fds are all >= 3
        os.dup2(out, 1)
        os.dup2(err, 2)
        if channel != CHANNEL_FD:
            os.dup2(channel, CHANNEL_FD, inheritable=False)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.closerange(CHANNEL_FD + 1, _max_fd())  # also closes devnull and the originals
    except OSError as exc:
        raise IsolationError("fds", str(exc)) from None
    report.ok("fds")
    return CHANNEL_FD


def _max_fd() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY and hard < 1 << 20 else 1 << 20


def scrub_environment(report: Report, scratch: str) -> None:
    """Replace the environment with a minimal allow-listed one."""
    os.environ.clear()
    os.environ.update({
        "PATH": SAFE_PATH,
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    })
    report.ok("environment")


def make_scratch(report: Report, path: str, uid: Optional[int]) -> str:
    """Create the private scratch directory (0700), own it by ``uid``, chdir into it."""
    try:
        os.mkdir(path, 0o700)
        if uid is not None:
            os.chown(path, uid, uid)
        os.chdir(path)
    except OSError as exc:
        raise IsolationError("scratch", "%s: %s" % (path, exc.strerror or exc)) from None
    import tempfile
    tempfile.tempdir = path
    report.ok("scratch")
    return path


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


def apply_rlimits(report: Report, limits: Dict[str, Any]) -> None:
    """Kernel rlimits for every limit that has one (soft = hard, except CPU)."""
    plan = [(getattr(resource, name), field, limits.get(field), limits.get(field))
            for field, name in _RLIMITS if limits.get(field) is not None]
    cpu = limits.get("cpu_time")
    if cpu is not None:
        soft = max(1, math.ceil(cpu))
        plan.append((resource.RLIMIT_CPU, "cpu_time", soft, soft + 1))  # SIGXCPU, then SIGKILL
    for res, field, soft, hard in plan:
        try:
            _lower(res, int(soft), int(hard))
        except (OSError, ValueError) as exc:
            raise IsolationError("rlimits", "%s=%s: %s" % (field, soft, exc)) from None
    if limits.get("file_size") is not None:
        # over-size writes fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    report.ok("rlimits")


def _lower(res: int, soft: int, hard: int) -> None:
    cur_soft, cur_hard = resource.getrlimit(res)
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    resource.setrlimit(res, (soft, hard))


def drop_privileges(report: Report, uid: Optional[int]) -> None:
    """setgroups([]), setresgid, setresuid to ``uid`` (gid = uid); only when root."""
    if uid is None:
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
