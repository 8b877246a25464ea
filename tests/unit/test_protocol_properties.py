"""Property tests: any byte string fed to the frame reader yields valid messages or the
protocol's own error — never another exception, never a buffer beyond one frame."""

import struct

import msgpack
from hypothesis import given, settings, strategies as st

from mistral_sandbox.runner import protocol
from mistral_sandbox.runner.protocol import FrameReader, ProtocolError

MAX = 4096


def feed_all(chunks):
    reader = FrameReader(max_frame=MAX)
    out = []
    try:
        for chunk in chunks:
            out.extend(protocol.validate(m) for m in reader.feed(chunk))
            # at most one partial frame (header + body <= max) is ever buffered
            assert reader.pending() <= MAX + protocol.HEADER.size + len(chunk)
        reader.eof()
    except ProtocolError:
        return None
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=8))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(chunks):
    feed_all(chunks)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats() |
    st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "v", "id", "data", "error", "kind", "message",
                                        "level", "msg", "cancel", "sync", "isolation", "x"]),
                       msgpack_values | st.sampled_from(["result", "error", "log", "ready",
                                                         "run", "action_error", 1]),
                       max_size=8))
def test_any_map_validates_or_is_a_protocol_error(msg):
    body = msgpack.packb(msg, use_bin_type=True)
    frame = struct.pack(">I", len(body)) + body
    try:
        for m in FrameReader(max_frame=1 << 20).feed(frame):
            protocol.validate(m)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(msgpack_values, st.integers(min_value=1, max_value=50))
def test_valid_frames_survive_any_split(data, cut):
    frame = protocol.encode({"type": "result", "id": 1, "data": data})
    reader = FrameReader()
    got = []
    for i in range(0, len(frame), cut):
        got.extend(reader.feed(frame[i:i + cut]))
    assert len(got) == 1 and got[0]["id"] == 1
