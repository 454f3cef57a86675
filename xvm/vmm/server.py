"""The VMM's control socket: actions in, replies and console events out.

One thread per connection.  A connection sends requests (``{"id", "action"}``) and
gets one reply each, in order.  Two requests are served by the connection itself
rather than the control thread:

* ``ConsoleAttach``: the reply carries the retained console output (base64; from the
  request's ``offset`` on if it has one), its position and whether input is open; from
  then on the connection only *receives* events — ``{"event": "console", "data"}``,
  ``{"event": "console-open"}`` and ``{"event": "console-closed", "reason"}`` — until
  either side closes it.  A client that falls too far behind is told
  (``console-dropped``) and disconnected, and attaches again from its offset
  (:mod:`~xvm.vmm.streams`).
* ``Wait``: blocks this connection (never the control thread) until the domain is
  in one of the given states or the timeout passes.

Every message is validated (:func:`~xvm.vmm.protocol.recv_message`,
:func:`~xvm.vmm.actions.decode_action`); a malformed one gets an error reply, or
closes the connection if the framing itself is broken, and never reaches the VMM.
"""
import logging
import os
import socket
import threading

from ..errors import XvmError
from . import actions as A
from . import protocol as P
from .lifecycle import DomainState
from .streams import stream_console

log = logging.getLogger(__name__)

ACCEPTED = A.VMM_ACTIONS


class VmmServer:
    def __init__(self, vmm, path):
        self.vmm = vmm
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        try:
            self._listener.bind(path)
        finally:
            os.umask(old_umask)
        self._listener.listen(64)
        self._connections = set()
        self._busy = 0  # connections between reading a request and sending its reply
        self._idle = threading.Condition()
        self._threads = set()
        self._lock = threading.Lock()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="xvm-vmm-accept", daemon=True)

    def start(self):
        self._acceptor.start()
        return self

    def close(self, grace=2.0):
        """Stop accepting, remove the socket file, let replies in flight go out (up to
        ``grace`` seconds), then end every connection."""
        with self._lock:
            self._closed = True
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, grace)
        with self._lock:
            connections = list(self._connections)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # The connection threads end on their own (console streams notice within a poll);
        # the process exits right after this, so there is nothing to wait for.

    # -- connections --------------------------------------------------------------------------
    def _accept_loop(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._connections.add(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), name="xvm-vmm-conn", daemon=True)
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn):
        try:
            while True:
                request = P.next_request(conn)
                if request is None:
                    return
                message, fds = request
                with self._idle:
                    self._busy += 1
                try:
                    if not self._request(conn, message, fds):
                        return
                finally:
                    P.close_fds(fds)  # a descriptor action's file: the VMM is done with it
                    with self._idle:
                        self._busy -= 1
                        self._idle.notify_all()
        except OSError:
            return  # the client went away mid-reply
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())
            conn.close()

    def _request(self, conn, message, fds):
        """Serve one request (``fds``: the descriptors that came with it, closed by the
        caller); False when the connection is done (a console stream ended)."""
        request_id = message.get("id")
        try:
            if not isinstance(request_id, int) or isinstance(request_id, bool):
                raise P.BadPayload("a request needs an integer 'id'")
            action = A.join_fd(A.decode_action(message.get("action"), allowed=ACCEPTED), fds)
        except XvmError as e:
            # id true is a bool, not an id: the reply names no request (error_reply refuses a bool)
            known = isinstance(request_id, int) and not isinstance(request_id, bool)
            P.send_message(conn, P.error_reply(request_id if known else None, e))
            return True
        if isinstance(action, A.ConsoleAttach):
            with self._idle:  # a stream is not a reply in flight
                self._busy -= 1
                self._idle.notify_all()
            try:
                self._stream_console(conn, request_id, action)
            finally:
                with self._idle:
                    self._busy += 1
            return False
        try:
            result = self._wait(action) if isinstance(action, A.Wait) else self.vmm.handle(action)
        except BaseException as e:
            reply = P.error_reply(request_id, e)
        else:
            reply = P.reply(request_id, result)
        P.send_message(conn, reply)
        return True

    def _wait(self, action):
        try:
            states = {DomainState(s) for s in action.states}
        except ValueError:
            raise P.BadPayload(f"Wait: states must be among {[s.value for s in DomainState]}, "
                               f"not {action.states!r}") from None
        timeout = None if action.timeout is None or action.timeout < 0 else action.timeout
        state = self.vmm.wait_for(states, timeout)
        return state.value if state is not None else None

    def _stream_console(self, conn, request_id, action):
        stream_console(conn, request_id, self.vmm.console, action, self.vmm.config.name)


