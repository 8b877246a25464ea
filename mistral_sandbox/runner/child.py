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

import logging
import os
import resource
import socket
import sys
import threading
import traceback
import warnings
from typing import Any, Dict, Optional

from mistral_sandbox.actions import loader
from mistral_sandbox.api import base as api_base
from mistral_sandbox.api import security
from mistral_sandbox.api import utils as api_utils
from mistral_sandbox.api.context import ActionContext, ExecutionContext, SecurityContext
from mistral_sandbox.api.exceptions import ActionException, NotAvailable
from mistral_sandbox.runner import isolation, protocol
from mistral_sandbox.runner.child_config import CHANNEL_FD, ChildConfig, ChildSpec

EXIT_OK = 0
EXIT_CHANNEL_LOST = 125


# ---------------------------------------------------------------- the runtime
# What runs the action (set up once in the zygote: install_runtime, warm_up_code). It
# lives in this module, next to the bootstrap, on purpose: a child touches these
# functions on its way to the action, and every page of them is a copy-on-write fault;
# kept together they share pages.

MAX_LOG_MSG = 8192
MAX_TEXT = 64 * 1024      # bytes of an error message or traceback sent to the parent
TRACEBACK_FRAMES = 100    # most recent frames kept in a traceback


def bounded(text: str, limit: int = MAX_TEXT, tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if tail:
        return "[%d characters cut]...%s" % (cut, text[-limit:])
    return "%s...[%d characters cut]" % (text[:limit], cut)


def usage() -> Dict[str, Any]:
    """This process's own resource use, and that of the children it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_user": own.ru_utime + kids.ru_utime, "cpu_sys": own.ru_stime + kids.ru_stime,
            "max_rss": max(own.ru_maxrss, kids.ru_maxrss) * 1024}


class Channel:
    """Blocking frame writer on the child's channel; remembers whether it broke.
    Frames above ``max_frame`` bytes are refused (ProtocolError)."""

    def __init__(self, sock, exec_id: Optional[int], max_frame: int):
        self.sock = sock
        self.exec_id = exec_id
        self.max_frame = max_frame
        self.broken = False
        self._calls = 0
        self._call_lock = threading.Lock()

    def call(self, action: str, params: Dict[str, Any], mode: str) -> Dict[str, Any]:
        """A nested call through the parent: send ``call``, wait for its ``call_result``
        (one call at a time). Raises SerializationError for unsendable parameters,
        NotAvailable once the channel is gone."""
        with self._call_lock:
            self._calls += 1
            frame = protocol.encode({"type": "call", "id": self.exec_id,
                                     "call_id": self._calls, "action": action,
                                     "params": params, "mode": mode}, self.max_frame)
            if not self.send_raw(frame):
                raise NotAvailable("the runner's channel is closed: no nested call possible")
            try:
                reply = protocol.validate(protocol.read_frame(self.sock, self.max_frame),
                                          frozenset({"call_result"}))
            except (EOFError, OSError, protocol.ProtocolError) as exc:
                self.broken = True
                raise NotAvailable("the runner did not answer the nested call: %s" % exc) \
                    from None
            if reply["call_id"] != self._calls:
                self.broken = True
                raise NotAvailable("the runner answered another call (%r)" % reply["call_id"])
            return reply

    def send_raw(self, frame: bytes) -> bool:
        if self.broken:
            return False
        try:
            self.sock.sendall(frame)
            return True
        except OSError:
            self.broken = True
            return False

    def send(self, msg: Dict[str, Any]) -> bool:
        return self.send_raw(protocol.encode(msg, self.max_frame))

    def error(self, kind: str, message: str, exc: Optional[BaseException] = None) -> bool:
        """Send an error frame of at most ERROR_FRAME_MAX bytes; never raises (bounded
        texts, then no traceback, then a minimal frame)."""
        msg = {"type": "error", "id": self.exec_id, "kind": kind,
               "message": bounded(message), "usage": usage()}
        limit = min(self.max_frame, protocol.ERROR_FRAME_MAX)
        try:
            if exc is not None:
                msg["exc_type"] = "%s.%s" % (type(exc).__module__, type(exc).__qualname__)
                msg["traceback"] = bounded("".join(traceback.format_exception(
                    type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES)), tail=True)
            return self.send_raw(protocol.encode(msg, limit))
        except BaseException:
            msg.pop("traceback", None)
            try:
                msg["message"] = bounded(msg["message"], 1024)
                return self.send_raw(protocol.encode(msg, limit))
            except BaseException:
                return self.send_raw(protocol.encode({
                    "type": "error", "id": self.exec_id, "kind": kind,
                    "message": "the action failed and its error could not be encoded"}))


class _Sink:
    """A channel that sends nowhere (for the rehearsal)."""

    exec_id = 0
    broken = False

    def send(self, msg: Dict[str, Any]) -> bool:
        return True


class LogForwarder(logging.Handler):
    """Sends the action's log records to the parent as ``log`` frames over
    :attr:`channel` (set by the child once it has one; None: records are dropped)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.channel: Optional[Channel] = None

    def emit(self, record: logging.LogRecord) -> None:
        channel = self.channel
        if channel is None:
            return
        try:
            text = self.format(record)[:MAX_LOG_MSG]
            channel.send({"type": "log", "level": int(record.levelno), "msg": text,
                          "logger": record.name})
        except Exception:  # logging must never break the action
            pass


LOG_FORWARDER = LogForwarder()


def install_runtime(preloaded=()) -> None:
    """What every action finds set up; done once, in the zygote, before any fork.

    Log records (and warnings, shown once per place) go to the child's channel.
    ``is_legacy`` is computed for the action classes of the ``preloaded`` modules, so a
    child need not inspect their signatures (each first touch of a shared page costs a
    child a copy-on-write fault).
    """
    root = logging.getLogger()
    root.handlers[:] = [LOG_FORWARDER]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    for name in preloaded:
        module = sys.modules.get(name)
        for obj in list(vars(module).values()) if module is not None else ():
            if isinstance(obj, type) and callable(getattr(obj, "run", None)):
                try:
                    api_base.is_legacy(obj)
                except Exception:  # not our business here; the loader will tell
                    pass


class LoadFailure(Exception):
    """The action could not be loaded; the message says why (``load_error``)."""


class ActionFailure(Exception):
    """The action raised; ``__cause__`` is what it raised (``action_error``)."""


def _unwrap_result(value: Any) -> Dict[str, Any]:
    """Plain data, or a Result from us or mistral-lib -> {data, error, cancel}."""
    if all(hasattr(value, f) for f in ("data", "error", "cancel")) and \
            type(value).__name__ == "Result":
        return {"data": value.data, "error": value.error, "cancel": bool(value.cancel)}
    return {"data": value, "error": None, "cancel": False}


def run_action(request: Dict[str, Any], channel: Any, unreadable_paths=()) -> Dict[str, Any]:
    """Load and call the requested action; its ``result`` reply (without usage).
    Raises :class:`LoadFailure` or :class:`ActionFailure`."""
    action_spec = request["action"]
    name = action_spec.get("name") or action_spec.get("target")
    mode = request.get("mode", "run")
    try:
        cls = loader.load_class(action_spec, name)
        if mode == "describe":
            return {"type": "result", "id": channel.exec_id, "data": loader.describe(cls, name),
                    "sync": True}
        action = loader.instantiate(cls, request.get("params") or {}, name)
        context = ActionContext.from_dict(request.get("context"))
        action_context = loader.make_context(action, context)
    except loader.LoadError as exc:
        raise LoadFailure(str(exc) + _import_hint(str(exc), unreadable_paths)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise LoadFailure("malformed request for %s: %s" % (name, exc)) from None
    broker = getattr(channel, "call", None)
    try:
        with security.bind(context.security):
            api_utils.install_broker(broker)
            is_sync = getattr(action, "is_sync", None)  # duck-typed actions may lack it
            sync = bool(is_sync()) if callable(is_sync) else True
            value = api_base.call_run(action, action_context,
                                      "test" if mode == "test" else "run")
    except BaseException as exc:
        raise ActionFailure() from exc
    finally:
        if broker is not None:
            api_utils.install_broker(None)
    reply = {"type": "result", "id": channel.exec_id, "sync": sync}
    reply.update(_unwrap_result(value) if sync or mode == "test" else
                 {"data": None, "error": None, "cancel": False})
    return reply


def _import_hint(error: str, unreadable_paths) -> str:
    if "ModuleNotFoundError" not in error or not unreadable_paths:
        return ""
    return ("; note: the sandbox uid cannot read %s, so only modules the zygote preloaded "
            "are importable from there (make the path world-readable or preload the module)"
            % ", ".join(unreadable_paths))


def encode_reply(reply: Dict[str, Any], max_frame: int) -> bytes:
    """The reply's frame; SerializationError names what cannot be carried,
    ProtocolError says it exceeds ``max_frame``."""
    for field in ("data", "error"):
        if not protocol.depth_ok(reply.get(field)):
            raise protocol.SerializationError("result is nested deeper than %d levels"
                                              % protocol.MAX_DEPTH)
    try:
        return protocol.encode(reply, max_frame)
    except protocol.SerializationError as exc:
        problem = protocol.find_unserializable(reply.get("data"), "result") or \
            protocol.find_unserializable(reply.get("error"), "result error") or str(exc)
        raise protocol.SerializationError(problem) from None


def action_error_message(cause: BaseException) -> str:
    if isinstance(cause, ActionException):
        return "%s" % cause
    return "%s: %s" % (type(cause).__name__, cause)


# what a request's context looks like (every field set, as the supervisor sends it)
_REHEARSAL_CONTEXT = ActionContext(
    SecurityContext(auth_token="rehearsal", user_id="u", project_id="p"),
    ExecutionContext(action_execution_id="00000000-0000-0000-0000-000000000000")).to_dict()


def rehearse(ceiling, isolation_report: Dict[str, Any]) -> None:
    """One request's path through the runtime, on std.noop, with nothing sent; never
    raises (an optimisation must not fail anything) and leaves nothing an execution
    could see. Done in the zygote (:func:`warm_up_code`) and by each prepared child
    while it waits, so the real request finds its pages already copied."""
    try:
        frame = protocol.encode({"type": "run", "id": 0, "action": {
            "name": "std.noop", "target": "mistral_sandbox.actions.std:NoOpAction"},
            "params": {}, "context": _REHEARSAL_CONTEXT, "limits": dict(ceiling),
            "mode": "run"})
        request = protocol.validate(protocol.unpackb(frame[protocol.HEADER.size:]),
                                    frozenset({"run"}))
        protocol.encode({"type": "ready", "id": 0, "isolation": isolation_report})
        reply = run_action(request, _Sink())
        reply["usage"] = usage()
        encode_reply(reply, protocol.DEFAULT_MAX_FRAME)
    except Exception:
        pass


def warm_up_code(ceiling, rounds: int = 16) -> None:
    """Rehearse ``rounds`` times in the zygote, before any fork: CPython 3.11 rewrites
    ("quickens") a function's bytecode in place after its first calls, and each such
    write in a child would be a copy-on-write fault."""
    for _ in range(rounds):
        rehearse(ceiling, {"applied": [], "skipped": [], "cost_us": {}})


# ---------------------------------------------------------------- the bootstrap

def main(config: ChildConfig, spec: ChildSpec, pid_ns: Optional[str]) -> None:
    """A child's whole life; never returns. ``pid_ns``: "" if forked as pid 1 of a new
    pid namespace, else why not (None: not attempted).

    (Plain functions and local state, no object of our own: in a child every object
    made or touched costs copy-on-write faults.)"""
    code = EXIT_CHANNEL_LOST
    try:
        report = isolation.Report(spec.exec_id is None)  # (prepared ahead)
        error = isolation.prepare(report, config, spec, pid_ns)
        in_force = None  # the limits whose rlimits are applied
        if error is None and spec.exec_id is None and config.ceiling:
            in_force = config.ceiling
            if "rlimits" not in report.applied:  # (natively it is, with the other steps)
                error = _apply_limits(report, config, config.ceiling, config.ceiling_plan)
        code = _serve(config, spec, report, error, in_force)
    finally:
        # nothing is flushed here: once the action has run, its output was flushed before
        # the reply, and no code the action could have replaced runs after the reply
        os._exit(code)


def _apply_limits(report: isolation.Report, config: ChildConfig, limits,
                  plan=None) -> Optional[isolation.IsolationError]:
    """The rlimits step for ``limits``; its error, or None."""
    try:
        isolation.apply_step(report, config.policy, "rlimits", isolation.apply_rlimits,
                             report, limits, plan)
    except isolation.IsolationError as exc:
        return exc
    return None


def _close_stdio() -> None:
    """Flush and close stdout and stderr before the final reply, so the parent has their
    EOFs with it. (The flush may run an object the action put in sys.stdout: it runs
    before the reply, under the execution's wall time.)"""
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


def _serve(config: ChildConfig, spec: ChildSpec, report: isolation.Report,
           error: Optional[isolation.IsolationError], in_force) -> int:
    """Channel on fd 3: read the request, apply its limits, run, reply; the exit code."""
    if "fds" not in report.applied:  # fd 3 is not our channel: nothing to talk to
        _stderr_note("mistral-sandbox child: %s" % error)
        return EXIT_CHANNEL_LOST
    sock = socket.socket(fileno=CHANNEL_FD)
    channel = Channel(sock, spec.exec_id, config.max_frame)
    LOG_FORWARDER.channel = channel
    if spec.exec_id is None:  # prepared ahead: rehearse while waiting
        rehearse(config.ceiling, report.to_dict())
    try:
        request = protocol.validate(protocol.read_frame(sock, config.max_frame),
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
    code = _serve_request(config, spec, report, error, in_force, channel, request)
    try:
        sock.close()  # (stdout and stderr are closed already)
    except OSError:
        pass
    return code


def _serve_request(config: ChildConfig, spec: ChildSpec, report: isolation.Report,
                   error: Optional[isolation.IsolationError], in_force,
                   channel: Channel, request: Dict[str, Any]) -> int:
    exec_id = channel.exec_id
    limits = request.get("limits") or {}
    if error is None and bool(limits.get("network")) != spec.network:
        error = isolation.IsolationError("net_ns", "child prepared with network=%s for a "
                                         "request with network=%s"
                                         % (spec.network, limits.get("network")))
    if error is None and limits != in_force:
        error = _apply_limits(report, config, limits)
    if error is not None:
        _close_stdio()
        channel.send({"type": "error", "id": exec_id, "kind": "sandbox_error",
                      "message": str(error), "isolation": report.to_dict()})
        return EXIT_OK
    if not channel.send({"type": "ready", "id": exec_id, "isolation": report.to_dict()}):
        _close_stdio()
        return EXIT_CHANNEL_LOST
    # prepared before tenant code runs: sendable even when memory is exhausted
    out_of_memory = protocol.encode({"type": "error", "id": exec_id, "kind": "memory_error",
                                     "message": "MemoryError: the action exceeded its memory "
                                                "limit"})
    _run_and_reply(config, channel, request, limits, out_of_memory)
    return EXIT_CHANNEL_LOST if channel.broken else EXIT_OK


def _run_and_reply(config: ChildConfig, channel: Channel, request: Dict[str, Any],
                   limits: Dict[str, Any], out_of_memory: bytes) -> None:
    max_result = limits.get("max_result_bytes")
    try:
        try:
            reply = run_action(request, channel, config.unreadable_paths)
        finally:
            _close_stdio()  # the action is done: nothing more goes to stdout/stderr
        reply["usage"] = usage()
        frame = encode_reply(reply, config.max_frame)
        if max_result is not None and len(frame) - protocol.HEADER.size > max_result + 256:
            channel.error("result_too_large", "result of %d bytes exceeds max_result_bytes=%d"
                          % (len(frame), max_result))
        else:
            protocol.check_containers(frame[protocol.HEADER.size:])
            channel.send_raw(frame)
    except MemoryError:
        channel.send_raw(out_of_memory)
    except protocol.SerializationError as exc:
        channel.error("serialization_error", "the action returned a value that cannot be "
                      "serialized: %s" % exc)
    except protocol.ProtocolError as exc:  # larger than any frame may be
        channel.error("result_too_large", "the result cannot be sent: %s" % exc)
    except LoadFailure as exc:
        channel.error("load_error", str(exc))
    except ActionFailure as exc:
        cause = exc.__cause__
        if isinstance(cause, MemoryError):
            channel.send_raw(out_of_memory)
        else:
            channel.error("action_error", action_error_message(cause), cause)
    except BaseException as exc:  # our own bug: report it, don't hide it
        channel.error("sandbox_error", "runner failure in child: %s: %s"
                      % (type(exc).__name__, exc), exc)


def _stderr_note(text: str) -> None:
    try:
        os.write(2, (text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass
