"""Every std action through a real sandboxed child."""

import os

from mistral_sandbox.api import ActionContext, ExecutionContext, Result, SecurityContext
from mistral_sandbox import Sandbox


def test_echo_returns_its_input(sandbox, clean):
    payload = {"list": [1, 2.5, "x", None, True], "bytes": b"\x00\xff", "nested": {"a": {}}}
    out = sandbox.run("std.echo", {"output": payload})
    assert out.exit_reason == "ok", out.message
    assert out.result == Result(payload)
    assert out.usage.wall > 0 and out.usage.max_rss > 0
    # delivered as soon as the child replied and closed its streams (the process still
    # exiting: the child's own usage, no exit status) — unless the exit report won the
    # race (then the kernel's); test_hot_path pins the early delivery down
    assert (out.usage.source, out.exit_status) in (("child", None), ("kernel", 0))


def test_wait_exit_gives_the_kernels_account(no_leaks):
    with Sandbox(max_workers=1, wait_exit=True) as sb:
        out = sb.run("std.echo", {"output": "x"})
        assert out.ok and out.result.data == "x"
        assert out.exit_status == 0 and out.signal is None
        assert out.usage.source == "kernel" and out.usage.max_rss > 0
        assert out.isolation["scratch_removed"] is True
        assert out.isolation["survivors_swept"] is False  # nothing was left to sweep
        assert os.listdir(sb.scratch_dir) == [] or \
            all(d.startswith("w") for d in os.listdir(sb.scratch_dir))


def test_noop(sandbox, clean):
    out = sandbox.run("std.noop")
    assert out.ok and out.result == Result(None)


def test_fail_without_data_is_an_action_error(sandbox, clean):
    out = sandbox.run("std.fail")
    assert out.exit_reason == "action_error"
    assert out.message == "Fail action expected exception."
    assert out.error_type == "mistral_sandbox.api.exceptions.ActionException"


def test_fail_with_error_data_returns_an_error_result(sandbox, clean):
    out = sandbox.run("std.fail", {"error_data": {"code": 42}})
    assert out.exit_reason == "ok"
    assert out.result.is_error() and out.result.error == {"code": 42}


def test_sleep(sandbox, clean):
    out = sandbox.run("std.sleep", {"seconds": 0.2})
    assert out.ok
    assert out.usage.wall >= 0.2


def test_sleep_rejects_bad_seconds_with_load_error(sandbox, clean):
    out = sandbox.run("std.sleep", {"seconds": "soon"})
    assert out.exit_reason == "load_error"
    assert "seconds must be a number" in out.message


def test_async_noop_returns_a_handle_keyed_by_action_execution_id(sandbox, clean):
    ctx = ActionContext(execution=ExecutionContext(action_execution_id="aeid-123"))
    out = sandbox.run("std.async_noop", context=ctx)
    assert out.exit_reason == "ok"
    assert out.async_handle is not None
    assert out.async_handle.action_execution_id == "aeid-123"
    assert out.async_handle.action == "std.async_noop"
    assert not out.async_handle.expired()


def test_async_without_id_gets_one_generated(sandbox, clean):
    out = sandbox.run("std.async_noop")
    assert out.async_handle.action_execution_id == out.action_execution_id
    assert len(out.action_execution_id) == 36


def test_dry_run_calls_test_not_run(sandbox, clean):
    out = sandbox.run("sample_actions:DryRun", mode="test")
    assert out.ok and out.result == Result({"sample": True})
    out = sandbox.run("std.echo", {"output": "x"}, mode="test")
    assert out.result == Result("x")


def test_describe_returns_signature_without_running(sandbox, clean):
    out = sandbox.run("std.sleep", mode="describe")
    assert out.ok
    info = out.result.data
    assert info["signature"] == "std.sleep(seconds=1)"
    assert info["parameters"] == [{"name": "seconds", "required": False, "default": "1"}]
    assert "Sleep" in info["doc"]


def test_security_and_execution_context_reach_the_action(sandbox, clean):
    token = "tok-" + "s3cr3t" * 5
    ctx = ActionContext(SecurityContext(auth_token=token, user_id="u1", project_id="p1"),
                        ExecutionContext(workflow_name="wf", action_execution_id="a1"))
    out = sandbox.run("sample_actions:Whoami", context=ctx)
    assert out.ok, out.message
    data = out.result.data
    assert data["user"] == "u1" and data["project"] == "p1" and data["token_seen"] is True
    assert data["aeid"] == "a1" and data["workflow"] == "wf"
    assert token not in repr(out) and token not in str(out.to_dict())


