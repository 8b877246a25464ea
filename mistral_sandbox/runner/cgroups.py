"""Limits that hold for an execution's whole process tree: a cgroup per sandbox uid.

rlimits bound each process; an action that forks multiplies them. As root the zygote
gives every uid it claims a cgroup of its own (:class:`UidCgroups`) with the ceiling's
memory (swap off) and process count; a child joins its uid's cgroup first thing (the
``cgroup`` step), so everything the execution starts is counted together:

* memory: the kernel refuses the whole tree more than ``resident_set_size`` (the
  ``memory`` limit); when it has to kill, the zygote (watching the cgroup's OOM events)
  kills the whole execution and reports it: ``memory_limit``;
* processes: ``pids.max`` bounds the tree, whatever uids;
* CPU time: the supervisor reads the tree's usage when the limit could first have been
  reached (:meth:`LimitWriter.cpu_seconds`) and kills it there: ``cpu_limit``.

A request's tighter memory or process limit is written into its uid's cgroup by the
supervisor before the request is sent (:class:`LimitWriter`). cgroup v2 is used where
it has the memory and pids controllers, else v1 (memory, pids, cpuacct); without
either, or not as root, the step is skipped with the reason (``best_effort``).
"""

from __future__ import annotations

import os
import select
import struct
from typing import Dict, Iterable, List, Optional, Tuple

NAME = "mistral-sandbox"
V1_CONTROLLERS = ("memory", "pids", "cpuacct")
UNLIMITED = {2: "max", 1: "-1"}


class CgroupsUnavailable(Exception):
    """No usable cgroup hierarchy (the reason is the message)."""


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _mounts() -> List[Tuple[str, str, List[str]]]:
    out = []
    for line in _read("/proc/self/mounts").splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[2] in ("cgroup", "cgroup2"):
            out.append((parts[1], parts[2], parts[3].split(",")))
    return out


def _own_path(controller: Optional[str]) -> str:
    """This process's cgroup in the v1 hierarchy of ``controller`` (None: v2)."""
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or \
                (controller is not None and controller in controllers.split(",")):
            return path
    raise CgroupsUnavailable("not in a %s cgroup" % (controller or "v2"))


class Layout:
    """Where the sandbox's cgroups live: ``version`` 2 (one directory) or 1 (one per
    controller: memory, pids, cpuacct)."""

    def __init__(self, version: int, bases: Dict[str, str]):
        self.version = version
        self.bases = bases  # controller (v2: "unified") -> the sandbox's directory

    def dirs(self, uid: int) -> Dict[str, str]:
        return {c: os.path.join(base, "u%d" % uid) for c, base in self.bases.items()}

    def to_dict(self) -> dict:
        return {"version": self.version, "bases": dict(self.bases)}

    @classmethod
    def from_dict(cls, data: dict) -> "Layout":
        return cls(int(data["version"]), dict(data["bases"]))


def detect() -> Layout:
    """The hierarchy to use: v2 with memory and pids, else v1 memory, pids and cpuacct
    (under this process's own cgroups: limits above it still apply). Raises
    CgroupsUnavailable."""
    mounts = _mounts()
    for mountpoint, kind, _opts in mounts:
        if kind != "cgroup2":
            continue
        try:
            available = _read(os.path.join(mountpoint, "cgroup.controllers")).split()
        except OSError:
            continue
        if {"memory", "pids"} <= set(available):
            return Layout(2, {"unified": os.path.join(mountpoint, NAME)})
    bases = {}
    for controller in V1_CONTROLLERS:
        for mountpoint, kind, opts in mounts:
            if kind == "cgroup" and controller in opts:
                own = _own_path(controller).lstrip("/")
                bases[controller] = os.path.join(mountpoint, own, NAME)
                break
        else:
            raise CgroupsUnavailable("no cgroup v2 with memory and pids, and no v1 %s "
                                     "hierarchy" % controller)
    return Layout(1, bases)


