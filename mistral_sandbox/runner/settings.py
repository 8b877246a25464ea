"""Everything an operator can set on a sandbox, validated once: :class:`SandboxSettings`.

``Sandbox(**options)`` builds one; so will the operator configuration. Every value
is checked here, before anything is started, and a bad one raises ``ValueError``
(``LimitError`` for sizes, ``PolicyError`` for the isolation policy) naming it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from typing import Any, Mapping, Optional, Tuple

from mistral_sandbox.runner import protocol
from mistral_sandbox.runner.limits import DEFAULT_CEILING, LimitError, Limits, parse_size
from mistral_sandbox.runner.steps import make_policy

# Operator-trusted modules the zygote imports once: children start with them loaded.
# Each one makes every fork and exit a little dearer (more page tables to copy and tear
# down), so only what the runner and the std actions need; add more with ``preload``.
DEFAULT_PRELOAD = ("mistral_sandbox.runner.child", "mistral_sandbox.actions.std",
                   "json", "re", "datetime", "base64", "traceback")
DEFAULT_UID_START = 1_500_000_000
DEFAULT_UID_COUNT = 65536
DEFAULT_WARM = 4
DEFAULT_MAX_QUEUE = 10000
# what an execution may write in its scratch directory in all: as much as one file may
# hold under the default ceiling
DEFAULT_SCRATCH_SIZE = DEFAULT_CEILING.file_size
MIN_SCRATCH_SIZE = 64 * 1024


def default_uid_lock_dir() -> str:
    if os.access("/run", os.W_OK):
        return "/run/mistral-sandbox/uids"
    return os.path.join(tempfile.gettempdir(), "mistral-sandbox-uids")


@dataclasses.dataclass(frozen=True)
class SandboxSettings:
    """A sandbox's configuration (read-only once built).

    ``max_workers``: executions running at once. ``ceiling``: the operator's
    :class:`Limits` (per-call limits can only tighten it; a mapping of limit names to
    values changes those fields of the default ceiling). ``warm``: children kept
    forked and isolated ahead of time (default ``min(max_workers, 4)``; 0 forks every
    child on request). ``max_queue``: executions waiting beyond which ``submit``
    raises ``Overloaded``. ``wait_exit``: deliver an outcome only once its process was
    reaped (exit status and kernel-measured usage) instead of as soon as it replied.
    ``isolation``: step -> level overrides of the default policy (stored as the whole
    policy). ``seccomp_library``: the libseccomp to load (default: the system's).
    ``scratch_size``: bytes (or ``"64MiB"``) an execution may write in its private
    tmpfs; None makes the scratch a directory under ``scratch_root`` (default: a new
    temporary directory). ``share_namespaces``: children without network join one
    net, ipc and uts namespace the zygote made. ``native_isolation``: let children
    isolate through the C helper where it applies. ``preload``: operator-trusted
    modules the zygote imports (after :data:`DEFAULT_PRELOAD`); ``extra_path``:
    operator-trusted directories on the children's module path. ``uid_start``,
    ``uid_count``, ``uid_lock_dir``: the range of sandbox uids (as root) and where
    their claims are locked. ``max_frame``: largest protocol frame. ``python``: the
    interpreter that runs the zygote. ``policy_file``: the operator's limits policy
    (YAML, :mod:`~mistral_sandbox.runner.limits_policy`). ``warm_network``: the network
    setting prepared children are made for (default: the ceiling's; a ``Sandbox`` with a
    policy file uses what its policy gives an action no specific entry names).
    """

    max_workers: int = 4
    ceiling: Limits = DEFAULT_CEILING
    warm: Optional[int] = None
    max_queue: int = DEFAULT_MAX_QUEUE
    wait_exit: bool = False
    isolation: Optional[Mapping[str, str]] = None
    seccomp_library: Optional[str] = None
    scratch_size: Optional[Any] = DEFAULT_SCRATCH_SIZE
    scratch_root: Optional[str] = None
    share_namespaces: bool = True
    native_isolation: bool = True
    preload: Tuple[str, ...] = ()
    extra_path: Tuple[str, ...] = ()
    uid_start: int = DEFAULT_UID_START
    uid_count: int = DEFAULT_UID_COUNT
    uid_lock_dir: Optional[str] = None
    max_frame: int = protocol.DEFAULT_MAX_FRAME
    python: str = sys.executable
    policy_file: Optional[str] = None
    warm_network: Optional[bool] = None

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)
        _at_least(self.max_workers, 1, "max_workers")
        put("isolation", make_policy(self.isolation))  # PolicyError names a bad entry
        put("warm", min(self.max_workers, DEFAULT_WARM) if self.warm is None else self.warm)
        _at_least(self.warm, 0, "warm")
        _at_least(self.max_queue, 1, "max_queue")
        _at_least(self.uid_start, 1, "uid_start")
        _at_least(self.uid_count, 1, "uid_count")
        _at_least(self.max_frame, 1024, "max_frame")
        if self.ceiling is None:
            put("ceiling", DEFAULT_CEILING)
        elif not isinstance(self.ceiling, Limits):  # a mapping: over the default ceiling
            put("ceiling", dataclasses.replace(DEFAULT_CEILING,
                                               **Limits.parse(self.ceiling).to_dict()))
        if self.scratch_size is not None:
            size = parse_size(self.scratch_size, "scratch_size")
            if size < MIN_SCRATCH_SIZE:
                raise LimitError("scratch_size: at least %d bytes (or None for a directory "
                                 "on the scratch root's file system), got %d"
                                 % (MIN_SCRATCH_SIZE, size))
            put("scratch_size", size)
        put("preload", tuple(self.preload))
        put("extra_path", tuple(os.path.abspath(p) for p in self.extra_path))
        put("uid_lock_dir", self.uid_lock_dir or default_uid_lock_dir())
        if self.policy_file is not None:
            put("policy_file", os.path.abspath(self.policy_file))  # reloads survive a chdir
        if self.warm_network is not None:
            put("warm_network", bool(self.warm_network) and bool(self.ceiling.network))

    @property
    def nested_depth_cap(self) -> int:
        """How deep nested calls may go under this ceiling."""
        from mistral_sandbox.runner.nested import MAX_DEPTH
        depth = self.ceiling.nested_depth
        if not self.ceiling.nested_calls and self.ceiling.nested_calls is not None:
            return 0
        return MAX_DEPTH if depth is None else min(depth, MAX_DEPTH)

    @property
    def policy(self) -> Mapping[str, str]:
        """The whole isolation policy (step -> level)."""
        return self.isolation

    def zygote_settings(self, scratch_root: str, ctl_fd: int) -> dict:
        """What the zygote is started with (JSON-serializable)."""
        return {
            "max_frame": self.max_frame,
            "preload": list(DEFAULT_PRELOAD) + list(self.preload),
            "uid_start": self.uid_start,
            "uid_count": self.uid_count,
            "uid_lock_dir": self.uid_lock_dir,
            # sandbox uids claimed: nested calls run beside their callers, as deep as the
            # ceiling lets them go (see runner/nested.py)
            "pool": self.max_workers * (1 + self.nested_depth_cap) + self.warm + 1,
            "warm": self.warm,
            "warm_network": bool(self.ceiling.network if self.warm_network is None
                                 else self.warm_network),
            "extra_path": list(self.extra_path),
            "policy": dict(self.isolation),
            "seccomp_library": self.seccomp_library,
            "ceiling": self.ceiling.to_dict(),
            "scratch_size": self.scratch_size,
            "share_namespaces": bool(self.share_namespaces),
            "native_isolation": bool(self.native_isolation),
            "scratch_root": scratch_root,
            "own_root": self.scratch_root is None,  # (a temporary root made for us)
            "ctl_fd": ctl_fd,
        }


def _at_least(value: Any, low: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError("%s must be an integer >= %d, got %r" % (name, low, value))
