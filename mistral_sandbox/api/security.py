"""Accessors for the security context of the action that is running now.

The runner sets the context (a :class:`contextvars.ContextVar`) in the child
before calling ``run()``; an action reads it with::

    from mistral_sandbox.api import security
    token = security.auth_token()

Every accessor raises :class:`~mistral_sandbox.api.NoSecurityContext` when
called outside a running action.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

from mistral_sandbox.api.context import SecurityContext
from mistral_sandbox.api.exceptions import NoSecurityContext

_current: contextvars.ContextVar[Optional[SecurityContext]] = contextvars.ContextVar(
    "mistral_sandbox_security_context", default=None)


def current() -> SecurityContext:
    """The running action's security context."""
    ctx = _current.get()
    if ctx is None:
        raise NoSecurityContext(
            "no security context: mistral_sandbox.api.security is only usable "
            "while an action runs")
    return ctx


def auth_token() -> Optional[str]:
    return current().auth_token


def user() -> Optional[str]:
    """The user id (falls back to the user name when no id was given)."""
    ctx = current()
    return ctx.user_id if ctx.user_id is not None else ctx.user_name


def project() -> Optional[str]:
    """The project id (falls back to the project name when no id was given)."""
    ctx = current()
    return ctx.project_id if ctx.project_id is not None else ctx.project_name


@contextlib.contextmanager
def bind(ctx: SecurityContext) -> Iterator[SecurityContext]:
    """Make ``ctx`` current for the duration of the block (used by the runner)."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
