"""How a host reaches one domain's VMM: in-process, or over the VMM's control socket.

Both channels offer ``call(action, timeout)`` (the action's result, or the error the
VMM raised, as the same exception class) and ``attach_console(listener, history, offset=)``
(the listener gets ``("data", bytes)``, ``("open", None)`` and ``("closed", reason)``
events, after the retained history, or the history from ``offset`` on).  A VMM that cannot be reached raises
:class:`VmmGone`; one that does not answer within the timeout raises
:class:`VmmNotResponding` — a client never hangs on a stuck VMM.
"""
import errno
import logging
import os
import socket
import threading

from ..errors import ConfigError, HostError, XvmError
from ..vmm import actions as A
from ..vmm import protocol as P
from ..vmm.lifecycle import DomainState
from ..vmm.vmm import VmmGone

log = logging.getLogger(__name__)

# Booting and destroying take time; nothing legitimate takes this long.  $XVM_VMM_TIMEOUT
# overrides it (seconds).
CALL_TIMEOUT = 60.0
CONNECT_TIMEOUT = 5.0


class VmmNotResponding(HostError, TimeoutError):
    """The domain's VMM did not answer in time."""


class LocalChannel:
    """A :class:`~xvm.vmm.vmm.Vmm` in this process."""

    def __init__(self, vmm):
        self.vmm = vmm

    def call(self, action, timeout=None):
        if isinstance(action, A.Wait):
            state = self.vmm.wait_for({DomainState(s) for s in action.states}, action.timeout)
            return state.value if state is not None else None
        return self.vmm.handle(action)

    def attach_console(self, listener, history=True, *, offset=None):
        return self.vmm.console.subscribe(listener, history, offset)

    def close(self, drain=0.0):
        pass


