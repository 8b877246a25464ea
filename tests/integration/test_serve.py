"""`mistral-sandbox serve` as Mistral's executor, driven through Mistral's REST API."""

import json
import os
import re
import signal
import time

import psutil

from tests.integration.stack import wait_for


def one_task(stack, name, action, timeout=None, extra=""):
    """A workflow with one task running ``action``; its result is published as `out`."""
    stack.create_workflow("""
        version: '2.0'
        %s:
          tasks:
            t1:
              action: %s%s%s
              publish:
                out: <%% task().result %%>
        """ % (name, action, "\n              timeout: %d" % timeout if timeout else "",
               extra))
    return name


def task_of(stack, ex_id):
    tasks = stack.tasks(ex_id)
    assert len(tasks) == 1
    return tasks[0]


def run(stack, name, action, timeout=60, **kwargs):
    return stack.wait_execution(stack.start(one_task(stack, name, action, **kwargs)), timeout)


def test_std_echo(stack):
    ex = run(stack, "wf_echo", 'std.echo output="hello"')
    assert ex["state"] == "SUCCESS", ex
    assert ex["output"]["out"] == "hello"
    assert "action std.echo [action_ex_id=" in stack.log("serve")
    # the periodic summary (every 2 s in this stack) counts it
    wait_for(lambda: re.search(r"last 2s: [^;]*\bok [1-9]", stack.log("serve")), 10,
             "a summary line counting it")


def test_a_mistral_lib_action_runs_in_a_sandboxed_child(stack):
    ex = run(stack, "wf_mistral_lib", "itest.mistral_lib n=21")
    assert ex["state"] == "SUCCESS", ex
    out = ex["output"]["out"]
    assert out["double"] == 42 and out["workflow"] == "wf_mistral_lib"
    serve = stack.procs["serve"][0]
    assert out["pid"] != serve.pid
    task = task_of(stack, ex["id"])
    assert out["action_execution_id"] == stack.action_executions(task["id"])[0]["id"]


def test_an_action_written_against_the_sandbox_api(stack):
    ex = run(stack, "wf_api", 'itest.api name="Ada"')
    assert ex["state"] == "SUCCESS", ex
    assert ex["output"]["out"] == "hello Ada from wf_api"


def test_a_legacy_action(stack):
    ex = run(stack, "wf_legacy", 'itest.legacy word="old"')
    assert ex["state"] == "SUCCESS", ex
    assert ex["output"]["out"] == "OLD"


def test_a_failing_action_fails_its_task_with_the_reason(stack):
    ex = run(stack, "wf_fail", "itest.fail")
    assert ex["state"] == "ERROR"
    info = task_of(stack, ex["id"])["state_info"]
    assert "action_error" in info and "this action always fails" in info, info


def test_an_action_over_its_memory_limit(stack):
    ex = run(stack, "wf_hog", "itest.hog mib=512")
    assert ex["state"] == "ERROR"
    info = task_of(stack, ex["id"])["state_info"]
    assert "memory_limit" in info, info
    assert "resident_set_size=128MiB (action itest.hog)" in info, info


def sleepers():
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "itest-sleeper"]


def test_mistral_timeout_kills_the_action(stack):
    started = time.monotonic()
    ex_id = stack.start(one_task(stack, "wf_timeout", "itest.sleep seconds=120", timeout=2))
    wait_for(lambda: sleepers(), 30, "the sleeping action to start")
    ex = stack.wait_execution(ex_id, 30)
    assert ex["state"] == "ERROR"
    task = task_of(stack, ex_id)
    assert task["state"] == "ERROR"
    # the process is gone (Mistral's own executor leaves the thread sleeping) ...
    wait_for(lambda: not sleepers(), 15, "the sleeping action's process to end")
    # ... and the action execution is not left RUNNING
    wait_for(lambda: stack.action_executions(task["id"])[0]["state"] != "RUNNING", 15,
             "the action execution to end")
    assert stack.action_executions(task["id"])[0]["state"] == "ERROR"
    assert time.monotonic() - started < 30
    assert "action itest.sleep [action_ex_id=%s]: timeout" % (
        stack.action_executions(task["id"])[0]["id"]) in stack.log("serve")


def test_an_action_finds_nothing_of_the_executor(stack):
    ex = run(stack, "wf_env", 'itest.env config_file="%s"' % stack.conf)
    assert ex["state"] == "SUCCESS", ex
    out = ex["output"]["out"]
    assert "s3cr3t-of-the-executor" not in json.dumps(out)
    assert not set(out["environ"]) & {"PYTHONPATH", "ITEST_EXECUTOR_SECRET", "PATH_INFO"}
    assert "config" not in out and out["config_error"] in ("FileNotFoundError",
                                                           "PermissionError")
    assert "rabbit://" not in json.dumps(out)


def test_an_async_action_completes_through_the_api(stack):
    ex_id = stack.start(one_task(stack, "wf_async", "itest.async"))
    wait_for(lambda: stack.tasks(ex_id) and stack.action_executions(
        stack.tasks(ex_id)[0]["id"]), 30, "the async action execution")
    action_ex = stack.action_executions(stack.tasks(ex_id)[0]["id"])[0]
    assert action_ex["state"] == "RUNNING"
    assert stack.execution(ex_id)["state"] == "RUNNING"
    stack.request("PUT", "/action_executions/%s" % action_ex["id"],
                  {"state": "SUCCESS", "output": json.dumps({"result": "later"})})
    ex = stack.wait_execution(ex_id, 30)
    assert ex["state"] == "SUCCESS" and ex["output"]["out"] == {"result": "later"}


