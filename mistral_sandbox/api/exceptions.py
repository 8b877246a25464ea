"""Exceptions an action author may raise or catch."""


class ActionException(Exception):
    """Raise from ``run()`` to fail the action with a message and no result data.

    The message becomes the outcome's error text; it must not contain secrets.
    """


class NotAvailable(RuntimeError):
    """A facility of the API is not available where the code runs.

    Raised, for example, by :func:`mistral_sandbox.api.utils.run_action` when
    the runner offers no broker for nested action calls.
    """


class NoSecurityContext(RuntimeError):
    """A security accessor was used outside a running action."""
