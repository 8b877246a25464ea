"""The seccomp filter as built by libseccomp, evaluated here (no kernel involved).

The binary-tree layout (cheaper for the kernel to load) must give exactly the
verdicts of libseccomp's default chain layout, for every syscall number and the
argument values the rules look at; and the verdicts must be the ones the module
promises (denied list, namespace clone flags, socket families).
"""

import errno
import struct

import pytest

from mistral_sandbox.runner import seccomp

AUDIT_ARCH_X86_64 = 0xC000003E
RET_ALLOW = seccomp.SCMP_ACT_ALLOW
RET_EPERM = seccomp.SCMP_ACT_ERRNO(errno.EPERM)
RET_ENOSYS = seccomp.SCMP_ACT_ERRNO(errno.ENOSYS)
MAX_NR = 512


def _instructions(program: bytes):
    return [struct.unpack_from("<HBBI", program, off) for off in range(0, len(program), 8)]


def run_filter(program, nr: int, args=(0, 0, 0, 0, 0, 0), arch=AUDIT_ARCH_X86_64) -> int:
    """Evaluate a classic BPF seccomp program on one ``struct seccomp_data``; the
    returned action. Raises on an instruction this small evaluator does not know."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *[a & (2 ** 64 - 1) for a in args])
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if code == 0x20:      # ld [k]
            a = struct.unpack_from("<I", data, k)[0]
        elif code == 0x00:    # ld #k
            a = k
        elif code == 0x60:    # ld M[k]
            a = mem[k]
        elif code == 0x01:    # ldx #k
            x = k
        elif code == 0x61:    # ldx M[k]
            x = mem[k]
        elif code == 0x02:    # st M[k]
            mem[k] = a
        elif code == 0x03:    # stx M[k]
            mem[k] = x
        elif code == 0x07:    # tax
            x = a
        elif code == 0x87:    # txa
            a = x
        elif code == 0x54:    # and #k
            a &= k
        elif code == 0x44:    # or #k
            a |= k
        elif code == 0x06:    # ret #k
            return k
        elif code == 0x16:    # ret a
            return a
        elif code == 0x05:    # ja k
            pc += k
        elif cls == 0x05 and code & 0x08 == 0:  # conditional jumps against k
            op = code & 0xF0
            taken = {0x10: a == k, 0x20: a > k, 0x30: a >= k, 0x40: bool(a & k)}.get(op)
            if taken is None:
                raise AssertionError("unknown jump opcode %#x" % code)
            pc += jt if taken else jf
        else:
            raise AssertionError("unknown BPF opcode %#x at %d" % (code, pc - 1))


def _nr(name: str) -> int:
    lib = seccomp._library(None)
    return lib.seccomp_syscall_resolve_name(name.encode())


def _probes():
    """(nr, args) for every syscall number, plus the argument values rules test."""
    clone_flags = [0x11, 0x01200011] + list(seccomp.CLONE_NAMESPACE_FLAGS)
    families = [0, 1, 2, 10, 16, 17, 40, 63, 64, 0x1_0000_0002, 0x1_0000_0010]
    for nr in range(MAX_NR):
        yield nr, (0,) * 6
    for flags in clone_flags:
        yield _nr("clone"), (flags, 0, 0, 0, 0, 0)
    for family in families:
        for kind in (1, 2, 0x80801, 0x80002):
            for proto in (0, 2, 4, 0x1_0000_0000):
                yield _nr("socket"), (family, kind, proto, 0, 0, 0)
                yield _nr("socketpair"), (family, kind, proto, 0, 0, 0)


@pytest.fixture(scope="module", params=[False, True], ids=["no-network", "network"])
def programs(request):
    try:
        chain = seccomp.build(request.param, binary_tree=False)
        tree = seccomp.build(request.param, binary_tree=True)
    except seccomp.SeccompUnavailable as exc:
        pytest.fail("libseccomp is a requirement of the test machine: %s" % exc)
    return request.param, _instructions(chain), _instructions(tree)


def test_tree_layout_gives_the_chain_layouts_verdicts(programs):
    _, chain, tree = programs
    for nr, args in _probes():
        assert run_filter(tree, nr, args) == run_filter(chain, nr, args), (nr, args)


def test_verdicts_are_the_promised_ones(programs):
    network, _, tree = programs
    for name in ("ptrace", "mount", "unshare", "setns", "bpf", "keyctl", "mount_setattr",
                 "shmget", "semget", "msgget", "mq_open"):
        assert run_filter(tree, _nr(name)) == RET_EPERM, name
    for name in ("read", "write", "openat", "getpid", "mmap", "exit_group"):
        assert run_filter(tree, _nr(name)) == RET_ALLOW, name
    assert run_filter(tree, _nr("clone3")) == RET_ENOSYS
    clone = _nr("clone")
    assert run_filter(tree, clone, (0x01200011, 0, 0, 0, 0, 0)) == RET_ALLOW  # fork()
    for flag in seccomp.CLONE_NAMESPACE_FLAGS:
        assert run_filter(tree, clone, (0x11 | flag, 0, 0, 0, 0, 0)) == RET_EPERM, hex(flag)
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register", "inotify_init",
                 "inotify_init1", "inotify_add_watch", "fanotify_init", "fanotify_mark"):
        assert run_filter(tree, _nr(name)) == RET_EPERM, name
    socket_nr, pair = _nr("socket"), _nr("socketpair")

    def sock(family, kind=1, proto=0):
        return run_filter(tree, socket_nr, (family, kind, proto, 0, 0, 0))
    allowed = {2, 10} if network else set()
    for family in (0, 1, 2, 10, 17, 40, 63, 64, 0x1_0000_0002, 0x1_0000_0001):
        verdict = RET_ALLOW if family in allowed else RET_EPERM
        assert sock(family) == verdict, hex(family)
        assert sock(family, 0x80801) == verdict, hex(family)  # SOCK_CLOEXEC|NONBLOCK
    # netlink: its route protocol with network (name resolution), never another one
    assert sock(16, 3, 0) == (RET_ALLOW if network else RET_EPERM)
    for proto in (2, 4, 0x1_0000_0000):  # NETLINK_USERSOCK, NETLINK_SOCK_DIAG
        assert sock(16, 3, proto) == RET_EPERM, proto
    # socketpair: connected unix stream pairs only
    assert run_filter(tree, pair, (1, 1, 0, 0, 0, 0)) == RET_ALLOW
    assert run_filter(tree, pair, (1, 0x80001, 0, 0, 0, 0)) == RET_ALLOW
    for family, kind in ((1, 2), (1, 5), (1, 0x80002), (2, 1), (0x1_0000_0001, 1)):
        assert run_filter(tree, pair, (family, kind, 0, 0, 0, 0)) == RET_EPERM, (family, kind)
    for name in ("bind", "connect"):
        assert run_filter(tree, _nr(name)) == (RET_ALLOW if network else RET_EPERM), name


def test_other_abis_kill():
    """i386 (int 0x80) and x32 system calls never reach the native rules: killed."""
    tree = _instructions(seccomp.build(False))
    assert run_filter(tree, 102, arch=0x40000003) == 0  # i386 socketcall: SECCOMP_RET_KILL
    assert run_filter(tree, 0x40000000 | _nr("socket")) == 0  # x32 socket


def test_tree_layout_is_what_children_load():
    """The zygote builds with the default arguments: the tree (when libseccomp has it)."""
    default = seccomp.build(False)
    assert default == seccomp.build(False, binary_tree=True)
    lib = seccomp._library(None)
    ctx = lib.seccomp_init(seccomp.SCMP_ACT_ALLOW)
    try:
        supported = seccomp._prefer_binary_tree(lib, ctx)
    finally:
        lib.seccomp_release(ctx)
    if supported:
        assert default != seccomp.build(False, binary_tree=False)
