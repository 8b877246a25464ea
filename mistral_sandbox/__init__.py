"""mistral-sandbox: run untrusted Mistral Python actions in isolated, limited children.

What users import::

    from mistral_sandbox import Sandbox, Limits, Outcome, SandboxError, Overloaded, SourceRef

(Loaded on first use: an action that imports ``mistral_sandbox.api`` does not pull
the runner in.) Action authors import :mod:`mistral_sandbox.api`.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Sandbox": "mistral_sandbox.sandbox",
    "SandboxSettings": "mistral_sandbox.runner.settings",
    "SandboxError": "mistral_sandbox.runner.errors",
    "Overloaded": "mistral_sandbox.runner.errors",
    "Limits": "mistral_sandbox.runner.limits",
    "LimitError": "mistral_sandbox.runner.limits",
    "Outcome": "mistral_sandbox.runner.outcome",
    "SourceRef": "mistral_sandbox.actions.catalog",
    "LimitsPolicy": "mistral_sandbox.runner.limits_policy",
    "PolicyFileError": "mistral_sandbox.runner.limits_policy",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError("module 'mistral_sandbox' has no attribute %r" % name)
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
