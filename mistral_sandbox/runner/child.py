"""The sandboxed child: isolate, receive one request, load one action, run, reply, exit.

:func:`main` runs in a child of the zygote and never returns (``os._exit``). The
isolation that does not depend on the request comes first; a child prepared ahead
of time (``spec.exec_id is None``) also applies the operator's ceiling, rehearses,
and waits for its request; the request's own limits are applied when it arrives
(lowering rlimits needs no privilege). The conversation on the channel (fd 3)::

    parent -> child  run      {id, action, params, context, limits, mode}
    child  -> parent ready    {id, isolation}        (before any tenant code runs)
    child  -> parent log*     {level, msg, logger}
    child  -> parent result   {id, data, error, cancel, sync, usage}
                   | error    {id, kind, message, exc_type, traceback, usage}

After its reply the child closes its channel, stdout and stderr, then exits: the
parent has the whole outcome once it has the reply and EOF on all three.
``mode`` is ``run`` (default), ``test`` (dry run) or ``describe`` (the action's
signature and docstring, without instantiating it).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Dict, Optional

from mistral_sandbox.runner import isolation, protocol, runtime
from mistral_sandbox.runner.child_config import CHANNEL_FD, ChildConfig, ChildSpec

EXIT_OK = 0
EXIT_CHANNEL_LOST = 125


class _Child:
    """This process's own state once forked (nothing of it exists in the zygote)."""

    __slots__ = ("config", "spec", "report", "applied_limits", "stdio_closed")

    def __init__(self, config: ChildConfig, spec: ChildSpec):
        self.config = config
        self.spec = spec
        self.report = isolation.Report(spec.exec_id is None)  # (prepared ahead)
        self.applied_limits: Optional[Any] = None  # limits whose rlimits are in force
        self.stdio_closed = False

    def apply_limits(self, limits, plan=None) -> Optional[isolation.IsolationError]:
        """The rlimits step for ``limits``, unless exactly these are in force already."""
        if self.applied_limits is not None and self.applied_limits == limits:
            return None
        try:
            isolation.apply_step(self.report, self.config.policy, "rlimits",
                                 isolation.apply_rlimits, self.report, limits, plan)
        except isolation.IsolationError as exc:
            return exc
        self.applied_limits = limits
        return None

    def close_stdio(self) -> None:
        """Flush and close stdout and stderr, as soon as the action has returned and
        before the final reply: the parent then has their EOFs with the reply."""
        if self.stdio_closed:
            return
        self.stdio_closed = True
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        for fd in (1, 2):
            try:
                os.close(fd)
            except OSError:
                pass


def main(config: ChildConfig, spec: ChildSpec, pid_ns: Optional[str]) -> None:
    """A child's whole life; never returns. ``pid_ns``: "" if forked as pid 1 of a new
    pid namespace, else why not (None: not attempted)."""
    code = EXIT_CHANNEL_LOST
    try:
        child = _Child(config, spec)
        error = isolation.prepare(child.report, config, spec, pid_ns)
        if error is None and spec.exec_id is None and config.ceiling:  # prepared ahead
            if "rlimits" in child.report.applied:  # (natively, with the other steps)
                child.applied_limits = config.ceiling
            else:
                error = child.apply_limits(config.ceiling, config.ceiling_plan)
        code = _serve(child, error)
    finally:
        _exit(code)


