"""Host networks: a named Linux bridge that domains' NICs plug into.

``Network(name, bridge=None, address=None, mtu=1500)`` is the validated
configuration; ``host.define_network(net)`` makes it a :class:`HostNetwork`
(inactive), ``.start()`` creates its bridge (or adopts an existing one),
``.destroy()`` removes a bridge xvm created (an adopted one stays).  Networks are
kept in the host's store: a bridge stays up across host processes until destroyed,
and a host that opens the store re-creates the bridge of an active network that is
gone (:meth:`NetworkTable.reconcile`).
"""
import enum
import ipaddress
import logging
import re
import threading
from dataclasses import dataclass

from ..errors import StateError, XvmError
from . import bridge as _bridge
from .errors import NetworkConfigError

log = logging.getLogger(__name__)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
BRIDGE_PREFIX = "xvmbr-"
MIN_MTU = 68
MAX_MTU = 65535


@dataclass(frozen=True)
class Network:
    """A host network.  ``bridge`` defaults to ``xvmbr-<name>`` (cut to 15
    bytes); ``address`` (e.g. ``"10.0.0.1/24"``) is given to the bridge, so the
    host side can talk to the guests."""

    name: str
    bridge: str = None
    address: str = None
    mtu: int = 1500

    def __post_init__(self):
        set_ = object.__setattr__.__get__(self)
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise NetworkConfigError(f"network name {self.name!r} is invalid: use 1-64 letters, "
                                     "digits, '_', '.', '+' or '-'")
        set_("bridge", _bridge.check_ifname(self.bridge or (BRIDGE_PREFIX + self.name)[:15],
                                            "bridge"))
        if self.address is not None:
            try:
                address = ipaddress.ip_interface(self.address)
            except (ValueError, TypeError):
                raise NetworkConfigError(f"network {self.name!r}: address {self.address!r} is "
                                         "not an address with a prefix (10.0.0.1/24)") from None
            if "/" not in str(self.address):
                raise NetworkConfigError(f"network {self.name!r}: address {self.address!r} "
                                         "needs a prefix length (10.0.0.1/24)")
            set_("address", str(address))
        if not isinstance(self.mtu, int) or isinstance(self.mtu, bool) or not (
                MIN_MTU <= self.mtu <= MAX_MTU):
            raise NetworkConfigError(f"network {self.name!r}: mtu {self.mtu!r} is not an "
                                     f"integer from {MIN_MTU} to {MAX_MTU}")

    @property
    def interface(self):
        return ipaddress.ip_interface(self.address) if self.address else None


class NetworkState(enum.Enum):
    INACTIVE = "inactive"
    ACTIVE = "active"


STORE_KIND = "network"  # the store's object kind for networks


class HostNetwork:
    """A network known to a host.  Its configuration and state live in the host's store
    (so every process on the state directory sees the same networks); ``created`` says
    whether xvm made the bridge (and so removes it on destroy)."""

    def __init__(self, table, config):
        self._table = table
        self.config = config

    def __repr__(self):
        return f"<HostNetwork {self.name!r} bridge={self.bridge!r} {self.state.value}>"

    def __eq__(self, other):
        return isinstance(other, HostNetwork) and other._table is self._table and other.config == self.config

    __hash__ = object.__hash__

    def _repr_mimebundle_(self, include=None, exclude=None):
        from ..display import network_bundle
        return network_bundle(self, include, exclude)

    name = property(lambda self: self.config.name)
    bridge = property(lambda self: self.config.bridge)
    address = property(lambda self: self.config.address)

    @property
    def state(self):
        return NetworkState.ACTIVE if self._table._record(self.name)["active"] else NetworkState.INACTIVE

    @property
    def created(self):
        return self._table._record(self.name)["created"]

    @property
    def active(self):
        return self.state is NetworkState.ACTIVE

    def start(self):
        """Create the bridge (adopting it if it already exists); returns self.  The bridge
        stays up after this host closes, until :meth:`destroy`."""
        with self._table._lock:
            if self.active:
                raise StateError(f"network {self.name!r} is already active",
                                 state=self.state, operation="start")
            kind = _bridge.link_kind(self.bridge)
            if kind is None:
                _bridge.create_bridge(self.bridge, self.config.interface, self.config.mtu)
                created = True
            elif kind != "bridge":
                raise NetworkConfigError(f"network {self.name!r}: interface {self.bridge!r} "
                                         f"exists and is a {kind}, not a bridge")
            else:
                created = False
            self._table._save(self.config, active=True, created=created)
            return self

    def ports(self):
        """Interfaces (the domains' TAPs) attached to the bridge now."""
        return _bridge.ports(self.bridge) if self.active else []

    def destroy(self):
        """Stop the network: remove the bridge if xvm created it.  Refused while
        a running domain has a NIC on it."""
        with self._table._lock:
            if not self.active:
                raise StateError(f"network {self.name!r} is not active",
                                 state=self.state, operation="destroy")
            users = self._table._host._network_users(self)
            if users:
                raise StateError(f"network {self.name!r} is in use by running domain(s) "
                                 f"{', '.join(sorted(users))}", state=self.state,
                                 operation="destroy")
            if self.created:
                _bridge.delete_link(self.bridge)
            self._table._save(self.config, active=False, created=False)

    def undefine(self):
        with self._table._lock:
            if self.active:
                raise StateError(f"network {self.name!r} is active; destroy it first",
                                 state=self.state, operation="undefine")
            self._table.forget(self)


