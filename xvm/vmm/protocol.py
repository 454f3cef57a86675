"""The control protocol spoken on a VMM's control socket and on xvmd's host socket.

A stream of *frames* on a unix stream socket.  Every frame is a 12-byte
header in network byte order, then the payload::

    magic    4 bytes  b"XVMP"
    version  u16      VERSION (1)
    flags    u16      reserved: sent as 0, ignored on receipt
    length   u32      payload length in bytes, at most MAX_MESSAGE (1 MiB)
    payload  length bytes: one JSON object, UTF-8

File descriptors (at most MAX_FDS) travel as SCM_RIGHTS ancillary data on the
frame's first ``sendmsg``; :func:`recv_message` reads exactly one frame at a
time, so the fds it returns are that frame's.  Bytes inside JSON are base64
strings (:func:`b64` / :func:`unb64`).

Messages are one of three shapes:

* request: ``{"id": int, "action": {"type": "Pause", ...}}`` (see
  :mod:`xvm.vmm.actions`);
* reply, one per request, with the request's id (``None`` in an error reply
  to a frame too malformed to have one):
  ``{"id": int, "ok": True, "result": <any JSON value>}`` or
  ``{"id": int, "ok": False, "error": {"type": "StateError", "message": str,
  "bases": [str, ...], "attrs": {name: value}}}`` (:func:`encode_error`);
* event, unsolicited: ``{"event": str, ...}``, e.g.
  ``{"event": "console", "data": "<base64>"}`` or
  ``{"event": "state", "state": "paused", "reason": "..."}``.

Every malformed input raises a :class:`ProtocolError` subclass with a precise
message, and fds that came with a bad frame are closed.  A clean end of
stream before a frame's first byte raises :class:`ConnectionClosed`.
"""
import array
import base64
import binascii
import enum
import json
import math
import operator
import os
import re
import select
import socket
import struct
import threading
import time
import weakref

from .. import errors as _errors_module
from ..errors import HostError, XvmError

MAGIC = b"XVMP"
VERSION = 1
HEADER = struct.Struct(">4sHHI")
MAX_MESSAGE = 1 << 20
MAX_FDS = 16


class ProtocolError(XvmError):
    """The peer sent something that is not a valid message of this protocol."""


class BadMagic(ProtocolError):
    """The stream does not start with :data:`MAGIC`: the peer does not speak this protocol."""

    def __init__(self, got):
        super().__init__(f"bad magic {bytes(got)!r}: expected {MAGIC!r} (the peer does not speak "
                         f"the xvm control protocol)")
        self.got = bytes(got)

    def __reduce__(self):
        return (type(self), (self.got,))


class UnsupportedVersion(ProtocolError):
    """The peer speaks another version of the protocol."""

    def __init__(self, version, supported=VERSION):
        super().__init__(f"protocol version {version} is not supported; this side speaks "
                         f"version {supported}")
        self.version = version
        self.supported = supported

    def __reduce__(self):
        return (type(self), (self.version, self.supported))


class MessageTooLarge(ProtocolError):
    """A payload longer than :data:`MAX_MESSAGE`, sent or announced."""

    def __init__(self, size, limit=MAX_MESSAGE):
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit

    def __reduce__(self):
        return (type(self), (self.size, self.limit))


class Truncated(ProtocolError):
    """The stream ended in the middle of a frame."""

    def __init__(self, received, expected, part):
        super().__init__(f"connection closed mid-frame: {received} of {expected} {part} bytes "
                         f"received")
        self.received = received
        self.expected = expected
        self.part = part

    def __reduce__(self):
        return (type(self), (self.received, self.expected, self.part))


class BadPayload(ProtocolError):
    """A frame's payload is not a well-formed message (UTF-8, JSON, an object, the right keys)."""


class BadAction(ProtocolError):
    """A request's action is not a valid action (see :func:`xvm.vmm.actions.decode_action`)."""


class ConnectionClosed(XvmError, ConnectionError):
    """The peer closed the connection at a frame boundary (or the socket was reset)."""

    def __str__(self):
        return self.args[0] if self.args else "connection closed"


class MessageTimeout(XvmError, TimeoutError):
    """No complete message arrived within the timeout given to :func:`recv_message`."""

    def __str__(self):
        return self.args[0] if self.args else "timed out"


# --- bytes in JSON ------------------------------------------------------------------------------

def b64(data):
    """``bytes`` -> base64 ``str``, for bytes carried inside a JSON message."""
    return base64.b64encode(bytes(data)).decode("ascii")


