"""``mistral-sandbox serve``: Mistral's executor, with every action in the sandbox.

An oslo.messaging RPC server on Mistral's transport and executor topic (``[executor]
topic`` and ``host`` of Mistral's configuration), answering ``run_action`` as
``mistral.executors.executor_server.ExecutorServer`` does, so the engine cannot tell
the difference. What differs is where the action runs: the service keeps the action
Mistral sent as serialized text (it never imports the action's module, and never
runs a code source) and submits it to a :class:`~mistral_sandbox.Sandbox`, whose
child rebuilds and runs it (:mod:`.runtime`).

Per ``run_action``: a redelivered message that is not ``safe_rerun`` fails at once;
the same action execution received twice while it runs is run once; the action's
heartbeats go to the engine while it is queued and running; its outcome becomes a
mistral-lib ``Result`` sent with ``on_action_complete`` (for an asynchronous action
only an error, like Mistral's own executor), exactly once. SIGTERM stops consuming,
lets running executions finish for ``[sandbox] shutdown_grace`` seconds, then ends
the rest with an error result. SIGHUP reloads the limits policy.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import signal
import threading
import time
import warnings
from typing import List, Optional

from mistral_sandbox.mistral import dispatch

LOG = logging.getLogger("mistral_sandbox.serve")
SERVE_PRELOAD = ("mistral_lib.actions", "mistral_sandbox.mistral.runtime",
                 "mistral_sandbox.mistral.http_deps")


class MissingMistral(RuntimeError):
    """Mistral is not installed: the service needs its RPC layer and configuration."""


def _mistral():
    """Mistral's modules the service uses (RPC, contexts, configuration)."""
    try:
        with warnings.catch_warnings():  # (Mistral's imports warn about eventlet, unused)
            warnings.simplefilter("ignore")
            from mistral import config as m_config  # noqa: F401 (registers its options)
            from mistral import context as m_context
            from mistral.rpc import base as m_rpc
            from mistral.rpc import clients as m_clients
            from mistral_lib.actions import types as ml_types
    except ImportError as exc:
        raise MissingMistral("the executor service needs Mistral (pip install "
                             "'mistral-sandbox[mistral]'): %s" % exc) from None
    return m_config, m_context, m_rpc, m_clients, ml_types


def raw_entity_serializer(m_context):
    """Mistral's RPC serializer, except that arguments are only JSON-decoded: a serialized
    action stays ``{"__serial_key": ..., "__serial_data": "..."}`` (mistral-lib's
    deserializer would import its module, or exec() a code source, in this process)."""
    class RawEntitySerializer(m_context.RpcContextSerializer):
        def deserialize_entity(self, context, entity):
            if isinstance(entity, (str, bytes)):
                try:
                    return json.loads(entity)
                except ValueError:
                    return entity
            return entity
    return RawEntitySerializer()


class Heartbeats:
    """Tells the engine which action executions run here, every ``interval`` seconds
    (and at once for a new one, as Mistral's executor does). ``interval`` 0: off."""

    def __init__(self, engine_client, admin_ctx, set_ctx, interval: float):
        self._client, self._admin, self._set_ctx = engine_client, admin_ctx, set_ctx
        self.interval = interval
        self._ids: set = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeats", daemon=True)

    def start(self) -> None:
        if self.interval:
            self._thread.start()

    def add(self, aeid: Optional[str]) -> None:
        if not aeid or not self.interval:
            return
        with self._lock:
            self._ids.add(aeid)
        self._send([aeid])

    def remove(self, aeid: Optional[str]) -> None:
        with self._lock:
            self._ids.discard(aeid)

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self._ids)
            if ids:
                self._send(ids)

    def _send(self, ids: List[str]) -> None:
        try:
            self._set_ctx(self._admin)
            self._client.process_action_heartbeats(ids)
        except Exception:
            LOG.exception("sending heartbeats for %d action executions failed", len(ids))


class Stats:
    """Executions by reason since the last summary, for the periodic log line."""

    def __init__(self):
        self._lock = threading.Lock()
        self._window: collections.Counter = collections.Counter()
        self.total: collections.Counter = collections.Counter()

    def record(self, reason: str) -> None:
        with self._lock:
            self._window[reason] += 1
            self.total[reason] += 1

    def take(self) -> collections.Counter:
        with self._lock:
            window, self._window = self._window, collections.Counter()
        return window


