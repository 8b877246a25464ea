"""``Sandbox``: run actions in sandboxed, single-use children. The public facade.

Like ``concurrent.futures.ProcessPoolExecutor`` over its manager thread: the
caller's methods validate and queue; one I/O thread per sandbox
(:class:`~mistral_sandbox.runner.engine.Engine`) does everything else. Every
future resolves to exactly one :class:`~mistral_sandbox.runner.outcome.Outcome` —
a bad reference, a hostile child or a dying zygote all end in an outcome, never in
an exception from the future.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import os
import shutil
import tempfile
import threading
from typing import Any, Dict, Mapping, Optional, Union

from mistral_sandbox.actions import catalog as catalog_mod
from mistral_sandbox.runner import nested, outcome, request
from mistral_sandbox.runner.engine import Engine
from mistral_sandbox.runner.errors import Overloaded, SandboxError
from mistral_sandbox.runner.intake import Intake
from mistral_sandbox.runner.limits import Limits
from mistral_sandbox.runner.limits_policy import LimitsPolicy, PolicyFileError, ceiling_sources
from mistral_sandbox.runner.outcome import Outcome
from mistral_sandbox.runner.settings import SandboxSettings
from mistral_sandbox.runner.warm_pool import WarmPool
from mistral_sandbox.runner.zygote_client import ZygoteClient
from mistral_sandbox.runner.zygote_link import ZygoteLink

__all__ = ["Sandbox", "SandboxError", "Overloaded", "SandboxSettings", "PolicyFileError"]
LOG = logging.getLogger(__name__)


class Sandbox:
    """Runs actions in sandboxed, single-use children. Thread-safe.

    ``Sandbox(settings=None, catalog=None, **options)``: ``options`` are the fields
    of :class:`~mistral_sandbox.runner.settings.SandboxSettings` (``max_workers``,
    ``ceiling``, ``warm``, ``max_queue``, ``isolation``, ``scratch_size``...), or give
    a ready ``settings``. A bad option raises ``ValueError`` (``LimitError``,
    ``PolicyError``, ``PolicyFileError`` for an unusable ``policy_file``) before
    anything starts; a zygote that cannot start raises
    :class:`SandboxError`. Use as a context manager, or call :meth:`shutdown`:
    afterwards no process, fd or temporary directory of the sandbox remains.

    A future resolves as soon as the child has replied and closed its channel and
    outputs (its worker is freed once the zygote has reaped it and contained what
    it left): ``Outcome.usage`` is then the child's own account and ``exit_status``
    None. With ``wait_exit=True`` every future waits for the exit report instead.
    """

    def __init__(self, settings: Optional[SandboxSettings] = None,
                 catalog: Optional[catalog_mod.Catalog] = None, **options: Any):
        if settings is not None and (options or not isinstance(settings, SandboxSettings)):
            raise TypeError("Sandbox() takes a SandboxSettings or keyword options, not both")
        s = settings if settings is not None else SandboxSettings(**options)
        self.catalog = catalog or catalog_mod.default_catalog()
        self._policy_lock = threading.Lock()
        self.limits_policy = self._load_policy(s)  # PolicyFileError: nothing started yet
        if s.warm_network is None:  # what an action no specific entry names gets
            s = dataclasses.replace(s, warm_network=self.limits_policy.baseline().limits.network)
        self.settings = s
        self._ids = itertools.count(1)
        self._own_scratch = s.scratch_root is None
        self.scratch_root = s.scratch_root or tempfile.mkdtemp(prefix="mistral-sandbox-")
        self._intake = Intake(s.max_queue)
        self._pool = WarmPool(s.warm, s.warm_network)
        self._client = ZygoteClient(s, self.scratch_root)
        try:
            os.chmod(self.scratch_root, 0o711)  # sandbox uids may enter only their own dir
            self._client.start()
        except BaseException:
            self._remove_scratch()
            raise
        link = ZygoteLink(self._client, self._pool, self._intake)
        broker = nested.Broker(self.catalog, lambda: self.limits_policy, s.max_frame,
                               lambda: next(self._ids))
        self._engine = Engine(s, self._intake, self._pool, link, broker)
        link.attach(self._engine)
        self._thread = threading.Thread(target=self._run, name="mistral-sandbox-io",
                                        daemon=True)
        self._thread.start()

    # settings and state, for operators and tests
    max_workers = property(lambda self: self.settings.max_workers)
    ceiling = property(lambda self: self.settings.ceiling)
    warm = property(lambda self: self.settings.warm)
    zygote_info = property(lambda self: self._client.info,
                           doc="What the zygote said when it started (pid, uids, isolation).")
    scratch_dir = property(lambda self: self._client.scratch_dir,
                           doc="The current zygote generation's directory.")
    scratch_view = property(lambda self: self._client.info.get("scratch_view"),
                            doc="Where an action sees its scratch directory (its cwd, "
                                "HOME and TMPDIR).")
    restarts = property(lambda self: self._client.restarts)

    def submit(self, ref: str, params: Optional[Mapping[str, Any]] = None,
               context: Any = None, limits: Union[Limits, Mapping[str, Any], None] = None,
               mode: str = "run") -> "concurrent.futures.Future[Outcome]":
        """Queue one execution; the future resolves to its :class:`Outcome`.

        ``ref``: entry-point name or ``module:Class``. ``params``: the action's
        parameters (plain data). ``context``: an ``ActionContext`` or its ``to_dict()``.
        ``limits``: a ``Limits`` or a mapping of limit names to human values, the
        per-call request: it only tightens what the policy gives the context's project
        and this action (LimitError if malformed). A ``sandbox_limits`` mapping among
        ``params`` is a request too (how a workflow task asks; the action never sees
        it; malformed: ``load_error``). ``mode``: ``run``, ``test`` (dry
        run) or ``describe``. A bad reference, context or parameters resolve the future
        with a ``load_error`` outcome. Raises :class:`Overloaded` when the queue is
        full and :class:`SandboxError` once shut down.
        """
        prepared = request.prepare(next(self._ids), self.catalog, self.limits_policy,
                                   self.settings.max_frame, ref, params, context, limits, mode)
        if isinstance(prepared, Outcome):
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_result(prepared)
            return future
        self._intake.put(prepared)
        self._engine.wake()
        return prepared.future

    def run(self, ref: str, params: Optional[Mapping[str, Any]] = None, context: Any = None,
            limits: Union[Limits, Mapping[str, Any], None] = None, mode: str = "run") -> Outcome:
        """``submit(...).result()``."""
        return self.submit(ref, params, context, limits, mode).result()

    @classmethod
    def from_config(cls, conf: Any = None, catalog: Optional[catalog_mod.Catalog] = None
                    ) -> "Sandbox":
        """A sandbox configured by the ``[sandbox]`` options of the oslo.config ``conf``
        (default: the global ``cfg.CONF``; its options are registered if needed). Raises
        ``ValueError`` naming the bad option, PolicyFileError for a bad policy file."""
        from mistral_sandbox import config
        return cls(config.settings_from(conf), catalog=catalog)

    def reload_policy(self) -> LimitsPolicy:
        """Read the policy file again; new submissions use it, running ones keep theirs.

        Raises PolicyFileError (and logs why) if the file is now unusable: the previous
        policy stays in force. Without a policy file, nothing to do.
        """
        with self._policy_lock:
            try:
                policy = self._load_policy(self.settings)
            except PolicyFileError as exc:
                LOG.error("policy not reloaded, the previous one stays in force: %s", exc)
                raise
            self.limits_policy = policy
        if policy.path:
            LOG.info("policy reloaded from %s", policy.path)
        return policy

    def _load_policy(self, s: SandboxSettings) -> LimitsPolicy:
        sources = ceiling_sources(s.ceiling)
        if s.policy_file is None:
            return LimitsPolicy(s.ceiling, ceiling_sources=sources)
        policy = LimitsPolicy.load(s.policy_file, s.ceiling,
                                   [e.name for e in self.catalog.entries()], sources)
        for warning in policy.warnings:
            LOG.warning("%s", warning)
        return policy

    def cancel(self, future: "concurrent.futures.Future[Outcome]") -> bool:
        """Cancel an execution: a queued one is removed (``future.cancelled()``, its place
        freed); a running one has its whole process tree killed and ends with
        ``cancelled``. False if it had already finished or is not this sandbox's."""
        if not self._intake.cancel(future):
            return False
        self._engine.wake()
        return True

    def shutdown(self, wait: bool = True, cancel_futures: bool = False,
                 kill_running: bool = False) -> None:
        """Stop accepting work, like ``concurrent.futures.Executor.shutdown``.

        ``cancel_futures`` cancels queued executions; ``kill_running`` also kills running
        ones (their outcome is ``cancelled``). With ``wait`` the call returns when every
        execution has ended and the zygote, its children, fds and scratch directories
        are gone.
        """
        dropped = self._intake.close(cancel_futures or kill_running, kill_running)
        for ex in dropped:  # queued to run again: already running, so not cancellable
            self._engine.resolve(ex, outcome.without_run(
                ex, "cancelled", "the sandbox was shut down before the execution ran"))
        self._engine.wake()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        interrupted = exc_type is not None
        self.shutdown(wait=True, cancel_futures=interrupted, kill_running=interrupted)

    def running_pids(self) -> Dict[int, int]:
        """``{execution id: pid}`` of the executions whose child is running now."""
        return {i: ex.pid for i, ex in list(self._engine.running.items()) if ex.pid is not None}

    def started_pids(self) -> Dict[int, int]:
        """Like :meth:`running_pids`, for executions whose action has started (the child
        reported ready: tenant code may run, so it will never be run again)."""
        return {i: ex.pid for i, ex in list(self._engine.running.items())
                if ex.pid is not None and ex.isolation}

    def status(self) -> Dict[str, Any]:
        """A snapshot for operators and health checks: ``zygote`` ("up", "restarting",
        "broken" or "stopped"), its ``pid``, ``restarts`` (successful), failed
        ``restart_attempts`` since it last died, ``generations`` started, executions
        ``queued`` and ``running``, prepared children ``idle``, executions
        ``killed_after_reply`` (whose processes had not exited a few seconds after
        their outcome was delivered), and ``cgroups`` ("v1", "v2" or why none)."""
        client, link = self._client, self._engine.link
        if link.broken:
            state = "broken"
        elif not self._thread.is_alive():
            state = "stopped"
        else:
            state = "up" if client.ready else "restarting"
        return {"zygote": state, "pid": client.info.get("pid") if client.ready else None,
                "restarts": client.restarts, "restart_attempts": client.failed_attempts,
                "generations": client.generation, "queued": len(self._intake),
                "running": len(self._engine.running), "idle": len(self._pool.idle),
                "killed_after_reply": self._engine.watchdog.killed_after_reply,
                "cgroups": client.info.get("cgroups")}

    def warm_pids(self) -> frozenset:
        """Pids of the prepared children waiting for an execution."""
        return self._pool.pids

    def warm_fds(self) -> frozenset:
        """The fds this process holds for those prepared children."""
        return self._pool.fds()

    def _run(self) -> None:
        try:
            self._engine.run()
        finally:
            self._remove_scratch()

    def _remove_scratch(self) -> None:
        self._client.remove_generations(keep_logs=False)
        if self._own_scratch:
            shutil.rmtree(self.scratch_root, ignore_errors=True)
