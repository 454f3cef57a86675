"""The host side of a console attachment (xvm.host.channel._ConsoleReader): what an ending VMM
sends last -- the final lines a guest printed before a save, still on their way out of the VMM
when the host learns the domain stopped -- reaches the domain's console mirror when the host
drains the attachment (a domain saved, shut down or destroyed), and is not waited for otherwise."""
import socket
import threading
import time

from xvm.host.channel import _ConsoleReader
from xvm.vmm.actions import ConsoleAttach
from xvm.vmm import protocol as P

LINES = [b"count %d\n" % i for i in range(50)]


def _ending_vmm(vmm_end, delay):
    """The VMM's side: its last console output goes out ``delay`` s from now, then it exits."""
    def send():
        time.sleep(delay)
        try:
            for line in LINES:
                P.send_message(vmm_end, P.event("console", data=P.b64(line)))
        except OSError:
            pass  # the host let go already
        finally:
            vmm_end.close()
    thread = threading.Thread(target=send)
    thread.start()
    return thread


class _AttachedChannel:
    """The channel side a reader needs, its one connection already attached (nothing retained)."""

    name = "t"
    timeout = 5.0

    def __init__(self, sock):
        self.sock = sock

    def _connect(self):
        return self.sock

    def _roundtrip(self, sock, request_id, action, timeout):
        return {"history": "", "open": True, "reason": None, "offset": 0}


def _reader():
    host_end, vmm_end = socket.socketpair()
    got = []
    reader = _ConsoleReader(_AttachedChannel(host_end),
                            lambda event, payload: got.append(payload) if event == "data" else None, lambda a: a)
    reader.attach(ConsoleAttach())
    return reader, vmm_end, got


def test_an_ending_vmms_last_output_is_read_when_drained():
    reader, vmm_end, got = _reader()
    sender = _ending_vmm(vmm_end, 0.3)
    reader.stop(drain=5.0)
    sender.join()
    assert got == LINES


def test_without_draining_the_host_lets_go_at_once():
    reader, vmm_end, got = _reader()
    sender = _ending_vmm(vmm_end, 0.3)
    started = time.monotonic()
    reader.stop()
    assert time.monotonic() - started < 0.3
    sender.join()
    assert got == []
