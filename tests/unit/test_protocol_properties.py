"""Property tests: any byte string fed to the frame reader yields valid messages or the
protocol's own error — never another exception, never a buffer beyond one frame."""

import struct

import msgpack
import pytest
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
# (NaN is not equal to itself: messages compared after a round trip hold none)
comparable_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) |
    st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)
TYPES = sorted(protocol.SCHEMAS)
CHILD_TYPES = sorted(protocol.CHILD_TYPES)


def of_type(t):
    """Values of exactly the Python type ``t`` (bool is not an int here)."""
    return {int: st.integers(-2 ** 63, 2 ** 64 - 1), str: st.text(max_size=20),
            bool: st.booleans(), type(None): st.none(),
            dict: st.dictionaries(st.text(max_size=8), comparable_values, max_size=3)}[t]


def values_for(spec):
    types = spec[0]
    if types is protocol.SCHEMAS["result"]["data"][0]:  # any value
        return comparable_values
    return st.one_of([of_type(t) for t in types])


def well_formed(mtype):
    """Messages of ``mtype`` as its schema in SCHEMAS describes them: every required
    field and any of the optional ones, each of an allowed type."""
    schema = protocol.SCHEMAS[mtype]
    required = {f: values_for(spec) for f, spec in schema.items() if spec[1]}
    optional = {f: values_for(spec) for f, spec in schema.items() if not spec[1]}
    if mtype == "error":
        required["kind"] = st.sampled_from(sorted(protocol.ERROR_KINDS))
    return st.fixed_dictionaries(
        dict(required, type=st.just(mtype), v=st.just(protocol.VERSION)), optional=optional)


def conforms(msg):
    """The schemas' rules, written out independently of ``validate``: a map from the
    child with a known child type, the protocol version, only its schema's fields, each
    of an allowed type (a bool only where bool is allowed), every required field, and
    for an error a known kind."""
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str) \
            or msg["type"] not in protocol.CHILD_TYPES:
        return False
    # (``validate`` compares ``v`` with ==: 1.0 and True pass as version 1)
    if "v" not in msg or msg["v"] != protocol.VERSION:
        return False
    schema = protocol.SCHEMAS[msg["type"]]
    for field, value in msg.items():
        if field in ("type", "v"):
            continue
        if field not in schema:
            return False
        types = schema[field][0]
        if types is protocol.SCHEMAS["result"]["data"][0]:
            continue
        if type(value) not in types:  # (decoded values are of the builtin types)
            return False
    if any(required and f not in msg for f, (_, required) in schema.items()):
        return False
    return msg["type"] != "error" or msg["kind"] in protocol.ERROR_KINDS


def through_the_wire(msg, max_frame=1 << 20):
    """``msg`` encoded as a child would send it, read back by the frame reader."""
    body = msgpack.packb(msg, use_bin_type=True)
    (decoded,) = FrameReader(max_frame=max_frame).feed(struct.pack(">I", len(body)) + body)
    return decoded


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CHILD_TYPES).flatmap(well_formed))
def test_well_formed_messages_are_accepted_unchanged(msg):
    assert conforms(msg)
    assert protocol.validate(through_the_wire(msg)) == msg


# a value of the neighbouring type: bool for int, int for bool, None for str...
NEAR_MISSES = st.sampled_from([True, False, 0, 1, None, "", "1", b"", b"x", 1.0, [], {}])


def _mutations(msg):
    """Strategies of one violation of the schema applied to the well-formed ``msg``."""
    mtype = msg["type"]
    schema = protocol.SCHEMAS[mtype]
    required = [f for f, (_, req) in schema.items() if req]
    typed = [f for f, (types, _) in schema.items()
             if types is not protocol.SCHEMAS["result"]["data"][0]]
    out = [
        # a field the schema does not have
        st.text(min_size=1, max_size=8).filter(lambda f: f not in schema and f not in
                                               ("type", "v"))
        .flatmap(lambda f: comparable_values.map(lambda v: dict(msg, **{f: v}))),
        # another protocol version (not 1, 1.0 or True)
        comparable_values.filter(lambda v: v != protocol.VERSION).map(lambda v: dict(msg, v=v)),
        # no version
        st.just({k: v for k, v in msg.items() if k != "v"}),
        # a type the parent does not accept from a child, or none at all
        st.sampled_from(sorted(set(TYPES) - set(CHILD_TYPES)) + ["x", "", None, 1, []])
        .map(lambda t: dict(msg, type=t)),
        # not a map
        comparable_values.filter(lambda v: not isinstance(v, dict)),
    ]
    if required:  # a required field missing
        out.append(st.sampled_from(required).map(
            lambda f: {k: v for k, v in msg.items() if k != f}))
    if typed:  # a field of a type its schema does not allow (often a near miss)
        out.append(st.sampled_from(typed).flatmap(
            lambda f: (NEAR_MISSES | comparable_values).filter(
                lambda v: not conforms(dict(msg, **{f: v}))).map(
                    lambda v: dict(msg, **{f: v}))))
    if mtype == "error":
        out.append(st.text(max_size=12).filter(lambda k: k not in protocol.ERROR_KINDS)
                   .map(lambda k: dict(msg, kind=k)))
    return st.one_of(out)


