"""The ``Action`` base class and the adaptation of legacy actions.

An action is a class whose constructor takes the action's parameters and whose
``run(context)`` does the work::

    class Hello(Action):
        def __init__(self, name):
            self.name = name

        def run(self, context):
            return "hello %s from %s" % (self.name, context.security.user_name)

``run()`` returns plain data (msgpack-serializable: None, bool, int, float,
str, bytes, list, dict with str keys, timezone-aware datetime) or a
:class:`~mistral_sandbox.api.types.Result`; raising an exception fails the
action. Legacy actions whose ``run()`` takes no context still work; each such
class triggers one ``DeprecationWarning``.
"""

from __future__ import annotations

import abc
import functools
import inspect
import sys
import warnings
from typing import Any

# In a process that has mistral-lib loaded (Mistral's API and engine: they import every
# action class registered in ``mistral.actions``), actions must be serializable by it, or
# Mistral cannot send them to a remote executor. Elsewhere (a sandboxed child) mistral-lib
# is not imported for this: it is slow to import.
_SERIALIZATION = sys.modules.get("mistral_lib.serialization")
_BASES = (_SERIALIZATION.MistralSerializable, abc.ABC) if _SERIALIZATION else (abc.ABC,)
SERIALIZATION_KEY = "mistral_sandbox.api.base.Action"


class Action(*_BASES):  # type: ignore[misc]
    """Base class of custom actions (same contract as ``mistral_lib.actions.Action``)."""

    def __init__(self) -> None:  # parameters are the subclass's own
        pass

    @classmethod
    def get_serialization_key(cls) -> str:
        """mistral-lib's serializer key: one for every subclass, like mistral-lib's own
        ``Action`` (class path, class attributes and instance fields)."""
        return SERIALIZATION_KEY

    @abc.abstractmethod
    def run(self, context) -> Any:
        """Do the work. ``context`` is an :class:`~mistral_sandbox.api.ActionContext`.

        Returns plain data or a ``Result``. For asynchronous actions
        (``is_sync()`` false) the return value is ignored: the result arrives
        later through Mistral's API, keyed by
        ``context.execution.action_execution_id``.
        """

    def test(self, context) -> Any:
        """Dry run: return a representative result without side effects.

        The default returns ``None`` and touches nothing; override it when a
        workflow designer would want a realistic sample.
        """
        return None

    def is_sync(self) -> bool:
        """True if ``run()`` returns the final result (the default)."""
        return True


if _SERIALIZATION is not None:
    from mistral_lib.actions import base as _ml_base
    _SERIALIZATION.register_serializer(Action, _ml_base.ActionSerializer())


@functools.lru_cache(maxsize=None)
def _run_takes_context(cls: type) -> bool:
    try:
        sig = inspect.signature(cls.run)
    except (TypeError, ValueError):  # builtins, odd callables: assume modern
        return True
    params = [p for p in sig.parameters.values()
              if p.kind not in (p.VAR_KEYWORD,)]
    # unbound function: first parameter is self
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


_warned: set = set()


def is_legacy(cls: type) -> bool:
    """True if ``cls.run`` takes no context argument (old-style action)."""
    return not _run_takes_context(cls)


def call_run(action: Any, context: Any, method: str = "run") -> Any:
    """Call ``action.run(context)`` (or ``test``), adapting legacy signatures.

    A legacy ``run()``/``test()`` (no context argument) is called without it,
    and its class emits one ``DeprecationWarning`` per process.
    """
    cls = type(action)
    if method == "test":
        fn = getattr(action, "test", None)
        if fn is None:  # mistral_lib actions have no test(): dry run is a no-op
            return None
        try:
            takes = len(inspect.signature(fn).parameters) >= 1
        except (TypeError, ValueError):
            takes = True
        return fn(context) if takes else fn()
    if _run_takes_context(cls):
        return action.run(context)
    if cls not in _warned:
        _warned.add(cls)
        warnings.warn(
            "%s.%s.run() takes no context argument; old-style actions are deprecated, "
            "define run(self, context)" % (cls.__module__, cls.__qualname__),
            DeprecationWarning, stacklevel=2)
    return action.run()
