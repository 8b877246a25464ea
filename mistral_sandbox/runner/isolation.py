"""The isolation steps a child applies to itself, in the order :mod:`.steps` declares.

:func:`prepare` applies every step but ``rlimits`` under the policy (the Python
path); :func:`prepare_native` applies the same steps in one call of the optional C
helper, with the same report. ``rlimits`` is applied by :func:`apply_rlimits` when
the limits are known (a prepared child applies the ceiling's ahead, then the
request's on arrival). Each step is recorded in a :class:`Report`, which travels to
the parent and ends up in ``Outcome.isolation``.

A step raises :class:`IsolationError` (or ``OSError``) when it cannot be applied;
:func:`apply_step` turns that into a skip (``best_effort``) or a failure of the
execution (``required``).
"""

from __future__ import annotations

import _signal
import fcntl
import math
import os
import resource
import signal
import struct
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from mistral_sandbox.runner import linux
from mistral_sandbox.runner.child_config import CHANNEL_FD, ChildConfig, ChildSpec, NativePlan
from mistral_sandbox.runner.steps import NATIVE_ORDER, NAMES, OFF, REQUIRED

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
BASE_ENVIRONMENT = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
ROOT_SKIPS_USER_NS = "running as root: privileges are dropped to a sandbox uid instead"
TMPFS_BYTES_PER_INODE = 4096  # files (and directories) a scratch tmpfs may hold: size / this
SIGKILL = int(signal.SIGKILL)  # plain ints: no enum touched in a child
_SIGXFSZ, _SIG_IGN = int(signal.SIGXFSZ), int(signal.SIG_IGN)
_U64 = (1 << 64) - 1  # (RLIM_INFINITY is -1 in Python, all ones in C)


class IsolationError(Exception):
    """A required isolation step failed; ``step`` names it."""

    def __init__(self, step: str, message: str):
        super().__init__("isolation step %s failed: %s" % (step, message))
        self.step = step
        self.reason = message


class Report:
    """Ordered record of the steps: applied, skipped (with the reason), cost in µs."""

    __slots__ = ("applied", "skipped", "cost_us", "warm")

    def __init__(self, warm: bool = False) -> None:
        self.warm = warm  # isolated ahead of time, before the request arrived
        self.applied: List[str] = []
        self.skipped: List[Dict[str, str]] = []
        self.cost_us: Dict[str, int] = {}

    def ok(self, step: str) -> None:
        self.applied.append(step)

    def skip(self, step: str, why: str) -> None:
        self.skipped.append({"step": step, "reason": why})

    def to_dict(self) -> Dict[str, Any]:
        return {"applied": list(self.applied), "skipped": list(self.skipped),
                "cost_us": dict(self.cost_us), "prepared_ahead": self.warm}


def apply_step(report: Report, policy, step: str, fn, *args) -> Any:
    """Run one step under its policy; returns fn's value (None when skipped).

    ``fn`` records the step as applied (or skipped, with its own reason)."""
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


class _Isolating:
    """One child's isolation in progress: what the steps read and leave for each other."""

    __slots__ = ("report", "config", "spec", "pid_ns", "shared", "unshared", "view",
                 "cgroup")

    def __init__(self, report: Report, config: ChildConfig, spec: ChildSpec,
                 pid_ns: Optional[str]):
        self.report = report
        self.config = config
        self.spec = spec
        self.pid_ns = pid_ns  # "": forked as pid 1 of a new pid namespace; else why not
        self.shared: Dict[int, int] = {}  # namespaces to join: flag -> fd (moved by fds)
        self.unshared = 0  # CLONE_NEW* flags already unshared together
        self.view: Optional[int] = None  # the template mount namespace (moved by fds)
        self.cgroup: Tuple[int, ...] = ()  # cgroup.procs files to join (moved by fds)

    def applied(self, step: str) -> bool:
        return step in self.report.applied


# ---------------------------------------------------------------- the steps

