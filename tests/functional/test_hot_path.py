"""The hot path: warm children take requests straight from the supervisor, outcomes are
delivered on reply + EOF, the pool refills, and what children share is empty."""

import concurrent.futures
import dataclasses
import os
import signal

import psutil

from mistral_sandbox.runner.limits import DEFAULT_CEILING
from mistral_sandbox import Sandbox
from tests.conftest import FIXTURES, wait_for

ROOT = os.geteuid() == 0


def test_a_request_runs_in_a_child_that_was_waiting_warm(sandbox, clean):
    assert wait_for(lambda: len(sandbox.warm_pids()) == sandbox.warm)  # a full pool
    warm = set(sandbox.warm_pids())
    fut = sandbox.submit("std.sleep", {"seconds": 0.3})
    assert wait_for(lambda: sandbox.running_pids())
    (pid,) = sandbox.running_pids().values()
    assert pid in warm  # no fork on the request's path
    assert fut.result(timeout=30).ok
    assert pid not in sandbox.warm_pids()
    # the pool is refilled (in batches, once half of it is used) with new children only
    for _ in range(sandbox.warm):
        assert sandbox.run("std.noop").ok
    assert wait_for(lambda: len(sandbox.warm_pids()) > sandbox.warm // 2
                    and not sandbox.warm_pids() & warm)


def test_outcome_arrives_before_the_slot_is_freed(no_leaks):
    """Delivered on reply + EOF; the execution holds its slot until the zygote reaped it.

    The zygote is stopped while the request runs, so it cannot report the child's exit
    (otherwise which comes first, the report or the last EOF, is a race)."""
    with Sandbox(max_workers=1, extra_path=[FIXTURES]) as sb:
        assert wait_for(lambda: len(sb.warm_pids()) == sb.warm)
        zygote = sb.zygote_info["pid"]
        os.kill(zygote, signal.SIGSTOP)
        try:
            out = sb.submit("std.noop").result(timeout=10)  # (not waiting for the exit)
            assert out.ok and out.usage.source == "child" and out.exit_status is None
            assert sb.running_pids()  # delivered, its slot still held
        finally:
            os.kill(zygote, signal.SIGCONT)
        # the slot comes back once the exit is reported: the next run is not refused
        assert wait_for(lambda: not sb.running_pids())
        assert sb.run("std.noop").ok


def test_processes_are_named(sandbox, clean):
    assert wait_for(lambda: len(sandbox.warm_pids()) > 0)
    assert psutil.Process(sandbox.zygote_info["pid"]).name() == "ms-zygote"
    assert wait_for(lambda: all(psutil.Process(p).name() == "ms-child"
                                for p in sandbox.warm_pids()))
    me = psutil.Process()
    names = set()
    for thread in me.threads():
        with open("/proc/self/task/%d/comm" % thread.id) as f:
            names.add(f.read().strip())
    assert "ms-sandbox-io" in names


def test_children_without_network_join_their_uids_empty_namespace(sandbox, clean):
    """As root, one network namespace per sandbox uid, made by the zygote: executions
    under one uid (never at the same time) share it, two uids never do."""
    host = os.readlink("/proc/self/ns/net")
    seen = {}
    for _ in range(12):
        out = sandbox.run("sample_actions:NetNamespaceAndUid")
        assert out.ok, out.message
        ns, uid = out.result.data
        assert ns != host
        assert seen.setdefault(uid, ns) == ns
    if ROOT:
        assert sandbox.zygote_info["namespaces"]["net"] == "one per sandbox uid"
        assert len(seen) > 1 and len(set(seen.values())) == len(seen)