class NetworkTable:
    """The networks of one host, by name, kept in its store (objects of kind "network":
    ``{"config", "active", "created"}``); the Host delegates to this."""

    def __init__(self, host, store):
        self._host = host
        self._store = store
        self._lock = threading.RLock()

    def _record(self, name):
        from .errors import NotFoundError
        data = self._store.object(STORE_KIND, name)
        if data is None:
            raise NotFoundError(f"network {name!r} no longer exists")
        return data

    def _save(self, config, *, active, created):
        self._store.put_object(STORE_KIND, config.name, {
            "config": {"name": config.name, "bridge": config.bridge, "address": config.address,
                       "mtu": config.mtu},
            "active": active, "created": created})

    def _network(self, data):
        return HostNetwork(self, Network(**data["config"]))

    def define(self, config):
        if not isinstance(config, Network):
            raise NetworkConfigError(f"define_network wants an xvm.Network, not "
                                     f"{type(config).__name__}")
        with self._lock:
            known = self._store.objects(STORE_KIND)
            if config.name in known:
                raise NetworkConfigError(f"a network named {config.name!r} already exists")
            for name, data in known.items():
                if data["config"]["bridge"] == config.bridge:
                    raise NetworkConfigError(f"network {name!r} already uses bridge "
                                             f"{config.bridge!r}")
            self._save(config, active=False, created=False)
            return HostNetwork(self, config)

    def list(self):
        return [self._network(data) for data in self._store.objects(STORE_KIND).values()]

    def lookup(self, name):
        from .errors import NotFoundError
        name = getattr(name, "name", name)
        if not isinstance(name, str) or not name:
            raise NotFoundError(f"no network named {name!r}")
        data = self._store.object(STORE_KIND, name)
        if data is None:
            raise NotFoundError(f"no network named {name!r}")
        return self._network(data)

    def forget(self, net):
        from .errors import NotFoundError
        with self._lock:
            try:
                self._store.remove_object(STORE_KIND, net.name)
            except NotFoundError:
                pass

    def reconcile(self):
        """Bring back the bridge of every active network whose bridge is gone (deleted by
        hand, or the machine rebooted); returns the names of the networks re-created.  A
        bridge that cannot be re-created (no CAP_NET_ADMIN in this process) is logged and
        left to a process that can."""
        restored = []
        with self._lock:
            for net in self.list():
                if not net.active or _bridge.link_kind(net.bridge) is not None:
                    continue
                try:
                    _bridge.create_bridge(net.bridge, net.config.interface, net.config.mtu)
                except XvmError as e:
                    log.warning("network %r is active but its bridge %r is gone and could not "
                                "be re-created: %s", net.name, net.bridge, e)
                    continue
                log.warning("network %r: its bridge %r was gone; re-created", net.name, net.bridge)
                self._save(net.config, active=True, created=True)
                restored.append(net.name)
        return restored