def _fds(run: _Isolating) -> None:
    """0 -> /dev/null; 1, 2 -> the capture pipes; 3 -> the channel; the namespaces to
    join kept (moved above 3); every other fd closed."""
    shared = {flag: fd for flag, fd in run.config.shared_ns.items()
              if not (flag == linux.CLONE_NEWNET and run.spec.network)}
    if linux.CLONE_NEWNET in shared and run.spec.uid in run.config.uid_net_ns:
        shared[linux.CLONE_NEWNET] = run.config.uid_net_ns[run.spec.uid]
    view = run.config.views.get(run.spec.network)
    if view is not None and run.config.policy.get("mount_ns") != OFF:
        shared[linux.CLONE_NEWNS] = view
    cgroup = run.config.cgroup_fds.get(run.spec.uid, ()) \
        if run.config.policy.get("cgroup") != OFF else ()
    devnull = os.open(os.devnull, os.O_RDWR)
    # move what we keep above 3 first, so the dup2s below cannot clobber it
    moved = [fd if fd > CHANNEL_FD else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
             for fd in (devnull,) + tuple(run.spec.stdio) + tuple(shared.values()) + cgroup]
    devnull, channel, out, err = moved[:4]
    run.shared = dict(zip(shared, moved[4:4 + len(shared)]))
    run.cgroup = tuple(moved[4 + len(shared):])
    run.view = run.shared.pop(linux.CLONE_NEWNS, None)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.dup2(channel, CHANNEL_FD, inheritable=False)
    low = CHANNEL_FD + 1
    for fd in sorted(moved[4:]) + [_max_fd()]:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    run.report.ok("fds")


def _max_fd() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY and hard < 1 << 20 else 1 << 20


def _cgroup(run: _Isolating) -> None:
    """Join the uid's cgroup(s) (the zygote opened their cgroup.procs files)."""
    fds, run.cgroup = run.cgroup, ()
    try:
        if not fds:
            raise IsolationError("cgroup", run.config.cgroup_unavailable or
                                 "no cgroup for this uid")
        for fd in fds:
            os.write(fd, b"0")
    finally:
        for fd in fds:
            os.close(fd)
    run.report.ok("cgroup")


def _session(run: _Isolating) -> None:
    """Own process group (killed whole at the end) inside the zygote's session, which
    has no controlling terminal. Not a session per child: where the kernel groups
    tasks by session for scheduling (CONFIG_SCHED_AUTOGROUP), each child would then
    weigh as much as the whole supervisor."""
    os.setpgid(0, 0)
    run.report.ok("session")


def scrub_base_environment(scratch_view: str = "") -> None:
    """Replace this process's environment with :data:`BASE_ENVIRONMENT` (the zygote does
    it once, for every child), HOME and TMPDIR being ``scratch_view`` if given."""
    os.environ.clear()
    os.environ.update(BASE_ENVIRONMENT)
    if scratch_view:
        os.environ["HOME"] = os.environ["TMPDIR"] = scratch_view


def _environment(run: _Isolating) -> None:
    if len(os.environ) != len(BASE_ENVIRONMENT) + 2:  # the zygote did not scrub it
        scrub_base_environment(run.config.scratch_view)
    run.report.ok("environment")


def _user_ns(run: _Isolating) -> None:
    """Not root only: a user namespace where we are root, so the others can be made."""
    if os.geteuid() == 0:
        run.report.skip("user_ns", ROOT_SKIPS_USER_NS)
        return
    uid, gid = os.geteuid(), os.getegid()
    linux.unshare(linux.CLONE_NEWUSER, "user")
    for name, text in (("setgroups", "deny"), ("uid_map", "0 %d 1" % uid),
                       ("gid_map", "0 %d 1" % gid)):
        with open("/proc/self/" + name, "w") as f:
            f.write(text)
    run.report.ok("user_ns")


