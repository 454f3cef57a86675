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

    def restore(self, path):
        """:meth:`LocalHost.restore` through xvmd: this process opens the file, with its own
        permissions, and xvmd gets the descriptor (never the path to open as root)."""
        from ..migration.snapshot import SnapshotError

        path = os.path.abspath(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}", what="io", path=path) from None
        try:
            record = self._channel.call(A.RestoreDomain(path=path, fd=fd))
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
        request = A.DomainRequest(domain=str(domain.uuid), action=A.ConsoleAttach(history=True).to_json())
        console._detach_fn = self._channel.attach_console(console._listener, request=request)
        console._attached_boot = "xvmd"

    def close(self):
        for handle in self._handles.values():
            handle.console._reset_attachment()
        self._channel.close()

    # networks are managed by the embedded host for now
    def _no_networks(self, *args, **kwargs):
        raise XvmError(f"networks are not served by xvmd yet; manage them with {__name__.split('.')[0]}"
                       ".connect('xvm:///session')")

    define_network = create_network = networks = lookup_network = _no_networks

    # so are storage pools (a pool's volumes are files or datasets on xvmd's machine)
    def _no_storage(self, *args, **kwargs):
        raise XvmError("storage pools are not served by xvmd yet; manage pools, volumes, "
                       "clone_domain and disk snapshots with "
                       f"{__name__.split('.')[0]}.connect('xvm:///session') on the same state "
                       "directory")

    create_pool = pools = lookup_pool = clone_domain = _no_storage
    _snapshot_disks = _rollback_disks = _no_storage


def _config_dict(config):
    if not isinstance(config, DomainConfig):
        raise ConfigError(f"define wants an xvm.DomainConfig, not {type(config).__name__}")
    return config.to_dict()
