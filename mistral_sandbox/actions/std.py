"""Standard actions shipped with mistral-sandbox (namespace ``mistral_sandbox.actions``).

Their names mirror Mistral's own std actions so workflows read the same; they
resolve before Mistral's (see :mod:`mistral_sandbox.actions.catalog`).
"""

import time

from mistral_sandbox.api import Action, ActionException, Result


class EchoAction(Action):
    """Return ``output`` unchanged."""

    def __init__(self, output):
        self.output = output

    def run(self, context):
        return self.output

    def test(self, context):
        return self.output


class NoOpAction(Action):
    """Do nothing and return ``None``."""

    def run(self, context):
        return None


class FailAction(Action):
    """Fail: raise an error, or return ``Result(error=error_data)`` if given."""

    def __init__(self, error_data=None):
        self.error_data = error_data

    def run(self, context):
        if self.error_data is None:
            raise ActionException("Fail action expected exception.")
        return Result(error=self.error_data)

    def test(self, context):
        return Result(error=self.error_data if self.error_data is not None else "failed")


class SleepAction(Action):
    """Sleep ``seconds`` (a non-negative number), then return ``None``."""

    def __init__(self, seconds=1):
        try:
            self.seconds = float(seconds)
        except (TypeError, ValueError):
            raise ValueError("seconds must be a number, got %r" % (seconds,)) from None
        if self.seconds < 0 or self.seconds != self.seconds:
            raise ValueError("seconds must be >= 0, got %r" % (seconds,))

    def run(self, context):
        time.sleep(self.seconds)
        return None

    def test(self, context):
        return None


class AsyncNoOpAction(Action):
    """Asynchronous no-op: returns at once; the result is delivered later
    through Mistral's API for ``context.execution.action_execution_id``."""

    def is_sync(self):
        return False

    def run(self, context):
        return None
