"""Fuzz targets: the control socket's decoders, as a hostile client (or VMM) feeds them.

- the frame decoder (:class:`xvm.vmm.protocol.FrameDecoder`) on arbitrary bytes, on mutated
  frames, cut anywhere, and :func:`~xvm.vmm.protocol.recv_message` on a real socketpair:
  dict messages or a :class:`ProtocolError` / :class:`ConnectionClosed`, never a hang;
- the action decoder (:func:`xvm.vmm.actions.decode_action`) on any JSON, action-like
  objects and domain requests: an :class:`Action` that survives a JSON round trip, or
  :class:`BadAction`.

Seeds: ``corpus/protocol/*.bin`` (byte streams: valid frames and broken ones) and
``corpus/action/*.json`` (requests' action objects), replayed first and mutated.
"""
import json
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ, examples, hostile_tree, mutated, seeds
from xvm.vmm import actions
from xvm.vmm.actions import HOST_ACTIONS, VMM_ACTIONS, Action, decode_action
from xvm.vmm.protocol import (
    BadAction, ConnectionClosed, FrameDecoder, ProtocolError, encode_frame, recv_message,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
ACTION_SEEDS = st.sampled_from([json.loads(s) for s in seeds("action")])


def through_json(act, allowed=None):
    return decode_action(json.loads(json.dumps(act.to_json())), allowed)


# --- the frame decoder ---------------------------------------------------------------------------

def feed_all(data, cuts):
    """Feed *data* cut at *cuts*; returns (messages, error or None)."""
    decoder = FrameDecoder()
    out = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for start, end in zip(bounds, bounds[1:]):
            out += decoder.feed(data[start:end])
        out += decoder.feed(b"")
        decoder.eof()
    except ProtocolError as exc:
        return out, exc
    return out, None


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(300))
@given(mutated("protocol", max_size=512), st.lists(st.integers(min_value=0), max_size=8))
def test_decoder_on_arbitrary_bytes(data, cuts):
    messages, error = feed_all(data, cuts)
    assert all(isinstance(m, dict) for m in messages)
    assert error is None or isinstance(error, ProtocolError)


@st.composite
def mutated_frames(draw):
    """Frames of random JSON objects with bytes flipped, inserted, deleted or cut."""
    messages = draw(st.lists(json_objects, min_size=1, max_size=4))
    data = bytearray(b"".join(encode_frame(m) for m in messages))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        else:
            del data[pos:]
    return messages, bytes(data)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(60))
@given(mutated_frames(), st.lists(st.integers(min_value=0), max_size=8))
def test_decoder_on_mutated_frames(case, cuts):
    originals, data = case
    messages, error = feed_all(data, cuts)
    assert error is None or isinstance(error, ProtocolError)
    assert all(isinstance(m, dict) for m in messages)
    if data == b"".join(encode_frame(m) for m in originals):
        assert error is None and messages == originals


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(40))
@given(mutated("protocol", max_size=512))
def test_recv_message_on_arbitrary_bytes_never_hangs(data):
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        while True:
            try:
                message, fds = recv_message(b, timeout=5)
            except (ProtocolError, ConnectionClosed):
                break
            assert isinstance(message, dict) and fds == []
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,data", seeds("protocol", names=True), ids=[n for n, _ in seeds("protocol", names=True)])
def test_protocol_seeds(name, data):
    messages, error = feed_all(data, [])
    assert all(isinstance(m, dict) for m in messages)
    if name.startswith("valid"):
        assert error is None and messages
    else:
        assert isinstance(error, ProtocolError)


# --- the action decoder --------------------------------------------------------------------------

field_names = st.sampled_from(["data", "history", "offset", "key", "config", "domain", "new_name", "action",
                               "on", "count", "ratio", "name", "flag", "blob", "table", "tags",
                               "maybe", "type", "extra"])
action_like = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(actions._ACTIONS) + ["Nope"])},
    optional={"data": st.text(alphabet="QUJDaGk=", max_size=12) | json_values},
) | st.builds(
    lambda name, fields: {"type": name, **fields},
    st.sampled_from(sorted(actions._ACTIONS)),
    st.dictionaries(field_names, json_values | st.text(alphabet="QUJD=", max_size=8), max_size=8),
)


def check_decode(value, allowed=None):
    try:
        got = decode_action(value, allowed)
    except BadAction:
        return
    assert isinstance(got, Action)
    assert through_json(got) == got


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(60))
@given(json_values)
def test_decode_action_on_arbitrary_json(value):
    check_decode(value)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(60))
@given(action_like | ACTION_SEEDS.flatmap(hostile_tree), st.sampled_from([None, VMM_ACTIONS, HOST_ACTIONS]))
def test_decode_action_on_action_like_objects(value, allowed):
    check_decode(value, allowed)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(60))
@given(st.builds(lambda domain, inner: {"type": "DomainRequest", "domain": domain, "action": inner},
                 st.text(max_size=5), action_like | json_values))
def test_decode_action_on_domain_requests(value):
    check_decode(value, HOST_ACTIONS)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,data", seeds("action", names=True), ids=[n for n, _ in seeds("action", names=True)])
def test_action_seeds(name, data):
    value = json.loads(data)
    if name.startswith("valid"):
        assert through_json(decode_action(value)) == decode_action(value)
    else:
        with pytest.raises(BadAction):
            decode_action(value, HOST_ACTIONS if value.get("type") == "DomainRequest" else None)
