"""The ``sandbox`` action provider: tenant actions in Mistral without tenant code in Mistral.

Registered as ``sandbox`` under ``mistral.action.providers``, Mistral's API and engine
load it like their own providers. It offers

* every action registered in the ``mistral_sandbox.actions`` entry-point namespace by a
  distribution other than this one (this project's ``std.*`` actions stay Mistral's);
* Mistral's dynamic actions: code sources and dynamic action definitions from Mistral's
  database, with their project and scope (turn Mistral's own ``dynamic`` provider off:
  ``[action_providers] denylist = dynamic``).

Neither is imported nor executed here. An action's parameters and description come
from the syntax tree of its source (:func:`describe_source`); ``instantiate`` returns a
:class:`SandboxedAction`, plain data that names the action (or carries the code
source's text) and its parameters. ``mistral-sandbox serve`` runs it in the sandbox,
where the source is compiled; any other executor fails it with a clear message.

Updates of a code source take effect for the next execution (its text is read when the
engine instantiates the action); a deleted one is no longer found, and Mistral fails
new executions that name it.
"""

from __future__ import annotations

import ast
import json
import logging
import threading
from importlib import metadata
from typing import Any, Dict, List, Optional, Tuple

from mistral_lib import actions as ml_actions
from mistral_lib.actions.providers import base as providers_base

from mistral_sandbox.actions.catalog import SANDBOX_NAMESPACE

LOG = logging.getLogger(__name__)
OWN_DISTRIBUTION = "mistral-sandbox"
UNKNOWN_PARAMS = "**params"  # what Mistral shows when the parameters cannot be read
MAX_SOURCE = 4 * 1024 * 1024  # characters of source the provider parses at most
SANDBOXED_ACTION = "mistral_sandbox.mistral.provider.SandboxedAction"
_EMPTY_BASES = {"Action", "object"}  # bases whose __init__ takes nothing


class SandboxedAction(ml_actions.Action):
    """What the engine sends to the executor: the action's ``name``, its ``params``, and
    either ``ref`` (an entry-point name) or the code source (``source``, ``class_name``,
    ``module_name``). Plain fields: mistral-lib serializes it as it is."""

    def __init__(self, name: str, params: Dict[str, Any], ref: Optional[str] = None,
                 source: Optional[str] = None, class_name: Optional[str] = None,
                 module_name: Optional[str] = None, sync: bool = True):
        super().__init__()
        self.name, self.params, self.ref = name, dict(params or {}), ref
        self.source, self.class_name, self.module_name = source, class_name, module_name
        self.sync = sync

    def is_sync(self) -> bool:
        return self.sync

    def run(self, context):
        from mistral_lib import exceptions
        raise exceptions.ActionException(
            "action %s is provided by mistral-sandbox and runs only in `mistral-sandbox "
            "serve` (the executor Mistral used here is not it)" % self.name)


def describe_source(source: str, class_name: str) -> Tuple[str, str, bool]:
    """``(params_spec, description, sync)`` of ``class_name`` in Python ``source``, from
    its syntax tree alone (nothing is executed). ``params_spec`` is Mistral's format
    (``name, count=1, **kwargs``); :data:`UNKNOWN_PARAMS` when it cannot be read (a
    syntax error, a class or base class it cannot find)."""
    if not isinstance(source, str) or len(source) > MAX_SOURCE:
        return UNKNOWN_PARAMS, "", True
    try:
        tree = ast.parse(source)
    except Exception:  # SyntaxError, and RecursionError or MemoryError on crafted text
        return UNKNOWN_PARAMS, "", True
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    cls = classes.get(class_name)
    if cls is None:
        return UNKNOWN_PARAMS, "", True
    try:
        doc = ast.get_docstring(cls) or ""
        return _init_spec(cls, classes, set()), doc, _sync(cls, classes, set())
    except Exception:  # (a tree deep enough to exhaust the recursion while walking it)
        return UNKNOWN_PARAMS, "", True


def _init_spec(cls: ast.ClassDef, classes: Dict[str, ast.ClassDef], seen: set) -> str:
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef)
                 and n.name == "__init__"), None)
    if init is not None:
        return _arguments(init.args)
    seen.add(cls.name)
    for base in cls.bases:
        name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
        if name in classes and name not in seen:
            return _init_spec(classes[name], classes, seen)
        if name in _EMPTY_BASES:
            continue
        return UNKNOWN_PARAMS  # a base class from another module: cannot be read here
    return ""


def _arguments(args: ast.arguments) -> str:
    positional = args.posonlyargs + args.args
    names = [a.arg for a in positional][1:]  # (self)
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out = []
    for name, default in zip(names, defaults[1:]):
        out.append(name if default is None else "%s=%s" % (name, _literal(default)))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        out.append(arg.arg if default is None else "%s=%s" % (arg.arg, _literal(default)))
    if args.kwarg is not None:
        out.append("**%s" % args.kwarg.arg)
    return ", ".join(out)


def _literal(node: ast.AST) -> str:
    try:
        text = json.dumps(ast.literal_eval(node))
    except Exception:
        return "null"  # (an expression: its value is only known where the code runs)
    # Mistral splits the list on "," and "=": a default holding them is shown as null
    return "null" if "," in text or "=" in text else text


