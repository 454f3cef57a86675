"""Fuzz target: the live-migration data stream as a hostile source VMM sends it to the
destination VMM's receiver (:class:`xvm.migration.precopy.Incoming`), over a real TCP
connection on the loopback.

Each example is a whole byte stream: a HELLO (right, or another magic, major version or
token), a CPUID frame (mostly right; or garbage, or another frame in its place), then frames with valid framing and hostile contents (pages and zero ranges
outside guest RAM, unaligned, overlapping, huge or wrapping; truncated payloads; lengths
past the end; unknown or out-of-turn types; ROUNDs and STATEs of any length; STATE
blobs of garbage, non-UTF-8, nested past the recursion limit, or the real state with
hostile values in it), cut anywhere.  The stream is replayed after the checked-in seeds
of ``corpus/migration/``.

The oracle is :func:`reference`, the rules of ``xvm/migration/stream.py`` written out
independently: the receiver must stop with a :class:`MigrationError` exactly where they
say the stream is bad (or, at a STATE, build the state or refuse it with a
MigrationError), never with another exception, never waiting (the sender closes its end),
and guest RAM must then hold exactly what the frames before that point wrote: no byte
more, none outside the frame's range.

The other direction (:func:`test_migration_replies`): what a hostile destination (or
source host) answers -- HELLO, then READY/RUNNING (the source VMM), COMMIT (the destination
VMM) or CONTROL JSON (the hosts' control connection) -- read by a
:class:`~xvm.migration.stream.Channel` over a socketpair: the same kind of oracle, seeds in
``corpus/migration_replies/``.
"""
import json
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ, examples, hostile_tree, seeds
from xvm.config import DomainConfig
from xvm.kvm.memory import PAGE_SIZE
from xvm.migration import stream as S
from xvm.migration.precopy import Incoming
from xvm.migration.stream import MigrationError
from xvm.vmm.actions import MigrateReceive

TOKEN = bytes(range(32))  # as corpus/make_corpus.py writes the seeds
CONFIG = DomainConfig.from_dict({  # the machine the seeds' STATE describes
    "name": "seed", "uuid": "00000000-0000-4000-8000-000000000001", "memory_mib": 16,
    "kernel": "/nonexistent/xvm-fuzz-seed.elf", "disks": [{"path": "/nonexistent/xvm-fuzz-seed.img"}]})
RAM = CONFIG.memory_bytes
SEEDS = seeds("migration")
MAX_SMALL = 4096  # the most a ROUND (or an empty frame) may carry: room for a newer minor version


class Vmm:
    """What Incoming reads of its VMM before it hands the received machine over."""

    config = CONFIG


# --- the rules -----------------------------------------------------------------------------------

