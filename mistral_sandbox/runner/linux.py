"""Thin wrappers over the Linux system calls the sandbox needs and Python lacks.

prctl, unshare, setns, mount, mount_setattr, sethostname, capset (through ctypes),
a lean ``fork`` for the single-threaded zygote, and the creation of the namespaces
the zygote shares with its children. Every failure raises ``OSError`` naming the
call. Nothing here knows about steps or policies (see :mod:`.isolation`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional, Tuple

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NS_NAMES = {CLONE_NEWNET: "net", CLONE_NEWIPC: "ipc", CLONE_NEWUTS: "uts"}

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
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
# the same numbers on every architecture (the new, common syscall table)
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442

HOSTNAME = b"sandbox"

_libc = ctypes.CDLL(None, use_errno=True)
# Resolved now, in the zygote: a CDLL attribute is created on first access, which a
# fresh child would otherwise pay for in allocations and copy-on-write faults.
for _name in ("prctl", "capset", "unshare", "mount", "umount2", "syscall", "setns",
              "sethostname"):
    getattr(_libc, _name)
# The same libc, called with the GIL held (for fork: see fork_light).
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_libc_gil.fork.restype = ctypes.c_int
_libc_gil.fork.argtypes = ()
for _name in ("unshare", "setns"):
    getattr(_libc_gil, _name).restype = ctypes.c_int
del _name


def check(rc: int, what: str) -> None:
    """Raise OSError(errno, "what: strerror") if a libc call returned non-zero."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def prctl(option: int, arg2: int = 0) -> None:
    check(_libc.prctl(option, ctypes.c_ulong(arg2), 0, 0, 0), "prctl(%d)" % option)


def set_thread_name(name: bytes) -> None:
    """Name the calling thread (what ``ps``/``top`` show; 15 bytes at most)."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


def unshare(flags: int, what: str) -> None:
    check(_libc.unshare(ctypes.c_int(flags)), "unshare(%s)" % what)


def try_unshare(flags: int) -> bool:
    """``unshare(flags)``; False (errno left alone) instead of raising."""
    return _libc.unshare(ctypes.c_int(flags)) == 0


def setns(fd: int, nstype: int) -> None:
    check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def sethostname(name: bytes) -> None:
    check(_libc.sethostname(name, ctypes.c_size_t(len(name))), "sethostname")


def mount(source: Optional[str], target: str, fstype: Optional[str], flags: int,
          data: Optional[bytes] = None) -> None:
    check(_libc.mount(source.encode() if source else None, target.encode(),
                      fstype.encode() if fstype else None, ctypes.c_ulong(flags), data),
          "mount %s" % target)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(path: str, flags: int, attr_set: int, attr_clr: int) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD),
                        path.encode(), ctypes.c_uint(flags), ctypes.byref(attr),
                        ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr %s" % path)


def umount(path: str) -> None:
    """Detach the mount at ``path`` (MNT_DETACH)."""
    check(_libc.umount2(path.encode(), ctypes.c_int(2)), "umount %s" % path)


def open_tree(path: str) -> int:
    """A detached copy of the mount at ``path`` (to attach in another namespace)."""
    fd = _libc.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD), path.encode(),
                       ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, "open_tree %s: %s" % (path, os.strerror(err)))
    return fd


def move_mount(fd: int, target: str) -> None:
    """Attach the detached mount ``fd`` at ``target``."""
    check(_libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(fd), b"",
                        ctypes.c_int(AT_FDCWD), target.encode(),
                        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), "move_mount %s" % target)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """Clear the effective, permitted and inheritable capability sets (ambient follows)."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    check(_libc.capset(ctypes.byref(header), data), "capset")


def own_session() -> None:
    """Make the calling process lead a new session without a controlling terminal,
    unless it does already (the zygote: its children share that session)."""
    if os.getsid(0) != os.getpid():
        os.setsid()


