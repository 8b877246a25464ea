"""Resolve action references to importable targets, without importing action code.

A reference is one of:

* an entry-point name, e.g. ``std.echo``. Names are looked up in
  :data:`NAMESPACES` in order — this project's ``mistral_sandbox.actions``
  first, then Mistral's ``mistral.actions`` — and the first namespace that has
  the name wins (so our lightweight ``std.echo`` shadows Mistral's). Append
  ``@sandbox`` or ``@mistral`` (or ``@<full namespace>``) to pick a namespace
  explicitly: ``std.http@mistral``.
* a class path ``package.module:ClassName`` (``ClassName`` may be dotted for
  nested classes).

Entry points come from installed distributions' metadata
(:mod:`importlib.metadata`, the mechanism stevedore uses), so listing and
resolving never import action modules: that happens only inside the child.
A name registered by two different distributions in one namespace is an
ambiguity: :meth:`Catalog.resolve` refuses it with both providers named, and
:meth:`Catalog.duplicates` reports it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import threading
from importlib import metadata
from typing import Dict, List, Optional, Tuple

SANDBOX_NAMESPACE = "mistral_sandbox.actions"
MISTRAL_NAMESPACE = "mistral.actions"
NAMESPACES: Tuple[str, ...] = (SANDBOX_NAMESPACE, MISTRAL_NAMESPACE)
NAMESPACE_ALIASES = {"sandbox": SANDBOX_NAMESPACE, "mistral": MISTRAL_NAMESPACE}

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
CLASS_PATH_RE = re.compile(r"^%s(\.%s)*:%s(\.%s)*$" % (_IDENT, _IDENT, _IDENT, _IDENT))
SOURCE_PREFIX = "source:"  # (no entry-point name or class path can start so)
EP_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class ActionReferenceError(ValueError):
    """Base class: a reference that cannot be resolved."""


class InvalidReference(ActionReferenceError):
    """The reference string is malformed."""


class UnknownAction(ActionReferenceError):
    """No action with that name exists."""


class AmbiguousAction(ActionReferenceError):
    """Two distributions register the same name in one namespace."""


@dataclasses.dataclass(frozen=True)
class ActionRef:
    """A resolved reference: what to import in the child.

    ``target`` is ``"module:attr"``; ``name`` is what the user asked for;
    ``namespace``/``distribution`` are set for entry points.
    """

    name: str
    target: str
    kind: str  # "entry_point" | "class_path" | "source"
    namespace: Optional[str] = None
    distribution: Optional[str] = None
    source: Optional[str] = None  # the text of a tenant-source action

    def to_dict(self) -> dict:
        d = {"name": self.name, "target": self.target, "kind": self.kind,
             "namespace": self.namespace, "distribution": self.distribution}
        if self.source is not None:
            d["source"] = self.source
        return d


@dataclasses.dataclass(frozen=True)
class SourceRef:
    """A tenant-source action: Python ``source`` text defining ``class_name`` (dotted for
    a nested class), run as module ``module_name``. The text is compiled and executed
    only inside the sandboxed child, never where the reference is made or resolved.
    Its name, for the policy and the logs, is ``source:module_name:class_name``: the
    ``source:`` prefix keeps a tenant from naming its code after an installed action
    (``acme.actions:Report``) to get that action's grants from the operator's policy."""

    source: str
    class_name: str
    module_name: str = "tenant_action"

    def __repr__(self) -> str:  # (never the text: it may hold anything)
        return "SourceRef(%r, %d characters)" % (self.name, len(str(self.source)))

    @property
    def name(self) -> str:
        """``source:module:Class`` (bounded), valid or not: for outcomes and logs."""
        return (SOURCE_PREFIX + "%s:%s" % (self.module_name, self.class_name))[:200]

    def resolve(self) -> ActionRef:
        """The ActionRef a child loads it from; InvalidReference if malformed."""
        if not isinstance(self.source, str):
            raise InvalidReference("tenant source must be text, got %s"
                                   % type(self.source).__name__)
        target = "%s:%s" % (self.module_name, self.class_name)
        if not isinstance(self.module_name, str) or not isinstance(self.class_name, str) \
                or not CLASS_PATH_RE.match(target):
            raise InvalidReference("malformed tenant source reference %r: expected a module "
                                   "name like 'acme_report' and a class name like 'Report'"
                                   % (target,))
        return ActionRef(name=SOURCE_PREFIX + target, target=target, kind="source",
                         source=self.source)


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    name: str
    namespace: str
    target: str
    distribution: str


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    if name is None and dist is not None:
        name = dist.metadata["Name"]
    return name or "?"


class Catalog:
    """Entry points of the action namespaces, read once from installed metadata.

    Thread-safe; call :meth:`refresh` after installing new action packages.
    """

    def __init__(self, namespaces: Tuple[str, ...] = NAMESPACES):
        self.namespaces = tuple(namespaces)
        self._lock = threading.Lock()
        self._entries: Optional[Dict[str, Dict[str, List[CatalogEntry]]]] = None
        self._resolved: Dict[str, ActionRef] = {}  # reference string -> its resolution

    def refresh(self) -> None:
        with self._lock:
            self._entries = None
            self._resolved = {}

    def _load(self) -> Dict[str, Dict[str, List[CatalogEntry]]]:
        with self._lock:
            if self._entries is None:
                entries: Dict[str, Dict[str, List[CatalogEntry]]] = {}
                all_eps = metadata.entry_points()
                for ns in self.namespaces:
                    by_name: Dict[str, List[CatalogEntry]] = {}
                    seen = set()
                    for ep in all_eps.select(group=ns):
                        entry = CatalogEntry(ep.name, ns, ep.value, _dist_name(ep))
                        # the same distribution found twice on sys.path is not a clash
                        key = (entry.name, entry.target, entry.distribution)
                        if key in seen:
                            continue
                        seen.add(key)
                        by_name.setdefault(ep.name, []).append(entry)
                    entries[ns] = by_name
                self._entries = entries
            return self._entries

    def entries(self) -> List[CatalogEntry]:
        """Every registered action, namespaces in precedence order, names sorted."""
        out = []
        for ns, by_name in self._load().items():
            for name in sorted(by_name):
                out.extend(by_name[name])
        return out

    def duplicates(self) -> List[List[CatalogEntry]]:
        """Names registered by more than one distribution within one namespace."""
        return [group for by_name in self._load().values() for group in by_name.values()
                if len({e.distribution for e in group}) > 1 or len(group) > 1]

    def resolve(self, ref: str) -> ActionRef:
        """Turn a reference string into an :class:`ActionRef` (an ActionRef is returned
        as it is: a resolved reference made by trusted code, e.g. the executor service).

        Raises :class:`InvalidReference`, :class:`UnknownAction` (with close
        matches) or :class:`AmbiguousAction` (naming every provider).
        """
        if isinstance(ref, ActionRef):
            return ref
        if isinstance(ref, SourceRef):
            return ref.resolve()
        resolved = self._resolved.get(ref) if isinstance(ref, str) else None
        if resolved is None:
            resolved = self._resolve(ref)
            if len(self._resolved) < 4096:  # bounded: references come from callers
                self._resolved[ref] = resolved
        return resolved

    def _resolve(self, ref: str) -> ActionRef:
        if not isinstance(ref, str):
            raise InvalidReference("action reference must be a string, got %s" % type(ref).__name__)
        ref = ref.strip()
        if not ref:
            raise InvalidReference("action reference is empty")
        if ":" in ref:
            if not CLASS_PATH_RE.match(ref):
                raise InvalidReference(
                    "malformed class path %r: expected 'package.module:ClassName'" % ref)
            return ActionRef(name=ref, target=ref, kind="class_path")
        name, _, ns_part = ref.partition("@")
        if not EP_NAME_RE.match(name):
            raise InvalidReference(
                "malformed action name %r: expected an entry-point name like 'std.echo' "
                "or a class path like 'package.module:ClassName'" % ref)
        entries = self._load()
        if ns_part:
            ns = NAMESPACE_ALIASES.get(ns_part, ns_part)
            if ns not in entries:
                raise InvalidReference("unknown namespace %r in %r (known: %s)" % (
                    ns_part, ref, ", ".join(sorted(set(NAMESPACE_ALIASES) | set(entries)))))
            search = (ns,)
        else:
            search = self.namespaces
        for ns in search:
            group = entries[ns].get(name)
            if not group:
                continue
            if len(group) > 1:
                raise AmbiguousAction(
                    "action %r is registered %d times in namespace %s: %s; uninstall one or "
                    "use its class path" % (name, len(group), ns, "; ".join(
                        "%s (distribution %s)" % (e.target, e.distribution) for e in group)))
            e = group[0]
            if not CLASS_PATH_RE.match(e.target):
                raise InvalidReference("entry point %r in %s (distribution %s) has a malformed "
                                       "target %r" % (name, ns, e.distribution, e.target))
            return ActionRef(name=name, target=e.target, kind="entry_point",
                             namespace=ns, distribution=e.distribution)
        known = sorted({n for ns in search for n in entries[ns]})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = ("; did you mean %s?" % ", ".join(close)) if close else ""
        raise UnknownAction("unknown action %r (looked in %s)%s" % (
            name, ", ".join(search), hint))


_default: Optional[Catalog] = None


def default_catalog() -> Catalog:
    global _default
    if _default is None:
        _default = Catalog()
    return _default
