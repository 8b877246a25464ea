"""The sandboxed child: isolate, receive one request, load one action, run, reply, exit.

:func:`main` (cold: forked for a known request) and :func:`main_warm`
(pre-forked and isolated ahead of time, then assigned one request) run in a
child of the zygote and never return (``os._exit``). Isolation that does not
depend on the request happens first (:func:`prepare`); the request's limits
are applied when it arrives (lowering rlimits needs no privilege). The
conversation on the channel (fd 3) is::

    parent → child   run      {id, action, params, context, limits, mode}
    child  → parent  ready    {id, isolation}        (before any tenant code runs)
    child  → parent  log*     {level, msg, logger}
    child  → parent  result   {id, data, error, cancel, sync, usage}
                   | error    {id, kind, message, exc_type, traceback, usage}

After its reply the child closes the channel and its stdout/stderr, then
exits: the parent has the whole outcome once it has the reply and EOF on all
three (``usage`` is the process's own ``getrusage``, measured by the runner
after the action returned).

``mode`` is ``run`` (default), ``test`` (dry run) or ``describe`` (return the
action's signature and docstring without instantiating it).
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import struct
import sys
import traceback
import warnings
from typing import Any, Dict, Optional


from mistral_sandbox.actions import loader
from mistral_sandbox.api import base as api_base
from mistral_sandbox.api import security
from mistral_sandbox.api.context import ActionContext, ExecutionContext, SecurityContext
from mistral_sandbox.api.exceptions import ActionException
from mistral_sandbox.runner import isolation, protocol

# Set by the zygote before it forks children (inherited through fork):
UNREADABLE_PATHS: list = []   # sys.path entries the sandbox uid cannot read (for hints)
POLICY: Dict[str, str] = dict(isolation.DEFAULT_POLICY)  # isolation step -> level
SECCOMP: Dict[bool, Any] = {}  # network allowed? -> compiled seccomp.Program
PID_NS: list = [None]  # "" if forked as pid 1 of a new pid namespace, else why not
CEILING: Dict[str, Any] = {}  # the operator's limits: applied ahead by warm children
CEILING_PLAN: list = []  # isolation.rlimit_plan(CEILING), computed by the zygote

EXIT_OK = 0
EXIT_CHANNEL_LOST = 125
MAX_LOG_MSG = 8192
MAX_TEXT = 64 * 1024      # bytes of an error message or traceback sent to the parent
TRACEBACK_FRAMES = 100    # most recent frames kept in a traceback


def _bounded(text: str, limit: int = MAX_TEXT, tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if tail:
        return "[%d characters cut]...%s" % (cut, text[-limit:])
    return "%s...[%d characters cut]" % (text[:limit], cut)


class _Channel:
    """Blocking frame writer on fd 3; remembers whether the channel broke."""

    def __init__(self, sock: socket.socket, exec_id: int):
        self.sock = sock
        self.exec_id = exec_id
        self.broken = False

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
        return self.send_raw(protocol.encode(msg))

    def error(self, kind: str, message: str, exc: Optional[BaseException] = None) -> bool:
        """Send an error frame; never raises (bounded texts, a minimal frame as fallback)."""
        msg = {"type": "error", "id": self.exec_id, "kind": kind,
               "message": _bounded(message), "usage": _usage()}
        try:
            if exc is not None:
                msg["exc_type"] = "%s.%s" % (type(exc).__module__, type(exc).__qualname__)
                msg["traceback"] = _bounded("".join(traceback.format_exception(
                    type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES)), tail=True)
            return self.send(msg)
        except BaseException:
            msg.pop("traceback", None)
            try:
                msg["message"] = _bounded(msg["message"], 1024)
                return self.send(msg)
            except BaseException:
                return self.send_raw(protocol.encode({
                    "type": "error", "id": self.exec_id, "kind": kind,
                    "message": "the action failed and its error could not be encoded"}))


# The channel log records go to: set by the child once it has one (None: dropped).
CHANNEL: list = [None]


class _LogHandler(logging.Handler):
    """Forwards the action's log records to the parent as ``log`` frames (over
    ``CHANNEL[0]``; installed by :func:`install_runtime` before the fork)."""

    def __init__(self):
        super().__init__(logging.DEBUG)

    def emit(self, record: logging.LogRecord) -> None:
        channel = CHANNEL[0]
        if channel is None:
            return
        try:
            text = self.format(record)[:MAX_LOG_MSG]
            channel.send({"type": "log", "level": int(record.levelno), "msg": text,
                          "logger": record.name})
        except Exception:  # logging must never break the action
            pass


def _unwrap_result(value: Any) -> Dict[str, Any]:
    """Plain data, or a Result from us or mistral-lib → {data, error, cancel}."""
    if all(hasattr(value, f) for f in ("data", "error", "cancel")) and \
            type(value).__name__ == "Result":
        return {"data": value.data, "error": value.error, "cancel": bool(value.cancel)}
    return {"data": value, "error": None, "cancel": False}


# The native isolation (mistral_sandbox.runner._native) when the zygote found it usable:
# (its prepare, the scratch view, the tmpfs options but the owner, the no-network
# seccomp filter's address); see Zygote._plan_native
NATIVE: list = [None]
# the steps the native prepare applies, in the order of its step indexes and costs
NATIVE_STEPS = ("fds", "session", "net_ns", "mount_ns", "ipc_ns", "uts_ns", "no_new_privs",
                "seccomp", "uid", "pdeathsig", "rlimits")
# what the report then says, in the order the Python steps would have said it
_NATIVE_APPLIED = ("fds", "session", "environment", "pid_ns", "net_ns", "mount_ns", "scratch",
                   "ipc_ns", "uts_ns", "no_new_privs", "seccomp", "uid", "pdeathsig")


def native_args(stdio: tuple, uid: Optional[int], network: bool,
                warm: bool = False) -> Optional[tuple]:
    """In the zygote, before the fork: the arguments of the native prepare for a child
    with these fds (channel, stdout, stderr) and uid — so the child computes nothing of
    them (every object it makes or touches is a copy-on-write fault) — or None when the
    child takes the Python steps (no native isolation here, network, not root). A
    ``warm`` child also applies the ceiling's rlimits natively (a cold one applies its
    request's, later)."""
    plan = NATIVE[0]
    if plan is None or network or uid is None:
        return None
    shared = isolation.SHARED_NS
    _, view, tmpfs_options, fprog = plan
    rlimits = b"".join(struct.pack("=iQQ", res, soft & _U64, hard & _U64)
                       for res, _, soft, hard in CEILING_PLAN) if warm and CEILING else b""
    return (stdio[0], stdio[1], stdio[2], shared[isolation.CLONE_NEWNET],
            shared[isolation.CLONE_NEWIPC], shared[isolation.CLONE_NEWUTS], view,
            tmpfs_options + b",uid=%d,gid=%d" % (uid, uid), uid, fprog, 0, True, rlimits)


