"""``SandboxExecutor``: a ``mistral.executors.base.Executor`` for code that embeds one.

Registered as the ``sandbox`` entry point of ``mistral.executors``, so
``mistral.executors.base.get_executor("sandbox")`` returns it. Mistral 23's own
servers cannot be configured to use it: ``[executor] type`` accepts only ``local``
and ``remote``. Deploy ``mistral-sandbox serve`` as the remote executor instead;
this class is for tools and tests that run actions in-process and want them
sandboxed.

The action object already exists in the embedding process (its module was imported
there); it is serialized as Mistral would send it and runs, like every action of
``serve``, rebuilt in a sandboxed child of one process-wide sandbox configured by
the ``[sandbox]`` options of ``cfg.CONF``.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from mistral_sandbox.mistral import dispatch, service

_LOCK = threading.Lock()
_SANDBOX = None


def process_sandbox():
    """The process-wide Sandbox (built on first use from ``cfg.CONF``)."""
    global _SANDBOX
    with _LOCK:
        if _SANDBOX is None:
            from oslo_config import cfg

            from mistral_sandbox import config
            from mistral_sandbox.sandbox import Sandbox
            settings = config.settings_from(cfg.CONF)
            preload = tuple(settings.preload) + tuple(
                m for m in service.SERVE_PRELOAD if m not in settings.preload)
            _SANDBOX = Sandbox(config.settings_from(cfg.CONF, preload=preload))
        return _SANDBOX


class SandboxExecutor:
    """``run_action`` as ``mistral.executors.default_executor.DefaultExecutor`` has it,
    every action run in the sandbox."""

    def __init__(self):
        _, m_context, _, m_clients, ml_types = service._mistral()
        from mistral_lib import serialization

        from mistral_sandbox.actions.catalog import default_catalog
        self._context, self._serializer = m_context, serialization.get_polymorphic_serializer()
        self._endpoint = service.ExecutorEndpoint(
            process_sandbox(), dispatch.ActionNames(default_catalog()),
            m_clients.get_engine_client(), _NoHeartbeats(), service.Stats(), ml_types.Result,
            m_context.set_ctx)
        from oslo_config import cfg
        self._endpoint.action_conf = dispatch.mistral_action_conf(cfg.CONF)

    def run_action(self, action: Any, action_ex_id: Optional[str], safe_rerun: bool,
                   exec_ctx: Optional[dict], redelivered: bool = False, target=None,
                   async_: bool = True, timeout: Optional[float] = None):
        ctx = self._context.ctx() if self._context.has_ctx() else None
        if ctx is not None and redelivered:
            ctx.redelivered = True
        serialized = self._serializer.serialize(action)
        return self._endpoint.run_action(ctx, serialized, action_ex_id, safe_rerun,
                                         exec_ctx or {}, timeout)


class _NoHeartbeats:
    """An embedded executor runs in the engine's process: no heartbeats over RPC."""

    def add(self, aeid):
        pass

    def remove(self, aeid):
        pass
