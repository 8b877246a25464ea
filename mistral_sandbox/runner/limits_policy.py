"""The operator's limits policy: ceiling, tenant entries, action entries, and a request.

A policy file (YAML) has two sections, both optional::

    tenants:                 # keyed by project id; "*" is every other project
      "*":        {memory: 256MiB, wall_time: 30s}
      9f2c4e...:  {memory: 1GiB}
    actions:                 # keyed by action name: exact, or a glob (fnmatch)
      "*":        {network: false, nested: false}
      std.http:   {network: true}
      "heavy.*":  {cpu_time: 5m}

An entry holds limits (the names and units of :class:`~.limits.Limits`, aliases
included) and ``nested`` (may this action be called from inside another action;
in a tenant entry: may this tenant's actions call others at all).

Resolution, for every field: the *ceiling* (the operator's ``[sandbox]`` options)
is one layer; the *tenant* layer is the entry of the execution's project if it sets
the field, else the ``"*"`` entry's; the *action* layer is the most specific action
entry that sets the field (the exact name, then globs with more literal characters
first, so ``"*"`` comes last); the *request* (per call) is the last layer. The
effective value is the minimum of the layers that set it (``network`` and
``nested``: allowed only if no layer forbids them), so it is never above any layer:
a more specific entry can grant more than ``"*"`` only within its own layer, and
nothing grants more than the ceiling. Each value's source is recorded
(``default`` — the built-in ceiling —, ``ceiling``, ``tenant <id>``, ``action
<pattern>`` or ``request``).

:meth:`LimitsPolicy.load` validates the whole file and raises
:class:`PolicyFileError` naming the file and the key path (``tenants: p1: memory:
...``); what is suspicious but valid (a pattern that matches no installed action, a
value above the ceiling) comes back in ``warnings``.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from mistral_sandbox.runner import limits as limits_mod
from mistral_sandbox.runner.limits import (ALIASES, BOOL_FIELDS, FIELD_NAMES, LimitError,
                                           Limits)

SECTIONS = ("tenants", "actions")
SOURCE_PREFIX = "source:"  # (catalog.SOURCE_PREFIX: the names of tenant-source actions)
ENTRY_KEYS = tuple(sorted(set(FIELD_NAMES) | set(ALIASES) | {"nested"}))
ANY = "*"
RESOLVED_CACHE_SIZE = 4096  # (project, action) pairs kept resolved; project ids are unbounded


class PolicyFileError(ValueError):
    """The policy file cannot be used; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tenant or action entry: the limits it sets and its ``nested`` flag."""

    limits: Limits = Limits()
    nested: Optional[bool] = None

    def get(self, field: str) -> Any:
        return self.nested if field == "nested" else getattr(self.limits, field)


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The operator's limits for one (project, action): ``limits``, ``sources`` (field ->
    where its value came from; unlimited fields included) and ``nested`` (may the action
    be called nested) with its source under ``sources["nested"]``."""

    limits: Limits
    sources: Mapping[str, str]
    nested: bool


