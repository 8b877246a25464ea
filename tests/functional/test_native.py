"""The native isolation (the optional C helper): the same steps and report as the
Python steps, used only where the zygote found it usable, failing like them."""

import json
import os
import signal
import subprocess
import sys

import pytest

from mistral_sandbox.runner import steps
from mistral_sandbox import Sandbox
from tests.conftest import FIXTURES

ROOT = os.geteuid() == 0


def _run_both(ref, params=None):
    """``ref`` once with native isolation (default) and once with the Python steps:
    {native: (zygote_info["native_isolation"], outcome, result data with the sandbox's
    scratch directory written as "<scratch>")}."""
    out = {}
    for native in (True, False):
        with Sandbox(max_workers=1, extra_path=[FIXTURES], native_isolation=native) as sb:
            o = sb.run(ref, params)
            assert o.exit_reason == "ok", o.message
            data = json.loads(json.dumps(o.result.data).replace(sb.scratch_dir, "<scratch>"))
            o.scratch_view = sb.scratch_view
            out[native] = (sb.zygote_info["native_isolation"], o, data)
    return out


def test_the_helper_is_built_here():
    # the test environment installs with a C compiler: a missing helper is a build bug
    from mistral_sandbox.runner import _native
    assert tuple(_native.STEP_NAMES.split()) == steps.NATIVE_ORDER


@pytest.mark.skipif(not ROOT, reason="the native path is the root configuration's")
def test_native_and_python_steps_give_the_same_report_and_the_same_child(no_leaks):
    runs = _run_both("sample_actions:Whoami")
    (native_state, n, a), (python_state, p, b) = runs[True], runs[False]
    assert native_state == "on" and python_state == "off (disabled)"
    assert n.isolation["applied"] == p.isolation["applied"]
    assert n.isolation["skipped"] == p.isolation["skipped"]
    # the scratch directory, in the minimal view (/var/tmp when the modules lie in /tmp)
    assert a["cwd"] == b["cwd"] == n.scratch_view
    for key in ("cwd", "env", "fds", "pgid_is_pid", "pid", "pgid", "session_leader", "tty",
                "visible_pids"):
        assert a[key] == b[key], key
    assert a["uid"] != 0 and b["uid"] != 0
    # and what the hostile suite checks of namespaces, IPC and the hostname
    ipc = _run_both("hostile_actions:UsesIPC")
    n, p = ipc[True][2], ipc[False][2]
    assert {k: v for k, v in n.items() if k != "ns"} == {k: v for k, v in p.items() if k != "ns"}
    scratch = _run_both("sample_actions:ScratchInfo")
    n, p = scratch[True][2], scratch[False][2]
    assert {k: v for k, v in n.items() if k not in ("uid", "my_uid")} == \
        {k: v for k, v in p.items() if k not in ("uid", "my_uid")}


@pytest.mark.skipif(not ROOT, reason="the native path is the root configuration's")
def test_the_ceilings_rlimits_hold_natively_as_with_the_python_steps(no_leaks):
    """A warm child applies the ceiling's rlimits in the native call; a request's tighter
    limits are applied on receipt, as on the Python path."""
    from mistral_sandbox.runner.limits import DEFAULT_CEILING
    runs = _run_both("sample_actions:Rlimits")
    native, python = runs[True][2], runs[False][2]
    assert native == python
    assert native["RLIMIT_AS"] == [DEFAULT_CEILING.address_space] * 2
    assert native["RLIMIT_NOFILE"] == [DEFAULT_CEILING.number_files] * 2
    assert native["RLIMIT_FSIZE"] == [DEFAULT_CEILING.file_size] * 2
    assert native["RLIMIT_CORE"] == [0, 0]
    assert native["SIGXFSZ"] == int(signal.SIG_IGN)  # EFBIG instead of death
    with Sandbox(max_workers=1, extra_path=[FIXTURES]) as sb:
        out = sb.run("sample_actions:Rlimits", limits={"files": 32, "memory": "512MiB"})
        assert sb.zygote_info["native_isolation"] == "on"
        assert out.result.data["RLIMIT_NOFILE"] == [32, 32]
        assert out.result.data["RLIMIT_AS"] == [512 * 2 ** 20] * 2


@pytest.mark.skipif(not ROOT, reason="the native path is the root configuration's")
@pytest.mark.parametrize("kwargs,why", [
    (dict(isolation={"uts_ns": "off"}), "off (a step is off)"),
    (dict(scratch_size=None), "off (the scratch is a directory)"),
    (dict(share_namespaces=False), "off (namespaces not shared)"),
])
def test_other_configurations_keep_the_python_steps(no_leaks, kwargs, why):
    with Sandbox(max_workers=1, warm=0, **kwargs) as sb:
        assert sb.zygote_info["native_isolation"] == why
        assert sb.run("std.noop").ok


