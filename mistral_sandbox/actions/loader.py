"""Load one action inside the sandboxed child: import, check, bind parameters.

Runs only in the child (it imports tenant code). Every failure raises
:class:`LoadError` with a message that names the problem precisely.
"""

from __future__ import annotations

import importlib
import inspect
import linecache
import sys
import types
from typing import Any, Optional

from mistral_sandbox.api import base as api_base
from mistral_sandbox.api.context import ActionContext


class LoadError(Exception):
    """The action could not be imported, is not an action, or rejects the parameters."""


def _mistral_lib_action_base() -> Optional[type]:
    """mistral-lib's Action class if an action already imported it (never imports it:
    an action derived from it has imported it, and importing it is slow)."""
    module = sys.modules.get("mistral_lib.actions")
    return getattr(module, "Action", None) if module is not None else None


def import_target(target: str) -> Any:
    """Import ``"module:attr.path"`` and return the attribute."""
    module_name, _, attr_path = target.partition(":")
    try:
        obj = sys.modules.get(module_name)  # preloaded: skip the import machinery
        if obj is None:
            obj = importlib.import_module(module_name)
    except BaseException as exc:  # SyntaxError, SystemExit, anything in module code
        raise LoadError("cannot import module %r: %s: %s"
                        % (module_name, type(exc).__name__, exc)) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LoadError("%r has no attribute %r (from %r)"
                            % (getattr(obj, "__name__", module_name), part, target)) from None
    return obj


def load_class(action_spec: dict, name: str) -> type:
    """The action class a request names: imported (``target``), or defined by tenant
    source text (``kind == "source"``). LoadError if it cannot be had."""
    if action_spec.get("kind") == "source":
        module, _, class_path = action_spec["target"].partition(":")
        return check_action_class(load_source(action_spec["source"], module, class_path), name)
    return check_action_class(import_target(action_spec["target"]), name)


def load_source(source: str, module_name: str, class_path: str) -> Any:
    """Compile and execute tenant ``source`` as module ``module_name`` (in this process:
    only ever a sandboxed child) and return its ``class_path``. A LoadError gives the
    line number and the offending line, or names the classes that do exist."""
    filename = "<tenant source %s>" % module_name
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # (ValueError: a NUL byte in the text)
        where = ", line %s" % exc.lineno if getattr(exc, "lineno", None) else ""
        line = (getattr(exc, "text", None) or "").strip()
        raise LoadError("syntax error in tenant source %s%s: %s%s" % (
            module_name, where, getattr(exc, "msg", None) or exc,
            "\n    %s" % line if line else "")) from None
    module = types.ModuleType(module_name)
    module.__file__ = filename
    lines = source.splitlines(True)
    linecache.cache[filename] = (len(source), None, lines, filename)  # for tracebacks
    if module_name not in sys.modules:  # (never shadow a module the runtime uses)
        sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    except BaseException as exc:  # anything at all can come out of module code
        lineno = None
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == filename:
                lineno = tb.tb_lineno
            tb = tb.tb_next
        line = lines[lineno - 1].strip() if lineno and lineno <= len(lines) else ""
        raise LoadError("tenant source %s failed%s: %s: %s%s" % (
            module_name, " at line %d" % lineno if lineno else "", type(exc).__name__,
            _text(exc), "\n    %s" % line if line else "")) from None
    obj: Any = module
    for part in class_path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            classes = sorted(k for k, v in vars(module).items()
                             if inspect.isclass(v) and getattr(v, "__module__", None)
                             == module_name)
            raise LoadError("tenant source %s has no class %r (%s)" % (
                module_name, class_path, "classes it defines: " + ", ".join(classes)
                if classes else "it defines no classes"))
    return obj


def _text(exc: BaseException) -> str:
    """``str(exc)``, which tenant code may have made raise."""
    try:
        return str(exc)
    except BaseException:
        return "<the exception's text could not be rendered>"


