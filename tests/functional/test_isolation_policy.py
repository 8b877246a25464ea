"""Isolation policy: required steps fail loudly, best-effort steps are reported."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest

from mistral_sandbox.runner.steps import PolicyError, make_policy
from mistral_sandbox.runner.limits import DEFAULT_CEILING
from mistral_sandbox import Sandbox
from tests.conftest import FIXTURES

MISSING_LIB = "/nonexistent/libseccomp.so.2"


def test_required_step_unavailable_fails_with_sandbox_error(no_leaks):
    with Sandbox(max_workers=1, seccomp_library=MISSING_LIB) as sb:
        assert "cannot load libseccomp" in sb.zygote_info["seccomp"]
        out = sb.run("std.echo", {"output": 1})
        assert out.exit_reason == "sandbox_error"
        assert out.message.startswith("isolation step seccomp failed: no filter: cannot load "
                                      "libseccomp (%s)" % MISSING_LIB)
        assert out.result is None
        # steps before it were applied and are reported; nothing after it ran
        assert "no_new_privs" in out.isolation["applied"]
        assert "uid" not in out.isolation["applied"]
        # the sandbox keeps answering, with the same precise error
        assert sb.run("std.noop").exit_reason == "sandbox_error"


def test_best_effort_step_unavailable_is_reported_as_skipped(no_leaks):
    with Sandbox(max_workers=1, seccomp_library=MISSING_LIB,
                 isolation={"seccomp": "best_effort"}) as sb:
        out = sb.run("std.echo", {"output": 1})
        assert out.exit_reason == "ok" and out.result.data == 1
        skipped = {s["step"]: s["reason"] for s in out.isolation["skipped"]}
        assert "cannot load libseccomp" in skipped["seccomp"]


def test_policy_off_disables_a_step(no_leaks):
    with Sandbox(max_workers=1, isolation={"uts_ns": "off"}) as sb:
        out = sb.run("std.noop")
        assert out.ok
        assert {"step": "uts_ns", "reason": "disabled by policy"} in out.isolation["skipped"]
        assert "uts_ns" not in out.isolation["applied"]


def test_malformed_policy_is_refused_precisely():
    with pytest.raises(PolicyError, match="unknown isolation step 'seccmp'"):
        make_policy({"seccmp": "off"})
    with pytest.raises(PolicyError, match="level must be required, best_effort or off"):
        make_policy({"seccomp": "maybe"})
    with pytest.raises(PolicyError, match="unknown isolation step 'net'"):
        Sandbox(isolation={"net": "off"})


def test_network_allowed_by_ceiling_and_request(no_leaks):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    ceiling = dataclasses.replace(DEFAULT_CEILING, network=True)
    try:
        with Sandbox(max_workers=1, ceiling=ceiling, extra_path=[FIXTURES]) as sb:
            denied = sb.run("sample_actions:OpensSocket", {"port": port},
                            limits={"network": False})
            assert denied.exit_reason == "action_error"
            assert denied.message == "PermissionError: [Errno 1] Operation not permitted"
            out = sb.run("sample_actions:OpensSocket", {"port": port})  # ceiling applies
            assert out.exit_reason == "ok", out.message
            assert out.result.data == "connected"
            assert {"step": "net_ns", "reason": "the limits allow network"} in \
                out.isolation["skipped"]
    finally:
        listener.close()


def test_network_request_cannot_exceed_the_ceiling(sandbox, clean):
    out = sandbox.run("std.noop", limits={"network": True})
    assert out.ok
    assert "network: requested true, clamped to false (default)" in out.notes
    assert "net_ns" in out.isolation["applied"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mistral_sandbox"] + list(args),
                          capture_output=True, text=True, timeout=60)


def test_check_reports_every_step():
    p = cli("check", "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    verdicts = {s["step"]: s["verdict"] for s in result["steps"]}
    assert verdicts["seccomp"] == "enforced" and verdicts["rlimits"] == "enforced"
    if os.geteuid() == 0:
        assert verdicts["uid"] == "enforced" and verdicts["user_ns"] == "skipped"
    human = cli("check")
    assert "verdict: every required step is enforced" in human.stdout


def test_check_shows_a_required_step_that_fails():
    p = cli("check", "--json", "--seccomp-library", MISSING_LIB)
    assert p.returncode == 1
    result = json.loads(p.stdout)
    verdicts = {s["step"]: s["verdict"] for s in result["steps"]}
    assert verdicts["seccomp"] == "FAILS"
    assert verdicts["no_new_privs"] == "enforced"
    assert "isolation step seccomp failed" in result["error"]


_FORKER_SCRIPT = r"""
import ctypes, errno, json, os, sys
from mistral_sandbox.runner import linux
if os.geteuid() != 0:
    print(json.dumps({"skip": "not root"})); sys.exit(0)
own = os.readlink("/proc/self/ns/pid_for_children")
native = None
if sys.argv[1].startswith("native"):  # the C helper's fork
    from mistral_sandbox.runner import _native
    native = _native.fork_in_new_pidns
forker = linux.PidNamespaceForker(os.open("/proc/self/ns/pid", os.O_RDONLY), native)
if sys.argv[1] == "fail":  # unshare refused: a plain fork, and why
    def refuse(_flag):
        ctypes.set_errno(errno.EPERM)
        return -1
    forker._unshare = refuse
if sys.argv[1] == "native-fail":  # unprivileged now: the kernel refuses the namespace
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
r, w = os.pipe()
pid, why = forker.fork()
if pid == 0:
    os.write(w, json.dumps({"pid": os.getpid(), "why": why}).encode())
    os._exit(0)
os.close(w)
child = json.loads(os.read(r, 4096))
os.waitpid(pid, 0)
print(json.dumps({"child": child, "why": why, "pid": pid,
                  "back_home": os.readlink("/proc/self/ns/pid_for_children") == own}))
"""


@pytest.mark.parametrize("case", ["ok", "fail", "native-ok", "native-fail"])
def test_pid_namespace_forker(case):
    """The zygote's fork (through ctypes, or the C helper's): the child is pid 1 of a new
    namespace and the zygote is back in its own for the next fork; if the namespace
    cannot be made, a plain fork says why."""
    out = subprocess.run([sys.executable, "-c", _FORKER_SCRIPT, case], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    res = json.loads(out)
    if "skip" in res:
        pytest.skip(res["skip"])  # (the suite runs as root in CI)
    assert res["back_home"] is True and res["pid"] > 1
    if case.endswith("ok"):
        assert res["why"] == "" and res["child"] == {"pid": 1, "why": ""}
    else:
        assert res["why"] == "unshare(pid): %s" % os.strerror(1)
        assert res["child"]["pid"] == res["pid"] and res["child"]["why"] == res["why"]


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox uids exist as root only")
def test_check_fails_when_sandbox_uids_cannot_read_a_module_directory(tmp_path):
    """A module directory that is itself 0700: the view cannot make it readable, and
    check says so (FAILS, exit 1) instead of reporting every required step enforced."""
    from mistral_sandbox.runner import check
    pack = tmp_path / "pack"
    pack.mkdir(mode=0o700)
    result = check.probe(extra_path=[str(pack)])
    assert result["ok"] is False
    assert result["error"].startswith("sandbox uids cannot read %s" % pack)
    assert "ERROR: sandbox uids cannot read" in check.format_human(result)
    assert check.probe()["ok"] is True  # (the installation itself is readable)


def test_the_fds_step_cannot_be_relaxed():
    for level in ("off", "best_effort"):
        with pytest.raises(PolicyError, match="fds is always required"):
            make_policy({"fds": level})