class UidCgroups:
    """The zygote's side: a cgroup per claimed uid with the ceiling's limits; the fds a
    child joins it with; the OOM events it watches; the tree's usage at the end."""

    def __init__(self, layout: Layout, uids: Iterable[int], memory: Optional[int],
                 pids: Optional[int]):
        self.layout = layout
        self.memory, self.pids = memory, pids
        self.join: Dict[int, Tuple[int, ...]] = {}  # uid -> cgroup.procs fds (O_WRONLY)
        self.watch: Dict[int, int] = {}             # OOM event fd -> uid
        self._oom_base: Dict[int, int] = {}
        self._oom_seen: Dict[int, bool] = {}  # (its baseline is read again at reset)
        self._cpu_base: Dict[int, float] = {}
        if layout.version == 2:
            self._enable_controllers()
        for uid in uids:
            self._make(uid)

    def _enable_controllers(self) -> None:
        base = self.layout.bases["unified"]
        parent = os.path.dirname(base)
        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
        os.makedirs(base, exist_ok=True)
        _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")

    def _make(self, uid: int) -> None:
        dirs = self.layout.dirs(uid)
        for path in dirs.values():
            os.makedirs(path, exist_ok=True)
        self.kill(uid)  # (a previous, crashed owner's leftovers)
        self.set_limits(uid, self.memory, self.pids)
        if self.layout.version == 2:
            _write(os.path.join(dirs["unified"], "memory.swap.max"), 0)
            _write(os.path.join(dirs["unified"], "memory.oom.group"), 1)
        # v1: the child moves its only thread ("tasks"): moving one's own thread skips
        # the global threadgroup lock a cgroup.procs write takes, and the RCU grace
        # period that lock costs now and then (during which every fork waits)
        join = "tasks" if self.layout.version == 1 else "cgroup.procs"
        self.join[uid] = tuple(os.open(os.path.join(d, join), os.O_WRONLY | os.O_CLOEXEC)
                               for d in dirs.values())
        self.watch[self._oom_watch(uid)] = uid
        self.reset(uid)

    def _file(self, uid: int, controller: str, name: str) -> str:
        key = "unified" if self.layout.version == 2 else controller
        return os.path.join(self.layout.dirs(uid)[key], name)

    def set_limits(self, uid: int, memory: Optional[int], pids: Optional[int]) -> None:
        unlimited = UNLIMITED[self.layout.version]
        if self.layout.version == 2:
            _write(self._file(uid, "memory", "memory.max"), memory or unlimited)
        else:
            set_v1_memory(self._file(uid, "memory", ""), memory)
        _write(self._file(uid, "pids", "pids.max"), pids if pids is not None else "max")

    def _oom_watch(self, uid: int) -> int:
        """An fd that becomes readable (v1: an eventfd) or signals POLLPRI (v2:
        memory.events) when the cgroup runs out of memory."""
        if self.layout.version == 2:
            return os.open(self._file(uid, "memory", "memory.events"),
                           os.O_RDONLY | os.O_CLOEXEC)
        event = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        control = os.open(self._file(uid, "memory", "memory.oom_control"),
                          os.O_RDONLY | os.O_CLOEXEC)
        try:
            _write(self._file(uid, "memory", "cgroup.event_control"), "%d %d" % (event, control))
        finally:
            os.close(control)
        return event

    def poll_events(self) -> int:
        """The poll events to watch the OOM fds for."""
        return select.POLLPRI | select.POLLERR if self.layout.version == 2 else select.POLLIN

    def oom_event(self, fd: int) -> Optional[int]:
        """The uid whose cgroup killed for memory since its last reset, if ``fd``'s event
        says so (None: nothing new)."""
        uid = self.watch.get(fd)
        if uid is None:
            return None
        try:
            if self.layout.version == 1:
                os.eventfd_read(fd)
            else:  # (read to re-arm the notification)
                os.lseek(fd, 0, os.SEEK_SET)
                os.read(fd, 4096)
        except BlockingIOError:
            return None
        if self.oom_kills(uid) > 0:
            self._oom_seen[uid] = True
            return uid
        return None

    def oom_kills(self, uid: int) -> int:
        """OOM kills in the cgroup since its last reset."""
        if self.layout.version == 2:
            name = "memory.events"
        else:
            name = "memory.oom_control"
        for line in _read(self._file(uid, "memory", name)).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value) - self._oom_base.get(uid, 0)
        return 0

    def cpu_seconds(self, uid: int) -> float:
        return cpu_seconds(self.layout, self.layout.dirs(uid)) - self._cpu_base.get(uid, 0.0)

    def max_rss(self, uid: int) -> Optional[int]:
        name = "memory.peak" if self.layout.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int(_read(self._file(uid, "memory", name)))
        except (OSError, ValueError):
            return None

    def usage(self, uid: int) -> dict:
        """What the tree used (for the exit report)."""
        oom = self.oom_kills(uid)
        if oom:
            self._oom_seen[uid] = True
        return {"tree_cpu": self.cpu_seconds(uid), "tree_max_rss": self.max_rss(uid),
                "oom_kills": oom}

    def reset(self, uid: int) -> None:
        """Counters back to zero for the next execution under ``uid`` (v1 resets the
        files; v2 records a baseline: its counters cannot be reset)."""
        if self.layout.version == 1:
            _write(self._file(uid, "cpuacct", "cpuacct.usage"), 0)
            _write(self._file(uid, "memory", "memory.max_usage_in_bytes"), 0)
        else:
            self._cpu_base[uid] = 0.0
            self._cpu_base[uid] = cpu_seconds(self.layout, self.layout.dirs(uid))
        if uid not in self._oom_base or self._oom_seen.pop(uid, False):
            self._oom_base[uid] = 0
            self._oom_base[uid] = self.oom_kills(uid)

    def cpu_base(self, uid: int) -> float:
        """The baseline a supervisor subtracts from the tree's CPU usage."""
        return self._cpu_base.get(uid, 0.0)

    def kill(self, uid: int) -> None:
        """Kill everything in the cgroup (v2; v1 relies on the uid sweep)."""
        if self.layout.version == 2:
            path = self._file(uid, "unified", "cgroup.kill")
            if os.path.exists(path):
                _write(path, 1)

    def remove(self) -> None:
        """Close our fds and remove the (empty) cgroups."""
        for fds in self.join.values():
            for fd in fds:
                os.close(fd)
        for fd in self.watch:
            os.close(fd)
        for uid in list(self.join):
            for path in self.layout.dirs(uid).values():
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        self.join, self.watch = {}, {}


