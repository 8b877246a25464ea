"""The executor service's pure parts: reading what Mistral sends, writing what it gets."""

import json

import pytest

from mistral_sandbox.actions.catalog import Catalog
from mistral_sandbox.mistral import dispatch, runtime
from mistral_sandbox.runner.outcome import Outcome
from mistral_sandbox.api.types import Result


def serialized(cls, data, key=runtime.MISTRAL_LIB_ACTION, cls_attrs=None):
    return json.dumps({"__serial_key": key, "__serial_data": json.dumps(
        {"cls": cls, "cls_attrs": cls_attrs or {}, "data": data})})


def test_the_class_path_is_read_without_importing_anything():
    text = serialized("no_such_module_anywhere.Thing", {"x": 1})
    assert runtime.action_class_path(text) == "no_such_module_anywhere.Thing"
    adhoc = json.dumps({"__serial_key": runtime.ADHOC_ACTION,
                        "__serial_data": json.dumps({"base_action": text})})
    assert runtime.action_class_path(adhoc) == "no_such_module_anywhere.Thing"
    with pytest.raises(ValueError, match="no __serial_key"):
        runtime.action_class_path(json.dumps({"cls": "x"}))


def test_names_come_from_the_catalog_else_the_class_path():
    names = dispatch.ActionNames(Catalog())
    assert names.name("mistral.actions.std_actions.EchoAction") == "std.echo"
    assert names.name("mistral_sandbox.actions.std.NoOpAction") == "std.noop"
    assert names.name("acme.actions.Report") == "acme.actions:Report"
    text = serialized("mistral.actions.std_actions.HTTPAction", {})
    ref, params = dispatch.submission(names, text)
    assert (ref.name, ref.target, params) == ("std.http", dispatch.RUNTIME_TARGET,
                                              {"action": text})


def test_rebuild_sets_fields_without_init_and_uses_light_std_actions():
    action = runtime.rebuild(serialized("mistral.actions.std_actions.EchoAction",
                                        {"output": "hi", "_delay": 0}))
    assert action.run(None) == "hi" and type(action).__module__ == runtime.__name__
    rebuilt = runtime.rebuild(serialized("mistral_sandbox.actions.std.EchoAction",
                                         {"output": 5}, cls_attrs={"extra": 1}))
    assert rebuilt.output == 5 and rebuilt.extra == 1 and rebuilt.run(None) == 5
    fail = runtime.rebuild(serialized("mistral.actions.std_actions.FailAction",
                                      {"error_data": {"why": "x"}}))
    assert fail.run(None).error == {"why": "x"}
    with pytest.raises(runtime.UnsupportedAction, match="dynamic actions"):
        runtime.rebuild(json.dumps({"__serial_key": runtime.DYNAMIC_ACTION,
                                    "__serial_data": "{}"}))


def test_contexts_and_timeout():
    ctx = dispatch.context_of({"auth_token": "t", "project_id": "p", "roles": ["x"]},
                              {"workflow_name": "wf", "callback_url": "/v2/x", "other": 1})
    assert ctx == {"security": {"auth_token": "t", "project_id": "p"},
                   "execution": {"workflow_name": "wf", "callback_url": "/v2/x"}}
    assert dispatch.timeout_limits(2) == {"wall_time": 2.0}
    for bad in (None, 0, -1, True, "5", float("inf")):
        assert dispatch.timeout_limits(bad) is None


def test_every_failure_is_one_error_text_naming_reason_and_limit():
    out = Outcome("timeout", message="the action exceeded its wall-time limit of 2s",
                  limits={"wall_time": "2s"}, limit_sources={"wall_time": "request"})
    assert dispatch.result_fields(out) == (
        None, "timeout: the action exceeded its wall-time limit of 2s [limits: wall_time=2s "
              "(request)]", False)
    out = Outcome("action_error", message="ValueError: boom", error_type="ValueError")
    assert dispatch.error_text(out) == "action_error: ValueError: boom [ValueError]"
    ok = Outcome("ok", result=Result(data=None, error={"e": 1}))
    assert dispatch.result_fields(ok) == (None, {"e": 1}, False)


