"""The sandbox machinery: everything that runs inside, or talks to, a sandboxed child.

Users import :class:`~mistral_sandbox.sandbox.Sandbox` (and ``Limits``, ``Outcome``,
``SandboxError``, ``Overloaded``) from :mod:`mistral_sandbox`; ``docs/architecture.md``
maps the modules here.
"""
