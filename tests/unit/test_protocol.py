import datetime
import functools
import socket
import struct

import msgpack
import pytest

from mistral_sandbox.runner import protocol
from mistral_sandbox.runner.protocol import FrameReader, ProtocolError, SerializationError


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def result_msg(**kw):
    msg = {"type": "result", "v": protocol.VERSION, "id": 1, "data": 1}
    msg.update(kw)
    return msg


def test_encode_decode_round_trip_with_datetime_and_bytes():
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    data = protocol.encode({"type": "result", "id": 3, "data": {"b": b"\x00\x01", "t": when}})
    (msg,) = FrameReader().feed(data)
    assert protocol.validate(msg)["data"] == {"b": b"\x00\x01", "t": when}


def test_reader_handles_frames_split_at_every_byte():
    data = protocol.encode(result_msg()) + protocol.encode(result_msg(id=2))
    reader = FrameReader()
    got = []
    for i in range(len(data)):
        got.extend(reader.feed(data[i:i + 1]))
    assert [m["id"] for m in got] == [1, 2]
    reader.eof()


def test_truncated_frame_is_a_protocol_error_at_eof():
    data = protocol.encode(result_msg())
    reader = FrameReader()
    assert reader.feed(data[:-1]) == []
    with pytest.raises(ProtocolError, match="stream ended inside a frame"):
        reader.eof()


def test_oversize_frame_is_refused_before_the_body_arrives():
    reader = FrameReader(max_frame=1024)
    with pytest.raises(ProtocolError, match="frame of 1025 bytes announced, maximum is 1024"):
        reader.feed(struct.pack(">I", 1025))  # the header alone is enough to refuse it


def test_empty_frame_is_refused():
    with pytest.raises(ProtocolError, match="empty frame"):
        FrameReader().feed(struct.pack(">I", 0))


@pytest.mark.parametrize("body,match", [
    (b"\xc1", "undecodable"),                           # reserved byte
    (b"\x92\x01", "undecodable"),                       # array cut short
    (b"\x81\x01\x02", "undecodable"),                   # int map key (strict_map_key)
    (b"\xd4\x05\x00", "extension type 5"),              # ext type
    (b"\x91" * 2000 + b"\xc0", "nested"),               # too deep
    (msgpack.packb({"a": 1}) + b"\x00", "undecodable"),  # trailing data
])
def test_garbage_bodies_are_protocol_errors(body, match):
    with pytest.raises(ProtocolError, match=match):
        FrameReader().feed(frame(body))


@pytest.mark.parametrize("msg,match", [
    ([1, 2], "not a map"),
    ({"type": "bogus", "v": 1}, "unknown message type"),
    ({"type": "run", "v": 1, "id": 1, "action": {}, "params": {}}, "not allowed"),
    (result_msg(v=99), "protocol version"),
    (result_msg(id="1"), "field 'id' of result message is a str"),
    (result_msg(id=True), "field 'id' of result message is a bool"),
    (result_msg(extra=1), "unexpected field 'extra'"),
    ({"type": "error", "v": 1, "id": 1, "kind": "action_error"}, "lacks field 'message'"),
    ({"type": "error", "v": 1, "id": 1, "kind": "nope", "message": "m"}, "unknown error kind"),
    ({"type": "log", "v": 1, "level": "high", "msg": "m"}, "level"),
])
def test_validation_rejects_malformed_messages(msg, match):
    with pytest.raises(ProtocolError, match=match):
        protocol.validate(msg)


def test_serialization_error_names_path_and_type():
    with pytest.raises(SerializationError, match=r"message\['data'\]\[1\] is a builtins.set"):
        protocol.encode({"type": "result", "id": 1, "data": [1, {2}]})
    assert "naive datetime" in protocol.find_unserializable(datetime.datetime.now())
    assert "keys must be str" in protocol.find_unserializable({1: 2})
    assert "64-bit" in protocol.find_unserializable(2 ** 70)
    assert protocol.find_unserializable({"a": [1, "x", b"y", None, 1.5, True]}) is None


