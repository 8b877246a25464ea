"""The fork server: a small, clean, pre-imported process that forks children.

Started by :class:`~mistral_sandbox.runner.supervisor.Sandbox` with a fresh
interpreter (``python -I``), a minimal environment and no inherited fds except
its control socket. It imports only operator-trusted modules (``preload``),
then serves requests on the control socket (``SOCK_SEQPACKET``, one msgpack
map per packet, fds passed with ``SCM_RIGHTS``):

=======================  ===================================================
supervisor → zygote      zygote → supervisor
=======================  ===================================================
                         ``hello {pid, uids, root}`` once ready
                         ``warm {slot, pid, scratch}`` + 3 fds: a pre-forked
                         child (its channel, stdout and stderr) for the
                         supervisor to hand one request to, directly
``taken {slots}``        (nothing: those slots are no longer idle)
``fork {id}`` + 3 fds    ``forked {id, pid, scratch}`` or ``fork_failed``
``kill {id}|{slot}``     (nothing; the exit report follows)
                         ``exit {id|slot, pid, status, rusage, swept,
                         scratch_removed}``
=======================  ===================================================

The zygote is not on a request's path: the supervisor writes a request
straight into an idle warm child's channel and tells the zygote afterwards
(``taken``), so the pool is refilled. The zygote never sees parameters,
contexts or tokens: those go from the supervisor to the child over the
child's own socketpair. It is a child
subreaper, so orphans of an execution come back to it and are reaped. When
running as root every execution gets its own uid from a pool claimed with
``flock`` (so concurrent sandboxes on one host never share one). When an
execution's child dies, its process group is killed; if any of the zygote's
children (where every orphan lands) runs as the execution's uid, that uid is
swept — a helper running as it sends ``kill(-1, SIGKILL)`` — so nothing the
execution started survives, even a daemon that left the process group. EOF
on the control socket kills every child and ends the zygote.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Dict, List, Optional, Tuple

import _signal
import _socket
import msgpack

from mistral_sandbox.runner import child as child_mod
from mistral_sandbox.runner import isolation, seccomp

_CHILD_DEFAULT_SIGNALS = (int(signal.SIGCHLD), int(signal.SIGINT), int(signal.SIGTERM))
_SIG_DFL = int(signal.SIG_DFL)
MAX_PACKET = 1 << 16
DRAIN_TIMEOUT = 5.0     # seconds to wait for swept processes to die
DRAIN_POLL_MS = 20
WARM_MAX_FAILURES = 20  # warm children in a row that died unassigned: pause the pool
WARM_PAUSE = 1.0        # seconds the pool pauses then (the cold path serves meanwhile)
WARM_PER_MESSAGE = 64   # warm children announced per message (3 fds each; SCM_MAX_FD 253)


class _WarmKit:
    """What one warm child gets, made ready before the fork: its sandbox uid, slot,
    scratch path, our ends and its ends of channel/stdout/stderr, and its code."""

    __slots__ = ("slot", "uid", "scratch", "ours", "theirs", "run")

    def __init__(self, slot: int, uid: Optional[int], scratch: str, ours: Tuple[int, ...],
                 theirs: Tuple[int, ...], run):
        self.slot = slot
        self.uid = uid
        self.scratch = scratch
        self.ours = ours
        self.theirs = theirs
        self.run = run


class _Child:
    """One child of the zygote: a cold execution (``key`` = ("id", execution id)) or a
    warm child (``key`` = ("slot", slot number)). ``contained``: it is pid 1 of its own
    pid namespace, so nothing it starts can outlive it."""

    __slots__ = ("key", "pid", "uid", "scratch", "contained")

    def __init__(self, key: Tuple[str, int], pid: int, uid: Optional[int], scratch: str,
                 contained: bool):
        self.key = key
        self.pid = pid
        self.uid = uid
        self.scratch = scratch
        self.contained = contained


def _native_fork():
    """The C helper's ``fork_in_new_pidns``, or None if it is not built."""
    try:
        from mistral_sandbox.runner import _native
    except ImportError:
        return None
    return _native.fork_in_new_pidns


