"""What a child is told before it is forked: one frozen object per zygote, one per child.

The zygote builds :class:`ChildConfig` once, before it forks any child; every child
inherits it through ``fork`` and only reads it. (Its mappings are plain dicts, not
read-only proxies: a child reads them on its way to the action, where every extra
object touched costs a copy-on-write fault; nothing writes them.) :class:`ChildSpec`
is what differs between two children (uid, scratch path, fds, network), also built
before the fork. Nothing reaches a child through module globals.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

CHANNEL_FD = 3


@dataclasses.dataclass(frozen=True)
class NativePlan:
    """The C helper's part of every child's arguments, when the zygote found it usable:
    its ``prepare``, the scratch view, the tmpfs options (without the owner) and the
    address of the no-network seccomp filter."""

    prepare: Callable[..., Any]
    scratch_view: bytes
    tmpfs_options: bytes
    seccomp_filter: int


@dataclasses.dataclass(frozen=True)
class ChildConfig:
    """Configuration shared by every child of one zygote (read-only after the fork).

    ``policy``: isolation step -> level. ``ceiling``: the operator's limits
    (``Limits.to_dict()``); ``ceiling_plan``: their rlimits
    (:func:`~mistral_sandbox.runner.isolation.rlimit_plan`). ``scratch_view``: where a
    child with its own mount namespace sees its scratch directory (also HOME and
    TMPDIR); ``scratch_tmpfs``: its size in bytes, None for a directory on the host.
    ``seccomp``: network allowed -> compiled filter (empty when unavailable, with
    ``seccomp_unavailable`` saying why). ``shared_ns``: CLONE_NEW* flag -> fd of the
    namespace children join; ``uid_net_ns``: sandbox uid -> fd of the network namespace
    a child without network joins instead of the shared one (one per uid, so two
    executions never share one: ``/proc/net`` lists a namespace's sockets).
    ``views``: network allowed -> fd of the template mount namespace a child copies
    (:mod:`.view`; empty: children see the host read-only).
    ``cgroup_fds``: sandbox uid -> the ``cgroup.procs`` files of its cgroups, open for
    writing (:mod:`.cgroups`; empty, with ``cgroup_unavailable`` saying why).
    ``pid_ns``: children are forked into pid namespaces of their own. ``native``: set
    when children isolate through the C helper. ``unreadable_paths``: module
    directories a sandbox uid cannot read in what it sees (for hints). ``warm_network``:
    the network setting prepared children are made for.
    """

    zygote_pid: int
    max_frame: int
    policy: Mapping[str, str]
    ceiling: Mapping[str, Any]
    ceiling_plan: Tuple[Tuple[int, str, int, int], ...]
    scratch_view: str
    scratch_tmpfs: Optional[int]
    seccomp: Mapping[bool, Any]
    seccomp_unavailable: str
    shared_ns: Mapping[int, int]
    uid_net_ns: Mapping[int, int]
    views: Mapping[bool, int]
    cgroup_fds: Mapping[int, Tuple[int, ...]]
    cgroup_unavailable: str
    pid_ns: bool
    native: Optional[NativePlan] = None
    unreadable_paths: Tuple[str, ...] = ()
    warm_network: bool = False


class ChildSpec(NamedTuple):
    """One child: ``exec_id`` (None for a child prepared ahead, which takes the id from
    its request), its sandbox ``uid`` (None when not root), its ``scratch`` directory on the
    host, the zygote's numbers of its ``stdio`` fds (channel, stdout, stderr), whether
    it has ``network``, and ``native_args`` (keyword arguments of the C helper's
    ``prepare``; None: the Python steps). (A tuple: the zygote makes one per child.)"""

    exec_id: Optional[int]
    uid: Optional[int]
    scratch: str
    stdio: Tuple[int, int, int]
    network: bool
    native_args: Optional[Dict[str, Any]] = None
