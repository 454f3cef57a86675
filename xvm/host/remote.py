"""A host served by xvmd (``xvm:///system``, ``xvm+unix:///path``): every call is a
request on xvmd's socket; the :class:`~xvm.domain.Domain` handles are the same."""
import os
import uuid as uuid_module
from dataclasses import dataclass

from ..config import DomainConfig
from ..errors import ConfigError, XvmError
from ..vmm import actions as A
from .capabilities import Capabilities
from .channel import SocketChannel
from .local import Host


@dataclass(frozen=True)
class RemoteRecord:
    uuid: str
    name: str
    config: dict
    persistent: bool
    autostart: bool
    state: str
    reason: str | None


class RemoteHost(Host):
    def __init__(self, socket_path, *, uri):
        self.uri = uri
        self.socket_path = socket_path
        self._channel = SocketChannel(socket_path, "xvmd", peer=f"xvmd at {socket_path}")
        self._handles = {}
        self._channel.call(A.ListDomains())  # fails now, clearly, if xvmd is not there

    def __repr__(self):
        return f"<RemoteHost {self.uri}>"

    def capabilities(self):
        data = self._channel.call(A.Capabilities())
        data["missing_capabilities"] = tuple(data.get("missing_capabilities", ()))
        return Capabilities(**data)

    def define(self, config):
        return self._handle(self._channel.call(A.Define(config=_config_dict(config)))["uuid"])

    def create(self, config):
        record = self._channel.call(A.Create(config=_config_dict(config), start=False))
        handle = self._handle(record["uuid"])
        try:
            return handle.start()
        except BaseException:
            self._channel.call(A.Undefine(domain=record["uuid"]))
            raise

    def domains(self):
        return [self._handle(r["uuid"]) for r in self._channel.call(A.ListDomains())]

    def lookup(self, key):
        return self._handle(self._channel.call(A.LookupDomain(key=str(key)))["uuid"])

    def _handle(self, uuid):
        from ..domain import Domain

        uuid = str(uuid)
        handle = self._handles.get(uuid)
        if handle is None:
            handle = self._handles[uuid] = Domain(self, uuid_module.UUID(uuid))
        return handle

    # -- what Domain handles ask of their host ------------------------------------------------
    def _record(self, domain):
        return RemoteRecord(**self._channel.call(A.LookupDomain(key=str(domain.uuid))))

    def _config(self, domain):
        return DomainConfig.from_dict(self._record(domain).config)

    def _machine(self, domain):
        return None

    def _act(self, domain, action):
        wire, fds = A.split_fd(action)  # dom.save's file goes to xvmd as a descriptor
        request = A.DomainRequest(domain=str(domain.uuid), action=wire.to_json())
        wait = None
        if isinstance(action, A.Wait):
            wait = -1 if action.timeout is None else action.timeout
        return self._channel.call(request, wait=wait, fd=fds[0] if fds else None)

    def restore(self, path, config=None):
        """:meth:`LocalHost.restore` through xvmd: this process opens the file, with its own
        permissions, and xvmd gets the descriptor (never the path to open as root)."""
        from ..migration.snapshot import SnapshotError, check_restore_config

        if config is not None:
            check_restore_config(config)

        path = os.path.abspath(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}", what="io", path=path) from None
        try:
            record = self._channel.call(A.RestoreDomain(path=path, fd=fd,
                                                        config=None if config is None else config.to_dict()))
        finally:
            os.close(fd)
        handle = self._handle(record["uuid"])
        handle.console._ensure()
        return handle

    def _migrate(self, domain, uri, **options):
        """The control connection runs from this process; the data goes VMM to VMM (the
        source VMM reads ``tls_dir`` itself, on xvmd's machine)."""
        from ..migration.live import migrate

        return migrate(self, domain, uri, **options)

    def _start(self, domain):
        domain.console._ensure()  # attached before the boot: nothing is missed
        self._channel.call(A.DomainRequest(domain=str(domain.uuid), action=A.Boot().to_json()))

    def _stopped(self, domain):
        pass

    def _update_config(self, domain, config):
        self._channel.call(A.UpdateConfig(domain=str(domain.uuid), config=_config_dict(config)))

    def _rename(self, domain, new_name):
        self._channel.call(A.Rename(domain=str(domain.uuid), new_name=new_name))

    def _set_autostart(self, domain, on):
        self._channel.call(A.SetAutostart(domain=str(domain.uuid), on=on))

    def _undefine(self, domain):
        self._channel.call(A.Undefine(domain=str(domain.uuid)))
        self._handles.pop(str(domain.uuid), None)

    def _ensure_console(self, domain, console):
        """One stream per handle for the host's life: xvmd's own mirror of the domain's
        console follows it across boots, so this one never needs to re-attach."""
        if console._detach_fn is not None:
            return
        uuid = str(domain.uuid)
        console._detach_fn = self._channel.attach_console(
            console._listener, wrap=lambda attach: A.DomainRequest(domain=uuid, action=attach.to_json()))
        console._attached_boot = "xvmd"

    def close(self):
        for handle in self._handles.values():
            handle.console._reset_attachment()
        self._channel.close()

    # -- networks (xvmd keeps them in its store, makes the bridges) ----------------------------
    def define_network(self, network):
        """Store an :class:`xvm.Network` on xvmd's host (inactive); a :class:`RemoteNetwork`."""
        return RemoteNetwork(self, self._channel.call(A.DefineNetwork(config=_network_dict(network))))

    def create_network(self, network):
        return RemoteNetwork(self, self._channel.call(A.DefineNetwork(config=_network_dict(network), start=True)))

    def networks(self):
        return [RemoteNetwork(self, data) for data in self._channel.call(A.ListNetworks())]

    def lookup_network(self, name):
        return RemoteNetwork(self, self._channel.call(A.NetworkRequest(network=str(getattr(name, "name", name)),
                                                                       op="lookup")))

    # -- storage pools (the volumes are files or datasets on xvmd's machine) ------------------
    def create_pool(self, pool):
        from ..storage import Pool

        if not isinstance(pool, Pool):
            raise ConfigError(f"create_pool takes an xvm.Pool, not {type(pool).__name__}")
        return RemotePool(self, self._channel.call(A.CreatePool(config=pool.to_dict())))

    def pools(self):
        return [RemotePool(self, data) for data in self._channel.call(A.ListPools())]

    def lookup_pool(self, name):
        return RemotePool(self, self._channel.call(A.PoolRequest(pool=_text(name, "pool name"), op="lookup")))

    def clone_domain(self, source, new_name, snapshot="golden", *, progress=None):
        """As :meth:`LocalHost.clone_domain`, done by xvmd (any copy it makes shows no bar
        here: ``progress`` is checked, not followed)."""
        from ..progress import check_progress

        check_progress(progress)
        from ..domain import Domain

        source = str(source.uuid) if isinstance(source, Domain) else _text(source, "domain")
        record = self._channel.call(A.CloneDomain(source=source, new_name=_text(new_name, "domain name"),
                                                  snapshot=_text(snapshot, "snapshot name")))
        return self._handle(record["uuid"])

    def _snapshot_disks(self, domain, name, progress=None):
        from ..progress import check_progress
        from ..storage.pools import Snapshot

        check_progress(progress)  # xvmd makes any copy, without a bar here
        return [Snapshot(**s) for s in self._channel.call(
            A.DomainDisks(domain=str(domain.uuid), op="snapshot", name=_text(name, "snapshot name")))]

    def _rollback_disks(self, domain, name, progress=None):
        from ..progress import check_progress

        check_progress(progress)  # xvmd makes any copy, without a bar here
        return self._channel.call(A.DomainDisks(domain=str(domain.uuid), op="rollback",
                                                name=_text(name, "snapshot name")))


