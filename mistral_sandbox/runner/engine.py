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

import logging
import selectors
import shutil
import socket
import time
from typing import Dict, Optional

from mistral_sandbox.runner import control, linux, outcome
from mistral_sandbox.runner.execution import Execution, State
from mistral_sandbox.runner.intake import Intake
from mistral_sandbox.runner.nested import NestedCalls
from mistral_sandbox.runner.settings import SandboxSettings
from mistral_sandbox.runner.warm_pool import WarmPool
from mistral_sandbox.runner.watchdog import Watchdog

LOG = logging.getLogger(__name__)


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

    def __init__(self, settings: SandboxSettings, intake: Intake, pool: WarmPool, link,
                 broker=None):
        self.settings = settings
        self.nested = NestedCalls(self, broker)
        self.intake = intake
        self.pool = pool
        self.link = link  # ZygoteLink
        self.sel = selectors.DefaultSelector()
        self.running: Dict[int, Execution] = {}
        self.by_slot: Dict[int, Execution] = {}
        self.watchdog = Watchdog()
        self._waker = Waker()
        self.sel.register(self._waker.reader, selectors.EVENT_READ, self._waker.drain)
        self._cold_wait_until: Optional[float] = None

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
        due = self.watchdog.next_due()
        timeout = None if due == float("inf") else max(0.0, due - now)
        if not link.ready:  # a restart is pending
            timeout = _earliest(timeout, link.timeout(now))
        if self._cold_wait_until is not None:
            timeout = _earliest(timeout, max(0.0, self._cold_wait_until - now))
        for key, mask in self.sel.select(timeout):
            key.data(mask)
        now = time.monotonic()
        if self.watchdog.next_due() <= now:
            for ex, reason, message in self.watchdog.due(now, self.running):
                self.kill(ex, reason, message)
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

    # ------------------------------------------------------------ starting

    def _dispatch(self) -> None:
        self._cold_wait_until = None
        intake, pool = self.intake, self.pool
        busy = sum(1 for ex in self.running.values() if ex.parent is None)  # (not nested)
        while len(intake) and busy < self.settings.max_workers and self.link.ready:
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
            busy += 1
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
            ex.slot, ex.pid, ex.scratch, ex.uid, ex.cpu_base = \
                w.slot, w.pid, w.scratch, w.uid, w.cpu_base
            problem = self.watchdog.apply_tree_limits(ex)
            if problem is not None and self._tree_limits_required():
                w.close()  # (EOF: the prepared child exits; its slot is refilled)
                self.pool.release(w.slot)
                ex.advance(State.EXITED)
                self.resolve(ex, outcome.without_run(ex, "sandbox_error", problem))
                return
            if problem is not None:
                ex.notes.append(problem)
            self.by_slot[w.slot] = ex
            self._begin(ex, w.sock, w.out_r, w.err_r)
            return
        ends = self.link.fork_cold(ex)
        if isinstance(ends, str):
            ex.advance(State.EXITED)
            self.resolve(ex, outcome.without_run(ex, "sandbox_error", ends))
            return
        # (with cgroups the request waits for the child's uid: see forked)
        self._begin(ex, *ends, hold=self.watchdog.tree is not None)

    def start_now(self, ex: Execution) -> None:
        """Start ``ex`` at once, outside ``max_workers`` (a nested call: its caller waits)."""
        if not self.link.ready:
            ex.advance(State.EXITED)
            return self.resolve(ex, outcome.without_run(ex, "sandbox_error",
                                                        "the zygote is restarting"))
        self._start(ex, bool(ex.limits.network))

    def forked(self, ex: Execution, pid: int, scratch: str, uid, cpu_base: float) -> None:
        """The zygote forked ``ex``'s child: write the request once its cgroup has the
        execution's limits."""
        ex.pid, ex.scratch, ex.uid, ex.cpu_base = pid, scratch, uid, cpu_base
        if not ex.io.frame or ex.written_request:
            return
        problem = self.watchdog.apply_tree_limits(ex)
        if problem is not None and self._tree_limits_required():
            self.kill(ex, "sandbox_error", problem)
            return
        if problem is not None:
            ex.notes.append(problem)
        self.watchdog.started(ex, time.monotonic())
        ex.written_request = True
        ex.io.write_request(self.sel, lambda m, ex=ex: self.on_channel(ex, m), force=True)

    def _tree_limits_required(self) -> bool:
        return self.settings.isolation.get("cgroup") == "required"

    def _begin(self, ex: Execution, sock: socket.socket, out_r: int, err_r: int,
               hold: bool = False) -> None:
        now = time.monotonic()
        ex.start(now)
        self.running[ex.id] = ex
        ex.written_request = not hold
        if not hold:
            self.watchdog.started(ex, now)
        ex.io.attach(self.sel, sock, out_r, err_r, lambda m, ex=ex: self.on_channel(ex, m),
                     lambda m, ex=ex: self._on_output(ex, 1),
                     lambda m, ex=ex: self._on_output(ex, 2), hold=hold)

    # ------------------------------------------------------------ a child's ends

    def on_channel(self, ex: Execution, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            ex.io.write_request(self.sel, lambda m, ex=ex: self.on_channel(ex, m))
        if mask & selectors.EVENT_READ and self._read_channel(ex):
            self._maybe_deliver(ex)

    def _read_channel(self, ex: Execution) -> bool:
        """Read and handle what the child sent; True once the channel reached EOF."""
        eof, broke = ex.read_channel(self.sel)
        if broke:
            self._send_kill(ex)
        elif ex.pending_call is not None:
            self.nested.answer(ex)
        return eof

    def _on_output(self, ex: Execution, which: int) -> None:
        if self._read_output(ex, which):
            self._maybe_deliver(ex)

    def _read_output(self, ex: Execution, which: int) -> bool:
        """Read stdout (1) or stderr (2) into its tail; True once it reached EOF."""
        eof, over = ex.read_output(self.sel, which)
        if over:
            self._send_kill(ex)
        return eof

    def kill(self, ex: Execution, reason: str, message: str) -> None:
        """End ``ex`` for ``reason``: the zygote kills its whole process tree."""
        if ex.condemn(reason, message):  # (a dead zygote killed it already)
            self._send_kill(ex)

    def _send_kill(self, ex: Execution) -> None:
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
        self.watchdog.delivered(ex, time.monotonic())

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
        self.nested.caller_ended(ex)
        self.running.pop(ex.id, None)
        self.watchdog.finished(ex, self.running)
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
            if ex.parent is not None:  # nested: its caller waits, it takes no worker
                self.start_now(ex)
            elif not self.intake.put_first(ex):
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
