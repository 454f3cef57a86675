"""How a host reaches one domain's VMM: in-process, or over the VMM's control socket.

Both channels offer ``call(action, timeout)`` (the action's result, or the error the
VMM raised, as the same exception class) and ``attach_console(listener, history)``
(the listener gets ``("data", bytes)``, ``("open", None)`` and ``("closed", reason)``
events, after the retained history).  A VMM that cannot be reached raises
:class:`VmmGone`; one that does not answer within the timeout raises
:class:`VmmNotResponding` — a client never hangs on a stuck VMM.
"""
import errno
import os
import socket
import threading

from ..errors import ConfigError, HostError, XvmError
from ..vmm import actions as A
from ..vmm import protocol as P
from ..vmm.lifecycle import DomainState
from ..vmm.vmm import VmmGone

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

    def attach_console(self, listener, history=True):
        return self.vmm.console.subscribe(listener, history=history)

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

    def attach_console(self, listener, history=True, *, request=None):
        """Attach ``listener`` to the console; ``request`` replaces the ConsoleAttach action
        (xvmd wraps it in a DomainRequest).  Returns the function that detaches."""
        sock = self._connect()
        try:
            result = self._roundtrip(sock, 1, request or A.ConsoleAttach(history=history), self.timeout)
        except BaseException:
            sock.close()
            raise
        snapshot = P.unb64(result.get("history", ""))
        if snapshot:
            listener("data", snapshot)
        if result.get("open"):
            listener("open", None)
        else:
            listener("closed", result.get("reason") or "the domain is not running")
        reader = _ConsoleReader(sock, listener, self.name)
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
    """Reads console events from an attached connection on a thread of its own."""

    def __init__(self, sock, listener, name):
        self._sock = sock
        self._listener = listener
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"xvm-console-{name}", daemon=True)
        self._thread.start()

    def _run(self):
        reason = "the VMM ended"
        try:
            while True:
                message, fds = P.recv_message(self._sock)
                event = message.get("event")
                if event == "console":
                    self._listener("data", P.unb64(message.get("data", "")))
                elif event == "console-open":
                    self._listener("open", None)
                elif event == "console-closed":
                    reason = message.get("reason") or reason
                    self._listener("closed", reason)
        except (XvmError, OSError):
            pass
        finally:
            self._sock.close()
        if not self._stopped:
            self._listener("closed", reason)

    def stop(self, drain=0.0):
        if drain and self._thread is not threading.current_thread():
            self._thread.join(drain)  # up to the VMM's end of the connection, all events read
        self._stopped = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        self._sock.close()


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
