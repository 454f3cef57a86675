"""The live-migration wire protocol: versioned, framed, over TLS (or plain TCP if asked).

Two connections take part.  The *control* connection runs between the two hosts
(:mod:`.live`): the source asks the destination to prepare, the destination answers
with the address of the VMM it started to receive.  The *data* connection runs
between the two VMMs: the source VMM streams RAM and the machine state straight to
the destination VMM, never through a host process.

Each connection starts with a HELLO each way: ``b"XVMMIG\\0\\0"``, major and minor
version (u16 each), then a 32-byte token (the data connection's, from the control
connection; zeros on the control connection).  A peer with another major version,
another magic, or a wrong token is refused with an ERROR frame that says why.

Then frames, each ``type (u8), 3 zero bytes, payload length (u32)``, payload:

========  ===========================  ===========================================
CPUID     source → destination VMM      UTF-8 JSON: the CPUID the guest sees, a list
                                        of [function, index, flags, eax, ebx, ecx,
                                        edx] (u32 each); the first frame, so that a
                                        destination lacking a feature refuses at once
PAGES     source → destination VMM      u64 guest-physical address, page data
ZERO      source → destination VMM      u64 address, u64 length: a zero range
ROUND     source → destination VMM      u32 iteration: the end of one pass
STATE     source → destination VMM      UTF-8 JSON: machine state, whether it ran
READY     destination VMM → source      the state is loaded, the vCPU threads wait
                                        parked; it waits for COMMIT
COMMIT    source → destination VMM      run it (the source stays paused for good)
RUNNING   destination VMM → source      it runs; the source may destroy its copy
                                        (payload, from 2.0 on: UTF-8 JSON, how long
                                        the destination's steps took, in ms)
CONTROL   host ↔ host                   UTF-8 JSON: prepare / answer / finish
ERROR     either way                    UTF-8 text: the sender gives up; says why
========  ===========================  ===========================================

Anything else where a frame is due — an unknown type, a frame out of turn, a
length or address outside the guest's RAM — ends the migration with a
:class:`MigrationError` naming it.
"""
import json
import socket
import ssl
import struct
import time
import urllib.parse
from dataclasses import asdict, dataclass

from ..errors import XvmError
from ..vmm.protocol import register_error

MAGIC = b"XVMMIG\0\0"
MAJOR = 2  # 2: the CPUID frame after the HELLOs (1: the CPUID was in the STATE)
MINOR = 0
HELLO = struct.Struct("<8sHH32s")
FRAME = struct.Struct("<B3xI")
ADDRESS = struct.Struct("<Q")
RANGE = struct.Struct("<QQ")
ROUND_NUMBER = struct.Struct("<I")
NO_TOKEN = bytes(32)
MAX_CONTROL = 16 << 20  # a JSON frame (state, config) larger than this is refused
MAX_SMALL = 4096  # the most a ROUND or an empty frame may carry (room for a newer minor version)
PAGES, ZERO, ROUND, STATE, READY, COMMIT, RUNNING, CONTROL, ERROR, CPUID = range(1, 11)
NAMES = {PAGES: "PAGES", ZERO: "ZERO", ROUND: "ROUND", STATE: "STATE", READY: "READY",
         COMMIT: "COMMIT", RUNNING: "RUNNING", CONTROL: "CONTROL", ERROR: "ERROR", CPUID: "CPUID"}
U32_MAX = 0xFFFF_FFFF
SCHEMES = {"xvm+tls": True, "xvm+tcp": False}  # scheme -> TLS


@register_error
class MigrationError(XvmError):
    """A live migration failed; the source domain keeps running (unless ``what`` is
    "unknown": the end was lost after the commit, and the source stays paused).
    ``what``: uri, tls, connect, version, protocol, peer, timeout, aborted, converge,
    state, destination, unknown."""

    def __init__(self, message, *, what=None):
        super().__init__(message)
        self.what = what


