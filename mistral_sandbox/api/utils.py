"""Reuse existing actions from inside an action — through the runner.

``get_action(name, **params)`` returns a handle; ``handle.run()`` (or
``run_action(name, **params)``) asks the *runner* to execute that action in its
own sandboxed child, with the caller's security and execution context (a new action
execution id; the caller's in ``parent_action_execution_id``) and limits no larger
than what the caller has left, and returns its ``Result``. Never instantiate another
action class and call its ``run()`` yourself: that would run it inside your sandbox,
with your limits and none of its own.

The call travels as a ``call`` frame to the runner, which checks it against the
operator's policy (which actions may be called nested) and the caller's
``nested_calls`` and ``nested_depth`` limits. A refused call, or a nested action that
ends without a result (it raised, ran out of time...), raises
:class:`~mistral_sandbox.api.NestedActionError` in the caller, which may catch it.
Outside a running action, both functions raise
:class:`~mistral_sandbox.api.NotAvailable`.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Dict, Optional

from mistral_sandbox.api.exceptions import NestedActionError, NotAvailable
from mistral_sandbox.api.types import Result

# The runner installs a callable(name, params, mode) -> reply map here inside the child
# (in the context of the action's thread; the process-wide one serves other threads).
_broker: contextvars.ContextVar[Optional[Callable[[str, dict, str], Dict[str, Any]]]] = \
    contextvars.ContextVar("mistral_sandbox_action_broker", default=None)
_process_broker: Optional[Callable[[str, dict, str], Dict[str, Any]]] = None


def install_broker(broker: Optional[Callable[[str, dict, str], Dict[str, Any]]]) -> None:
    """For the runner: where this process's nested calls go (None: nowhere)."""
    global _process_broker
    _process_broker = broker
    _broker.set(broker)


class ActionHandle:
    """A reference to an existing action plus its parameters; nothing runs yet."""

    __slots__ = ("name", "params")

    def __init__(self, name: str, params: dict):
        if not isinstance(name, str) or not name:
            raise ValueError("action name must be a non-empty string")
        self.name = name
        self.params = dict(params)

    def __repr__(self) -> str:
        return "ActionHandle(%r, params=%s)" % (self.name, sorted(self.params))

    def run(self, context: Any = None) -> Result:
        """Run the action through the runner; its ``Result``. ``context`` is accepted
        (as ``Action.run(context)`` takes one) and ignored: the runner always passes
        the caller's real context. Raises NestedActionError, NotAvailable."""
        return self._call("run")

    def test(self, context: Any = None) -> Result:
        """Dry run (the action's ``test()``) through the runner."""
        return self._call("test")

    def _call(self, mode: str) -> Result:
        broker = _broker.get() or _process_broker
        if broker is None:
            raise NotAvailable(
                "nested action calls are not available here: run_action()/get_action().run() "
                "only work inside an action run by the sandbox")
        reply = broker(self.name, self.params, mode)
        if reply.get("reason"):
            raise NestedActionError(self.name, reply["reason"], reply.get("message") or "")
        return Result(reply.get("data"), reply.get("error"), bool(reply.get("cancel")))


def get_action(name: str, **params: Any) -> ActionHandle:
    """A handle for action ``name`` with ``params``; call ``.run()`` to execute it."""
    return ActionHandle(name, params)


def run_action(name: str, **params: Any) -> Result:
    """Run action ``name`` with ``params`` through the runner; its ``Result``."""
    return get_action(name, **params).run()