def unb64(text):
    """Base64 ``str`` -> ``bytes``; :class:`BadPayload` if it is not a valid base64 string."""
    if not isinstance(text, str):
        raise BadPayload(f"expected a base64 string, not {json_type(text)}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadPayload(f"not valid base64: {_short(text)} ({exc})") from None


def json_type(value):
    """The JSON name of a decoded JSON value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- payloads and frames ------------------------------------------------------------------------

def encode_frame(message):
    """One message as a frame (header + payload) ready to send."""
    if not isinstance(message, dict):
        raise BadPayload(f"a message must be a dict, not {type(message).__name__}")
    try:
        payload = json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadPayload(f"message is not JSON-serializable: {exc}") from None
    if len(payload) > MAX_MESSAGE:
        raise MessageTooLarge(len(payload))
    return HEADER.pack(MAGIC, VERSION, 0, len(payload)) + payload


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def decode_payload(payload):
    """A frame's payload -> the message dict; :class:`BadPayload` if it is not one."""
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPayload(f"payload is not valid UTF-8: {exc}") from None
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadPayload("payload is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise BadPayload(f"payload is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise BadPayload(f"payload is a JSON {json_type(message)}, not an object")
    return message


class FrameDecoder:
    """Incremental decoder: bytes in, message dicts out.

    ``feed(data)`` returns the messages completed by *data* and raises the
    same errors as :func:`recv_message`.  :class:`BadPayload` consumes just
    the bad frame: the stream stays usable and the messages decoded before it
    in the same call come out of the next ``feed()`` (``feed(b"")`` will do).
    Any other error loses the framing; every later ``feed()`` raises it again
    (after handing out those earlier messages).  Call :meth:`eof` when the
    stream ends: it raises :class:`Truncated` if it ended mid-frame.
    """

    def __init__(self):
        self._buffer = bytearray()
        self._ready = []
        self._failed = None

    @property
    def mid_frame(self):
        """True when part of a frame has been fed."""
        return bool(self._buffer)

    @property
    def needed(self):
        """Bytes still missing from the current header, or else from the current payload."""
        if len(self._buffer) < HEADER.size:
            return HEADER.size - len(self._buffer)
        length = HEADER.unpack_from(self._buffer)[3]
        return HEADER.size + length - len(self._buffer)

    def feed(self, data):
        if self._failed is not None:
            if self._ready:
                ready, self._ready = self._ready, []
                return ready
            raise self._failed.with_traceback(None)
        self._buffer += data
        messages, self._ready = self._ready, []
        pos = 0
        try:
            while True:
                payload, end = self._next(pos)
                if payload is None:
                    return messages
                pos = end  # consumed even if the payload turns out bad
                messages.append(decode_payload(payload))
        except BadPayload:
            self._ready = messages
            raise
        except ProtocolError as exc:
            self._failed = exc
            self._ready = messages
            raise
        finally:
            del self._buffer[:pos]

    def eof(self):
        """The stream has ended: raise :class:`Truncated` if a frame was left incomplete."""
        have = len(self._buffer)
        if have == 0:
            return
        if have < HEADER.size:
            raise Truncated(have, HEADER.size, "header")
        length = HEADER.unpack_from(self._buffer)[3]
        raise Truncated(have - HEADER.size, length, "payload")

    def _next(self, pos):
        """The frame at *pos*: ``(payload, end)``, or ``(None, pos)`` if it is incomplete."""
        buf = self._buffer
        have = len(buf) - pos
        if have == 0:
            return None, pos
        # Check the magic on its first byte, so a stranger is refused without waiting for 12.
        head = bytes(buf[pos:pos + min(have, len(MAGIC))])
        if head != MAGIC[:len(head)]:
            raise BadMagic(head)
        if have < HEADER.size:
            return None, pos
        _, version, _flags, length = HEADER.unpack_from(buf, pos)
        if version != VERSION:
            raise UnsupportedVersion(version)
        if length > MAX_MESSAGE:
            raise MessageTooLarge(length)
        end = pos + HEADER.size + length
        if len(buf) < end:
            return None, pos
        return bytes(buf[pos + HEADER.size:end]), end


# --- sockets ------------------------------------------------------------------------------------

_send_locks = weakref.WeakKeyDictionary()
_send_locks_guard = threading.Lock()
_fallback_lock = threading.Lock()


def _send_lock(sock):
    with _send_locks_guard:
        try:
            lock = _send_locks.get(sock)
            if lock is None:
                lock = _send_locks[sock] = threading.Lock()
            return lock
        except TypeError:  # not weak-referenceable
            return _fallback_lock


def send_message(sock, message, fds=()):
    """Send one message, with *fds* (ints, at most :data:`MAX_FDS`) attached to its first byte.

    Safe to call from several threads: a per-socket lock keeps frames whole.
    The caller keeps ownership of *fds* (the peer gets duplicates).
    """
    frame = encode_frame(message)
    fds = [operator.index(fd) for fd in fds]
    if len(fds) > MAX_FDS:
        raise ProtocolError(f"{len(fds)} fds in one message; the limit is {MAX_FDS}")
    view = memoryview(frame)
    with _send_lock(sock):
        try:
            sent = 0
            if fds:
                sent = sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", fds))])
            if sent < len(frame):
                sock.sendall(view[sent:])
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionClosed(f"peer closed the connection ({exc.strerror})") from None
        except TimeoutError:
            raise MessageTimeout("timed out sending a message (socket timeout)") from None
        except OSError as exc:
            raise HostError(f"sending on the control socket failed: {exc.strerror}",
                            exc.errno) from None


_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def _recv_some(sock, size, deadline, timeout):
    """One ``recvmsg`` of at most *size* bytes: ``(data, fds, truncated_ancillary)``."""
    flags = socket.MSG_CMSG_CLOEXEC
    while True:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            if remaining <= 0 or not poller.poll(max(0, math.ceil(remaining * 1000))):
                raise MessageTimeout(f"no complete message within {timeout:g}s")
            flags |= socket.MSG_DONTWAIT
        try:
            data, ancdata, msg_flags, _ = sock.recvmsg(size, _CMSG_SPACE, flags)
        except BlockingIOError:
            if deadline is None:
                raise
            continue
        except TimeoutError:
            raise MessageTimeout("no complete message within the socket's timeout") from None
        except ConnectionResetError:
            return b"", [], False
        except OSError as exc:
            raise HostError(f"receiving on the control socket failed: {exc.strerror}",
                            exc.errno) from None
        fds = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds_array = array.array("i")
                fds_array.frombytes(payload[:len(payload) - len(payload) % fds_array.itemsize])
                fds.extend(fds_array)
        return data, fds, bool(msg_flags & socket.MSG_CTRUNC)


def recv_message(sock, timeout=None):
    """Receive one message: ``(message, fds)``; the caller owns the returned fds.

    Reads exactly one frame, so the socket is left at the next frame's start
    (also after :class:`BadPayload`: the connection stays usable).  *timeout*
    bounds the wait for the whole message (:class:`MessageTimeout`; if it
    strikes mid-frame the connection is out of step and must be closed);
    ``None`` follows the socket's own blocking mode.  One thread at a time
    may receive on a socket.
    """
    decoder = FrameDecoder()
    deadline = None if timeout is None else time.monotonic() + timeout
    fds = []
    try:
        while True:
            data, got, ctrunc = _recv_some(sock, decoder.needed, deadline, timeout)
            fds.extend(got)
            if ctrunc or len(fds) > MAX_FDS:
                raise ProtocolError(f"more than {MAX_FDS} fds sent with one message")
            if not data:
                if not decoder.mid_frame:
                    raise ConnectionClosed("peer closed the connection")
                decoder.eof()
            messages = decoder.feed(data)
            if messages:
                return messages[0], fds
    except BaseException:
        close_fds(fds)
        raise


def next_request(conn):
    """The next ``(message, fds)`` a server reads from ``conn``, or None when the connection is
    done: the peer closed it, or broke the framing (answered with the error, since nothing
    after it can be trusted)."""
    try:
        return recv_message(conn)
    except ConnectionClosed:
        return None
    except ProtocolError as e:
        try_send(conn, error_reply(None, e))
        return None


def try_send(conn, message):
    """Send ``message`` unless the peer has gone (then nothing)."""
    try:
        send_message(conn, message)
    except OSError:
        pass


def close_fds(fds):
    """Close every fd in *fds*, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# --- requests, replies, events ------------------------------------------------------------------

def _check_id(id, allow_none=False):
    if id is None and allow_none:
        return id
    if not isinstance(id, int) or isinstance(id, bool):
        raise BadPayload(f"message id must be an int, not {json_type(id)}")
    return id


def request(id, action):
    """A request message; *action* is an :class:`~xvm.vmm.actions.Action` or its JSON dict."""
    return {"id": _check_id(id), "action": action.to_json() if hasattr(action, "to_json")
            else action}


def reply(id, result=None):
    """A success reply to request *id*."""
    return {"id": _check_id(id), "ok": True, "result": result}


def error_reply(id, exc):
    """A failure reply to request *id* carrying *exc* (see :func:`encode_error`).

    *id* is ``None`` for an error that belongs to no request (a malformed
    frame, whose id could not be read).
    """
    return {"id": _check_id(id, allow_none=True), "ok": False, "error": encode_error(exc)}


def event(name, /, **fields):
    """An event message ``{"event": name, **fields}``."""
    if not isinstance(name, str):
        raise BadPayload(f"event name must be a string, not {type(name).__name__}")
    return {"event": name, **fields}


def parse_request(message):
    """A request message -> ``(id, action dict)``; :class:`BadPayload` if it is not one."""
    if set(message) != {"id", "action"}:
        raise BadPayload(f"a request has exactly the keys 'id' and 'action', not "
                         f"{_short(sorted(message))}")
    _check_id(message["id"])
    return message["id"], message["action"]


def parse_reply(message):
    """A reply message -> ``(id, result)``; raises the carried error of a failure reply."""
    if "id" not in message or "ok" not in message:
        raise BadPayload(f"a reply has the keys 'id' and 'ok', not {_short(sorted(message))}")
    id = _check_id(message["id"], allow_none=True)
    if message["ok"] is True and set(message) == {"id", "ok", "result"}:
        return id, message["result"]
    if message["ok"] is False and set(message) == {"id", "ok", "error"}:
        raise decode_error(message["error"])
    raise BadPayload(f"malformed reply to request {id}: {_short(message)}")


# --- errors across the wire ---------------------------------------------------------------------

_ERRORS = {}
_INTERNAL = "InternalError"
_ATTR_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_RESERVED_ATTRS = frozenset({"args", "with_traceback", "add_note"})


def register_error(cls):
    """Allow *cls* (an :class:`XvmError` subclass) to be recreated by :func:`decode_error`.

    Usable as a class decorator.  Names are the key: registering another
    class under a taken name is refused.
    """
    if not (isinstance(cls, type) and issubclass(cls, XvmError)):
        raise TypeError(f"{cls!r} is not an XvmError subclass")
    name = cls.__name__
    if name == _INTERNAL or _ERRORS.get(name, cls) is not cls:
        raise ValueError(f"an error class named {name!r} is already registered")
    _ERRORS[name] = cls
    return cls


def _wire_value(value):
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": b64(value)}
    raise TypeError


def encode_error(exc):
    """An exception as a JSON-able dict: its class name, message and simple attributes.

    An exception that is not an :class:`XvmError` is a bug in the VMM: it is
    sent as ``InternalError`` with its class name in the message.
    """
    if not isinstance(exc, XvmError):
        return {"type": _INTERNAL, "message": f"{type(exc).__name__}: {exc}"}
    attrs = {}
    names = list(vars(exc))
    if isinstance(exc, OSError):
        names += [name for name in ("errno", "strerror") if getattr(exc, name) is not None]
    for name in names:
        if _ATTR_NAME.match(name) and name not in _RESERVED_ATTRS:
            try:
                attrs[name] = _wire_value(getattr(exc, name))
            except (TypeError, AttributeError):
                pass
    bases = [cls.__name__ for cls in type(exc).__mro__[1:]
             if issubclass(cls, XvmError)]
    return {"type": type(exc).__name__, "message": str(exc), "bases": bases, "attrs": attrs}


def _python_value(value):
    if isinstance(value, dict) and set(value) == {"bytes"}:
        return unb64(value["bytes"])
    if isinstance(value, (dict, list)) or (isinstance(value, float) and not math.isfinite(value)):
        raise TypeError
    return value


def decode_error(data):
    """The exception an error dict from :func:`encode_error` describes (returned, not raised).

    The class is looked up by name among the registered ones (all of
    :mod:`xvm.errors`, this module's, and those added by :func:`register_error`),
    then by the names of its bases; failing both it is a plain :class:`XvmError`.
    A malformed dict gives a :class:`BadPayload`.  Nothing is evaluated.
    """
    if not isinstance(data, dict):
        return BadPayload(f"error is a JSON {json_type(data)}, not an object")
    name, message = data.get("type"), data.get("message")
    if not isinstance(name, str) or not isinstance(message, str):
        return BadPayload(f"error needs a string 'type' and 'message': {_short(data)}")
    if name == _INTERNAL:
        return XvmError(f"VMM internal error: {message}")
    cls = _ERRORS.get(name)
    bases = data.get("bases")
    if cls is None and isinstance(bases, list):
        cls = next((_ERRORS[b] for b in bases if isinstance(b, str) and b in _ERRORS), None)
    cls = cls or XvmError
    exc = cls.__new__(cls)
    exc.args = (message,)
    attrs = data.get("attrs")
    for attr, value in (attrs.items() if isinstance(attrs, dict) else ()):
        if (not _ATTR_NAME.match(attr) or attr in _RESERVED_ATTRS
                or callable(getattr(cls, attr, None))):
            continue
        try:
            setattr(exc, attr, _python_value(value))
        except (TypeError, AttributeError, BadPayload):
            pass
    return exc


for _obj in list(vars(_errors_module).values()) + [
        ProtocolError, BadMagic, UnsupportedVersion, MessageTooLarge, Truncated, BadPayload,
        BadAction, ConnectionClosed, MessageTimeout]:
    if isinstance(_obj, type) and issubclass(_obj, XvmError):
        register_error(_obj)
del _obj
