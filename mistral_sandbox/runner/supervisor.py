"""Parent side of the sandbox: :class:`Sandbox` — queue, concurrency, deadlines, outcomes.

One I/O thread per ``Sandbox`` multiplexes everything with a selector: the
zygote's control socket, and for each running execution its channel and its
stdout/stderr pipes. No thread is created per execution. Callers get a
:class:`concurrent.futures.Future` that always resolves to exactly one
:class:`~mistral_sandbox.runner.outcome.Outcome` — a bad reference, a hostile
child or a dying zygote all end in an outcome, never in an exception from the
future.
"""

from __future__ import annotations

import collections
import concurrent.futures
import heapq
import itertools
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Deque, Dict, List, Mapping, Optional, Union

import msgpack

import mistral_sandbox
from mistral_sandbox.actions import catalog as catalog_mod
from mistral_sandbox.api.context import REDACTED, ActionContext
from mistral_sandbox.api.types import Result
from mistral_sandbox.runner import child as child_mod
from mistral_sandbox.runner import isolation as isolation_mod
from mistral_sandbox.runner import protocol
from mistral_sandbox.runner.limits import DEFAULT_CEILING, LimitError, Limits, clamp, parse_size
from mistral_sandbox.runner.outcome import AsyncHandle, Outcome, Usage
from mistral_sandbox.runner.zygote import WARM_PER_MESSAGE

LOG = logging.getLogger(__name__)
ACTION_LOG = logging.getLogger("mistral_sandbox.action")

# Operator-trusted modules imported once in the zygote: children start with them loaded.
# Each module makes every fork and exit of a child a little slower (more page tables to
# copy and tear down): importlib.metadata and tempfile cost ~0.1 ms per fork and ~0.2 ms
# per exit here, hashlib and uuid (OpenSSL's libcrypto) ~0.25 ms of CPU per execution —
# so they are not listed; add what your actions import with Sandbox(preload=...).
DEFAULT_PRELOAD = ("mistral_sandbox.runner.child", "mistral_sandbox.actions.std",
                   "json", "re", "datetime", "base64", "traceback")
DEFAULT_UID_START = 1_500_000_000
DEFAULT_UID_COUNT = 65536
DEFAULT_WARM = 4
# what an execution may write in its scratch directory (a tmpfs of this size): as much
# as one file may hold under the default ceiling's file_size
DEFAULT_SCRATCH_SIZE = DEFAULT_CEILING.file_size
MIN_SCRATCH_SIZE = 64 * 1024
TAIL_BYTES = 64 * 1024
READ_CHUNK = 256 * 1024
ZYGOTE_START_TIMEOUT = 60.0
ASYNC_TTL = 24 * 3600.0
RESTART_BACKOFF = (0.0, 0.1, 0.5, 1.0, 2.0)  # seconds before zygote restart attempts
DEFAULT_MAX_QUEUE = 10000
COLD_FALLBACK_WAIT = 0.02  # seconds an execution waits for a warm child before a cold one

_ERROR_KIND_REASON = {
    "load_error": "load_error",
    "action_error": "action_error",
    "serialization_error": "action_error",
    "memory_error": "memory_limit",
    "sandbox_error": "sandbox_error",
    "result_too_large": "output_limit",
}


class SandboxError(RuntimeError):
    """The sandbox cannot serve requests (failed start, or already shut down)."""


class Overloaded(SandboxError):
    """The submission queue is full: retry later, or let another executor take it.

    Raised at once rather than blocking: an RPC executor must not stall its
    listener thread, and a rejected message can be redelivered elsewhere.
    """


def _default_uid_lock_dir() -> str:
    if os.access("/run", os.W_OK):
        return "/run/mistral-sandbox/uids"
    return os.path.join(tempfile.gettempdir(), "mistral-sandbox-uids")


class _Tail:
    """Counts bytes of a stream and keeps the last ``size`` of them."""

    __slots__ = ("size", "total", "buf")

    def __init__(self, size: int):
        self.size = size
        self.total = 0
        self.buf = bytearray()

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data
        if len(self.buf) > self.size:
            del self.buf[:len(self.buf) - self.size]

    def text(self) -> str:
        return self.buf.decode("utf-8", "replace")


class _Slot:
    """An idle warm child: isolated ahead of time, waiting for one request on ``sock``."""

    __slots__ = ("slot", "pid", "scratch", "sock", "out_r", "err_r")

    def __init__(self, slot: int, pid: int, scratch: str, fds: List[int]):
        self.slot, self.pid, self.scratch = slot, pid, scratch
        self.sock = socket.socket(fileno=fds[0])
        self.out_r, self.err_r = fds[1], fds[2]

    def close(self) -> None:
        self.sock.close()
        os.close(self.out_r)
        os.close(self.err_r)


class _Execution:
    """Parent-side state of one execution (touched only by the I/O thread once queued)."""

    def __init__(self, exec_id: int, ref: catalog_mod.ActionRef, frame: bytes,
                 future: concurrent.futures.Future, limits: Limits, notes: List[str],
                 aeid: Optional[str], token: Optional[str]):
        self.id = exec_id
        self.ref = ref
        self.future = future
        self.limits = limits
        self.notes = notes
        self.aeid = aeid
        self.token = token
        # kept until the child reports ready, to run the execution again if the warm
        # child it was handed to dies before (no tenant code ran): at most once
        self.request: Optional[bytes] = frame
        self.requeued = False
        self.future_running = False  # set_running_or_notify_cancel() done
        self.cold_wait_since: Optional[float] = None  # waiting for a warm child since
        self.new_attempt()

    def new_attempt(self) -> None:
        """Forget every trace of a child (a fresh execution, or one run again)."""
        self.frame = self.request or b""
        self.sock: Optional[socket.socket] = None
        self.out_r = self.err_r = -1
        self.written = 0
        self.pid: Optional[int] = None
        self.slot: Optional[int] = None  # the warm child's slot, if it runs in one
        self.scratch: Optional[str] = None
        self.delivered = False  # the future is resolved; waiting only for the exit report
        self.exited = False  # the exit report (or the zygote's death) is being handled
        self.started = 0.0
        self.deadline: Optional[float] = None
        limits = self.limits
        self.reader = protocol.FrameReader(
            (limits.max_result_bytes or protocol.DEFAULT_MAX_FRAME) + 64 * 1024)
        tail = min(limits.max_output_bytes or TAIL_BYTES, TAIL_BYTES)
        self.stdout = _Tail(tail)
        self.stderr = _Tail(tail)
        self.isolation: Dict[str, Any] = {}
        self.reply: Optional[Dict[str, Any]] = None
        self.logs: List[Dict[str, Any]] = []
        self.log_bytes = 0
        self.logs_dropped = 0
        self.kill_reason: Optional[str] = None
        self.kill_message = ""
        self.kill_sent = False
        self.channel_closed = False

    def redact(self, text: Optional[str]) -> Optional[str]:
        if text and self.token:
            return text.replace(self.token, REDACTED)
        return text