_U64 = (1 << 64) - 1  # (RLIM_INFINITY is -1 in Python, all ones in C)


def prepare_native(report: isolation.Report, args: tuple) -> Optional[isolation.IsolationError]:
    """The isolation steps of :func:`prepare` in one native call (``args``: from
    :func:`native_args`), for a child forked as pid 1 of its pid namespace, as root,
    without network. The same steps, in the same order, with the same report; a
    failing step fails the execution whatever its policy (the zygote's probe showed
    this host allows every one of them). Returns the step's IsolationError or None."""
    failed, err, what, costs = NATIVE[0][0](*args)
    isolation.SHARED_NS.clear()  # (joined, or closed)
    with_rlimits = bool(args[12])
    report.cost_us.update(zip(NATIVE_STEPS if with_rlimits else NATIVE_STEPS[:-1], costs))
    if failed >= 0:
        report.applied.extend(NATIVE_STEPS[:failed])
        step = NATIVE_STEPS[failed]
        if step == "rlimits":  # which one: as the Python step says it
            _, field, soft, _ = CEILING_PLAN[int(what)]
            what = "%s=%s" % (field, soft)
        return isolation.IsolationError(step, "%s: %s" % (what, os.strerror(err)))
    report.applied.extend(_NATIVE_APPLIED)
    report.skip("user_ns", isolation.ROOT_SKIPS_USER_NS)
    isolation.IN_PID_NS[0] = True
    isolation.point_tempfile(isolation.SCRATCH_VIEW[0])
    if with_rlimits:  # the ceiling's, as _apply_limits would have applied them
        if CEILING.get("file_size") is not None:
            isolation.ignore_sigxfsz()
        report.ok("rlimits")
        APPLIED_LIMITS[:] = [CEILING]
    return None


