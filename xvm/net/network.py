"""Host networks: a named Linux bridge that domains' NICs plug into.

``Network(name, bridge=None, address=None, mtu=1500)`` is the validated
configuration; ``host.define_network(net)`` makes it a :class:`HostNetwork`
(inactive), ``.start()`` creates its bridge (or adopts an existing one),
``.destroy()`` removes a bridge xvm created (an adopted one stays).
"""
import enum
import ipaddress
import re
import threading
from dataclasses import dataclass

from ..errors import StateError
from . import bridge as _bridge
from .errors import NetworkConfigError

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


class HostNetwork:
    """A network known to a host.  ``created`` says whether xvm made the bridge
    (and so removes it on destroy)."""

    def __init__(self, host, config):
        self._host = host
        self.config = config
        self.state = NetworkState.INACTIVE
        self.created = False
        self._lock = threading.RLock()

    def __repr__(self):
        return f"<HostNetwork {self.name!r} bridge={self.bridge!r} {self.state.value}>"

    def _repr_mimebundle_(self, include=None, exclude=None):
        from ..display import network_bundle
        return network_bundle(self, include, exclude)

    name = property(lambda self: self.config.name)
    bridge = property(lambda self: self.config.bridge)
    address = property(lambda self: self.config.address)

    @property
    def active(self):
        return self.state is NetworkState.ACTIVE

    def start(self):
        """Create the bridge (adopting it if it already exists); returns self."""
        with self._lock:
            if self.active:
                raise StateError(f"network {self.name!r} is already active",
                                 state=self.state, operation="start")
            kind = _bridge.link_kind(self.bridge)
            if kind is None:
                _bridge.create_bridge(self.bridge, self.config.interface, self.config.mtu)
                self.created = True
            elif kind != "bridge":
                raise NetworkConfigError(f"network {self.name!r}: interface {self.bridge!r} "
                                         f"exists and is a {kind}, not a bridge")
            else:
                self.created = False
            self.state = NetworkState.ACTIVE
            return self

    def ports(self):
        """Interfaces (the domains' TAPs) attached to the bridge now."""
        return _bridge.ports(self.bridge) if self.active else []

    def destroy(self):
        """Stop the network: remove the bridge if xvm created it.  Refused while
        a running domain has a NIC on it."""
        with self._lock:
            if not self.active:
                raise StateError(f"network {self.name!r} is not active",
                                 state=self.state, operation="destroy")
            users = self._host._network_users(self)
            if users:
                raise StateError(f"network {self.name!r} is in use by running domain(s) "
                                 f"{', '.join(sorted(users))}", state=self.state,
                                 operation="destroy")
            if self.created:
                _bridge.delete_link(self.bridge)
            self.created = False
            self.state = NetworkState.INACTIVE

    def undefine(self):
        with self._lock:
            if self.active:
                raise StateError(f"network {self.name!r} is active; destroy it first",
                                 state=self.state, operation="undefine")
            self._host._forget_network(self)


class NetworkTable:
    """The networks of one host, by name (the Host delegates to this)."""

    def __init__(self, host):
        self._host = host
        self._networks = {}
        self._lock = threading.RLock()

    def define(self, config):
        if not isinstance(config, Network):
            raise NetworkConfigError(f"define_network wants an xvm.Network, not "
                                     f"{type(config).__name__}")
        with self._lock:
            if config.name in self._networks:
                raise NetworkConfigError(f"a network named {config.name!r} already exists")
            for other in self._networks.values():
                if other.bridge == config.bridge:
                    raise NetworkConfigError(f"network {other.name!r} already uses bridge "
                                             f"{config.bridge!r}")
            net = HostNetwork(self._host, config)
            self._networks[config.name] = net
            return net

    def list(self):
        with self._lock:
            return list(self._networks.values())

    def lookup(self, name):
        from .errors import NotFoundError
        name = getattr(name, "name", name)
        with self._lock:
            try:
                return self._networks[name]
            except KeyError:
                raise NotFoundError(f"no network named {name!r}") from None

    def forget(self, net):
        with self._lock:
            self._networks.pop(net.name, None)

    def close(self):
        """Destroy every active network (the host is going away)."""
        for net in self.list():
            if net.active:
                try:
                    if net.created:
                        _bridge.delete_link(net.bridge)
                finally:
                    net.created = False
                    net.state = NetworkState.INACTIVE
