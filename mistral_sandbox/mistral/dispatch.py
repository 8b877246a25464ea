"""The service's side of one ``run_action``: what to submit, and the ``Result`` to send back.

Pure functions over plain data: the serialized action stays the text it came as
(nothing here imports or rebuilds it), the contexts become the runner's, Mistral's
``timeout`` becomes a wall-time request, and an :class:`Outcome` becomes the
``(data, error, cancel)`` of mistral-lib's ``Result``, with one clear error text for
every way an execution can end badly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Tuple

from mistral_sandbox.actions.catalog import ActionRef, Catalog, SourceRef
from mistral_sandbox.api.context import ExecutionContext, SecurityContext
from mistral_sandbox.mistral import runtime

RUNTIME_TARGET = "mistral_sandbox.mistral.runtime:SerializedAction"
KIND = "mistral_serialized"
# (mistral_sandbox.mistral.provider.SandboxedAction: named here, not imported, so that
# the service does not need mistral-lib to read it)
SANDBOXED_ACTION = "mistral_sandbox.mistral.provider.SandboxedAction"
_SECURITY_FIELDS = tuple(f.name for f in dataclasses.fields(SecurityContext))
_EXECUTION_FIELDS = tuple(f.name for f in dataclasses.fields(ExecutionContext))
# the limits a reason names, in the error text Mistral stores
_REASON_LIMITS = {
    "timeout": ("wall_time",),
    "cpu_limit": ("cpu_time",),
    "memory_limit": ("resident_set_size", "address_space"),
    "output_limit": ("max_result_bytes", "max_output_bytes"),
}


class ActionNames:
    """Class path -> the action's name in the catalog (``std.echo``), for the policy and
    the logs; a class no entry point names keeps its class path (``pkg.mod:Class``)."""

    def __init__(self, catalog: Catalog):
        self._names: Dict[str, str] = {}
        for entry in reversed(catalog.entries()):  # the first namespace wins
            self._names[entry.target] = entry.name

    def name(self, class_path: str) -> str:
        module, _, cls = class_path.rpartition(".")
        target = "%s:%s" % (module, cls) if module else class_path
        return self._names.get(target, target)


# the parts of Mistral's configuration its own actions read in the child
MISTRAL_ACTION_CONF_GROUPS = ("action_std_http",)


def _sandboxed_fields(action: Any, depth: int = 0) -> Optional[Dict[str, Any]]:
    """The fields of a sandbox provider action (also under an ad-hoc action), or None."""
    key, data = runtime.split_serialized(action)
    if key == runtime.ADHOC_ACTION and isinstance(data, dict) and depth < 8:
        return _sandboxed_fields(data.get("base_action"), depth + 1)
    if key == runtime.MISTRAL_LIB_ACTION and isinstance(data, dict) and \
            data.get("cls") == SANDBOXED_ACTION:
        fields = data.get("data") or {}
        return fields if isinstance(fields, dict) else {}
    return None


def engine_sync(action: Any) -> Optional[bool]:
    """Whether Mistral's engine took the action as synchronous, when it says so (a sandbox
    provider action carries what the provider told the engine); None otherwise."""
    try:
        fields = _sandboxed_fields(action)
    except (ValueError, KeyError, TypeError):
        return None
    sync = fields.get("sync") if fields is not None else None
    return sync if isinstance(sync, bool) else None


def mistral_action_conf(conf: Any) -> Dict[str, Dict[str, Any]]:
    """``group -> option -> value`` of :data:`MISTRAL_ACTION_CONF_GROUPS` in Mistral's
    parsed configuration (groups it does not have are left out)."""
    out: Dict[str, Dict[str, Any]] = {}
    for group in MISTRAL_ACTION_CONF_GROUPS:
        values = getattr(conf, group, None)
        if values is not None:
            out[group] = {name: values[name] for name in values}
    return out


def submission(names: ActionNames, action: Any, conf: Optional[Dict[str, Any]] = None
               ) -> Tuple[Any, Dict[str, Any]]:
    """``(reference, parameters)`` to submit for the serialized ``action`` (ValueError if
    it is not one). Mostly the runtime that rebuilds it in the child; an action of the
    sandbox action provider is run directly: its entry point, or its code source
    (compiled in the child). The reference's name is what the policy matches."""
    fields = _sandboxed_fields(action)
    if fields is not None:
        params = fields.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError("the action's parameters are not a mapping")
        if fields.get("source") is not None:
            return SourceRef(fields["source"], str(fields.get("class_name")),
                             str(fields.get("module_name") or "tenant_action")), params
        if not isinstance(fields.get("ref"), str):
            raise ValueError("a sandbox provider action without a reference")
        return fields["ref"], params
    params = {"action": action}
    if conf:
        params["conf"] = conf
    return ActionRef(name=names.name(runtime.action_class_path(action)), target=RUNTIME_TARGET,
                     kind=KIND), params


def context_of(rpc_ctx: Optional[Mapping[str, Any]], exec_ctx: Optional[Mapping[str, Any]]
               ) -> Dict[str, Dict[str, Any]]:
    """The runner's context dict from Mistral's RPC context (security: token, user,
    project...) and execution context (workflow, task, action execution ids)."""
    security = {k: v for k, v in (rpc_ctx or {}).items() if k in _SECURITY_FIELDS}
    execution = {k: v for k, v in (exec_ctx or {}).items() if k in _EXECUTION_FIELDS}
    return {"security": security, "execution": execution}


def timeout_limits(timeout: Any) -> Optional[Dict[str, float]]:
    """Mistral's task ``timeout`` (seconds) as a wall-time request (None: none)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        return None
    if not math.isfinite(timeout) or timeout <= 0:
        return None
    return {"wall_time": float(timeout)}


def result_fields(outcome) -> Tuple[Any, Any, bool]:
    """``(data, error, cancel)`` of the Result for Mistral."""
    if outcome.exit_reason == "ok" and outcome.result is not None:
        r = outcome.result
        return r.data, r.error, bool(r.cancel)
    return None, error_text(outcome), False


def error_text(outcome) -> str:
    """One line naming the reason, what happened and the limit involved."""
    text = "%s: %s" % (outcome.exit_reason, outcome.message or "the execution failed")
    limits = ["%s=%s (%s)" % (name, outcome.limits[name],
                              outcome.limit_sources.get(name, "?"))
              for name in _REASON_LIMITS.get(outcome.exit_reason, ())
              if outcome.limits.get(name) is not None]
    if limits:
        text += " [limits: %s]" % ", ".join(limits)
    if outcome.exit_reason == "action_error" and outcome.error_type:
        text += " [%s]" % outcome.error_type
    return text