def test_namespaces_are_made_per_child_when_sharing_is_off_or_unsafe(no_leaks):
    with Sandbox(max_workers=1, extra_path=[FIXTURES], share_namespaces=False) as sb:
        assert set(sb.zygote_info["namespaces"].values()) == {"per child (sharing disabled)"}
        a, b = (sb.run("hostile_actions:UsesIPC") for _ in range(2))
        assert a.ok and b.ok, (a.message, b.message)
        for name in ("net", "ipc", "uts"):
            assert a.result.data["ns"][name] != b.result.data["ns"][name], name
        assert a.result.data["hostname"] == "sandbox"
    # without a required seccomp filter nothing makes sharing net and ipc safe
    with Sandbox(max_workers=1, warm=0, isolation={"seccomp": "best_effort"}) as sb:
        info = sb.zygote_info["namespaces"]
        assert info["net"] == info["ipc"] == "per child (seccomp is not required)"
        assert info["uts"] == "shared"


def test_with_network_a_child_is_in_the_hosts_namespace(no_leaks):
    """Warm children are prepared for the ceiling's network setting."""
    host = os.readlink("/proc/self/ns/net")
    ceiling = dataclasses.replace(DEFAULT_CEILING, network=True)
    with Sandbox(max_workers=2, ceiling=ceiling, extra_path=[FIXTURES]) as sb:
        assert wait_for(lambda: len(sb.warm_pids()) > 0)
        warm = set(sb.warm_pids())
        fut = sb.submit("sample_actions:NetNamespace")
        with_net = fut.result(timeout=30)
        assert with_net.ok and with_net.result.data == host
        assert with_net.isolation["prepared_ahead"] is True and warm
        without = sb.run("sample_actions:NetNamespace", limits={"network": False})
        assert without.ok and without.result.data != host
        assert without.isolation["prepared_ahead"] is False  # forked for it


def test_an_idle_warm_child_that_dies_is_forgotten(sandbox, then_works):
    assert wait_for(lambda: len(sandbox.warm_pids()) > 0)
    victim = sorted(sandbox.warm_pids())[0]
    os.kill(victim, signal.SIGKILL)  # e.g. the OOM killer picked it
    assert wait_for(lambda: victim not in sandbox.warm_pids())
    futures = [sandbox.submit("std.echo", {"output": i}) for i in range(8)]
    outs = [f.result(timeout=30) for f in concurrent.futures.as_completed(futures)]
    assert sorted(o.result.data for o in outs) == list(range(8))


def test_per_call_limits_still_apply_in_a_warm_child(sandbox, then_works):
    """Warm children have the operator's ceiling applied ahead; a request's own,
    tighter limits are applied when it arrives."""
    out = sandbox.run("hostile_actions:FillsDisk", limits={"file_size": "1MiB"})
    assert out.ok and out.result.data["error"] == "EFBIG", out.result


def test_a_request_whose_prepared_child_dies_before_starting_runs_again(no_leaks):
    """No tenant code runs before the child's ready message: if the warm child dies
    before it (here: stopped, handed the request, then killed), the execution runs
    again, once, in a fresh child."""
    with Sandbox(max_workers=1, warm=2, extra_path=[FIXTURES]) as sb:
        assert wait_for(lambda: len(sb.warm_pids()) == 2)
        stopped = set(sb.warm_pids())
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            fut = sb.submit("std.echo", {"output": "again"})
            assert wait_for(lambda: sb.running_pids())
            (victim,) = sb.running_pids().values()
            assert victim in stopped
            for pid in stopped - {victim}:
                os.kill(pid, signal.SIGCONT)
            os.kill(victim, signal.SIGKILL)
            out = fut.result(timeout=30)
        finally:
            for pid in stopped:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        assert out.ok and out.result.data == "again", out.message
        # it really ran elsewhere, and only once
        assert wait_for(lambda: not sb.running_pids())
        assert sb.run("std.noop").ok


def test_a_child_killed_after_it_started_is_not_run_again(sandbox, then_works):
    fut = sandbox.submit("std.sleep", {"seconds": 30})
    assert wait_for(lambda: sandbox.started_pids())  # its ready message has arrived
    (pid,) = sandbox.started_pids().values()
    os.kill(pid, signal.SIGKILL)
    out = fut.result(timeout=30)
    assert out.exit_reason == "killed" and out.signal == 9
    assert out.message == "the action's process was killed by SIGKILL"
