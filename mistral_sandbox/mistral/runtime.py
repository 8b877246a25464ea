"""Inside the child: rebuild an action Mistral serialized, and run it.

Mistral's engine sends the action as mistral-lib's polymorphic serializer wrote it:
``{"__serial_key": KEY, "__serial_data": JSON}``. The executor service keeps that
text as it came and hands it to :class:`SerializedAction`, a sandbox action whose
``run`` rebuilds the action here, in the sandboxed child — rebuilding imports the
action's module, which must never happen in the service.

Known keys are rebuilt without Mistral's code: mistral-lib's ``Action`` and this
project's ``Action`` (class path, class attributes and instance fields, as
``mistral_lib.actions.base.ActionSerializer`` does), Mistral's ad-hoc action
(its base action: the engine converts the result). Dynamic actions (tenant code
sources) are refused here: their deserializer reads Mistral's database. Any
other key names its module by convention (``module.Class``): it is imported (in
the child) so that it registers its serializer with mistral-lib, which then
rebuilds the entity.
"""

from __future__ import annotations

import importlib
import json
import warnings
from typing import Any, Dict, Optional

from mistral_sandbox.api import base as api_base

MISTRAL_LIB_ACTION = "mistral_lib.actions.base.Action"
SANDBOX_API_ACTION = "mistral_sandbox.api.base.Action"
ADHOC_ACTION = "mistral.actions.adhoc.AdHocAction"
DYNAMIC_ACTION = "mistral.actions.dynamic_action.DynamicAction"
CLASS_KEYS = (MISTRAL_LIB_ACTION, SANDBOX_API_ACTION)


class UnsupportedAction(ValueError):
    """A serialized action this executor does not run (with the reason)."""


def split_serialized(text: Any) -> tuple:
    """``(key, data)`` of a serialized entity (text or its decoded mapping); ValueError."""
    entity = json.loads(text) if isinstance(text, (str, bytes)) else text
    if not isinstance(entity, dict) or "__serial_key" not in entity:
        raise ValueError("not an action serialized by mistral-lib (no __serial_key): %s"
                         % type(entity).__name__)
    data = entity.get("__serial_data")
    return entity["__serial_key"], json.loads(data) if isinstance(data, (str, bytes)) else data


def action_class_path(text: Any) -> str:
    """The class path (``module.Class``) a serialized action names, without importing
    anything: what the executor service matches its policy against. An ad-hoc action
    names its base action's class. ValueError if there is none."""
    key, data = split_serialized(text)
    if key == ADHOC_ACTION:
        return action_class_path(data["base_action"])
    if key in CLASS_KEYS and isinstance(data, dict) and isinstance(data.get("cls"), str):
        return data["cls"]
    return key


def rebuild(text: Any) -> Any:
    """The action instance a serialized action describes (imports its module)."""
    key, data = split_serialized(text)
    if key in CLASS_KEYS:
        return _rebuild_class_action(data)
    if key == ADHOC_ACTION:
        return rebuild(data["base_action"])  # (the engine post-processes the result)
    if key == DYNAMIC_ACTION:
        raise UnsupportedAction("dynamic actions of Mistral's own `dynamic` provider are not "
                                "run here (their code source would be exec()'d outside the "
                                "sandbox): deny that provider and use the `sandbox` one")
    module = key.rpartition(".")[0]
    importlib.import_module(module)  # registers its serializer with mistral-lib
    from mistral_lib import serialization
    entity = {"__serial_key": key, "__serial_data": json.dumps(data)}
    return serialization.get_polymorphic_serializer().deserialize(json.dumps(entity))


def _rebuild_class_action(data: dict) -> Any:
    cls = LIGHT_EQUIVALENTS.get(data["cls"])
    if cls is None:
        module_name, _, cls_name = data["cls"].rpartition(".")
        if module_name == "mistral.actions.std_actions":
            importlib.import_module("mistral.db.v2.api")  # (breaks Mistral's import cycle)
        cls = getattr(importlib.import_module(module_name), cls_name)
    if data.get("cls_attrs"):
        cls = type(cls.__name__, (cls,), dict(data["cls_attrs"]))
    action = cls.__new__(cls)  # (as mistral-lib does: __init__'s parameters are unknown)
    for name, value in (data.get("data") or {}).items():
        setattr(action, name, value)
    return action


# Mistral's simplest std actions, as Mistral 23.0.0 writes them (same fields, same
# behaviour): importing their module takes Mistral's database layer, eventlet and a
# JavaScript engine (about 1.7 s and 2,000 modules), for a few lines of code each.
class _Echo:
    output: Any = None
    _delay: float = 0

    def run(self, context):
        import time
        time.sleep(self._delay)
        return self.output

    def test(self, context):
        return "Echo"


class _NoOp:
    def run(self, context):
        return None

    def test(self, context):
        return None


class _AsyncNoOp(_NoOp):
    def is_sync(self):
        return False


class _Fail:
    error_data: Any = None

    def run(self, context):
        from mistral_sandbox.api.types import Result
        if self.error_data:
            return Result(error=self.error_data)
        from mistral_sandbox.api.exceptions import ActionException
        raise ActionException("Fail action expected exception.")

    test = run