def test_thirty_parallel_workflows(stack):
    stack.create_workflow("""
        version: '2.0'
        wf_parallel:
          input: [n]
          tasks:
            t1:
              action: itest.mistral_lib n=<% $.n %>
              publish:
                out: <% task().result.double %>
        """)
    ids = [stack.start("wf_parallel", wf_input={"n": i}) for i in range(30)]
    done = [stack.wait_execution(ex_id, 120) for ex_id in ids]
    assert [ex["state"] for ex in done] == ["SUCCESS"] * 30
    assert [ex["output"]["out"] for ex in done] == [2 * i for i in range(30)]


def test_a_redelivered_action_that_is_not_safe_to_rerun_is_not_run(stack):
    action = json.dumps({"__serial_key": "mistral_lib.actions.base.Action",
                         "__serial_data": json.dumps({
                             "cls": "mistral_itest_actions.Sleeper", "cls_attrs": {},
                             "data": {"seconds": 60}})})
    cast_run_action(stack, action, {"redelivered": True, "project_id": "p"},
                    action_ex_id="redelivered-1")
    wait_for(lambda: "action ? [action_ex_id=redelivered-1]: redelivered" in
             stack.log("serve"), 30, "the redelivered request to be refused")
    assert not sleepers()


def cast_run_action(stack, action, rpc_ctx, **kwargs):
    """Send ``run_action`` to the stack's executor topic as Mistral's engine does."""
    import oslo_messaging as messaging
    from oslo_config import cfg

    transport = messaging.get_rpc_transport(cfg.CONF,
                                            url="rabbit://guest:guest@127.0.0.1:5672/")
    try:
        client = messaging.get_rpc_client(transport, messaging.Target(
            topic="mistral_executor_%s" % stack.suffix))
        args = dict(action=action, action_ex_id=None, safe_rerun=False, exec_ctx={},
                    timeout=None)
        args.update(kwargs)
        client.cast(rpc_ctx, "run_action", **args)
    finally:
        transport.cleanup()


def test_the_auth_token_stays_out_of_the_executor_log(stack):
    token = "gAAAA-itest-secret-token-0123456789"
    action = json.dumps({"__serial_key": "mistral_lib.actions.base.Action",
                         "__serial_data": json.dumps({
                             "cls": "mistral_itest_actions.LeaksToken", "cls_attrs": {},
                             "data": {}})})
    cast_run_action(stack, action, {"auth_token": token, "project_id": "p"},
                    action_ex_id="token-1")
    wait_for(lambda: "[action_ex_id=token-1]: action_error" in stack.log("serve"), 30,
             "the token-leaking action to end")
    assert token not in stack.log("serve")


def test_scale_out_survives_a_killed_executor(stack):
    """Two executors share the topic; one is killed mid-load and restarted: every
    workflow ends (the killed one's actions fail through missed heartbeats)."""
    name = one_task(stack, "wf_scale", "itest.sleep seconds=1")
    second = stack.start_executor("serve2")
    try:
        ids = [stack.start(name) for _ in range(16)]
        wait_for(lambda: "action itest.sleep" in stack.log("serve2"), 60,
                 "the second executor to take work")
        os.killpg(second.pid, signal.SIGKILL)
        stack.stop_process("serve2")
        stack.start_executor("serve3")
        done = [stack.wait_execution(ex_id, 120) for ex_id in ids]
        states = [ex["state"] for ex in done]
        assert "RUNNING" not in states and set(states) <= {"SUCCESS", "ERROR"}
        assert states.count("SUCCESS") >= 1
    finally:
        for name in ("serve2", "serve3"):
            if name in stack.procs:
                stack.stop_process(name)


def test_sigterm_lets_running_actions_finish_then_fails_the_rest(stack):
    """Stops the session's executor (and starts it again): its running action outlives
    the grace period and ends with an error result, not silently RUNNING."""
    ex_id = stack.start(one_task(stack, "wf_shutdown", "itest.sleep seconds=60"))
    wait_for(lambda: sleepers(), 30, "the sleeping action to start")
    assert stack.stop_process("serve") == 0
    ex = stack.wait_execution(ex_id, 30)
    assert ex["state"] == "ERROR"
    info = task_of(stack, ex_id)["state_info"]
    assert "the executor shut down before the action finished" in info, info
    assert not sleepers()
    stack.start_executor("serve")  # (for whatever test comes next)


def test_sigterm_reports_actions_still_queued(stack, tmp_path):
    """One worker, two long actions: at SIGTERM the running one gets the grace period,
    the queued one never starts; both tasks end in ERROR, each saying why."""
    conf = tmp_path / "one-worker.conf"
    conf.write_text("[sandbox]\nmax_workers = 1\nshutdown_grace = 1\n")
    stack.stop_process("serve")
    try:
        stack.start_executor("serve-one", extra_conf=str(conf))
        name = one_task(stack, "wf_queued", "itest.sleep seconds=60")
        ids = [stack.start(name) for _ in range(2)]
        wait_for(lambda: sleepers(), 30, "the first sleeping action to start")
        # (a heartbeat that lists two action executions: both reached the executor)
        wait_for(lambda: re.search(r"report_running_actions'\[action_ex_ids=\{?\[?'[^']+', '",
                                   stack.log("serve-one")), 30,
                 "both actions to reach the executor")
        assert stack.stop_process("serve-one") == 0
        infos = sorted(task_of(stack, ex["id"])["state_info"] or "" for ex in
                       [stack.wait_execution(ex_id, 30) for ex_id in ids])
        assert infos[0].startswith("cancelled: the executor shut down before the action "
                                   "finished"), infos
        assert infos[1].startswith("cancelled: the executor shut down before the action "
                                   "started"), infos
    finally:
        if "serve-one" in stack.procs:
            stack.stop_process("serve-one")
        stack.start_executor("serve")