class Sandbox:
    """Runs actions in sandboxed, single-use children. Thread-safe.

    ``Sandbox(max_workers=4, ceiling=None, ...)`` starts a zygote at once and
    raises :class:`SandboxError` if it cannot. ``ceiling`` is the operator's
    :class:`Limits` (default :data:`~mistral_sandbox.runner.limits.DEFAULT_CEILING`);
    per-call ``limits`` can only tighten it. Use as a context manager, or call
    :meth:`shutdown`: afterwards no process, fd or temporary directory of the
    sandbox remains. ``preload`` names operator-trusted modules the zygote
    imports once (children then start with them loaded); ``extra_path`` adds
    operator-trusted directories (action packs) to the children's module path.
    ``isolation`` overrides the policy of isolation steps
    (:data:`~mistral_sandbox.runner.isolation.DEFAULT_POLICY`), e.g.
    ``{"net_ns": "required"}``; a malformed policy raises ``PolicyError``.
    ``seccomp_library`` names the libseccomp to load (default: the system's).
    ``warm`` is how many children the zygote keeps forked and isolated ahead
    of time (each still serves exactly one execution; default
    ``min(max_workers, 4)``; 0 forks every child on request). At most
    ``max_queue`` executions wait for a worker; beyond that :meth:`submit`
    raises :class:`Overloaded`. ``scratch_size`` (bytes, or a size like
    ``"64MiB"``) is what an execution may write in its scratch directory in all:
    with the mount_ns step, each child's scratch directory is then a private
    tmpfs of that size (memory of the host, not counted in the action's
    memory limit; gone with the child — an action filling it gets ENOSPC);
    ``None`` makes it a directory under ``scratch_root`` instead (disk, no total
    bound but the file system's). A malformed or too small size raises
    ``LimitError``. ``share_namespaces``: children without network join one
    network, ipc and uts namespace the zygote made (when root, with the seccomp
    step required, whose filter makes sharing safe) instead of creating their
    own; False creates them per child (≈ 1.1 ms more CPU each);
    ``zygote_info["namespaces"]`` says which are shared. ``native_isolation``:
    where the optional C helper is built and the configuration is the common one,
    children apply their isolation steps in one native call (same steps, same
    report, ≈ 10 % less CPU per execution); ``zygote_info["native_isolation"]``
    says "on" or why not; False keeps the Python steps.

    A future resolves as soon as the child has replied and closed its channel
    and its stdout/stderr (the process is then exiting; its slot among
    ``max_workers`` is freed when the zygote has reaped it, contained what it
    left and removed its scratch directory). ``Outcome.usage`` is then measured
    by the runner inside the child (``usage.source == "child"``) and
    ``exit_status`` is None. With ``wait_exit=True`` every future waits for that
    exit report instead: exit status and kernel-measured usage (``"kernel"``),
    containment and scratch removal confirmed, at the cost of the process
    teardown (≈ 1 ms here) on every execution.
    """

    def __init__(self, max_workers: int = 4, ceiling: Optional[Limits] = None,
                 catalog: Optional[catalog_mod.Catalog] = None, preload=(),
                 scratch_root: Optional[str] = None, uid_start: int = DEFAULT_UID_START,
                 uid_count: int = DEFAULT_UID_COUNT, uid_lock_dir: Optional[str] = None,
                 max_frame: int = protocol.DEFAULT_MAX_FRAME, python: str = sys.executable,
                 extra_path=(), isolation: Optional[Mapping[str, str]] = None,
                 seccomp_library: Optional[str] = None, warm: Optional[int] = None,
                 max_queue: int = DEFAULT_MAX_QUEUE, wait_exit: bool = False,
                 scratch_size: Optional[Any] = DEFAULT_SCRATCH_SIZE,
                 share_namespaces: bool = True, native_isolation: bool = True):
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1, got %r" % (max_workers,))
        policy = isolation_mod.make_policy(isolation)  # validate before allocating anything
        if warm is None:
            warm = min(max_workers, DEFAULT_WARM)
        if warm < 0:
            raise ValueError("warm must be >= 0, got %r" % (warm,))
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1, got %r" % (max_queue,))
        if scratch_size is not None:
            scratch_size = parse_size(scratch_size, "scratch_size")  # LimitError if malformed
            if scratch_size < MIN_SCRATCH_SIZE:
                raise LimitError("scratch_size: at least %d bytes (or None for a directory "
                                 "on the scratch root's file system), got %d"
                                 % (MIN_SCRATCH_SIZE, scratch_size))
        self.scratch_size = scratch_size
        self.max_queue = max_queue
        self.wait_exit = wait_exit
        self.warm = warm  # children the zygote keeps prepared
        self.restarts = 0
        self._cancels: List[concurrent.futures.Future] = []
        self._by_future: Dict[concurrent.futures.Future, _Execution] = {}
        self.max_workers = max_workers
        self.ceiling = ceiling if ceiling is not None else DEFAULT_CEILING
        self.catalog = catalog or catalog_mod.default_catalog()
        self.max_frame = max_frame
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._queue: Deque[_Execution] = collections.deque()
        self._running: Dict[int, _Execution] = {}
        self._deadlines: List[Any] = []
        self._stale_deadlines = 0
        self._shutdown = False
        self._kill_all = False
        self._closed = False
        self._python = python
        self._zygote: Optional[subprocess.Popen] = None
        self._ctl: Optional[socket.socket] = None
        self.zygote_info: Dict[str, Any] = {}
        self._warm_pids: frozenset = frozenset()
        self._idle: Deque[_Slot] = collections.deque()  # warm children nobody has taken
        self._by_slot: Dict[int, _Execution] = {}
        self._cold_wait_until: Optional[float] = None
        self._taken: List[int] = []  # slots taken and done, not yet told to the zygote
        self._pending_taken: set = set()  # slots taken by executions still undelivered
        self._own_scratch = scratch_root is None
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self.scratch_root = scratch_root or ""
        self.scratch_dir = ""  # this zygote generation's directory inside scratch_root
        self._generation = 0
        try:
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
            self.scratch_root = scratch_root or tempfile.mkdtemp(prefix="mistral-sandbox-")
            os.chmod(self.scratch_root, 0o711)  # sandbox uids may enter only their own dir
            self._zygote_cfg = {
                "max_frame": max_frame,
                "preload": list(DEFAULT_PRELOAD) + list(preload),
                "uid_start": uid_start,
                "uid_count": uid_count,
                "uid_lock_dir": uid_lock_dir or _default_uid_lock_dir(),
                "pool": max_workers + warm + 1,
                "warm": warm,
                "extra_path": [os.path.abspath(p) for p in extra_path],
                "policy": policy,
                "seccomp_library": seccomp_library,
                "ceiling": self.ceiling.to_dict(),
                "scratch_size": scratch_size,
                "share_namespaces": bool(share_namespaces),
                "native_isolation": bool(native_isolation),
            }
            self._start_zygote()
        except BaseException:
            self._stop_zygote()
            self._cleanup_resources()
            raise
        self._thread = threading.Thread(target=self._loop, name="mistral-sandbox-io",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public API

    def submit(self, ref: str, params: Optional[Mapping[str, Any]] = None,
               context: Any = None, limits: Union[Limits, Mapping[str, Any], None] = None,
               mode: str = "run") -> "concurrent.futures.Future[Outcome]":
        """Queue one execution; the future resolves to its :class:`Outcome`.

        ``ref``: entry-point name or ``module:Class``. ``params``: the action's
        parameters (plain data). ``context``: an ``ActionContext`` or its
        ``to_dict()``. ``limits``: a ``Limits`` or a mapping of limit names to
        human values; raises :class:`~mistral_sandbox.runner.limits.LimitError`
        if malformed. ``mode``: ``run``, ``test`` (dry run) or ``describe``.
        Reference, parameter and context errors resolve the future with a
        ``load_error`` outcome. Raises :class:`SandboxError` after shutdown.
        """
        if mode not in ("run", "test", "describe"):
            raise ValueError("mode must be run, test or describe, got %r" % (mode,))
        if limits is None:
            effective, notes = self.ceiling, []  # the common case: nothing to merge
        else:
            request = limits if isinstance(limits, Limits) else Limits.parse(limits)
            effective, notes = clamp(self.ceiling, request)
        future: concurrent.futures.Future = concurrent.futures.Future()
        exec_id = next(self._ids)
        name = ref if isinstance(ref, str) else repr(ref)
        try:
            action_ref = self.catalog.resolve(ref)
            ctx = _context_dict(context)
            aeid = ctx["execution"].get("action_execution_id")
            if not aeid:
                aeid = ctx["execution"]["action_execution_id"] = str(uuid.uuid4())
            token = ctx["security"].get("auth_token")
            if params is None:
                params = {}
            if not isinstance(params, Mapping):
                raise ValueError("parameters must be a mapping, got %s" % type(params).__name__)
            bad = [k for k in params if not isinstance(k, str)]
            if bad:
                raise ValueError("parameter names must be strings, got %r" % (bad[0],))
            problem = None
            try:
                frame = protocol.encode({
                    "type": "run", "id": exec_id, "action": action_ref.to_dict(),
                    "params": dict(params), "context": ctx, "limits": effective.to_dict(),
                    "mode": mode}, self.max_frame)
            except protocol.SerializationError:
                problem = protocol.find_unserializable(dict(params), "parameter") or \
                    "context is not serializable"
            if problem:
                raise ValueError("cannot send the parameters: %s" % problem)
        except (catalog_mod.ActionReferenceError, ValueError, protocol.ProtocolError) as exc:
            future.set_result(Outcome("load_error", message=str(exc), execution_id=exec_id,
                                      action=name, limits=effective.to_dict(human=True),
                                      notes=notes))
            return future
        ex = _Execution(exec_id, action_ref, frame, future, effective, notes, aeid, token)
        with self._lock:
            if self._shutdown:
                raise SandboxError("the sandbox is shut down")
            if len(self._queue) >= self.max_queue:
                raise Overloaded("the sandbox queue is full (%d executions waiting, "
                                 "max_queue=%d)" % (len(self._queue), self.max_queue))
            self._queue.append(ex)
            self._by_future[future] = ex
        self._wake()
        return future

    def cancel(self, future: "concurrent.futures.Future[Outcome]") -> bool:
        """Cancel an execution: a queued one is removed (``future.cancelled()``); a
        running one has its whole process tree killed and ends with ``cancelled``.
        False if it had already finished or is not this sandbox's."""
        if future.cancel():
            return True
        with self._lock:
            ex = self._by_future.get(future)
            if ex is None or future.done():
                return False
            self._cancels.append(future)
        self._wake()
        return True

    def running_pids(self) -> Dict[int, int]:
        """``{execution id: pid}`` of the executions whose child is running now."""
        return {ex_id: ex.pid for ex_id, ex in list(self._running.items())
                if ex.pid is not None}

    def started_pids(self) -> Dict[int, int]:
        """Like :meth:`running_pids`, only executions whose action has started (the
        child reported ready, so tenant code may run; before that, an execution whose
        prepared child dies is run again in a fresh one)."""
        return {ex_id: ex.pid for ex_id, ex in list(self._running.items())
                if ex.pid is not None and ex.isolation}

    def warm_pids(self) -> frozenset:
        """Pids of the children waiting, isolated, for an execution (idle; owned by the
        zygote; exactly one execution each)."""
        return self._warm_pids

    def warm_fds(self) -> frozenset:
        """File descriptors this process holds for those idle children (channel,
        stdout and stderr of each; closed when the child is taken or dies)."""
        fds = set()
        for w in list(self._idle):
            fds.update((w.sock.fileno(), w.out_r, w.err_r))
        fds.discard(-1)
        return frozenset(fds)

    def run(self, ref: str, params: Optional[Mapping[str, Any]] = None, context: Any = None,
            limits: Union[Limits, Mapping[str, Any], None] = None, mode: str = "run") -> Outcome:
        """``submit(...).result()``."""
        return self.submit(ref, params, context, limits, mode).result()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False,
                 kill_running: bool = False) -> None:
        """Stop accepting work; like ``concurrent.futures.Executor.shutdown``.

        ``cancel_futures`` cancels queued executions; ``kill_running`` also
        kills running ones (their outcome is ``cancelled``). With ``wait`` the
        call returns when every execution has ended and the zygote, its
        children, fds and scratch directories are gone.
        """
        dropped = []  # queued to run again: already running, so cannot be cancel()ed
        with self._lock:
            self._shutdown = True
            if cancel_futures or kill_running:
                while self._queue:
                    ex = self._queue.popleft()
                    if not ex.future.cancel():
                        dropped.append(ex)
                    self._by_future.pop(ex.future, None)
            if kill_running:
                self._kill_all = True
        for ex in dropped:
            self._resolve(ex, self._outcome_without_run(
                ex, "cancelled", "the sandbox was shut down before the execution ran"))
        self._wake()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        interrupted = exc_type is not None
        self.shutdown(wait=True, cancel_futures=interrupted, kill_running=interrupted)

    # ------------------------------------------------------------ zygote

    def _start_zygote(self) -> None:
        # Each zygote generation gets its own directory: children of a dead generation
        # can still be dying (and creating dirs) when the next one starts.
        self._generation += 1
        gen_dir = os.path.join(self.scratch_root, "g%d" % self._generation)
        os.mkdir(gen_dir, 0o711)
        os.chmod(gen_dir, 0o711)
        self.scratch_dir = gen_dir
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cfg = dict(self._zygote_cfg, ctl_fd=child.fileno(), scratch_root=gen_dir)
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(mistral_sandbox.__file__)))
        bootstrap = ("import sys; sys.path.insert(0, %r); "
                     "from mistral_sandbox.runner.zygote import main; main()" % pkg_root)
        err_path = gen_dir + ".stderr"
        with open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    [self._python, "-I", "-c", bootstrap, json.dumps(cfg)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    pass_fds=(child.fileno(),), close_fds=True, start_new_session=True,
                    env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                    cwd="/")
            finally:
                child.close()
        parent.settimeout(ZYGOTE_START_TIMEOUT)
        try:
            data = parent.recv(protocol_max_packet())
        except OSError as exc:
            data = b""
            LOG.error("zygote did not answer: %s", exc)
        except BaseException:  # interrupted while waiting: leave nothing behind
            parent.close()
            proc.kill()
            proc.wait()
            raise
        if not data:
            parent.close()
            proc.kill()
            proc.wait()
            with open(err_path, "rb") as f:
                tail = f.read()[-4000:].decode("utf-8", "replace").strip()
            raise SandboxError("the zygote failed to start (exit status %s): %s"
                               % (proc.returncode, tail or "no error output"))
        hello = msgpack.unpackb(data, raw=False)
        parent.setblocking(False)
        self._zygote, self._ctl, self.zygote_info = proc, parent, hello
        self._sel.register(parent, selectors.EVENT_READ, self._on_ctl)
        LOG.debug("zygote %d ready (root=%s)", hello.get("pid"), hello.get("root"))
        if hello.get("unreadable_paths"):
            LOG.warning("sandbox uids cannot read %s: actions can import from there only "
                        "what the zygote preloaded", ", ".join(hello["unreadable_paths"]))

    def _drop_idle(self) -> None:
        """Forget every idle warm child (the zygote kills them; we close our ends)."""
        while self._idle:
            self._idle.popleft().close()
        self._warm_pids = frozenset()
        self._taken = []
        self._pending_taken.clear()

    def _stop_zygote(self) -> None:
        self._drop_idle()
        if self._ctl is not None:
            try:
                self._sel.unregister(self._ctl)
            except (KeyError, ValueError):
                pass
            self._ctl.close()
            self._ctl = None
        if self._zygote is not None:
            try:
                self._zygote.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._zygote.kill()
                self._zygote.wait()
            self._zygote = None

    def _zygote_died(self, why: str) -> None:
        """Finish every in-flight execution exactly once, then restart the zygote.

        Its children die with it (parent-death signal); their scratch dirs and the
        idle warm children's are removed here; the new zygote sweeps the uids it
        claims, so nothing of the old generation survives.
        """
        LOG.error("zygote died: %s", why)
        proc = self._zygote
        for ex in list(self._running.values()):
            ex.kill_reason = ex.kill_reason or "sandbox_error"
            ex.kill_message = ex.kill_message or "the zygote died (%s) during the execution" % why
            self._finish(ex, None)
        self._by_slot.clear()
        self._stop_zygote()
        if proc is not None and proc.returncode is not None:
            LOG.error("zygote exit status %s", proc.returncode)
        self._remove_generations()
        if self._shutdown:
            return
        delay = RESTART_BACKOFF[0]
        for attempt, delay in enumerate(RESTART_BACKOFF, 1):
            try:
                self._start_zygote()
                self.restarts += 1
                LOG.warning("zygote restarted (attempt %d)", attempt)
                return
            except SandboxError as exc:
                error = exc
                LOG.error("zygote restart %d failed: %s", attempt, exc)
                time.sleep(delay)
        self._break("the sandbox is broken: %s" % error)

    def _break(self, message: str) -> None:
        """Stop for good: refuse new work, end every queued execution with ``message``."""
        with self._lock:
            self._shutdown = True
            queued = list(self._queue)
            self._queue.clear()
        for ex in queued:
            if ex.future_running or ex.future.set_running_or_notify_cancel():
                self._resolve(ex, self._outcome_without_run(ex, "sandbox_error", message))
            else:
                self._resolve(ex, None)

    # ------------------------------------------------------------ I/O loop

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def _on_wake(self, _mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _loop(self) -> None:
        isolation_mod.set_thread_name(b"ms-sandbox-io")
        try:
            while True:
                with self._lock:
                    kill_all = self._kill_all
                    done = self._shutdown and not self._queue and not self._running
                    cancels, self._cancels = self._cancels, []
                if done:
                    break
                if kill_all:
                    for ex in self._running.values():
                        self._kill(ex, "cancelled", "the sandbox was shut down during the run")
                for fut in cancels:
                    ex = self._by_future.get(fut)
                    if ex is not None and ex.id in self._running:
                        self._kill(ex, "cancelled", "the execution was cancelled")
                    elif ex is not None and ex.future_running:  # queued again, or waiting
                        with self._lock:
                            queued = ex in self._queue
                            if queued:
                                self._queue.remove(ex)
                        if queued:
                            self._resolve(ex, self._outcome_without_run(
                                ex, "cancelled", "the execution was cancelled"))
                self._dispatch()
                timeout = None
                if self._deadlines:
                    timeout = max(0.0, self._deadlines[0][0] - time.monotonic())
                if self._cold_wait_until is not None:
                    wait = max(0.0, self._cold_wait_until - time.monotonic())
                    timeout = wait if timeout is None else min(timeout, wait)
                for key, mask in self._sel.select(timeout):
                    key.data(mask)
                self._check_deadlines()
                self._tell_taken()
        except BaseException:
            LOG.exception("sandbox I/O loop crashed")
            for ex in list(self._running.values()):
                ex.kill_reason = "sandbox_error"
                ex.kill_message = "the sandbox I/O loop crashed"
                self._finish(ex, None)
            self._break("the sandbox I/O loop crashed")
        finally:
            self._stop_zygote()
            self._cleanup_resources()

    def _cleanup_resources(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sel.close()
        finally:
            self._wake_r.close()
            self._wake_w.close()
        if self._own_scratch and self.scratch_root:
            shutil.rmtree(self.scratch_root, ignore_errors=True)
        elif self.scratch_root:
            self._remove_generations(keep_logs=False)

    def _remove_generations(self, keep_logs: bool = True) -> None:
        """Remove the generation directories (and, unless kept, their logs) we created."""
        for gen in range(1, self._generation + 1):
            path = os.path.join(self.scratch_root, "g%d" % gen)
            shutil.rmtree(path, ignore_errors=True)
            if not keep_logs:
                try:
                    os.unlink(path + ".stderr")
                except OSError:
                    pass

    def _dispatch(self) -> None:
        self._cold_wait_until = None
        while len(self._running) < self.max_workers and self._ctl is not None:
            with self._lock:
                if not self._queue:
                    break
                ex = self._queue.popleft()
            if not ex.future.done() and self._wait_for_warm(ex):
                with self._lock:
                    self._queue.appendleft(ex)  # (its future stays pending: cancellable)
                break
            if not ex.future_running:
                if not ex.future.set_running_or_notify_cancel():
                    self._resolve(ex, None)  # cancelled while queued
                    continue
                ex.future_running = True
            self._start(ex)
        self._tell_taken()

    def _wait_for_warm(self, ex: _Execution) -> bool:
        """True if ``ex`` should wait (at most COLD_FALLBACK_WAIT) for a warm child.

        With the pool empty the zygote is already forking replacements (it was told
        every taken child); a child forked now for this request would compete with
        them and still have its whole isolation ahead of it: measured back to back,
        such cold executions took 6.4 ms at p50 against 1.1 ms on a warm child.
        """
        if self._idle or not self.warm or \
                bool(ex.limits.network) != bool(self.ceiling.network):
            return False
        now = time.monotonic()
        if ex.cold_wait_since is None:
            ex.cold_wait_since = now
        until = ex.cold_wait_since + COLD_FALLBACK_WAIT
        if now >= until:
            return False  # none came: fork one for it
        self._cold_wait_until = until
        return True

    def _taken_done(self, ex: _Execution) -> None:
        """``ex``'s warm slot may be refilled: it has ended (or been delivered)."""
        if ex.slot in self._pending_taken:
            self._pending_taken.discard(ex.slot)
            self._taken.append(ex.slot)

    def _tell_taken(self) -> None:
        """Tell the zygote which warm children were taken, so it refills its pool.

        Children whose execution is over (delivered or ended) are told at once;
        children still running only once half the pool is used: a replacement forked
        and prepared while a request runs competes with it for the CPU (requests one
        at a time at 250/s, 5 interleaved rounds: p50 1.04 ms with the refill after
        delivery, 1.11 ms with it at once; back to back no worse). The zygote notices
        a taken child that ended by itself; telling it also says that child did not
        die unused.
        """
        if not (self._taken or self._pending_taken):
            return
        if len(self._idle) <= self.warm // 2:  # running low: refill now
            self._taken.extend(self._pending_taken)
            self._pending_taken.clear()
        if self._taken and self._ctl is not None:
            try:
                self._ctl.send(msgpack.packb({"op": "taken", "slots": self._taken}))
            except OSError:
                pass  # a dead zygote is noticed on its socket
        self._taken = []

    def _start(self, ex: _Execution) -> None:
        """Hand ``ex`` to an idle warm child, or ask the zygote to fork one for it."""
        if self._idle and bool(ex.limits.network) == bool(self.ceiling.network):
            # (warm children are prepared for the ceiling's network setting)
            w = self._idle.popleft()
            self._warm_pids = frozenset(x.pid for x in self._idle)
            self._pending_taken.add(w.slot)
            ex.slot, ex.pid, ex.scratch = w.slot, w.pid, w.scratch
            self._by_slot[w.slot] = ex
            self._begin(ex, w.sock, w.out_r, w.err_r)
            return
        opened: List[Any] = []
        try:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            opened += [parent, child]
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            opened += [out_r, out_w]
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:  # e.g. EMFILE: degrade to an outcome, leak nothing
            for item in opened:
                item.close() if isinstance(item, socket.socket) else os.close(item)
            self._resolve(ex, self._outcome_without_run(
                ex, "sandbox_error", "cannot create the child's channel: %s" % exc))
            return
        try:
            socket.send_fds(self._ctl, [msgpack.packb({"op": "fork", "id": ex.id,
                                                       "network": bool(ex.limits.network)})],
                            [child.fileno(), out_w, err_w])
        except OSError as exc:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            parent.close()
            child.close()
            self._resolve(ex, self._outcome_without_run(
                ex, "sandbox_error", "cannot reach the zygote: %s" % exc))
            return
        child.close()
        os.close(out_w)
        os.close(err_w)
        self._begin(ex, parent, out_r, err_r)

    def _begin(self, ex: _Execution, sock: socket.socket, out_r: int, err_r: int) -> None:
        """Watch the child's channel and output, and send it the request."""
        sock.setblocking(False)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        ex.sock, ex.out_r, ex.err_r = sock, out_r, err_r
        ex.started = time.monotonic()
        self._running[ex.id] = ex
        if ex.limits.wall_time is not None:
            ex.deadline = ex.started + ex.limits.wall_time
            heapq.heappush(self._deadlines, (ex.deadline, ex.id))
        self._sel.register(out_r, selectors.EVENT_READ, lambda m, ex=ex: self._on_output(ex, 1))
        self._sel.register(err_r, selectors.EVENT_READ, lambda m, ex=ex: self._on_output(ex, 2))
        self._write_request(ex)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if ex.frame else 0)
        self._sel.register(sock, events, lambda m, ex=ex: self._on_channel(ex, m))

    def _write_request(self, ex: _Execution) -> None:
        if not ex.frame:
            return
        try:
            n = ex.sock.send(memoryview(ex.frame)[ex.written:])
        except BlockingIOError:
            return
        except OSError:
            ex.frame = b""  # child gone; its exit report will tell
            return
        ex.written += n
        if ex.written >= len(ex.frame):
            ex.frame = b""

    def _on_channel(self, ex: _Execution, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and ex.frame:
            self._write_request(ex)
            if not ex.frame and ex.sock is not None and not ex.channel_closed:
                self._sel.modify(ex.sock, selectors.EVENT_READ,
                                 lambda m, ex=ex: self._on_channel(ex, m))
        if mask & selectors.EVENT_READ:
            self._read_channel(ex)

    def _read_channel(self, ex: _Execution) -> None:
        if ex.channel_closed or ex.sock is None:
            return
        while True:
            try:
                data = ex.sock.recv(READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_channel(ex)
                self._maybe_deliver(ex)
                return
            if ex.kill_reason == "protocol_error":
                continue  # already condemned; just drain
            try:
                for msg in ex.reader.feed(data):
                    self._on_message(ex, protocol.validate(msg))
            except protocol.ProtocolError as exc:
                self._kill(ex, "protocol_error", "the child broke the protocol: %s" % exc)
            except Exception as exc:  # a validator gap must cost this execution, not the loop
                LOG.exception("unexpected error handling execution %d's messages", ex.id)
                self._kill(ex, "protocol_error", "the child sent a message the runner could "
                           "not handle: %s: %s" % (type(exc).__name__, exc))

    def _close_channel(self, ex: _Execution) -> None:
        if ex.channel_closed:
            return
        ex.channel_closed = True
        try:
            self._sel.unregister(ex.sock)
        except (KeyError, ValueError):
            pass
        if ex.reply is None and not ex.kill_reason:
            try:
                ex.reader.eof()
            except protocol.ProtocolError as exc:
                self._kill(ex, "protocol_error", "the child broke the protocol: %s" % exc)

    def _on_message(self, ex: _Execution, msg: Dict[str, Any]) -> None:
        mtype = msg["type"]
        if mtype == "log":
            self._on_log(ex, msg)
            return
        if "id" in msg and msg["id"] != ex.id:
            raise protocol.ProtocolError("message for execution %r on the channel of %r"
                                         % (msg["id"], ex.id))
        if mtype == "ready":
            if ex.isolation:
                raise protocol.ProtocolError("second ready message")
            ex.isolation = msg["isolation"]
            ex.request = None  # it started: never run again
        elif mtype in ("result", "error"):
            if ex.reply is not None:
                raise protocol.ProtocolError("second %s message" % mtype)
            if not ex.isolation and mtype == "result":
                raise protocol.ProtocolError("result before the child reported ready")
            if not ex.isolation and msg.get("isolation"):
                ex.isolation = msg["isolation"]  # a sandbox_error: steps applied so far
            ex.reply = msg
        elif mtype == "call":
            raise protocol.ProtocolError("nested action calls are not enabled in this runner")

    def _on_log(self, ex: _Execution, msg: Dict[str, Any]) -> None:
        text = ex.redact(msg["msg"])
        size = len(text)
        cap = ex.limits.max_log_bytes
        if cap is not None and ex.log_bytes + size > cap:
            ex.logs_dropped += 1
            return
        ex.log_bytes += size
        entry = {"level": msg["level"], "logger": msg.get("logger"), "msg": text}
        ex.logs.append(entry)
        if ACTION_LOG.isEnabledFor(msg["level"]):
            ACTION_LOG.log(msg["level"], "[%s #%d] %s", ex.ref.name, ex.id, text)

    def _on_output(self, ex: _Execution, which: int) -> None:
        fd = ex.out_r if which == 1 else ex.err_r
        tail = ex.stdout if which == 1 else ex.stderr
        while fd >= 0:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_output(ex, which)
                self._maybe_deliver(ex)
                return
            tail.add(data)
            cap = ex.limits.max_output_bytes
            if cap is not None and ex.stdout.total + ex.stderr.total > cap:
                self._kill(ex, "output_limit", "the action wrote more than %d bytes to "
                           "stdout/stderr" % cap)

    def _close_output(self, ex: _Execution, which: int) -> None:
        fd = ex.out_r if which == 1 else ex.err_r
        if fd < 0:
            return
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        os.close(fd)
        if which == 1:
            ex.out_r = -1
        else:
            ex.err_r = -1

    def _kill(self, ex: _Execution, reason: str, message: str) -> None:
        # a reply already in hand stands, unless the child broke the protocol after it
        if ex.kill_reason is None and (ex.reply is None or reason == "protocol_error"):
            ex.kill_reason, ex.kill_message = reason, message
        if not ex.kill_sent and self._ctl is not None:
            ex.kill_sent = True
            msg = {"op": "kill", "slot": ex.slot} if ex.slot is not None else \
                {"op": "kill", "id": ex.id}
            try:
                self._ctl.send(msgpack.packb(msg))
            except OSError as exc:
                LOG.error("cannot ask the zygote to kill execution %d: %s", ex.id, exc)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, exec_id = heapq.heappop(self._deadlines)
            ex = self._running.get(exec_id)
            if ex is not None and ex.deadline is not None and ex.deadline <= now \
                    and not ex.delivered:
                self._kill(ex, "timeout", "the action exceeded its wall-time limit of %gs"
                           % ex.limits.wall_time)

    def _on_ctl(self, _mask: int) -> None:
        while self._ctl is not None:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._ctl, protocol_max_packet(),
                                                           3 * WARM_PER_MESSAGE)
            except BlockingIOError:
                return
            except OSError as exc:
                self._zygote_died("control channel error: %s" % exc)
                return
            if not data:
                for fd in fds:
                    os.close(fd)
                self._zygote_died("control channel closed")
                return
            try:
                msg = msgpack.unpackb(data, raw=False)
                op = msg.get("op")
            except Exception as exc:  # our own zygote, but a bug must not stop the loop
                for fd in fds:
                    os.close(fd)
                self._zygote_died("malformed control message: %s: %s"
                                  % (type(exc).__name__, exc))
                return
            if op == "warm" and len(fds) == 3 * len(msg.get("slots", ())):
                for i, (slot, pid, scratch) in enumerate(msg["slots"]):
                    self._idle.append(_Slot(int(slot), int(pid), scratch, fds[3 * i:3 * i + 3]))
                self._warm_pids = frozenset(w.pid for w in self._idle)
                continue
            for fd in fds:
                os.close(fd)
            if op == "exit" and "slot" in msg:
                ex = self._by_slot.pop(msg["slot"], None)
                if ex is None:  # an idle warm child died (or was killed): forget it
                    self._forget_slot(msg["slot"])
                else:
                    self._finish(ex, msg)
                continue
            ex = self._running.get(msg.get("id"))
            if ex is None:
                continue
            if op == "forked":
                ex.pid, ex.scratch = msg["pid"], msg["scratch"]
            elif op == "fork_failed":
                ex.kill_reason = "sandbox_error"
                ex.kill_message = "the zygote could not fork a child: %s" % msg.get("error")
                self._finish(ex, None)
            elif op == "exit":
                self._finish(ex, msg)

    def _forget_slot(self, slot: int) -> None:
        for w in list(self._idle):
            if w.slot == slot:
                self._idle.remove(w)
                w.close()
                self._warm_pids = frozenset(x.pid for x in self._idle)

    def _maybe_deliver(self, ex: _Execution) -> None:
        """Resolve the future early: the reply is in hand and the child (with anything
        it started) has closed its channel, stdout and stderr, so nothing can change
        the outcome any more. The execution keeps its slot until its exit report."""
        if self.wait_exit or ex.delivered or ex.exited or ex.reply is None \
                or ex.kill_reason or not ex.channel_closed or ex.out_r >= 0 or ex.err_r >= 0:
            return
        ex.delivered = True
        self._resolve(ex, self._classify(ex, None))
        self._taken_done(ex)

    def _finish(self, ex: _Execution, exit_msg: Optional[Dict[str, Any]]) -> None:
        """Drain what the dead child left, close its fds, resolve its future (unless
        it was delivered early), free its slot."""
        ex.exited = True
        if ex.sock is not None:
            if exit_msg is not None:
                self._read_channel(ex)
                self._on_output(ex, 1)
                self._on_output(ex, 2)
            self._close_channel(ex)
            ex.sock.close()
            ex.sock = None
        self._close_output(ex, 1)
        self._close_output(ex, 2)
        self._running.pop(ex.id, None)
        if ex.deadline is not None:
            self._stale_deadlines += 1
            if self._stale_deadlines > 64 and self._stale_deadlines > 2 * len(self._running):
                # finished executions' deadlines would otherwise stay until they expire
                self._deadlines = [(d, i) for d, i in self._deadlines if i in self._running]
                heapq.heapify(self._deadlines)
                self._stale_deadlines = 0
        if ex.slot is not None:
            self._by_slot.pop(ex.slot, None)
            self._taken_done(ex)
        if exit_msg is None and ex.scratch:
            shutil.rmtree(ex.scratch, ignore_errors=True)
        if not ex.delivered and self._run_again(ex, exit_msg):
            return
        if not ex.delivered:
            ex.delivered = True
            self._resolve(ex, self._classify(ex, exit_msg))

    def _run_again(self, ex: _Execution, exit_msg: Optional[Dict[str, Any]]) -> bool:
        """Queue ``ex`` again (first in line) if the warm child it was handed to died
        before it started: before its ready message, no tenant code ran, so nothing can
        have happened twice. Once only; True if queued."""
        if exit_msg is None or ex.slot is None or ex.isolation or ex.reply is not None \
                or ex.kill_reason or ex.request is None or ex.requeued or self._shutdown:
            return False
        LOG.warning("execution %d: its prepared child (pid %s) died before starting it "
                    "(status %s); running it in a fresh child", ex.id, ex.pid,
                    exit_msg.get("status"))
        ex.requeued = True
        ex.new_attempt()
        with self._lock:
            self._queue.appendleft(ex)
        return True

    def _resolve(self, ex: _Execution, outcome: Optional[Outcome]) -> None:
        """Forget ``ex`` and complete its future (with ``outcome``; None: it was cancelled)."""
        with self._lock:
            self._by_future.pop(ex.future, None)
        if outcome is None:
            return
        try:
            ex.future.set_result(outcome)
        except concurrent.futures.InvalidStateError:
            pass

    def _classify(self, ex: _Execution, exit_msg: Optional[Dict[str, Any]]) -> Outcome:
        usage = Usage(wall=time.monotonic() - ex.started)
        status = sig = None
        if exit_msg is None:
            _child_usage(usage, (ex.reply or {}).get("usage"))
        else:
            usage.cpu_user, usage.cpu_sys = exit_msg["utime"], exit_msg["stime"]
            usage.max_rss = exit_msg["maxrss"]
            raw = exit_msg["status"]
            if os.WIFSIGNALED(raw):
                sig = os.WTERMSIG(raw)
            else:
                status = os.waitstatus_to_exitcode(raw)
        reply = ex.reply
        result = None
        error_type = traceback = None
        handle = None
        if ex.kill_reason:
            reason, message = ex.kill_reason, ex.kill_message
        elif reply is not None and reply["type"] == "result":
            reason, message = "ok", ""
            result = Result(reply.get("data"), reply.get("error"), reply.get("cancel", False))
            if reply.get("sync") is False:
                now = time.time()
                handle = AsyncHandle(ex.aeid, ex.ref.name, now, now + ASYNC_TTL)
                message = "asynchronous action started; its result arrives later for " \
                          "action execution %s" % ex.aeid
        elif reply is not None:
            reason = _ERROR_KIND_REASON[reply["kind"]]
            message = reply["message"]
            error_type = reply.get("exc_type")
            traceback = reply.get("traceback")
        elif sig is not None:
            reason, message = self._classify_signal(ex, sig, usage)
        elif exit_msg is None:
            reason, message = "sandbox_error", "the execution ended without an exit report"
        elif not ex.isolation:
            # no tenant code runs before the ready message: this is on our side
            reason = "sandbox_error"
            message = "the sandboxed process ended before it started the action (%s)" % (
                "signal %d" % sig if sig is not None else "exit status %s" % status)
        elif status in (0, child_mod.EXIT_CHANNEL_LOST):
            # our runtime exits like this only when it could not deliver the reply
            reason = "protocol_error"
            message = "the child closed its channel before replying (exit status %s)" % status
        else:
            reason = "action_error"
            message = "the action's process exited with status %s before returning a " \
                      "result" % status
        isolation = dict(ex.isolation)
        if exit_msg is not None:
            isolation["survivors_swept"] = exit_msg.get("swept", False)
            isolation["scratch_removed"] = exit_msg.get("scratch_removed", False)
        notes = list(ex.notes)
        if ex.logs_dropped:
            notes.append("%d log records dropped (max_log_bytes)" % ex.logs_dropped)
        return Outcome(
            exit_reason=reason, result=result, message=ex.redact(message) or "",
            usage=usage, stdout=ex.redact(ex.stdout.text()), stderr=ex.redact(ex.stderr.text()),
            stdout_bytes=ex.stdout.total, stderr_bytes=ex.stderr.total,
            exit_status=status, signal=sig, execution_id=ex.id, action=ex.ref.name,
            action_execution_id=ex.aeid, limits=ex.limits.to_dict(human=True), notes=notes,
            logs=ex.logs, isolation=isolation, error_type=error_type,
            traceback=ex.redact(traceback), async_handle=handle)

    @staticmethod
    def _classify_signal(ex: _Execution, sig: int, usage: Usage):
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        cpu = ex.limits.cpu_time
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu is not None
                                     and usage.cpu_user + usage.cpu_sys >= cpu):
            return "cpu_limit", "the action exceeded its CPU-time limit of %gs" % cpu
        rss = ex.limits.resident_set_size
        if rss is not None and usage.max_rss >= rss:
            return "memory_limit", "the action exceeded its memory limit (%d bytes resident)" \
                % usage.max_rss
        return "killed", "the action's process was killed by %s" % name

    def _outcome_without_run(self, ex: _Execution, reason: str, message: str) -> Outcome:
        return Outcome(reason, message=message, execution_id=ex.id, action=ex.ref.name,
                       action_execution_id=ex.aeid, limits=ex.limits.to_dict(human=True),
                       notes=list(ex.notes))


def _child_usage(usage: Usage, reported: Any) -> None:
    """Fill ``usage`` from a child's own report (numbers only; anything else is ignored)."""
    usage.source = "child"
    if not isinstance(reported, dict):
        return
    for field in ("cpu_user", "cpu_sys", "max_rss"):
        value = reported.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            setattr(usage, field, int(value) if field == "max_rss" else float(value))


def protocol_max_packet() -> int:
    return 1 << 16


_EMPTY_CONTEXT = ActionContext().to_dict()


def _context_dict(context: Any) -> Dict[str, Any]:
    """An ActionContext, its dict, or None → a validated, fresh dict."""
    if context is None:
        empty = _EMPTY_CONTEXT
        return {"security": dict(empty["security"]), "execution": dict(empty["execution"])}
    if isinstance(context, ActionContext):
        ctx = context
    elif isinstance(context, Mapping):
        ctx = ActionContext.from_dict(dict(context))
    else:
        raise ValueError("context must be an ActionContext or a mapping, got %s"
                         % type(context).__name__)
    return ctx.to_dict()
