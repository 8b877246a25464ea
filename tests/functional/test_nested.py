"""Nested calls brokered by the runner: real callers, real nested children."""

import pytest

from mistral_sandbox import Sandbox
from tests.conftest import FIXTURES, wait_for_value, wait_gone

pytestmark = pytest.mark.usefixtures("no_leaks")
N = "nested_actions:"
NESTED = {"nested_calls": 4, "nested_depth": 2}


def sandbox(**options):
    options.setdefault("ceiling", NESTED)
    return Sandbox(max_workers=2, extra_path=[FIXTURES], **options)


CONTEXT = {"security": {"auth_token": "TOKEN-nested-0123456789abcdef", "user_name": "ada",
                        "project_id": "p1"},
           "execution": {"workflow_execution_id": "wf-1", "task_execution_id": "t-1",
                         "action_execution_id": "caller-1", "workflow_name": "wf"}}


def test_a_nested_call_returns_the_result_with_the_callers_context():
    with sandbox() as sb:
        out = sb.run(N + "Reuses", {"name": "std.echo", "params": {"output": "hi"}})
        ctx = sb.run(N + "Reuses", {"name": N + "ReportsContext"}, context=CONTEXT)
        dry = sb.run(N + "Reuses", {"name": "std.echo", "params": {"output": "x"},
                                    "mode": "test"})
    assert out.ok and out.result.data == {"data": "hi", "error": None}, out
    nested = ctx.result.data["data"]
    assert nested["user"] == "ada" and nested["has_token"] is True
    assert nested["execution"]["workflow_execution_id"] == "wf-1"
    assert nested["execution"]["parent_action_execution_id"] == "caller-1"
    assert nested["execution"]["action_execution_id"] not in (None, "caller-1")
    assert dry.ok and dry.result.data == {"data": "x", "error": None}


def test_the_token_is_redacted_in_every_text_of_the_outcome():
    with sandbox() as sb:
        caught = sb.run(N + "Reuses", {"name": N + "RaisesWithToken"}, context=CONTEXT)
        failed = sb.run(N + "FailsOnNestedFailure", {"name": N + "RaisesWithToken"},
                        context=CONTEXT)
    token = CONTEXT["security"]["auth_token"]
    assert caught.ok and caught.result.data["reason"] == "action_error"
    assert "nested saw token ***" in caught.result.data["message"]
    assert failed.exit_reason == "action_error"
    assert "nested saw token ***" in failed.message
    for out in (caught, failed):
        assert token not in str(out.to_dict())