def test_child_is_isolated_basics(sandbox, clean):
    import os
    out = sandbox.run("sample_actions:Whoami")
    data = out.result.data
    # its own process group, in the zygote's session: no controlling terminal, and not
    # a session leader, so it cannot acquire one
    assert data["session_leader"] is False
    # (the minimal view has no /dev/tty at all; in the host's view it is there but
    # the action has no controlling terminal)
    assert data["tty"] == ("ENOENT" if sandbox.zygote_info["view"] == "minimal" else "ENXIO")
    if "pid_ns" in out.isolation["applied"]:
        # pid 1 of its own namespace, leading its process group
        assert data["pid"] == 1 and data["pgid"] == 1
        assert data["visible_pids"] == [1]  # its /proc shows nothing of the host
    else:
        assert data["pgid_is_pid"] is True
    assert data["fds"] == [0, 1, 2, 3, 4]  # stdio, channel, and listdir's own fd
    assert set(data["env"]) == {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"}
    if "mount_ns" in out.isolation["applied"]:
        # its scratch directory, mounted over the directory of all of them
        assert data["cwd"] == sandbox.scratch_view
    else:
        assert data["cwd"].startswith(sandbox.scratch_root)
    assert data["env"]["HOME"] == data["cwd"] == data["env"]["TMPDIR"]
    if os.geteuid() == 0:
        assert data["uid"] != 0 and "uid" in out.isolation["applied"]
    for step in ("session", "fds", "scratch", "environment", "rlimits", "pdeathsig"):
        assert step in out.isolation["applied"]


def test_stdout_and_stderr_are_captured(sandbox, clean):
    out = sandbox.run("sample_actions:PrintsSome")
    assert out.ok
    assert out.stdout == "to stdout\n" and out.stderr == "to stderr\n"
    assert out.stdout_bytes == 10


def test_unflushed_output_is_captured_when_the_action_fails(sandbox, clean):
    """The child flushes and closes stdout/stderr before its final reply, on the error
    path too: text still in Python's buffers when the action raised is delivered."""
    out = sandbox.run("sample_actions:PrintsPartialThenRaises")
    assert out.exit_reason == "action_error" and "after printing" in out.message
    assert out.stdout == "partial out"
    assert out.stderr == "partial err"


def test_action_logging_is_forwarded(sandbox, clean):
    out = sandbox.run("sample_actions:Logs")
    assert out.ok
    assert {"level": 30, "logger": "tenant", "msg": "careful: something"} in out.logs


def test_legacy_action_runs_with_deprecation_warning(sandbox, clean):
    out = sandbox.run("sample_actions:Legacy", {"x": 21})
    assert out.ok and out.result == Result(42)
    warnings = [log["msg"] for log in out.logs if "DeprecationWarning" in log["msg"]]
    assert len(warnings) == 1 and "Legacy.run() takes no context" in warnings[0]


def test_duck_typed_legacy_class_runs(sandbox, clean):
    out = sandbox.run("sample_actions:PlainLegacy")
    assert out.ok and out.result == Result("plain")


def test_mistral_lib_action_runs_unchanged(sandbox, clean):
    ctx = ActionContext(SecurityContext(project_id="proj-9"),
                        ExecutionContext(action_execution_id="ml-1"))
    out = sandbox.run("mistral_lib_actions:MistralLibEcho", {"output": [1]}, context=ctx)
    assert out.ok, out.message
    assert out.result.data == {"output": [1],
                               "context_type": "mistral_lib.actions.context.ActionContext",
                               "project_id": "proj-9", "aeid": "ml-1"}


def test_mistral_lib_result_is_unwrapped(sandbox, clean):
    out = sandbox.run("mistral_lib_actions:MistralLibResult")
    assert out.ok and out.result.is_error() and out.result.error == {"code": 404}


def test_tempfile_lands_in_the_private_scratch_dir(sandbox, clean):
    out = sandbox.run("sample_actions:UsesTempfile")
    assert out.ok, out.message
    data = out.result.data
    assert data["tempdir"] == data["cwd"]
    assert data["file"].startswith(data["cwd"] + "/")
