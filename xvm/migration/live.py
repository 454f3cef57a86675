"""Live migration between hosts: the hosts' part (the VMMs' part is :mod:`.precopy`).

The destination host listens (:class:`MigrationListener`, made by
``host.listen_migrations(address)`` or ``xvmd --migration-listen ADDR:PORT``).  The
source host (:func:`migrate`, behind ``dom.migrate(uri)``) connects to it — the
*control* connection, TLS 1.3 with both sides' certificates by default — and asks it
to prepare: the destination records the domain (transient, unless it already knows
it), starts a VMM for it that boots by receiving (``MigrateReceive``) on a listening socket
the host made, and answers its port and a one-time token.  The source host connects to
that port and tells its VMM to send (``MigrateSend``) on the connection: the data goes
VMM to VMM, on a second TLS connection.  The hosts make the sockets and read the
certificates (passed as PEM texts in the actions), so a confined VMM needs neither
network sockets of its own nor access to the TLS directory.  The
source host follows the progress (``MigrateStatus``) and, at the end, tells the
destination host how it went (``finish``).

Whatever fails before the destination runs the guest — abort, timeout, a dead or
refusing peer, a bad certificate — the source domain keeps running as before, and the
destination host stops its receiving VMM and forgets the domain it recorded.
"""
import logging
import secrets
import select
import socket
import threading
import time

from ..errors import ConfigError, NotFoundError, StateError, XvmError
from . import stream as S
from .stream import MigrationError, MigrationStats
from .tls import read_material

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.02  # the source host reads its VMM's progress this often
SWITCHOVER_POLL_INTERVAL = 0.002  # and this often once the last, paused pass has begun
CONTROL_TIMEOUT = 60.0  # preparing (starting a VMM) and finishing take at most this long
ABORT_WAIT = 10.0  # a receiving VMM told to abort is gone within this


