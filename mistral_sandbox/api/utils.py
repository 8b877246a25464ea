"""Reuse existing actions from inside an action — through the runner.

``get_action(name, **params)`` returns a handle; ``handle.run()`` (or
``run_action(name, **params)``) asks the *runner* to execute that action in its
own sandboxed child with the caller's context and limits, and returns its
result. Never instantiate another action class and call its ``run()`` yourself:
that would run it inside your sandbox with your limits and none of its own.

The call travels as a ``call`` frame to the runner, which decides whether nested
calls are allowed (limits ``nested_calls`` / ``nested_depth``). When no broker
is available — outside a running action, or in a runner that does not broker
nested calls yet — both functions raise
:class:`~mistral_sandbox.api.NotAvailable` with the reason.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Optional

from mistral_sandbox.api.exceptions import NotAvailable

# The runner installs a callable(name, params) -> Result here inside the child.
_broker: contextvars.ContextVar[Optional[Callable[[str, dict], Any]]] = contextvars.ContextVar(
    "mistral_sandbox_action_broker", default=None)


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

    def run(self) -> Any:
        """Run the action through the runner; returns its ``Result``."""
        broker = _broker.get()
        if broker is None:
            raise NotAvailable(
                "nested action calls are not available here: run_action()/get_action().run() "
                "only work inside an action run by a runner that brokers nested calls")
        return broker(self.name, self.params)


def get_action(name: str, **params: Any) -> ActionHandle:
    """A handle for action ``name`` with ``params``; call ``.run()`` to execute it."""
    return ActionHandle(name, params)


def run_action(name: str, **params: Any) -> Any:
    """Run action ``name`` with ``params`` through the runner; returns its ``Result``."""
    return get_action(name, **params).run()
