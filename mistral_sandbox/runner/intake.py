"""Submitted executions waiting for a worker: bounded, cancellable, closable.

Callers put executions in (:meth:`Intake.put`, which raises ``Overloaded`` at once
when full), the engine's I/O thread takes them out. Thread-safe; nothing here
blocks. A queued execution that is cancelled leaves the queue at once, freeing its
place.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import Dict, List, Optional

from mistral_sandbox.runner.errors import Overloaded, SandboxError
from mistral_sandbox.runner.execution import Execution


class Intake:
    """At most ``max_queue`` executions waiting (first in, first out)."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.lock = threading.Lock()
        self._queue: "collections.OrderedDict[int, Execution]" = collections.OrderedDict()
        self._by_future: Dict[concurrent.futures.Future, Execution] = {}
        self._cancels: List[concurrent.futures.Future] = []
        self.closed = False     # no new work (shut down, or broken: closed_why says)
        self.closed_why = ""
        self.kill_all = False   # running executions are to be killed
        self.dropped = False    # queued executions were cancelled by shutdown

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, ex: Execution) -> None:
        with self.lock:
            if self.closed:
                raise SandboxError(self.closed_why)
            if len(self._queue) >= self.max_queue:
                raise Overloaded("the sandbox queue is full (%d executions waiting, "
                                 "max_queue=%d)" % (len(self._queue), self.max_queue))
            self._queue[ex.id] = ex
            self._by_future[ex.future] = ex

    def put_first(self, ex: Execution) -> bool:
        """Back at the head of the queue (run again, or waiting for a prepared child);
        False once a shutdown has cancelled what was queued (the caller ends it)."""
        with self.lock:
            if self.dropped:
                return False
            self._queue[ex.id] = ex
            self._queue.move_to_end(ex.id, last=False)
            return True

    def pop(self) -> Optional[Execution]:
        with self.lock:
            if not self._queue:
                return None
            return self._queue.popitem(last=False)[1]

    def remove(self, ex: Execution) -> bool:
        """Take ``ex`` out of the queue; False if it was not queued."""
        with self.lock:
            return self._queue.pop(ex.id, None) is not None

    def cancel(self, future: concurrent.futures.Future) -> bool:
        """Cancel a queued execution (its place is freed at once) or ask the engine to
        kill a running one (:meth:`take_cancels`). False if it is over or not ours."""
        if future.cancel():  # (outside the lock: it runs the future's callbacks)
            with self.lock:
                ex = self._by_future.pop(future, None)
                if ex is not None:
                    self._queue.pop(ex.id, None)
            return True
        with self.lock:
            if self._by_future.get(future) is None or future.done():
                return False
            self._cancels.append(future)
        return True

    @property
    def has_cancels(self) -> bool:
        return bool(self._cancels)

    def take_cancels(self) -> List[Execution]:
        """Executions whose cancellation the engine has to carry out."""
        with self.lock:
            cancels, self._cancels = self._cancels, []
            return [ex for ex in (self._by_future.get(f) for f in cancels) if ex is not None]

    def forget(self, ex: Execution) -> None:
        """``ex`` is resolved."""
        with self.lock:
            self._by_future.pop(ex.future, None)

    def close(self, cancel_queued: bool, kill_running: bool) -> List[Execution]:
        """Refuse new work; with ``cancel_queued`` also empty the queue: returns the
        executions whose future could not be cancelled (already running: queued to run
        again), to be resolved by the caller."""
        queued: List[Execution] = []
        with self.lock:
            if not self.closed:
                self.closed, self.closed_why = True, "the sandbox is shut down"
            self.kill_all = self.kill_all or kill_running
            if cancel_queued:
                self.dropped = True
                queued = list(self._queue.values())
                self._queue.clear()
                for ex in queued:
                    self._by_future.pop(ex.future, None)
        # (outside the lock: cancelling runs the futures' callbacks)
        return [ex for ex in queued if not ex.future.cancel()]

    def drain(self, why: str) -> List[Execution]:
        """Close and empty the queue (the sandbox is broken: ``why``); what was queued."""
        with self.lock:
            self.closed, self.closed_why = True, why
            queued = list(self._queue.values())
            self._queue.clear()
            return queued
