"""The engine's side of the zygote: its messages, its death, its restart.

:class:`ZygoteLink` reads the control socket on the engine's thread — prepared
children to pool, forks and exits to apply to executions — and, when the zygote
dies, ends every execution in flight exactly once (``sandbox_error``) and restarts
it with backoff, without ever blocking the loop: a restart is a timer, its hello
an event. When no attempt is left the sandbox is broken: queued work ends with
``sandbox_error`` and new work is refused.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import time
from typing import List, Optional, Tuple, Union

from mistral_sandbox.runner import control, outcome
from mistral_sandbox.runner.errors import SandboxError
from mistral_sandbox.runner.execution import Execution, State
from mistral_sandbox.runner.intake import Intake
from mistral_sandbox.runner.warm_pool import WarmPool
from mistral_sandbox.runner.zygote_client import ZygoteClient

LOG = logging.getLogger(__name__)


class ZygoteLink:
    def __init__(self, client: ZygoteClient, pool: WarmPool, intake: Intake):
        self.client = client
        self.pool = pool
        self.intake = intake
        self.engine = None
        self.broken = False
        self.ready = client.ready  # the zygote said hello and serves (mirrors the client's)

    def attach(self, engine) -> None:
        """Start watching the (started) zygote's control socket in ``engine``'s loop."""
        self.engine = engine
        self.client.on_backlog = self._watch_writable
        engine.watchdog.zygote_started(self.client.info, engine.settings.ceiling)
        engine.sel.register(self.client.ctl, selectors.EVENT_READ, self._on_ctl)

    def _watch_writable(self, backlog: bool) -> None:
        """Messages wait in the client's outbox: also watch for writability (or no more)."""
        if self.client.ctl is not None and self.ready:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if backlog else 0)
            self.engine.sel.modify(self.client.ctl, events, self._on_ctl)

    def send(self, msg: dict) -> bool:
        return self.client.send(msg)

    def fork_cold(self, ex: Execution) -> Union[Tuple[socket.socket, int, int], str]:
        """Have the zygote fork a child for ``ex``: our ends of its channel and output
        pipes, or why not (a text)."""
        opened: List = []
        try:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            opened += [parent, child]
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            opened += [out_r, out_w]
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            opened += [err_r, err_w]
        except OSError as exc:  # e.g. EMFILE: an outcome, and nothing leaked
            _close(opened)
            return "cannot create the child's channel: %s" % exc
        msg = control.message(control.FORK, id=ex.id, network=bool(ex.limits.network))
        ok = self.client.send(msg, [child.fileno(), out_w, err_w])
        _close([child, out_w, err_w])  # (the outbox holds its own copies if it queued)
        if not ok:
            _close([parent, out_r, err_r])
            return "cannot reach the zygote: it is not running"
        parent.setblocking(False)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        return parent, out_r, err_r

    # ------------------------------------------------------------ messages

    def _on_ctl(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.client.flush()
        while self.ready:
            try:
                msg, fds = control.recv(self.client.ctl, control.FDS_PER_CHILD *
                                        control.WARM_PER_MESSAGE)
            except BlockingIOError:
                return
            except (OSError, control.ControlError) as exc:
                self._died("control channel error: %s" % exc)
                return
            if not msg:
                self._died("control channel closed")
                return
            self._on_message(msg, fds)

    def _on_message(self, msg: dict, fds: List[int]) -> None:
        op, engine = msg["op"], self.engine
        if op == control.WARM and len(fds) == control.FDS_PER_CHILD * len(msg["slots"]):
            self.pool.announce(msg["slots"], fds)
            return
        control.close_all(fds)
        if op == control.EXIT and "slot" in msg:
            ex = engine.by_slot.pop(msg["slot"], None)
            if ex is None:  # an idle prepared child died (or was killed): forget it
                self.pool.forget(msg["slot"])
            else:
                engine.finish(ex, msg)
            return
        ex = engine.running.get(msg.get("id"))
        if ex is None:
            return
        if op == control.FORKED:
            engine.forked(ex, msg["pid"], msg["scratch"], msg["uid"], msg["cpu_base"])
        elif op == control.FORK_FAILED:
            ex.kill_reason = "sandbox_error"
            ex.kill_message = "the zygote could not fork a child: %s" % msg["error"]
            engine.finish(ex, None)
        elif op == control.EXIT:
            engine.finish(ex, msg)

    # ------------------------------------------------------------ death and restart

    def _died(self, why: str) -> None:
        """Finish every execution in flight exactly once, then restart (later). Its
        children die with it (parent-death signal); the next zygote sweeps the uids it
        claims, so nothing of this generation survives."""
        LOG.error("zygote died: %s", why)
        engine = self.engine
        for ex in list(engine.running.values()):
            engine.drain(ex)  # a reply already sent stands: the action did run
            if ex.reply is None:
                ex.kill_reason = ex.kill_reason or "sandbox_error"
                ex.kill_message = ex.kill_message or "the zygote died (%s) during the " \
                    "execution" % why
            engine.finish(ex, None)
        engine.by_slot.clear()
        self._stop()
        self.client.remove_generations()
        if not self.intake.closed or len(self.intake):  # (queued work still to be run)
            self._schedule(time.monotonic())

    def _schedule(self, now: float) -> None:
        if not self.client.schedule_restart(now):
            self.break_down("the sandbox is broken: the zygote could not be restarted (%s)"
                            % (self.client.last_error or "no reason given"))

    def timeout(self, now: float) -> Optional[float]:
        return self.client.timeout(now)

    def tick(self, now: float) -> None:
        """Start a restart attempt that is due; fail one whose hello is late."""
        client = self.client
        if client.retry_at is not None and now >= client.retry_at:
            client.retry_at = None
            try:
                client.spawn()
            except SandboxError as exc:
                self._attempt_failed(exc)
                return
            self.engine.sel.register(client.ctl, selectors.EVENT_READ, self._on_hello)
        elif client.hello_deadline is not None and now >= client.hello_deadline:
            self._attempt_failed(SandboxError("the zygote did not say hello in time"))

    def _on_hello(self, _mask: int) -> None:
        client = self.client
        try:
            client.take_hello()
        except BlockingIOError:
            return
        except SandboxError as exc:
            self._attempt_failed(exc)
            return
        client.restarts += 1
        self.ready = True
        self.engine.watchdog.zygote_started(client.info, self.engine.settings.ceiling)
        LOG.warning("zygote restarted (generation %d)", client.generation)
        self.engine.sel.modify(client.ctl, selectors.EVENT_READ, self._on_ctl)

    def _attempt_failed(self, error: SandboxError) -> None:
        self.client.failed_attempts += 1
        LOG.error("zygote restart %d failed: %s", self.client.failed_attempts, error)
        self.client.last_error = str(error)
        self._stop(kill=True)
        if not self.intake.closed or len(self.intake):
            self._schedule(time.monotonic())

    def break_down(self, message: str) -> None:
        """Stop for good: refuse new work, end every queued execution with ``message``."""
        self.broken = True
        for ex in self.intake.drain(message):
            ex.advance(State.EXITED)
            if ex.future.running() or ex.future.set_running_or_notify_cancel():
                self.engine.resolve(ex, outcome.without_run(ex, "sandbox_error", message))
            else:
                self.engine.resolve(ex, None)

    def _stop(self, kill: bool = False) -> None:
        self.ready = False
        self.pool.drop_all()
        if self.client.ctl is not None and self.engine is not None:
            try:
                self.engine.sel.unregister(self.client.ctl)
            except (KeyError, ValueError):
                pass
        self.client.stop(kill)

    def close(self) -> None:
        """The engine stops: stop the zygote, remove our directories."""
        self._stop()


def _close(items) -> None:
    for item in items:
        if isinstance(item, socket.socket):
            item.close()
        else:
            os.close(item)
