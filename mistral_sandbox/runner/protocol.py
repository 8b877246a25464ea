"""The wire format between the parent and a child: framed msgpack messages.

Frame: a 4-byte big-endian unsigned length, then that many bytes of msgpack
encoding one map. The length is checked against the reader's ``max_frame``
*before* any of the body is buffered, so an oversize frame costs nothing.

Every message is a map with ``type`` and ``v`` (:data:`VERSION`). Decoding
uses ``strict_map_key`` (str/bytes keys only), no pickle, and no extension
types except msgpack's timestamp (which becomes an aware ``datetime``); depth
is bounded. Every message read from a child is validated against its schema
(:func:`validate`). Any violation raises :class:`ProtocolError` — callers treat
that as a ``protocol_error`` outcome, never as a crash.

Types: ``run`` (parent → child), ``ready``, ``result``, ``error``, ``log``,
``call`` (child → parent), ``call_result``, ``cancel`` (parent → child).
"""

from __future__ import annotations

import datetime
import struct
from typing import Any, Dict, List, Optional, Tuple

import msgpack

VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
# the largest error or log frame a child sends (its texts are cut to fit): a parent
# reading replies must accept at least this much, whatever the result limit
ERROR_FRAME_MAX = 256 * 1024
MAX_DEPTH = 200


class ProtocolError(Exception):
    """A frame or message violates the protocol."""


class SerializationError(ValueError):
    """A value cannot be carried by the protocol (names the offending path and type)."""


# ---------------------------------------------------------------- encoding

_PLAIN = (type(None), bool, int, float, str, bytes)


def find_unserializable(value: Any, path: str = "value") -> Optional[str]:
    """Describe the first value msgpack cannot carry, e.g. ``value['x'][2] is a set``."""
    stack = [(value, path, 0)]
    while stack:
        v, p, depth = stack.pop()
        if depth > MAX_DEPTH:
            return "%s is nested deeper than %d levels" % (p, MAX_DEPTH)
        if isinstance(v, bool) or v is None or isinstance(v, (str, bytes, float)):
            continue
        if isinstance(v, int):
            if not -(2 ** 63) <= v < 2 ** 64:
                return "%s is an integer out of the 64-bit range" % p
            continue
        if isinstance(v, datetime.datetime):
            if v.tzinfo is None:
                return "%s is a naive datetime (only timezone-aware datetimes are allowed)" % p
            continue
        if isinstance(v, (list, tuple)):
            stack.extend((item, "%s[%d]" % (p, i), depth + 1) for i, item in enumerate(v))
            continue
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    return "%s has a key of type %s (keys must be str)" % (p, type(k).__name__)
                stack.append((item, "%s[%r]" % (p, k), depth + 1))
            continue
        return "%s is a %s.%s, which is not serializable (use plain data: None, bool, int, " \
               "float, str, bytes, list, dict with str keys, aware datetime)" % (
                   p, type(v).__module__, type(v).__qualname__)
    return None


def _default(obj: Any) -> Any:
    raise TypeError("unserializable %s" % type(obj).__name__)


def packb(obj: Any, what: str = "value") -> bytes:
    """msgpack-encode plain data; :class:`SerializationError` names what is wrong."""
    problem = None
    try:
        body = msgpack.packb(obj, use_bin_type=True, datetime=True, default=_default)
    except (TypeError, ValueError, OverflowError) as exc:
        problem = find_unserializable(obj, what) or "%s: %s" % (what, exc)
    if problem is not None:
        raise SerializationError(problem)
    return body


