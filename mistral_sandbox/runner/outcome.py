"""What an execution ends in: exactly one :class:`Outcome`.

``exit_reason`` is one of :data:`EXIT_REASONS`:

==============  ===============================================================
ok              the action returned (``result`` holds what it returned; an
                action may still return ``Result(error=...)``)
action_error    the action raised, returned something unserializable, or its
                process exited without returning a result
timeout         wall-time limit reached; the process tree was killed
cpu_limit       CPU-time limit reached
memory_limit    address-space or resident-set limit reached
output_limit    stdout/stderr or the result exceeded its size limit
killed          the process died from a signal nobody on our side sent
cancelled       the caller cancelled the running execution
protocol_error  the child broke the wire protocol (garbage, oversize frame,
                channel closed early)
load_error      the action could not be found, imported, or instantiated
                with the given parameters
sandbox_error   the sandbox itself failed (zygote died, isolation step failed)
==============  ===============================================================
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import time
from typing import Any, Dict, List, Optional, Tuple

from mistral_sandbox.api.types import Result

EXIT_REASONS = ("ok", "action_error", "timeout", "cpu_limit", "memory_limit", "output_limit",
                "killed", "cancelled", "protocol_error", "load_error", "sandbox_error")


@dataclasses.dataclass
class Usage:
    """Resources the execution's process used (seconds, bytes).

    ``source`` says who measured cpu and memory: ``"kernel"`` (the zygote's
    ``wait4`` once the process was reaped: authoritative) or ``"child"`` (the
    runner inside the sandboxed process, right after the action returned: what
    an early-delivered outcome carries; an action that tampers with its own
    runtime can misstate it). ``wall`` is always measured by the parent. ``tree_cpu``
    and ``tree_max_rss``: the whole process tree's, from its cgroup, when an
    execution ended by a signal or out of memory (None otherwise).
    """

    wall: float = 0.0
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    max_rss: int = 0
    source: str = "kernel"
    tree_cpu: Optional[float] = None     # every process of the execution (its cgroup)
    tree_max_rss: Optional[int] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class AsyncHandle:
    """An asynchronous action started; its result arrives later, keyed by
    ``action_execution_id``, through Mistral's API (or the executor's
    completion path). ``expires_at`` (epoch seconds) is when the runner stops
    expecting it."""

    action_execution_id: str
    action: str
    started_at: float
    expires_at: Optional[float] = None

    def expired(self, now: Optional[float] = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Outcome:
    """The single end of one execution.

    ``limits``: the limits it ran under (human units); ``limit_sources``: where each
    came from (``default``, ``ceiling``, ``tenant <id>``, ``action <pattern>``,
    ``request``; see :mod:`~mistral_sandbox.runner.limits_policy`); ``notes``: among
    others, each requested value that was clamped and by which layer.
    """

    exit_reason: str
    result: Optional[Result] = None
    message: str = ""
    usage: Usage = dataclasses.field(default_factory=Usage)
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    exit_status: Optional[int] = None
    signal: Optional[int] = None
    execution_id: int = 0
    action: str = ""
    action_execution_id: Optional[str] = None
    limits: Dict[str, Any] = dataclasses.field(default_factory=dict)
    limit_sources: Dict[str, str] = dataclasses.field(default_factory=dict)
    notes: List[str] = dataclasses.field(default_factory=list)
    logs: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    isolation: Dict[str, Any] = dataclasses.field(default_factory=dict)
    error_type: Optional[str] = None
    traceback: Optional[str] = None
    async_handle: Optional[AsyncHandle] = None

    @property
    def ok(self) -> bool:
        """True if the action ran to completion (``exit_reason == "ok"``)."""
        return self.exit_reason == "ok"

    def __repr__(self) -> str:
        return "Outcome(%s, action=%r, result=%r, message=%r)" % (
            self.exit_reason, self.action, self.result, self.message[:200])

    def to_dict(self) -> dict:
        """Plain, JSON-friendly data (bytes shown as text, datetimes as ISO 8601)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["result"] = self.result.to_dict() if self.result is not None else None
        d["usage"] = self.usage.to_dict()
        d["async_handle"] = self.async_handle.to_dict() if self.async_handle else None
        d["ok"] = self.ok
        return _jsonable(d)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, datetime.datetime):
        return v.isoformat()
    return v


# ---------------------------------------------------------------- building an outcome
#
# Pure functions of what the parent saw of an execution (``ex``: its reply, the kill it
# ordered, its isolation report, output tails, logs) and of the zygote's exit report.

ASYNC_TTL = 24 * 3600.0  # seconds an async handle stays valid
EXIT_CHANNEL_LOST = 125  # how our child runtime exits when it could not deliver its reply

_ERROR_KIND_REASON = {
    "load_error": "load_error",
    "action_error": "action_error",
    "serialization_error": "action_error",
    "memory_error": "memory_limit",
    "sandbox_error": "sandbox_error",
    "result_too_large": "output_limit",
}


def child_usage(usage: Usage, reported: Any) -> None:
    """Fill ``usage`` from a child's own report (numbers only; anything else ignored)."""
    usage.source = "child"
    if not isinstance(reported, dict):
        return
    for field in ("cpu_user", "cpu_sys", "max_rss"):
        value = reported.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            setattr(usage, field, int(value) if field == "max_rss" else float(value))