@dataclass(frozen=True)
class MigrationStats:
    """What a finished live migration did.  ``iterations``: passes over memory (the first,
    whole one included, the last, paused one not); ``bytes_sent``: on the data
    connection, before TLS; ``pages_sent``: page contents sent (zero ranges are not);
    ``downtime_ms``: from the source's pause to the destination running (None if the source's
    end could not be read: a source reached through xvmd whose VMM ended first); ``total_ms``:
    the whole call; ``throttle_pct``: the most the guest was slowed to converge (0: never;
    auto-converge parked its vCPUs that share of the time).  ``downtime_sent_ms``: from the
    pause until the last byte of the state was handed to the connection -- the span QEMU's
    query-migrate calls its downtime (it does not wait for the destination to load the state
    and run the vCPUs); ``switchover_ms``: ``{"source": {step: ms}, "destination": {step:
    ms}}``, how long each step of the switchover took on either side (None where unknown)."""

    iterations: int
    bytes_sent: int
    pages_sent: int
    downtime_ms: float | None
    total_ms: float
    zero_bytes: int = 0
    memory_bytes: int = 0
    throttle_pct: int = 0
    destination_id: int | None = None
    downtime_sent_ms: float | None = None
    switchover_ms: dict | None = None

    @property
    def auto_converged(self):
        return self.throttle_pct > 0

    def to_dict(self):
        return asdict(self)


def parse_uri(uri, insecure=False):
    """``(host, port, tls)`` of ``xvm+tls://HOST:PORT`` or ``xvm+tcp://HOST:PORT`` (plain
    TCP only with ``insecure=True``); MigrationError otherwise."""
    if not isinstance(uri, str):
        raise MigrationError(f"a migration URI is a string like xvm+tls://HOST:PORT, not {uri!r}", what="uri")
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in SCHEMES:
        raise MigrationError(f"migration URI {uri!r}: the scheme must be xvm+tls or xvm+tcp", what="uri")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError as e:
        raise MigrationError(f"migration URI {uri!r}: {e}", what="uri") from None
    if not host or not port or parsed.path not in ("", "/") or parsed.query:
        raise MigrationError(f"migration URI {uri!r} must be {parsed.scheme}://HOST:PORT", what="uri")
    tls = SCHEMES[parsed.scheme]
    if not tls and not insecure:
        raise MigrationError(f"migration URI {uri!r} is plain TCP: guest memory would cross the network "
                             "unencrypted and unauthenticated; pass insecure=True to allow it "
                             "(or use xvm+tls://)", what="uri")
    return host, port, tls


def parse_listen(text):
    """``(host, port)`` of ``ADDR:PORT`` (``[v6]:PORT`` too)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise MigrationError(f"listen address {text!r} must be ADDR:PORT", what="uri")
    return host.strip("[]"), int(port)


# --- a framed connection ------------------------------------------------------------------------

def open_connection(host, port, *, timeout=10.0, what="the destination"):
    """A TCP connection to ``host:port`` (MigrationError naming ``what`` if there is none)."""
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise MigrationError(f"cannot connect to {what} {host}:{port}: {e.strerror or e}", what="connect") from None


def listening_socket(host):
    """A TCP socket listening on an ephemeral port of ``host`` (for one connection)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind((host, 0))
        sock.listen(1)
    except OSError as e:
        sock.close()
        raise MigrationError(f"cannot listen on {host}: {e.strerror}", what="destination") from None
    return sock


