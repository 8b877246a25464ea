"""Nested calls: an action reuses another through the runner (``api.utils.run_action``).

The child sends ``call {call_id, action, params, mode}`` and blocks; the engine (I/O
thread) asks :class:`Broker` whether the call may happen and with which limits, runs
the nested action in a single-use child of its own, and answers ``call_result``: the
nested ``Result`` (``data``, ``error``, ``cancel``), or ``reason`` and ``message``
when it was refused or ended without a result.

Decisions:

* A call is refused (``reason: refused``) when the caller, or the whole execution
  (the top-level one and every nested one under it), has made ``nested_calls`` calls
  already (refused calls count too), when its ``nested_depth`` is used up, when the
  operator's policy does not let the action be called nested (``nested: false``), or
  when no wall time is left. A class path an entry point names is judged under that
  name. The caller gets the refusal as an exception it can catch.
* The nested execution gets the caller's security context and execution context, a new
  action execution id, and the caller's in ``parent_action_execution_id``. Its limits
  are its own policy's, tightened by the caller's (sizes, CPU, processes), by the wall
  time the caller has left, and by ``nested_depth - 1`` and the caller's remaining
  ``nested_calls``; ``network`` is the nested action's own (the policy decides which
  actions may be called nested).
* No deadlock: a nested execution does not wait for a worker, nor takes one. Its caller
  is blocked waiting for it, so it runs in its caller's place, outside ``max_workers``
  (a neighbour's queued execution does not wait for it); the children that can exist
  at once stay bounded by ``max_workers`` times the depth.
* The caller's wall clock runs while it waits; when the caller ends (timeout, kill,
  cancel), its nested execution is killed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Union

from mistral_sandbox.actions import catalog as catalog_mod
from mistral_sandbox.runner import protocol, request
from mistral_sandbox.runner.execution import Execution, State
from mistral_sandbox.runner.limits import (BOOL_FIELDS, FIELD_NAMES, Limits,
                                           format_duration)
from mistral_sandbox.runner.outcome import Outcome

MAX_DEPTH = 8  # when nested_depth is unlimited: how deep calls may go nevertheless
MIN_WALL_TIME = 0.05  # seconds a nested call needs at least
MAX_NAME = 256  # characters of an action name a call may give
_CARRIED = tuple(f for f in FIELD_NAMES
                 if f not in BOOL_FIELDS + ("wall_time", "nested_calls", "nested_depth"))


@dataclasses.dataclass
class Refusal:
    message: str


class Broker:
    """Decides and prepares nested calls (pure, but for the ids and the catalog)."""

    def __init__(self, catalog: catalog_mod.Catalog, policy: Callable[[], Any], max_frame: int,
                 next_id: Callable[[], int]):
        self.catalog, self.policy, self.max_frame, self.next_id = \
            catalog, policy, max_frame, next_id
        self._entry_names: Dict[str, str] = {}  # class path target -> entry-point name

    def _entry_point_ref(self, ref):
        """A class path that an entry point names is judged under that name (a policy
        that denies ``std.sleep`` must not be bypassed with its class path)."""
        if ref.kind != "class_path":
            return ref
        if not self._entry_names:
            for entry in reversed(self.catalog.entries()):
                self._entry_names[entry.target] = entry.name
        name = self._entry_names.get(ref.target)
        return self.catalog.resolve(name) if name else ref

    def prepare(self, caller: Execution, call: Dict[str, Any], now: float
                ) -> Union[Execution, Outcome, Refusal]:
        """The nested execution (its future pending), the load_error outcome of a bad
        reference or parameters, or a Refusal."""
        limits, sources = caller.limits, caller.limit_sources
        name, mode = call["action"], call.get("mode") or "run"
        root = caller
        while root.parent is not None:
            root = root.parent
        for who, budget in ((root, root.limits.nested_calls), (caller, limits.nested_calls)):
            if budget is not None and who.calls_made >= budget:
                return Refusal("%s may make at most %d nested call%s (nested_calls, %s)" % (
                    "the whole execution" if who is not caller else "the action", budget,
                    "" if budget == 1 else "s", (who.limit_sources or {}).get(
                        "nested_calls", "?")))
        # every call counts, refused or not: a refusal costs the runner work too
        caller.calls_made += 1
        if root is not caller:
            root.calls_made += 1
        if mode not in ("run", "test"):
            return Refusal("mode must be run or test, got %r" % mode[:20])
        if len(name) > MAX_NAME:
            return Refusal("action name of %d characters (at most %d)" % (len(name), MAX_NAME))
        depth_left = MAX_DEPTH - caller.depth if limits.nested_depth is None \
            else min(limits.nested_depth, MAX_DEPTH - caller.depth)
        if depth_left <= 0:
            return Refusal("no nested calls this deep (nested_depth=%s, %s; depth %d)"
                           % (limits.nested_depth, sources.get("nested_depth", "?"),
                              caller.depth))
        try:
            ref = self._entry_point_ref(self.catalog.resolve(name))
        except catalog_mod.ActionReferenceError as exc:
            return Refusal(str(exc))
        context = caller.context or {"security": {}, "execution": {}}
        project = context["security"].get("project_id")
        policy = self.policy()
        resolved = policy.resolve(project, ref.name)
        if not resolved.nested:
            return Refusal("the operator's policy does not let %s be called nested (%s)"
                           % (ref.name, resolved.sources.get("nested", "?")))
        left = None if limits.wall_time is None else limits.wall_time - (now - caller.started)
        if left is not None and left < MIN_WALL_TIME:
            return Refusal("the caller has no wall time left for a nested call")
        left_calls = [budget - who.calls_made for who, budget in (
            (caller, limits.nested_calls), (root, root.limits.nested_calls))
            if budget is not None]
        request_limits = Limits(
            wall_time=left, nested_depth=depth_left - 1,
            nested_calls=min(left_calls) if left_calls else None,
            **{f: getattr(limits, f) for f in _CARRIED})
        ctx = {"security": dict(context["security"]),
               "execution": dict(context["execution"], action_execution_id=None,
                                 parent_action_execution_id=caller.aeid)}
        nested = request.prepare(self.next_id(), self.catalog, policy, self.max_frame, ref,
                                 call["params"], ctx, request_limits, mode)
        if isinstance(nested, Execution):
            nested.depth, nested.parent = caller.depth + 1, caller
        return nested


class NestedCalls:
    """The engine's side: answer a caller's pending call, deliver the nested result,
    end the nested execution with its caller."""

    def __init__(self, engine, broker: Broker):
        self.engine, self.broker = engine, broker

    def answer(self, caller: Execution) -> None:
        call, caller.pending_call = caller.pending_call, None
        got = self.broker.prepare(caller, call, time.monotonic())
        if isinstance(got, Refusal):
            self._reply(caller, call, {"reason": "refused", "message": got.message})
            return
        if isinstance(got, Outcome):
            self._reply(caller, call, {"reason": got.exit_reason, "message": got.message})
            return
        caller.nested = got
        got.future.add_done_callback(lambda f: self._done(caller, call, got))
        got.future.set_running_or_notify_cancel()
        self.engine.start_now(got)

    def caller_ended(self, caller: Execution) -> None:
        nested = caller.nested
        if nested is not None and nested.state not in (State.DELIVERED, State.EXITED):
            self.engine.kill(nested, "cancelled", "the calling action ended")

    def _done(self, caller: Execution, call: Dict[str, Any], nested: Execution) -> None:
        caller.nested = None
        out: Outcome = nested.future.result()
        if caller.state is not State.RUNNING or caller.kill_reason:
            return  # (the caller is gone or going: nobody waits)
        if out.exit_reason == "ok" and out.result is not None:
            fields = {"data": out.result.data, "error": out.result.error,
                      "cancel": bool(out.result.cancel)}
        else:
            fields = {"reason": out.exit_reason, "message": out.message}
            if out.exit_reason == "timeout":
                fields["message"] += " (nested wall time %s)" % out.limits.get(
                    "wall_time", format_duration(0))
        self._reply(caller, call, fields)

    def _reply(self, caller: Execution, call: Dict[str, Any], fields: Dict[str, Any]) -> None:
        msg = dict(fields, type="call_result", call_id=call["call_id"])
        try:
            frame = protocol.encode(msg, self.broker.max_frame)
        except (protocol.SerializationError, protocol.ProtocolError) as exc:
            frame = protocol.encode({"type": "call_result", "call_id": call["call_id"],
                                     "reason": "output_limit",
                                     "message": "the nested result cannot be sent: %s"
                                                % exc})
        io = caller.io
        io.frame, io.written = frame, 0  # (the request was written long ago)
        io.write_request(self.engine.sel, lambda m, ex=caller: self.engine.on_channel(ex, m),
                         force=True)
