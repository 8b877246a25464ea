"""What isolation this host can enforce: host probes plus one real probe execution.

:func:`probe` returns plain data; the CLI prints it (``mistral-sandbox check``).
Every step's verdict comes from a real child's isolation report, not from a
guess: ``enforced``, ``skipped`` (best effort, with the kernel's reason),
``disabled`` (policy off) or ``FAILS`` (a required step this host cannot apply:
every execution would end in ``sandbox_error``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Dict, Optional

from mistral_sandbox.runner import steps


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def host_facts(seccomp_library: Optional[str] = None) -> Dict[str, Any]:
    facts: Dict[str, Any] = {
        "kernel": "%s %s" % (os.uname().sysname, os.uname().release),
        "root": os.geteuid() == 0,
        "max_user_namespaces": _read("/proc/sys/user/max_user_namespaces"),
        "unprivileged_userns_clone": _read("/proc/sys/kernel/unprivileged_userns_clone"),
    }
    name = seccomp_library or ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name)

        class _Ver(ctypes.Structure):
            _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint),
                        ("micro", ctypes.c_uint)]
        lib.seccomp_version.restype = ctypes.POINTER(_Ver)
        v = lib.seccomp_version().contents
        facts["libseccomp"] = "%d.%d.%d" % (v.major, v.minor, v.micro)
    except (OSError, AttributeError) as exc:
        facts["libseccomp"] = None
        facts["libseccomp_error"] = str(exc)
    cgroups = []
    mounts = _read("/proc/self/mounts") or ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[2] in ("cgroup", "cgroup2"):
            cgroups.append("%s %s" % (parts[2], parts[1]))
    facts["cgroups"] = cgroups
    return facts


def probe(isolation_policy=None, seccomp_library: Optional[str] = None,
          extra_path=()) -> Dict[str, Any]:
    """Host facts + per-step verdicts from one real sandboxed ``std.noop``; an error
    when a required step fails, or when sandbox uids cannot read a module directory
    (the Python installation, ``extra_path``) even in the view they get."""
    from mistral_sandbox.sandbox import Sandbox, SandboxError

    policy = steps.make_policy(isolation_policy)
    result: Dict[str, Any] = {"host": host_facts(seccomp_library), "policy": policy}
    try:
        with Sandbox(max_workers=1, isolation=isolation_policy, warm=0, wait_exit=True,
                     seccomp_library=seccomp_library, extra_path=extra_path) as sb:
            result["zygote"] = {k: v for k, v in sb.zygote_info.items() if k != "op"}
            outcome = sb.run("std.noop", limits={"timeout": "10s"})
    except SandboxError as exc:
        result["error"] = str(exc)
        result["steps"] = []
        return result
    report = outcome.isolation
    applied = set(report.get("applied", ()))
    skipped = {s["step"]: s["reason"] for s in report.get("skipped", ())}
    failed_step = None
    if outcome.exit_reason == "sandbox_error":
        result["error"] = outcome.message
        for step in steps.NAMES:
            if "isolation step %s failed" % step in outcome.message:
                failed_step = step
    verdicts = []
    for step in steps.STEPS:
        level = policy[step.name]
        if step.name == failed_step:
            verdict, why = "FAILS", outcome.message
        elif step.name in applied:
            verdict, why = "enforced", ""
        elif level == steps.OFF:
            verdict, why = "disabled", "policy: off"
        elif step.name in skipped:
            verdict, why = "skipped", skipped[step.name]
        else:
            verdict, why = "unknown", "not reached (an earlier required step failed)"
        verdicts.append({"step": step.name, "policy": level, "verdict": verdict,
                         "reason": why, "what": step.what,
                         "cost_us": report.get("cost_us", {}).get(step.name)})
    result["steps"] = verdicts
    unreadable = result["zygote"].get("unreadable_paths")
    if unreadable and not result.get("error"):
        result["error"] = ("sandbox uids cannot read %s: actions can import from there only "
                           "what the zygote preloaded (give the directories o+rx)"
                           % ", ".join(unreadable))
    result["ok"] = outcome.exit_reason == "ok" and not result.get("error")
    return result


def _cgroup_use(state: Optional[str]) -> str:
    """The zygote's cgroup state ("v1", "v2" or why not) for people."""
    if state in ("v1", "v2"):
        return "a cgroup per execution (%s: memory, processes, CPU of the whole tree)" % state
    return "not used (%s)" % (state or "no probe child")


def format_human(result: Dict[str, Any]) -> str:
    host = result["host"]
    lines = ["host: %s, running as %s, libseccomp %s, user namespaces max %s" % (
        host["kernel"], "root" if host["root"] else "uid %d" % os.geteuid(),
        host.get("libseccomp") or "MISSING", host.get("max_user_namespaces"))]
    z = result.get("zygote", {})
    lines.append("cgroups: %s; mounted: %s" % (
        _cgroup_use(z.get("cgroups")), ", ".join(host.get("cgroups") or ()) or "none"))
    if z:
        lines.append("children: namespaces %s; native isolation %s" % (
            ", ".join("%s %s" % kv for kv in z.get("namespaces", {}).items()) or "per child",
            z.get("native_isolation", "?")))
        lines.append("file system view: %s; scratch at %s"
                     % (z.get("view", "?"), z.get("scratch_view", "?")))
    for s in result["steps"]:
        cost = " (%d µs)" % s["cost_us"] if s.get("cost_us") is not None else ""
        line = "%-9s %-13s [%s] %s%s" % (s["verdict"], s["step"], s["policy"], s["what"], cost)
        if s["reason"] and s["verdict"] != "enforced":
            line += "\n          -> %s" % s["reason"]
        lines.append(line)
    if result.get("error"):
        lines.append("ERROR: %s" % result["error"])
    else:
        lines.append("verdict: every required step is enforced on this host")
    return "\n".join(lines)