def prepare(report: isolation.Report, *, stdio: tuple, uid: Optional[int], scratch: str,
            zygote_pid: int, network: bool,
            native: Optional[tuple] = None) -> Optional[isolation.IsolationError]:
    """Every isolation step that does not depend on the request, in order.

    Installs ``stdio`` (channel, stdout and stderr fds) as fds 3, 1 and 2 and
    closes every other fd. Returns the error of a required step that
    failed (reported later, over the channel, as ``sandbox_error``) or None.
    Natively (:func:`prepare_native`, with ``native``: :func:`native_args`) when the
    child was forked into its own pid namespace.
    """
    if native is not None and PID_NS[0] == "":
        return prepare_native(report, native)
    policy = POLICY
    step = isolation.apply_step
    try:
        # die with the zygote from the first instant (set again after the uid change,
        # which clears it): a child stopped mid-preparation must not outlive it
        isolation.prctl(isolation.PR_SET_PDEATHSIG, isolation.SIGKILL)
        isolation.set_thread_name(b"ms-child")
        if os.getppid() not in (zygote_pid, 0):  # 0: pid 1 of a new pid namespace
            os._exit(137)
        # fds first: whatever fails later is reported over the channel, on fd 3
        shared = isolation.SHARED_NS
        if network:
            shared.pop(isolation.CLONE_NEWNET, None)  # not joined: closed by the fds step
        flags = tuple(shared)
        kept = step(report, {}, "fds", isolation.setup_fds, report, stdio,
                    tuple(shared.values()))  # always applied
        shared.clear()  # (each joined and closed by its step; moved if it sat on stdio)
        shared.update(zip(flags, kept or ()))
        step(report, policy, "session", isolation.new_session, report)
        step(report, policy, "environment", isolation.scrub_environment, report, scratch)
        # a tmpfs scratch is made by the mount_ns step; the scratch step makes a directory
        # on the host before it (to be bind-mounted), or after it if that step failed
        tmpfs = isolation.SCRATCH_TMPFS[0] is not None and policy.get("mount_ns") != isolation.OFF
        if not tmpfs:
            step(report, policy, "scratch", isolation.make_scratch, report, scratch, uid)
        step(report, policy, "user_ns", isolation.user_namespace, report)
        step(report, policy, "pid_ns", isolation.pid_namespace, report, PID_NS[0])
        # pid 1 of its own namespace: the parent (the zygote) is outside it, seen as 0
        parent = 0 if PID_NS[0] == "" else zygote_pid
        step(report, policy, "net_ns", isolation.net_namespace, report, network)
        isolation.unshare_together(policy)
        step(report, policy, "mount_ns", isolation.mount_namespace, report, scratch, uid)
        if tmpfs:
            step(report, policy, "scratch", isolation.make_scratch, report, scratch, uid)
        if "mount_ns" not in report.applied:
            isolation.scratch_outside_view(scratch)
        step(report, policy, "ipc_ns", isolation.ipc_namespace, report)
        step(report, policy, "uts_ns", isolation.uts_namespace, report)
        step(report, policy, "no_new_privs", isolation.no_new_privs, report)
        step(report, policy, "seccomp", isolation.load_seccomp, report, SECCOMP.get(network))
        step(report, policy, "uid", isolation.drop_privileges, report, uid)
        step(report, policy, "pdeathsig", isolation.parent_death_signal, report, parent)
    except isolation.IsolationError as exc:
        return exc
    return None


