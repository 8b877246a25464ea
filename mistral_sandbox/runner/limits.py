"""Resource limits: the :class:`Limits` dataclass, human units, monotone merge.

Field names follow ``oslo_concurrency.processutils.ProcessLimits`` where they
overlap, plus the runner's own. ``None`` means "not limited at this layer".

Units, on every surface (CLI, config, API):

* sizes: ``1048576``, ``512K``, ``256MiB``, ``1.5GB``, ``2g`` (K/M/G/T are
  binary multiples, as are KiB/MiB/...; KB/MB/... are decimal);
* durations: ``30`` (seconds), ``2s``, ``500ms``, ``1.5m``, ``1h``;
* counts: plain non-negative integers; ``network``: true/false.

Merging is monotone: :func:`merge` takes the minimum of every layer (operator
ceiling, tenant policy, action policy, per-call request), so a request can only
tighten; :func:`clamp` reports which requested values were lowered.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

SIZE_FIELDS = ("address_space", "core_file_size", "data_size", "file_size", "memory_locked",
               "resident_set_size", "stack_size", "max_result_bytes", "max_output_bytes",
               "max_log_bytes")
TIME_FIELDS = ("cpu_time", "wall_time")
COUNT_FIELDS = ("number_files", "number_processes", "nested_calls", "nested_depth")
BOOL_FIELDS = ("network",)
# sizes and counts without which no Python process starts or answers (0 is allowed for
# the others: no core dumps, no files written, no output, no nested calls...)
NONZERO_FIELDS = ("address_space", "data_size", "resident_set_size", "stack_size",
                  "number_files", "number_processes", "max_result_bytes")

ALIASES: Dict[str, Tuple[str, ...]] = {
    "memory": ("address_space", "resident_set_size"),
    "timeout": ("wall_time",),
    "cpu": ("cpu_time",),
    "procs": ("number_processes",),
    "files": ("number_files",),
}


class LimitError(ValueError):
    """A limit name or value is malformed."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Limits of one execution; sizes in bytes, times in seconds (float)."""

    address_space: Optional[int] = None
    core_file_size: Optional[int] = None
    cpu_time: Optional[float] = None
    data_size: Optional[int] = None
    file_size: Optional[int] = None
    memory_locked: Optional[int] = None
    number_files: Optional[int] = None
    number_processes: Optional[int] = None
    resident_set_size: Optional[int] = None
    stack_size: Optional[int] = None
    wall_time: Optional[float] = None
    max_result_bytes: Optional[int] = None
    max_output_bytes: Optional[int] = None
    max_log_bytes: Optional[int] = None
    network: Optional[bool] = None
    nested_calls: Optional[int] = None
    nested_depth: Optional[int] = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                object.__setattr__(self, f.name, _check(f.name, value))

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> "Limits":
        """Build from names (fields or :data:`ALIASES`) and human values.

        Raises :class:`LimitError` naming the bad key or value.
        """
        out: Dict[str, Any] = {}
        for key, raw in values.items():
            if not isinstance(key, str):
                raise LimitError("limit name must be a string, got %r" % (key,))
            names = ALIASES.get(key, (key,))
            for name in names:
                if name not in FIELD_NAMES:
                    raise LimitError("unknown limit %r (known: %s)" % (
                        key, ", ".join(sorted(set(FIELD_NAMES) | set(ALIASES)))))
                out[name] = parse_value(name, raw, key)
        return cls(**out)

    def to_dict(self, human: bool = False) -> Dict[str, Any]:
        """Set fields only; ``human=True`` renders sizes/times with units.

        (Computed once per instance — limits are immutable; a fresh copy each call.)
        """
        cache = self.__dict__.get("_as_dict")
        if cache is None:
            cache = self.__dict__["_as_dict"] = {}
        out = cache.get(human)
        if out is None:
            out = cache[human] = self._to_dict(human)
        return dict(out)

    def _to_dict(self, human: bool) -> Dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if human and f.name in SIZE_FIELDS:
                v = format_size(v)
            elif human and f.name in TIME_FIELDS:
                v = format_duration(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Limits":
        return cls.parse(values)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Limits))

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024 ** 2, "mib": 1024 ** 2, "mb": 1000 ** 2,
    "g": 1024 ** 3, "gib": 1024 ** 3, "gb": 1000 ** 3,
    "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4,
}
_TIME_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "us": 1e-6, "m": 60.0, "min": 60.0,
               "h": 3600.0}