class Pages(dict):
    """Guest RAM as the rules leave it, sparse: page number -> its bytes (absent: zero)."""

    def write(self, gpa, data):
        for at in range(0, len(data), PAGE_SIZE):
            page = self.setdefault((gpa + at) // PAGE_SIZE, bytearray(PAGE_SIZE))
            chunk = data[at:at + PAGE_SIZE]
            page[:len(chunk)] = chunk

    def zero(self, gpa, size):
        first, end = gpa // PAGE_SIZE, (gpa + size) // PAGE_SIZE
        for page in [p for p in self if first <= p < end]:
            del self[page]


def allocated_pages(region):
    """The pages of a memfd-backed region that hold data (the rest are holes: zero)."""
    return {page for start, end in region.data_extents() for page in range(start // PAGE_SIZE, end // PAGE_SIZE)}


def same_ram(region, want):
    """Does ``region`` hold exactly the pages ``want`` (a :class:`Pages`), zero elsewhere?
    Reads only the pages written (memfd extents), not all 16 MiB."""
    for page in allocated_pages(region) | set(want):
        have = region.mapping[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        if have != want.get(page, bytes(PAGE_SIZE)):
            return False
    return True


def reference(stream, ram=RAM, token=TOKEN):
    """``(outcome, memory, state payload)`` the receiver must reach on ``stream``.  Outcome:
    the ``what``s a MigrationError may have ("protocol": a frame breaks the rules; "peer":
    the stream ends early, or an ERROR frame; "version": another major version), or
    "state": a whole STATE frame arrived (the receiver builds it, or refuses it with
    "state" or "protocol").  ``memory``: guest RAM as the frames before that point left it."""
    memory = Pages()
    at = 0
    PROTOCOL, PEER = {"protocol"}, {"peer"}

    def take(n):
        nonlocal at
        chunk = stream[at:at + n]
        at += len(chunk)
        return chunk

    if len(stream) < len(S.MAGIC):
        return PEER, memory, None
    if stream[:len(S.MAGIC)] != S.MAGIC and stream[0] == S.ERROR:  # refused before its HELLO
        return {"peer", "version"}, memory, None  # "version" if its text says so
    hello = take(S.HELLO.size)
    if len(hello) < S.HELLO.size:
        return PEER, memory, None
    magic, major, _, their_token = S.HELLO.unpack(hello)
    if magic != S.MAGIC:
        return PROTOCOL, memory, None
    if major != S.MAJOR:
        return {"version"}, memory, None
    if their_token != token:
        return PROTOCOL, memory, None
    head = take(S.FRAME.size)  # the CPUID comes first: a JSON list of 7 u32s per entry
    if len(head) < S.FRAME.size:
        return PEER, memory, None
    kind, length = S.FRAME.unpack(head)
    if kind == S.ERROR:
        return PEER, memory, None
    if kind != S.CPUID or length > S.MAX_CONTROL:
        return PROTOCOL, memory, None
    payload = take(length)
    if len(payload) < length:
        return PEER, memory, None
    if not valid_cpuid(payload):
        return PROTOCOL, memory, None
    while True:
        head = take(S.FRAME.size)
        if len(head) < S.FRAME.size:
            return PEER, memory, None
        kind, length = S.FRAME.unpack(head)
        if kind == S.PAGES:  # u64 address, whole pages, all inside RAM
            size = length - S.ADDRESS.size
            if size <= 0 or size % PAGE_SIZE:
                return PROTOCOL, memory, None
            address = take(S.ADDRESS.size)
            if len(address) < S.ADDRESS.size:
                return PEER, memory, None
            (gpa,) = S.ADDRESS.unpack(address)
            if gpa % PAGE_SIZE or gpa + size > ram:
                return PROTOCOL, memory, None
            data = take(size)
            memory.write(gpa, data)  # a cut payload: what arrived is in RAM
            if len(data) < size:
                return PEER, memory, None
        elif kind == S.ZERO:  # u64 address, u64 length: whole pages inside RAM
            if length != S.RANGE.size:
                return PROTOCOL, memory, None
            data = take(S.RANGE.size)
            if len(data) < S.RANGE.size:
                return PEER, memory, None
            gpa, size = S.RANGE.unpack(data)
            if gpa % PAGE_SIZE or size % PAGE_SIZE or size == 0 or gpa + size > ram:
                return PROTOCOL, memory, None
            memory.zero(gpa, size)
        elif kind == S.ROUND:  # u32 iteration (a newer minor may add a little)
            if not S.ROUND_NUMBER.size <= length <= MAX_SMALL:
                return PROTOCOL, memory, None
            if len(take(length)) < length:
                return PEER, memory, None
        elif kind == S.STATE:
            if length > S.MAX_CONTROL:
                return PROTOCOL, memory, None
            payload = take(length)
            if len(payload) < length:
                return PEER, memory, None
            return "state", memory, payload
        elif kind == S.ERROR:
            return PEER, memory, None
        else:  # unknown, or a type the source never sends here
            return PROTOCOL, memory, None


def valid_cpuid(payload):
    try:
        entries = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return isinstance(entries, list) and all(
        isinstance(e, list) and len(e) == 7 and all(type(x) is int and 0 <= x < 1 << 32 for x in e)
        for e in entries)


def receive(stream, inspect):
    """Feed ``stream`` to a real receiver over TCP, then call ``inspect(outcome, its RAM
    region or None, the state it built)`` before the receiver is let go."""
    listener = S.listening_socket("127.0.0.1")
    try:
        incoming = Incoming(Vmm(), MigrateReceive(token=TOKEN.hex(), fd=listener.fileno()))
        port = listener.getsockname()[1]
    finally:
        listener.close()
    sender = threading.Thread(target=send, args=(port, stream), daemon=True)
    sender.start()
    try:
        try:
            incoming._receive()
            outcome = "state"
        except MigrationError as e:
            outcome = e
        inspect(outcome, incoming.memory.regions[0] if incoming.memory is not None else None, incoming.state)
    finally:
        if incoming.channel is not None:
            incoming.channel.close()
        incoming._listener.close()
        incoming.release()
        sender.join(10)
        assert not sender.is_alive(), "the sender is stuck"


def send(port, stream):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # the receiver's HELLO and ERROR
                pass
        except OSError:  # the receiver gave up and closed
            pass


def check(stream):
    want, want_memory, payload = reference(stream)

    def inspect(outcome, region, state):
        if want == "state":
            if payload == VALID_STATE:
                assert outcome == "state", f"the receiver refused the real machine state: {outcome}"
            elif outcome == "state":
                assert state is not None
            else:
                assert outcome.what in ("state", "protocol"), outcome
        else:
            assert outcome != "state", "the receiver accepted a stream the rules refuse"
            assert outcome.what in want, f"{outcome.what}: {outcome} (the rules: {want})"
        if region is not None:  # None: refused before any RAM was made
            assert region.size == RAM and same_ram(region, want_memory), \
                "guest RAM differs from what the frames wrote"
        else:
            assert not want_memory

    receive(stream, inspect)


# --- generated streams ---------------------------------------------------------------------------

def _valid_state():
    stream = dict(seeds("migration", names=True)).get("valid.bin")
    assert stream, "corpus/migration/valid.bin is missing (see tests/fuzz/make_corpus.py)"
    outcome, _, payload = reference(stream)
    assert outcome == "state"
    return payload


VALID_STATE = _valid_state()


def frame(kind, payload=b"", length=None):
    return S.FRAME.pack(kind, len(payload) if length is None else length) + payload


def mostly(good, bad):
    """``good`` three times in four (a stream must get past its first frames to reach the
    later ones), else ``bad``."""
    return st.integers(0, 3).flatmap(lambda i: bad if i == 0 else good)


U32 = st.integers(0, 0xFFFF_FFFF)
U64 = st.integers(0, (1 << 64) - 1)
LAST_PAGE = RAM // PAGE_SIZE - 1
# Pages drawn from a few, so that frames overlap (a zero range over pages sent before).
GOOD_PAGE = st.one_of(st.integers(0, 7), st.integers(LAST_PAGE - 3, LAST_PAGE), st.integers(0, LAST_PAGE))
PAGE_ADDRESS = mostly(GOOD_PAGE.map(lambda p: p * PAGE_SIZE), st.one_of(
    st.sampled_from([RAM, RAM + PAGE_SIZE, 1 << 32, (1 << 64) - PAGE_SIZE, 1, 0x800, 0xFFF]), U64))


@st.composite
def pages(draw):
    gpa, count = draw(PAGE_ADDRESS), draw(mostly(st.integers(1, 3), st.just(0)))
    data = bytes([draw(st.integers(1, 255))]) * (count * PAGE_SIZE)
    length = draw(mostly(st.just(S.ADDRESS.size + len(data)), st.one_of(U32, st.sampled_from(
        [0, S.ADDRESS.size, S.ADDRESS.size + 1, S.ADDRESS.size + len(data) + PAGE_SIZE, 0xFFFF_FFFF,
         S.ADDRESS.size + 0xFFFF_F000]))))
    return frame(S.PAGES, S.ADDRESS.pack(gpa) + data, length)


@st.composite
def zero(draw):
    gpa = draw(PAGE_ADDRESS)
    size = draw(mostly(st.integers(1, 8).map(lambda n: n * PAGE_SIZE), st.one_of(
        st.integers(0, 2 * PAGE_SIZE), st.sampled_from([RAM, RAM - gpa % (1 << 64) + PAGE_SIZE, 1 << 63]), U64)))
    length = draw(mostly(st.just(S.RANGE.size), st.integers(0, 32)))
    return frame(S.ZERO, S.RANGE.pack(gpa, size % (1 << 64)), length)


@st.composite
def round_(draw):
    return frame(S.ROUND, S.ROUND_NUMBER.pack(draw(U32)),
                 draw(mostly(st.just(S.ROUND_NUMBER.size), st.one_of(st.sampled_from([0, 3, 5, 0xFFFF_FFFF]), U32))))


STATE_PAYLOADS = st.one_of(  # the real state, with hostile values in it, or garbage
    st.just(VALID_STATE), hostile_tree(json.loads(VALID_STATE)).map(lambda doc: json.dumps(doc).encode()),
    st.binary(max_size=64),
    st.sampled_from([b"[" * 3000, b"{\"machine\":" * 3000, b"\xff\xfe", b"null", b"{}", b"[]", b"1e999"]))


@st.composite
def state(draw):
    payload = draw(STATE_PAYLOADS)
    length = draw(mostly(st.just(len(payload)), st.one_of(st.sampled_from([S.MAX_CONTROL + 1, 0xFFFF_FFFF]), U32)))
    return frame(S.STATE, payload, length)


OTHER = st.one_of(
    st.builds(frame, st.sampled_from([S.READY, S.COMMIT, S.RUNNING, S.CONTROL, S.ERROR]), st.binary(max_size=16)),
    st.builds(frame, st.integers(0, 255).filter(lambda k: k not in S.NAMES), st.binary(max_size=16)),
    st.binary(min_size=1, max_size=24))

FRAMES = st.one_of(pages(), pages(), zero(), zero(), round_(), round_(), state(), OTHER)


@st.composite
def hellos(draw):
    return S.HELLO.pack(draw(st.sampled_from([S.MAGIC] * 8 + [b"XVMSNAP\0", bytes([S.ERROR]) + bytes(7)])),
                        draw(st.sampled_from([S.MAJOR] * 8 + [0, S.MAJOR + 1, 0xFFFF])), draw(st.integers(0, 0xFFFF)),
                        draw(st.sampled_from([TOKEN] * 8 + [bytes(32), TOKEN[::-1]])))


VALID_CPUID = frame(S.CPUID, json.dumps([[1, 0, 0, 0x806F8, 0x800, 0xFEDA3203, 0x178BFBFF],
                                         [7, 0, 1, 0, 0x219C07AB, 0, 0]]).encode())
CPUIDS = mostly(st.just(VALID_CPUID), st.one_of(
    st.builds(frame, st.just(S.CPUID), st.sampled_from([b"[[1,2,3]]", b"[[1,0,0,0,0,0,4294967296]]", b"[[true,0,0,0,0,0,0]]",
                                                        b"{}", b"null", b"[" * 3000, b"\xff", b"[[-1,0,0,0,0,0,0]]"])),
    st.builds(frame, st.just(S.CPUID), st.just(b"[]"), st.sampled_from([S.MAX_CONTROL + 1, 0xFFFF_FFFF, 1])),
    FRAMES))


@st.composite
def streams(draw):
    data = draw(hellos()) + draw(CPUIDS) + b"".join(draw(st.lists(FRAMES, max_size=8)))
    if draw(st.integers(0, 3)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    return data


# --- the targets ---------------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("stream", SEEDS, ids=[name for name, _ in seeds("migration", names=True)])
def test_migration_stream_seeds(stream):
    check(stream)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(100))
@given(streams())
def test_migration_stream(stream):
    check(stream)


# --- the other direction: what a hostile destination answers -------------------------------------

def reference_replies(stream, steps):
    """The ``what``s of the MigrationError a reader of ``steps`` must raise on ``stream``
    (``steps``: the frames it expects in turn, READY/RUNNING/COMMIT empty, CONTROL JSON),
    or "ok"."""
    at = 0

    def take(n):
        nonlocal at
        chunk = stream[at:at + n]
        at += len(chunk)
        return chunk

    if len(stream) < len(S.MAGIC):
        return {"peer"}
    if stream[:len(S.MAGIC)] != S.MAGIC and stream[0] == S.ERROR:
        return {"peer", "version"}
    hello = take(S.HELLO.size)
    if len(hello) < S.HELLO.size:
        return {"peer"}
    magic, major, _, _ = S.HELLO.unpack(hello)
    if magic != S.MAGIC:
        return {"protocol"}
    if major != S.MAJOR:
        return {"version"}
    for step in steps:
        head = take(S.FRAME.size)
        if len(head) < S.FRAME.size:
            return {"peer"}
        kind, length = S.FRAME.unpack(head)
        if kind == S.ERROR:
            return {"peer"}
        if kind != step:
            return {"protocol"}
        if length > (S.MAX_CONTROL if step == S.CONTROL else MAX_SMALL):
            return {"protocol"}
        payload = take(length)
        if len(payload) < length:
            return {"peer"}
        if step == S.CONTROL:
            try:
                json.loads(payload)
            except (ValueError, RecursionError):
                return {"protocol"}
    return "ok"


def read_replies(stream, steps):
    """What a :class:`~xvm.migration.stream.Channel` reading ``steps`` makes of ``stream``
    (over a real socketpair): "ok", or the MigrationError."""
    a, b = socket.socketpair()
    sender = threading.Thread(target=_send_all, args=(a, stream), daemon=True)
    sender.start()
    channel = S.Channel(b, "the destination VMM 127.0.0.1:1")
    channel.settimeout(10)
    try:
        channel.recv_hello()
        for step in steps:
            if step == S.CONTROL:
                channel.recv_json(S.CONTROL)
            else:
                channel.expect(step)
        return "ok"
    except MigrationError as e:
        return e
    finally:
        channel.close()
        sender.join(10)
        assert not sender.is_alive(), "the sender is stuck"


def _send_all(sock, stream):
    with sock:
        try:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except OSError:
            pass


STEPS = st.sampled_from([(S.READY, S.RUNNING), (S.COMMIT,), (S.CONTROL,), (S.CONTROL, S.CONTROL)])
REPLY = st.one_of(
    st.builds(frame, st.sampled_from([S.READY, S.COMMIT, S.RUNNING]), st.binary(max_size=8)),
    st.builds(frame, st.sampled_from([S.READY, S.COMMIT, S.RUNNING]), st.just(b""),
              st.sampled_from([MAX_SMALL, MAX_SMALL + 1, 0xFFFF_FFFF])),
    st.builds(frame, st.just(S.CONTROL), st.one_of(
        st.sampled_from([b'{"ok":true,"port":1,"token":"00"}', b"[" * 3000, b"\xff", b"{"]), st.binary(max_size=16))),
    st.builds(frame, st.just(S.CONTROL), st.just(b"{}"), st.sampled_from([S.MAX_CONTROL + 1, 0xFFFF_FFFF])),
    st.builds(frame, st.integers(0, 255), st.binary(max_size=16)),
    st.binary(min_size=1, max_size=16))


@st.composite
def replies(draw):
    data = draw(hellos()) + b"".join(draw(st.lists(REPLY, max_size=3)))
    if draw(st.integers(0, 3)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    return draw(STEPS), data


def check_replies(steps, stream):
    want, got = reference_replies(stream, steps), read_replies(stream, steps)
    if want == "ok":
        assert got == "ok", got
    else:
        assert got != "ok", "the reader accepted what the rules refuse"
        assert got.what in want, f"{got.what}: {got} (the rules: {want})"


REPLY_SEEDS = {name: json.loads(data) for name, data in seeds("migration_replies", names=True)}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(REPLY_SEEDS))
def test_migration_replies_seeds(name):
    """corpus/migration_replies/*.json: {"steps": frame names the reader expects, "stream": hex}."""
    seed = REPLY_SEEDS[name]
    steps = tuple(getattr(S, step) for step in seed["steps"])
    stream = bytes.fromhex(seed["stream"])
    check_replies(steps, stream)
    assert (read_replies(stream, steps) == "ok") == name.startswith("valid")


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(100))
@given(replies())
def test_migration_replies(case):
    check_replies(*case)