class ExecutorEndpoint:
    """The RPC endpoint: ``run_action`` as Mistral's engine calls it."""

    def __init__(self, sandbox, names: dispatch.ActionNames, engine_client, heartbeats,
                 stats: Stats, result_cls, set_ctx):
        self.sandbox, self.names, self.engine = sandbox, names, engine_client
        self.heartbeats, self.stats, self.result_cls = heartbeats, stats, result_cls
        self._set_ctx = set_ctx
        self._inflight: set = set()
        self._lock = threading.Lock()
        self.stopping = False
        self.action_conf: dict = {}  # (operator settings of Mistral's own actions)

    def run_action(self, rpc_ctx, action, action_ex_id, safe_rerun, exec_ctx, timeout):
        """Run ``action`` (serialized) in the sandbox; report and return its Result."""
        started = time.monotonic()
        with self._lock:  # (first: a copy of one running here must not report too)
            if action_ex_id and action_ex_id in self._inflight:
                LOG.warning("action execution %s is already running here; ignoring a "
                            "second delivery", action_ex_id)
                return None
            if action_ex_id:
                self._inflight.add(action_ex_id)
        try:
            if getattr(rpc_ctx, "redelivered", False) and not safe_rerun:
                return self._finish(rpc_ctx, action_ex_id, "?", self.result_cls(
                    error="the request to run this action was redelivered and the action "
                          "is not safe to rerun [action_ex_id=%s]" % action_ex_id), True,
                    "redelivered", started)
            self.heartbeats.add(action_ex_id)
            try:
                return self._run(rpc_ctx, action, action_ex_id, exec_ctx, timeout, started)
            except Exception as exc:  # our bug, or a broken message: still one result
                LOG.exception("running action execution %s failed", action_ex_id)
                return self._finish(rpc_ctx, action_ex_id, "?", self.result_cls(
                    error="sandbox_error: the executor failed to run the action (%s)"
                          % type(exc).__name__), True, "sandbox_error", started)
        finally:
            self.heartbeats.remove(action_ex_id)
            with self._lock:
                self._inflight.discard(action_ex_id)

    def _run(self, rpc_ctx, action, action_ex_id, exec_ctx, timeout, started):
        from mistral_sandbox.runner.errors import Overloaded, SandboxError
        try:
            ref, params = dispatch.submission(self.names, action, self.action_conf)
        except (ValueError, KeyError, TypeError) as exc:
            return self._finish(rpc_ctx, action_ex_id, "?", self.result_cls(
                error="load_error: cannot read the action Mistral sent: %s" % exc), True,
                "load_error", started)
        context = dispatch.context_of(rpc_ctx.to_dict() if rpc_ctx is not None else {},
                                      exec_ctx)
        try:
            future = self.sandbox.submit(ref, params, context,
                                         dispatch.timeout_limits(timeout))
        except (Overloaded, SandboxError) as exc:
            reason = "overloaded" if isinstance(exc, Overloaded) else "sandbox_error"
            return self._finish(rpc_ctx, action_ex_id, _name(ref), self.result_cls(
                error="%s: %s" % (reason, exc)), True, reason, started)
        try:
            outcome = future.result()
        except concurrent.futures.CancelledError:  # still queued when the service stopped
            return self._finish(rpc_ctx, action_ex_id, _name(ref), self.result_cls(
                error="cancelled: the executor shut down before the action started"), True,
                "cancelled", started)
        if outcome.exit_reason == "cancelled" and self.stopping:
            outcome.message = "the executor shut down before the action finished"
        data, error, cancel = dispatch.result_fields(outcome)
        result = self.result_cls(data=data, error=error, cancel=cancel)
        # reported unless both the engine and the action take it as asynchronous: an
        # engine that waits for a result must get one
        sync = outcome.async_handle is None or dispatch.engine_sync(action) is True
        return self._finish(rpc_ctx, action_ex_id, outcome.action or _name(ref), result, sync,
                            outcome.exit_reason, started)

    def _finish(self, rpc_ctx, action_ex_id, name, result, sync, reason, started):
        if action_ex_id and (sync or result.is_error()):
            try:
                self._set_ctx(rpc_ctx)
                self.engine.on_action_complete(action_ex_id, result, async_=True)
            except Exception:
                LOG.exception("reporting the result of action execution %s failed",
                              action_ex_id)
        self.stats.record(reason)
        LOG.info("action %s [action_ex_id=%s]: %s in %.1f ms", _printable(name),
                 action_ex_id, reason, (time.monotonic() - started) * 1000)
        return result