def parse_size(text: Any, what: str = "size") -> int:
    """``"256MiB"`` → 268435456. Raises LimitError."""
    if isinstance(text, bool):
        raise LimitError("%s: expected a size like 256MiB, got %r" % (what, text))
    if isinstance(text, int):
        value = text
    elif isinstance(text, float):
        if not math.isfinite(text):
            raise LimitError("%s: expected a size like 256MiB, got %r" % (what, text))
        value = int(text)
    else:
        m = _SIZE_RE.match(str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _SIZE_UNITS:
            raise LimitError("%s: expected a size like 256MiB, 512K or 1GB, got %r" % (what, text))
        value = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if value < 0:
        raise LimitError("%s: must not be negative, got %r" % (what, text))
    return value


def parse_duration(text: Any, what: str = "duration") -> float:
    """``"500ms"`` → 0.5, ``"2s"`` → 2.0, ``30`` → 30.0. Raises LimitError."""
    if isinstance(text, bool):
        raise LimitError("%s: expected a duration like 2s, got %r" % (what, text))
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _SIZE_RE.match(str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _TIME_UNITS:
            raise LimitError("%s: expected a duration like 2s, 500ms or 1.5m, got %r"
                             % (what, text))
        value = float(m.group(1)) * _TIME_UNITS[unit]
    if not math.isfinite(value) or value <= 0:
        raise LimitError("%s: must be a positive duration, got %r" % (what, text))
    return value


def parse_count(text: Any, what: str = "count") -> int:
    if isinstance(text, bool):
        raise LimitError("%s: expected a non-negative integer, got %r" % (what, text))
    try:
        value = int(text) if not isinstance(text, float) or text.is_integer() else None
    except (TypeError, ValueError):
        value = None
    if value is None or value < 0:
        raise LimitError("%s: expected a non-negative integer, got %r" % (what, text))
    return value


def parse_bool(text: Any, what: str = "flag") -> bool:
    if isinstance(text, bool):
        return text
    s = str(text).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise LimitError("%s: expected true or false, got %r" % (what, text))


def parse_value(name: str, raw: Any, shown: Optional[str] = None,
                what: Optional[str] = None) -> Any:
    """``raw`` as field ``name`` takes it; LimitError starting with ``what`` (default
    ``limit 'NAME'``), e.g. "limit 'memory': expected a size like 256MiB..., got '12XB'"."""
    what = what or "limit %r" % (shown or name)
    if name in SIZE_FIELDS:
        value = parse_size(raw, what)
    elif name in TIME_FIELDS:
        return parse_duration(raw, what)
    elif name in COUNT_FIELDS:
        value = parse_count(raw, what)
    elif name in BOOL_FIELDS:
        return parse_bool(raw, what)
    else:
        raise LimitError("unknown limit %r" % name)
    if value == 0 and name in NONZERO_FIELDS:
        raise LimitError("%s: must be greater than 0 (no process can run with none), got %r"
                         % (what, raw))
    return value


def _check(name: str, value: Any) -> Any:
    # values given directly to the dataclass: same rules, typed result
    return parse_value(name, value)


def format_size(n: int) -> str:
    for unit, mult in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2),
                       ("KiB", 1024)):
        if n >= mult and n % mult == 0:
            return "%d%s" % (n // mult, unit)
    return "%dB" % n if n < 1024 else "%.1fKiB" % (n / 1024)


def format_duration(s: float) -> str:
    if s < 1:
        return "%gms" % round(s * 1000, 3)
    return "%gs" % round(s, 3)


def merge(*layers: Optional[Limits]) -> Limits:
    """Field-wise minimum of the layers (``None`` layers and fields are skipped).

    ``network`` is allowed only if no layer forbids it.
    """
    out: Dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        for name in FIELD_NAMES:
            v = getattr(layer, name)
            if v is None:
                continue
            cur = out.get(name)
            if cur is None:
                out[name] = v
            elif name in BOOL_FIELDS:
                out[name] = cur and v
            else:
                out[name] = min(cur, v)
    return Limits(**out)


def clamp(ceiling: Limits, request: Optional[Limits]) -> Tuple[Limits, List[str]]:
    """``merge(ceiling, request)`` plus the fields where the request asked for more.

    Returns ``(effective, notes)``; each note reads
    ``"wall_time: requested 10s, clamped to 5s"``.
    """
    effective = merge(ceiling, request)
    notes = []
    if request is not None:
        for name in FIELD_NAMES:
            req = getattr(request, name)
            eff = getattr(effective, name)
            if req is not None and eff != req:
                fmt = (format_size if name in SIZE_FIELDS else
                       format_duration if name in TIME_FIELDS else str)
                notes.append("%s: requested %s, clamped to %s" % (name, fmt(req), fmt(eff)))
    return effective, notes


DEFAULT_CEILING = Limits(
    address_space=1024 ** 3,
    resident_set_size=1024 ** 3,
    core_file_size=0,
    cpu_time=60.0,
    wall_time=120.0,
    file_size=64 * 1024 ** 2,
    memory_locked=64 * 1024,
    number_files=256,
    number_processes=64,
    max_result_bytes=1024 ** 2,  # (Mistral stores at most 1 MiB per result by default)
    max_output_bytes=1024 ** 2,
    max_log_bytes=1024 ** 2,
    network=False,
    nested_calls=0,
    nested_depth=0,
)
"""Operator ceiling used when none is configured: safe for untrusted code."""
