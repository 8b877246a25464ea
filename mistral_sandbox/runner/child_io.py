"""The parent's ends of one child: its channel and its stdout/stderr pipes.

:class:`ChildIO` writes the request into the channel, reads what comes back (frames
for the :class:`~mistral_sandbox.runner.protocol.FrameReader`, output for the
bounded :class:`Tail`\\ s), and closes each end once it reached EOF. Non-blocking;
driven by the engine's selector.
"""

from __future__ import annotations

import os
import selectors
import socket
from typing import Callable, Optional

from mistral_sandbox.runner import protocol

READ_CHUNK = 256 * 1024
TAIL_BYTES = 64 * 1024  # bytes of stdout and of stderr kept for the outcome


class Tail:
    """Counts the bytes of a stream and keeps the last ``size`` of them."""

    __slots__ = ("size", "total", "buf")

    def __init__(self, size: int):
        self.size = size
        self.total = 0
        self.buf = bytearray()

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data
        if len(self.buf) > self.size:
            del self.buf[:len(self.buf) - self.size]

    def text(self) -> str:
        return self.buf.decode("utf-8", "replace")


class ChildIO:
    """The parent's ends of one child and what came through them: the request
    ``frame`` to write, a reader for replies of at most ``max_reply`` bytes, the last
    ``tail`` bytes of stdout and of stderr. Made when the execution is submitted (in
    the caller's thread), attached to a child's ends by the engine."""

    __slots__ = ("sock", "out_r", "err_r", "frame", "written", "reader", "stdout", "stderr",
                 "channel_open")

    def __init__(self, frame: bytes, max_reply: int, tail: int):
        self.sock: Optional[socket.socket] = None
        self.out_r = self.err_r = -1
        self.frame = frame
        self.written = 0
        self.reader = protocol.FrameReader(max_reply)
        self.stdout = Tail(tail)
        self.stderr = Tail(tail)
        self.channel_open = False

    def attach(self, sel: selectors.BaseSelector, sock: socket.socket, out_r: int, err_r: int,
               on_channel: Callable[[int], None], on_stdout: Callable[[int], None],
               on_stderr: Callable[[int], None], hold: bool = False) -> None:
        """Write the request into ``sock`` (as much as fits now: the child starts on it
        at once; ``hold``: not yet, see :meth:`write_request`), then watch the three ends
        (already non-blocking)."""
        self.sock, self.out_r, self.err_r = sock, out_r, err_r
        self.channel_open = True
        if not hold:
            self._write()
        sel.register(sock, selectors.EVENT_READ |
                     (selectors.EVENT_WRITE if self.frame and not hold else 0), on_channel)
        sel.register(out_r, selectors.EVENT_READ, on_stdout)
        sel.register(err_r, selectors.EVENT_READ, on_stderr)

    def write_request(self, sel: selectors.BaseSelector, on_channel, force: bool = False) -> None:
        """The channel is writable (or ``force``: a held request may go now): write more
        of the request; watch for writability while some of it is left."""
        if not self.frame or not self.channel_open:
            return
        self._write()
        if not self.frame:
            sel.modify(self.sock, selectors.EVENT_READ, on_channel)
        elif force:
            sel.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, on_channel)

    def _write(self) -> None:
        try:
            n = self.sock.send(memoryview(self.frame)[self.written:])
        except BlockingIOError:
            return
        except OSError:
            self.frame = b""  # the child is gone; its exit report will tell
            return
        self.written += n
        if self.written >= len(self.frame):
            self.frame = b""

    def recv(self) -> Optional[bytes]:
        """The next chunk from the channel: None when nothing more is there now, b""
        at EOF (or if the channel broke)."""
        if not self.channel_open:
            return b""
        try:
            return self.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def read_output(self, which: int) -> Optional[bytes]:
        """The next chunk of stdout (1) or stderr (2), counted in its tail: None when
        nothing more is there now, b"" at EOF (or once closed)."""
        fd = self.out_r if which == 1 else self.err_r
        if fd < 0:
            return b""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if data:
            (self.stdout if which == 1 else self.stderr).add(data)
        return data

    @property
    def output_bytes(self) -> int:
        return self.stdout.total + self.stderr.total

    def close_channel(self, sel: selectors.BaseSelector) -> None:
        """Stop watching the channel (the socket itself is closed by :meth:`close`)."""
        if self.channel_open:
            self.channel_open = False
            _unregister(sel, self.sock)

    def close_output(self, sel: selectors.BaseSelector, which: int) -> None:
        fd = self.out_r if which == 1 else self.err_r
        if fd < 0:
            return
        _unregister(sel, fd)
        os.close(fd)
        if which == 1:
            self.out_r = -1
        else:
            self.err_r = -1

    @property
    def all_closed(self) -> bool:
        """EOF on the channel, stdout and stderr: nothing more can come."""
        return not self.channel_open and self.out_r < 0 and self.err_r < 0

    def close(self, sel: selectors.BaseSelector) -> None:
        self.close_channel(sel)
        if self.sock is not None:
            self.sock.close()
        self.close_output(sel, 1)
        self.close_output(sel, 2)


def _unregister(sel: selectors.BaseSelector, fileobj) -> None:
    try:
        sel.unregister(fileobj)
    except (KeyError, ValueError):
        pass
