"""Fuzz target: the VMM's control socket end to end.  A real :class:`~xvm.vmm.server.VmmServer`
on a unix socket, in front of a real :class:`~xvm.vmm.vmm.Vmm` whose machine is a fake (no
/dev/kvm needed), gets random and hostile traffic on a connection of its own: garbage,
broken headers, valid frames with random JSON, well-formed requests for every action with
random fields, descriptors attached where none belong (or missing where one does),
frames cut short.  The server must answer or close that connection — never crash, never
hang — and keep serving a well-behaved client on another connection after every
example.  ConsoleAttach and Wait hold a connection open by design; ConsoleAttach is fuzzed
through its fields (a hostile ``offset``, ``history``) up to its first reply, not followed."""
import json
import os
import socket
import struct
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import FUZZ, examples, replay
from xvm.config import DomainConfig
from xvm.vmm import actions as A
from xvm.vmm import protocol as P
from xvm.vmm.server import VmmServer
from xvm.vmm.vmm import Vmm

ANSWER_TIMEOUT = 5.0


class FakeMachine:
    """The Vmm's machine protocol, doing nothing (pause, stats... all succeed)."""

    def __init__(self, console_sink):
        self.console_sink = console_sink

    def start(self):
        self.console_sink(b"booted\n")

    def pause(self):
        pass

    resume = power_button = pause

    def console_input(self, data):
        pass

    def stats(self):
        return {}

    def vcpu_thread_ids(self):
        return []

    def close(self):
        pass


def factory(config, console_sink, on_exit, restore=None):
    return FakeMachine(console_sink)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vmmsrv")
    kernel = directory / "k"
    kernel.write_bytes(b"x")
    config = DomainConfig(name="fuzzed", memory_mib=64, kernel=str(kernel))
    ids = iter(range(1, 1 << 30))
    vmm = Vmm(config, factory=factory, next_id=lambda: next(ids), linger=True, own_process=False).start()
    vmm.handle(A.Boot())
    path = str(directory / "vmm.sock")
    srv = VmmServer(vmm, path).start()
    yield srv, path
    srv.close()
    vmm.close()


# --- what a hostile client sends -------------------------------------------------------------

def _header(draw):
    magic = draw(st.sampled_from([P.MAGIC, b"XVMQ", b"\0\0\0\0"]))
    version = draw(st.sampled_from([P.VERSION, 0, 2, 0xFFFF]))
    length = draw(st.one_of(st.integers(0, 300), st.sampled_from([P.MAX_MESSAGE, P.MAX_MESSAGE + 1,
                                                                   0xFFFF_FFFF])))
    return struct.pack(">4sHHI", magic, version, draw(st.integers(0, 0xFFFF)), length), length


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4),
                    max_leaves=12)
NAMES = [cls.__name__ for cls in A.VMM_ACTIONS if cls not in (A.ConsoleAttach, A.Wait)] + ["Nope", "Define"]
FIELDS = ["path", "fd", "data", "states", "timeout", "weight", "cap", "vcpu", "cpus", "history", "name"]


@st.composite
def action_request(draw):
    action = {"type": draw(st.sampled_from(NAMES))}
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        action[field] = draw(JSON)
    return {"id": draw(st.one_of(st.integers(-5, 1 << 40), JSON)), "action": action}


@st.composite
def frame(draw):
    """(bytes to send, attach a descriptor)."""
    kind = draw(st.sampled_from(["garbage", "header", "json", "request", "request", "cut"]))
    if kind == "garbage":
        data = draw(st.binary(min_size=1, max_size=64))
    elif kind == "header":
        head, length = _header(draw)
        data = head + draw(st.binary(max_size=min(length, 64)))
    elif kind == "json":
        payload = draw(st.one_of(st.binary(max_size=64), JSON.map(lambda v: P.json.dumps(v).encode())))
        data = struct.pack(">4sHHI", P.MAGIC, P.VERSION, 0, len(payload)) + payload
    else:
        data = P.encode_frame(draw(action_request()))
        if kind == "cut":
            data = data[:draw(st.integers(1, len(data) - 1))]
    return data, draw(st.booleans())


def _send(sock, data, attach):
    if attach:
        with open(os.devnull, "rb") as f:
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", f.fileno()))])
    else:
        sock.sendall(data)


def _well_behaved(path):
    """A fresh client asks Ping and Info and is answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        for request_id, action in ((1, A.Ping()), (2, A.Info())):
            P.send_message(sock, P.request(request_id, action.to_json()))
            reply, fds = P.recv_message(sock, timeout=ANSWER_TIMEOUT)
            P.close_fds(fds)
            assert reply["id"] == request_id and reply["ok"], reply
    return reply["result"]


@replay("vmm_server", lambda data: {"frames": [(bytes.fromhex(h), attach) for h, attach in json.loads(data)["frames"]]})
@settings(FUZZ, max_examples=examples(60))
@given(frames=st.lists(frame(), min_size=1, max_size=8))
def test_vmm_server_end_to_end(server, frames):
    srv, path = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            for data, attach in frames:
                _send(sock, data, attach)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection already: allowed
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:  # every byte up to the server's close: answered, then closed, in time
            assert time.monotonic() < deadline, "the server neither answered nor closed"
            try:
                chunk, ancillary, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
            except ConnectionResetError:
                break
            except socket.timeout:
                pytest.fail("the server neither answered nor closed the connection")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    P.close_fds(struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) // 4 * 4]))
            if not chunk:
                break
    assert srv._acceptor.is_alive()
    info = _well_behaved(path)
    assert info["name"] == "fuzzed"


def test_fds_are_not_leaked(server):
    """Descriptors that came with refused requests are closed by the server."""
    srv, path = server
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            _send(sock, P.encode_frame({"id": 1, "action": {"type": "Pause"}}), True)
            P.recv_message(sock, timeout=ANSWER_TIMEOUT)
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/fd")) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= before + 2


HOSTILE_OFFSETS = st.one_of(JSON, st.integers(-2**70, 2**70), st.sampled_from([-1, 0, 7, 8, 2**63 - 1, 2**63]))


@replay("console_attach")
@example(fields={"history": False})  # none of the history: its position is the end
@settings(FUZZ, max_examples=examples(40))
@given(fields=st.dictionaries(st.sampled_from(["offset", "history"]), HOSTILE_OFFSETS, max_size=2))
def test_console_attach_fields(server, fields):
    """An attach with any offset is answered: the history from there (its position said)
    or a precise refusal; the VMM goes on serving."""
    srv, path = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        P.send_message(sock, P.request(1, {"type": "ConsoleAttach", **fields}))
        reply, fds = P.recv_message(sock, timeout=ANSWER_TIMEOUT)
        P.close_fds(fds)
    assert reply["id"] == 1
    if reply["ok"]:
        result, log = reply["result"], srv.vmm.console.log()
        offset = fields.get("offset")
        if offset is None:  # all the history, or none: from the end (an earlier example may have
            offset = 0 if fields.get("history", True) else len(log)  # written to the console)
        assert result["offset"] == offset
        assert P.unb64(result["history"]) == log[offset:]
    else:
        assert reply["error"]["type"] in ("BadAction", "ConfigError") and reply["error"]["message"]
    _well_behaved(path)