class _HTTP:
    """Mistral 23.0.0's ``std.http`` (``HTTPAction.run``), without importing
    ``std_actions`` (whose imports take Mistral's database layer): Mistral's own egress
    policy (``mistral.utils.egress``, with the operator's settings), ``requests``, the
    same result. One difference: ``history`` lists the redirects as plain data
    (``status``, ``url``, ``headers``) instead of response objects, which cannot be
    sent."""

    url: Any = None
    method = "GET"
    params = body = json = headers = cookies = auth = timeout = None
    allow_redirects = proxies = verify = None

    def run(self, context):
        from urllib import parse

        with warnings.catch_warnings():  # (Mistral's imports warn about their own imports)
            warnings.simplefilter("ignore")
            import mistral.config  # noqa: F401 (registers [action_std_http])
            import requests
            from mistral.utils import egress
        from oslo_config import cfg

        from mistral_sandbox.api.exceptions import ActionException
        from mistral_sandbox.api.types import Result
        conf = cfg.CONF.action_std_http
        egress.validate_url(self.url)
        auth = tuple(self.auth) if isinstance(self.auth, list) else self.auth
        try:
            verify = self.verify if parse.urlsplit(self.url).scheme == "https" else None
            resp = requests.request(
                self.method, self.url, params=self.params, data=self.body, json=self.json,
                headers=self.headers, cookies=self.cookies, auth=auth,
                timeout=conf.default_timeout if self.timeout is None else self.timeout,
                allow_redirects=self.allow_redirects, proxies=self.proxies, verify=verify)
        except Exception as e:
            raise ActionException("Failed to send HTTP request: %s" % e)
        length = resp.headers.get("Content-Length")
        if conf.max_response_size_bytes and length and \
                int(length) > conf.max_response_size_bytes:
            resp.close()
            raise ActionException("HTTP response is too large (Content-Length=%s, limit=%s "
                                  "bytes)." % (length, conf.max_response_size_bytes))
        try:
            content = resp.json()
        except Exception:
            content = resp.content
            if content and resp.encoding not in (None, "utf-8"):
                content = content.decode(resp.encoding).encode("utf-8")
        result = {
            "content": content, "status": resp.status_code,
            "headers": dict(resp.headers.items()), "url": resp.url,
            "history": [{"status": r.status_code, "url": r.url,
                         "headers": dict(r.headers.items())} for r in resp.history],
            "encoding": resp.encoding, "reason": resp.reason,
            "cookies": dict(resp.cookies.items()),
            "elapsed": resp.elapsed.total_seconds()}
        if resp.status_code not in range(200, 307):
            return Result(error=result)
        return result

    def test(self, context):
        return None


LIGHT_EQUIVALENTS = {
    "mistral.actions.std_actions.EchoAction": _Echo,
    "mistral.actions.std_actions.NoOpAction": _NoOp,
    "mistral.actions.std_actions.AsyncNoOpAction": _AsyncNoOp,
    "mistral.actions.std_actions.FailAction": _Fail,
    "mistral.actions.std_actions.HTTPAction": _HTTP,
}


def apply_mistral_conf(conf: Dict[str, Dict[str, Any]]) -> None:
    """Give Mistral's own actions the operator's settings (``group -> option -> value``,
    from the service's configuration): the child has not read Mistral's configuration
    file, and e.g. std.http's egress policy (``[action_std_http] denied_cidrs``,
    ``allowed_hosts``) must be the operator's, not the defaults."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mistral.config  # noqa: F401 (registers the options)
    from oslo_config import cfg
    for group, values in conf.items():
        for name, value in values.items():
            try:
                cfg.CONF.set_override(name, value, group=group)
            except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
                pass


class SerializedAction(api_base.Action):
    """Runs the action Mistral serialized in ``action`` (the serialized text); ``conf``:
    operator settings of Mistral's own actions (:func:`apply_mistral_conf`).

    ``is_sync`` and ``run`` are the rebuilt action's; the context it gets is the one it
    expects (mistral-lib's for mistral-lib actions).
    """

    def __init__(self, action: str, conf: Optional[Dict[str, Dict[str, Any]]] = None):
        try:
            self._action = rebuild(action)
            if conf and (type(self._action).__module__.startswith("mistral.")
                         or isinstance(self._action, _HTTP)):
                apply_mistral_conf(conf)
        except BaseException as exc:  # its module's code ran: anything can come out
            from mistral_sandbox.actions.loader import LoadError
            try:
                what = action_class_path(action)
            except (ValueError, KeyError, TypeError):
                what = "?"
            raise LoadError("cannot rebuild the action Mistral sent (%s): %s: %s"
                            % (what, type(exc).__name__, exc)) from None

    def is_sync(self) -> bool:
        is_sync = getattr(self._action, "is_sync", None)
        return bool(is_sync()) if callable(is_sync) else True

    def run(self, context: Any) -> Any:
        from mistral_sandbox.actions import loader
        return api_base.call_run(self._action, loader.make_context(self._action, context))

    def test(self, context: Any) -> Any:
        from mistral_sandbox.actions import loader
        return api_base.call_run(self._action, loader.make_context(self._action, context),
                                 "test")