class MigrationListener:
    """Incoming migrations for ``host`` on ``address`` (``(addr, port)`` or ``"ADDR:PORT"``;
    port 0 picks a free one, see :attr:`address` and :attr:`uri`).  Close it to stop
    accepting; migrations under way finish.  A context manager."""

    def __init__(self, host, address, *, tls_dir=None, insecure=False):
        if getattr(host, "in_process", False):
            raise ConfigError("a host with in_process=True cannot receive migrations: the incoming "
                              "domain needs a VMM process of its own")
        self.host = host
        self.insecure = bool(insecure)
        if self.insecure:
            self._context, self.tls_dir = None, None
        else:
            from .tls import server_context, tls_dir_of
            self.tls_dir = tls_dir_of(tls_dir)
            self._context = server_context(self.tls_dir)
        bind_host, port = S.parse_listen(address) if isinstance(address, str) else address
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((bind_host, port))
            self._sock.listen(16)
        except OSError as e:
            self._sock.close()
            raise MigrationError(f"cannot listen for migrations on {bind_host}:{port}: {e.strerror}",
                                 what="destination") from None
        self.address = self._sock.getsockname()[:2]
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="xvm-migration-listen", daemon=True)
        self._thread.start()
        if getattr(host, "state_dir", None) is not None:
            threading.Thread(target=self._keep_forkserver_warm, name="xvm-migration-warm", daemon=True).start()

    @property
    def uri(self):
        """The URI a source passes to ``dom.migrate()`` to reach this listener."""
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'xvm+tcp' if self.insecure else 'xvm+tls'}://{host}:{port}"

    def __repr__(self):
        return f"<MigrationListener {self.uri}>"

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _keep_forkserver_warm(self):
        """An incoming migration starts a VMM: from a fork server already up, that takes
        milliseconds, not the ~0.5 s of a Python start and xvm's imports -- so while this
        listens the host's fork server is kept up, as QEMU's ``-incoming`` keeps its process."""
        from ..host import launcher
        from ..vmm import zygote

        while not self._stop.is_set():
            try:
                launcher.warm_forkserver(self.host.state_dir)
            except Exception as e:  # a slower start, nothing worse
                log.debug("cannot keep the fork server up: %s", e)
            self._stop.wait(zygote.IDLE_EXIT / 3)

    def _accept_loop(self):
        while not self._closed:
            try:
                raw, address = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw, address), name="xvm-migration-in",
                             daemon=True).start()

    # -- one incoming migration ------------------------------------------------------------------
    def _serve(self, raw, address):
        try:
            channel = S.Channel.accept(raw, address, self._context, timeout=CONTROL_TIMEOUT,
                                       what="the source host")
        except MigrationError as e:
            log.warning("refused a migration connection: %s", e)
            return
        domain = added = None
        try:
            channel.recv_hello()
            channel.send_hello()
            prepare = channel.recv_json(S.CONTROL)
            if not isinstance(prepare, dict) or prepare.get("op") != "prepare":
                raise MigrationError(f"{channel.peer} sent {str(prepare)[:80]!r} where 'prepare' was due",
                                     what="protocol")
            domain, added, port, token = self._prepare(prepare)
            channel.send_json(S.CONTROL, {"ok": True, "port": port, "token": token})
            finish = self._await_finish(channel, domain)
            if finish.get("ok") and _state_of(domain) in ("running", "paused"):
                channel.send_json(S.CONTROL, {"ok": True, "id": domain.id})
                return
            self._clean_up(domain, added)
            domain = None
            channel.send_json(S.CONTROL, {"ok": True})
        except Exception as e:
            if isinstance(e, XvmError):
                log.warning("incoming migration from %s failed: %s", channel.peer, e)
            else:
                log.exception("incoming migration from %s failed", channel.peer)
                e = MigrationError(f"the destination failed: {type(e).__name__}: {e}", what="destination")
            if domain is not None:
                self._clean_up(domain, added)
            from ..vmm.protocol import encode_error
            try:
                channel.send_json(S.CONTROL, {"ok": False, "error": encode_error(e)})
            except MigrationError:
                pass
        finally:
            channel.close()

    def _prepare(self, prepare):
        from ..config import DomainConfig
        from ..vmm.actions import MigrateReceive
        from ..vmm.lifecycle import DomainState

        try:
            config = DomainConfig.from_dict(prepare["config"])
            after_id = prepare.get("after_id")
            after_id = int(after_id) if after_id is not None else None
        except (KeyError, TypeError, ValueError) as e:
            raise MigrationError(f"the source sent a malformed domain configuration: {e}", what="protocol") from None
        host, uuid = self.host, str(config.uuid)
        record = host.store.domain(uuid)
        added = record is None
        if added:
            host.store.add_domain(uuid, config.name, config.to_dict(), persistent=False)
        else:
            record = host._reconcile(uuid)
            if record.state not in (DomainState.SHUTOFF.value, DomainState.CRASHED.value):
                raise StateError(f"domain {record.name!r} is {record.state} on the destination already",
                                 state=DomainState(record.state), operation="migrate")
            host.store.update_config(uuid, config.to_dict())
        domain = host._handle(uuid)
        token = secrets.token_hex(32)
        tls = None if self.insecure else read_material(self.tls_dir, "server")
        listener = S.listening_socket(self.address[0])  # the VMM accepts on it, confined or not
        try:
            domain.console._boot_begins()
            host._start(domain, boot_action=MigrateReceive(token=token, tls=tls, after_id=after_id,
                                                           fd=listener.fileno()))
        except BaseException:
            domain.console._boot_failed()
            if added:
                _forget(host, uuid)
            raise
        finally:
            port = listener.getsockname()[1]
            listener.close()
        return domain, added, port, token

    def _await_finish(self, channel, domain):
        """The source's ``finish``, while watching the receiving VMM: if it dies (killed),
        the migration has failed whatever the source says."""
        from ..host import launcher

        sock = channel.sock
        while True:
            pending = getattr(sock, "pending", lambda: 0)()
            if pending or select.select([sock], [], [], 0.5)[0]:
                finish = channel.recv_json(S.CONTROL)
                return finish if isinstance(finish, dict) else {}
            if not launcher.vmm_alive(self.host.state_dir, str(domain.uuid)):
                return {"ok": False}  # the receiving VMM died; tell the source when it asks

    def _clean_up(self, domain, added):
        """Stop the receiving VMM (if still there) and forget the domain if we recorded it."""
        from ..host import launcher
        from ..vmm.actions import MigrateAbort

        host, uuid = self.host, str(domain.uuid)
        try:
            if _state_of(domain) not in ("running", "paused"):
                try:
                    host._act(domain, MigrateAbort())
                except XvmError:
                    pass
                deadline = time.monotonic() + ABORT_WAIT
                while launcher.vmm_alive(host.state_dir, uuid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if launcher.vmm_alive(host.state_dir, uuid):
                    launcher.terminate(host.state_dir, uuid, uuid)
                host._stopped(domain)
        except XvmError as e:
            log.warning("cleaning up after a failed incoming migration: %s", e)
        if added:
            _forget(host, uuid)


def _state_of(domain):
    try:
        return domain.info()["state"]
    except XvmError:
        return None


def _forget(host, uuid):
    from ..errors import NotFoundError
    try:
        record = host._reconcile(uuid)
        if record.state in ("shutoff", "crashed"):
            host.store.remove_domain(uuid)
    except NotFoundError:
        pass


# --- the source host ----------------------------------------------------------------------------

def migrate(host, domain, uri, *, downtime_ms=300, bandwidth=None, timeout_s=None, tls_dir=None,
            insecure=False, progress=None):
    """Live-migrate ``domain`` of ``host`` to the destination at ``uri`` (see
    :meth:`xvm.Domain.migrate`); ``progress(status dict)`` is called as it goes."""
    from ..vmm import actions as A
    from ..vmm.protocol import decode_error
    from ..vmm.vmm import VmmGone

    started = time.monotonic()
    dest, port, tls = S.parse_uri(uri, insecure)
    downtime_ms = _positive(downtime_ms, "downtime_ms")
    bandwidth = None if bandwidth is None else _positive(bandwidth, "bandwidth")
    timeout_s = None if timeout_s is None else _positive(timeout_s, "timeout_s")
    context = None
    if tls:
        from .tls import client_context, tls_dir_of
        tls_dir = tls_dir_of(tls_dir)
        context = client_context(tls_dir)
    info = domain.info()
    if info["state"] not in ("running", "paused"):
        raise StateError(f"cannot migrate domain {info['name']!r}: it is {info['state']} "
                         "(allowed when paused, running)", state=info["state"], operation="migrate")
    channel = S.Channel.connect(dest, port, context, timeout=CONTROL_TIMEOUT, what="the destination host")
    try:
        channel.send_hello()
        channel.recv_hello()
        channel.send_json(S.CONTROL, {"op": "prepare", "config": domain.config.to_dict(),
                                      "after_id": info["id"]})
        answer = channel.recv_json(S.CONTROL)
        if not answer.get("ok"):
            raise decode_error(answer.get("error") or {})
        data_port = int(answer["port"])
        data = S.open_connection(dest, data_port, timeout=CONTROL_TIMEOUT, what="the destination VMM")
        try:  # the host connects, the VMM (confined: no network sockets of its own) speaks TLS on it
            host._act(domain, A.MigrateSend(host=dest, port=data_port, token=str(answer["token"]),
                                            tls=read_material(tls_dir, "client") if tls else None,
                                            downtime_ms=float(downtime_ms), bandwidth=bandwidth,
                                            timeout_s=timeout_s, fd=data.fileno()))
        finally:
            data.close()
        status, interrupted, last = _follow(host, domain, progress, A, VmmGone)
        if status is None and last is not None:
            # the source VMM ended and its end could not be read (through xvmd, the domain is
            # gone from the source's store by then -- a small guest's whole migration may fall
            # between two reads of its progress): the destination says how it went
            channel.send_json(S.CONTROL, {"op": "finish", "ok": True})
            reply = _reply(channel)
            if reply.get("id") is None:
                raise MigrationError("the source VMM ended during the migration and the destination does not "
                                     "run the domain", what="unknown" if last["state"] == "switchover" else "state")
            return _stats(last, started, reply)
        if status is not None and status["state"] == "completed":
            channel.send_json(S.CONTROL, {"op": "finish", "ok": True})
            reply = _reply(channel)
            host._stopped(domain)
            return _stats(status, started, reply)
        try:
            channel.send_json(S.CONTROL, {"op": "finish", "ok": False})
            _reply(channel)
        except MigrationError:
            pass
        if interrupted:
            raise KeyboardInterrupt
        if status is None:
            raise MigrationError("the source VMM ended during the migration", what="state")
        raise decode_error(status.get("error") or {"type": "MigrationError", "message": "migration failed"})
    finally:
        channel.close()


def _stats(status, started, reply):
    return MigrationStats(
        iterations=status["iterations"], bytes_sent=status["bytes_sent"], pages_sent=status["pages_sent"],
        downtime_ms=status["downtime_ms"], total_ms=(time.monotonic() - started) * 1000,
        zero_bytes=status["zero_bytes"], memory_bytes=status["memory_bytes"],
        throttle_pct=status["throttle_pct"], destination_id=reply.get("id"),
        downtime_sent_ms=status.get("downtime_sent_ms"), switchover_ms=status.get("switchover_ms"))


def _follow(host, domain, progress, A, VmmGone):
    """Poll the source VMM until its migration has ended: ``(final status or None if the VMM
    could not be read, interrupted, last status read)``.  Ctrl-C aborts the migration (the
    source keeps running) and is raised afterwards."""
    interrupted, last = False, None
    while True:
        try:
            status = host._act(domain, A.MigrateStatus())
        except (VmmGone, NotFoundError):
            return None, interrupted, last
        except KeyboardInterrupt:
            interrupted = True
            _abort(host, domain, A)
            continue
        last = status or last
        if progress is not None and status is not None:
            progress(status)
        if status is None or status["state"] in ("completed", "failed", "unknown"):
            return status, interrupted, last
        try:
            time.sleep(SWITCHOVER_POLL_INTERVAL if status["state"] == "switchover" else POLL_INTERVAL)
        except KeyboardInterrupt:
            interrupted = True
            _abort(host, domain, A)


def _abort(host, domain, A):
    try:
        host._act(domain, A.MigrateAbort())
    except XvmError:
        pass


def _reply(channel):
    channel.settimeout(CONTROL_TIMEOUT)
    reply = channel.recv_json(S.CONTROL)
    return reply if isinstance(reply, dict) else {}


def _positive(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{what} must be a positive number, not {value!r}")
    return value