class ExecutorService:
    """The service's lifecycle: :meth:`start`, :meth:`stop` (graceful), :meth:`wait`."""

    def __init__(self, conf, settings):
        self.conf, self.settings = conf, settings
        self._stopped = threading.Event()
        self.server = self.sandbox = self.heartbeats = None
        self.endpoint: Optional[ExecutorEndpoint] = None
        self.stats = Stats()

    def start(self) -> None:
        import oslo_messaging as messaging
        from oslo_messaging.rpc import dispatcher

        from mistral_sandbox.actions.catalog import default_catalog
        from mistral_sandbox.sandbox import Sandbox
        _, m_context, m_rpc, m_clients, ml_types = _mistral()
        conf = self.conf
        self.sandbox = Sandbox(self.settings)
        try:
            engine = m_clients.get_engine_client()
            admin = m_context.MistralContext(user_id=None, project_id=None, auth_token=None,
                                             is_admin=True)
            hb = conf.action_heartbeat
            self.heartbeats = Heartbeats(engine, admin, m_context.set_ctx,
                                         hb.check_interval if hb.max_missed_heartbeats else 0)
            self.endpoint = ExecutorEndpoint(self.sandbox, dispatch.ActionNames(default_catalog()),
                                             engine, self.heartbeats, self.stats,
                                             ml_types.Result, m_context.set_ctx)
            self.endpoint.action_conf = dispatch.mistral_action_conf(conf)
            target = messaging.Target(topic=conf.executor.topic, server=conf.executor.host)
            self.server = messaging.get_rpc_server(
                m_rpc.get_transport(), target, [self.endpoint], executor="threading",
                serializer=raw_entity_serializer(m_context),
                access_policy=dispatcher.DefaultRPCAccessPolicy)
            self.heartbeats.start()
            self.server.start()
        except BaseException:
            self.sandbox.shutdown(cancel_futures=True, kill_running=True)
            raise
        threading.Thread(target=self._summaries, name="summaries", daemon=True).start()
        LOG.info("Executor server started: topic %s, server %s, %d workers, isolation: %s",
                 conf.executor.topic, conf.executor.host, self.settings.max_workers,
                 self.sandbox.zygote_info.get("native_isolation", "?"))

    def stop(self, grace: Optional[float] = None) -> None:
        """Stop consuming; let running executions finish for ``grace`` seconds (default
        ``[sandbox] shutdown_grace``), then end the rest with an error result."""
        if self._stopped.is_set():
            return
        grace = self.conf.sandbox.shutdown_grace if grace is None else grace
        LOG.info("stopping: no new actions; %d running, waiting up to %gs",
                 len(self.sandbox.running_pids()), grace)
        self.endpoint.stopping = True
        self.server.stop()  # no more messages; handlers in progress go on
        waiter = threading.Thread(target=self.server.wait, daemon=True)
        waiter.start()
        waiter.join(grace)
        if waiter.is_alive():
            self.sandbox.shutdown(wait=False, cancel_futures=True, kill_running=True)
            waiter.join()
        self.heartbeats.stop()
        self.sandbox.shutdown()
        self._stopped.set()
        LOG.info("stopped after %s", _counts(self.stats.total) or "no executions")

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._stopped.wait(timeout)

    def _summaries(self) -> None:
        interval = self.conf.sandbox.summary_interval
        while interval and not self._stopped.wait(interval):
            status = self.sandbox.status()
            LOG.info("last %gs: %s; running %d, queued %d, zygote %s", interval,
                     _counts(self.stats.take()) or "no executions", status["running"],
                     status["queued"], status["zygote"])


def _printable(text: str, limit: int = 200) -> str:
    """A name for one log line: bounded, control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text)[:limit])


def _name(ref) -> str:
    return ref if isinstance(ref, str) else getattr(ref, "name", None) or \
        "%s:%s" % (getattr(ref, "module_name", "?"), getattr(ref, "class_name", "?"))


def _counts(counter) -> str:
    return ", ".join("%s %d" % (k, v) for k, v in sorted(counter.items()))


def serve(config_files: List[str], log_file: Optional[str] = None,
          preload: Optional[List[str]] = None, on_started=None) -> int:
    """Parse Mistral's and the sandbox's configuration, run the service until SIGTERM or
    SIGINT, stop gracefully. Returns the exit status."""
    m_config, _, m_rpc, _, _ = _mistral()
    from oslo_config import cfg
    from oslo_log import log as oslo_log

    from mistral_sandbox import config as sb_config
    conf = cfg.CONF
    sb_config.register(conf)
    args = []
    for path in config_files:
        args += ["--config-file", path]
    if log_file:
        args += ["--log-file", log_file]
    try:
        m_config.parse_args(args)
    except cfg.Error as exc:  # (a missing or malformed file, a bad command-line value)
        raise ValueError(str(exc)) from None
    oslo_log.setup(conf, "mistral-sandbox")
    extra = [m for m in SERVE_PRELOAD + tuple(preload or ()) if m not in conf.sandbox.preload]
    settings = sb_config.settings_from(conf, preload=tuple(conf.sandbox.preload) + tuple(extra))
    m_rpc.get_transport()
    service = ExecutorService(conf, settings)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: done.set())
    service.start()
    sb_config.reload_on_sighup(service.sandbox)
    if on_started:
        on_started(service)
    while not done.wait(1.0):
        pass
    service.stop()
    return 0
