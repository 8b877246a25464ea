"""The supervisor's I/O thread: one selector loop for every execution of a sandbox.

:class:`Engine` takes executions from the :class:`~.intake.Intake`, hands each to a
prepared child (or has the zygote fork one), writes its request, reads its frames
and output, enforces its wall time and output limit, kills it when needed, and
resolves its future with exactly one outcome — as soon as the child has replied and
closed its channel and outputs (nothing can change the outcome after that), or at
its exit report. The zygote's messages and its death are handled by
:class:`~.zygote_link.ZygoteLink`. No thread is created per execution.
"""

from __future__ import annotations

import heapq
import logging
import selectors
import shutil
import socket
import time
from typing import Dict, List, Optional, Tuple

from mistral_sandbox.runner import control, linux, outcome, protocol
from mistral_sandbox.runner.execution import Execution, State
from mistral_sandbox.runner.intake import Intake
from mistral_sandbox.runner.settings import SandboxSettings
from mistral_sandbox.runner.warm_pool import WarmPool

LOG = logging.getLogger(__name__)
EXIT_GRACE = 5.0  # seconds a delivered execution's processes get to exit


class Deadlines:
    """Wall-time deadlines of running executions (a heap; stale entries compacted)."""

    def __init__(self):
        self._heap: List[Tuple[float, int]] = []
        self._stale = 0
        self.next_due = float("inf")  # the earliest deadline

    def add(self, when: float, exec_id: int) -> None:
        heapq.heappush(self._heap, (when, exec_id))
        self.next_due = self._heap[0][0]

    def due(self, now: float) -> List[int]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[1])
        self.next_due = self._heap[0][0] if self._heap else float("inf")
        return out

    def timeout(self, now: float) -> Optional[float]:
        return max(0.0, self.next_due - now) if self._heap else None

    def finished(self, live) -> None:
        """A timed execution ended before its deadline; ``live``: the ids still running."""
        self._stale += 1
        if self._stale > 64 and self._stale > 2 * len(live):
            self._heap = [(d, i) for d, i in self._heap if i in live]
            heapq.heapify(self._heap)
            self.next_due = self._heap[0][0] if self._heap else float("inf")
            self._stale = 0


class Waker:
    """A socketpair that wakes the I/O thread's select from another thread."""

    def __init__(self):
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        try:
            self._writer.send(b"x")
        except OSError:  # (full: a wake-up is pending anyway)
            pass

    def drain(self, _mask: int) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


