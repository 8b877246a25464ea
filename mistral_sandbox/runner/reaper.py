"""The zygote's children, from fork to exit report: track, kill, reap, contain.

The zygote is a child subreaper, so every orphan of an execution comes back to it.
When a child dies its process group is killed; if any of the zygote's children runs
as the execution's uid, that uid is swept (a helper running as it sends
``kill(-1, SIGKILL)``), so nothing an execution started survives it — even a daemon
that left the process group. A child forked as pid 1 of its own pid namespace needs
none of that: the kernel killed its whole namespace with it. The exit is reported
(:data:`~mistral_sandbox.runner.control.EXIT`) once the execution's survivors are
gone and its scratch directory is removed; only then is its uid reused.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Dict, List, Optional, Tuple

from mistral_sandbox.runner import control
from mistral_sandbox.runner.uid_pool import UidPool, sweep_uid

DRAIN_TIMEOUT = 5.0     # seconds to wait for swept processes to die
DRAIN_POLL_MS = 20


class ChildRecord:
    """One child: a cold execution (``key`` = ("id", execution id)) or a prepared one
    (``key`` = ("slot", slot)). ``contained``: pid 1 of its own pid namespace."""

    __slots__ = ("key", "pid", "uid", "scratch", "contained", "oom")

    def __init__(self, key: Tuple[str, int], pid: int, uid: Optional[int], scratch: str,
                 contained: bool):
        self.key = key
        self.pid = pid
        self.uid = uid
        self.scratch = scratch
        self.contained = contained
        self.oom = False  # its cgroup ran out of memory: killed whole


def _real_uid(pid: int) -> Optional[int]:
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


def killpg(pid: int) -> None:
    for kill in (os.killpg, os.kill):  # kill: it may not lead its group yet
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Reaper:
    """Tracks the zygote's children and reports each one's end through ``report``
    (called with the exit message). ``on_reaped(record)`` is told first."""

    def __init__(self, uids: UidPool, report: Callable[[dict], None],
                 on_reaped: Callable[[ChildRecord], None]):
        self.uids = uids
        self.report = report
        self.on_reaped = on_reaped
        self.children: Dict[Tuple[str, int], ChildRecord] = {}
        self.by_pid: Dict[int, ChildRecord] = {}
        self.draining: List[Tuple[ChildRecord, dict, float]] = []
        self.cgroups = None  # the uids' cgroups (UidCgroups), when there are any
        self.children_path = "/proc/%d/task/%d/children" % (os.getpid(), os.getpid())

    def track(self, record: ChildRecord) -> None:
        self.children[record.key] = record
        self.by_pid[record.pid] = record

    def kill(self, key: Tuple[str, int]) -> None:
        """Kill a child's process group, if it is not reaped yet (its pid and group are
        still ours; once it is dead, reaping sweeps whatever it left)."""
        record = self.children.get(key)
        if record is not None:
            killpg(record.pid)

    def kill_uid(self, uid: int, oom: bool = False) -> None:
        """Kill the execution running under ``uid`` (``oom``: its cgroup ran out of
        memory), if there is one."""
        for record in self.children.values():
            if record.uid == uid:
                record.oom = record.oom or oom
                killpg(record.pid)
                if self.cgroups is not None:
                    self.cgroups.kill(uid)

    def _survivors(self, record: ChildRecord) -> bool:
        """True if a process of ``record``'s uid may still live once it is dead: every
        orphan comes back to us, so only our untracked children can be one."""
        try:
            with open(self.children_path, "rb") as f:
                pids = f.read().split()
        except OSError:
            return True  # cannot tell: assume the worst
        for raw in pids:
            pid = int(raw)
            if pid == record.pid or pid in self.by_pid or _is_zombie(pid):
                continue
            uid = _real_uid(pid)
            if uid is None or uid == record.uid:
                return True
        return False

    def _contain(self, record: ChildRecord) -> bool:
        """Kill what is left of a finished child; True if a uid sweep ran."""
        if record.contained:
            return False
        killpg(record.pid)
        if record.uid is not None and self._survivors(record):
            sweep_uid(record.uid)
            return True
        return False

    def reap(self) -> None:
        """Reap every dead child, contain its execution, report what is finished."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if info is None:
                break
            self._reap_one(info.si_pid)
        self._finish_drained()

    def _reap_one(self, pid: int) -> None:
        record = self.by_pid.pop(pid, None)
        # contained while it is still a zombie: its group id cannot be reused yet
        swept = self._contain(record) if record is not None else False
        try:
            _, status, ru = os.wait4(pid, 0)
        except ChildProcessError:
            return
        if record is None:
            return  # an orphan of some execution, reparented to us
        del self.children[record.key]
        self.on_reaped(record)
        kind, key = record.key
        report = {"op": control.EXIT, kind: key, "pid": pid, "status": status,
                  "utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss": ru.ru_maxrss * 1024,
                  "swept": swept}
        if self.cgroups is not None and record.uid is not None and \
                (record.oom or os.WIFSIGNALED(status)):  # (what the tree used, and why)
            report.update(self.cgroups.usage(record.uid))
        self.draining.append((record, report, time.monotonic() + DRAIN_TIMEOUT))

    def _finish_drained(self) -> None:
        """Report the executions whose swept survivors are all gone (their uid is
        reused only then)."""
        still = []
        now = time.monotonic()
        for record, report, deadline in self.draining:
            if report["swept"] and self._survivors(record):
                if now < deadline:
                    sweep_uid(record.uid)  # anything that got through before: again
                    still.append((record, report, deadline))
                    continue
                report["survivors"] = True
            report["scratch_removed"] = remove_tree(record.scratch)
            if self.cgroups is not None and record.uid is not None:
                self.cgroups.reset(record.uid)
            self.uids.give_back(record.uid)
            self.report(report)
        self.draining = still

    def terminate_all(self) -> None:
        """Kill every child and everything under our uids, reap (bounded), and remove
        the scratch directories."""
        for record in list(self.children.values()):
            killpg(record.pid)
            if record.uid is not None and not record.contained:
                sweep_uid(record.uid)
        for uid in self.uids.free + [r.uid for r, _, _ in self.draining]:
            if uid is not None:
                sweep_uid(uid)
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
        for record in [r for r, _, _ in self.draining] + list(self.children.values()):
            remove_tree(record.scratch)