def _pid_ns(run: _Isolating) -> None:
    """Confirm this process is pid 1 of the pid namespace the zygote forked it into: it
    sees only its own processes (with the private /proc of mount_ns), orphans are
    reparented to it, and when it ends the kernel kills whatever is left in the
    namespace. A signal it sends itself with the default action is ignored, as for
    any init; signals from the zygote and faults still kill it."""
    if run.pid_ns is None:
        raise IsolationError("pid_ns", "not created by the zygote")
    if run.pid_ns:
        raise IsolationError("pid_ns", run.pid_ns)
    run.report.ok("pid_ns")


def _join(run: _Isolating, flag: int) -> bool:
    """Join the shared namespace ``flag`` if there is one (closing its fd)."""
    fd = run.shared.pop(flag, None)
    if fd is None:
        return False
    try:
        linux.setns(fd, flag)
    finally:
        os.close(fd)
    return True


def _net_ns(run: _Isolating) -> None:
    if run.spec.network:
        run.report.skip("net_ns", "the limits allow network")
        return
    if not _join(run, linux.CLONE_NEWNET):
        linux.unshare(linux.CLONE_NEWNET, "net")
    run.report.ok("net_ns")


def _unshare_once(run: _Isolating, flag: int, what: str) -> None:
    if not run.unshared & flag:
        linux.unshare(flag, what)
        run.unshared |= flag