def _exit(code: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(code)


def _serve(child: _Child, error: Optional[isolation.IsolationError]) -> int:
    """Channel on fd 3: read the request, apply its limits, run, reply; the exit code."""
    spec = child.spec
    if "fds" not in child.report.applied:  # fd 3 is not our channel: nothing to talk to
        _stderr_note("mistral-sandbox child: %s" % error)
        return EXIT_CHANNEL_LOST
    sock = socket.socket(fileno=CHANNEL_FD)
    channel = runtime.Channel(sock, spec.exec_id)
    runtime.LOG_FORWARDER.channel = channel
    if spec.exec_id is None:  # prepared ahead: waits, so rehearse first
        runtime.rehearse(child.config.ceiling, child.report.to_dict())
    try:
        request = protocol.validate(protocol.read_frame(sock, child.config.max_frame),
                                    frozenset({"run"}))
        if spec.exec_id is not None and request["id"] != spec.exec_id:
            raise protocol.ProtocolError("run frame for execution %r, expected %r"
                                         % (request["id"], spec.exec_id))
    except (EOFError, OSError, protocol.ProtocolError) as exc:
        # EOF in a prepared child: its pool was shut down, nothing to say
        if not isinstance(exc, EOFError) or spec.exec_id is not None:
            _stderr_note("mistral-sandbox child: cannot receive the request: %s: %s"
                         % (type(exc).__name__, exc))
        return EXIT_CHANNEL_LOST
    channel.exec_id = request["id"]
    try:
        return _serve_request(child, channel, request, error)
    finally:
        child.close_stdio()
        try:
            sock.close()
        except OSError:
            pass


def _serve_request(child: _Child, channel: runtime.Channel, request: Dict[str, Any],
                   error: Optional[isolation.IsolationError]) -> int:
    exec_id = channel.exec_id
    limits = request.get("limits") or {}
    if error is None and bool(limits.get("network")) != child.spec.network:
        error = isolation.IsolationError("net_ns", "child prepared with network=%s for a "
                                         "request with network=%s"
                                         % (child.spec.network, limits.get("network")))
    if error is None:
        error = child.apply_limits(limits)
    if error is not None:
        channel.send({"type": "error", "id": exec_id, "kind": "sandbox_error",
                      "message": str(error), "isolation": child.report.to_dict()})
        return EXIT_OK
    if not channel.send({"type": "ready", "id": exec_id, "isolation": child.report.to_dict()}):
        return EXIT_CHANNEL_LOST
    # prepared before tenant code runs: sendable even when memory is exhausted
    out_of_memory = protocol.encode({"type": "error", "id": exec_id, "kind": "memory_error",
                                     "message": "MemoryError: the action exceeded its memory "
                                                "limit"})
    _run_and_reply(child, channel, request, limits, out_of_memory)
    return EXIT_CHANNEL_LOST if channel.broken else EXIT_OK


def _run_and_reply(child: _Child, channel: runtime.Channel, request: Dict[str, Any],
                   limits: Dict[str, Any], out_of_memory: bytes) -> None:
    max_result = limits.get("max_result_bytes")
    try:
        try:
            reply = runtime.run_action(request, channel, child.config.unreadable_paths)
        finally:
            child.close_stdio()  # the action is done: nothing more goes to stdout/stderr
        reply["usage"] = runtime.usage()
        frame = runtime.encode_reply(reply, child.config.max_frame)
        if max_result is not None and len(frame) - protocol.HEADER.size > max_result + 256:
            channel.error("result_too_large", "result of %d bytes exceeds max_result_bytes=%d"
                          % (len(frame), max_result))
        else:
            channel.send_raw(frame)
    except MemoryError:
        channel.send_raw(out_of_memory)
    except protocol.SerializationError as exc:
        channel.error("serialization_error", "the action returned a value that cannot be "
                      "serialized: %s" % exc)
    except protocol.ProtocolError as exc:  # larger than any frame may be
        channel.error("result_too_large", "the result cannot be sent: %s" % exc)
    except runtime.LoadFailure as exc:
        channel.error("load_error", str(exc))
    except runtime.ActionFailure as exc:
        cause = exc.__cause__
        if isinstance(cause, MemoryError):
            channel.send_raw(out_of_memory)
        else:
            channel.error("action_error", runtime.action_error_message(cause), cause)
    except BaseException as exc:  # our own bug: report it, don't hide it
        channel.error("sandbox_error", "runner failure in child: %s: %s"
                      % (type(exc).__name__, exc), exc)


def _stderr_note(text: str) -> None:
    try:
        os.write(2, (text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass
