"""Turn a submission into an execution ready to queue, or into a ``load_error`` outcome.

Runs in the caller's thread: resolves the reference (without importing action
code), merges the limits under the ceiling, validates the context and parameters,
and encodes the ``run`` frame once, so the I/O thread only copies bytes.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from typing import Any, Dict, Mapping, Optional, Union

from mistral_sandbox.actions import catalog as catalog_mod
from mistral_sandbox.api.context import ActionContext
from mistral_sandbox.runner import protocol
from mistral_sandbox.runner.execution import Execution
from mistral_sandbox.runner.limits import Limits, clamp
from mistral_sandbox.runner.outcome import Outcome

MODES = ("run", "test", "describe")
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


def effective_limits(ceiling: Limits, limits: Union[Limits, Mapping[str, Any], None]):
    """(the limits an execution gets, notes on what was clamped); LimitError if the
    requested ones are malformed."""
    if limits is None:
        return ceiling, []  # the common case: nothing to merge
    request = limits if isinstance(limits, Limits) else Limits.parse(limits)
    return clamp(ceiling, request)


def prepare(exec_id: int, catalog: catalog_mod.Catalog, ceiling: Limits, max_frame: int,
            ref: Any, params: Optional[Mapping[str, Any]], context: Any,
            limits: Union[Limits, Mapping[str, Any], None],
            mode: str) -> Union[Execution, Outcome]:
    """An :class:`Execution` (its future pending), or the ``load_error`` outcome of a bad
    reference, context or parameters. Raises ValueError for a bad ``mode`` and
    LimitError for malformed ``limits`` (programming errors of the caller)."""
    if mode not in MODES:
        raise ValueError("mode must be run, test or describe, got %r" % (mode,))
    effective, notes = effective_limits(ceiling, limits)
    try:
        action_ref = catalog.resolve(ref)
        ctx = context_dict(context)
        aeid = ctx["execution"].get("action_execution_id")
        if not aeid:
            aeid = ctx["execution"]["action_execution_id"] = str(uuid.uuid4())
        frame = _encode(exec_id, action_ref, _check_params(params), ctx, effective, mode,
                        max_frame)
    except (catalog_mod.ActionReferenceError, ValueError, protocol.ProtocolError) as exc:
        return Outcome("load_error", message=str(exc), execution_id=exec_id,
                       action=ref if isinstance(ref, str) else repr(ref),
                       limits=effective.to_dict(human=True), notes=notes)
    return Execution(exec_id, action_ref, frame, concurrent.futures.Future(), effective,
                     notes, aeid, ctx["security"].get("auth_token"), max_frame)


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