@settings(max_examples=250, deadline=None)
@given(st.sampled_from(CHILD_TYPES).flatmap(well_formed).flatmap(_mutations))
def test_a_message_off_its_schema_is_a_protocol_error(msg):
    assert not conforms(msg)
    with pytest.raises(ProtocolError):
        protocol.validate(through_the_wire(msg))


ANY = protocol.SCHEMAS["result"]["data"][0]
SAMPLES = [True, False, 0, 1, -1, 2 ** 64 - 1, None, "", "1", b"", b"x", 1.0, [], [1], {}, {"a": 1}]


def minimal(mtype):
    """A well-formed message of ``mtype`` with its required fields only."""
    sample = {int: 7, str: "s", bool: True, type(None): None, dict: {}}
    msg = {"type": mtype, "v": protocol.VERSION}
    for field, (types, required) in protocol.SCHEMAS[mtype].items():
        if required:
            msg[field] = 1 if types is ANY else sample[types[0]]
    if mtype == "error":
        msg["kind"] = "load_error"
    return msg


@pytest.mark.parametrize("mtype", CHILD_TYPES)
def test_each_field_takes_exactly_its_types(mtype):
    """Field by field, value by value (every type a message can carry, the near misses
    first: a bool where an int goes, an int where a bool goes, None for a str): accepted
    if its schema allows that type, else refused naming the field; and a missing
    required field is refused naming it."""
    base = minimal(mtype)
    assert protocol.validate(through_the_wire(base)) == base
    for field, (types, required) in protocol.SCHEMAS[mtype].items():
        for value in SAMPLES:
            msg = dict(base, **{field: value})
            if mtype == "error" and field == "kind" and isinstance(value, str):
                continue  # (a str kind: only the known ones, below)
            if types is ANY or type(value) in types:
                assert protocol.validate(through_the_wire(msg)) == msg, (field, value)
            else:
                with pytest.raises(ProtocolError, match="field %r of %s message is a %s"
                                   % (field, mtype, type(value).__name__)):
                    protocol.validate(through_the_wire(msg))
        if required:
            msg = {k: v for k, v in base.items() if k != field}
            with pytest.raises(ProtocolError, match="%s message lacks field %r"
                               % (mtype, field)):
                protocol.validate(through_the_wire(msg))
    with pytest.raises(ProtocolError, match="unexpected field 'extra' in %s message" % mtype):
        protocol.validate(through_the_wire(dict(base, extra=1)))
    if mtype == "error":
        for kind in sorted(protocol.ERROR_KINDS):
            assert protocol.validate(through_the_wire(dict(base, kind=kind)))["kind"] == kind
        with pytest.raises(ProtocolError, match="unknown error kind 'timeout'"):
            protocol.validate(through_the_wire(dict(base, kind="timeout")))


@pytest.mark.parametrize("mtype", sorted(set(TYPES) - set(CHILD_TYPES)))
def test_a_parent_message_from_a_child_is_refused(mtype):
    with pytest.raises(ProtocolError, match="message type %r is not allowed here" % mtype):
        protocol.validate(through_the_wire(minimal(mtype)))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "v", "id", "data", "error", "kind", "message",
                                        "level", "msg", "cancel", "sync", "isolation", "x"]),
                       msgpack_values | st.sampled_from(["result", "error", "log", "ready",
                                                         "run", "action_error", 1]),
                       max_size=8))
def test_any_map_is_accepted_exactly_when_it_conforms(msg):
    """Whatever the map, validate() accepts it if and only if it conforms to its schema,
    and refuses it with ProtocolError (never another exception)."""
    m = through_the_wire(msg)
    if conforms(m):
        assert protocol.validate(m) is m
    else:
        with pytest.raises(ProtocolError):
            protocol.validate(m)


@settings(max_examples=200, deadline=None)
@given(msgpack_values, st.integers(min_value=1, max_value=50))
def test_valid_frames_survive_any_split(data, cut):
    frame = protocol.encode({"type": "result", "id": 1, "data": data})
    reader = FrameReader()
    got = []
    for i in range(0, len(frame), cut):
        got.extend(reader.feed(frame[i:i + cut]))
    assert len(got) == 1 and got[0]["id"] == 1
