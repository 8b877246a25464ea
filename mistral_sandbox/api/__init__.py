"""Custom Actions API: the only surface an action author codes against.

Import from here::

    from mistral_sandbox.api import Action, ActionContext, Result

Nothing in this package imports the runner, so importing it inside a sandboxed
child costs nothing beyond the standard library.
"""

from mistral_sandbox.api.base import Action
from mistral_sandbox.api.context import ActionContext
from mistral_sandbox.api.context import ExecutionContext
from mistral_sandbox.api.context import SecurityContext
from mistral_sandbox.api.exceptions import ActionException
from mistral_sandbox.api.exceptions import NestedActionError
from mistral_sandbox.api.exceptions import NotAvailable
from mistral_sandbox.api.exceptions import NoSecurityContext
from mistral_sandbox.api.types import Result

__all__ = [
    "Action",
    "ActionContext",
    "ActionException",
    "ExecutionContext",
    "NestedActionError",
    "NoSecurityContext",
    "NotAvailable",
    "Result",
    "SecurityContext",
]
