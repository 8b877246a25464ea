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
import time
from typing import Any, Dict, List, Optional

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
    runtime can misstate it). ``wall`` is always measured by the parent.
    """

    wall: float = 0.0
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    max_rss: int = 0
    source: str = "kernel"

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
    """The single end of one execution."""

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