def set_v1_memory(directory: str, memory: Optional[int]) -> None:
    """v1 memory limit with swap off: memsw (memory + swap) equal to it; the two are
    written in the order the kernel accepts (memsw is never below the memory limit)."""
    limit = os.path.join(directory, "memory.limit_in_bytes")
    memsw = os.path.join(directory, "memory.memsw.limit_in_bytes")
    value = memory if memory is not None else -1
    has_memsw = os.path.exists(memsw)
    current = int(_read(limit))
    if has_memsw and (value == -1 or value > current):
        _write(memsw, value)
        _write(limit, value)
    else:
        _write(limit, value)
        if has_memsw:
            _write(memsw, value)


def cpu_seconds(layout: Layout, dirs: Dict[str, str]) -> float:
    """CPU time used in the cgroup (user + system), in seconds."""
    if layout.version == 2:
        for line in _read(os.path.join(dirs["unified"], "cpu.stat")).splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        return 0.0
    return int(_read(os.path.join(dirs["cpuacct"], "cpuacct.usage"))) / 1e9


class LimitWriter:
    """The supervisor's side: writes a request's tighter memory and process limits into
    its uid's cgroup (only when they differ from what the cgroup has), and reads the
    tree's CPU time."""

    def __init__(self, layout: Layout, memory: Optional[int], pids: Optional[int]):
        self.layout = layout
        self.ceiling = (memory, pids)
        self.written: Dict[int, Tuple[Optional[int], Optional[int]]] = {}

    def apply(self, uid: int, memory: Optional[int], pids: Optional[int]) -> None:
        """Raises OSError if the cgroup refuses them."""
        wanted = (memory, pids)
        if self.written.get(uid, self.ceiling) == wanted:
            return
        dirs = self.layout.dirs(uid)
        if self.layout.version == 2:
            _write(os.path.join(dirs["unified"], "memory.max"),
                   memory if memory is not None else "max")
            _write(os.path.join(dirs["unified"], "pids.max"),
                   pids if pids is not None else "max")
        else:
            set_v1_memory(dirs["memory"], memory)
            _write(os.path.join(dirs["pids"], "pids.max"), pids if pids is not None else "max")
        self.written[uid] = wanted

    def cpu_seconds(self, uid: int) -> float:
        return cpu_seconds(self.layout, self.layout.dirs(uid))


def pack_fds(fds: Iterable[int]) -> bytes:
    """fds for the C helper (native int array)."""
    return b"".join(struct.pack("=i", fd) for fd in fds)
