"""Public result type, field-compatible with ``mistral_lib.actions.Result``."""

from __future__ import annotations

from typing import Any


class Result:
    """What an action returns when it wants to say more than "here is data".

    ``Result(data=None, error=None, cancel=False)``:

    * success: ``error is None`` and not ``cancel`` — ``data`` is the result;
    * error: ``error is not None`` and not ``cancel`` — ``error`` is an error
      *result* (e.g. an HTTP status) the workflow can branch on;
    * cancel: ``cancel`` is true.

    The semantics of ``is_success()/is_error()/is_cancel()`` are those of
    mistral-lib, so a workflow sees the same thing from either library.
    """

    __slots__ = ("data", "error", "cancel")

    def __init__(self, data: Any = None, error: Any = None, cancel: bool = False):
        self.data = data
        self.error = error
        self.cancel = bool(cancel)

    def is_cancel(self) -> bool:
        return self.cancel

    def is_error(self) -> bool:
        return self.error is not None and not self.cancel

    def is_success(self) -> bool:
        return not self.is_error() and not self.is_cancel()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            # Accept mistral_lib's Result (or anything with the same fields).
            if not all(hasattr(other, f) for f in self.__slots__):
                return NotImplemented
        return (self.data == other.data and self.error == other.error
                and bool(self.cancel) == bool(other.cancel))

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # mutable, like mistral-lib's

    def __repr__(self) -> str:
        return "Result(data=%r, error=%r, cancel=%r)" % (self.data, self.error, self.cancel)

    def to_dict(self) -> dict:
        """``{"data": ..., "error": ..., "cancel": ...}`` (plain data)."""
        return {"data": self.data, "error": self.error, "cancel": self.cancel}

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` on unknown keys."""
        if not isinstance(d, dict):
            raise ValueError("Result.from_dict() needs a dict, got %s" % type(d).__name__)
        unknown = set(d) - {"data", "error", "cancel"}
        if unknown:
            raise ValueError("unknown Result field(s): %s" % ", ".join(sorted(map(str, unknown))))
        return cls(d.get("data"), d.get("error"), bool(d.get("cancel", False)))
