"""The installed ``mistral-sandbox`` command, run as a user would."""

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

import psutil
import pytest

from tests.conftest import session_tmp, traversable_by_others

# each run's sandbox (its zygote, children, scratch root in TMPDIR) must be gone after it
pytestmark = pytest.mark.usefixtures("no_leaks")


def cli(*args, timeout=60):
    exe = shutil.which("mistral-sandbox", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "mistral_sandbox"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


def test_run_echo_human():
    p = cli("run", "std.echo", "--param", "output=hello")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("outcome: ok\nresult: \"hello\"\n")


def test_run_json_outcome():
    p = cli("run", "std.echo", "--params-json", '{"output": {"a": 1}}', "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["exit_reason"] == "ok"
    assert out["result"] == {"data": {"a": 1}, "error": None, "cancel": False}
    for key in ("usage", "stdout", "stderr", "limits", "isolation"):
        assert key in out


def test_run_failure_exit_code_and_reason():
    p = cli("run", "std.sleep", "--param", "seconds=5", "--limit", "timeout=300ms", "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout)["exit_reason"] == "timeout"
    p = cli("run", "std.fail", "--param", 'error_data="boom"')
    assert p.returncode == 1 and 'error result: "boom"' in p.stdout


def test_bad_limit_is_a_usage_error():
    p = cli("run", "std.echo", "--param", "output=1", "--limit", "memory=lots")
    assert p.returncode == 2
    assert "limit 'memory': expected a size like 256MiB" in p.stderr
    assert "'lots'" in p.stderr


def test_unknown_action_is_bad_input_and_points_at_list():
    for command in (("run", "std.ehco", "--json"), ("show", "std.ehco")):
        p = cli(*command)
        assert p.returncode == 2, (command, p.stdout, p.stderr)
        assert p.stdout == ""
        assert "unknown action 'std.ehco'" in p.stderr and "did you mean std.echo" in p.stderr
        assert "mistral-sandbox list" in p.stderr


@pytest.mark.parametrize("context,expected", [
    ("{not json", "--context-json: invalid JSON"),
    ('{"secutiry": {}}', "--context-json: unknown action context field(s): secutiry"),
    ('{"security": {"tokn": "x"}}', "--context-json: unknown security context field(s): tokn"),
    ('["a"]', "--context-json: expected a JSON object"),
])
def test_bad_context_is_bad_input(context, expected):
    p = cli("run", "std.noop", "--context-json", context)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert expected in p.stderr and p.stdout == ""


def test_list_and_show():
    p = cli("list", "--json")
    assert p.returncode == 0
    names = {(e["name"], e["namespace"]) for e in json.loads(p.stdout)}
    assert ("std.echo", "mistral_sandbox.actions") in names
    p = cli("list")
    assert "std.noop" in p.stdout
    p = cli("show", "std.fail")
    assert p.returncode == 0, p.stderr
    assert "std.fail(error_data=None)" in p.stdout and "param error_data (default None)" in p.stdout
    p = cli("show", "nope.nope")
    assert p.returncode == 2 and "unknown action" in p.stderr


def running_as_a_sandbox_uid(kids):
    try:
        return any(k.uids().real != 0 for k in kids)
    except psutil.NoSuchProcess:
        return False


def test_sigterm_kills_the_child_and_cleans_up():
    exe = shutil.which("mistral-sandbox", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "mistral_sandbox"]
    proc = subprocess.Popen(cmd + ["run", "std.sleep", "--param", "seconds=60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    # wait until the execution's child exists (the zygote's child; as root, once it
    # runs as its sandbox uid)
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children(recursive=True)
        if len(kids) >= 2 and (os.geteuid() != 0 or running_as_a_sandbox_uid(kids)):
            break
        time.sleep(0.02)
    assert len(kids) >= 2, "the CLI never started its child"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert err == "mistral-sandbox: interrupted\n"
    assert [k.pid for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE] == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"),
                    reason="needs root to switch to an unprivileged user")
def test_runs_as_an_unprivileged_user():
    """Not root: a user namespace instead of a sandbox uid, every capability dropped."""
    exe = shutil.which("mistral-sandbox", path=os.path.dirname(sys.executable))
    # its own temp dir (the session's is root's): whatever it leaves there is seen
    home = tempfile.mkdtemp(prefix="nobody-", dir=session_tmp())
    nobody = pwd.getpwnam("nobody")
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    paths = sysconfig.get_paths()
    try:
        with traversable_by_others(sys.executable, paths["stdlib"], paths["purelib"],
                                   exe):
            p = subprocess.run(["runuser", "-u", "nobody", "--", "env", "TMPDIR=" + home,
                                exe, "run", "std.echo", "--param", "output=hi", "--json"],
                               capture_output=True, text=True, timeout=60, cwd=home)
        assert os.listdir(home) == []
    finally:
        shutil.rmtree(home)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["result"]["data"] == "hi"
    applied = out["isolation"]["applied"]
    for step in ("user_ns", "net_ns", "mount_ns", "seccomp", "uid", "no_new_privs"):
        assert step in applied
    skipped = {s["step"]: s["reason"] for s in out["isolation"]["skipped"]}
    assert "Operation not permitted" in skipped["pid_ns"]


def test_limits_shows_effective_values_and_their_sources(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text('tenants:\n  "*": {memory: 256MiB}\n  p1: {cpu: 5s}\n'
                      'actions:\n  "std.*": {timeout: 10s}\n  "nope.*": {timeout: 1s}\n')
    conf = tmp_path / "sandbox.conf"
    conf.write_text("[sandbox]\nwall_time = 30s\nfile_size = 1MiB\npolicy_file = %s\n" % policy)
    p = cli("limits", "--config-file", str(conf), "--project", "p1", "--action", "std.echo",
            "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["limits"]["address_space"] == "256MiB"
    assert out["sources"]["address_space"] == "tenant *"
    assert (out["limits"]["cpu_time"], out["sources"]["cpu_time"]) == ("5s", "tenant p1")
    assert (out["limits"]["wall_time"], out["sources"]["wall_time"]) == ("10s", "action std.*")
    assert (out["limits"]["file_size"], out["sources"]["file_size"]) == ("1MiB", "ceiling")
    assert (out["limits"]["stack_size"], out["sources"]["stack_size"]) == (None, "default")
    assert out["warnings"] == ["%s: actions: nope.*: matches no installed action" % policy]
    human = cli("limits", "--config-file", str(conf), "--project", "p1")
    assert human.returncode == 0
    assert "  wall_time          30s        ceiling\n" in human.stdout
    assert "warning: %s: actions: nope.*: matches no installed action" % policy in human.stderr


def test_limits_and_run_refuse_a_bad_configuration_with_exit_2(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("tenants:\n  p1: {memory: 12XB}\n")
    for command in (["limits"], ["run", "std.noop"]):
        p = cli(*command, "--policy-file", str(policy))
        assert p.returncode == 2
        assert p.stderr == "mistral-sandbox: %s: tenants: p1: memory: expected a size like " \
                           "256MiB, 512K or 1GB, got '12XB'\n" % policy
    conf = tmp_path / "sandbox.conf"
    conf.write_text("[sandbox]\ncpu_time = forever\n")
    p = cli("run", "std.noop", "--config-file", str(conf))
    assert p.returncode == 2
    assert p.stderr == "mistral-sandbox: configuration (%s): [sandbox] cpu_time: expected a " \
                       "duration like 2s, 500ms or 1.5m, got 'forever'\n" % conf
    p = cli("limits", "--config-file", str(tmp_path / "missing.conf"))
    assert p.returncode == 2 and "missing.conf" in p.stderr


def test_run_takes_its_limits_from_the_configuration(tmp_path):
    conf = tmp_path / "sandbox.conf"
    conf.write_text("[sandbox]\nwall_time = 300ms\n")
    p = cli("run", "std.sleep", "--param", "seconds=30", "--config-file", str(conf), "--json")
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["exit_reason"] == "timeout"
    assert (out["limits"]["wall_time"], out["limit_sources"]["wall_time"]) == ("300ms",
                                                                               "ceiling")


def test_serve_without_mistral_says_what_to_install(tmp_path):
    fake = tmp_path / "mistral"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named mistral (test)')\n")
    exe = shutil.which("mistral-sandbox", path=os.path.dirname(sys.executable))
    p = subprocess.run([exe, "serve"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert p.returncode == 2
    assert p.stderr.startswith("mistral-sandbox: the executor service needs Mistral (pip "
                               "install 'mistral-sandbox[mistral]'): ")


def test_the_readme_examples_run():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "README.md")) as f:
        commands = [line.split() for line in f.read().splitlines()
                    if line.strip().startswith("mistral-sandbox run --source examples/")]
    assert len(commands) == 2
    exe = shutil.which("mistral-sandbox", path=os.path.dirname(sys.executable))
    for argv in commands:
        p = subprocess.run([exe] + argv[1:], capture_output=True, text=True, timeout=60,
                           cwd=root)
        assert p.returncode == 0 and p.stdout.startswith("outcome: ok"), \
            (argv, p.stdout, p.stderr)


def test_serve_names_a_bad_configuration(tmp_path):
    exe = shutil.which("mistral-sandbox", path=os.path.dirname(sys.executable))
    p = subprocess.run([exe, "serve", "--config-file", str(tmp_path / "missing.conf")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr == "mistral-sandbox: configuration: Failed to find some config files: " \
                       "%s\n" % (tmp_path / "missing.conf")
    conf = tmp_path / "bad.conf"
    conf.write_text("[sandbox]\nmemory_locked = lots\n")
    p = subprocess.run([exe, "serve", "--config-file", str(conf)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr == "mistral-sandbox: configuration: [sandbox] memory_locked: expected a " \
                       "size like 256MiB, 512K or 1GB, got 'lots'\n"