class Engine:
    """Runs the executions of one sandbox on its own I/O thread (:meth:`run`)."""

    def __init__(self, settings: SandboxSettings, intake: Intake, pool: WarmPool, link):
        self.settings = settings
        self.intake = intake
        self.pool = pool
        self.link = link  # ZygoteLink
        self.sel = selectors.DefaultSelector()
        self.running: Dict[int, Execution] = {}
        self.by_slot: Dict[int, Execution] = {}
        self.deadlines = Deadlines()
        self._waker = Waker()
        self.sel.register(self._waker.reader, selectors.EVENT_READ, self._waker.drain)
        self._cold_wait_until: Optional[float] = None
        self.killed_after_reply = 0

    # ------------------------------------------------------------ any thread

    def wake(self) -> None:
        """Wake the I/O thread (from any thread): there is work for it."""
        self._waker.wake()

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        """The I/O thread: until shut down and every execution has ended."""
        linux.set_thread_name(b"ms-sandbox-io")
        try:
            while self._turn():
                pass
        except BaseException:
            LOG.exception("sandbox I/O loop crashed")
            for ex in list(self.running.values()):
                ex.kill_reason, ex.kill_message = "sandbox_error", "the sandbox I/O loop crashed"
                self.finish(ex, None)
            self.link.break_down("the sandbox I/O loop crashed")
        finally:
            self.link.close()
            self.sel.close()
            self._waker.close()

    def _turn(self) -> bool:
        """One turn of the loop; False when it is time to stop. (Every turn runs for
        every event of every execution: what it does when there is nothing to do is
        kept to a few attribute reads.)"""
        intake, link = self.intake, self.link
        if intake.closed or intake.kill_all or intake.has_cancels:  # (read unlocked: each
            if not self._take_orders():                               # sets, then wakes us)
                return False
        self._dispatch()
        now = time.monotonic()
        timeout = self.deadlines.timeout(now)
        if not link.ready:  # a restart is pending
            timeout = _earliest(timeout, link.timeout(now))
        if self._cold_wait_until is not None:
            timeout = _earliest(timeout, max(0.0, self._cold_wait_until - now))
        for key, mask in self.sel.select(timeout):
            key.data(mask)
        now = time.monotonic()
        if self.deadlines.next_due <= now:
            self._expire(now)
        if not link.ready:
            link.tick(now)
        self._tell_taken()
        return True

    def _take_orders(self) -> bool:
        """Carry out shutdown, kill-all and cancellations; False when it is time to stop."""
        intake = self.intake
        with intake.lock:
            if intake.closed and not len(intake) and not self.running:
                return False
            kill_all = intake.kill_all
        if kill_all:
            for ex in list(self.running.values()):
                self.kill(ex, "cancelled", "the sandbox was shut down during the run")
        for ex in intake.take_cancels():
            self._cancel(ex)
        return True

    def _cancel(self, ex: Execution) -> None:
        if ex.id in self.running:
            self.kill(ex, "cancelled", "the execution was cancelled")
        elif ex.attempts and self.intake.remove(ex):  # queued to run again
            ex.advance(State.EXITED)
            self.resolve(ex, outcome.without_run(ex, "cancelled", "the execution was "
                                                 "cancelled"))

    def _expire(self, now: float) -> None:
        """Kill what reached its deadline — delivered or not: the wall time holds until
        the execution's whole tree has exited, and a delivered one gets EXIT_GRACE."""
        for exec_id in self.deadlines.due(now):
            ex = self.running.get(exec_id)
            if ex is None or ex.deadline is None or ex.deadline > now:
                continue
            if ex.delivered:
                if not ex.kill_sent:
                    self.killed_after_reply += 1
                    LOG.warning("execution %d had not exited %gs after its reply: killing "
                                "its processes", ex.id, EXIT_GRACE)
                self.kill(ex, "timeout", "the execution did not exit after its reply")
            else:
                self.kill(ex, "timeout", "the action exceeded its wall-time limit of %gs"
                          % ex.limits.wall_time)

    # ------------------------------------------------------------ starting

    def _dispatch(self) -> None:
        self._cold_wait_until = None
        intake, pool = self.intake, self.pool
        while len(intake) and len(self.running) < self.settings.max_workers and \
                self.link.ready:
            ex = intake.pop()
            if ex is None:
                break
            network = bool(ex.limits.network)
            if not pool.serves(network) and not ex.future.done() and \
                    self._waits_for_warm(ex, network):
                if not intake.put_first(ex):  # (its future stays pending: cancellable)
                    self._shut_out(ex)
                break
            # the first attempt marks the future running (a cancelled one ends here);
            # an execution run again has done so already
            if not ex.attempts and not ex.future.set_running_or_notify_cancel():
                ex.advance(State.EXITED)
                self.resolve(ex, None)
                continue
            self._start(ex, network)
        self._tell_taken()

    def _waits_for_warm(self, ex: Execution, network: bool) -> bool:
        now = time.monotonic()
        if ex.cold_wait_since is None:
            ex.cold_wait_since = now
        self._cold_wait_until = self.pool.wait_until(ex.cold_wait_since, now, network)
        return self._cold_wait_until is not None

    def _start(self, ex: Execution, network: bool) -> None:
        """Hand ``ex`` to a prepared child, or have the zygote fork one for it."""
        if self.pool.serves(network):
            w = self.pool.take()
            ex.slot, ex.pid, ex.scratch = w.slot, w.pid, w.scratch
            self.by_slot[w.slot] = ex
            self._begin(ex, w.sock, w.out_r, w.err_r)
            return
        ends = self.link.fork_cold(ex)
        if isinstance(ends, str):
            ex.advance(State.EXITED)
            self.resolve(ex, outcome.without_run(ex, "sandbox_error", ends))
            return
        self._begin(ex, *ends)

    def _begin(self, ex: Execution, sock: socket.socket, out_r: int, err_r: int) -> None:
        ex.start(time.monotonic())
        self.running[ex.id] = ex
        if ex.deadline is not None:
            self.deadlines.add(ex.deadline, ex.id)
        ex.io.attach(self.sel, sock, out_r, err_r, lambda m, ex=ex: self._on_channel(ex, m),
                     lambda m, ex=ex: self._on_output(ex, 1),
                     lambda m, ex=ex: self._on_output(ex, 2))

    # ------------------------------------------------------------ a child's ends

    def _on_channel(self, ex: Execution, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            ex.io.write_request(self.sel, lambda m, ex=ex: self._on_channel(ex, m))
        if mask & selectors.EVENT_READ and self._read_channel(ex):
            self._maybe_deliver(ex)

    def _read_channel(self, ex: Execution) -> bool:
        """Read and handle what the child sent; True once the channel reached EOF."""
        io = ex.io
        while io.channel_open:
            data = io.recv()
            if data is None:
                return False
            if not data:
                io.close_channel(self.sel)
                if ex.reply is None and not ex.kill_reason:
                    try:
                        io.reader.eof()
                    except protocol.ProtocolError as exc:
                        self.kill(ex, "protocol_error", "the child broke the protocol: %s"
                                  % exc)
                return True
            if ex.kill_reason == "protocol_error":
                continue  # condemned already: just drain
            try:
                for msg in io.reader.feed(data):
                    ex.on_message(protocol.validate(msg))
            except protocol.ProtocolError as exc:
                self.kill(ex, "protocol_error", "the child broke the protocol: %s" % exc)
            except Exception as exc:  # a validator gap must cost this execution, not the loop
                LOG.exception("unexpected error handling execution %d's messages", ex.id)
                self.kill(ex, "protocol_error", "the child sent a message the runner could "
                          "not handle: %s: %s" % (type(exc).__name__, exc))
        return False

    def _on_output(self, ex: Execution, which: int) -> None:
        if self._read_output(ex, which):
            self._maybe_deliver(ex)

    def _read_output(self, ex: Execution, which: int) -> bool:
        """Read stdout (1) or stderr (2) into its tail; True once it reached EOF."""
        io = ex.io
        cap = ex.limits.max_output_bytes
        while True:
            data = io.read_output(which)
            if data is None:
                return False
            if not data:
                io.close_output(self.sel, which)
                return True
            if cap is not None and io.output_bytes > cap:
                self.kill(ex, "output_limit", "the action wrote more than %d bytes to "
                          "stdout/stderr" % cap)

    def kill(self, ex: Execution, reason: str, message: str) -> None:
        """End ``ex`` for ``reason``: the zygote kills its whole process tree."""
        if ex.condemn(reason, message):  # (a dead zygote killed it already)
            self.link.send({"op": control.KILL, "slot": ex.slot} if ex.slot is not None
                           else {"op": control.KILL, "id": ex.id})

    # ------------------------------------------------------------ ending

    def _maybe_deliver(self, ex: Execution) -> None:
        """Resolve early: the reply is in hand and the child (with anything it started)
        closed its channel, stdout and stderr, so nothing can change the outcome. The
        execution keeps its worker until its exit report."""
        if self.settings.wait_exit or ex.state not in (State.STARTING, State.RUNNING) \
                or ex.reply is None or ex.kill_reason or not ex.io.all_closed:
            return
        ex.advance(State.DELIVERED)
        self.resolve(ex, outcome.build(ex, None))
        self.pool.release(ex.slot)
        # nothing of the action runs after its reply: its tree exits at once, or is
        # killed (and its worker freed) EXIT_GRACE later, whatever its wall time
        grace = time.monotonic() + EXIT_GRACE
        if ex.deadline is None or grace < ex.deadline:
            ex.deadline = grace
            self.deadlines.add(grace, ex.id)

    def drain(self, ex: Execution) -> None:
        """Read what the child has sent and written so far (nothing is delivered)."""
        self._read_channel(ex)
        self._read_output(ex, 1)
        self._read_output(ex, 2)

    def finish(self, ex: Execution, exit_report: Optional[dict]) -> None:
        """The child is gone (``exit_report``: the zygote's; None: the zygote died or
        never forked it): drain what it left, close its ends, free its worker, and
        resolve it unless delivered already — or queue it again, once, if its prepared
        child died before starting it."""
        if exit_report is not None:  # what it wrote before it died
            self.drain(ex)
        ex.io.close(self.sel)
        self.running.pop(ex.id, None)
        if ex.deadline is not None:
            self.deadlines.finished(self.running)
        if ex.slot is not None:
            self.by_slot.pop(ex.slot, None)
            self.pool.release(ex.slot)
        if exit_report is None and ex.scratch:  # the zygote died: nobody else removes it
            shutil.rmtree(ex.scratch, ignore_errors=True)
        if exit_report is not None and not self.intake.closed and ex.may_run_again():
            LOG.warning("execution %d: its prepared child (pid %s) died before starting it "
                        "(status %s); running it in a fresh child", ex.id, ex.pid,
                        exit_report.get("status"))
            ex.requeue()
            if not self.intake.put_first(ex):
                self._shut_out(ex)
            return
        delivered = ex.delivered
        ex.advance(State.EXITED)
        if not delivered:
            self.resolve(ex, outcome.build(ex, exit_report))

    def _shut_out(self, ex: Execution) -> None:
        """``ex`` cannot go back to the queue: a shutdown cancelled the queued work."""
        ex.advance(State.EXITED)
        if ex.future.cancel():
            self.resolve(ex, None)
        else:
            self.resolve(ex, outcome.without_run(
                ex, "cancelled", "the sandbox was shut down before the execution ran"))

    def resolve(self, ex: Execution, result: Optional[outcome.Outcome]) -> None:
        """Forget ``ex`` and complete its future (with ``result``; None: cancelled)."""
        self.intake.forget(ex)
        if result is not None:
            try:
                ex.future.set_result(result)
            except Exception:  # (InvalidStateError: resolved meanwhile)
                pass

    def _tell_taken(self) -> None:
        slots = self.pool.to_report()
        if slots:
            self.link.send({"op": control.TAKEN, "slots": slots})


def _earliest(*timeouts: Optional[float]) -> Optional[float]:
    given = [t for t in timeouts if t is not None]
    return min(given) if given else None