def _ignore_signal(*_args) -> None:
    """SIGCHLD's handler in the zygote: the signal only wakes the loop (wakeup fd)."""


def _child_start(run) -> None:
    """First thing in a new child: drop the zygote's signal plumbing, then ``run()``;
    never returns. (As little as possible runs here: in a fresh child every object
    touched costs a copy-on-write fault. ``_signal``, not ``signal``: the latter's enum
    conversions touch dozens of pages.)"""
    try:
        _signal.set_wakeup_fd(-1)
        for sig in _CHILD_DEFAULT_SIGNALS:
            _signal.signal(sig, _SIG_DFL)
        run()
    finally:
        os._exit(126)


def claim_uids(lock_dir: str, start: int, count: int, want: int) -> List[int]:
    """Claim ``want`` uids in ``[start, start+count)`` by flock; locks live as long as we do."""
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    claimed = []
    for uid in range(start, start + count):
        if len(claimed) >= want:
            break
        fd = os.open(os.path.join(lock_dir, "%d.lock" % uid), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                continue
            raise
        claimed.append(uid)  # fd stays open (and locked) for the zygote's life
    if len(claimed) < want:
        raise RuntimeError("only %d of %d sandbox uids in [%d, %d) are free"
                           % (len(claimed), want, start, start + count))
    return claimed


def sweep_uid(uid: int) -> None:
    """Kill every process running as ``uid`` (a forked helper does ``kill(-1)`` as it)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        finally:
            os._exit(0)
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue


def _real_uid(pid: int) -> Optional[int]:
    """Real uid of ``pid`` from /proc (None if it cannot be read)."""
    try:
        with open("/proc/%d/status" % pid, "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _is_zombie(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True  # gone


def remove_tree(path: str) -> bool:
    """Remove a scratch directory; True if it is gone."""
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        pass
    import shutil  # rarely needed (a tenant left files): not imported in every child
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


def unreadable_paths(paths: List[str]) -> List[str]:
    """Entries of ``paths`` an unprivileged uid cannot read (some component lacks o+x/o+r).

    Children run as sandbox uids, so modules below these paths are importable
    only if the zygote preloaded them.
    """
    bad = []
    for entry in paths:
        if not entry or not os.path.isdir(entry):
            continue
        path = os.path.realpath(entry)
        parts = path.split(os.sep)
        for i in range(2, len(parts) + 1):
            mode = os.stat(os.sep.join(parts[:i]) or os.sep).st_mode
            need = 0o005 if i == len(parts) else 0o001
            if mode & need != need:
                bad.append(entry)
                break
    return bad


class Zygote:
    def __init__(self, ctl: socket.socket, cfg: dict):
        self.ctl = ctl
        self.ctl_fd = ctl.fileno()
        self.cfg = cfg
        self.pid = os.getpid()
        self.scratch_root = cfg["scratch_root"]
        self.max_frame = int(cfg["max_frame"])
        self.root = os.geteuid() == 0
        self.free_uids: List[int] = []
        self.children: Dict[Tuple[str, int], _Child] = {}  # key -> child, until reaped
        self.by_pid: Dict[int, _Child] = {}
        self.draining: List = []
        self.warm_target = int(cfg.get("warm", 0))
        self.idle: set = set()  # slots of warm children nobody has taken yet
        self.warm_seq = 0
        self.warm_failures = 0  # warm children in a row that died before being taken
        self.warm_paused_until = 0.0
        self.children_path = "/proc/%d/task/%d/children" % (self.pid, self.pid)
        self.pidns_fd: Optional[int] = None
        self.pidns_forker: Optional[isolation.PidNamespaceForker] = None
        self.shared_ns: Dict[str, str] = {}  # namespace -> "shared" or why not
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_r, self.wake_w = r, w
        self.handlers: tuple = ()  # our signal handlers (see start)

    def start(self) -> None:
        isolation.set_thread_name(b"ms-zygote")
        isolation.prctl(isolation.PR_SET_CHILD_SUBREAPER, 1)
        if self.root:
            self.free_uids = claim_uids(self.cfg["uid_lock_dir"], int(self.cfg["uid_start"]),
                                        int(self.cfg["uid_count"]), int(self.cfg["pool"]))
            for uid in self.free_uids:  # leftovers of a previous, crashed owner
                sweep_uid(uid)
        # (the handlers are also kept referenced here: a child that resets them must
        # not deallocate them — every object freed there costs copy-on-write faults)
        self.handlers = (_ignore_signal, self._on_sigterm)
        signal.signal(signal.SIGCHLD, self.handlers[0])
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # (children are forked with fork_light: until they reset them, these handlers
        # are theirs too, so they act only in the zygote itself)
        signal.signal(signal.SIGTERM, self.handlers[1])
        child_mod.POLICY.clear()
        child_mod.POLICY.update(self.cfg.get("policy") or isolation.DEFAULT_POLICY)
        child_mod.CEILING.clear()
        child_mod.CEILING.update(self.cfg.get("ceiling") or {})
        child_mod.CEILING_PLAN[:] = isolation.rlimit_plan(child_mod.CEILING)
        if child_mod.POLICY.get("pid_ns") != isolation.OFF:
            self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            self.pidns_forker = isolation.PidNamespaceForker(self.pidns_fd, _native_fork())
        self._share_namespaces()
        if child_mod.POLICY.get("seccomp") != isolation.OFF:
            try:
                for network in (False, True):
                    child_mod.SECCOMP[network] = seccomp.Program(
                        seccomp.build(network, self.cfg.get("seccomp_library")))
            except seccomp.SeccompUnavailable as exc:
                child_mod.SECCOMP.clear()
                isolation.SECCOMP_UNAVAILABLE[0] = str(exc)
        self.native = self._plan_native()
        unreadable = unreadable_paths(sys.path) if self.root else []
        child_mod.UNREADABLE_PATHS[:] = unreadable
        child_mod.install_runtime(self.cfg.get("preload", ()))
        child_mod.warm_up_code()
        gc.freeze()  # keep preloaded objects out of the children's GC: fewer COW faults
        self.send({"op": "hello", "pid": self.pid, "root": self.root,
                   "uids": list(self.free_uids), "unreadable_paths": unreadable,
                   "seccomp": isolation.SECCOMP_UNAVAILABLE[0] or "ok",
                   "namespaces": dict(self.shared_ns), "native_isolation": self.native,
                   "policy": dict(child_mod.POLICY)})
        self._spawn_warm(self.warm_target)

    def _share_namespaces(self) -> None:
        """Make the net, ipc and uts namespaces children join instead of creating their
        own (see :func:`isolation.make_shared_namespace`) — as root, where the policy
        enables the step, where the sandbox allows it, and (net, ipc) only with the
        seccomp step required: the filter is what makes sharing them safe. Records per
        namespace "shared" or why not (``self.shared_ns``)."""
        policy = child_mod.POLICY
        for step, flag in (("net_ns", isolation.CLONE_NEWNET), ("ipc_ns", isolation.CLONE_NEWIPC),
                           ("uts_ns", isolation.CLONE_NEWUTS)):
            if policy.get(step) == isolation.OFF:
                continue
            if not self.cfg.get("share_namespaces", True):
                why = "per child (sharing disabled)"
            elif not self.root:
                why = "per child (not root)"
            elif policy.get("seccomp") != isolation.REQUIRED and step != "uts_ns":
                why = "per child (seccomp is not required)"
            else:
                try:
                    isolation.SHARED_NS[flag] = isolation.make_shared_namespace(flag)
                    why = "shared"
                except OSError as exc:  # children then create their own
                    why = "per child (%s)" % exc
            self.shared_ns[step[:-3]] = why

    def _plan_native(self) -> str:
        """Let children isolate themselves natively (:func:`child.prepare_native`) if the
        C helper is built, the configuration is the one it implements — root, every
        step enabled, the three namespaces shared, a tmpfs scratch, a seccomp filter, pid
        namespaces — and a probe child it isolated came out right. Returns "on" or
        "off (why)" (``zygote_info["native_isolation"]``)."""
        if not self.cfg.get("native_isolation", True):
            return "off (disabled)"
        try:
            from mistral_sandbox.runner import _native
        except ImportError as exc:
            return "off (not built: %s)" % exc
        policy = child_mod.POLICY
        shared = {isolation.CLONE_NEWNET, isolation.CLONE_NEWIPC, isolation.CLONE_NEWUTS}
        if not self.root:
            return "off (not root)"
        if any(policy.get(step) == isolation.OFF for step in isolation.STEPS):
            return "off (a step is off)"
        if set(isolation.SHARED_NS) != shared:
            return "off (namespaces not shared)"
        if isolation.SCRATCH_TMPFS[0] is None:
            return "off (the scratch is a directory)"
        if False not in child_mod.SECCOMP or self.pidns_forker is None:
            return "off (no seccomp filter or no pid namespaces)"
        plan = (_native.prepare, isolation.SCRATCH_VIEW[0].encode(),
                isolation.tmpfs_options(isolation.SCRATCH_TMPFS[0], None),
                child_mod.SECCOMP[False].address)
        problem = self._probe_native(plan)
        if problem:
            child_mod.NATIVE[0] = None
            return "off (probe: %s)" % problem
        return "on"

    def _probe_native(self, plan: tuple) -> str:
        """Isolate one child natively, as a warm child would be; "" if it came out as
        the Python steps make it (checked in the child), else what went wrong."""
        uid = self.free_uids[-1]  # (not taken: the probe has ended before it is used)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)

        child_mod.NATIVE[0] = plan  # (for native_args; withdrawn if the probe fails)
        args = child_mod.native_args((theirs.fileno(), out_w, err_w), uid, False, warm=True)

        def run():
            report = isolation.Report()
            error = child_mod.prepare_native(report, args)
            if error is None:
                checks = (os.getuid() == uid, os.getpid() == 1, os.getcwd() == plan[1].decode(),
                          sorted(int(fd) for fd in os.listdir("/proc/self/fd"))[:4] == [0, 1, 2, 3])
                error = "" if all(checks) else "unexpected state %r" % (checks,)
            os.write(isolation.CHANNEL_FD, str(error).encode()[:500] or b"ok")
            os._exit(0)
        try:
            pid, _ = self._fork_child(run)
        except OSError as exc:
            return "fork: %s" % exc
        finally:
            theirs.close()
            for fd in (out_w, err_w):
                os.close(fd)
        try:
            ours.settimeout(10)
            answer = ours.recv(512).decode(errors="replace")
        except OSError as exc:
            answer = "no answer: %s" % exc
        finally:
            ours.close()
            for fd in (out_r, err_r):
                os.close(fd)
            os.waitpid(pid, 0)
        return "" if answer == "ok" else answer or "the probe died"

    def _on_sigterm(self, *_args) -> None:
        if os.getpid() == self.pid:
            self._terminate()

    def send(self, msg: dict, fds: Tuple[int, ...] = ()) -> bool:
        """Send one message (with ``fds``); False if the supervisor is gone (then we end)."""
        try:
            data = msgpack.packb(msg, use_bin_type=True)
            if fds:
                socket.send_fds(self.ctl, [data], list(fds))
            else:
                self.ctl.send(data)
            return True
        except OSError:  # the supervisor is gone: nobody to serve, clean up and go
            self._terminate()
            return False

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.ctl.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            # Requests and exits first; the warm pool is refilled only when idle, so a
            # refill fork never delays a request or an exit report. (Whatever is missing
            # then is forked in one batch, announced in one message.)
            refill = len(self.idle) < self.warm_target and \
                bool(self.free_uids or not self.root)
            timeout = None
            if refill:
                pause = self.warm_paused_until - time.monotonic()
                timeout = 0 if pause <= 0 else int(pause * 1000) + 1
            if self.draining and (timeout is None or timeout > DRAIN_POLL_MS):
                timeout = DRAIN_POLL_MS
            try:
                events = poller.poll(timeout)
            except InterruptedError:
                continue
            if not events:
                if refill and time.monotonic() >= self.warm_paused_until:
                    self._spawn_warm(self.warm_target)
                if self.draining:
                    self.reap()
                continue
            # control messages before exits: a "taken" must be seen before its child's exit
            if len(events) > 1 and events[0][0] != self.ctl_fd:
                events.reverse()
            for fd, _ in events:
                if fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                elif fd == self.ctl_fd:
                    if not self.handle_ctl():
                        self._terminate()

    def handle_ctl(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.ctl, MAX_PACKET, 3)
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        msg = msgpack.unpackb(data, raw=False)
        op = msg.get("op")
        if op == "fork":
            self.fork(int(msg["id"]), fds, bool(msg.get("network")))
            return True
        for fd in fds:
            os.close(fd)
        if op == "taken":
            for slot in msg.get("slots", ()):
                self.idle.discard(int(slot))
            self.warm_failures = 0
        elif op == "kill":
            key = ("slot", int(msg["slot"])) if "slot" in msg else ("id", int(msg["id"]))
            child = self.children.get(key)
            if child is not None:  # not reaped yet: the pid (and its group) are still ours;
                self._killpg(child)  # once it is dead, reap() sweeps whatever it left
        return True

    def _take_uid(self) -> Optional[int]:
        """A free sandbox uid (None when not root); raises IndexError when none is left."""
        return self.free_uids.pop() if self.root else None

    def _fork_child(self, run) -> Tuple[int, bool]:
        """fork(); in the child reset our signal plumbing and call ``run()`` (never returns).

        With the pid_ns step on, the child is created as pid 1 of a new pid namespace
        (it becomes that namespace's init): ``unshare(CLONE_NEWPID)`` before the fork,
        then ``setns`` back to our own namespace so the next fork can do it again.
        ``child_mod.PID_NS`` tells the child whether that worked ("" = yes, else why not).
        Returns (pid, whether the child has its own pid namespace).
        """
        forker = self.pidns_forker
        if forker is None:
            child_mod.PID_NS[0] = None
            pid = isolation.fork_light()
            why = None
        else:
            child_mod.PID_NS[0] = ""  # (what the child reads if the namespace is made)
            pid, why = forker.fork()
        if pid == 0:
            if why:
                child_mod.PID_NS[0] = why
            _child_start(run)  # never returns
        return pid, why == ""

    def fork(self, exec_id: int, fds: List[int], network: bool) -> None:
        """Start execution ``exec_id`` in a child forked now (the cold path)."""
        try:
            if len(fds) != 3:
                self.send({"op": "fork_failed", "id": exec_id, "error": "expected 3 fds"})
                return
            try:
                uid = self._take_uid()
            except IndexError:
                self.send({"op": "fork_failed", "id": exec_id, "error": "no free sandbox uid"})
                return
            scratch = os.path.join(self.scratch_root, "x%d" % exec_id)
            native = child_mod.native_args(tuple(fds), uid, network)

            def run():
                child_mod.main(fds[0], fds[1], fds[2], exec_id=exec_id, uid=uid,
                               scratch=scratch, zygote_pid=self.pid, max_frame=self.max_frame,
                               network=network, native=native)
            try:
                pid, contained = self._fork_child(run)
            except OSError as exc:
                if uid is not None:
                    self.free_uids.append(uid)
                self.send({"op": "fork_failed", "id": exec_id, "error": "fork: %s" % exc})
                return
            self._track(_Child(("id", exec_id), pid, uid, scratch, contained))
            self.send({"op": "forked", "id": exec_id, "pid": pid, "scratch": scratch})
        finally:
            for fd in fds:
                os.close(fd)

    def _track(self, child: _Child) -> None:
        self.children[child.key] = child
        self.by_pid[child.pid] = child

    def _spawn_warm(self, at_most: int) -> None:
        """Fork up to ``at_most`` warm children and hand their ends to the supervisor.

        Each gets its channel (a socketpair) and stdout/stderr pipes. Everything is
        made ready first and the children are then forked back to back: after each
        fork every page we write costs us a copy-on-write fault (the new child still
        shares it), so as little as possible runs between two forks.
        """
        target = min(self.warm_target, len(self.idle) + at_most)
        kits: List[_WarmKit] = []
        while len(self.idle) + len(kits) < target:
            kit = self._warm_kit()
            if kit is None:
                break
            kits.append(kit)
        if not kits:
            return
        forked = self._fork_all([kit.run for kit in kits])
        born: List[Tuple[int, int, str, int, int, int]] = []
        for kit, (pid, contained) in zip(kits, forked + [(0, False)] * (len(kits) - len(forked))):
            for fd in kit.theirs:
                os.close(fd)
            if not pid:  # fork failed: give back what it would have used
                for fd in kit.ours:
                    os.close(fd)
                if kit.uid is not None:
                    self.free_uids.append(kit.uid)
                continue
            self._track(_Child(("slot", kit.slot), pid, kit.uid, kit.scratch, contained))
            self.idle.add(kit.slot)
            born.append((kit.slot, pid, kit.scratch) + kit.ours)
        # announce in batches: one message (and one wake-up) for several
        for i in range(0, len(born), WARM_PER_MESSAGE):
            batch = born[i:i + WARM_PER_MESSAGE]
            fds = [fd for b in batch for fd in b[3:]]
            self.send({"op": "warm", "slots": [list(b[:3]) for b in batch]}, tuple(fds))
            for fd in fds:
                os.close(fd)

    def _warm_kit(self) -> Optional["_WarmKit"]:
        """A uid, a slot, the channel and output fds, and the code of one warm child
        to be forked; None when out of uids or fds."""
        try:
            uid = self._take_uid()
        except IndexError:
            return None
        opened: List[int] = []
        try:
            ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            opened += [ours.detach(), theirs.detach()]
            opened += os.pipe2(os.O_CLOEXEC)
            opened += os.pipe2(os.O_CLOEXEC)
        except OSError:
            for fd in opened:
                os.close(fd)
            if uid is not None:
                self.free_uids.append(uid)
            return None
        chan_ours, chan_theirs, out_r, out_w, err_r, err_w = opened
        self.warm_seq += 1
        slot = self.warm_seq
        scratch = os.path.join(self.scratch_root, "w%d" % slot)

        native = child_mod.native_args((chan_theirs, out_w, err_w), uid,
                                       bool(child_mod.CEILING.get("network")), warm=True)

        def run():  # (the zygote's fds, ours included, are closed by the fds step)
            child_mod.main_warm(chan_theirs, out_w, err_w, uid=uid, scratch=scratch,
                                zygote_pid=self.pid, max_frame=self.max_frame, native=native)
        return _WarmKit(slot, uid, scratch, (chan_ours, out_r, err_r),
                        (chan_theirs, out_w, err_w), run)

    def _fork_all(self, runs: List) -> List[Tuple[int, bool]]:
        """Fork one child per ``runs`` item, back to back; (pid, contained) of each
        child forked, in order (shorter than ``runs`` if a fork failed)."""
        forked: List[Tuple[int, bool]] = []
        for run in runs:
            try:
                forked.append(self._fork_child(run))
            except OSError:
                break
        return forked

    def _killpg(self, child: _Child) -> None:
        for kill in (os.killpg, os.kill):  # kill: it may not lead its group yet
            try:
                kill(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _survivors(self, child: _Child) -> bool:
        """True if a process of ``child``'s uid may still live once the child is dead.

        Every orphan of an execution is reparented to us (we are a subreaper),
        so if none of our direct children other than tracked ones runs as the
        execution's uid, nothing of it survives and no sweep is needed.
        """
        try:
            with open(self.children_path, "rb") as f:
                pids = f.read().split()
        except OSError:
            return True  # cannot tell: assume the worst
        for raw in pids:
            pid = int(raw)
            if pid == child.pid or pid in self.by_pid:
                continue
            if _is_zombie(pid):
                continue  # dead, waiting to be reaped by us
            uid = _real_uid(pid)
            if uid is None or uid == child.uid:
                return True
        return False

    def _contain(self, child: _Child) -> bool:
        """Kill what is left of a finished child; True if a uid sweep ran.

        A child that was pid 1 of its own namespace needs nothing: when it died the
        kernel killed everything in the namespace, which nothing can leave.
        """
        if child.contained:
            return False
        self._killpg(child)
        if child.uid is not None and self._survivors(child):
            sweep_uid(child.uid)
            return True
        return False

    def reap(self) -> None:
        """Reap every dead child, contain its execution, report what is finished."""
        self._reap_all()
        self._finish_drained()

    def _reap_all(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if info is None:
                return
            pid = info.si_pid
            child = self.by_pid.pop(pid, None)
            swept = False
            if child is not None:
                # leader is a zombie: its group id cannot be reused yet
                swept = self._contain(child)
            try:
                _, status, ru = os.wait4(pid, 0)
            except ChildProcessError:
                continue
            if child is None:
                continue  # an orphan of some execution, reparented to us
            del self.children[child.key]
            kind, key = child.key
            if kind == "slot" and key in self.idle:  # died before anybody told us it was
                self.idle.discard(key)                # taken (or before it was)
                self.warm_failures += 1
                if self.warm_failures >= max(WARM_MAX_FAILURES, 2 * self.warm_target):
                    self.warm_paused_until = time.monotonic() + WARM_PAUSE
                    self.warm_failures = 0
            report = {"op": "exit", kind: key, "pid": pid, "status": status,
                      "utime": ru.ru_utime, "stime": ru.ru_stime,
                      "maxrss": ru.ru_maxrss * 1024, "swept": swept}
            self.draining.append((child, report, time.monotonic() + DRAIN_TIMEOUT))

    def _finish_drained(self) -> None:
        """Report executions whose killed survivors have all been reaped.

        A swept process takes a moment to die; its uid is reused (and its exit
        reported) only once none of our children runs as it any more.
        """
        still = []
        now = time.monotonic()
        for child, report, deadline in self.draining:
            if report["swept"] and self._survivors(child):
                if now < deadline:
                    sweep_uid(child.uid)  # anything that got through before: again
                    still.append((child, report, deadline))
                    continue
                report["survivors"] = True
            report["scratch_removed"] = remove_tree(child.scratch)
            if child.uid is not None:
                self.free_uids.append(child.uid)
            self.send(report)
        self.draining = still

    def _terminate(self) -> None:
        for child in list(self.children.values()):
            self._killpg(child)
            if child.uid is not None and not child.contained:
                sweep_uid(child.uid)
        for uid in self.free_uids + [c.uid for c, _, _ in self.draining]:
            if uid is not None:
                sweep_uid(uid)
        # reap what was killed (bounded) before removing its directories
        pending = set(self.by_pid)
        deadline = time.monotonic() + 5
        while pending and time.monotonic() < deadline:
            for pid in list(pending):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        pending.discard(pid)
                except ChildProcessError:
                    pending.discard(pid)
            if pending:
                time.sleep(0.005)
        for child in [c for c, _, _ in self.draining] + list(self.children.values()):
            remove_tree(child.scratch)
        # If the supervisor died, nobody else will clean up: our generation's directory,
        # its log, and the sandbox's root if that leaves it empty.
        remove_tree(self.scratch_root)
        for path in (self.scratch_root + ".stderr",):
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            os.rmdir(os.path.dirname(self.scratch_root))
        except OSError:
            pass
        os._exit(0)


def main(argv: Optional[List[str]] = None) -> None:
    """``python -I -m mistral_sandbox.runner.zygote CONFIG_JSON``; the config names the
    control socket's fd (``ctl_fd``)."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = json.loads(argv[0])
    os.umask(0o077)
    isolation.own_session()  # (the supervisor starts us in a new session already)
    # once, for every child (HOME/TMPDIR: where a child sees its scratch directory)
    isolation.SCRATCH_VIEW[0] = cfg["scratch_root"]
    isolation.SCRATCH_TMPFS[0] = cfg.get("scratch_size")
    isolation.scrub_base_environment(cfg["scratch_root"])
    sys.path[:0] = cfg.get("extra_path", [])
    for name in cfg.get("preload", ()):
        importlib.import_module(name)
    ctl = socket.socket(fileno=int(cfg["ctl_fd"]))
    zygote = Zygote(ctl, cfg)
    zygote.start()
    try:
        zygote.serve()
    except BaseException:  # a bug of ours: leave nothing of the executions behind
        import traceback
        traceback.print_exc()
        zygote._terminate()


if __name__ == "__main__":
    main()
