"""The fork server: a small, clean, pre-imported process that forks children.

Started by the supervisor with a fresh interpreter (``python -I``), a minimal
environment and no inherited fd but its control socket. It imports only
operator-trusted modules (``preload``), builds the one :class:`ChildConfig` every
child inherits, then serves the control socket (messages in :mod:`.control`): it
keeps prepared children ready (:mod:`.warm_spawner`), forks a child for a request
when none is ready, kills on request, and reports each child's end once its
execution is contained (:mod:`.reaper`). It is never on a request's path and never
sees parameters, contexts or tokens. EOF on the control socket (the supervisor is
gone) kills every child and ends the zygote.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
from typing import Dict, List, Optional, Tuple

import _signal

from mistral_sandbox.runner import child as child_mod
from mistral_sandbox.runner import cgroups, control, isolation, linux, native_plan, seccomp, view
from mistral_sandbox.runner.child_config import ChildConfig, ChildSpec
from mistral_sandbox.runner.reaper import DRAIN_POLL_MS, ChildRecord, Reaper, remove_tree
from mistral_sandbox.runner.steps import OFF, REQUIRED
from mistral_sandbox.runner.uid_pool import UidPool
from mistral_sandbox.runner.warm_spawner import WarmSpawner, make_spec

_CHILD_DEFAULT_SIGNALS = (int(signal.SIGCHLD), int(signal.SIGINT), int(signal.SIGTERM))
_SIG_DFL = int(signal.SIG_DFL)


def _ignore_signal(*_args) -> None:
    """SIGCHLD's handler in the zygote: the signal only wakes the loop (wakeup fd)."""


def _child_start(run, *args) -> None:
    """First thing in a new child: drop the zygote's signal plumbing, then
    ``run(*args)``; never returns. (``_signal``, not ``signal``: the latter's enum
    conversions touch dozens of pages, each a copy-on-write fault in a fresh child.)"""
    try:
        _signal.set_wakeup_fd(-1)
        for sig in _CHILD_DEFAULT_SIGNALS:
            _signal.signal(sig, _SIG_DFL)
        run(*args)
    finally:
        os._exit(126)


def unreadable_paths(paths: List[str]) -> List[str]:
    """Entries of ``paths`` an unprivileged uid cannot read (a component lacks o+x, or
    the entry o+rx): children run as sandbox uids, so modules below them are importable
    only if the zygote preloaded them."""
    bad = []
    for entry in paths:
        if not entry or not os.path.isdir(entry):
            continue
        parts = os.path.realpath(entry).split(os.sep)
        for i in range(2, len(parts) + 1):
            mode = os.stat(os.sep.join(parts[:i]) or os.sep).st_mode
            need = 0o005 if i == len(parts) else 0o001
            if mode & need != need:
                bad.append(entry)
                break
    return bad


def shared_namespaces(policy, root: bool, enabled: bool) -> Tuple[Dict[int, int], Dict]:
    """The net, ipc and uts namespaces children join instead of making their own — as
    root, where the policy enables the step, and (net, ipc) only with the seccomp step
    required: the filter is what makes sharing them safe. Returns (flag -> fd, and per
    namespace "shared" or why not). (Children without network join the network
    namespace of their uid, :func:`uid_network_namespaces`, where there is one.)"""
    fds: Dict[int, int] = {}
    facts: Dict[str, str] = {}
    for step, flag in (("net_ns", linux.CLONE_NEWNET), ("ipc_ns", linux.CLONE_NEWIPC),
                       ("uts_ns", linux.CLONE_NEWUTS)):
        if policy.get(step) == OFF:
            continue
        if not enabled:
            why = "per child (sharing disabled)"
        elif not root:
            why = "per child (not root)"
        elif policy.get("seccomp") != REQUIRED and step != "uts_ns":
            why = "per child (seccomp is not required)"
        else:
            try:
                fds[flag] = linux.make_shared_namespace(flag)
                why = "shared"
            except OSError as exc:  # children then make their own
                why = "per child (%s)" % exc
        facts[step[:-3]] = why
    return fds, facts


