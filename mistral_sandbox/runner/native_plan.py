"""Whether children isolate natively (the optional C helper), decided once per zygote.

Only the configuration the helper implements takes that path — root, every step
enabled, the net, ipc and uts namespaces shared, a tmpfs scratch, a seccomp filter,
pid namespaces — and only after one probe child isolated natively came out as the
Python steps make it. Anything else keeps the Python steps; the zygote says which
and why (``zygote_info["native_isolation"]``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Callable, Optional, Tuple

from mistral_sandbox.runner import linux
from mistral_sandbox.runner.child_config import CHANNEL_FD, ChildConfig, NativePlan
from mistral_sandbox.runner.isolation import Report, prepare_native, tmpfs_options
from mistral_sandbox.runner.steps import OFF
from mistral_sandbox.runner.warm_spawner import make_spec

SHARED = frozenset({linux.CLONE_NEWNET, linux.CLONE_NEWIPC, linux.CLONE_NEWUTS})


def load_helper():
    """The C helper module, or the ImportError saying why it is not there."""
    try:
        from mistral_sandbox.runner import _native
    except ImportError as exc:
        return exc
    return _native


def why_not(config: ChildConfig, enabled: bool, root: bool, helper) -> str:
    """"" if the configuration is the one the helper implements, else why not."""
    if not enabled:
        return "disabled"
    if isinstance(helper, ImportError):
        return "not built: %s" % helper
    if not root:
        return "not root"
    # (cgroup off: the helper is given no cgroup to join, and reports the skip)
    if any(level == OFF for step, level in config.policy.items() if step != "cgroup"):
        return "a step is off"
    if set(config.shared_ns) != SHARED:
        return "namespaces not shared"
    if config.scratch_tmpfs is None:
        return "the scratch is a directory"
    if False not in config.seccomp or not config.pid_ns:
        return "no seccomp filter or no pid namespaces"
    return ""


def plan(config: ChildConfig, enabled: bool, root: bool, probe_uid: Optional[int],
         fork_child: Callable) -> Tuple[ChildConfig, str]:
    """``(config, "on")`` with ``config.native`` set, or ``(config, "off (why)")``
    unchanged. ``fork_child(spec, run)`` forks the probe child."""
    helper = load_helper()
    reason = why_not(config, enabled, root, helper)
    if reason:
        return config, "off (%s)" % reason
    native = NativePlan(helper.prepare, config.scratch_view.encode(),
                        tmpfs_options(config.scratch_tmpfs, None),
                        config.seccomp[False].address)
    candidate = dataclasses.replace(config, native=native)
    problem = _probe(candidate, probe_uid, fork_child)
    if problem:
        return config, "off (probe: %s)" % problem
    return candidate, "on"


def _probe(config: ChildConfig, uid: int, fork_child: Callable) -> str:
    """Isolate one child natively, as a prepared child would be; "" if it came out as
    the Python steps make it (checked in the child), else what went wrong."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    stdio = (theirs.fileno(), out_w, err_w)
    spec = make_spec(config, None, uid, "", stdio, False)

    def run(pid_ns):
        report = Report()
        error = prepare_native(report, config, spec)
        if error is None:
            checks = (os.getuid() == uid, os.getpid() == 1, os.getcwd() == config.scratch_view,
                      sorted(int(fd) for fd in os.listdir("/proc/self/fd"))[:4] == [0, 1, 2, 3])
            error = "" if all(checks) else "unexpected state %r" % (checks,)
        os.write(CHANNEL_FD, str(error).encode()[:500] or b"ok")
        os._exit(0)
    try:
        pid, _ = fork_child(spec, run)
    except OSError as exc:
        return "fork: %s" % exc
    finally:
        theirs.close()
        os.close(out_w)
        os.close(err_w)
    try:
        ours.settimeout(10)
        answer = ours.recv(512).decode(errors="replace")
    except OSError as exc:
        answer = "no answer: %s" % exc
    finally:
        ours.close()
        os.close(out_r)
        os.close(err_r)
        os.waitpid(pid, 0)
    return "" if answer == "ok" else answer or "the probe died"
