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


class NestedActionError(ActionException):
    """A nested call (:func:`mistral_sandbox.api.utils.run_action`) did not produce a
    result: the runner refused it (``reason == "refused"``: the policy or the
    ``nested_calls`` / ``nested_depth`` limits) or the nested action ended without one
    (``reason`` is its outcome's exit reason: ``action_error``, ``timeout``,
    ``memory_limit``, ``load_error``...). ``message`` says why. Catch it to handle the
    failure; left alone, it fails the calling action.

    A nested action that *returns* an error ``Result`` does not raise: the caller gets
    that ``Result``.
    """

    def __init__(self, action: str, reason: str, message: str):
        super().__init__("nested action %s: %s: %s" % (action, reason, message))
        self.action = action
        self.reason = reason
        self.message = message