def check_action_class(obj: Any, name: str) -> type:
    """Return ``obj`` if it is a concrete action class, else raise LoadError."""
    if not inspect.isclass(obj):
        raise LoadError("%s is not an action class: it is a %s; an action is a class with a "
                        "run() method" % (name, type(obj).__name__))
    if not callable(getattr(obj, "run", None)):
        raise LoadError("%s is not an action class: class %s has no run() method"
                        % (name, obj.__qualname__))
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise LoadError("%s is abstract (unimplemented: %s)" % (name, missing))
    return obj


def signature_text(cls: type, name: str) -> str:
    """``name(a, b=1)`` — the action's parameters as an author would read them."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return "%s(...)" % name
    return "%s%s" % (name, sig)


def instantiate(cls: type, params: dict, name: str) -> Any:
    """``cls(**params)``; a LoadError names missing/unknown parameters and the signature.

    The signature is inspected only when the call fails (it costs more than the
    call): a TypeError raised by the call itself, before any code of the class
    ran, is a binding error; one raised inside ``__init__`` is the action's own.
    """
    try:
        return cls(**params)
    except TypeError as exc:
        inside = exc.__traceback__ is not None and exc.__traceback__.tb_next is not None
        if inside:
            raise LoadError("%s rejected its parameters: %s: %s"
                            % (name, type(exc).__name__, exc)) from None
        _raise_binding_error(cls, params, name, exc)
        raise LoadError("%s rejected its parameters: %s: %s"
                        % (name, type(exc).__name__, exc)) from None
    except LoadError:  # (a loader of its own, e.g. the runtime of Mistral's actions)
        raise
    except Exception as exc:
        raise LoadError("%s rejected its parameters: %s: %s"
                        % (name, type(exc).__name__, exc)) from None


def _raise_binding_error(cls: type, params: dict, name: str, exc: TypeError) -> None:
    """LoadError with what is missing or unknown, if the signature explains ``exc``."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**params)
        except TypeError as bind_exc:
            exc = bind_exc
            accepted = [p.name for p in sig.parameters.values()
                        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            unknown = sorted(set(params) - set(accepted))
            missing = [p.name for p in sig.parameters.values()
                       if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                              p.KEYWORD_ONLY)
                       and p.name not in params]
            has_var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
            details = []
            if missing:
                details.append("missing required parameter(s): %s" % ", ".join(missing))
            if unknown and not has_var_kw:
                details.append("unknown parameter(s): %s" % ", ".join(unknown))
            if not details:
                details.append(str(exc))
            raise LoadError("bad parameters for %s: %s; signature: %s"
                            % (name, "; ".join(details), signature_text(cls, name))) from None


def make_context(action: Any, context: ActionContext) -> Any:
    """The context object this action expects: ours, or mistral-lib's for its actions."""
    ml_base = _mistral_lib_action_base()
    if ml_base is None or not isinstance(action, ml_base) or isinstance(action, api_base.Action):
        return context
    from mistral_lib.actions import context as ml_ctx

    def build(cls, values):
        accepted = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in values.items() if k in accepted})

    return ml_ctx.ActionContext(
        security_ctx=build(ml_ctx.SecurityContext, context.security.to_dict()),
        execution_ctx=build(ml_ctx.ExecutionContext, context.execution.to_dict()))


def describe(cls: type, name: str) -> dict:
    """Parameters and docstring of an action class, as plain data."""
    params = []
    try:
        sig = inspect.signature(cls)
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            params.append({"name": p.name, "required": p.default is p.empty,
                           "default": None if p.default is p.empty else repr(p.default)})
    except (TypeError, ValueError):
        pass
    return {
        "name": name,
        "class": "%s:%s" % (cls.__module__, cls.__qualname__),
        "signature": signature_text(cls, name),
        "parameters": params,
        "doc": inspect.getdoc(cls) or "",
        "legacy": api_base.is_legacy(cls),
    }