def tmpfs_options(size: int, uid: Optional[int]) -> bytes:
    """Mount options of a scratch tmpfs of ``size`` bytes owned by ``uid`` (None: by the
    mounting process). The inode count is capped too: empty files cost the kernel
    memory that ``size`` does not count."""
    opts = "size=%d,nr_inodes=%d,mode=0700" % (size, max(64, size // TMPFS_BYTES_PER_INODE))
    if uid is not None:
        opts += ",uid=%d,gid=%d" % (uid, uid)
    return opts.encode()


def _mount_ns(run: _Isolating) -> None:
    """Private mount namespace: a copy of the template view (:mod:`.view`) where there
    is one, else the host read-only; its own /proc (with a pid namespace); the scratch
    directory writable at the scratch view: a new tmpfs of ``scratch_tmpfs`` bytes
    owned by the sandbox uid, or the host directory ``spec.scratch`` mounted there."""
    config, policy = run.config, run.config.policy
    tree = None
    if config.scratch_tmpfs is None:
        _make_host_scratch(run.spec)
        if run.view is not None:  # its path is out of the view: take it along
            tree = linux.open_tree(run.spec.scratch)
    if run.view is not None:
        view_fd, run.view = run.view, None
        try:
            linux.setns(view_fd, linux.CLONE_NEWNS)  # (root and cwd: the view's root)
        finally:
            os.close(view_fd)
    flags = 0  # one unshare for mnt, ipc and uts where they are not shared
    for step, flag in (("mount_ns", linux.CLONE_NEWNS), ("ipc_ns", linux.CLONE_NEWIPC),
                       ("uts_ns", linux.CLONE_NEWUTS)):
        if policy.get(step, REQUIRED) != OFF and flag not in run.shared:
            flags |= flag
    if linux.try_unshare(flags):
        run.unshared = flags
    _unshare_once(run, linux.CLONE_NEWNS, "mnt")
    if config.views:
        _mount_on_view(run, tree)
    else:
        _mount_on_host(run)
    run.report.ok("mount_ns")


def mount_proc() -> None:
    """A /proc of the child's pid namespace with its processes only (``subset=pid``,
    Linux 5.8: none of the host-wide files such as meminfo, stat, key-users, config.gz,
    which tell an action about the host and its load; the full one on older kernels)."""
    flags = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
    try:
        linux.mount("proc", "/proc", "proc", flags, b"subset=pid")
    except OSError as exc:
        if exc.errno != 22:  # EINVAL: an older kernel
            raise
        linux.mount("proc", "/proc", "proc", flags)


def _mount_on_view(run: _Isolating, tree: Optional[int]) -> None:
    if run.applied("pid_ns"):  # a /proc that shows only this namespace's processes
        mount_proc()
    view = run.config.scratch_view
    if tree is None:
        linux.mount("tmpfs", view, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                    tmpfs_options(run.config.scratch_tmpfs, run.spec.uid))
        return
    try:
        linux.move_mount(tree, view)
    finally:
        os.close(tree)
    linux.mount_setattr(view, 0, linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV, 0)


def _mount_on_host(run: _Isolating) -> None:
    """Without a template (not root): the host's mount table, made read-only; the
    scratch mounted last, so that a failure leaves nothing half-mounted over the
    directory the scratch step then uses."""
    config = run.config
    view = config.scratch_view or run.spec.scratch
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    if run.applied("pid_ns"):
        mount_proc()
    try:
        linux.mount_setattr("/", linux.AT_RECURSIVE, linux.MOUNT_ATTR_RDONLY, 0)
    except OSError as exc:
        if exc.errno != 38:  # ENOSYS: kernel older than 5.12
            raise
        linux.mount(None, "/", None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY)
        run.report.skip("mount_ns:recursive_ro", "mount_setattr unavailable: only / is "
                        "read-only")
    if config.scratch_tmpfs is not None:  # (mounted after the read-only pass: writable)
        linux.mount("tmpfs", view, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                    tmpfs_options(config.scratch_tmpfs, run.spec.uid))
        return
    linux.mount(run.spec.scratch, view, None, linux.MS_BIND | linux.MS_NOSUID | linux.MS_NODEV)
    try:  # a bind keeps its source's read-only flag: clear it
        linux.mount_setattr(view, 0, 0, linux.MOUNT_ATTR_RDONLY)
    except OSError:
        linux.umount(view)
        raise


def _make_host_scratch(spec: ChildSpec) -> None:
    try:
        os.mkdir(spec.scratch, 0o700)
    except FileExistsError:  # (made by a mount_ns step that then failed)
        pass
    if spec.uid is not None:
        os.chown(spec.scratch, spec.uid, spec.uid)


def _scratch(run: _Isolating) -> None:
    """cwd, HOME and TMPDIR: the scratch view made by mount_ns, or (without it) a
    private 0700 directory made now at its real path."""
    if run.applied("mount_ns"):
        path = run.config.scratch_view or run.spec.scratch
    else:
        path = run.spec.scratch
        try:
            _make_host_scratch(run.spec)
        except OSError as exc:
            raise IsolationError("scratch", "%s: %s" % (path, exc.strerror or exc)) from None
        os.environ["HOME"] = os.environ["TMPDIR"] = path
    os.chdir(path)
    point_tempfile(path)
    run.report.ok("scratch")


def point_tempfile(path: str) -> None:
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:  # preloaded: make sure it did not cache another directory
        tempfile.tempdir = path


def _ipc_ns(run: _Isolating) -> None:
    if not _join(run, linux.CLONE_NEWIPC):
        _unshare_once(run, linux.CLONE_NEWIPC, "ipc")
    run.report.ok("ipc_ns")


def _uts_ns(run: _Isolating) -> None:
    if not _join(run, linux.CLONE_NEWUTS):
        _unshare_once(run, linux.CLONE_NEWUTS, "uts")
        linux.sethostname(linux.HOSTNAME)
    run.report.ok("uts_ns")


def _no_new_privs(run: _Isolating) -> None:
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    run.report.ok("no_new_privs")


def _seccomp(run: _Isolating) -> None:
    program = run.config.seccomp.get(run.spec.network)
    if program is None:
        raise IsolationError("seccomp", "no filter: %s"
                             % (run.config.seccomp_unavailable or "not built"))
    program.load()
    run.report.ok("seccomp")


def _uid(run: _Isolating) -> None:
    """As root: setgroups([]), setresgid, setresuid to the sandbox uid (gid = uid). Not
    root: root only inside its own user namespace, with every capability dropped."""
    uid = run.spec.uid
    if uid is None:
        if run.applied("user_ns"):
            linux.drop_capabilities()
            run.report.ok("uid")
            return
        if os.geteuid() == 0:
            raise IsolationError("uid", "running as root but no unprivileged uid was assigned")
        if _effective_capabilities():
            raise IsolationError("uid", "not root, without a user namespace, and still "
                                 "holding capabilities %#x" % _effective_capabilities())
        run.report.ok("uid")  # an unprivileged uid (the operator's), no capability
        return
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise IsolationError("uid", "still uid %d after setresuid(%d)" % (os.geteuid(), uid))
    run.report.ok("uid")


def _effective_capabilities() -> int:
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _pdeathsig(run: _Isolating) -> None:
    """SIGKILL if the zygote dies (again: the uid change cleared it)."""
    linux.prctl(linux.PR_SET_PDEATHSIG, SIGKILL)
    if os.getppid() != _expected_parent(run):  # the zygote is gone already
        os._exit(137)
    run.report.ok("pdeathsig")


def _expected_parent(run: _Isolating) -> int:
    # pid 1 of its own namespace: the zygote is outside it, seen as 0
    return 0 if run.pid_ns == "" else run.config.zygote_pid


_APPLY = {"fds": _fds, "cgroup": _cgroup, "session": _session, "environment": _environment,
          "user_ns": _user_ns, "pid_ns": _pid_ns, "net_ns": _net_ns, "mount_ns": _mount_ns,
          "scratch": _scratch, "ipc_ns": _ipc_ns, "uts_ns": _uts_ns,
          "no_new_privs": _no_new_privs, "seccomp": _seccomp, "uid": _uid,
          "pdeathsig": _pdeathsig}
# every declared step but rlimits, in the declared order (rlimits: apply_rlimits)
PREPARE_ORDER = tuple((name, _APPLY[name]) for name in NAMES if name != "rlimits")
assert set(_APPLY) == set(NAMES) - {"rlimits"}, "a declared step has no implementation"


def prepare(report: Report, config: ChildConfig, spec: ChildSpec,
            pid_ns: Optional[str]) -> Optional[IsolationError]:
    """Every step but rlimits, in the declared order, under ``config.policy``.

    ``pid_ns`` is "" when the zygote forked this process as pid 1 of a new pid
    namespace, else why not (None: not attempted). Natively (:func:`prepare_native`)
    when the zygote planned it for this child. Returns the error of a required step
    that failed (reported later over the channel, as ``sandbox_error``) or None.
    """
    if spec.native_args is not None and pid_ns == "":
        return prepare_native(report, config, spec)
    run = _Isolating(report, config, spec, pid_ns)
    # die with the zygote from the first instant: a child stopped mid-preparation must
    # not outlive it
    linux.prctl(linux.PR_SET_PDEATHSIG, SIGKILL)
    linux.set_thread_name(b"ms-child")
    if os.getppid() != _expected_parent(run):
        os._exit(137)
    policy = config.policy
    try:
        for name, fn in PREPARE_ORDER:
            apply_step(report, policy, name, fn, run)
    except IsolationError as exc:
        return exc
    finally:
        for fd in list(run.shared.values()) + list(run.cgroup) + \
                ([run.view] if run.view is not None else []):
            os.close(fd)  # not joined (a step was skipped, off or failed)
    return None


# ---------------------------------------------------------------- native

# what the report says after the native call, in the declared order: the zygote scrubbed
# the environment and forked the child into its pid namespace, and the tmpfs mounted by
# mount_ns is the scratch
NATIVE_REPORTED = tuple(n for n in NAMES if n not in ("user_ns", "rlimits"))


def native_args(config: ChildConfig, plan: NativePlan, stdio: Tuple[int, int, int],
                uid: int, warm: bool) -> Dict[str, Any]:
    """Keyword arguments of the C helper's ``prepare`` for one child, computed in the
    zygote before the fork (a child computes nothing of them: every object it makes or
    touches is a copy-on-write fault). A prepared (``warm``) child also applies the
    ceiling's rlimits natively."""
    shared = config.shared_ns
    rlimits = b"".join(struct.pack("=iQQ", res, soft & _U64, hard & _U64)
                       for res, _, soft, hard in config.ceiling_plan) if warm else b""
    return {"channel": stdio[0], "stdout": stdio[1], "stderr": stdio[2],
            "net_ns_fd": config.uid_net_ns.get(uid, shared[linux.CLONE_NEWNET]),
            "ipc_ns_fd": shared[linux.CLONE_NEWIPC],
            "uts_ns_fd": shared[linux.CLONE_NEWUTS], "mount_ns_fd": config.views.get(False, -1),
            "cgroup_fds": b"".join(struct.pack("=i", fd)
                                   for fd in config.cgroup_fds.get(uid, ())),
            "scratch_view": plan.scratch_view,
            "tmpfs_options": plan.tmpfs_options + b",uid=%d,gid=%d" % (uid, uid),
            "uid": uid, "seccomp_filter": plan.seccomp_filter, "expected_parent": 0,
            "in_pid_ns": True, "rlimits": rlimits}


def prepare_native(report: Report, config: ChildConfig,
                   spec: ChildSpec) -> Optional[IsolationError]:
    """The steps of :func:`prepare` in one call of the C helper, for a child forked as
    pid 1 of its pid namespace, as root, without network: the same system calls in the
    same order, the same report. A failing step fails the execution whatever its policy
    (the zygote's probe showed this host allows every one of them)."""
    args = spec.native_args
    failed, err, what, costs = config.native.prepare(**args)
    with_rlimits = bool(args["rlimits"])
    order = NATIVE_ORDER if with_rlimits else NATIVE_ORDER[:-1]
    report.cost_us.update(zip(order, costs))
    if failed >= 0:
        report.applied.extend(order[:failed])
        step = NATIVE_ORDER[failed]
        if step == "rlimits":  # which one: as the Python step says it
            _, field, soft, _ = config.ceiling_plan[int(what)]
            what = "%s=%s" % (field, soft)
        return IsolationError(step, "%s: %s" % (what, os.strerror(err)))
    if args["cgroup_fds"]:
        report.applied.extend(NATIVE_REPORTED)
    else:  # (no cgroup on this host, or the step off: the helper had nothing to join)
        report.applied.extend(n for n in NATIVE_REPORTED if n != "cgroup")
        report.skip("cgroup", "disabled by policy" if config.policy.get("cgroup") == OFF
                    else config.cgroup_unavailable or "no cgroup for this uid")
    report.skip("user_ns", ROOT_SKIPS_USER_NS)
    point_tempfile(config.scratch_view)
    if with_rlimits:  # the ceiling's, as apply_rlimits would have applied them
        if config.ceiling.get("file_size") is not None:
            ignore_sigxfsz()
        report.ok("rlimits")
    return None


# ---------------------------------------------------------------- rlimits

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


def rlimit_plan(limits) -> List[Tuple[int, str, int, int]]:
    """``[(resource, field, soft, hard)]`` for ``limits`` (soft = hard, except CPU: SIGXCPU,
    then SIGKILL a second later), never above the current hard limits."""
    plan = []
    for field, name in _RLIMITS:
        value = limits.get(field)
        if value is not None:
            plan.append((getattr(resource, name), field, int(value), int(value)))
    cpu = limits.get("cpu_time")
    if cpu is not None:
        soft = max(1, math.ceil(cpu))
        plan.append((resource.RLIMIT_CPU, "cpu_time", soft, soft + 1))
    out = []
    for res, field, soft, hard in plan:
        cur_hard = resource.getrlimit(res)[1]
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        out.append((res, field, soft, hard))
    return out


def apply_rlimits(report: Report, limits, plan=None) -> None:
    """Kernel rlimits for every limit that has one (``plan``: :func:`rlimit_plan` of
    ``limits``, if computed already)."""
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
    """With a file size limit: over-size writes fail with EFBIG instead of killing."""
    _signal.signal(_SIGXFSZ, _SIG_IGN)