@pytest.mark.skipif(not ROOT, reason="the native path is the root configuration's")
def test_the_cgroup_step_off_keeps_native_isolation(no_leaks):
    """The helper is given no cgroup to join and reports the step as the policy says."""
    with Sandbox(max_workers=1, warm=0, isolation={"cgroup": "off"}) as sb:
        assert sb.zygote_info["native_isolation"] == "on"
        out = sb.run("std.noop")
    assert out.ok
    assert "cgroup" not in out.isolation["applied"]
    assert {"step": "cgroup", "reason": "disabled by policy"} in out.isolation["skipped"]


@pytest.mark.skipif(not ROOT, reason="mounting needs root")
def test_a_failing_native_step_is_named_with_its_reason():
    """In a throwaway process: every step before the mount succeeds (its own namespaces
    joined), the scratch view does not exist: the mount_ns step fails, named, and
    nothing after it ran (still root)."""
    code = r"""
import json, os, socket
from mistral_sandbox.runner import _native, steps
a, b = socket.socketpair()
net = os.open("/proc/self/ns/net", os.O_RDONLY)
ipc = os.open("/proc/self/ns/ipc", os.O_RDONLY)
uts = os.open("/proc/self/ns/uts", os.O_RDONLY)
failed, err, what, costs = _native.prepare(
    channel=b.fileno(), stdout=1, stderr=2, net_ns_fd=net, ipc_ns_fd=ipc, uts_ns_fd=uts,
    mount_ns_fd=-1, cgroup_fds=b"", scratch_view=b"/nonexistent/view",
    tmpfs_options=b"size=1048576", uid=65534,
    seccomp_filter=0, expected_parent=os.getppid(), in_pid_ns=False, rlimits=b"")
print(json.dumps([steps.NATIVE_ORDER[failed], os.strerror(err), what, os.getuid(),
                  sorted(int(f) for f in os.listdir("/proc/self/fd"))[:4]]))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       cwd=os.path.dirname(FIXTURES) + "/..")
    assert p.returncode == 0, p.stderr
    step, reason, what, uid, fds = json.loads(p.stdout)
    assert (step, what, reason) == ("mount_ns", "mount tmpfs", "No such file or directory")
    assert uid == 0 and fds[:4] == [0, 1, 2, 3]  # stopped there: the uid step never ran


@pytest.mark.skipif(not ROOT, reason="mounting needs root")
def test_a_failing_native_rlimit_is_named_as_the_python_step_names_it(tmp_path):
    """In a throwaway process, every native step for real (own namespaces joined, a
    tmpfs on a temporary view, the seccomp filter, uid 65534), then an impossible rlimit
    (soft above hard): the rlimits step fails with the limit's name and value."""
    code = r"""
import dataclasses, json, os, resource, socket, sys
from mistral_sandbox.runner import _native, isolation, linux, seccomp
from mistral_sandbox.runner.child_config import ChildConfig, ChildSpec, NativePlan
view = sys.argv[1]
program = seccomp.Program(seccomp.build(False))
shared = {flag: os.open("/proc/self/ns/" + name, os.O_RDONLY)
          for flag, name in linux.NS_NAMES.items()}
config = ChildConfig(
    zygote_pid=os.getppid(), max_frame=1 << 20, policy={}, ceiling={"number_files": 100},
    ceiling_plan=((resource.RLIMIT_NOFILE, "number_files", 100, 10),), scratch_view=view,
    scratch_tmpfs=1 << 20, seccomp={False: program}, seccomp_unavailable="",
    shared_ns=shared, uid_net_ns={}, views={}, cgroup_fds={}, cgroup_unavailable="not here",
    pid_ns=False,
    native=NativePlan(_native.prepare, view.encode(), b"size=1048576,mode=0700",
                      program.address))
a, b = socket.socketpair()
args = isolation.native_args(config, config.native, (b.fileno(), 1, 2), 65534, warm=True)
args.update(expected_parent=os.getppid(), in_pid_ns=False)  # (not pid 1 of a namespace here)
spec = ChildSpec(None, 65534, "", (b.fileno(), 1, 2), False, args)
report = isolation.Report()
error = isolation.prepare_native(report, config, spec)
print(json.dumps([error.step, error.reason, report.applied, os.getuid(), os.getcwd()]))
"""
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    step, reason, applied, uid, cwd = json.loads(p.stdout)
    assert (step, reason) == ("rlimits", "number_files=100: Invalid argument")
    assert applied == list(steps.NATIVE_ORDER[:-1]) and uid == 65534 and cwd == str(tmp_path)


def test_check_says_whether_children_isolate_natively():
    from mistral_sandbox.runner import check
    result = check.probe()
    text = check.format_human(result)
    assert "native isolation %s" % result["zygote"]["native_isolation"] in text
    if ROOT:
        assert result["zygote"]["native_isolation"] == "on"
        assert "namespaces net one per sandbox uid, ipc shared, uts shared" in text
