"""When to end a running execution: its wall time, its tree's CPU time, its exit.

:class:`Watchdog` keeps the deadlines of the engine's executions and says, when asked
(:meth:`Watchdog.due`), which must be killed and why:

* the wall time holds until the execution's whole tree has exited, delivered or not;
* a delivered execution gets :data:`EXIT_GRACE` to exit (nothing of the action runs
  after its reply), then it is killed and its worker freed;
* with cgroups, the tree's CPU time is read when the limit could first have been
  reached (the limit spread over every CPU) and again as it nears: no polling.

It also writes a request's tighter memory and process limits into its uid's cgroup
(:meth:`Watchdog.apply_tree_limits`).
"""

from __future__ import annotations

import heapq
import logging
import os
from typing import Dict, List, Optional, Tuple

from mistral_sandbox.runner.cgroups import Layout, LimitWriter
from mistral_sandbox.runner.execution import Execution

LOG = logging.getLogger(__name__)
EXIT_GRACE = 5.0       # seconds a delivered execution's processes get to exit
MIN_CPU_CHECK = 0.01   # seconds between two reads of a tree's CPU time, at least


class Deadlines:
    """Times at which executions are due (a heap; stale entries compacted)."""

    def __init__(self):
        self._heap: List[Tuple[float, int]] = []
        self._stale = 0
        self.next_due = float("inf")  # the earliest

    def add(self, when: float, exec_id: int) -> None:
        heapq.heappush(self._heap, (when, exec_id))
        self.next_due = self._heap[0][0]

    def due(self, now: float) -> List[int]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[1])
        self.next_due = self._heap[0][0] if self._heap else float("inf")
        return out

    def finished(self, live) -> None:
        """An execution with entries ended; ``live``: the ids still running."""
        self._stale += 1
        if self._stale > 64 and self._stale > 2 * len(live):
            self._heap = [(d, i) for d, i in self._heap if i in live]
            heapq.heapify(self._heap)
            self.next_due = self._heap[0][0] if self._heap else float("inf")
            self._stale = 0


class Watchdog:
    def __init__(self, cpus: Optional[int] = None):
        self.wall = Deadlines()
        self.cpu = Deadlines()
        self.cpus = cpus or os.cpu_count() or 1
        self.tree: Optional[LimitWriter] = None
        self.killed_after_reply = 0

    def zygote_started(self, info: dict, ceiling) -> None:
        """A zygote said hello: its cgroups (or none) are the ones to write to."""
        layout = info.get("cgroup_layout")
        self.tree = LimitWriter(Layout.from_dict(layout), ceiling.resident_set_size,
                                ceiling.number_processes) if layout else None

    def next_due(self) -> float:
        return min(self.wall.next_due, self.cpu.next_due)

    def started(self, ex: Execution, now: float) -> None:
        """``ex`` runs (its uid known, if it has one)."""
        if ex.deadline is not None:
            self.wall.add(ex.deadline, ex.id)
        cpu = ex.limits.cpu_time
        if cpu is not None and self.tree is not None and ex.uid is not None:
            self.cpu.add(now + max(MIN_CPU_CHECK, cpu / self.cpus), ex.id)

    def apply_tree_limits(self, ex: Execution) -> Optional[str]:
        """Write ``ex``'s memory and process limits into its uid's cgroup; why not, if
        they cannot be."""
        if self.tree is None or ex.uid is None:
            return None
        try:
            self.tree.apply(ex.uid, ex.limits.resident_set_size, ex.limits.number_processes)
        except OSError as exc:
            return "cannot apply the execution's limits to its cgroup: %s" % exc
        return None

    def delivered(self, ex: Execution, now: float) -> None:
        """Nothing of the action runs after its reply: its tree exits at once, or is
        killed EXIT_GRACE later (whatever its wall time)."""
        grace = now + EXIT_GRACE
        if ex.deadline is None or grace < ex.deadline:
            ex.deadline = grace
            self.wall.add(grace, ex.id)

    def finished(self, ex: Execution, live) -> None:
        if ex.deadline is not None or ex.limits.cpu_time is not None:
            self.wall.finished(live)
            self.cpu.finished(live)

    def due(self, now: float, running: Dict[int, Execution]) -> List[Tuple[Execution, str,
                                                                           str]]:
        """``[(execution, reason, message)]`` to kill now."""
        out = []
        for exec_id in self.wall.due(now):
            ex = running.get(exec_id)
            if ex is None or ex.deadline is None or ex.deadline > now:
                continue
            if not ex.delivered:
                out.append((ex, "timeout", "the action exceeded its wall-time limit of %gs"
                            % ex.limits.wall_time))
                continue
            if not ex.kill_sent:
                self.killed_after_reply += 1
                LOG.warning("execution %d had not exited %gs after its reply: killing its "
                            "processes", ex.id, EXIT_GRACE)
            out.append((ex, "timeout", "the execution did not exit after its reply"))
        for exec_id in self.cpu.due(now):
            ex = running.get(exec_id)
            if ex is not None and not ex.kill_sent:
                over = self._cpu_over(ex, now)
                if over:
                    out.append((ex, "cpu_limit", over))
        return out

    def _cpu_over(self, ex: Execution, now: float) -> Optional[str]:
        """A message if the tree used its CPU time, else schedule the next read."""
        limit = ex.limits.cpu_time
        try:
            used = self.tree.cpu_seconds(ex.uid) - ex.cpu_base
        except (OSError, ValueError):
            return None  # (the cgroup is gone: the execution is ending)
        if used >= limit:
            return "the execution exceeded its CPU-time limit of %gs (its processes " \
                   "together used %.2fs)" % (limit, used)
        self.cpu.add(now + max(MIN_CPU_CHECK, (limit - used) / self.cpus), ex.id)
        return None
