"""The errors a caller of the sandbox can get (everything else ends in an ``Outcome``)."""


class SandboxError(RuntimeError):
    """The sandbox cannot serve requests (it failed to start, or is shut down or broken)."""


class Overloaded(SandboxError):
    """The submission queue is full: retry later, or let another executor take it.

    Raised at once rather than blocking: an RPC executor must not stall its
    listener thread, and a rejected message can be redelivered elsewhere.
    """
