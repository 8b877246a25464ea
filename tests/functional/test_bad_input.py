"""Bad input and misbehaving actions: each ends in one precise Outcome, nothing leaks,
and the next execution works."""

import concurrent.futures
import dataclasses
import os
import re
import signal
import time

import psutil
import pytest

from mistral_sandbox import Sandbox
from mistral_sandbox.runner.limits import DEFAULT_CEILING, LimitError
from tests.conftest import FIXTURES, sandbox_strays


def test_unknown_action(sandbox, then_works):
    out = sandbox.run("std.ecoh", {"output": 1})
    assert out.exit_reason == "load_error"
    assert "unknown action 'std.ecoh'" in out.message and "std.echo" in out.message


def test_unknown_module(sandbox, then_works):
    out = sandbox.run("no_such_pkg.mod:Thing")
    assert out.exit_reason == "load_error"
    assert out.message == ("cannot import module 'no_such_pkg.mod': ModuleNotFoundError: "
                           "No module named 'no_such_pkg'")


@pytest.mark.parametrize("ref,text", [
    ("sample_actions:Nope", "'sample_actions' has no attribute 'Nope'"),
    ("sample_actions:NoRun", "class NoRun has no run() method"),
    ("sample_actions:not_a_class", "it is a function"),
    ("sample_actions:Abstract", "is abstract (unimplemented: run)"),
])
def test_not_an_action(sandbox, then_works, ref, text):
    out = sandbox.run(ref)
    assert out.exit_reason == "load_error" and text in out.message


def test_bad_parameters_name_the_signature(sandbox, then_works):
    out = sandbox.run("std.echo", {"outptu": 1})
    assert out.exit_reason == "load_error"
    assert out.message == ("bad parameters for std.echo: missing required parameter(s): output; "
                           "unknown parameter(s): outptu; signature: std.echo(output)")


def test_unserializable_parameters(sandbox, then_works):
    out = sandbox.run("std.echo", {"output": {1, 2}})
    assert out.exit_reason == "load_error"
    assert "parameter['output'] is a builtins.set" in out.message


def test_malformed_limits_raise(sandbox, clean):
    with pytest.raises(LimitError, match="limit 'memory'.*'lots'"):
        sandbox.submit("std.noop", limits={"memory": "lots"})


def test_action_raises(sandbox, then_works):
    out = sandbox.run("sample_actions:Raises")
    assert out.exit_reason == "action_error"
    assert out.message == "KeyError: 'no such thing'"
    assert out.error_type == "builtins.KeyError"
    assert 'raise KeyError("no such thing")' in out.traceback


def test_non_serializable_result(sandbox, then_works):
    out = sandbox.run("sample_actions:ReturnsSet")
    assert out.exit_reason == "action_error"
    assert "result['ok'][2] is a builtins.set" in out.message


def test_prints_100_mb(sandbox, then_works):
    out = sandbox.run("sample_actions:PrintsHuge", {"mb": 100})
    assert out.exit_reason == "output_limit" and out.signal == 9
    assert out.message == "the action wrote more than 1048576 bytes to stdout/stderr"
    assert len(out.stdout) <= 64 * 1024  # only a bounded tail is kept


def test_sleeps_forever(sandbox, then_works):
    out = sandbox.run("sample_actions:SleepsForever", limits={"timeout": "500ms"})
    assert out.exit_reason == "timeout"
    assert out.message == "the action exceeded its wall-time limit of 0.5s"
    assert out.usage.wall >= 0.5


def test_allocates_10_gb(sandbox, then_works):
    out = sandbox.run("sample_actions:MemoryBomb", {"gb": 10})
    assert out.exit_reason == "memory_limit"
    assert out.message == "MemoryError: the action exceeded its memory limit"


def test_cpu_spin(sandbox, then_works):
    out = sandbox.run("sample_actions:SpinsCPU", limits={"cpu": "1s", "timeout": "20s"})
    assert out.exit_reason == "cpu_limit"
    assert out.usage.cpu_user + out.usage.cpu_sys >= 0.9


def test_exits_with_status_3(sandbox, then_works):
    out = sandbox.run("sample_actions:Exits3")
    assert out.exit_reason == "action_error"
    assert out.exit_status == 3
    assert "exited with status 3 before returning a result" in out.message


def test_kills_itself(sandbox, then_works):
    out = sandbox.run("sample_actions:KillsSelf")
    # the action is its pid namespace's init: like any init, it ignores a signal with
    # the default action that comes from inside its namespace (itself)
    assert "pid_ns" in out.isolation["applied"]
    assert out.exit_reason == "ok", out.message
    assert out.result.data is None


def test_kills_itself_without_a_pid_namespace(no_leaks):
    with Sandbox(max_workers=1, extra_path=[FIXTURES], isolation={"pid_ns": "off"}) as sb:
        out = sb.run("sample_actions:KillsSelf")
    assert out.exit_reason == "killed"
    assert out.signal == 9 and out.message == "the action's process was killed by SIGKILL"


def test_killed_from_outside_its_namespace_is_killed(sandbox, then_works):
    fut = sandbox.submit("std.sleep", {"seconds": 30})
    deadline = time.monotonic() + 10
    while not sandbox.started_pids() and time.monotonic() < deadline:
        concurrent.futures.wait([fut], timeout=0.01)
    (pid,) = sandbox.started_pids().values()
    os.kill(pid, signal.SIGKILL)  # e.g. the OOM killer, or an operator
    out = fut.result(timeout=30)
    assert out.exit_reason == "killed" and out.signal == 9
    assert out.message == "the action's process was killed by SIGKILL"


