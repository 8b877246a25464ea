"""One execution as the parent sees it: its state, and what its child said.

An :class:`Execution` moves through :class:`State`::

    QUEUED -> STARTING -> RUNNING -> DELIVERED -> EXITED
                 |           |                      ^
                 |           +----------------------+  (outcome at the exit report)
                 +-> QUEUED  (its prepared child died before starting it: once)

Once queued it is touched only by the engine's I/O thread. It validates the order
of its child's messages (:meth:`on_message`; a violation raises ``ProtocolError``)
and records the kill the parent ordered; :func:`~mistral_sandbox.runner.outcome.build`
turns it into the outcome.
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

from mistral_sandbox.api.context import REDACTED
from mistral_sandbox.runner import protocol
from mistral_sandbox.runner.child_io import TAIL_BYTES, ChildIO

LOG = logging.getLogger(__name__)
# Tenant log records go to one logger, the action named in the message: a logger per
# action name would be kept forever, one more per dotted prefix of a name a tenant chose
ACTION_LOGGER = "mistral_sandbox.action"
ACTION_NAME_SHOWN = 200  # characters of the action's name in a host log line
_ACTION_LOG = logging.getLogger(ACTION_LOGGER)
HOST_LOG_LEVEL = logging.WARNING  # the highest level a tenant's record gets on the host
# Reads per readiness event: a child that writes without pause must not keep the I/O
# thread from its deadlines and the other executions (the selector reports it again).
READS_PER_EVENT = 2
LOGGER_NAME_MAX = 200  # characters of a record's logger name kept
LOG_RECORD_OVERHEAD = 32  # bytes a record costs beyond its text and logger name
# Log records (kept or dropped) past max(LOG_FLOOD_FACTOR x max_log_bytes,
# LOG_FLOOD_MIN) end the execution in output_limit: decoding them costs the parent.
LOG_FLOOD_FACTOR = 8
LOG_FLOOD_MIN = 8 * 1024 ** 2
# Control characters in a tenant's text become escapes in the host's log: a record
# cannot start a forged line of its own.
_ESCAPES = {c: "\\x%02x" % c for c in list(range(32)) + [127]}
_ESCAPES.update({10: "\\n", 13: "\\r", 9: "\\t"})


class _LogFlood(Exception):
    """The child sent far more log records than max_log_bytes lets through."""


class State:
    """One state of an execution. (Plain objects compared by identity, not an Enum:
    the engine tests states on every message, and Enum members hash in Python.)"""

    __slots__ = ("value", "next")

    def __init__(self, value: str):
        self.value = value
        self.next: tuple = ()

    def __repr__(self) -> str:
        return "State.%s" % self.value.upper()

    QUEUED: "State"
    STARTING: "State"
    RUNNING: "State"
    DELIVERED: "State"
    EXITED: "State"


State.QUEUED = State("queued")        # waiting for a worker
State.STARTING = State("starting")    # handed to a child; no tenant code has run yet
State.RUNNING = State("running")      # the child reported ready: the action may run
State.DELIVERED = State("delivered")  # outcome delivered; waiting for the exit report
State.EXITED = State("exited")        # reaped, or ended without a child: final
State.QUEUED.next = (State.STARTING, State.EXITED)
State.STARTING.next = (State.RUNNING, State.DELIVERED, State.EXITED, State.QUEUED)
State.RUNNING.next = (State.DELIVERED, State.EXITED)
State.DELIVERED.next = (State.EXITED,)


class Execution:
    """``ref`` (resolved), the encoded ``request`` frame, the caller's ``future``, the
    effective ``limits`` with the ``notes`` of their clamping, the action execution id
    ``aeid`` and the ``token`` to redact from every text."""

    def __init__(self, exec_id: int, ref, request: bytes, future: concurrent.futures.Future,
                 limits, notes: List[str], aeid: Optional[str], token: Optional[str],
                 max_frame: int = protocol.DEFAULT_MAX_FRAME,
                 limit_sources: Optional[Mapping[str, str]] = None):
        self.id = exec_id
        self.ref = ref
        self.future = future
        self.limits = limits
        self.notes = notes
        self.limit_sources = limit_sources or {}
        self.aeid = aeid
        self.token = token
        # kept until the child reports ready, to run it again if the prepared child it
        # was handed to dies before that (no tenant code ran): at most once
        self.request: Optional[bytes] = request
        self.attempts = 0
        max_result = limits.max_result_bytes
        self._max_reply = max_frame if max_result is None else \
            min(max_frame, max(max_result + 64 * 1024, protocol.ERROR_FRAME_MAX + 4096))
        self._tail = min(limits.max_output_bytes or TAIL_BYTES, TAIL_BYTES)
        self.cold_wait_since: Optional[float] = None  # waiting for a prepared child since
        self.state = State.QUEUED
        # nested calls (runner/nested.py): the context the child got, how deep this
        # execution is, the calls it made, the one it waits for, the caller it serves
        self.context: Optional[Dict[str, Any]] = None
        self.depth = 0
        self.calls_made = 0
        self.pending_call: Optional[Dict[str, Any]] = None
        self.nested: Optional["Execution"] = None
        self.parent: Optional["Execution"] = None
        self._reset()

    def _reset(self) -> None:
        """Forget every trace of a child (a new execution, or one run again)."""
        self.io = ChildIO(self.request or b"", self._max_reply, self._tail)
        self.pid: Optional[int] = None
        self.slot: Optional[int] = None  # the prepared child's slot, if it runs in one
        self.uid: Optional[int] = None   # its sandbox uid (and cgroup), once known
        self.cpu_base = 0.0              # its cgroup's CPU time before it started
        self.written_request = False     # (a cold child's waits for its uid's cgroup)
        self.scratch: Optional[str] = None
        self.started = 0.0
        self.deadline: Optional[float] = None
        self.isolation: Dict[str, Any] = {}
        self.reply: Optional[Dict[str, Any]] = None
        self.logs: List[Dict[str, Any]] = []
        self.log_bytes = 0     # of the records kept
        self.log_received = 0  # of every record, kept or dropped
        self.logs_dropped = 0
        self.logs_capped = 0  # records above HOST_LOG_LEVEL, logged at it on the host
        self.kill_reason: Optional[str] = None
        self.kill_message = ""
        self.kill_sent = False

    def advance(self, state: State) -> None:
        if state not in self.state.next:
            raise RuntimeError("execution %d cannot go from %s to %s"
                               % (self.id, self.state.value, state.value))
        self.state = state

    def start(self, started: float) -> None:
        """Handed to a child (the engine attaches ``io`` to its ends)."""
        self.advance(State.STARTING)
        self.attempts += 1
        self.started = started
        if self.limits.wall_time is not None:
            self.deadline = started + self.limits.wall_time

    def requeue(self) -> None:
        """Its prepared child died before starting it: back to the queue, afresh."""
        self.advance(State.QUEUED)
        self._reset()

    def may_run_again(self) -> bool:
        """True if the child died before starting the action, from causes not ours to
        blame on the action (no reply, no kill), and this was the first attempt."""
        return (self.state is State.STARTING and self.slot is not None and self.reply is None
                and not self.kill_reason and self.request is not None and self.attempts == 1)

    @property
    def delivered(self) -> bool:
        return self.state in (State.DELIVERED, State.EXITED)

    def redact(self, text: Optional[str]) -> Optional[str]:
        if text and self.token:
            return text.replace(self.token, REDACTED)
        return text

    def condemn(self, reason: str, message: str) -> bool:
        """The parent ends this execution (``reason``); True if the zygote must still be
        asked to kill it. A reply already in hand stands, unless the child broke the
        protocol after it."""
        if self.kill_reason is None and (self.reply is None or reason == "protocol_error"):
            self.kill_reason, self.kill_message = reason, message
        if self.kill_sent:
            return False
        self.kill_sent = True
        return True

    def read_channel(self, sel) -> Tuple[bool, bool]:
        """Read and handle what the child sent: (EOF reached, the child broke the
        protocol and the zygote must be asked to kill it)."""
        io, broke = self.io, False
        for _ in range(READS_PER_EVENT):
            if not io.channel_open:
                break
            data = io.recv()
            if data is None:
                return False, broke
            if not data:
                io.close_channel(sel)
                if self.reply is None and not self.kill_reason:
                    try:
                        io.reader.eof()
                    except protocol.ProtocolError as exc:
                        broke |= self.condemn("protocol_error", "the child broke the "
                                              "protocol: %s" % exc)
                return True, broke
            if self.kill_reason:
                continue  # condemned already: just drain
            try:
                for msg in io.reader.feed(data):
                    self.on_message(protocol.validate(msg))
            except _LogFlood as exc:
                broke |= self.condemn("output_limit", str(exc))
            except protocol.ProtocolError as exc:
                broke |= self.condemn("protocol_error", "the child broke the protocol: %s"
                                      % exc)
            except Exception as exc:  # a validator gap must cost this execution, not the loop
                LOG.exception("unexpected error handling execution %d's messages", self.id)
                broke |= self.condemn("protocol_error", "the child sent a message the runner "
                                      "could not handle: %s: %s" % (type(exc).__name__, exc))
        return False, broke

    def read_output(self, sel, which: int) -> Tuple[bool, bool]:
        """Read stdout (1) or stderr (2) into its tail: (EOF reached, over the output
        limit and the zygote must be asked to kill it)."""
        io, over = self.io, False
        cap = self.limits.max_output_bytes
        for _ in range(READS_PER_EVENT):
            data = io.read_output(which)
            if data is None:
                return False, over
            if not data:
                io.close_output(sel, which)
                return True, over
            if cap is not None and io.output_bytes > cap:
                over |= self.condemn("output_limit", "the action wrote more than %d bytes to "
                                     "stdout/stderr" % cap)
        return False, over

    def on_message(self, msg: Dict[str, Any]) -> None:
        """A validated message from the child; ProtocolError if it is out of order."""
        mtype = msg["type"]
        if mtype == "log":
            self._on_log(msg)
            return
        if "id" in msg and msg["id"] != self.id:
            raise protocol.ProtocolError("message for execution %r on the channel of %r"
                                         % (msg["id"], self.id))
        if mtype == "ready":
            if self.isolation:
                raise protocol.ProtocolError("second ready message")
            self.isolation = msg["isolation"]
            self.request = None  # it started: never run again
            self.advance(State.RUNNING)
        elif mtype in ("result", "error"):
            if self.reply is not None:
                raise protocol.ProtocolError("second %s message" % mtype)
            if not self.isolation and mtype == "result":
                raise protocol.ProtocolError("result before the child reported ready")
            if not self.isolation and msg.get("isolation"):
                self.isolation = msg["isolation"]  # a sandbox_error: steps applied so far
            self.reply = msg
        elif mtype == "call":
            if self.state is not State.RUNNING or self.reply is not None:
                raise protocol.ProtocolError("call message outside the running action")
            if self.pending_call is not None or self.nested is not None:
                raise protocol.ProtocolError("call message while another call is pending")
            self.pending_call = msg  # (the engine answers it: see runner/nested.py)

    def _on_log(self, msg: Dict[str, Any]) -> None:
        """Keep the record for the outcome (bounded by max_log_bytes), and log it on the
        host under the action's own logger, at most at HOST_LOG_LEVEL: a tenant must not
        page an operator with CRITICAL records."""
        name = msg.get("logger")
        cost = len(msg["msg"]) + (len(name) if name else 0) + LOG_RECORD_OVERHEAD
        self.log_received += cost
        cap = self.limits.max_log_bytes
        if cap is not None:
            if self.log_received > max(LOG_FLOOD_FACTOR * cap, LOG_FLOOD_MIN):
                raise _LogFlood("the action sent more than %d bytes of log records "
                                "(max_log_bytes=%d)" % (self.log_received - cost, cap))
            if self.log_bytes + cost > cap:
                self.logs_dropped += 1
                return
        self.log_bytes += cost
        text = self.redact(msg["msg"])
        level = msg["level"]
        self.logs.append({"level": level, "logger": self.redact(
            name[:LOGGER_NAME_MAX] if name else name), "msg": text})
        if level > HOST_LOG_LEVEL:
            self.logs_capped += 1
            level = HOST_LOG_LEVEL
        logger = _ACTION_LOG
        if logger.isEnabledFor(level):
            logger.log(level, "[#%d %s] %s", self.id,
                       self.ref.name[:ACTION_NAME_SHOWN].translate(_ESCAPES),
                       text.translate(_ESCAPES))
