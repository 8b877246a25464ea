"""The isolation steps, declared once: order, default policy, what each guarantees.

Everything else is derived from :data:`STEPS`: the order in which a child applies
them (:func:`mistral_sandbox.runner.isolation.prepare`), the default policy, the
steps the optional C helper applies (:data:`NATIVE_ORDER`, checked against the
helper's own list), the lines of ``mistral-sandbox check`` and the step table of
``docs/isolation.md`` (:func:`markdown_table`, ``python -m
mistral_sandbox.runner.steps``).

A step's policy is ``required`` (if it cannot be applied the execution ends in
``sandbox_error`` naming it: never a silent downgrade), ``best_effort`` (skipped
with the kernel's reason, recorded in the isolation report) or ``off``.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Dict, Optional, Tuple

REQUIRED, BEST_EFFORT, OFF = "required", "best_effort", "off"
LEVELS = (REQUIRED, BEST_EFFORT, OFF)


@dataclasses.dataclass(frozen=True)
class Step:
    """One isolation step. ``native``: the C helper applies it (in this order)."""

    name: str
    default: str
    what: str
    native: bool


STEPS: Tuple[Step, ...] = (
    Step("fds", REQUIRED, "only stdin (/dev/null), stdout/stderr (capture pipes) and the "
         "channel (fd 3) are open", native=True),
    Step("cgroup", BEST_EFFORT, "a cgroup of its own: memory (swap off), process count and "
         "CPU time hold for the whole process tree, not per process", native=True),
    Step("session", REQUIRED, "own process group in the zygote's terminal-less session "
         "(the group is killed at the end)", native=True),
    Step("environment", REQUIRED, "environment replaced by PATH, HOME, TMPDIR, LANG, LC_ALL "
         "(nothing of the executor's)", native=False),
    Step("user_ns", BEST_EFFORT, "user namespace (not root only): root inside it, no "
         "capability outside", native=False),
    Step("pid_ns", BEST_EFFORT, "pid namespace, the action as its pid 1: it sees only its "
         "own processes, and all of them die with it", native=False),
    Step("net_ns", BEST_EFFORT, "network namespace without network: no interface but a down "
         "loopback (the zygote's shared one as root, else its own)", native=True),
    Step("mount_ns", BEST_EFFORT, "mount namespace: a minimal read-only view (the Python "
         "installation, shared libraries, a few devices; no /etc, no ptys), a private /proc, "
         "only the scratch directory writable (not root: the host read-only)", native=True),
    Step("scratch", REQUIRED, "private scratch directory as cwd, HOME and TMPDIR (a tmpfs "
         "of scratch_size bytes, else a directory removed afterwards)", native=False),
    Step("ipc_ns", BEST_EFFORT, "IPC namespace: none of the host's IPC objects (the "
         "zygote's shared one, where seccomp refuses every IPC call, or its own)", native=True),
    Step("uts_ns", BEST_EFFORT, "UTS namespace: hostname 'sandbox' (shared or its own)",
         native=True),
    Step("no_new_privs", REQUIRED, "PR_SET_NO_NEW_PRIVS: setuid binaries grant nothing",
         native=True),
    Step("seccomp", REQUIRED, "seccomp filter: ptrace, mount, bpf, kexec, keyctl, perf, "
         "unshare, setns, SysV IPC, message queues, io_uring, file watches refused; without "
         "network no "
         "socket, bind or connect (unix stream pairs only)", native=True),
    Step("uid", REQUIRED, "unprivileged uid of its own (root); not root: no capability held "
         "(dropped in its user namespace)", native=True),
    Step("pdeathsig", REQUIRED, "SIGKILL if the zygote dies", native=True),
    Step("rlimits", REQUIRED, "kernel rlimits: address space, CPU, files, processes, file "
         "size, core (a prepared child applies the ceiling's ahead, the request's on "
         "arrival)", native=True),
)

NAMES: Tuple[str, ...] = tuple(s.name for s in STEPS)
BY_NAME: Dict[str, Step] = {s.name: s for s in STEPS}
DEFAULT_POLICY: Dict[str, str] = {s.name: s.default for s in STEPS}
# the steps the C helper applies, in its order (its STEP_NAMES must say the same)
NATIVE_ORDER: Tuple[str, ...] = tuple(s.name for s in STEPS if s.native)


class PolicyError(ValueError):
    """An isolation policy names an unknown step or level."""


def make_policy(overrides: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """:data:`DEFAULT_POLICY` updated with ``overrides`` (step -> level); raises
    :class:`PolicyError` naming the bad entry."""
    policy = dict(DEFAULT_POLICY)
    for step, level in (overrides or {}).items():
        if step not in BY_NAME:
            raise PolicyError("unknown isolation step %r (steps: %s)" % (step, ", ".join(NAMES)))
        if level not in LEVELS:
            raise PolicyError("isolation step %s: level must be required, best_effort or off, "
                              "got %r" % (step, level))
        if step == "fds" and level != REQUIRED:  # it sets up the channel itself
            raise PolicyError("isolation step fds is always required: a child without it "
                              "has no channel to receive its request on")
        policy[step] = level
    return policy


def markdown_table() -> str:
    """The step table of ``docs/isolation.md``."""
    rows = ["| # | step | default | what it guarantees | native |",
            "|---|---|---|---|---|"]
    for i, s in enumerate(STEPS, 1):
        native = "yes" if s.native else "—"
        rows.append("| %d | `%s` | %s | %s | %s |" % (i, s.name, s.default, s.what, native))
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
