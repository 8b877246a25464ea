"""Sandbox uids: one per execution, claimed for the zygote's life with ``flock``.

As root, every child runs under an unprivileged uid of its own, taken from a pool
the zygote claims at start (a lock file per uid, so two sandboxes on one host never
share a uid) and given back once whatever the execution left under it is gone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
from typing import List, Optional


def claim_uids(lock_dir: str, start: int, count: int, want: int) -> List[int]:
    """Claim ``want`` uids in ``[start, start+count)``; each lock lives as long as this
    process (its fd stays open). Raises RuntimeError if not enough are free."""
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    claimed = []
    for uid in range(start, start + count):
        if len(claimed) >= want:
            break
        fd = os.open(os.path.join(lock_dir, "%d.lock" % uid), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                continue
            raise
        claimed.append(uid)
    if len(claimed) < want:
        raise RuntimeError("only %d of %d sandbox uids in [%d, %d) are free"
                           % (len(claimed), want, start, start + count))
    return claimed


def sweep_uid(uid: int) -> None:
    """Kill every process running as ``uid`` (a forked helper does ``kill(-1)`` as it)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        finally:
            os._exit(0)
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue


class UidPool:
    """The zygote's sandbox uids (none when not root: children then keep ours)."""

    def __init__(self, root: bool, lock_dir: str, start: int, count: int, want: int):
        self.root = root
        self.claimed: List[int] = claim_uids(lock_dir, start, count, want) if root else []
        self.free: List[int] = list(self.claimed)

    def sweep_free(self) -> None:
        """Kill leftovers of a previous, crashed owner of our free uids."""
        for uid in self.free:
            sweep_uid(uid)

    def available(self) -> bool:
        return bool(self.free) or not self.root

    def take(self) -> Optional[int]:
        """A free uid (None when not root); IndexError when none is left."""
        return self.free.pop() if self.root else None

    def peek(self) -> Optional[int]:
        """A free uid without taking it (for a probe that ends before it is used)."""
        return self.free[-1] if self.free else None

    def give_back(self, uid: Optional[int]) -> None:
        if uid is not None:
            self.free.append(uid)