def uid_network_namespaces(shared: Dict[int, int], uids) -> Dict[int, int]:
    """An empty network namespace per sandbox uid (when the network namespace is
    shared): two executions never run at the same time under one uid, so none sees
    another's sockets in ``/proc/net`` (a count of socket pairs there carried data from
    one execution to another). Made once: a namespace made per child would cost about
    1 ms of CPU."""
    if linux.CLONE_NEWNET not in shared:
        return {}
    fds: Dict[int, int] = {}
    try:
        for uid in uids:
            fds[uid] = linux.make_shared_namespace(linux.CLONE_NEWNET)
    except OSError:  # (children then share the one namespace)
        for fd in fds.values():
            os.close(fd)
        return {}
    return fds


def seccomp_programs(policy, library: Optional[str]) -> Tuple[Dict[bool, object], str]:
    """network allowed -> compiled filter; or ({}, why not)."""
    if policy.get("seccomp") == OFF:
        return {}, ""
    try:
        return {network: seccomp.Program(seccomp.build(network, library))
                for network in (False, True)}, ""
    except seccomp.SeccompUnavailable as exc:
        return {}, str(exc)


class Zygote:
    """The fork server of one supervisor; ``settings`` is its JSON configuration."""

    def __init__(self, ctl: socket.socket, settings: dict):
        self.ctl = ctl
        self.settings = settings
        self.pid = os.getpid()
        self.supervisor_pid = os.getppid()
        self.root = os.geteuid() == 0
        self.scratch_root = settings["scratch_root"]
        self.facts: Dict[str, object] = {}
        self.pidns_forker: Optional[linux.PidNamespaceForker] = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.handlers: tuple = ()  # our signal handlers, kept referenced (see start)
        self.uids = UidPool(self.root, settings["uid_lock_dir"], int(settings["uid_start"]),
                            int(settings["uid_count"]), int(settings["pool"]))
        self.reaper = Reaper(self.uids, self.send, self._reaped)
        self.config: Optional[ChildConfig] = None
        self.warm: Optional[WarmSpawner] = None
        self.cgroups: Optional[cgroups.UidCgroups] = None

    def start(self) -> None:
        linux.set_thread_name(b"ms-zygote")
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        self.uids.sweep_free()  # leftovers of a previous, crashed owner
        # our handlers stay referenced: a child resetting them must not free them (every
        # object freed there is a copy-on-write fault). Until reset they are also the
        # children's, so they act only in the zygote itself.
        self.handlers = (_ignore_signal, self._on_sigterm)
        signal.signal(signal.SIGCHLD, self.handlers[0])
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self.handlers[1])
        self.config = self._child_config()
        child_mod.install_runtime(self.settings.get("preload", ()))
        child_mod.warm_up_code(self.config.ceiling)
        gc.freeze()  # keep preloaded objects out of the children's GC: fewer COW faults
        self.send(control.message(control.HELLO, pid=self.pid, root=self.root,
                                  uids=list(self.uids.claimed), **self.facts))
        self.warm = WarmSpawner(int(self.settings.get("warm", 0)), self.config, self.uids,
                                self.reaper, self.scratch_root, self.fork_child, self.send)
        self.warm.cpu_base = self._cpu_base
        self.warm.spawn(self.warm.target)

    def _child_config(self) -> ChildConfig:
        s = self.settings
        # plain dicts, not read-only proxies: a child reads them on its way to the action,
        # and every extra object it touches there is a copy-on-write fault
        policy = dict(s["policy"])  # validated by the supervisor
        ceiling = dict(s.get("ceiling") or {})
        if policy.get("pid_ns") != OFF:
            pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            self.pidns_forker = linux.PidNamespaceForker(pidns_fd, _native_fork())
        shared, namespaces = shared_namespaces(policy, self.root, s.get("share_namespaces", True))
        uid_net = uid_network_namespaces(shared, self.uids.claimed)
        if uid_net:
            namespaces["net"] = "one per sandbox uid"
        programs, unavailable = seccomp_programs(policy, s.get("seccomp_library"))
        views, scratch_view, view_state, unreadable = self._views(policy)
        cgroup_state = self._cgroups(policy, ceiling)
        isolation.scrub_base_environment(scratch_view)  # (HOME and TMPDIR: the scratch)
        config = ChildConfig(
            zygote_pid=self.pid, max_frame=int(s["max_frame"]), policy=policy, ceiling=ceiling,
            ceiling_plan=tuple(isolation.rlimit_plan(ceiling)), scratch_view=scratch_view,
            scratch_tmpfs=s.get("scratch_size"), seccomp=programs,
            seccomp_unavailable=unavailable, shared_ns=shared, uid_net_ns=uid_net, views=views,
            cgroup_fds=self.cgroups.join if self.cgroups else {},
            cgroup_unavailable="" if self.cgroups else cgroup_state,
            pid_ns=self.pidns_forker is not None, unreadable_paths=tuple(unreadable),
            warm_network=bool(s.get("warm_network", ceiling.get("network"))))
        config, native = native_plan.plan(config, s.get("native_isolation", True), self.root,
                                          self.uids.peek(), self.fork_child)
        self.facts = {"unreadable_paths": list(unreadable), "seccomp": unavailable or "ok",
                      "namespaces": namespaces, "native_isolation": native,
                      "view": view_state, "scratch_view": scratch_view,
                      "cgroups": cgroup_state,
                      "cgroup_layout": self.cgroups.layout.to_dict() if self.cgroups else None,
                      "policy": dict(policy)}
        return config

    def _cgroups(self, policy, ceiling) -> str:
        """A cgroup per claimed uid (as root, with the cgroup step on): "v1" or "v2", or
        why not (``self.cgroups`` stays None)."""
        if not self.root:
            return "not root"
        if policy.get("cgroup") == OFF:
            return "the cgroup step is off"
        try:
            layout = cgroups.detect()
            self.cgroups = cgroups.UidCgroups(layout, self.uids.claimed,
                                              ceiling.get("resident_set_size"),
                                              ceiling.get("number_processes"))
        except (cgroups.CgroupsUnavailable, OSError) as exc:
            return "unavailable: %s" % exc
        self.reaper.cgroups = self.cgroups
        return "v%d" % layout.version

    def _views(self, policy) -> Tuple[Dict[bool, int], str, str, List[str]]:
        """The template views children copy (as root, with the mount_ns step on): (fds,
        where children see their scratch, "minimal" or why the host is seen instead,
        module directories sandbox uids cannot read in what they see)."""
        paths = view.module_path()
        if not self.root:
            return {}, self.scratch_root, "host, read-only (not root)", []
        if policy.get("mount_ns") == OFF:
            return {}, self.scratch_root, "host (mount_ns is off)", unreadable_paths(paths)
        try:
            fds, scratch = view.build_all(self.scratch_root, paths)
        except view.ViewUnavailable as exc:
            return {}, self.scratch_root, "host, read-only (%s)" % exc, unreadable_paths(paths)
        return fds, scratch, "minimal", view.unreadable(view.plan(paths, False)["dirs"])

    def fork_child(self, spec: ChildSpec, run=None) -> Tuple[int, bool]:
        """Fork a child that runs ``run(pid_ns)`` (default: :func:`child.main` with our
        config and ``spec``) and never returns. With the pid_ns step on, the child is
        pid 1 of a new pid namespace. Returns (pid, whether it has its own pid
        namespace); raises OSError."""
        forker = self.pidns_forker
        if forker is None:
            pid, why = linux.fork_light(), None
        else:
            pid, why = forker.fork()
        if pid == 0:
            if run is None:
                _child_start(child_mod.main, self.config, spec, why)
            _child_start(run, why)
        return pid, why == ""

    def send(self, msg: dict, fds=()) -> bool:
        """Send one message; False if the supervisor is gone (then we end)."""
        try:
            control.send(self.ctl, msg, fds)
            return True
        except OSError:  # nobody to serve: clean up and go
            self.terminate()
            return False

    def _reaped(self, record: ChildRecord) -> None:
        if self.warm is not None:
            self.warm.reaped(record)

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.ctl.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        if self.cgroups is not None:
            for fd in self.cgroups.watch:
                poller.register(fd, self.cgroups.poll_events())
        ctl_fd = self.ctl.fileno()
        warm, reaper = self.warm, self.reaper
        while True:
            # requests and exits first; the pool is refilled only when idle, so a
            # refill never delays a request or an exit report
            timeout = warm.refill_timeout_ms()
            draining = bool(reaper.draining)
            if draining and (timeout is None or timeout > DRAIN_POLL_MS):
                timeout = DRAIN_POLL_MS
            try:
                events = poller.poll(timeout)
            except InterruptedError:
                continue
            if not events:
                warm.refill()
                if draining:
                    reaper.reap()
                continue
            # control messages before exits: a "taken" must be seen before its child's exit
            if len(events) > 1 and events[0][0] != ctl_fd:
                events.reverse()
            for fd, _ in events:
                if fd == ctl_fd:
                    if not self.handle_ctl():
                        self.terminate()
                elif fd == self.wake_r:
                    self._drain_wakeups()
                    reaper.reap()
                else:
                    self._out_of_memory(fd)

    def _cpu_base(self, uid: Optional[int]) -> float:
        if self.cgroups is None or uid is None:
            return 0.0
        return self.cgroups.cpu_base(uid)

    def _out_of_memory(self, fd: int) -> None:
        """A uid's cgroup killed for memory: the whole execution goes (its exit report
        says why)."""
        uid = self.cgroups.oom_event(fd)
        if uid is not None:
            self.reaper.kill_uid(uid, oom=True)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def handle_ctl(self) -> bool:
        """One control message; False when the supervisor is gone."""
        try:
            msg, fds = control.recv(self.ctl, control.FDS_PER_CHILD)
        except InterruptedError:
            return True
        except (OSError, control.ControlError):
            return False
        if not msg:
            return False
        op = msg["op"]
        if op == control.FORK:
            self.fork_cold(int(msg["id"]), fds, bool(msg["network"]))
            return True
        control.close_all(fds)
        if op == control.TAKEN:
            self.warm.taken(msg["slots"])
        elif op == control.KILL:
            self.reaper.kill(("slot", int(msg["slot"])) if "slot" in msg
                             else ("id", int(msg["id"])))
        return True

    def fork_cold(self, exec_id: int, fds: List[int], network: bool) -> None:
        """Start execution ``exec_id`` in a child forked now (none was prepared)."""
        try:
            if len(fds) != control.FDS_PER_CHILD:
                self._fork_failed(exec_id, "expected 3 fds")
                return
            try:
                uid = self.uids.take()
            except IndexError:
                self._fork_failed(exec_id, "no free sandbox uid")
                return
            scratch = os.path.join(self.scratch_root, "x%d" % exec_id)
            spec = make_spec(self.config, exec_id, uid, scratch, tuple(fds), network)
            try:
                pid, contained = self.fork_child(spec)
            except OSError as exc:
                self.uids.give_back(uid)
                self._fork_failed(exec_id, "fork: %s" % exc)
                return
            self.reaper.track(ChildRecord(("id", exec_id), pid, uid, scratch, contained))
            self.send(control.message(control.FORKED, id=exec_id, pid=pid, scratch=scratch,
                                      uid=uid, cpu_base=self._cpu_base(uid)))
        finally:
            control.close_all(fds)

    def _fork_failed(self, exec_id: int, error: str) -> None:
        self.send(control.message(control.FORK_FAILED, id=exec_id, error=error))

    def _on_sigterm(self, *_args) -> None:
        if os.getpid() == self.pid:
            self.terminate()

    def terminate(self) -> None:
        """Kill every child, remove our generation's directory, and exit. If the
        supervisor died (we were reparented) nobody else will clean up: then also our
        log and the sandbox's own temporary root, once empty (never an operator's)."""
        self.reaper.terminate_all()
        if self.cgroups is not None:
            self.cgroups.remove()
        remove_tree(self.scratch_root)
        if os.getppid() != self.supervisor_pid:
            for cleanup in (lambda: os.unlink(self.scratch_root + ".stderr"),
                            lambda: self.settings.get("own_root") and
                            os.rmdir(os.path.dirname(self.scratch_root))):
                try:
                    cleanup()
                except OSError:
                    pass
        os._exit(0)


def _native_fork():
    """The C helper's ``fork_in_new_pidns``, or None if it is not built."""
    helper = native_plan.load_helper()
    return None if isinstance(helper, ImportError) else helper.fork_in_new_pidns


def main() -> None:
    """``python -I -c 'from mistral_sandbox.runner.zygote import main; main()'`` with
    the JSON settings on stdin (not in argv, which every child would show in its
    /proc/self/cmdline); they name the control socket's fd (``ctl_fd``)."""
    settings = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.umask(0o077)
    linux.own_session()  # (the supervisor starts us in a new session already)
    isolation.scrub_base_environment()  # (HOME and TMPDIR once the view is known)
    sys.path[:0] = settings.get("extra_path", [])
    for name in settings.get("preload", ()):
        importlib.import_module(name)
    zygote = Zygote(socket.socket(fileno=int(settings["ctl_fd"])), settings)
    zygote.start()
    try:
        zygote.serve()
    except BaseException:  # a bug of ours: leave nothing of the executions behind
        import traceback
        traceback.print_exc()
        zygote.terminate()


if __name__ == "__main__":
    main()