def _usage_and_status(ex, exit_report: Optional[dict]):
    """(usage, exit status, signal): the kernel's account when there is an exit
    report, else the child's own."""
    usage = Usage(wall=time.monotonic() - ex.started)
    if exit_report is None:
        child_usage(usage, (ex.reply or {}).get("usage"))
        return usage, None, None
    usage.cpu_user, usage.cpu_sys = exit_report["utime"], exit_report["stime"]
    usage.max_rss = exit_report["maxrss"]
    usage.tree_cpu = exit_report.get("tree_cpu")
    usage.tree_max_rss = exit_report.get("tree_max_rss")
    raw = exit_report["status"]
    if os.WIFSIGNALED(raw):
        return usage, None, os.WTERMSIG(raw)
    return usage, os.waitstatus_to_exitcode(raw), None


def classify_signal(limits, sig: int, usage: Usage) -> Tuple[str, str]:
    """The reason a process killed by ``sig`` ended for."""
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    cpu = limits.cpu_time
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu is not None
                                 and usage.cpu_user + usage.cpu_sys >= cpu):
        return "cpu_limit", "the action exceeded its CPU-time limit of %gs" % cpu
    rss = limits.resident_set_size
    if rss is not None and usage.max_rss >= rss:
        return "memory_limit", "the action exceeded its memory limit (%d bytes resident)" \
            % usage.max_rss
    return "killed", "the action's process was killed by %s" % name


def _without_reply(ex, exit_report, status, sig, usage) -> Tuple[str, str]:
    """The reason of an execution whose child never replied."""
    if exit_report is None:
        return "sandbox_error", "the execution ended without an exit report"
    if not ex.isolation:  # no tenant code runs before the ready message: our side
        return "sandbox_error", "the sandboxed process ended before it started the " \
            "action (%s)" % ("signal %d" % sig if sig is not None else "exit status %s" % status)
    if exit_report.get("oom_kills"):
        return "memory_limit", "the execution exceeded its memory limit of %d bytes (its " \
            "processes together)" % (ex.limits.resident_set_size or 0)
    if sig is not None:
        return classify_signal(ex.limits, sig, usage)
    if status in (0, EXIT_CHANNEL_LOST):  # our runtime: it could not deliver the reply
        return "protocol_error", "the child closed its channel before replying (exit " \
            "status %s)" % status
    return "action_error", "the action's process exited with status %s before returning " \
        "a result" % status


def build(ex, exit_report: Optional[dict]) -> "Outcome":
    """The outcome of execution ``ex`` (exit report None: delivered before its exit)."""
    usage, status, sig = _usage_and_status(ex, exit_report)
    reply = ex.reply
    fields: Dict[str, Any] = {}
    if ex.kill_reason:
        reason, message = ex.kill_reason, ex.kill_message
    elif exit_report is not None and exit_report.get("oom_kills") and ex.isolation:
        reason, message = _without_reply(ex, exit_report, status, sig, usage)
    elif reply is not None and reply["type"] == "result":
        reason, message = "ok", ""
        fields["result"] = Result(reply.get("data"), reply.get("error"),
                                  reply.get("cancel", False))
        if reply.get("sync") is False:
            now = time.time()
            fields["async_handle"] = AsyncHandle(ex.aeid, ex.ref.name, now, now + ASYNC_TTL)
            message = "asynchronous action started; its result arrives later for action " \
                      "execution %s" % ex.aeid
    elif reply is not None:
        reason, message = _ERROR_KIND_REASON[reply["kind"]], reply["message"]
        fields["error_type"] = reply.get("exc_type")
        fields["traceback"] = ex.redact(reply.get("traceback"))
    else:
        reason, message = _without_reply(ex, exit_report, status, sig, usage)
    isolation = dict(ex.isolation)
    if exit_report is not None:
        isolation["survivors_swept"] = exit_report.get("swept", False)
        isolation["scratch_removed"] = exit_report.get("scratch_removed", False)
    notes = list(ex.notes)
    if ex.logs_dropped:
        notes.append("%d log records dropped (max_log_bytes)" % ex.logs_dropped)
    if ex.logs_capped:
        notes.append("%d log record%s above WARNING logged at WARNING on the host"
                     % (ex.logs_capped, "" if ex.logs_capped == 1 else "s"))
    io = ex.io
    return Outcome(
        exit_reason=reason, message=ex.redact(message) or "", usage=usage,
        stdout=ex.redact(io.stdout.text()), stderr=ex.redact(io.stderr.text()),
        stdout_bytes=io.stdout.total, stderr_bytes=io.stderr.total, exit_status=status,
        signal=sig, execution_id=ex.id, action=ex.ref.name, action_execution_id=ex.aeid,
        limits=ex.limits.to_dict(human=True), limit_sources=dict(ex.limit_sources),
        notes=notes, logs=ex.logs,
        isolation=isolation, **fields)


def without_run(ex, reason: str, message: str) -> "Outcome":
    """The outcome of an execution that never reached a child (cancelled, refused)."""
    return Outcome(reason, message=message, execution_id=ex.id, action=ex.ref.name,
                   action_execution_id=ex.aeid, limits=ex.limits.to_dict(human=True),
                   limit_sources=dict(ex.limit_sources), notes=list(ex.notes))
