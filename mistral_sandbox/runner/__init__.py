"""The sandbox: everything that runs inside, or talks to, a sandboxed child.

Public entry points: :class:`~mistral_sandbox.runner.supervisor.Sandbox`,
:class:`~mistral_sandbox.runner.limits.Limits`,
:class:`~mistral_sandbox.runner.outcome.Outcome`.
"""
