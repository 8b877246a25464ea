"""Turn a submission into an execution ready to queue, or into a ``load_error`` outcome.

Runs in the caller's thread: resolves the reference (without importing action
code) and the limits (the operator's policy, then the per-call request), validates
the context and parameters, and encodes the ``run`` frame once, so the I/O thread
only copies bytes.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from typing import Any, Dict, Mapping, Optional, Union

from mistral_sandbox.actions import catalog as catalog_mod
from mistral_sandbox.api.context import ActionContext
from mistral_sandbox.runner import protocol
from mistral_sandbox.runner.execution import Execution
from mistral_sandbox.runner import limits as limits_mod
from mistral_sandbox.runner.limits import LimitError, Limits
from mistral_sandbox.runner.limits_policy import LimitsPolicy
from mistral_sandbox.runner.outcome import Outcome

MODES = ("run", "test", "describe")
# the reserved parameter through which a workflow task asks for tighter limits for one
# execution (e.g. ``input: {url: ..., sandbox_limits: {timeout: 10s}}``); the action never
# sees it
LIMITS_PARAM = "sandbox_limits"
_EMPTY_CONTEXT = ActionContext().to_dict()


def context_dict(context: Any) -> Dict[str, Any]:
    """An ActionContext, its dict, or None -> a validated, fresh dict (ValueError)."""
    if context is None:
        return {"security": dict(_EMPTY_CONTEXT["security"]),
                "execution": dict(_EMPTY_CONTEXT["execution"])}
    if isinstance(context, ActionContext):
        return context.to_dict()
    if isinstance(context, Mapping):
        return ActionContext.from_dict(dict(context)).to_dict()
    raise ValueError("context must be an ActionContext or a mapping, got %s"
                     % type(context).__name__)


def request_limits(limits: Union[Limits, Mapping[str, Any], None]) -> Optional[Limits]:
    """The caller's per-call limits as :class:`Limits` (LimitError if malformed)."""
    if limits is None or isinstance(limits, Limits):
        return limits
    return Limits.parse(limits)


def in_params_limits(params: Dict[str, Any]) -> Optional[Limits]:
    """Pop :data:`LIMITS_PARAM` from the action's parameters: the limits a workflow task
    asks for in its input (LimitError, with the parameter named, if malformed)."""
    raw = params.pop(LIMITS_PARAM, None)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise LimitError("parameter %r: expected a mapping of limit names to values, got %s"
                         % (LIMITS_PARAM, type(raw).__name__))
    try:
        return Limits.parse(raw)
    except LimitError as exc:
        raise LimitError("parameter %r: %s" % (LIMITS_PARAM, exc)) from None


def prepare(exec_id: int, catalog: catalog_mod.Catalog, policy: LimitsPolicy, max_frame: int,
            ref: Any, params: Optional[Mapping[str, Any]], context: Any,
            limits: Union[Limits, Mapping[str, Any], None],
            mode: str) -> Union[Execution, Outcome]:
    """An :class:`Execution` (its future pending), or the ``load_error`` outcome of a bad
    reference, context, parameters or in-parameter limits. The limits are the policy's
    for the context's project and the action, tightened by ``limits`` and by the
    :data:`LIMITS_PARAM` parameter. Raises ValueError for a bad ``mode`` and LimitError
    for malformed ``limits`` (programming errors of the caller)."""
    if mode not in MODES:
        raise ValueError("mode must be run, test or describe, got %r" % (mode,))
    request = request_limits(limits)
    name = ref if isinstance(ref, str) else getattr(ref, "name", None) or repr(ref)
    project = effective = None
    try:
        action_ref = catalog.resolve(ref)
        ctx = context_dict(context)
        project = ctx["security"].get("project_id")
        params = _check_params(params)
        if LIMITS_PARAM in params:
            request = limits_mod.merge(request, in_params_limits(params))
        effective, sources, notes = policy.apply(project, action_ref.name, request)
        aeid = ctx["execution"].get("action_execution_id")
        if not aeid:
            aeid = ctx["execution"]["action_execution_id"] = str(uuid.uuid4())
        frame = _encode(exec_id, action_ref, params, ctx, effective, mode, max_frame)
    except (catalog_mod.ActionReferenceError, ValueError, protocol.ProtocolError) as exc:
        if effective is None:
            effective, sources, notes = policy.apply(project, name, request)
        return Outcome("load_error", message=str(exc), execution_id=exec_id, action=name,
                       limits=effective.to_dict(human=True), limit_sources=dict(sources),
                       notes=notes)
    ex = Execution(exec_id, action_ref, frame, concurrent.futures.Future(), effective,
                   notes, aeid, ctx["security"].get("auth_token"), max_frame, sources)
    ex.context = ctx  # (what a nested call it makes inherits)
    return ex


def _check_params(params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ValueError("parameters must be a mapping, got %s" % type(params).__name__)
    bad = [k for k in params if not isinstance(k, str)]
    if bad:
        raise ValueError("parameter names must be strings, got %r" % (bad[0],))
    return dict(params)


def _encode(exec_id, action_ref, params, ctx, limits, mode, max_frame) -> bytes:
    try:
        return protocol.encode({"type": "run", "id": exec_id, "action": action_ref.to_dict(),
                                "params": params, "context": ctx, "limits": limits.to_dict(),
                                "mode": mode}, max_frame)
    except protocol.SerializationError:
        problem = protocol.find_unserializable(params, "parameter") or \
            "context is not serializable"
        raise ValueError("cannot send the parameters: %s" % problem) from None