def main(channel_fd: int, out_fd: int, err_fd: int, *, exec_id: int, uid: Optional[int],
         scratch: str, zygote_pid: int, max_frame: int, network: bool = False,
         native: Optional[tuple] = None) -> None:
    """Cold path: a child forked for one known request; never returns."""
    code = EXIT_CHANNEL_LOST
    try:
        report = isolation.Report()
        error = prepare(report, stdio=(channel_fd, out_fd, err_fd), uid=uid, scratch=scratch,
                        zygote_pid=zygote_pid, network=network, native=native)
        code = _serve(exec_id, max_frame, report, error, network)
    finally:
        _exit(code)


def main_warm(channel_fd: int, out_fd: int, err_fd: int, *, uid: Optional[int],
              scratch: str, zygote_pid: int, max_frame: int,
              native: Optional[tuple] = None) -> None:
    """Warm path: isolate and apply the operator's limits first, then wait for one
    request on the channel (the supervisor writes it there directly). Prepared for the
    ceiling's network setting (the supervisor sends only requests with that setting).
    Never returns.
    """
    code = EXIT_CHANNEL_LOST
    network = bool(CEILING.get("network"))
    try:
        report = isolation.Report()
        report.warm = True
        error = prepare(report, stdio=(channel_fd, out_fd, err_fd), uid=uid, scratch=scratch,
                        zygote_pid=zygote_pid, network=network, native=native)
        if error is None and CEILING:
            error = _apply_limits(report, CEILING, CEILING_PLAN or None)
        code = _serve(None, max_frame, report, error, network)
    finally:
        _exit(code)


class _Sink:
    """A channel that sends nowhere (for :func:`warm_up_code`)."""

    exec_id = 0
    broken = False

    def send(self, msg: Dict[str, Any]) -> bool:
        return True


# what a request's context looks like (every field set, as the supervisor sends it)
_REHEARSAL_CONTEXT = ActionContext(
    SecurityContext(auth_token="rehearsal", user_id="u", project_id="p"),
    ExecutionContext(action_execution_id="00000000-0000-0000-0000-000000000000")).to_dict()


def warm_up_code(rounds: int = 16) -> None:
    """Go ``rounds`` times through what a request does, here, in the zygote, before
    any fork: decode a run frame, encode ``ready``, load and run std.noop, measure,
    encode the reply.

    CPython 3.11 counts a function's first calls in its code object and then
    rewrites ("quickens", specialises) the bytecode in place; each such write in a
    child is a copy-on-write fault. Done here, the code a request runs through is
    already in its final form when children are forked (measured: ≈ 30 fewer faults
    per child, of ≈ 510).

    A warm child also goes once through it (:func:`_rehearse`) while it waits, to take
    the request's remaining first-touch faults ahead of it: measured, an idle-pool
    request 1.1 → 0.74 ms p50; it costs ≈ 0.1–0.3 ms of CPU per execution, and a
    back-to-back loop that saturates the machine finds more children still busy
    with it (p99 ≈ 5.5 → 6.5 ms). Latency when the pool is ready was preferred.
    """
    for _ in range(rounds):
        _rehearse(isolation.Report())


def _rehearse(report: isolation.Report) -> None:
    """One request's path through this module, on std.noop, with nothing sent (in
    the zygote, and in each warm child while it waits); never raises (an
    optimisation must not fail anything) and leaves nothing an execution could see."""
    try:
        frame = protocol.encode({"type": "run", "id": 0, "action": {
            "name": "std.noop", "target": "mistral_sandbox.actions.std:NoOpAction"},
            "params": {}, "context": _REHEARSAL_CONTEXT, "limits": dict(CEILING),
            "mode": "run"})
        request = protocol.validate(protocol.unpackb(frame[protocol.HEADER.size:]),
                                    frozenset({"run"}))
        protocol.encode({"type": "ready", "id": 0, "isolation": report.to_dict()})
        reply = _run_action(request, _Sink())
        reply["usage"] = _usage()
        _encode_reply(reply)
    except Exception:  # an optimisation: never fail a child for it
        pass


