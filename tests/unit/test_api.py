import subprocess
import sys
import warnings

import pytest

from mistral_sandbox.api import NestedActionError

from mistral_sandbox.api import (Action, ActionContext, ExecutionContext, NoSecurityContext,
                                 NotAvailable, Result, SecurityContext, security, utils)
from mistral_sandbox.api import base

TOKEN = "gAAAAABsecret-token-value-1234567890"


def test_result_states_match_mistral_lib_semantics():
    assert Result(data=1).is_success()
    assert not Result(data=1).is_error()
    err = Result(error={"code": 500})
    assert err.is_error() and not err.is_success() and not err.is_cancel()
    cancel = Result(error="x", cancel=True)
    assert cancel.is_cancel() and not cancel.is_error() and not cancel.is_success()


def test_result_equality_and_dict_round_trip():
    r = Result(data={"a": [1, 2]}, error=None, cancel=False)
    assert r == Result({"a": [1, 2]})
    assert r != Result({"a": [1]})
    assert r.to_dict() == {"data": {"a": [1, 2]}, "error": None, "cancel": False}
    assert Result.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="unknown Result field.*bogus"):
        Result.from_dict({"data": 1, "bogus": 2})


def test_result_equals_mistral_lib_result():
    ml = pytest.importorskip("mistral_lib.actions")
    assert Result(data=1, error=None) == ml.Result(data=1)
    assert Result(error=2) != ml.Result(data=2)


def test_security_context_redacts_token_in_repr_and_str():
    ctx = SecurityContext(auth_token=TOKEN, user_name="alice", project_id="p1")
    for text in (repr(ctx), str(ctx), repr(ActionContext(ctx)), str(ActionContext(ctx))):
        assert TOKEN not in text
        assert "***" in text
    assert "alice" in repr(ctx)


def test_context_round_trip_keeps_token():
    ctx = ActionContext(SecurityContext(auth_token=TOKEN, user_id="u"),
                        ExecutionContext(workflow_execution_id="w", action_execution_id="a"))
    again = ActionContext.from_dict(ctx.to_dict())
    assert again == ctx
    assert again.security.auth_token == TOKEN
    assert again.execution.action_execution_id == "a"


def test_context_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match="unknown security context field.*tokn"):
        ActionContext.from_dict({"security": {"tokn": 1}})
    with pytest.raises(ValueError, match="unknown action context field.*extra"):
        ActionContext.from_dict({"extra": {}})
    with pytest.raises(ValueError, match="must be a mapping"):
        ActionContext.from_dict({"execution": 5})


def test_security_accessors_outside_an_action_raise():
    with pytest.raises(NoSecurityContext, match="only usable while an action runs"):
        security.current()
    with pytest.raises(NoSecurityContext):
        security.auth_token()


def test_security_accessors_inside_bind():
    ctx = SecurityContext(auth_token=TOKEN, user_name="bob", project_name="proj")
    with security.bind(ctx):
        assert security.auth_token() == TOKEN
        assert security.user() == "bob"
        assert security.project() == "proj"
    with pytest.raises(NoSecurityContext):
        security.user()


def test_run_action_without_broker_is_not_available():
    with pytest.raises(NotAvailable, match="nested action calls are not available"):
        utils.run_action("std.echo", output=1)
    handle = utils.get_action("std.echo", output=1)
    assert handle.name == "std.echo" and handle.params == {"output": 1}
    with pytest.raises(ValueError):
        utils.get_action("")


def test_run_action_uses_installed_broker():
    """(The runner's broker is exercised for real in tests/functional/test_nested.py;
    this checks the API's side of the reply.)"""
    calls = []

    def broker(name, params, mode):
        calls.append((name, params, mode))
        if name == "refused":
            return {"call_id": 1, "reason": "refused", "message": "not allowed"}
        return {"call_id": 1, "data": params.get("output"), "error": None}

    utils.install_broker(broker)
    try:
        assert utils.run_action("std.echo", output=7) == Result(7)
        assert utils.get_action("std.echo", output=8).test(context=object()) == Result(8)
        with pytest.raises(NestedActionError) as err:
            utils.run_action("refused")
        assert (err.value.reason, err.value.message) == ("refused", "not allowed")
        assert str(err.value) == "nested action refused: refused: not allowed"
    finally:
        utils.install_broker(None)
    assert calls == [("std.echo", {"output": 7}, "run"), ("std.echo", {"output": 8}, "test"),
                     ("refused", {}, "run")]


def test_action_defaults():
    class A(Action):
        def run(self, context):
            return 1

    a = A()
    assert a.is_sync() is True
    assert a.test(ActionContext()) is None
    with pytest.raises(TypeError):
        Action()  # abstract


def test_legacy_action_runs_with_one_deprecation_warning_per_class():
    class Old(Action):
        def run(self):
            return "old"

    class New(Action):
        def run(self, context):
            return context

    assert base.is_legacy(Old) and not base.is_legacy(New)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert base.call_run(Old(), ActionContext()) == "old"
        assert base.call_run(Old(), ActionContext()) == "old"
        ctx = ActionContext()
        assert base.call_run(New(), ctx) is ctx
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1
    assert "Old.run() takes no context" in str(deprecations[0].message)


def test_api_does_not_import_the_runner():
    code = ("import sys, mistral_sandbox.api, mistral_sandbox.api.utils, "
            "mistral_sandbox.api.security\n"
            "bad = [m for m in sys.modules if m.startswith('mistral_sandbox.runner') "
            "or m == 'msgpack']\nprint(bad)\nsys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