def encode(msg: Dict[str, Any], max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One frame (header + body) for ``msg``; sets ``v``.

    Raises :class:`SerializationError` for unserializable content and
    :class:`ProtocolError` if the frame would exceed ``max_frame``.
    """
    msg.setdefault("v", VERSION)
    body = packb(msg, "message")
    if len(body) > max_frame:
        raise ProtocolError("%s frame of %d bytes exceeds the maximum of %d bytes"
                            % (msg.get("type"), len(body), max_frame))
    return HEADER.pack(len(body)) + body


# ---------------------------------------------------------------- decoding

def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("msgpack extension type %d is not allowed" % code)


def depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if lists/maps in ``value`` nest at most ``limit`` levels (iterative walk,
    over containers only)."""
    if not isinstance(value, (list, tuple, dict)):
        return True
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d >= limit:
            return False
        for x in (v.values() if isinstance(v, dict) else v):
            if isinstance(x, (list, tuple, dict)):
                stack.append((x, d + 1))
    return True


# Bytes that can start a msgpack map or array (fixmap, fixarray, array16/32, map16/32):
# a body with at most MAX_DEPTH of them cannot nest deeper, whatever else it holds.
_CONTAINER_BYTES = bytes(1 if 0x80 <= b <= 0x9f or 0xdc <= b <= 0xdf else 0
                         for b in range(256))
_COUNT_CONTAINERS_UP_TO = 1 << 16  # larger bodies: the walk (counting copies the body)


def _may_be_too_deep(body: bytes) -> bool:
    """False if ``body`` certainly nests at most MAX_DEPTH levels (every nesting level
    costs at least one byte, and a container header byte from a known set)."""
    if len(body) <= MAX_DEPTH:
        return False
    if len(body) <= _COUNT_CONTAINERS_UP_TO:
        return body.translate(_CONTAINER_BYTES).count(1) > MAX_DEPTH
    return True


# A list or map costs the decoder 50-100 bytes however few bytes encode it (an empty
# list is one byte): a message may hold CONTAINERS_FREE of them, and beyond that one
# per CONTAINER_BYTES bytes of its body. Denser data (a 16 MB result of empty lists
# took the parent to 2.3 GB) is refused.
CONTAINERS_FREE = 1 << 16
CONTAINER_BYTES = 4


def container_limit(size: int) -> int:
    """How many lists and maps a body of ``size`` bytes may hold."""
    return max(CONTAINERS_FREE, size // CONTAINER_BYTES)


def _may_hold_too_many(body: bytes) -> bool:
    """False if ``body`` certainly holds at most :func:`container_limit` containers
    (its count of container header bytes is an upper bound)."""
    limit = container_limit(len(body))
    return len(body) > limit and body.translate(_CONTAINER_BYTES).count(1) > limit


def check_containers(body: bytes) -> None:
    """ProtocolError if ``body`` holds more lists and maps than its size allows (what
    the parent's :func:`unpackb` would refuse; a sender checks its own message)."""
    if _may_hold_too_many(body):
        budget = _ContainerBudget(container_limit(len(body)))
        msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True, timestamp=3,
                        list_hook=budget.take, object_hook=budget.take)


class _ContainerBudget:
    """Hooks that count the decoded lists and maps and stop the decoder past the
    limit (before the rest is allocated)."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int):
        self.left = self.limit = limit

    def take(self, container):
        self.left -= 1
        if self.left < 0:
            raise ProtocolError("message holds more than %d lists and maps (at most one "
                                "per %d bytes)" % (self.limit, CONTAINER_BYTES))
        return container


def unpackb(body: bytes) -> Any:
    """Decode one msgpack body with the protocol's restrictions: no extension types,
    at most MAX_DEPTH levels, at most :func:`container_limit` lists and maps."""
    hooks: Dict[str, Any] = {}
    if _may_hold_too_many(body):
        budget = _ContainerBudget(container_limit(len(body)))
        hooks = {"list_hook": budget.take, "object_hook": budget.take}
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True,
                              timestamp=3, ext_hook=_reject_ext, **hooks)
    except ProtocolError:
        raise
    except msgpack.StackError:
        raise ProtocolError("message nested too deeply") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError("undecodable message: %s: %s" % (type(exc).__name__, exc)) from None
    except Exception as exc:  # any other decoder complaint is still the peer's fault
        raise ProtocolError("undecodable message: %s: %s" % (type(exc).__name__, exc)) from None
    if _may_be_too_deep(body) and not depth_ok(obj):
        raise ProtocolError("message nested deeper than %d levels" % MAX_DEPTH)
    return obj


class FrameReader:
    """Incremental frame splitter: ``feed(bytes)`` returns complete messages.

    Holds at most one partial frame. A header announcing more than
    ``max_frame`` bytes raises :class:`ProtocolError` before the body is read.
    Messages are decoded but not validated (see :func:`validate`).
    """

    __slots__ = ("max_frame", "_buf", "_need")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: Optional[int] = None

    def pending(self) -> int:
        """Bytes of an incomplete frame currently buffered."""
        return len(self._buf)

    def feed(self, data: bytes) -> List[Any]:
        self._buf += data
        out = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER.size:
                    return out
                (n,) = HEADER.unpack_from(self._buf)
                if n > self.max_frame:
                    raise ProtocolError("frame of %d bytes announced, maximum is %d"
                                        % (n, self.max_frame))
                if n == 0:
                    raise ProtocolError("empty frame")
                del self._buf[:HEADER.size]
                self._need = n
            if len(self._buf) < self._need:
                return out
            body = bytes(self._buf[:self._need])
            del self._buf[:self._need]
            self._need = None
            out.append(unpackb(body))

    def eof(self) -> None:
        """Call at end of stream: raises ProtocolError if a frame was cut short."""
        if self._buf or self._need is not None:
            raise ProtocolError("stream ended inside a frame (%d bytes buffered)" % len(self._buf))


# ---------------------------------------------------------------- blocking I/O (child side)

def _recv_exact(sock, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("peer closed the channel after %d of %d bytes" % (got, n))
        got += k
    return bytes(buf)


def read_frame(sock, max_frame: int = DEFAULT_MAX_FRAME) -> Any:
    """Blocking read of one frame from a socket; ``EOFError`` on clean close."""
    (n,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if n > max_frame:
        raise ProtocolError("frame of %d bytes announced, maximum is %d" % (n, max_frame))
    if n == 0:
        raise ProtocolError("empty frame")
    return unpackb(_recv_exact(sock, n))


# ---------------------------------------------------------------- schemas

_ANY = object()
_STR = (str,)
_OPT_STR = (str, type(None))
_INT = (int,)
_MAP = (dict,)
_BOOL = (bool,)

# type -> {field: (allowed types or _ANY, required)}
SCHEMAS: Dict[str, Dict[str, Tuple[Any, bool]]] = {
    "run": {"id": (_INT, True), "action": (_MAP, True), "params": (_MAP, True),
            "context": ((dict, type(None)), False), "limits": (_MAP, False),
            "mode": (_STR, False)},
    "ready": {"id": (_INT, True), "isolation": (_MAP, True)},
    "result": {"id": (_INT, True), "data": (_ANY, False), "error": (_ANY, False),
               "cancel": (_BOOL, False), "sync": (_BOOL, False), "info": (_ANY, False),
               "usage": (_MAP, False)},
    "error": {"id": (_INT, True), "kind": (_STR, True), "message": (_STR, True),
              "exc_type": (_OPT_STR, False), "traceback": (_OPT_STR, False),
              "isolation": (_MAP, False), "usage": (_MAP, False)},
    "log": {"level": (_INT, True), "msg": (_STR, True), "logger": (_OPT_STR, False)},
    "call": {"id": (_INT, True), "call_id": (_INT, True), "action": (_STR, True),
             "params": (_MAP, True), "mode": (_STR, False)},
    "call_result": {"call_id": (_INT, True), "data": (_ANY, False), "error": (_ANY, False),
                    "cancel": (_BOOL, False), "reason": (_STR, False),
                    "message": (_STR, False)},
    "cancel": {"id": (_INT, True)},
}

CHILD_TYPES = frozenset({"ready", "result", "error", "log", "call"})
ERROR_KINDS = frozenset({"load_error", "action_error", "serialization_error", "memory_error",
                         "sandbox_error", "result_too_large"})


def validate(msg: Any, allowed: frozenset = CHILD_TYPES) -> Dict[str, Any]:
    """Check ``msg`` against its schema; return it or raise :class:`ProtocolError`."""
    if not isinstance(msg, dict):
        raise ProtocolError("message is a %s, not a map" % type(msg).__name__)
    mtype = msg.get("type")
    if not isinstance(mtype, str) or mtype not in SCHEMAS:
        raise ProtocolError("unknown message type %r" % (mtype,))
    if mtype not in allowed:
        raise ProtocolError("message type %r is not allowed here" % mtype)
    if msg.get("v") != VERSION:
        raise ProtocolError("protocol version %r, expected %d" % (msg.get("v"), VERSION))
    schema = SCHEMAS[mtype]
    for field, value in msg.items():
        if field in ("type", "v"):
            continue
        spec = schema.get(field)
        if spec is None:
            raise ProtocolError("unexpected field %r in %s message" % (field, mtype))
        types = spec[0]
        if types is not _ANY and (not isinstance(value, types) or
                                  (isinstance(value, bool) and bool not in types)):
            raise ProtocolError("field %r of %s message is a %s" % (
                field, mtype, type(value).__name__))
    for field, (_, required) in schema.items():
        if required and field not in msg:
            raise ProtocolError("%s message lacks field %r" % (mtype, field))
    if mtype == "error" and msg["kind"] not in ERROR_KINDS:
        raise ProtocolError("unknown error kind %r" % msg["kind"])
    return msg