def test_a_call_the_policy_denies_is_refused_inside_the_caller(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text('actions:\n  "*": {nested: false}\n  std.echo: {nested: true}\n')
    with sandbox(policy_file=str(policy)) as sb:
        denied = sb.run(N + "Reuses", {"name": "std.noop"})
        allowed = sb.run(N + "Reuses", {"name": "std.echo", "params": {"output": 1}})
        uncaught = sb.run(N + "FailsOnNestedFailure", {"name": "std.noop"})
        neighbour = sb.run("std.noop")
    assert denied.ok and denied.result.data == {
        "reason": "refused",
        "message": "the operator's policy does not let std.noop be called nested (action *)"}
    assert allowed.ok and allowed.result.data == {"data": 1, "error": None}
    assert uncaught.exit_reason == "action_error" and "refused" in uncaught.message
    assert neighbour.ok


def test_depth_and_count_limits():
    with sandbox() as sb:
        deep = sb.run(N + "CallsItself", {"depth": 5})
        counted = sb.run(N + "Reuses", {"name": "std.noop", "times": 5})
        unknown = sb.run(N + "Reuses", {"name": "std.nope"})
    assert deep.ok, deep
    assert deep.result.data["reached"] == 3  # the caller and two levels below it
    assert deep.result.data["stopped"].startswith("no nested calls this deep (nested_depth=0")
    assert [c.get("reason") for c in counted.result.data] == [None] * 4 + ["refused"]
    assert counted.result.data[4]["message"] == \
        "the action may make at most 4 nested calls (nested_calls, ceiling)"
    assert unknown.result.data["reason"] == "refused"
    assert "unknown action 'std.nope'" in unknown.result.data["message"]


def test_a_nested_timeout_inside_the_callers_remaining_wall_time():
    with sandbox() as sb:
        # the nested action asks for 500ms itself: it times out, the caller goes on
        short = sb.run(N + "Reuses", {"name": "std.sleep", "params": {
            "seconds": 30, "sandbox_limits": {"timeout": "500ms"}}}, limits={"timeout": "20s"})
        # without: it gets what the caller has left, and both end with the caller's time
        capped = sb.run(N + "Reuses", {"name": "std.sleep", "params": {"seconds": 30}},
                        limits={"timeout": "1s"})
    assert short.ok and short.result.data["reason"] == "timeout", short
    assert "(nested wall time 500ms)" in short.result.data["message"]
    assert capped.exit_reason == "timeout" and capped.usage.wall < 10


def test_saturated_workers_do_not_deadlock():
    """Every worker's action waits for a nested call: the nested ones run anyway."""
    with sandbox(warm=0) as sb:
        futures = [sb.submit(N + "Reuses", {"name": "std.echo", "params": {"output": i}})
                   for i in range(6)]
        outs = [f.result(timeout=120) for f in futures]
    assert [o.result.data["data"] for o in outs] == list(range(6))


def test_a_killed_caller_takes_its_nested_action_with_it():
    with sandbox() as sb:
        future = sb.submit(N + "Reuses", {"name": "std.sleep", "params": {"seconds": 60}})
        # (wait_for_value waits while its value is true)
        assert not wait_for_value(lambda: len(sb.started_pids()) < 2, 30), \
            "the caller and its nested action did not both start"
        pids = sb.started_pids()
        assert sb.cancel(future)
        assert future.result(timeout=30).exit_reason == "cancelled"
        assert wait_gone(list(pids.values())) == []
        assert wait_for_value(sb.running_pids, 10) == {}


def test_nested_executions_do_not_take_a_neighbours_worker():
    with sandbox(ceiling=NESTED) as sb:
        sb2 = sb
        caller = sb2.submit(N + "Reuses", {"name": "std.sleep", "params": {"seconds": 3}})
        assert not wait_for_value(lambda: len(sb2.started_pids()) < 2, 30)
        # two workers: the caller holds one, its nested action none
        neighbour = sb2.run("std.echo", {"output": "next"})
        assert neighbour.ok and not caller.done()
        assert caller.result(timeout=60).ok


def test_refused_calls_count_and_names_are_bounded():
    with sandbox(ceiling={"nested_calls": 3, "nested_depth": 2}) as sb:
        out = sb.run(N + "Reuses", {"name": "std.nope", "times": 5})
        long_name = sb.run(N + "Reuses", {"name": "x" * 300})
    reasons = [c["message"] for c in out.result.data]
    assert all("unknown action" in m for m in reasons[:3])
    assert reasons[3:] == ["the action may make at most 3 nested calls (nested_calls, "
                           "ceiling)"] * 2
    assert long_name.result.data["message"] == "action name of 300 characters (at most 256)"


def test_the_budget_is_for_the_whole_execution():
    with sandbox(ceiling={"nested_calls": 2, "nested_depth": 8}) as sb:
        out = sb.run(N + "CallsItself", {"depth": 6})
    assert out.ok, out
    assert out.result.data["reached"] == 4  # the caller, then two nested levels
    assert out.result.data["stopped"] == \
        "the whole execution may make at most 2 nested calls (nested_calls, ceiling)"


def test_a_class_path_is_judged_under_its_entry_point_name(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("actions:\n  std.sleep: {nested: false}\n")
    with sandbox(policy_file=str(policy)) as sb:
        out = sb.run(N + "Reuses", {"name": "mistral_sandbox.actions.std:SleepAction",
                                    "params": {"seconds": 0}})
    assert out.result.data == {
        "reason": "refused",
        "message": "the operator's policy does not let std.sleep be called nested "
                   "(action std.sleep)"}