def test_provider_reads_parameters_from_the_syntax_tree_only():
    from mistral_sandbox.mistral import provider
    source = '''
import this_module_does_not_exist   # never imported: only parsed
from mistral_lib import actions


class Base(actions.Action):
    def __init__(self, url, retries=3, *, verify=True, **extra):
        self.url = url


class Child(Base):
    """Fetches ``url``."""

    def is_sync(self):
        return False


class Elsewhere(SomeImportedBase):
    pass
'''
    assert provider.describe_source(source, "Base") == (
        "url, retries=3, verify=true, **extra", "", True)
    assert provider.describe_source(source, "Child") == (
        "url, retries=3, verify=true, **extra", "Fetches ``url``.", False)
    assert provider.describe_source(source, "Elsewhere")[0] == provider.UNKNOWN_PARAMS
    assert provider.describe_source("def broken(:\n", "A")[0] == provider.UNKNOWN_PARAMS
    assert "this_module_does_not_exist" not in __import__("sys").modules


def test_a_provider_action_travels_as_data_and_only_serve_runs_it():
    from mistral_lib import serialization
    from mistral_lib.exceptions import ActionException

    from mistral_sandbox.mistral import provider
    action = provider.SandboxedAction("acme.report", {"month": 11}, source="X = 1\n",
                                      class_name="Report", module_name="acme_report")
    text = serialization.get_polymorphic_serializer().serialize(action)
    ref, params = dispatch.submission(dispatch.ActionNames(Catalog()), text)
    assert (ref.source, ref.class_name, ref.module_name, params) == (
        "X = 1\n", "Report", "acme_report", {"month": 11})
    by_name = provider.SandboxedAction("itest.x", {}, ref="itest.x@sandbox")
    ref, params = dispatch.submission(dispatch.ActionNames(Catalog()),
                                      serialization.get_polymorphic_serializer()
                                      .serialize(by_name))
    assert (ref, params) == ("itest.x@sandbox", {})
    with pytest.raises(ActionException, match="runs only in `mistral-sandbox serve`"):
        action.run(None)


def test_the_provider_survives_crafted_sources_and_mistrals_list_format():
    from mistral_sandbox.mistral import provider
    deep = "x = " + "1+" * 200000 + "1\nclass A:\n    pass\n"
    assert provider.describe_source(deep, "A")[0] == provider.UNKNOWN_PARAMS
    source = ("class A:\n    def __init__(self, sep=', ', eq='a=b', n=2):\n        pass\n")
    assert provider.describe_source(source, "A")[0] == "sep=null, eq=null, n=2"
    inherited = ("class Base:\n    def is_sync(self):\n        return False\n"
                 "class Job(Base):\n    pass\n")
    assert provider.describe_source(inherited, "Job")[2] is False


def test_a_sandbox_provider_action_under_an_ad_hoc_action():
    from mistral_lib import serialization

    from mistral_sandbox.mistral import provider
    inner = provider.SandboxedAction("itest.x", {"a": 1}, ref="itest.x@sandbox", sync=False)
    text = serialization.get_polymorphic_serializer().serialize(inner)
    adhoc = json.dumps({"__serial_key": runtime.ADHOC_ACTION,
                        "__serial_data": json.dumps({"base_action": text})})
    assert dispatch.submission(dispatch.ActionNames(Catalog()), adhoc) == (
        "itest.x@sandbox", {"a": 1})
    assert dispatch.engine_sync(adhoc) is False and dispatch.engine_sync(text) is False
    assert dispatch.engine_sync(serialized("x.Y", {})) is None


def test_installed_actions_are_found_from_every_namespace(tmp_path, monkeypatch):
    from mistral_sandbox.mistral import provider
    info = tmp_path / "acme_pack-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-pack\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[mistral_sandbox.actions]\nacme.shout = acme_shout:Shout\n")
    (tmp_path / "acme_shout.py").write_text(
        "raise SystemExit('imported!')\nclass Shout:\n    def __init__(self, text):\n"
        "        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    p = provider.SandboxActionProvider()
    for namespace in (None, "", "tenant_ns"):
        desc = p.find("acme.shout", namespace=namespace)
        assert desc is not None and desc.params_spec == "text"
    assert "acme_shout" not in __import__("sys").modules


def test_a_source_reference_never_shows_its_text():
    from mistral_sandbox import SourceRef
    ref = SourceRef("PASSWORD = 'hunter2'\n", "A", "m")
    assert "hunter2" not in repr(ref) and ref.name == "source:m:A"
