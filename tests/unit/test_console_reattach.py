"""A console attachment over a VMM's control socket (xvm.vmm.streams, xvm.host.channel), no
/dev/kvm needed: a client that falls too far behind is dropped by the server and attaches
again from the bytes it has, losing and repeating nothing.  (The offsets against a real VMM
process: tests/kvm/test_console_stream.py.)"""
import logging
import threading
import time
import types

import pytest

from xvm.console import Console
from xvm.host.channel import SocketChannel
from xvm.vmm.server import VmmServer
from xvm.vmm.streams import EVENT_BACKLOG

CATCH_UP = 20.0  # seconds a released client has to catch up (it reads thousands of events)


@pytest.fixture
def vmm(tmp_path):
    """What a VMM's server streams from: its console (fed here as the serial port feeds it)."""
    vmm = types.SimpleNamespace(console=Console(), config=types.SimpleNamespace(name="streamed"))
    vmm.console._attach(lambda data: None)
    server = VmmServer(vmm, str(tmp_path / "vmm.sock")).start()
    vmm.console._feed(b"booted\n")
    yield vmm, server.path
    server.close()


class _Dropped(logging.Handler):
    """Notices the VMM's word that it dropped a console client."""

    def __init__(self):
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record):
        if "console client fell" in record.getMessage():
            self.seen.set()


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_client_dropped_for_falling_behind_attaches_again_and_misses_nothing(vmm):
    vmm, path = vmm
    got, running = bytearray(), threading.Event()
    running.set()

    def listener(event, payload):
        running.wait()  # the client, held up
        if event == "data":
            got.extend(payload)

    channel = SocketChannel(path, "streamed")
    detach = channel.attach_console(listener)
    dropped = _Dropped()
    logging.getLogger("xvm.vmm.streams").addHandler(dropped)
    try:
        running.clear()
        # One event per call, as the serial port feeds them: far more than the VMM queues and
        # the socket holds, and less than the console retains (1 MiB).
        for line in range(20 * EVENT_BACKLOG):
            vmm.console._feed(b"%d\n" % line)
        assert vmm.console.log().startswith(b"booted\n")
        running.set()
        assert dropped.seen.wait(CATCH_UP), "the VMM never dropped the held-up client"
        vmm.console._feed(b"after the drop\n")
        _wait_for(lambda: len(got) >= vmm.console.end, CATCH_UP, "the client to catch up")
        assert bytes(got) == vmm.console.log()  # no gap, no repeat
        vmm.console._feed(b"and on\n")  # still attached
        _wait_for(lambda: got.endswith(b"and on\n"), CATCH_UP, "the next line")
    finally:
        logging.getLogger("xvm.vmm.streams").removeHandler(dropped)
        running.set()
        detach()
        channel.close()