class RemoteNetwork:
    """A network of xvmd's host: the same attributes and verbs as :class:`xvm.HostNetwork`."""

    def __init__(self, host, data):
        from ..net import Network

        self._host = host
        self.config = Network(**data["config"])

    def __repr__(self):
        return f"<RemoteNetwork {self.name!r} bridge={self.bridge!r} {self.state.value}>"

    def __eq__(self, other):
        return isinstance(other, RemoteNetwork) and other._host is self._host and other.config == self.config

    __hash__ = object.__hash__

    def _repr_mimebundle_(self, include=None, exclude=None):
        from ..display import network_bundle
        return network_bundle(self, include, exclude)

    name = property(lambda self: self.config.name)
    bridge = property(lambda self: self.config.bridge)
    address = property(lambda self: self.config.address)

    def _call(self, op):
        return self._host._channel.call(A.NetworkRequest(network=self.name, op=op))

    @property
    def state(self):
        from ..net import NetworkState
        return NetworkState.ACTIVE if self._call("lookup")["active"] else NetworkState.INACTIVE

    @property
    def active(self):
        return self._call("lookup")["active"]

    @property
    def created(self):
        return self._call("lookup")["created"]

    def start(self):
        self._call("start")
        return self

    def destroy(self):
        self._call("destroy")

    def undefine(self):
        self._call("undefine")

    def ports(self):
        return self._call("ports")


