"""The operator's configuration and policy on real children: tenants and actions get
their limits, a grant of network works, requests tighten, reloads (in process and on
SIGHUP in a real service process) take effect or keep the previous policy."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from mistral_sandbox import PolicyFileError, Sandbox
from mistral_sandbox.runner.limits import DEFAULT_CEILING
from tests.conftest import FIXTURES

pytestmark = pytest.mark.usefixtures("no_leaks")
ROOT = os.path.dirname(os.path.dirname(FIXTURES))


def tenant(project):
    return {"security": {"project_id": project}, "execution": {}}


def write(path, text):
    path.write_text(text)
    return str(path)


def test_a_tenant_policy_lowers_memory_for_that_tenant_only(tmp_path):
    policy = write(tmp_path / "policy.yaml", "tenants:\n  small: {memory: 128MiB}\n")
    with Sandbox(max_workers=2, extra_path=[FIXTURES], policy_file=policy) as sb:
        held = sb.submit("sample_actions:AllocatesMiB", {"mib": 192}, context=tenant("small"))
        free = sb.submit("sample_actions:AllocatesMiB", {"mib": 192}, context=tenant("big"))
        held, free = held.result(), free.result()
    assert held.exit_reason == "memory_limit", held
    assert held.limits["address_space"] == "128MiB"
    assert held.limit_sources["address_space"] == "tenant small"
    assert free.exit_reason == "ok" and free.result.data == 192 << 20, free
    assert free.limits["address_space"] == "1GiB"
    assert free.limit_sources["address_space"] == "default"


class _Server:
    """A TCP server on 127.0.0.1 that counts the connections it accepted."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


def test_network_granted_by_policy_reaches_a_local_server_and_reload_withdraws_it(tmp_path):
    action = "hostile_actions:ConnectsInet"
    granted = 'actions:\n  "*": {network: false}\n  "%s": {network: true}\n' % action
    path = tmp_path / "policy.yaml"
    server = _Server()
    try:
        with Sandbox(max_workers=2, extra_path=[FIXTURES], ceiling={"network": True},
                     policy_file=write(path, granted)) as sb:
            # prepared children are made for what "*" gets: no network
            assert sb.settings.warm_network is False
            out = sb.run(action, {"port": server.port})
            assert out.exit_reason == "ok" and out.result.data["inet"] == "ok:'connected'", out
            assert out.limit_sources["network"] == "action " + action
            assert server.accepted == 1
            other = sb.run("hostile_actions:ReadsProc")  # any other action: no network
            assert other.limits["network"] is False
            assert other.limit_sources["network"] == "action *"

            write(path, 'actions:\n  "*": {network: false}\n')
            sb.reload_policy()
            out = sb.run(action, {"port": server.port})
            assert out.exit_reason == "ok" and out.result.data["inet"] == "denied:EPERM", out
            assert out.limit_sources["network"] == "action *"

            write(path, 'actions:\n  "*": {network: flase}\n')
            with pytest.raises(PolicyFileError, match="network: expected true or false, "
                                                      "got 'flase'"):
                sb.reload_policy()
            out = sb.run(action, {"port": server.port})  # the previous policy stays
            assert out.result.data["inet"] == "denied:EPERM"
            assert out.limit_sources["network"] == "action *"
    finally:
        server.close()
    assert server.accepted == 1


def test_a_workflow_asks_for_tighter_limits_in_its_input(tmp_path):
    with Sandbox(max_workers=1, warm=1) as sb:
        out = sb.run("std.sleep", {"seconds": 30, "sandbox_limits": {"timeout": "300ms"}})
        assert out.exit_reason == "timeout"
        assert out.limits["wall_time"] == "300ms"
        assert out.limit_sources["wall_time"] == "request"
        # the action never sees the parameter (std.echo takes `output` only)
        out = sb.run("std.echo", {"output": "hi", "sandbox_limits": {"memory": "512MiB"}})
        assert out.ok and out.result.data == "hi"
        assert out.limits["address_space"] == "512MiB"
        # more than the policy allows is clamped like any request, and noted
        out = sb.run("std.echo", {"output": "hi", "sandbox_limits": {"timeout": "1h"}})
        assert out.ok and out.limits["wall_time"] == "120s"
        assert out.notes == ["wall_time: requested 3600s, clamped to 120s (default)"]
        # the caller's request and the input's: both apply
        out = sb.run("std.echo", {"output": "hi", "sandbox_limits": {"timeout": "5s"}},
                     limits={"timeout": "2s", "memory": "256MiB"})
        assert out.limits["wall_time"] == "2s" and out.limits["address_space"] == "256MiB"
        for bad, message in (
                ({"memory": "12XB"}, "parameter 'sandbox_limits': limit 'memory': expected "
                                     "a size like 256MiB, 512K or 1GB, got '12XB'"),
                ("fast", "parameter 'sandbox_limits': expected a mapping of limit names "
                         "to values, got str")):
            out = sb.run("std.echo", {"output": "hi", "sandbox_limits": bad})
            assert out.exit_reason == "load_error" and out.message == message


