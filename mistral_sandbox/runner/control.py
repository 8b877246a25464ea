"""The supervisor <-> zygote control messages: names, fields, sizes, codec.

One msgpack map per ``SOCK_SEQPACKET`` packet (at most :data:`MAX_PACKET` bytes),
file descriptors passed alongside with ``SCM_RIGHTS``. Both sides use this module;
neither builds a message by hand.

=======================  ===================================================
supervisor -> zygote     zygote -> supervisor
=======================  ===================================================
                         ``hello`` once ready (pid, uids, isolation facts)
                         ``warm {slots: [[slot, pid, scratch, uid,
                         cpu_base]...]}`` + 3 fds
                         per child: prepared children (channel, stdout,
                         stderr) for the supervisor to hand a request to
``taken {slots}``        (nothing: those slots may be refilled)
``fork {id, network}``   ``forked {id, pid, scratch, uid, cpu_base}`` or
+ 3 fds                  ``fork_failed {id, error}``
``kill {id} | {slot}``   (nothing; the exit report follows)
                         ``exit {id | slot, pid, status, utime, stime,
                         maxrss, swept, scratch_removed[, survivors]
                         [, tree_cpu, tree_max_rss, oom_kills]}``
=======================  ===================================================

The zygote never sees a request, a context or a token: those go from the
supervisor straight into the child's own channel.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Dict, List, Tuple

import msgpack

MAX_PACKET = 1 << 16
FDS_PER_CHILD = 3          # channel, stdout, stderr
WARM_PER_MESSAGE = 64      # prepared children announced per message (SCM_MAX_FD is 253)

HELLO, WARM, TAKEN, FORK, FORKED, FORK_FAILED, KILL, EXIT = (
    "hello", "warm", "taken", "fork", "forked", "fork_failed", "kill", "exit")

# op -> fields every such message must carry
REQUIRED_FIELDS: Dict[str, Tuple[str, ...]] = {
    HELLO: ("pid", "root", "uids", "unreadable_paths", "seccomp", "namespaces",
            "native_isolation", "view", "cgroups", "cgroup_layout", "policy"),
    WARM: ("slots",),
    TAKEN: ("slots",),
    FORK: ("id", "network"),
    FORKED: ("id", "pid", "scratch", "uid", "cpu_base"),
    FORK_FAILED: ("id", "error"),
    KILL: (),
    EXIT: ("pid", "status", "utime", "stime", "maxrss", "swept"),
}


class ControlError(Exception):
    """A control message is malformed (a bug on one side: the other stops)."""


def message(op: str, **fields: Any) -> Dict[str, Any]:
    """A message: ``fields`` and ``op``."""
    fields["op"] = op
    return fields


def encode(msg: Dict[str, Any]) -> bytes:
    if msg.get("op") not in REQUIRED_FIELDS:
        raise ControlError("unknown control message %r" % (msg.get("op"),))
    data = msgpack.packb(msg, use_bin_type=True)
    if len(data) > MAX_PACKET:
        raise ControlError("%s message of %d bytes exceeds %d" % (msg["op"], len(data),
                                                                  MAX_PACKET))
    return data


def decode(data: bytes) -> Dict[str, Any]:
    try:
        msg = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise ControlError("undecodable control message: %s: %s"
                           % (type(exc).__name__, exc)) from None
    if not isinstance(msg, dict):
        raise ControlError("control message is a %s" % type(msg).__name__)
    op = msg.get("op")
    need = REQUIRED_FIELDS.get(op)
    if need is None:
        raise ControlError("unknown control message %r" % (op,))
    for field in need:
        if field not in msg:
            raise ControlError("%s message lacks %r" % (op, field))
    if op in (KILL, EXIT) and ("id" in msg) == ("slot" in msg):
        raise ControlError("%s message needs exactly one of id and slot" % op)
    return msg


def send(sock: socket.socket, msg: Dict[str, Any], fds=()) -> None:
    """Send one message (with ``fds``); raises OSError if the peer is gone."""
    send_data(sock, encode(msg), fds)


def send_data(sock: socket.socket, data: bytes, fds=()) -> None:
    """Send one encoded message (with ``fds``)."""
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv(sock: socket.socket, max_fds: int) -> Tuple[Dict[str, Any], List[int]]:
    """One message and the fds that came with it; ``({}, [])`` at EOF. Raises OSError
    (BlockingIOError on a non-blocking socket with nothing to read) or ControlError
    (the fds are closed then)."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, max_fds)
    if not data:
        close_all(fds)
        return {}, []
    try:
        return decode(data), fds
    except ControlError:
        close_all(fds)
        raise


def close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