class RemotePool:
    """A storage pool of xvmd's host: the attributes and verbs of :class:`xvm.storage.StoragePool`."""

    def __init__(self, host, data):
        from ..storage import Pool

        self._host = host
        self.config = Pool.from_dict(data)

    name = property(lambda self: self.config.name)
    type = property(lambda self: self.config.type)

    def __repr__(self):
        return f"<RemotePool {self.name} {self.config.path or self.config.dataset}>"

    def __eq__(self, other):
        return isinstance(other, RemotePool) and other.config == self.config

    def __hash__(self):
        return hash(self.config)

    def _call(self, op, **args):
        return self._host._channel.call(A.PoolRequest(pool=self.name, op=op, args=args))

    @property
    def available(self):
        return self._call("available")

    def create_volume(self, name, size_bytes, format="raw"):
        return RemoteVolume(self, self._call("create_volume", name=name, size_bytes=size_bytes, format=format))

    def volumes(self):
        return [RemoteVolume(self, name) for name in self._call("volumes")]

    def lookup_volume(self, name):
        volume = RemoteVolume(self, _text(name, "volume name"))
        volume._info()  # StorageNotFoundError now if there is none
        return volume

    def destroy(self, delete_volumes=True):
        self._call("destroy", delete_volumes=delete_volumes)


class RemoteVolume:
    """A volume of a pool of xvmd's host: the attributes and verbs of :class:`xvm.storage.Volume`."""

    def __init__(self, pool, name):
        self.pool = pool
        self.name = name

    def __repr__(self):
        return f"<RemoteVolume {self.key}>"

    def __eq__(self, other):
        return isinstance(other, RemoteVolume) and other.key == self.key

    def __hash__(self):
        return hash(self.key)

    @property
    def key(self):
        return f"{self.pool.name}/{self.name}"

    def _call(self, op, **args):
        return self.pool._host._channel.call(A.VolumeRequest(volume=self.key, op=op, args=args))

    def _info(self):
        return self._call("info")

    path = property(lambda self: self._info()["path"])
    size = property(lambda self: self._info()["size"])
    allocation = property(lambda self: self._info()["allocation"])
    format = property(lambda self: self._info()["format"])
    created = property(lambda self: self._info()["created"])
    origin = property(lambda self: self._info()["origin"])
    method = property(lambda self: self._info()["method"])

    def resize(self, size, *, shrink=False):
        self._call("resize", size=size, shrink=shrink)

    def dependents(self):
        host = self.pool._host
        return [host.lookup_pool(key.split("/")[0]).lookup_volume(key.split("/")[1])
                for key in self._call("dependents")]

    def delete(self):
        self._call("delete")

    def snapshots(self):
        from ..storage.pools import Snapshot
        return [Snapshot(**s) for s in self._call("snapshots")]

    def lookup_snapshot(self, name):
        from ..storage.errors import StorageNotFoundError

        for snapshot in self.snapshots():
            if snapshot.name == name:
                return snapshot
        raise StorageNotFoundError(f"volume {self.key} has no snapshot {name!r}",
                                   target=f"{self.key}@{name}", operation="lookup snapshot")

    def snapshot(self, name, *, progress=None):
        from ..storage.pools import Snapshot
        return Snapshot(**self._call("snapshot", name=name))

    def delete_snapshot(self, name):
        self._call("delete_snapshot", name=name)

    def rollback(self, name, *, progress=None):
        return self._call("rollback", name=name)

    def clone(self, snapshot, new_name, *, progress=None):
        return RemoteVolume(self.pool, self._call("clone", snapshot=snapshot, new_name=new_name))


def _text(value, what):
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, not {type(value).__name__}")
    return value


def _network_dict(network):
    from ..net import Network
    from ..net.errors import NetworkConfigError

    if not isinstance(network, Network):
        raise NetworkConfigError(f"define_network wants an xvm.Network, not {type(network).__name__}")
    return {"name": network.name, "bridge": network.bridge, "address": network.address, "mtu": network.mtu}


def _config_dict(config):
    if not isinstance(config, DomainConfig):
        raise ConfigError(f"define wants an xvm.DomainConfig, not {type(config).__name__}")
    return config.to_dict()
