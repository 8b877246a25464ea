"""Seccomp filter, built once with the system libseccomp (via ctypes), loaded per child.

The filter allows everything except a deny list (see :data:`DENIED_SYSCALLS`;
System V IPC, POSIX message queues and io_uring among them — io_uring's requests
include socket(), connect() and the rest, which this filter could not see), which
fails with ``EPERM``; ``clone``/``clone3`` that would create namespaces are refused.
Sockets: ``socketpair`` only makes connected unix stream pairs (which can reach
nothing but each other). Without network ``socket()``, ``bind()`` and ``connect()``
are refused outright: no unix socket can reach a host daemon or an abstract name,
no netlink socket can reach another execution. With network only inet, inet6 and
netlink's route protocol sockets can be made (no unix socket: the host's abstract
names live in its network namespace; no vsock: the hypervisor is not the network).
Arguments are compared on their low 32 bits where the kernel reads an ``int``;
system calls of another ABI (i386, x32) kill the thread.

:func:`build` compiles the filter to a classic BPF program (bytes) in the
zygote — once per network setting; :func:`load` installs such a program in
the calling process with one ``prctl`` (needs ``PR_SET_NO_NEW_PRIVS`` first).
No binding on the package index is maintained, hence ctypes; libseccomp
(Debian ``libseccomp2``) computes the architecture-correct syscall numbers
and the BPF for us, which a hand-assembled program would have to duplicate.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Optional

DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
    "chroot", "bpf", "kexec_load", "kexec_file_load", "keyctl", "add_key", "request_key",
    "perf_event_open", "unshare", "setns", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "swapon", "swapoff", "reboot", "userfaultfd",
    "fsopen", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "acct",
    "settimeofday", "clock_settime", "adjtimex", "syslog", "iopl", "ioperm", "quotactl",
    "lookup_dcookie", "vhangup", "personality",
    # System V IPC and POSIX message queues: no object can be made or reached in the ipc
    # namespace children share (multiprocessing's locks and shared memory use /dev/shm)
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl", "ipc", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # io_uring: operations (socket, connect, openat...) seccomp does not see
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # file watches: the view's files are shared by every execution, and a watch on them
    # saw which modules another one opened (and could carry data between them)
    "inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init", "fanotify_mark",
)
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                         0x20000000, 0x40000000, 0x00000080)  # NS CGROUP UTS IPC USER PID NET TIME
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_VSOCK = 1, 2, 10, 16, 40
AF_MAX = 64  # beyond every family this kernel generation knows
SOCK_STREAM, SOCK_TYPE_MASK = 1, 0xF
NETLINK_ROUTE = 0
INT_MASK = 0xFFFFFFFF  # the kernel reads these arguments as int: compare the low bits

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_CTL_OPTIMIZE = 8  # libseccomp >= 2.5
SCMP_OPTIMIZE_BINARY_TREE = 2
SCMP_CMP_NE = 1
SCMP_CMP_GE = 5
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def SCMP_ACT_ERRNO(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


class SeccompUnavailable(Exception):
    """libseccomp cannot be loaded or the filter cannot be built."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _library(path: Optional[str]):
    name = path or "libseccomp.so.2"  # the SONAME: found through the loader's cache
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        found = None
        if path is None:  # unusual layout: ask ctypes.util (it imports subprocess, which
            from ctypes import util  # every forked child would then carry)
            found = util.find_library("seccomp")
        if not found:
            raise SeccompUnavailable("cannot load libseccomp (%s): %s" % (name, exc)) from None
        lib = ctypes.CDLL(found, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    return lib


def _prefer_binary_tree(lib, ctx) -> bool:
    """Ask libseccomp (>= 2.5) to lay the syscall checks out as a binary search tree
    instead of a chain; False if it cannot (the filter is the same either way).

    Loading a filter costs the kernel an emulation of the program for every
    syscall number (the allow cache) under a spin lock, and a chain makes each
    allowed syscall walk every check: the tree loads faster."""
    return lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, SCMP_OPTIMIZE_BINARY_TREE) == 0


def build(network: bool, library: Optional[str] = None, binary_tree: bool = True) -> bytes:
    """Compile the filter; returns the BPF program (8-byte instructions).

    ``binary_tree`` lays the checks out as a search tree when libseccomp can (the
    same verdicts as the default chain, cheaper to load; see _prefer_binary_tree)."""
    lib = _library(library)
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    if binary_tree:
        _prefer_binary_tree(lib, ctx)
    deny = SCMP_ACT_ERRNO(errno.EPERM)

    def rule(action, name, *cmps):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # syscall unknown on this architecture: nothing to deny
        arr = (_ArgCmp * max(1, len(cmps)))(*cmps)
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        if rc < 0:
            raise SeccompUnavailable("seccomp_rule_add(%s) failed: %s" % (name, os.strerror(-rc)))

    try:
        for name in DENIED_SYSCALLS:
            rule(deny, name)
        for flag in CLONE_NAMESPACE_FLAGS:
            rule(deny, "clone", _ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag))
        rule(SCMP_ACT_ERRNO(errno.ENOSYS), "clone3")  # flags unreadable: make libc use clone
        _socket_rules(rule, deny, network)
        r, w = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, w)
            os.close(w)
            w = -1
            if rc < 0:
                raise SeccompUnavailable("seccomp_export_bpf failed: %s" % os.strerror(-rc))
            chunks = []
            while True:
                data = os.read(r, 65536)
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    finally:
        lib.seccomp_release(ctx)
    program = b"".join(chunks)
    if not program or len(program) % 8:
        raise SeccompUnavailable("libseccomp produced an invalid program (%d bytes)"
                                 % len(program))
    return program


def _socket_rules(rule, deny, network: bool) -> None:
    """socketpair: unix stream pairs only; without network no socket(), bind() or
    connect(); with network socket() for inet, inet6 and netlink route only."""
    rule(deny, "socketpair", _ArgCmp(0, SCMP_CMP_NE, AF_UNIX, 0))
    for kind in range(SOCK_TYPE_MASK + 1):
        if kind != SOCK_STREAM:
            rule(deny, "socketpair", _ArgCmp(1, SCMP_CMP_MASKED_EQ, SOCK_TYPE_MASK, kind))
    if not network:
        for name in ("socket", "bind", "connect"):
            rule(deny, name)
        return
    allowed = (AF_INET, AF_INET6, AF_NETLINK)
    for family in range(AF_MAX):
        if family not in allowed:
            rule(deny, "socket", _ArgCmp(0, SCMP_CMP_MASKED_EQ, INT_MASK, family))
    rule(deny, "socket", _ArgCmp(0, SCMP_CMP_GE, AF_MAX, 0))  # (also any high bits set)
    rule(deny, "socket", _ArgCmp(0, SCMP_CMP_MASKED_EQ, INT_MASK, AF_NETLINK),
         _ArgCmp(2, SCMP_CMP_NE, NETLINK_ROUTE, 0))


class Program:
    """A compiled filter kept in memory that children inherit; :meth:`load` installs it."""

    def __init__(self, bpf: bytes):
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.prctl  # resolved in the zygote, not in every child (see isolation)
        self.instructions = len(bpf) // 8
        self.address = ctypes.addressof(self._prog)  # the sock_fprog, for native loading

    def load(self) -> None:
        rc = self._libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self._prog),
                              0, 0)
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, "prctl(PR_SET_SECCOMP): %s" % os.strerror(err))