def test_from_config_builds_the_sandbox_the_file_describes(tmp_path):
    from mistral_sandbox import config
    policy = write(tmp_path / "policy.yaml", 'tenants:\n  "*": {cpu_time: 7s}\n')
    conf = config.load([write(tmp_path / "sandbox.conf", """
[sandbox]
max_workers = 3
warm = 1
wall_time = 9s
extra_path = %s
policy_file = %s
""" % (FIXTURES, policy))])
    with Sandbox.from_config(conf) as sb:
        assert (sb.max_workers, sb.warm) == (3, 1)
        out = sb.run("escape_actions:ReportsLimits")
    assert out.ok, out
    assert out.limits["wall_time"] == "9s" and out.limit_sources["wall_time"] == "ceiling"
    assert out.limits["cpu_time"] == "7s" and out.limit_sources["cpu_time"] == "tenant *"
    assert out.result.data["cpu"][0] in (7, 8)  # (whole seconds, rounded up)


def test_an_invalid_policy_refuses_to_start(tmp_path):
    policy = write(tmp_path / "policy.yaml", "tenants:\n  p: {memroy: 1GiB}\n")
    with pytest.raises(PolicyFileError) as err:
        Sandbox(policy_file=policy)
    assert str(err.value) == "%s: tenants: p: memroy: unknown key (did you mean " \
                             "'memory'?)" % policy


def _read_until(proc, prefix):
    """Lines of ``proc``'s stdout up to the first that starts with ``prefix`` (the
    process prints it when the awaited event happened; EOF fails the test)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return line, seen
    raise AssertionError("process ended before %r; output: %s" % (prefix, "".join(seen)))


def test_sighup_reloads_the_policy_of_a_running_service(tmp_path):
    path = tmp_path / "policy.yaml"
    write(path, 'tenants:\n  "*": {memory: 256MiB}\n')
    conf = write(tmp_path / "sandbox.conf", "[sandbox]\nmax_workers = 1\npolicy_file = %s\n"
                 % path)
    proc = subprocess.Popen([sys.executable, os.path.join(FIXTURES, "policy_reloader.py"),
                             conf], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        _read_until(proc, "READY")

        def ask():
            proc.stdin.write("p1 std.noop\n")
            proc.stdin.flush()
            return json.loads(_read_until(proc, "{")[0])
        before = ask()
        assert before["limits"]["address_space"] == "256MiB"
        assert before["sources"]["address_space"] == "tenant *"

        write(path, 'tenants:\n  "*": {memory: 256MiB}\n  p1: {memory: 128MiB}\n')
        proc.send_signal(signal.SIGHUP)
        _read_until(proc, "LOG INFO policy reloaded from %s" % path)
        after = ask()
        assert after["limits"]["address_space"] == "128MiB"
        assert after["sources"]["address_space"] == "tenant p1"

        write(path, "tenants:\n  p1: {memory: 12XB}\n")
        proc.send_signal(signal.SIGHUP)
        line, _ = _read_until(proc, "LOG ERROR policy not reloaded")
        assert line.strip() == (
            "LOG ERROR policy not reloaded, the previous one stays in force: %s: tenants: "
            "p1: memory: expected a size like 256MiB, 512K or 1GB, got '12XB'" % path)
        kept = ask()
        assert kept["exit_reason"] == "ok" and kept["limits"] == after["limits"]
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        proc.stdout.close()


def test_the_default_sandbox_still_gets_the_default_ceiling():
    with Sandbox(max_workers=1, warm=0) as sb:
        out = sb.run("std.noop")
    assert out.limits == DEFAULT_CEILING.to_dict(human=True)
    assert set(out.limit_sources.values()) == {"default"}