class LimitsPolicy:
    """An immutable, validated policy over a ceiling. Thread-safe.

    ``ceiling``: the operator's :class:`Limits`; ``ceiling_sources``: field -> "ceiling"
    or "default" (fields missing count as "ceiling"). ``tenants``/``actions``: key ->
    :class:`Entry`. ``path``: the file it was read from (None: built in code).
    """

    def __init__(self, ceiling: Limits, tenants: Optional[Mapping[str, Entry]] = None,
                 actions: Optional[Mapping[str, Entry]] = None, path: Optional[str] = None,
                 ceiling_sources: Optional[Mapping[str, str]] = None,
                 warnings: Iterable[str] = ()):
        self.ceiling = ceiling
        self.tenants = dict(tenants or {})
        self.actions = dict(actions or {})
        self.path = path
        self.ceiling_sources = dict(ceiling_sources or {})
        self.warnings = list(warnings)
        # exact names first, then globs by literal characters (most specific first)
        self._patterns = sorted(self.actions, key=_specificity)
        self._resolved: Dict[Tuple[Optional[str], str], Resolved] = {}

    @classmethod
    def load(cls, path: str, ceiling: Limits, known_actions: Iterable[str] = (),
             ceiling_sources: Optional[Mapping[str, str]] = None) -> "LimitsPolicy":
        """Read and validate the policy file ``path``; PolicyFileError if unusable."""
        data = read_yaml(path)
        return cls.from_mapping(data, ceiling, path, known_actions, ceiling_sources)

    @classmethod
    def from_mapping(cls, data: Any, ceiling: Limits, path: Optional[str] = None,
                     known_actions: Iterable[str] = (),
                     ceiling_sources: Optional[Mapping[str, str]] = None) -> "LimitsPolicy":
        """Validate an already parsed policy (``None``: empty); PolicyFileError."""
        where = path or "policy"
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise PolicyFileError("%s: expected a mapping with %s, got %s"
                                  % (where, " and/or ".join(SECTIONS), _kind(data)))
        sections: Dict[str, Dict[str, Entry]] = {}
        for key, body in data.items():
            if key not in SECTIONS:
                raise PolicyFileError("%s: %s: unknown section%s (known: %s)"
                                      % (where, key, _did_you_mean(key, SECTIONS),
                                         ", ".join(SECTIONS)))
            sections[key] = _parse_section(where, key, body)
        warnings = _warnings(where, sections.get("actions", {}), sections, ceiling,
                             set(known_actions))
        return cls(ceiling, sections.get("tenants"), sections.get("actions"), path,
                   ceiling_sources, warnings)

    def resolve(self, project: Optional[str], action: str) -> Resolved:
        """The operator's limits for ``action`` (its name, ``@namespace`` ignored) run by
        ``project`` (None or "": only the ``"*"`` tenant entry applies)."""
        key = (project or None, action)
        hit = self._resolved.get(key)
        if hit is None:
            hit = self._resolve(project or None, action.partition("@")[0])
            if len(self._resolved) >= RESOLVED_CACHE_SIZE:
                self._resolved.clear()
            self._resolved[key] = hit
        return hit

    def apply(self, project: Optional[str], action: str, request: Optional[Limits]
              ) -> Tuple[Limits, Mapping[str, str], List[str]]:
        """``(effective limits, sources, notes)`` with ``request`` as the last layer; a
        note per requested value that was clamped, naming the layer that clamped it."""
        resolved = self.resolve(project, action)
        if request is None:
            return resolved.limits, resolved.sources, []
        effective, _ = limits_mod.clamp(resolved.limits, request)
        sources = dict(resolved.sources)
        notes = []
        for name in FIELD_NAMES:
            req = getattr(request, name)
            if req is None:
                continue
            eff = getattr(effective, name)
            if eff == req:
                sources[name] = "request"
            else:
                notes.append("%s: requested %s, clamped to %s (%s)" % (
                    name, _fmt(name, req), _fmt(name, eff), sources[name]))
        return effective, sources, notes

    def baseline(self) -> Resolved:
        """What an execution gets when no specific entry applies (any project, an action
        only ``"*"``-like globs match): prepared children are made for its network."""
        return self.resolve(None, "")

    def _resolve(self, project: Optional[str], name: str) -> Resolved:
        tenant_keys = [k for k in (project, ANY) if k is not None and k in self.tenants]
        # a tenant-source action (its name chosen by the tenant) matches only "*" and
        # patterns written for tenant source: never a glob meant for installed actions
        tenant_named = name.startswith(SOURCE_PREFIX)
        action_keys = [p for p in self._patterns
                       if (not tenant_named or p == ANY or p.startswith(SOURCE_PREFIX))
                       and (p == name or fnmatch.fnmatchcase(name, p))]
        values: Dict[str, Any] = {}
        sources: Dict[str, str] = {}
        for field in FIELD_NAMES + ("nested",):
            # candidates, most specific layer first: ties go to the most specific
            candidates = []
            action_key = next((p for p in action_keys if self.actions[p].get(field) is not None),
                              None)
            if action_key is not None:
                candidates.append((self.actions[action_key].get(field), "action " + action_key))
            tenant_key = next((t for t in tenant_keys if self.tenants[t].get(field) is not None),
                              None)
            if tenant_key is not None:
                candidates.append((self.tenants[tenant_key].get(field), "tenant " + tenant_key))
            if field != "nested":
                candidates.append((getattr(self.ceiling, field),
                                   self.ceiling_sources.get(field, "ceiling")))
            value, source = _lowest(field, candidates)
            values[field], sources[field] = value, source
        nested = values.pop("nested")
        if nested is None:
            sources["nested"] = "default"
        return Resolved(Limits(**values), sources, nested is not False)


def ceiling_sources(ceiling: Limits) -> Dict[str, str]:
    """Field -> ``"default"`` where ``ceiling`` keeps the built-in value, else
    ``"ceiling"`` (the operator changed it)."""
    return {name: "default" if getattr(ceiling, name) == getattr(limits_mod.DEFAULT_CEILING, name)
            else "ceiling" for name in FIELD_NAMES}


def _lowest(field: str, candidates: List[Tuple[Any, str]]) -> Tuple[Any, str]:
    value, source = None, candidates[-1][1] if candidates else "default"
    for v, s in candidates:
        if v is None:
            continue
        if value is None or (v < value if field not in BOOL_FIELDS + ("nested",)
                             else (value and not v)):
            value, source = v, s
    return value, source


