"""Security and execution context handed to ``Action.run(context)``.

Plain data classes with the field names of ``mistral_lib.actions.context`` so
authors can move between the two libraries. ``to_dict()`` / ``from_dict()``
round-trip them through the wire protocol.

The auth token is a secret: it is redacted from every ``repr()`` and ``str()``
of these objects. ``to_dict()`` does contain it (the runner needs it to hand it
to the child); never log that dict.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

REDACTED = "***"


def _from_dict(cls, data, what):
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError("%s must be a mapping, got %s" % (what, type(data).__name__))
    names = _field_names(cls)
    for key in data:
        if key not in names:
            unknown = sorted(str(k) for k in data if k not in names)
            raise ValueError("unknown %s field(s): %s (known: %s)"
                             % (what, ", ".join(unknown), ", ".join(sorted(names))))
    return cls(**data)


def _field_names(cls) -> frozenset:
    return _FIELD_NAMES[cls]


@dataclasses.dataclass(repr=False)
class SecurityContext:
    """Who the action runs as. ``auth_token`` never appears in repr/str."""

    auth_token: Optional[str] = None
    auth_uri: Optional[str] = None
    auth_cacert: Optional[str] = None
    insecure: Optional[bool] = None
    service_catalog: Any = None
    region_name: Optional[str] = None
    is_trust_scoped: Optional[bool] = None
    redelivered: Optional[bool] = None
    expires_at: Optional[str] = None
    trust_id: Optional[str] = None
    is_target: Optional[bool] = None
    user_id: Optional[str] = None
    user_name: Optional[str] = None
    project_id: Optional[str] = None
    project_name: Optional[str] = None

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "auth_token":
                value = REDACTED
            elif f.name == "service_catalog":
                value = "<%s>" % type(value).__name__
            else:
                value = repr(value)
            parts.append("%s=%s" % (f.name, value))
        return "SecurityContext(%s)" % ", ".join(parts)

    __str__ = __repr__

    def to_dict(self) -> dict:
        """All fields as plain data, *including the token*."""
        return {name: getattr(self, name) for name in _FIELD_ORDER[SecurityContext]}

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "SecurityContext":
        """Build from a mapping; ``ValueError`` names unknown fields."""
        return _from_dict(cls, data, "security context")


@dataclasses.dataclass
class ExecutionContext:
    """Where in a workflow the action runs (ids as Mistral assigns them)."""

    workflow_execution_id: Optional[str] = None
    task_execution_id: Optional[str] = None
    action_execution_id: Optional[str] = None
    workflow_name: Optional[str] = None
    callback_url: Optional[str] = None
    with_items_index: int = 0
    task_rerun_no: int = 0
    task_rerun_id: Optional[str] = None
    workflow_propagated_headers: Optional[dict] = None
    # set for an action run nested by another (utils.run_action): the caller's id
    parent_action_execution_id: Optional[str] = None

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in _FIELD_ORDER[ExecutionContext]}

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "ExecutionContext":
        """Build from a mapping; ``ValueError`` names unknown fields."""
        return _from_dict(cls, data, "execution context")


_FIELD_ORDER = {cls: tuple(f.name for f in dataclasses.fields(cls))
                for cls in (SecurityContext, ExecutionContext)}
_FIELD_NAMES = {cls: frozenset(names) for cls, names in _FIELD_ORDER.items()}


class ActionContext:
    """``context`` argument of ``Action.run``: ``.security`` and ``.execution``."""

    __slots__ = ("security", "execution")

    def __init__(self, security: Optional[SecurityContext] = None,
                 execution: Optional[ExecutionContext] = None):
        self.security = security if security is not None else SecurityContext()
        self.execution = execution if execution is not None else ExecutionContext()

    def __repr__(self) -> str:
        return "ActionContext(security=%r, execution=%r)" % (self.security, self.execution)

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActionContext):
            return NotImplemented
        return self.security == other.security and self.execution == other.execution

    def to_dict(self) -> dict:
        """``{"security": {...}, "execution": {...}}``, token included."""
        return {"security": self.security.to_dict(), "execution": self.execution.to_dict()}

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "ActionContext":
        """Build from ``to_dict()`` output (or ``None`` for an empty context)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError("action context must be a mapping, got %s" % type(data).__name__)
        unknown = sorted(str(k) for k in data if k not in ("security", "execution"))
        if unknown:
            raise ValueError("unknown action context field(s): %s (known: execution, security)"
                             % ", ".join(unknown))
        return cls(SecurityContext.from_dict(data.get("security")),
                   ExecutionContext.from_dict(data.get("execution")))
