"""The zygote's side of the warm pool: fork prepared children, announce them.

A prepared child is forked and isolated ahead of time and waits for one request on
its channel; the supervisor gets its ends of the channel and output pipes
(``warm``), writes a request straight into it, and says so later (``taken``), so the
zygote forks a replacement. Replacements are made when the zygote is idle, forked
back to back (after each fork every page the zygote writes is a copy-on-write fault,
so as little as possible runs between two forks) and announced together.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable, List, Optional, Set, Tuple

import _socket

from mistral_sandbox.runner import control, isolation
from mistral_sandbox.runner.child_config import ChildConfig, ChildSpec
from mistral_sandbox.runner.reaper import ChildRecord, Reaper
from mistral_sandbox.runner.uid_pool import UidPool

MAX_FAILURES = 20   # prepared children in a row that died unassigned: pause the pool
PAUSE = 1.0         # seconds the pool pauses then (cold forks serve meanwhile)


class _Kit:
    """What one prepared child gets, made ready before the fork."""

    __slots__ = ("slot", "uid", "scratch", "ours", "theirs", "spec")

    def __init__(self, slot: int, uid: Optional[int], scratch: str,
                 ours: Tuple[int, ...], theirs: Tuple[int, ...], spec: ChildSpec):
        self.slot = slot
        self.uid = uid
        self.scratch = scratch
        self.ours = ours
        self.theirs = theirs
        self.spec = spec


class WarmSpawner:
    """Keeps ``target`` prepared children; ``fork_child(spec)`` forks one (returns
    ``(pid, contained)``, raises OSError), ``send`` announces them."""

    def __init__(self, target: int, config: ChildConfig, uids: UidPool, reaper: Reaper,
                 scratch_root: str, fork_child: Callable, send: Callable[..., bool]):
        self.target = target
        self.config = config
        self.uids = uids
        self.reaper = reaper
        self.scratch_root = scratch_root
        self.fork_child = fork_child
        self.send = send
        self.idle: Set[int] = set()  # slots of prepared children nobody has taken yet
        self.cpu_base = lambda uid: 0.0  # the uid cgroup's CPU baseline (set by the zygote)
        self.seq = 0
        self.failures = 0  # prepared children in a row that died before being taken
        self.paused_until = 0.0

    def wants_refill(self) -> bool:
        return len(self.idle) < self.target and bool(self.uids.free or not self.uids.root)

    def refill_timeout_ms(self) -> Optional[int]:
        """0 to refill now, a delay while paused, None when nothing is missing."""
        if len(self.idle) >= self.target or not (self.uids.free or not self.uids.root):
            return None  # (inlined wants_refill: the zygote's loop runs this every turn)
        pause = self.paused_until - time.monotonic()
        return 0 if pause <= 0 else int(pause * 1000) + 1

    def refill(self) -> None:
        if self.wants_refill() and time.monotonic() >= self.paused_until:
            self.spawn(self.target)

    def taken(self, slots) -> None:
        for slot in slots:
            self.idle.discard(int(slot))
        self.failures = 0

    def reaped(self, record: ChildRecord) -> None:
        """A child was reaped: an idle prepared one died before anybody took it."""
        kind, slot = record.key
        if kind == "slot" and slot in self.idle:
            self.idle.discard(slot)
            self.failures += 1
            if self.failures >= max(MAX_FAILURES, 2 * self.target):
                self.paused_until = time.monotonic() + PAUSE
                self.failures = 0

    def spawn(self, at_most: int) -> None:
        """Fork up to ``at_most`` prepared children and announce them."""
        target = min(self.target, len(self.idle) + at_most)
        kits: List[_Kit] = []
        while len(self.idle) + len(kits) < target:
            kit = self._kit()
            if kit is None:
                break
            kits.append(kit)
        if not kits:
            return
        forked = []
        for kit in kits:  # back to back
            try:
                forked.append(self.fork_child(kit.spec))
            except OSError:
                break
        born = []
        for i, kit in enumerate(kits):
            control.close_all(kit.theirs)
            pid, contained = forked[i] if i < len(forked) else (0, False)
            if not pid:  # fork failed: give back what it would have used
                control.close_all(kit.ours)
                self.uids.give_back(kit.uid)
                continue
            self.reaper.track(ChildRecord(("slot", kit.slot), pid, kit.uid, kit.scratch,
                                          contained))
            self.idle.add(kit.slot)
            born.append(([kit.slot, pid, kit.scratch, kit.uid, self.cpu_base(kit.uid)],
                         kit.ours))
        self._announce(born)

    def _announce(self, born) -> None:
        for i in range(0, len(born), control.WARM_PER_MESSAGE):
            batch = born[i:i + control.WARM_PER_MESSAGE]
            fds = [fd for b in batch for fd in b[1]]
            self.send(control.message(control.WARM, slots=[b[0] for b in batch]), fds)
            control.close_all(fds)

    def _kit(self) -> Optional[_Kit]:
        """A uid, a slot, the channel and output fds and the spec of one child to be
        forked; None when out of uids or fds."""
        try:
            uid = self.uids.take()
        except IndexError:
            return None
        opened: List[int] = []
        try:
            ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            opened += [ours.detach(), theirs.detach()]
            opened += os.pipe2(os.O_CLOEXEC)
            opened += os.pipe2(os.O_CLOEXEC)
        except OSError:
            control.close_all(opened)
            self.uids.give_back(uid)
            return None
        chan_ours, chan_theirs, out_r, out_w, err_r, err_w = opened
        self.seq += 1
        scratch = os.path.join(self.scratch_root, "w%d" % self.seq)
        stdio = (chan_theirs, out_w, err_w)
        spec = make_spec(self.config, None, uid, scratch, stdio, self.config.warm_network)
        return _Kit(self.seq, uid, scratch, (chan_ours, out_r, err_r), stdio, spec)


def make_spec(config: ChildConfig, exec_id: Optional[int], uid: Optional[int], scratch: str,
              stdio: Tuple[int, int, int], network: bool) -> ChildSpec:
    """A child's spec, with the C helper's arguments when it isolates natively."""
    native = None
    if config.native is not None and not network and uid is not None:
        native = isolation.native_args(config, config.native, stdio, uid, warm=exec_id is None)
    return ChildSpec(exec_id, uid, scratch, stdio, network, native)