def _reseed_random() -> None:
    random = sys.modules.get("random")
    if random is not None:  # or every child would draw the same numbers
        random.seed()


def fork_light() -> int:
    """``fork(2)`` without CPython's after-fork machinery; for single-threaded callers.

    ``os.fork()`` runs CPython's after-fork hooks in the child (runtime locks,
    ``threading``'s and ``logging``'s handlers), touching objects all over the
    inherited heap, and every page touched is a copy-on-write fault. With a single
    thread holding the GIL through the call (``PyDLL``) none of it is needed; what
    matters of it is redone (``random`` is reseeded). The parent's Python signal
    handlers stay installed in the child until it replaces them, so they must be
    harmless there. Returns the child's pid, 0 in the child; raises OSError.
    """
    pid = _libc_gil.fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, "fork: %s" % os.strerror(err))
    if pid == 0:
        _reseed_random()
    return pid


class PidNamespaceForker:
    """:func:`fork_light` with the child as pid 1 of a new pid namespace:
    ``unshare(CLONE_NEWPID)``, fork, then ``setns`` back to ours (``pidns_fd``) so the
    next fork can do it again.

    Lean on purpose (the zygote forks for every execution, and after each fork every
    page it writes is a copy-on-write fault): ctypes arguments are converted once and
    messages formatted only on failure. ``native`` is the C helper's
    ``fork_in_new_pidns`` when built: the same calls without ctypes.
    """

    __slots__ = ("_flag", "_fd", "_fd_number", "_unshare", "_setns", "_fork", "_native")

    def __init__(self, pidns_fd: int, native=None):
        self._flag = ctypes.c_int(CLONE_NEWPID)
        self._fd = ctypes.c_int(pidns_fd)
        self._fd_number = pidns_fd
        self._unshare = _libc_gil.unshare
        self._setns = _libc_gil.setns
        self._fork = _libc_gil.fork
        self._native = native

    def fork(self) -> Tuple[int, str]:
        """``(pid, "")`` — 0 in the child, pid 1 of its namespace — or ``(pid, why)`` of
        a plain fork if the namespace could not be made. Raises OSError if fork fails
        (the caller is back in its own namespace then)."""
        if self._native is not None:
            pid = self._native(self._fd_number)
            if pid < 0:
                return fork_light(), "unshare(pid): %s" % os.strerror(-pid)
            if pid == 0:
                _reseed_random()
            return pid, ""
        if self._unshare(self._flag) != 0:
            return fork_light(), "unshare(pid): %s" % os.strerror(ctypes.get_errno())
        pid = self._fork()
        if pid == 0:  # the child stays in the new namespace (its children too)
            _reseed_random()
            return 0, ""
        err = ctypes.get_errno() if pid < 0 else 0
        if self._setns(self._fd, self._flag) != 0:  # (cannot fail for our own namespace)
            raise OSError(ctypes.get_errno(), "setns(pid) back to our own namespace failed")
        if pid < 0:
            raise OSError(err, "fork: %s" % os.strerror(err))
        return pid, ""


def make_shared_namespace(flag: int) -> int:
    """Create an empty namespace of type ``flag`` (net, ipc or uts, whose hostname is
    set to :data:`HOSTNAME`) and return an fd to it; the caller stays in its own.

    The zygote makes them ahead (creating and destroying one per child costs the kernel
    CPU, a network namespace most): one ipc and one uts namespace for all its children,
    a network namespace per sandbox uid. Sharing is safe only with the seccomp filter:
    it refuses every System V IPC and message queue call (and, without network, every
    socket but unix stream pairs); changing the hostname needs a capability no action
    holds.
    """
    name = NS_NAMES[flag]
    own = os.open("/proc/self/ns/" + name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(flag, name)
        try:
            if flag == CLONE_NEWUTS:
                sethostname(HOSTNAME)
            return os.open("/proc/self/ns/" + name, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            setns(own, flag)
    finally:
        os.close(own)
