"""xvmd: the host service.  It owns a state directory's embedded host and serves the
host API (:data:`~xvm.vmm.actions.HOST_ACTIONS`) on a unix socket.

* The socket is created 0660, owned by the configured group; every connection's peer
  credentials (``SO_PEERCRED``) are checked: root, the daemon's own user, or a member
  of that group — anyone else is refused before a byte is read.
* Every request is decoded and validated; a malformed one gets an error reply (or,
  if the framing is broken, the connection is closed) and never reaches a domain.
* One xvmd per state directory: ``<state>/xvmd.lock`` is held with ``flock`` and
  names the holder's pid, so a second xvmd refuses to start and says who runs.
* Domains' VMMs are processes of their own: xvmd killed, even with SIGKILL, leaves
  them running, and a restarted xvmd finds them again (same ids, consoles intact).
"""
import fcntl
import grp
import logging
import os
import socket
import struct
import threading

from ..config import DomainConfig
from ..errors import ConfigError, HostError, NotFoundError, XvmError
from ..host.local import LocalHost
from ..vmm import actions as A
from ..vmm import protocol as P
from ..vmm.streams import stream_console

log = logging.getLogger(__name__)

DOMAIN_ACTIONS = A.VMM_ACTIONS


class DaemonLock:
    """``<state>/xvmd.lock``: one xvmd per state directory."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, "xvmd.lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise HostError(f"another xvmd (pid {holder}) already serves state directory {state_dir}") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def close(self):
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = -1


def peer_credentials(conn):
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


def _groups_of(pid, gid):
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return groups


class Daemon:
    def __init__(self, state_dir, socket_path, *, group=None, in_process=False):
        from ..host.paths import StateDir

        StateDir(os.path.abspath(state_dir)).ensure()
        self.lock = DaemonLock(os.path.abspath(state_dir))
        try:
            self.gid = _group_id(group)
            self.host = LocalHost(state_dir, in_process=in_process, uri=f"xvm+unix://{socket_path}")
            self.socket_path = socket_path
            self.listener = _listen(socket_path, self.gid)
        except BaseException:
            self.lock.close()
            raise
        self._threads = set()
        self._conns = set()
        self._guard = threading.Lock()
        self._stopping = threading.Event()

    # -- serving ------------------------------------------------------------------------------
    def serve_forever(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                break
            if not self._allowed(conn):
                conn.close()
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), name="xvmd-conn", daemon=True)
            with self._guard:
                self._threads.add(thread)
                self._conns.add(conn)
            thread.start()

    def stop(self):
        self._stopping.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        self.stop()
        self.listener.close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        with self._guard:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._threads):
            thread.join(2)
        self.host.close()
        self.lock.close()

    def _allowed(self, conn):
        pid, uid, gid = peer_credentials(conn)
        if uid == 0 or uid == os.geteuid():
            return True
        if self.gid is not None and self.gid in _groups_of(pid, gid):
            return True
        log.warning("refused a connection from pid %d uid %d: not root, not in the xvmd group", pid, uid)
        return False

    def _serve(self, conn):
        try:
            while True:
                request = P.next_request(conn)
                if request is None:
                    return
                message, fds = request
                request_id = message.get("id")
                try:
                    if not isinstance(request_id, int) or isinstance(request_id, bool):
                        raise P.BadPayload("a request needs an integer 'id'")
                    action = A.decode_action(message.get("action"), allowed=A.HOST_ACTIONS)
                    if isinstance(action, A.DomainRequest):
                        # a descriptor (dom.save's file) belongs to the inner action
                        inner = A.join_fd(A.decode_action(action.action, allowed=DOMAIN_ACTIONS), fds)
                        if isinstance(inner, A.ConsoleAttach):
                            self._stream(conn, request_id, action.domain, inner)
                            return
                        result = self._domain_request(action.domain, inner)
                    else:
                        action = A.join_fd(action, fds)
                        result = getattr(self, "_do_" + type(action).__name__)(action)
                except BaseException as e:
                    known = isinstance(request_id, int) and not isinstance(request_id, bool)  # true is no id
                    reply = P.error_reply(request_id if known else None, e)
                else:
                    reply = P.reply(request_id, result)
                finally:
                    P.close_fds(fds)  # the client's file: the VMM got its own copy
                P.send_message(conn, reply)
        except OSError:
            return
        finally:
            with self._guard:
                self._threads.discard(threading.current_thread())
                self._conns.discard(conn)
            conn.close()

    # -- host actions -------------------------------------------------------------------------
    def _do_ListDomains(self, action):
        return [_record(r) for r in self.host.store.domains()]

    def _do_LookupDomain(self, action):
        return _record(self.host.store.domain(str(self.host.lookup(action.key).uuid)))

    def _do_Define(self, action):
        return _record(self.host.store.domain(str(self.host.define(DomainConfig.from_dict(action.config)).uuid)))

    def _do_Create(self, action):
        config = DomainConfig.from_dict(action.config)
        if not action.start:
            return _record(self.host.store.domain(str(self.host._add(config, persistent=False).uuid)))
        domain = self.host.create(config)
        return _record(self.host.store.domain(str(domain.uuid)) or _transient_gone(domain))

    def _do_Undefine(self, action):
        self.host.lookup(action.domain).undefine()

    def _do_Rename(self, action):
        self.host.lookup(action.domain).rename(action.new_name)

    def _do_Capabilities(self, action):
        import dataclasses
        return dataclasses.asdict(self.host.capabilities())

    def _do_SetAutostart(self, action):
        self.host.lookup(action.domain).set_autostart(action.on)

    def _do_RestoreDomain(self, action):
        """The client's open snapshot file (never a path opened with xvmd's privileges)."""
        config = None if action.config is None else DomainConfig.from_dict(action.config)
        domain = self.host._restore(action.path, action.fd, config=config)
        return _record(self.host.store.domain(str(domain.uuid)) or _transient_gone(domain))

    def _do_UpdateConfig(self, action):
        domain = self.host.lookup(action.domain)
        self.host._update_config(domain, DomainConfig.from_dict(action.config))

    # -- networks -----------------------------------------------------------------------------
    def _do_ListNetworks(self, action):
        return [_network(net) for net in self.host.networks()]

    def _do_DefineNetwork(self, action):
        from ..net import Network

        if not isinstance(action.config, dict) or set(action.config) - {"name", "bridge", "address", "mtu"}:
            raise ConfigError(f"a network config has the keys name, bridge, address, mtu: {sorted(action.config)}")
        config = Network(**action.config)
        net = self.host.create_network(config) if action.start else self.host.define_network(config)
        return _network(net)

    def _do_NetworkRequest(self, action):
        net = self.host.lookup_network(action.network)
        if action.op == "lookup":
            return _network(net)
        if action.op == "ports":
            return net.ports()
        getattr(net, action.op)()
        return None

    # -- storage ------------------------------------------------------------------------------
    def _do_ListPools(self, action):
        return [pool.config.to_dict() for pool in self.host.pools()]

    def _do_CreatePool(self, action):
        from ..storage import Pool

        return self.host.create_pool(Pool.from_dict(action.config)).config.to_dict()

    def _do_PoolRequest(self, action):
        pool = self.host.lookup_pool(action.pool)
        args = action.args
        if action.op == "lookup":
            return pool.config.to_dict()
        if action.op == "available":
            return pool.available
        if action.op == "volumes":
            return [volume.name for volume in pool.volumes()]
        if action.op == "create_volume":
            return pool.create_volume(args["name"], args["size_bytes"], format=args["format"]).name
        pool.destroy(delete_volumes=_flag(args["delete_volumes"], "delete_volumes"))
        return None

    def _do_VolumeRequest(self, action):
        volume = self.host.storage.lookup_volume(action.volume)
        args = action.args
        if action.op == "info":
            return {"path": volume.path, "size": volume.size, "allocation": volume.allocation,
                    "format": volume.format, "created": volume.created, "origin": volume.origin,
                    "method": volume.method}
        if action.op == "resize":
            return volume.resize(args["size"], shrink=_flag(args["shrink"], "shrink"))
        if action.op == "dependents":
            return [v.key for v in volume.dependents()]
        if action.op == "snapshots":
            return [_snapshot(s) for s in volume.snapshots()]
        if action.op == "snapshot":
            return _snapshot(volume.snapshot(args["name"]))
        if action.op == "clone":
            return volume.clone(args["snapshot"], args["new_name"]).name
        if action.op == "delete":
            return volume.delete()
        return getattr(volume, action.op)(args["name"])  # delete_snapshot, rollback

    def _do_CloneDomain(self, action):
        domain = self.host.clone_domain(action.source, action.new_name, snapshot=action.snapshot)
        return _record(self.host.store.domain(str(domain.uuid)))

    def _do_DomainDisks(self, action):
        domain = self.host.lookup(action.domain)
        result = (domain.snapshot_disks if action.op == "snapshot" else domain.rollback_disks)(action.name)
        return [_snapshot(s) for s in result] if action.op == "snapshot" else result

    def _domain_request(self, key, action):
        domain = self.host.lookup(key)
        if isinstance(action, A.Boot):
            domain.start()
            return domain.info()
        domain.console._ensure()  # keep xvmd's mirror on the current boot
        result = self.host._act(domain, action)
        if isinstance(action, (A.Destroy, A.Snapshot)):  # both end the VMM
            self.host._stopped(domain)
        return result

    def _stream(self, conn, request_id, key, action):
        """A console stream from xvmd's own mirror of the domain's console, which follows
        the domain across boots (and so outlives any one VMM process)."""
        domain = self.host.lookup(key)
        domain.console._ensure()
        try:
            stream_console(conn, request_id, domain.console, action, domain.name)
        except XvmError as e:
            P.try_send(conn, P.error_reply(request_id, e))


def _record(record):
    if record is None:
        raise NotFoundError("no such domain")
    return {"uuid": record.uuid, "name": record.name, "config": record.config,
            "persistent": record.persistent, "autostart": record.autostart,
            "state": record.state, "reason": record.reason}


def _network(net):
    config = net.config
    return {"config": {"name": config.name, "bridge": config.bridge, "address": config.address, "mtu": config.mtu},
            "active": net.active, "created": net.created}


def _snapshot(snapshot):
    return {"volume": snapshot.volume, "name": snapshot.name, "created": snapshot.created,
            "method": snapshot.method}


def _flag(value, what):
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, not {value!r}")
    return value


def _transient_gone(domain):
    raise NotFoundError(f"transient domain {domain.uuid} already ended")


def _group_id(group):
    if group is None:
        return None
    try:
        return int(group)
    except ValueError:
        pass
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"group {group!r} does not exist") from None


def _listen(path, gid):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody answers on it
        else:
            raise HostError(f"socket {path} is already served by another process")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o117)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    if gid is not None:
        os.chown(path, -1, gid)
    sock.listen(128)
    return sock