def _sync(cls: ast.ClassDef, classes: Dict[str, ast.ClassDef], seen: set) -> bool:
    """``is_sync()`` when it returns a literal, in the class or a base class of the same
    source; True otherwise (serve reports a result to an engine that waits for one
    whatever the action turns out to be)."""
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "is_sync":
            ret = [n for n in node.body if isinstance(n, ast.Return)]
            if len(ret) == 1 and isinstance(ret[0].value, ast.Constant):
                return bool(ret[0].value.value)
            return True
    seen.add(cls.name)
    for base in cls.bases:
        name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
        if name in classes and name not in seen:
            return _sync(classes[name], classes, seen)
    return True


class SandboxActionDescriptor(providers_base.ActionDescriptorBase):
    """A descriptor that instantiates a :class:`SandboxedAction`."""

    def __init__(self, name, desc, params_spec, fields, namespace="", project_id=None,
                 scope=None, sync=True):
        super().__init__(name, desc, params_spec, namespace, project_id, scope)
        self._fields, self._sync = fields, sync

    @property
    def action_class_name(self):
        return SANDBOXED_ACTION

    def instantiate(self, params, wf_ctx):
        fields = self._fields() if callable(self._fields) else self._fields
        return SandboxedAction(self.name, params, sync=self._sync, **fields)

    def __repr__(self):
        return "Sandboxed action [name=%s, params_spec=%s]" % (self.name, self.params_spec)


class SandboxActionProvider(ml_actions.ActionProvider):
    """Catalog actions and Mistral's dynamic actions, never imported or executed here."""

    def __init__(self, name: str = "sandbox"):
        super().__init__(name)
        self._lock = threading.Lock()
        self._catalog: Optional[Dict[str, SandboxActionDescriptor]] = None
        self._specs: Dict[Tuple[Any, ...], Any] = {}

    # ---------------------------------------------------------------- the provider API

    def find(self, action_name, namespace=None):
        # installed actions are found from every namespace, as Mistral's own are
        desc = self._catalog_descriptors().get(action_name)
        return desc if desc is not None else self._find_dynamic(action_name, namespace or "")

    def find_all(self, namespace=None, limit=None, sort_fields=None, sort_dirs=None,
                 filters=None):
        found = list(self._catalog_descriptors().values())
        found += self._all_dynamic(namespace or "", limit, sort_fields, sort_dirs, filters)
        found.sort(key=lambda d: d.name)
        return found[:limit] if limit else found

    # ---------------------------------------------------------------- catalog actions

    def _catalog_descriptors(self) -> Dict[str, SandboxActionDescriptor]:
        with self._lock:
            if self._catalog is None:
                self._catalog = {}
                for ep in metadata.entry_points(group=SANDBOX_NAMESPACE):
                    dist = getattr(ep, "dist", None)
                    if dist is None or dist.metadata["Name"] == OWN_DISTRIBUTION:
                        continue
                    spec, doc, sync = self._entry_point_spec(ep, dist)
                    self._catalog[ep.name] = SandboxActionDescriptor(
                        ep.name, doc, spec, {"ref": "%s@sandbox" % ep.name}, sync=sync)
            return self._catalog

    def _entry_point_spec(self, ep, dist) -> Tuple[str, str, bool]:
        module, _, attr = ep.value.partition(":")
        key = (dist.metadata["Name"], dist.version, ep.value)
        if key not in self._specs:
            source = _module_source(dist, module)
            self._specs[key] = describe_source(source, attr) if source is not None \
                else (UNKNOWN_PARAMS, "", True)
        return self._specs[key]

    # ---------------------------------------------------------------- dynamic actions

    def _find_dynamic(self, name: str, namespace: str):
        from mistral.db.v2 import api as db_api
        action_def = db_api.load_dynamic_action_definition(name, namespace)
        return None if action_def is None else self._dynamic_descriptor(action_def)

    def _all_dynamic(self, namespace, limit, sort_fields, sort_dirs, filters) -> List[Any]:
        from mistral.db.v2 import api as db_api
        filters = dict(filters or {}, namespace={"eq": namespace})
        defs = db_api.get_dynamic_action_definitions(limit=limit, sort_keys=sort_fields,
                                                     sort_dirs=sort_dirs, **filters)
        return [self._dynamic_descriptor(d) for d in defs]

    def _dynamic_descriptor(self, action_def) -> SandboxActionDescriptor:
        from mistral.db.v2 import api as db_api
        code_source_id, class_name = action_def.code_source_id, action_def.class_name
        code = db_api.get_code_source(code_source_id)
        # one entry per code source and class (not per version: bounded)
        key = ("code_source", code_source_id, class_name)
        version = (code.version, str(code.updated_at))
        cached = self._specs.get(key)
        if cached is None or cached[0] != version:
            cached = self._specs[key] = (version, describe_source(code.content, class_name))
        spec, doc, sync = cached[1]

        def fields():  # read when the engine instantiates: the newest text
            fresh = db_api.get_code_source(code_source_id)
            return {"source": fresh.content, "class_name": class_name,
                    "module_name": fresh.name}
        return SandboxActionDescriptor(action_def.name, doc, spec, fields,
                                       namespace=action_def.namespace,
                                       project_id=action_def.project_id,
                                       scope=action_def.scope, sync=sync)


def _module_source(dist, module: str) -> Optional[str]:
    """The text of ``module``, found on the module path the way the import system would
    find it, without importing anything (importing a submodule would run its
    packages' ``__init__``)."""
    from importlib.machinery import PathFinder
    path = None
    spec = None
    for part in module.split("."):
        spec = PathFinder.find_spec(part, path)
        if spec is None:
            return None
        path = spec.submodule_search_locations
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py"):
        return None
    try:
        with open(origin, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None