def _exit(code: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(code)


def _serve(exec_id: Optional[int], max_frame: int, report: isolation.Report,
           error: Optional[isolation.IsolationError], network: bool) -> int:
    """Channel on fd 3: read the request, apply its limits, run, reply; the exit code.

    ``exec_id`` is the execution a cold child was forked for (a warm child takes
    the id from the request)."""
    if "fds" not in report.applied:  # fd 3 is not our channel: nothing to talk to
        _stderr_note("mistral-sandbox child: %s" % error)
        return EXIT_CHANNEL_LOST
    sock = socket.socket(fileno=isolation.CHANNEL_FD)
    channel = _Channel(sock, exec_id)
    CHANNEL[0] = channel
    if exec_id is None:
        _rehearse(report)
    try:
        request = protocol.validate(protocol.read_frame(sock, max_frame), frozenset({"run"}))
        if exec_id is not None and request["id"] != exec_id:
            raise protocol.ProtocolError("run frame for execution %r, expected %r"
                                         % (request["id"], exec_id))
    except (EOFError, OSError, protocol.ProtocolError) as exc:
        if not isinstance(exc, EOFError) or exec_id is not None:  # EOF: an idle warm child
            _stderr_note("mistral-sandbox child: cannot receive the request: %s: %s"
                         % (type(exc).__name__, exc))  # whose pool was shut down
        return EXIT_CHANNEL_LOST
    channel.exec_id = request["id"]
    try:
        return _serve_request(channel, request, report, error, network)
    finally:
        _release_streams(sock)


def _apply_limits(report: isolation.Report, limits: Dict[str, Any],
                  plan=None) -> Optional[isolation.IsolationError]:
    """The rlimits step for ``limits``, unless exactly these are applied already."""
    if APPLIED_LIMITS and APPLIED_LIMITS[0] == limits:
        return None
    try:
        isolation.apply_step(report, POLICY, "rlimits", isolation.apply_rlimits, report, limits,
                             plan)
    except isolation.IsolationError as exc:
        return exc
    APPLIED_LIMITS[:] = [dict(limits)]
    return None


APPLIED_LIMITS: list = []  # [the limits whose rlimits this process has applied]


def _release_streams(sock: socket.socket) -> None:
    """Close stdout, stderr and the channel: the parent's EOF on all three (with the
    reply in hand) completes the outcome while this process is still exiting."""
    _close_stdio()
    try:
        sock.close()
    except OSError:
        pass


STDIO_CLOSED = [False]


def _close_stdio() -> None:
    """Flush and close stdout and stderr. Done as soon as the action has returned,
    before the final reply: the parent then has their EOFs when the reply arrives."""
    if STDIO_CLOSED[0]:
        return
    STDIO_CLOSED[0] = True
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


def _usage() -> Dict[str, Any]:
    """This process's own resource use, and that of the children it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_user": own.ru_utime + kids.ru_utime, "cpu_sys": own.ru_stime + kids.ru_stime,
            "max_rss": max(own.ru_maxrss, kids.ru_maxrss) * 1024}


def _serve_request(channel: _Channel, request: Dict[str, Any], report: isolation.Report,
                   error: Optional[isolation.IsolationError], network: bool) -> int:
    exec_id = channel.exec_id
    limits = request.get("limits") or {}
    if error is None and bool(limits.get("network")) != network:
        error = isolation.IsolationError("net_ns", "child prepared with network=%s for a "
                                         "request with network=%s" % (network,
                                                                      limits.get("network")))
    if error is None:
        error = _apply_limits(report, limits)
    if error is not None:
        channel.send({"type": "error", "id": exec_id, "kind": "sandbox_error",
                      "message": str(error), "isolation": report.to_dict()})
        return EXIT_OK
    if not channel.send({"type": "ready", "id": exec_id, "isolation": report.to_dict()}):
        return EXIT_CHANNEL_LOST

    # Prepared before tenant code runs: sendable even when memory is exhausted.
    out_of_memory = protocol.encode({"type": "error", "id": exec_id, "kind": "memory_error",
                                     "message": "MemoryError: the action exceeded its memory "
                                                "limit"})
    max_result = limits.get("max_result_bytes")
    try:
        try:
            reply = _run_action(request, channel)
        finally:
            _close_stdio()  # the action is done: nothing more goes to stdout/stderr
        reply["usage"] = _usage()
        frame = _encode_reply(reply)
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
    except _LoadFailure as exc:
        channel.error("load_error", str(exc))
    except _ActionFailure as exc:
        cause = exc.__cause__
        if isinstance(cause, MemoryError):
            channel.send_raw(out_of_memory)
        else:
            message = ("%s" % cause) if isinstance(cause, ActionException) else \
                "%s: %s" % (type(cause).__name__, cause)
            channel.error("action_error", message, cause)
    except BaseException as exc:  # our own bug: report it, don't hide it
        channel.error("sandbox_error", "runner failure in child: %s: %s"
                      % (type(exc).__name__, exc), exc)
    return EXIT_CHANNEL_LOST if channel.broken else EXIT_OK


def _stderr_note(text: str) -> None:
    try:
        os.write(2, (text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


class _LoadFailure(Exception):
    pass


class _ActionFailure(Exception):
    pass


def install_runtime(preloaded=()) -> None:
    """What every action finds set up; done once, in the zygote, before any fork.

    Log records (and warnings, shown once per place) go to the child's channel.
    ``is_legacy`` is computed for the action classes of the ``preloaded``
    modules, so a child need not inspect their signatures (each first touch of
    a shared page costs a child a copy-on-write fault).
    """
    root = logging.getLogger()
    root.handlers[:] = [_LogHandler()]
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


def _run_action(request: Dict[str, Any], channel: Any) -> Dict[str, Any]:
    action_spec = request["action"]
    name = action_spec.get("name") or action_spec.get("target")
    mode = request.get("mode", "run")
    try:
        target = action_spec["target"]
        cls = loader.check_action_class(loader.import_target(target), name)
        if mode == "describe":
            return {"type": "result", "id": channel.exec_id, "data": loader.describe(cls, name),
                    "sync": True}
        action = loader.instantiate(cls, request.get("params") or {}, name)
        context = ActionContext.from_dict(request.get("context"))
        action_context = loader.make_context(action, context)
    except loader.LoadError as exc:
        hint = ""
        if "ModuleNotFoundError" in str(exc) and UNREADABLE_PATHS:
            hint = ("; note: the sandbox uid cannot read %s, so only modules the zygote "
                    "preloaded are importable from there (make the path world-readable or "
                    "preload the module)" % ", ".join(UNREADABLE_PATHS))
        raise _LoadFailure(str(exc) + hint) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _LoadFailure("malformed request for %s: %s" % (name, exc)) from None
    try:
        with security.bind(context.security):
            is_sync = getattr(action, "is_sync", None)  # duck-typed actions may lack it
            sync = bool(is_sync()) if callable(is_sync) else True
            value = api_base.call_run(action, action_context,
                                      "test" if mode == "test" else "run")
    except BaseException as exc:
        raise _ActionFailure() from exc
    reply = {"type": "result", "id": channel.exec_id, "sync": sync}
    reply.update(_unwrap_result(value) if sync or mode == "test" else
                 {"data": None, "error": None, "cancel": False})
    return reply


def _encode_reply(reply: Dict[str, Any]) -> bytes:
    for field in ("data", "error"):
        if not protocol.depth_ok(reply.get(field)):
            raise protocol.SerializationError("result is nested deeper than %d levels"
                                              % protocol.MAX_DEPTH)
    try:
        return protocol.encode(reply)
    except protocol.SerializationError as exc:
        problem = protocol.find_unserializable(reply.get("data"), "result") or \
            protocol.find_unserializable(reply.get("error"), "result error") or str(exc)
        raise protocol.SerializationError(problem) from None
