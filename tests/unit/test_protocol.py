"""The control protocol on real socketpairs: framing, fd passing, every error, errors on the wire.
The decoder on arbitrary and mutated bytes is a fuzz target: tests/fuzz/test_fuzz_protocol.py."""
import array
import json
import math
import os
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvm import errors
from xvm.errors import ConfigError, HostError, StateError, XvmError
from xvm.vmm import protocol
from xvm.vmm.protocol import (
    HEADER, MAGIC, MAX_FDS, MAX_MESSAGE, VERSION, BadMagic, BadPayload, ConnectionClosed,
    FrameDecoder, MessageTimeout, MessageTooLarge, ProtocolError, Truncated, UnsupportedVersion,
    b64, decode_error, encode_error, encode_frame, error_reply, event, parse_reply, parse_request,
    recv_message, register_error, reply, request, send_message, unb64,
)


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def frame(payload, version=VERSION, magic=MAGIC, length=None, flags=0):
    return HEADER.pack(magic, version, flags, len(payload) if length is None else length) + payload


def send_raw(sock, data, fds=()):
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(data)


def open_fds():
    """The descriptors open in this process (their numbers and what they are)."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            pass  # the listing's own
    return fds


# --- round trips --------------------------------------------------------------------------------

def test_header_layout():
    assert encode_frame({"a": 1}) == b"XVMP\x00\x01\x00\x00\x00\x00\x00\x07" + b'{"a":1}'
    assert HEADER.size == 12


def test_round_trip(pair):
    a, b = pair
    message = {"id": 7, "action": {"type": "Pause"}, "text": "héllo \U0001F600",
               "n": [1, 2.5, None]}
    send_message(a, message)
    assert recv_message(b) == (message, [])


def test_pipe_end_passed_works_on_the_other_side(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        send_message(a, {"event": "fd"}, fds=[w])
        message, fds = recv_message(b)
        assert message == {"event": "fd"} and len(fds) == 1 and fds[0] not in (r, w)
        assert os.get_inheritable(fds[0]) is False  # MSG_CMSG_CLOEXEC
        os.write(fds[0], b"through the socket")
        os.close(fds[0])
        assert os.read(r, 100) == b"through the socket"
    finally:
        os.close(r)
        os.close(w)


def test_eventfd_passed_works_on_the_other_side(pair):
    a, b = pair
    efd = os.eventfd(0)
    try:
        send_message(a, {"id": 1, "action": {"type": "Boot"}}, fds=[efd, efd])
        _, fds = recv_message(b)
        assert len(fds) == 2
        os.eventfd_write(fds[1], 5)
        for fd in fds:
            os.close(fd)
        assert os.eventfd_read(efd) == 5
    finally:
        os.close(efd)


def test_two_messages_in_one_send(pair):
    a, b = pair
    a.sendall(encode_frame({"n": 1}) + encode_frame({"n": 2}))
    assert recv_message(b) == ({"n": 1}, [])
    assert recv_message(b) == ({"n": 2}, [])


def test_fds_stay_with_their_own_frame(pair):
    # Both frames are queued before the first recv: each must get its own fds, no more.
    a, b = pair
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        send_message(a, {"n": 1}, fds=[w1])
        send_message(a, {"n": 2}, fds=[w2, r2])
        send_message(a, {"n": 3})
        results = [recv_message(b) for _ in range(3)]
        assert [m for m, _ in results] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert [len(f) for _, f in results] == [1, 2, 0]
        os.write(results[0][1][0], b"one")
        assert os.read(r1, 10) == b"one"
        for fd in results[0][1] + results[1][1]:
            os.close(fd)
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


def test_message_split_across_many_tiny_sends(pair):
    a, b = pair
    r, w = os.pipe()
    data = encode_frame({"id": 3, "result": "x" * 300})

    def dribble():
        send_raw(a, data[:1], [w])
        for i in range(1, len(data)):
            a.send(data[i:i + 1])

    thread = threading.Thread(target=dribble)
    thread.start()
    try:
        message, fds = recv_message(b, timeout=10)
        assert message == {"id": 3, "result": "x" * 300} and len(fds) == 1
        os.close(fds[0])
    finally:
        thread.join()
        os.close(r)
        os.close(w)


def test_exactly_one_mib_goes_through(pair):
    a, b = pair
    overhead = len(json.dumps({"s": ""}, separators=(",", ":")))
    message = {"s": "y" * (MAX_MESSAGE - overhead)}
    assert len(encode_frame(message)) == HEADER.size + MAX_MESSAGE
    thread = threading.Thread(target=send_message, args=(a, message))
    thread.start()
    try:
        assert recv_message(b, timeout=30) == (message, [])
    finally:
        thread.join()


def test_one_byte_over_is_refused_when_sending(pair):
    a, _ = pair
    overhead = len(json.dumps({"s": ""}, separators=(",", ":")))
    with pytest.raises(MessageTooLarge) as info:
        send_message(a, {"s": "y" * (MAX_MESSAGE - overhead + 1)})
    assert str(info.value) == "message of 1048577 bytes exceeds the limit of 1048576 bytes"
    assert (info.value.size, info.value.limit) == (MAX_MESSAGE + 1, MAX_MESSAGE)


def test_concurrent_senders_keep_frames_whole(pair):
    a, b = pair
    count, size = 4, 25

    def sender(n):
        for i in range(size):
            send_message(a, {"sender": n, "i": i, "pad": "z" * 50_000})

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    seen = {n: [] for n in range(count)}
    for _ in range(count * size):
        message, _ = recv_message(b, timeout=30)
        seen[message["sender"]].append(message["i"])
    for thread in threads:
        thread.join()
    assert all(seen[n] == list(range(size)) for n in range(count))


def test_bad_payload_leaves_the_connection_usable(pair):
    a, b = pair
    a.sendall(frame(b"[1]") + encode_frame({"next": True}))
    with pytest.raises(BadPayload):
        recv_message(b)
    assert recv_message(b) == ({"next": True}, [])


# --- errors on receipt --------------------------------------------------------------------------

@pytest.mark.parametrize("data, error, message", [
    (b"GET / HTTP/1.1\r\n", BadMagic,
     "bad magic b'GET ': expected b'XVMP' (the peer does not speak the xvm control protocol)"),
    (frame(b"{}", version=2), UnsupportedVersion,
     "protocol version 2 is not supported; this side speaks version 1"),
    (frame(b"", length=MAX_MESSAGE + 1), MessageTooLarge,
     "message of 1048577 bytes exceeds the limit of 1048576 bytes"),
    (frame(b"", length=0xFFFFFFFF), MessageTooLarge,
     "message of 4294967295 bytes exceeds the limit of 1048576 bytes"),
    (b"XVMP\x00", Truncated, "connection closed mid-frame: 5 of 12 header bytes received"),
    (frame(b'{"a":', length=10), Truncated,
     "connection closed mid-frame: 5 of 10 payload bytes received"),
    (frame(b"\xff{}"), BadPayload,
     "payload is not valid UTF-8: 'utf-8' codec can't decode byte 0xff in position 0: "
     "invalid start byte"),
    (frame(b'{"a":'), BadPayload,
     "payload is not valid JSON: Expecting value: line 1 column 6 (char 5)"),
    (frame(b'{"a":NaN}'), BadPayload, "payload is not valid JSON: NaN is not valid JSON"),
    (frame(b"[1, 2]"), BadPayload, "payload is a JSON array, not an object"),
    (frame(b'"s"'), BadPayload, "payload is a JSON string, not an object"),
    (frame(b""), BadPayload,
     "payload is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    (frame(b"[" * 100_000), BadPayload, "payload is not valid JSON: nested too deeply"),
])
def test_malformed_input_raises_a_precise_error_and_closes_the_fds(pair, data, error, message):
    a, b = pair
    r, w = os.pipe()
    try:
        before = open_fds()
        send_raw(a, data, [r, w])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(error) as info:
            recv_message(b, timeout=10)
        assert str(info.value) == message
        assert isinstance(info.value, ProtocolError) and isinstance(info.value, XvmError)
        assert not open_fds() - before  # none left (a collection may close others')
    finally:
        os.close(r)
        os.close(w)


def test_clean_eof_is_connection_closed(pair):
    a, b = pair
    a.close()
    with pytest.raises(ConnectionClosed, match="^peer closed the connection$") as info:
        recv_message(b)
    assert isinstance(info.value, XvmError) and isinstance(info.value, ConnectionError)
    assert not isinstance(info.value, ProtocolError)


def test_eof_after_a_whole_message_is_connection_closed(pair):
    a, b = pair
    send_message(a, {"last": 1})
    a.shutdown(socket.SHUT_WR)
    assert recv_message(b) == ({"last": 1}, [])
    with pytest.raises(ConnectionClosed):
        recv_message(b)


def test_flags_are_ignored(pair):
    a, b = pair
    a.sendall(frame(b"{}", flags=0xABCD))
    assert recv_message(b) == ({}, [])


def test_too_many_fds_are_refused_and_closed(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        with pytest.raises(ProtocolError, match="^17 fds in one message; the limit is 16$"):
            send_message(a, {}, fds=[r] * (MAX_FDS + 1))
        before = open_fds()
        send_raw(a, encode_frame({}), [r] * (MAX_FDS + 3))
        with pytest.raises(ProtocolError, match="^more than 16 fds sent with one message$"):
            recv_message(b, timeout=10)
        assert not open_fds() - before  # none left (a collection may close others')
    finally:
        os.close(r)
        os.close(w)


def test_fds_are_closed_on_timeout_mid_frame(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        before = open_fds()
        send_raw(a, encode_frame({"a": 1})[:-2], [r])
        with pytest.raises(MessageTimeout, match=r"^no complete message within 0\.05s$") as info:
            recv_message(b, timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        assert not open_fds() - before  # none left (a collection may close others')
    finally:
        os.close(r)
        os.close(w)


def test_send_to_a_closed_peer_is_connection_closed(pair):
    a, b = pair
    b.close()
    with pytest.raises(ConnectionClosed, match="^peer closed the connection"):
        send_message(a, {"x": 1})


def test_sending_a_bad_fd_is_a_host_error(pair):
    a, _ = pair
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(HostError, match="^sending on the control socket failed: Bad file") as info:
        send_message(a, {}, fds=[r])
    assert info.value.errno == 9


@pytest.mark.parametrize("message, text", [
    ([1], "a message must be a dict, not list"),
    ({"x": object()}, "message is not JSON-serializable: Object of type object is not JSON "
                      "serializable"),
    ({"x": math.nan}, "message is not JSON-serializable: Out of range float values are not "
                      "JSON compliant"),
])
def test_unsendable_messages(pair, message, text):
    with pytest.raises(BadPayload) as info:
        send_message(pair[0], message)
    assert str(info.value) == text


# --- FrameDecoder -------------------------------------------------------------------------------

def test_decoder_byte_by_byte_and_many_at_once():
    data = encode_frame({"n": 1}) + encode_frame({"n": 2}) + encode_frame({"n": 3})
    decoder = FrameDecoder()
    out = []
    for i in range(len(data)):
        assert decoder.needed >= 1
        out += decoder.feed(data[i:i + 1])
    assert out == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert not decoder.mid_frame
    decoder.eof()
    assert FrameDecoder().feed(data) == out


def test_decoder_needed_counts_header_then_payload():
    decoder = FrameDecoder()
    assert decoder.needed == 12
    data = encode_frame({"abc": 1})
    decoder.feed(data[:5])
    assert decoder.needed == 7
    decoder.feed(data[5:12])
    assert decoder.needed == len(data) - 12


def test_decoder_refuses_a_stranger_on_its_first_byte():
    with pytest.raises(BadMagic, match=r"^bad magic b'\{'"):
        FrameDecoder().feed(b"{")


def test_decoder_keeps_messages_before_a_bad_payload():
    decoder = FrameDecoder()
    data = encode_frame({"n": 1}) + frame(b"nope") + encode_frame({"n": 2})
    with pytest.raises(BadPayload):
        decoder.feed(data)
    assert decoder.feed(b"") == [{"n": 1}, {"n": 2}]


def test_decoder_stays_failed_after_losing_the_framing():
    decoder = FrameDecoder()
    with pytest.raises(UnsupportedVersion):
        decoder.feed(encode_frame({"n": 1}) + frame(b"{}", version=9))
    assert decoder.feed(b"") == [{"n": 1}]
    with pytest.raises(UnsupportedVersion, match="^protocol version 9 is not supported"):
        decoder.feed(encode_frame({"n": 2}))


def test_decoder_eof_mid_frame():
    decoder = FrameDecoder()
    decoder.feed(encode_frame({"n": 1})[:14])
    with pytest.raises(Truncated, match="^connection closed mid-frame: 2 of 7 payload bytes"):
        decoder.eof()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


# --- requests, replies, events ------------------------------------------------------------------

class _FakeAction:
    def to_json(self):
        return {"type": "Ping"}


def test_envelopes():
    assert request(1, _FakeAction()) == {"id": 1, "action": {"type": "Ping"}}
    assert request(2, {"type": "Boot"}) == {"id": 2, "action": {"type": "Boot"}}
    assert parse_request(request(2, {"type": "Boot"})) == (2, {"type": "Boot"})
    assert reply(3, {"state": "running"}) == {"id": 3, "ok": True, "result": {"state": "running"}}
    assert parse_reply(reply(3, [1])) == (3, [1])
    assert event("console", data=b64(b"hi")) == {"event": "console", "data": "aGk="}
    assert event("state", name="web", state="paused") == {"event": "state", "name": "web",
                                                          "state": "paused"}
    unattributed = error_reply(None, Truncated(3, 12, "header"))
    with pytest.raises(Truncated, match="^connection closed mid-frame: 3 of 12 header"):
        parse_reply(json.loads(json.dumps(unattributed)))
    failure = error_reply(4, StateError("domain is shutoff", state="shutoff", operation="pause"))
    assert failure["ok"] is False and failure["error"]["type"] == "StateError"
    with pytest.raises(StateError, match="^domain is shutoff$") as info:
        parse_reply(failure)
    assert (info.value.state, info.value.operation) == ("shutoff", "pause")


@pytest.mark.parametrize("bad, text", [
    ({"id": True, "action": {}}, "message id must be an int, not bool"),
    ({"id": 1}, "a request has exactly the keys 'id' and 'action', not ['id']"),
    ({"id": 1, "action": {}, "x": 0}, "a request has exactly the keys 'id' and 'action', not "
                                       "['action', 'id', 'x']"),
])
def test_bad_requests(bad, text):
    with pytest.raises(BadPayload) as info:
        parse_request(bad)
    assert str(info.value) == text


@pytest.mark.parametrize("bad, text", [
    ({"ok": True}, "a reply has the keys 'id' and 'ok', not ['ok']"),
    ({"id": "1", "ok": True, "result": 1}, "message id must be an int, not string"),
    ({"id": 5, "ok": 1, "result": 1}, "malformed reply to request 5: {'id': 5, 'ok': 1, "
                                      "'result': 1}"),
])
def test_bad_replies(bad, text):
    with pytest.raises(BadPayload) as info:
        parse_reply(bad)
    assert str(info.value) == text


def test_b64():
    assert unb64(b64(b"\x00\xffdata")) == b"\x00\xffdata"
    with pytest.raises(BadPayload, match=r"^not valid base64: 'a' \("):
        unb64("a")
    with pytest.raises(BadPayload, match=r"^not valid base64: 'é' \("):
        unb64("é")
    with pytest.raises(BadPayload, match="^expected a base64 string, not int$"):
        unb64(5)


# --- errors across the wire ---------------------------------------------------------------------

def wire(exc):
    """encode_error, through JSON text, then decode_error."""
    return decode_error(json.loads(json.dumps(encode_error(exc), allow_nan=False)))


SAMPLES = [
    errors.XvmError("plain"),
    errors.ConfigError("bad memory size"),
    errors.NotFoundError("no domain 'web'"),
    errors.StateError("cannot pause a shutoff domain", state="shutoff", operation="pause"),
    errors.HostError("open failed", 13),
    errors.KvmError("KVM_CREATE_VM", 12, "out of memory"),
    errors.KvmUnavailableError("/dev/kvm: No such file or directory", 2),
    errors.GuestMemoryError(0x1000, 0x10),
    errors.GuestError("triple fault"),
    errors.BootError("not an ELF"),
    errors.ConsoleTimeout("login:", 2.5, b"booting..."),
    MessageTooLarge(5_000_000),
    BadMagic(b"HTTP"),
]


def test_the_samples_cover_every_class_of_xvm_errors():
    public = {obj for obj in vars(errors).values()
              if isinstance(obj, type) and issubclass(obj, XvmError)}
    assert public == {type(e) for e in SAMPLES if type(e).__module__ == errors.__name__}


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_error_round_trip(exc):
    got = wire(exc)
    assert type(got) is type(exc)
    assert str(got) == str(exc)
    for name, value in vars(exc).items():
        if not name.startswith("_"):
            assert getattr(got, name) == value, name
    if isinstance(exc, HostError):
        assert (got.errno, got.strerror) == (exc.errno, exc.strerror)


def test_state_error_state_travels_as_a_string():
    import enum

    class State(enum.Enum):
        RUNNING = "running"

    got = wire(StateError("no", state=State.RUNNING, operation="start"))
    assert (got.state, got.operation) == ("running", "start")


def test_unregistered_subclass_decodes_as_its_nearest_registered_base():
    class DiskBusy(ConfigError):
        pass

    got = wire(DiskBusy("disk.img is locked"))
    assert type(got) is ConfigError and str(got) == "disk.img is locked"


def test_registered_class_is_recreated():
    @register_error
    class ShutdownTimeoutForTest(StateError, TimeoutError):
        pass

    got = wire(ShutdownTimeoutForTest("guest did not power off", state="running",
                                      operation="shutdown"))
    assert type(got) is ShutdownTimeoutForTest and got.state == "running"
    assert str(got) == "guest did not power off"


def test_register_error_refuses_strangers_and_clashes():
    with pytest.raises(TypeError):
        register_error(ValueError)

    class ConfigError(XvmError):  # the real one's name, another class
        pass

    with pytest.raises(ValueError, match="'ConfigError' is already registered"):
        register_error(ConfigError)
    register_error(errors.ConfigError)  # the same class again is fine


def test_unknown_type_is_an_xvm_error_with_the_message():
    got = decode_error({"type": "os.system", "message": "rm -rf", "attrs": {"x": 1}})
    assert type(got) is XvmError and str(got) == "rm -rf" and got.x == 1


def test_non_xvm_exception_is_an_internal_error():
    encoded = encode_error(KeyError("vcpu"))
    assert encoded == {"type": "InternalError", "message": "KeyError: 'vcpu'"}
    got = wire(KeyError("vcpu"))
    assert type(got) is XvmError and str(got) == "VMM internal error: KeyError: 'vcpu'"


def test_attrs_cannot_shadow_methods_or_args():
    got = decode_error({"type": "StateError", "message": "m",
                        "attrs": {"with_traceback": 1, "args": [1], "__class__": "x",
                                  "state": {"nested": 1}, "operation": [1]}})
    assert type(got) is StateError and got.args == ("m",)
    assert callable(got.with_traceback)
    assert not hasattr(got, "state") and not hasattr(got, "operation")


@pytest.mark.parametrize("bad, text", [
    ([], "error is a JSON array, not an object"),
    ({"type": "StateError"}, "error needs a string 'type' and 'message': {'type': 'StateError'}"),
])
def test_malformed_error_is_bad_payload(bad, text):
    got = decode_error(bad)
    assert type(got) is BadPayload and str(got) == text


@settings(max_examples=300, deadline=2000)
@given(json_values)
def test_decode_error_on_arbitrary_json(value):
    assert isinstance(decode_error(value), XvmError)


@settings(max_examples=150, deadline=2000)
@given(st.dictionaries(st.sampled_from(["type", "message", "bases", "attrs"]), json_values)
       | st.fixed_dictionaries({"type": st.sampled_from(sorted(protocol._ERRORS) + ["x"]),
                                "message": st.text(max_size=20)},
                               optional={"bases": st.lists(st.text(max_size=12), max_size=3),
                                         "attrs": st.dictionaries(st.text(max_size=10),
                                                                  json_values)}))
def test_decode_error_on_error_like_dicts(value):
    got = decode_error(value)
    assert isinstance(got, XvmError)
    str(got)


error_attrs = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
        lambda n: n not in {"args", "errno", "strerror"}),
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.binary(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    max_size=4)


@settings(max_examples=200, deadline=2000)
@given(st.sampled_from(sorted({c for c in protocol._ERRORS.values()
                               if c.__init__ in (Exception.__init__, XvmError.__init__)},
                              key=lambda c: c.__name__)),
       st.text(max_size=40), error_attrs)
def test_error_round_trip_property(cls, message, attrs):
    exc = cls(message)
    for name, value in attrs.items():
        setattr(exc, name, value)
    got = wire(exc)
    assert type(got) is cls and str(got) == message
    for name, value in attrs.items():
        assert getattr(got, name) == value