class Channel:
    """One end of a migration connection (a socket, TLS or not), framed."""

    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer  # for messages: "the destination 127.0.0.1:4000"
        self.bytes_sent = 0
        self._header = bytearray(FRAME.size)

    @classmethod
    def connect(cls, host, port, context, *, timeout=10.0, what="the destination"):
        """Connect (TLS with ``context`` unless it is None) to ``host:port``."""
        return cls.over(open_connection(host, port, timeout=timeout, what=what), (host, port), context,
                        timeout=timeout, what=what)

    @classmethod
    def over(cls, raw, address, context, *, timeout=10.0, what="the destination"):
        """The client end over ``raw``, a TCP connection made by someone else (the host, for
        a confined VMM): TLS with ``context`` (checking the name ``address[0]``) unless None."""
        return cls._wrap(raw, address, context, timeout, what, server_hostname=address[0])

    @classmethod
    def accept(cls, raw, address, context, *, timeout=10.0, what="the source"):
        """The server end of an accepted socket (TLS handshake done here)."""
        return cls._wrap(raw, address, context, timeout, what, server_side=True)

    @classmethod
    def _wrap(cls, raw, address, context, timeout, what, **tls):
        peer = f"{what} {address[0]}:{address[1]}"
        raw.settimeout(timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is None:
            return cls(raw, peer)
        try:
            sock = context.wrap_socket(raw, **tls)
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise MigrationError(f"TLS handshake with {peer} failed: {_ssl_reason(e)}", what="tls") from None
        return cls(sock, peer)

    def settimeout(self, timeout):
        self.sock.settimeout(timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def shutdown(self):
        """Make every blocked send or receive on this connection fail now (from any thread)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- sending --------------------------------------------------------------------------------
    def _send(self, *parts):
        try:
            for part in parts:
                self.sock.sendall(part)
        except socket.timeout:
            raise MigrationError(f"{self.peer} stopped reading (timed out)", what="timeout") from None
        except (ssl.SSLError, OSError) as e:
            raise MigrationError(f"lost the connection to {self.peer}: {_ssl_reason(e)}", what="peer") from None
        self.bytes_sent += sum(len(p) for p in parts)

    def send_hello(self, token=NO_TOKEN):
        self._send(HELLO.pack(MAGIC, MAJOR, MINOR, token))

    def send(self, kind, payload=b""):
        self._send(FRAME.pack(kind, len(payload)), payload)

    def send_pages(self, gpa, view):
        self._send(FRAME.pack(PAGES, ADDRESS.size + len(view)) + ADDRESS.pack(gpa), view)

    def send_zero(self, gpa, length):
        self.send(ZERO, RANGE.pack(gpa, length))

    def send_cpuid(self, entries):
        self.send_json(CPUID, [list(e) for e in entries])

    def recv_cpuid(self):
        """The CPUID frame due first: ``[(function, index, flags, eax, ebx, ecx, edx)]``."""
        entries = self.recv_json(CPUID)
        if not isinstance(entries, list) or not all(
                isinstance(e, list) and len(e) == 7
                and all(type(x) is int and 0 <= x <= U32_MAX for x in e) for e in entries):
            raise MigrationError(f"{self.peer} sent a malformed CPUID: not a list of 7 u32s per entry",
                                 what="protocol")
        return [tuple(e) for e in entries]

    def send_json(self, kind, obj):
        self.send(kind, json.dumps(obj, separators=(",", ":")).encode())

    def send_error(self, message):
        """Tell the peer why we give up; never raises (the peer may be gone)."""
        try:
            self.send(ERROR, str(message).encode()[:4096])
        except MigrationError:
            pass

    # -- receiving ------------------------------------------------------------------------------
    def recv_exact_into(self, view):
        done = 0
        try:
            while done < len(view):
                n = self.sock.recv_into(view[done:])
                if n == 0:
                    raise MigrationError(f"{self.peer} closed the connection", what="peer")
                done += n
        except socket.timeout:
            raise MigrationError(f"{self.peer} sent nothing in time", what="timeout") from None
        except ssl.SSLError as e:
            raise MigrationError(f"the stream from {self.peer} is corrupt or not TLS: {_ssl_reason(e)}",
                                 what="protocol") from None
        except OSError as e:
            raise MigrationError(f"lost the connection to {self.peer}: {e.strerror or e}", what="peer") from None

    def recv_exact(self, n):
        buf = bytearray(n)
        self.recv_exact_into(memoryview(buf))
        return bytes(buf)

    def recv_hello(self, token=None):
        """Check the peer's HELLO (and its token, if given)."""
        head = self.recv_exact(len(MAGIC))
        if head != MAGIC and head[0] == ERROR:  # refused before a HELLO: say why
            kind, length = FRAME.unpack(head)
            text = self.recv_exact(min(length, 4096)).decode("utf-8", "replace")
            raise MigrationError(f"{self.peer} refused: {text}", what="version" if "version" in text else "peer")
        data = head + self.recv_exact(HELLO.size - len(MAGIC))
        magic, major, minor, their_token = HELLO.unpack(data)
        if magic != MAGIC:
            raise MigrationError(f"{self.peer} does not speak the xvm migration protocol "
                                 f"(it sent {data[:8]!r})", what="protocol")
        if major != MAJOR:
            self.send_error(f"unsupported migration protocol version {major}.{minor}; "
                            f"this xvm speaks {MAJOR}.x")
            raise MigrationError(f"{self.peer} speaks migration protocol version {major}.{minor}; "
                                 f"this xvm speaks {MAJOR}.x", what="version")
        if token is not None and their_token != token:
            self.send_error("wrong migration token")
            raise MigrationError(f"{self.peer} presented a wrong migration token", what="protocol")
        return major, minor

    def recv_header(self, expect=None):
        """``(type, length)`` of the next frame; an ERROR frame is raised as MigrationError,
        and a type not in ``expect`` (if given) refused."""
        self.recv_exact_into(memoryview(self._header))
        kind, length = FRAME.unpack(self._header)
        if kind == ERROR:
            text = self.recv_exact(min(length, 4096)).decode("utf-8", "replace")
            raise MigrationError(f"{self.peer} gave up: {text}", what="peer")
        if kind not in NAMES:
            raise MigrationError(f"{self.peer} sent an unknown message type {kind}", what="protocol")
        if expect is not None and kind not in expect:
            wanted = " or ".join(NAMES[k] for k in expect)
            raise MigrationError(f"{self.peer} sent {NAMES[kind]} where {wanted} was due", what="protocol")
        return kind, length

    def recv_json(self, kind, length=None):
        """The JSON payload of a ``kind`` frame (its header read already if ``length`` is given)."""
        if length is None:
            _, length = self.recv_header((kind,))
        if length > MAX_CONTROL:
            raise MigrationError(f"{self.peer} sent a {NAMES[kind]} of {length} bytes", what="protocol")
        try:
            return json.loads(self.recv_exact(length))
        except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than Python goes
            raise MigrationError(f"{self.peer} sent a malformed {NAMES[kind]}: {e}", what="protocol") from None

    def recv_small(self, kind, length, least=0):
        """The payload of a ``kind`` frame whose header said ``length``: at least ``least``
        bytes, at most MAX_SMALL (never a buffer as large as a hostile length)."""
        if not least <= length <= MAX_SMALL:
            raise MigrationError(f"{self.peer} sent a {NAMES[kind]} frame of {length} bytes", what="protocol")
        return self.recv_exact(length)

    def expect(self, kind):
        """Receive an empty frame of type ``kind`` (a payload of up to MAX_SMALL bytes, from
        a newer minor version, is skipped)."""
        _, length = self.recv_header((kind,))
        if length:
            self.recv_small(kind, length)


def _ssl_reason(e):
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    return getattr(e, "strerror", None) or str(e)


class RateLimit:
    """At most ``bytes_per_s`` on average (None: no limit)."""

    def __init__(self, bytes_per_s):
        self.rate = bytes_per_s
        self._start = time.monotonic()
        self._sent = 0

    def take(self, n):
        if not self.rate:
            return
        self._sent += n
        ahead = self._sent / self.rate - (time.monotonic() - self._start)
        if ahead > 0:
            time.sleep(ahead)