class SocketChannel:
    """The control socket of a VMM process: one connection for calls (serialized),
    one more per blocking wait or console attachment."""

    def __init__(self, path, name, peer=None):
        self.path = path
        self.name = name  # the domain's name, for messages
        self.peer = peer or f"the VMM of domain {name!r}"
        self.timeout = _env_timeout()
        self._lock = threading.Lock()
        self._sock = None
        self._next_id = 1
        self._consoles = []

    def _connect(self, timeout=CONNECT_TIMEOUT):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise VmmGone(f"{self.peer} is not running") from None
        except socket.timeout:
            sock.close()
            raise VmmNotResponding(f"{self.peer} did not accept a connection within {timeout:g}s") from None
        except OSError as e:
            sock.close()
            raise HostError(f"cannot reach {self.peer} at {self.path}: {e.strerror}", e.errno) from None
        sock.settimeout(None)
        return sock

    def _roundtrip(self, sock, request_id, action, timeout, fd=None):
        wire, attached = A.split_fd(action)  # an open file travels as a descriptor
        if isinstance(action, A.DomainRequest) and fd is not None:
            attached = [fd]
        try:
            P.send_message(sock, P.request(request_id, wire.to_json()), fds=attached)
            reply, fds = P.recv_message(sock, timeout=timeout)
        except (P.ConnectionClosed, BrokenPipeError, ConnectionResetError):
            raise VmmGone(f"{self.peer} ended") from None
        except HostError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET):
                raise VmmGone(f"{self.peer} ended") from None
            raise
        except TimeoutError:
            raise VmmNotResponding(f"{self.peer} did not answer {type(action).__name__} "
                                   f"within {timeout:g}s") from None
        for fd in fds:
            os.close(fd)
        if reply.get("ok"):
            return reply.get("result")
        raise P.decode_error(reply.get("error") or {})

    def call(self, action, timeout=None, *, wait=None, fd=None):
        """Send ``action``; ``wait`` (seconds, or -1 for no limit) marks a call that blocks
        on purpose (Wait): it gets a connection of its own and that much extra time.
        ``fd``: the descriptor a :class:`~xvm.vmm.actions.DomainRequest` carries for its
        inner action (a descriptor action's own ``fd`` is attached by itself)."""
        timeout = self.timeout if timeout is None else timeout
        if wait is None and isinstance(action, A.Wait):
            wait = -1 if action.timeout is None else action.timeout
        if wait is not None:
            sock = self._connect()
            try:
                return self._roundtrip(sock, 1, action, None if wait < 0 else wait + timeout, fd)
            finally:
                sock.close()
        with self._lock:
            if self._sock is None:
                self._sock = self._connect()
            request_id, self._next_id = self._next_id, self._next_id + 1
            try:
                return self._roundtrip(self._sock, request_id, action, timeout, fd)
            except (VmmGone, VmmNotResponding):
                self._sock.close()
                self._sock = None
                raise

    def attach_console(self, listener, history=True, *, offset=None, wrap=None):
        """Attach ``listener`` to the console (from ``offset``: :class:`~xvm.vmm.actions.ConsoleAttach`);
        ``wrap(attach)``: the action that carries the ConsoleAttach ``attach`` (xvmd wraps it
        in a DomainRequest).  Returns the function that detaches."""
        reader = _ConsoleReader(self, listener, wrap or (lambda attach: attach))
        reader.attach(A.ConsoleAttach(history=history, offset=offset))
        self._consoles.append(reader)
        return reader.stop

    def close(self, drain=0.0):
        """Close every connection.  ``drain``: seconds each console attachment may take to
        read what its VMM, which is ending, sent before it closed (the last lines a guest
        printed before a save, say), instead of dropping it."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        for reader in self._consoles:
            reader.stop(drain)
        self._consoles.clear()


class _ConsoleReader:
    """Reads console events from an attached connection on a thread of its own.  Dropped by
    the server for falling behind (``console-dropped``), it attaches again from the position
    of the bytes it has, so that the listener misses nothing and sees nothing twice."""

    def __init__(self, channel, listener, wrap):
        self._channel = channel
        self._listener = listener
        self._wrap = wrap
        self._lock = threading.Lock()
        self._sock = None
        self._position = None  # of the next byte; None from a server that does not say
        self._state = None  # the input state last told: ("open", None) or ("closed", reason)
        self._stopped = False
        self._thread = None

    def attach(self, attach):
        """Attach with the ConsoleAttach ``attach``; tell the listener the history and the
        input state (if it changed), then read on a thread (started by the first attach)."""
        sock = self._channel._connect()
        with self._lock:
            if self._stopped:
                sock.close()
                return
            self._sock = sock  # stop() can interrupt the round trip
        try:
            result = self._channel._roundtrip(sock, 1, self._wrap(attach), self._channel.timeout)
        except BaseException:
            sock.close()
            raise
        start = result.get("offset")
        if not isinstance(start, int) or isinstance(start, bool):
            start = None
        if attach.offset is not None and start != attach.offset:
            log.warning("domain %s: the console's output from byte %d to %s is no longer retained; "
                        "it goes on from there", self._channel.name, attach.offset, start)
        snapshot = P.unb64(result.get("history", ""))
        if snapshot:
            self._listener("data", snapshot)
        self._position = None if start is None else start + len(snapshot)
        state = ("open", None) if result.get("open") else \
            ("closed", result.get("reason") or "the domain is not running")
        if state != self._state:  # attached again: the listener knows the state unless it changed
            self._tell(state)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"xvm-console-{self._channel.name}",
                                            daemon=True)
            self._thread.start()

    def _tell(self, state):
        self._state = state
        self._listener(*state)

    def _run(self):
        reason = "the VMM ended"
        try:
            while True:
                message, fds = P.recv_message(self._sock)
                event = message.get("event")
                if event == "console":
                    data = P.unb64(message.get("data", ""))
                    self._listener("data", data)
                    if self._position is not None:
                        self._position += len(data)
                elif event == "console-open":
                    self._tell(("open", None))
                elif event == "console-closed":
                    reason = message.get("reason") or reason
                    self._tell(("closed", reason))
                elif event == "console-dropped" and self._position is not None:
                    log.info("domain %s: the console stream was dropped (%s); attaching again at byte %d",
                             self._channel.name, message.get("reason"), self._position)
                    self._sock.close()
                    self.attach(A.ConsoleAttach(offset=self._position))
        except (XvmError, OSError):
            pass
        finally:
            self._sock.close()
        if not self._stopped:
            self._tell(("closed", reason))

    def stop(self, drain=0.0):
        if drain and self._thread is not threading.current_thread():
            self._thread.join(drain)  # up to the VMM's end of the connection, all events read
        with self._lock:
            self._stopped = True
            sock = self._sock
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        sock.close()


def _env_timeout():
    value = os.environ.get("XVM_VMM_TIMEOUT")
    if not value:
        return CALL_TIMEOUT
    try:
        timeout = float(value)
    except ValueError:
        raise ConfigError(f"XVM_VMM_TIMEOUT must be a number of seconds, not {value!r}") from None
    if timeout <= 0:
        raise ConfigError(f"XVM_VMM_TIMEOUT must be positive, not {value!r}")
    return timeout