def _specificity(pattern: str) -> Tuple[int, int, str]:
    is_glob = any(c in pattern for c in "*?[")
    literal = sum(1 for c in pattern if c not in "*?[]")
    return (1 if is_glob else 0, -literal, pattern)


def _parse_section(where: str, section: str, body: Any) -> Dict[str, Entry]:
    if body is None:
        return {}
    if not isinstance(body, Mapping):
        raise PolicyFileError("%s: %s: expected a mapping of %s to entries, got %s"
                              % (where, section, "project ids" if section == "tenants"
                                 else "action names or globs", _kind(body)))
    out = {}
    for key, entry in body.items():
        if isinstance(key, bool) or not isinstance(key, (str, int)) or not str(key).strip():
            raise PolicyFileError("%s: %s: %r: expected a %s" % (
                where, section, key, "project id" if section == "tenants"
                else "action name or glob"))
        out[str(key)] = _parse_entry("%s: %s: %s" % (where, section, key), entry)
    return out


def _parse_entry(path: str, entry: Any) -> Entry:
    if entry is None:
        return Entry()
    if not isinstance(entry, Mapping):
        raise PolicyFileError("%s: expected a mapping of limits, got %s" % (path, _kind(entry)))
    values: Dict[str, Any] = {}
    nested = None
    for key, raw in entry.items():
        here = "%s: %s" % (path, key)
        if key == "nested":
            if not isinstance(raw, bool):
                raise PolicyFileError("%s: expected true or false, got %r" % (here, raw))
            nested = raw
            continue
        if not isinstance(key, str) or key not in ENTRY_KEYS:
            raise PolicyFileError("%s: unknown key%s" % (here, _did_you_mean(key, ENTRY_KEYS)
                                                         or " (known: %s)" % ", ".join(ENTRY_KEYS)))
        if raw is None:
            raise PolicyFileError("%s: no value (remove the key to leave it unset)" % here)
        for name in ALIASES.get(key, (key,)):
            try:
                values[name] = limits_mod.parse_value(name, raw, what=here)
            except LimitError as exc:
                raise PolicyFileError(str(exc)) from None
    return Entry(Limits(**values), nested)


def _warnings(where, actions, sections, ceiling: Limits, known: set) -> List[str]:
    out = []
    if known:
        for pattern in actions:
            if ":" in pattern:  # a class path: not in the catalog by nature
                continue
            if not any(fnmatch.fnmatchcase(name, pattern) for name in known):
                out.append("%s: actions: %s: matches no installed action" % (where, pattern))
    for section, entries in sections.items():
        for key, entry in entries.items():
            for name, value in entry.limits.to_dict().items():
                top = getattr(ceiling, name)
                if top is not None and (value > top if name not in BOOL_FIELDS
                                        else value and not top):
                    out.append("%s: %s: %s: %s: %s is above the ceiling (%s), which applies"
                               % (where, section, key, name, _fmt(name, value),
                                  _fmt(name, top)))
    return out


def read_yaml(path: str) -> Any:
    """The YAML document in ``path`` (duplicate keys refused); PolicyFileError."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise PolicyFileError("cannot read policy file %s: %s" % (path, exc.strerror)) from None
    except UnicodeDecodeError as exc:
        raise PolicyFileError("%s: not UTF-8 text (%s)" % (path, exc.reason)) from None
    try:
        return yaml.load(text, Loader=_strict_loader())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise PolicyFileError("%s: line %d, column %d: malformed YAML: %s" % (
            path, mark.line + 1, mark.column + 1, exc.problem)) from None
    except yaml.YAMLError as exc:
        raise PolicyFileError("%s: malformed YAML: %s" % (path, exc)) from None


_LOADER = None


def _strict_loader():
    global _LOADER
    if _LOADER is None:
        import yaml

        class StrictLoader(yaml.SafeLoader):
            def construct_mapping(self, node, deep=False):
                seen = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=deep)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, "duplicate key %r" % (key,), key_node.start_mark)
                    seen.add(key)
                return super().construct_mapping(node, deep)
        _LOADER = StrictLoader
    return _LOADER


def _did_you_mean(key: Any, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return " (did you mean %r?)" % close[0] if close else ""


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "true/false"}.get(type(value), type(value).__name__)


def _fmt(name: str, value: Any) -> str:
    if name in limits_mod.SIZE_FIELDS:
        return limits_mod.format_size(value)
    if name in limits_mod.TIME_FIELDS:
        return limits_mod.format_duration(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
