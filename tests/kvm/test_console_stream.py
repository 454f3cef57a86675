"""The console mirror (``dom.console``) against real VMM processes and xvmd: a mirror whose reader
is held up while the guest prints is dropped by the server for falling behind, attaches
again by itself from the bytes it has, and ends equal to the VMM's console log file -- no
gap, no repeat; an attach at an offset gets exactly the bytes from there; a bad offset gets
a precise error and the VMM goes on."""
import os
import socket
import time
import uuid as uuid_module

import pytest

import xvm
from xvm.host.channel import SocketChannel
from xvm.vmm import protocol as P

HELD_OUTPUT = 64 << 10  # bytes the guest prints while the mirror is held: one event each, so
# far beyond what the server queues (EVENT_BACKLOG) and a socket holds, and well within
# what the VMM's console retains (1 MiB)
TIMEOUT = 60.0


def wait_for(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def chatty(any_host, guest, request):
    """A busy guest printing a line every 2^8 iterations (as fast as its console goes) on
    either host, with the paths of its console log file and of the log its server
    (the VMM; xvmd for a remote host) writes warnings to."""
    name = f"chatty-{uuid_module.uuid4().hex[:8]}"  # xvmd's state is shared by the session
    dom = any_host.create(xvm.DomainConfig(name=name, kernel=guest("busy"), cmdline="shift=8", memory_mib=64))
    if "xvmd" in request.node.callspec.id:
        state = request.getfixturevalue("xvmd")[1]
        server_log = os.path.join(state, "xvmd.log")
    else:
        state = os.environ["XVM_STATE_DIR"]
        server_log = os.path.join(state, "log", f"vmm-{dom.uuid}.log")
    yield dom, os.path.join(state, "log", f"{name}.log"), server_log
    dom.destroy()


def test_a_mirror_dropped_for_falling_behind_attaches_again_and_equals_the_log_file(chatty):
    dom, console_log, server_log = chatty
    dom.console.expect("count", timeout=10)
    drops_before = read(server_log).count(b"console client fell")
    with dom.console._cond:  # the mirror's reader blocks on its next byte
        held_at = size(console_log)
        wait_for(lambda: size(console_log) > held_at + HELD_OUTPUT, "the guest to print while the mirror is held")
    wait_for(lambda: read(server_log).count(b"console client fell") > drops_before,
             "the server to drop the held-up mirror")
    dom.pause()
    expected = read(console_log)
    wait_for(lambda: len(dom.console.log()) >= len(expected), "the mirror to catch up")
    assert dom.console.log() == expected  # nothing lost, nothing repeated
    dom.resume()
    wait_for(lambda: b"count" in dom.console.log()[len(expected):], "the mirror to follow on")


@pytest.fixture
def paused(host, guest, state_dir):
    """A busy guest on the embedded host, paused after some output: (domain, its VMM's
    socket, its console log so far)."""
    dom = host.create(xvm.DomainConfig(name="offsets", kernel=guest("busy"), cmdline="shift=12", memory_mib=64))
    dom.console.expect(r"(count \d+\n.*){20}", timeout=10)
    dom.pause()
    yield dom, os.path.join(state_dir, "run", f"{dom.uuid}.sock"), read(os.path.join(state_dir, "log", "offsets.log"))
    dom.destroy()


def test_an_attach_at_an_offset_gets_exactly_the_bytes_from_there(paused):
    dom, path, output = paused
    channel = SocketChannel(path, dom.name)
    try:
        for offset in (0, 1, len(output) // 2, len(output)):
            got = []
            channel.attach_console(lambda event, payload: got.append(payload) if event == "data" else None,
                                   offset=offset)()
            assert b"".join(got) == output[offset:], f"offset {offset}"
        got = []  # without an offset, as older clients attach: all of it
        channel.attach_console(lambda event, payload: got.append(payload) if event == "data" else None)()
        assert b"".join(got) == output
    finally:
        channel.close()


def attach_raw(path, action):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        P.send_message(sock, P.request(1, action))
        reply, fds = P.recv_message(sock, timeout=10)
        P.close_fds(fds)
        return reply


@pytest.mark.parametrize("offset,error,message", [
    (-5, "BadAction", "ConsoleAttach.offset must be a byte position from 0 to 2**63-1, not -5"),
    (1 << 63, "BadAction", f"ConsoleAttach.offset must be a byte position from 0 to 2**63-1, not {1 << 63}"),
    ("0", "BadAction", "ConsoleAttach.offset must be an int or null, not string"),
    (False, "BadAction", "ConsoleAttach.offset must be an int or null, not bool"),
    ({}, "BadAction", "ConsoleAttach.offset must be an int or null, not object"),
    ((1 << 63) - 1, "ConfigError", "console offset {} is past the end of the output ({} bytes so far)"),
])
def test_a_bad_offset_is_refused_precisely_and_the_vmm_goes_on(paused, offset, error, message):
    dom, path, output = paused
    reply = attach_raw(path, {"type": "ConsoleAttach", "offset": offset})
    assert not reply["ok"] and reply["error"]["type"] == error
    assert reply["error"]["message"] == message.format(offset, len(output))
    reply = attach_raw(path, {"type": "ConsoleAttach", "offset": len(output)})  # the end: attached, nothing old
    assert reply["ok"] and reply["result"]["history"] == "" and reply["result"]["offset"] == len(output)
    dom.resume()
    assert dom.state is xvm.DomainState.RUNNING
    dom.console.expect("count", timeout=10)