def test_closes_its_pipe_early(sandbox, then_works):
    out = sandbox.run("sample_actions:ClosesPipe")
    assert out.exit_reason == "protocol_error"
    assert "closed its channel before replying" in out.message


def test_writes_garbage_to_the_pipe(sandbox, then_works):
    """Killed at once: the action then sleeps for an hour, and the future resolves
    within the bound."""
    out = sandbox.submit("sample_actions:WritesGarbage").result(timeout=60)
    assert out.exit_reason == "protocol_error"
    assert out.message.startswith("the child broke the protocol: undecodable message: ")


def test_announces_an_oversize_frame(sandbox, then_works):
    """Refused on the header, before any of the body: at once, the action still asleep."""
    out = sandbox.submit("sample_actions:WritesOversizeHeader").result(timeout=60)
    assert out.exit_reason == "protocol_error"
    maximum = re.fullmatch(r"the child broke the protocol: frame of 4294967280 bytes "
                           r"announced, maximum is (\d+)", out.message).group(1)
    assert int(maximum) < 4294967280


@pytest.mark.parametrize("mb,limits,maximum", [
    (32, None, DEFAULT_CEILING.max_result_bytes),  # the operator's ceiling
    (2, {"max_result_bytes": "1MiB"}, 2 ** 20),  # a request's own, tighter limit
])
def test_huge_result(sandbox, then_works, mb, limits, maximum):
    out = sandbox.run("sample_actions:HugeResult", {"mb": mb}, limits=limits)
    assert out.exit_reason == "output_limit"
    size, limit = re.fullmatch(r"result of (\d+) bytes exceeds max_result_bytes=(\d+)",
                               out.message).groups()
    assert int(limit) == maximum and int(size) > mb << 20


def test_deep_result(sandbox, then_works):
    out = sandbox.run("sample_actions:DeepResult", {"depth": 500})
    assert out.exit_reason == "action_error"
    assert "nested deeper than 200 levels" in out.message


def test_nested_calls_are_refused_by_the_default_ceiling(sandbox, then_works):
    out = sandbox.run("sample_actions:NestedCall")
    assert out.exit_reason == "action_error"
    assert out.message == "nested action std.echo: refused: the action may make at most 0 " \
                          "nested calls (nested_calls, default)"
    assert out.error_type == "mistral_sandbox.api.exceptions.NestedActionError"


def test_token_never_leaks_into_outcome_text(sandbox, then_works, caplog):
    """An action that prints its token and raises with it in the message: the outcome
    and the supervisor's logs (at DEBUG) show only ***."""
    token = "TOKEN-" + "abc123" * 6
    with caplog.at_level("DEBUG"):
        out = sandbox.run("sample_actions:LeaksToken",
                          context={"security": {"auth_token": token}})
    assert out.exit_reason == "action_error"
    dumped = str(out.to_dict()) + repr(out)
    assert token not in dumped
    assert token not in caplog.text
    assert "could not use token ***" in out.message
    assert "token is ***" in out.stdout


def test_double_forked_daemon_does_not_survive(sandbox, then_works):
    """The daemon is gone when the outcome arrives (then_works' leak check also looks):
    killed with the pid namespace, or by the uid sweep without one."""
    out = sandbox.run("sample_actions:DoubleFork")
    assert out.exit_reason == "ok"
    if "pid_ns" in out.isolation["applied"]:
        assert out.result.data > 2  # a pid inside the execution's own namespace
    else:
        daemon = out.result.data
        assert not psutil.pid_exists(daemon) or psutil.Process(daemon).status() == "zombie"
        if os.geteuid() == 0:
            assert out.isolation["survivors_swept"] is True
    assert sandbox_strays(sandbox) == {}


def test_a_result_larger_than_any_frame_is_an_output_limit(no_leaks):
    """With no max_result_bytes, the frame size still bounds a result: above it the
    outcome is output_limit, as for any result too large, not a runner failure."""
    ceiling = dataclasses.replace(DEFAULT_CEILING, max_result_bytes=None)
    with Sandbox(max_workers=1, ceiling=ceiling, max_frame=1 << 20,
                 extra_path=[FIXTURES]) as sb:
        out = sb.run("sample_actions:HugeResult", {"mb": 2})
        assert out.exit_reason == "output_limit", out.message
        assert "exceeds the maximum of 1048576 bytes" in out.message
        assert sb.run("std.noop").ok


@pytest.mark.parametrize("options,limits", [({"max_frame": 128 * 1024}, None),
                                            ({}, {"max_result_bytes": "1KiB"})])
def test_a_large_error_message_is_an_action_error(no_leaks, options, limits):
    """An error frame (message and traceback) fits whatever limits the result has: the
    outcome is the action's error, cut, not a protocol error."""
    with Sandbox(max_workers=1, extra_path=[FIXTURES], **options) as sb:
        out = sb.run("sample_actions:RaisesLoudly", {"kb": 100}, limits=limits)
    assert out.exit_reason == "action_error", out.message
    assert out.message.startswith("RuntimeError: xxxx") and "characters cut" in out.message


def test_a_logger_named_after_the_token_does_not_leak_it(sandbox, then_works):
    token = "tok-" + "q7" * 16
    out = sandbox.run("sample_actions:LogsUnderATokenNamedLogger",
                      context={"security": {"auth_token": token}})
    assert out.exit_reason == "ok"
    assert token not in repr(out.to_dict())
    assert out.logs[0]["logger"] == "***"