def test_encode_refuses_oversize():
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        protocol.encode({"type": "result", "id": 1, "data": "x" * 2000}, max_frame=1000)


def test_blocking_read_frame_over_a_socketpair():
    a, b = socket.socketpair()
    try:
        a.sendall(protocol.encode(result_msg(id=9)))
        assert protocol.read_frame(b)["id"] == 9
        a.sendall(struct.pack(">I", 10 ** 9))
        with pytest.raises(ProtocolError, match="announced"):
            protocol.read_frame(b, max_frame=1 << 20)
        a.close()
        with pytest.raises(EOFError):
            protocol.read_frame(b)
    finally:
        a.close()
        b.close()


def test_depth_limit_holds_at_the_boundary():
    """Short bodies skip the depth walk (each level costs a byte): check both sides."""
    def nested(levels):
        return msgpack.packb(functools.reduce(lambda inner, _: [inner], range(levels - 1), []))
    assert len(nested(protocol.MAX_DEPTH)) == protocol.MAX_DEPTH
    protocol.unpackb(nested(protocol.MAX_DEPTH))  # exactly the limit: accepted
    with pytest.raises(protocol.ProtocolError, match="nested deeper"):
        protocol.unpackb(nested(protocol.MAX_DEPTH + 1))


def test_depth_limit_over_long_bodies():
    """Bodies too long for the byte-count shortcut, or full of container-like bytes
    inside strings, are walked: deep ones are refused, shallow ones accepted."""
    def nested(levels, pad=0):
        inner = ["x" * pad] if pad else []
        return msgpack.packb(functools.reduce(lambda inner, _: [inner], range(levels - 1), inner))
    long_pad = (1 << 16) + 10
    protocol.unpackb(nested(protocol.MAX_DEPTH, pad=long_pad))
    with pytest.raises(protocol.ProtocolError, match="nested deeper"):
        protocol.unpackb(nested(protocol.MAX_DEPTH + 1, pad=long_pad))
    lookalike = msgpack.packb({"s": "\x90" * 500, "b": b"\x80\xdc" * 500, "l": [[1], [2]]})
    assert protocol.unpackb(lookalike)["l"] == [[1], [2]]
    with pytest.raises(protocol.ProtocolError, match="nested deeper"):
        protocol.unpackb(msgpack.packb({"s": "\x90" * 500, "deep": functools.reduce(
            lambda inner, _: [inner], range(protocol.MAX_DEPTH + 1), [])}))


def test_depth_ok_counts_only_containers():
    assert protocol.depth_ok(5) and protocol.depth_ok("x" * 1000)
    assert protocol.depth_ok({"a": [1, {"b": (2, 3)}]}, limit=4)  # 4 levels
    assert not protocol.depth_ok({"a": [1, {"b": (2, 3)}]}, limit=3)
    assert protocol.depth_ok([], limit=1) and not protocol.depth_ok([[]], limit=1)


def _empty_lists(n):
    return b"\xdd" + struct.pack(">I", n) + b"\x90" * n


def test_dense_containers_are_refused_before_they_are_all_built():
    """An empty list is one byte to encode and ~56 to decode: a 16 MB body of them took
    a parent to 2.3 GB. At most one list or map per CONTAINER_BYTES bytes (or
    CONTAINERS_FREE in any case)."""
    n = 4 * protocol.CONTAINERS_FREE
    with pytest.raises(ProtocolError, match=r"more than \d+ lists and maps"):
        protocol.unpackb(_empty_lists(n))
    with pytest.raises(ProtocolError, match="lists and maps"):
        protocol.check_containers(_empty_lists(n))


def test_containers_up_to_the_limit_decode():
    assert len(protocol.unpackb(_empty_lists(protocol.CONTAINERS_FREE - 1))) == \
        protocol.CONTAINERS_FREE - 1
    # realistic dense data: a time series of [timestamp, value] pairs
    series = [[1700000000 + i, i % 100] for i in range(200000)]
    body = msgpack.packb(series)
    assert len(body) > protocol.CONTAINERS_FREE * protocol.CONTAINER_BYTES
    assert protocol.unpackb(body) == series
    protocol.check_containers(body)
