"""Streaming console events down a connection: shared by the VMM's server and xvmd.

``stream_console(conn, request_id, console, action, name)`` subscribes to ``console`` (a
:class:`~xvm.console.Console`) as the ConsoleAttach ``action`` asks.  The reply carries
the initial state: the history (from ``action.offset`` if given, else all that is
retained), its position ``"offset"`` and whether input is open; then every later event
goes out as ``{"event": "console", "data"}``, ``{"event": "console-open"}`` or
``{"event": "console-closed", "reason"}``, until the client closes the connection or
falls :data:`EVENT_BACKLOG` events behind: it is then sent ``{"event": "console-dropped",
"reason"}`` and disconnected (the guest's output never piles up in the server).  Such a
client attaches again with the offset of the bytes it has, and loses nothing.
"""
import logging
import queue
import select
import socket
import threading

from ..errors import XvmError
from . import protocol as P

log = logging.getLogger(__name__)

EVENT_BACKLOG = 4096


def stream_console(conn, request_id, console, action, name):
    events = queue.Queue(EVENT_BACKLOG)
    overflow = threading.Event()

    def listener(event, payload):
        try:
            events.put_nowait((event, payload))
        except queue.Full:
            overflow.set()

    try:
        subscription = console.subscribe(listener, action.history, action.offset)
    except XvmError as e:  # an offset past the end of the output
        P.send_message(conn, P.error_reply(request_id, e))
        return
    try:
        history, is_open, reason = bytearray(), False, None
        while True:  # the synchronous replay: data..., then open or closed
            event, payload = events.get_nowait()
            if event == "data":
                history += payload
            else:
                is_open, reason = event == "open", payload
                break
        P.send_message(conn, P.reply(request_id, {"history": P.b64(bytes(history)), "open": is_open,
                                                   "reason": reason, "offset": subscription.start}))
        while not overflow.is_set():
            try:
                event, payload = events.get(timeout=0.25)
            except queue.Empty:
                if _peer_left(conn):
                    return
                continue
            if event == "data":
                message = {"event": "console", "data": P.b64(payload)}
            elif event == "open":
                message = {"event": "console-open"}
            else:
                message = {"event": "console-closed", "reason": payload}
            P.send_message(conn, message)
        log.warning("domain %s: a console client fell %d events behind and was disconnected",
                    name, EVENT_BACKLOG)
        P.send_message(conn, {"event": "console-dropped",
                              "reason": f"it fell {EVENT_BACKLOG} events behind"})
    except queue.Empty:
        raise RuntimeError("subscribe() did not replay the console state before returning") from None
    finally:
        subscription()


def _peer_left(conn):
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
