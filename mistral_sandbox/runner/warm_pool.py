"""The supervisor's side of the warm pool: prepared children waiting for a request.

The zygote announces prepared children (:meth:`WarmPool.announce`); an execution
takes one (:meth:`take`) and writes its request straight into it. Once its
execution is delivered or has ended, a taken child is released
(:meth:`release`), and the zygote is told which slots it may refill
(:meth:`to_report`) — at once when the pool runs low, else after delivery, so a
replacement being prepared does not compete with the request for the CPU.
"""

from __future__ import annotations

import collections
import os
import socket
from typing import Deque, List, Optional, Set

COLD_FALLBACK_WAIT = 0.02  # seconds an execution waits for a prepared child, then a cold one


class WarmChild:
    """A prepared child nobody has taken: its slot, pid, scratch path, sandbox uid (and
    its cgroup's CPU baseline), and our ends of its channel and output pipes."""

    __slots__ = ("slot", "pid", "scratch", "uid", "cpu_base", "sock", "out_r", "err_r")

    def __init__(self, slot: int, pid: int, scratch: str, uid: Optional[int],
                 cpu_base: float, fds: List[int]):
        self.slot, self.pid, self.scratch = slot, pid, scratch
        self.uid, self.cpu_base = uid, cpu_base
        self.sock = socket.socket(fileno=fds[0])
        self.out_r, self.err_r = fds[1], fds[2]
        # made non-blocking now, while the child waits, not on the request's path
        self.sock.setblocking(False)
        os.set_blocking(self.out_r, False)
        os.set_blocking(self.err_r, False)

    def close(self) -> None:
        self.sock.close()
        os.close(self.out_r)
        os.close(self.err_r)


class WarmPool:
    """``size`` prepared children, made for the ceiling's ``network`` setting."""

    def __init__(self, size: int, network: bool):
        self.size = size
        self.network = bool(network)
        self.idle: Deque[WarmChild] = collections.deque()
        self.pids: frozenset = frozenset()
        self._done: List[int] = []      # released slots, not yet told to the zygote
        self._taken: Set[int] = set()   # slots taken by executions still undelivered

    def announce(self, slots, fds: List[int]) -> None:
        """Prepared children from the zygote: ``[[slot, pid, scratch, uid, cpu_base]...]``
        and three fds each."""
        for i, (slot, pid, scratch, uid, cpu_base) in enumerate(slots):
            self.idle.append(WarmChild(int(slot), int(pid), scratch, uid, float(cpu_base),
                                       fds[3 * i:3 * i + 3]))
        self.pids = frozenset(w.pid for w in self.idle)

    def serves(self, network: bool) -> bool:
        return bool(self.idle) and bool(network) == self.network

    def take(self) -> WarmChild:
        """The longest-waiting idle child (call :meth:`serves` first)."""
        child = self.idle.popleft()
        self.pids = frozenset(w.pid for w in self.idle)
        self._taken.add(child.slot)
        return child

    def forget(self, slot: int) -> None:
        """An idle child died (or was killed): drop it."""
        for child in list(self.idle):
            if child.slot == slot:
                self.idle.remove(child)
                child.close()
                self.pids = frozenset(w.pid for w in self.idle)

    def release(self, slot: Optional[int]) -> None:
        """The execution in ``slot`` is delivered or has ended: it may be refilled."""
        if slot in self._taken:
            self._taken.discard(slot)
            self._done.append(slot)

    def to_report(self) -> List[int]:
        """Slots to tell the zygote about now (and forget): the released ones, and every
        taken one once half the pool is in use."""
        if not (self._done or self._taken):
            return []
        if len(self.idle) <= self.size // 2:  # running low: refill now
            self._done.extend(self._taken)
            self._taken.clear()
        done, self._done = self._done, []
        return done

    def wait_until(self, since: float, now: float, network: bool) -> Optional[float]:
        """When an execution that has waited since ``since`` should stop waiting for a
        prepared child and have one forked, or None to fork one now. With the pool empty
        the zygote is already forking replacements; a cold child forked now would
        compete with them and still have its whole isolation ahead of it."""
        if self.idle or not self.size or bool(network) != self.network:
            return None
        until = since + COLD_FALLBACK_WAIT
        return until if now < until else None

    def fds(self) -> frozenset:
        """The fds this process holds for idle children."""
        out = set()
        for w in list(self.idle):
            out.update((w.sock.fileno(), w.out_r, w.err_r))
        out.discard(-1)
        return frozenset(out)

    def drop_all(self) -> None:
        """Forget every idle child (the zygote kills them; we close our ends)."""
        while self.idle:
            self.idle.popleft().close()
        self.pids = frozenset()
        self._done = []
        self._taken.clear()
