"""A domain's network interface: :class:`Nic` (configuration) and
:class:`NicPlan` (resolved for one boot: MAC, bridge, MTU).

``Nic(network="lan")`` plugs into a host network; ``Nic(bridge="br0")`` into
an existing bridge xvm does not manage.  ``mac=None`` derives the MAC from
the domain UUID and the NIC's index (:func:`~xvm.net.mac.derive_mac`).
"""
from dataclasses import dataclass

from . import bridge as _bridge
from .errors import NetworkConfigError
from .mac import derive_mac, normalize_mac
from .network import MAX_MTU, MIN_MTU, Network


@dataclass(frozen=True)
class Nic:
    network: str = None
    mac: str = None
    bridge: str = None
    mtu: int = None

    def __post_init__(self):
        set_ = object.__setattr__.__get__(self)
        if isinstance(self.network, Network):
            set_("network", self.network.name)
        if (self.network is None) == (self.bridge is None):
            raise NetworkConfigError("a Nic needs exactly one of network= (a host network's "
                                     "name) or bridge= (an existing bridge)")
        if self.network is not None and not isinstance(self.network, str):
            raise NetworkConfigError(f"Nic network must be a name or an xvm.Network, not "
                                     f"{type(self.network).__name__}")
        if self.bridge is not None:
            _bridge.check_ifname(self.bridge, "bridge")
        if self.mac is not None:
            set_("mac", normalize_mac(self.mac))
        if self.mtu is not None and (not isinstance(self.mtu, int) or isinstance(self.mtu, bool)
                                     or not MIN_MTU <= self.mtu <= MAX_MTU):
            raise NetworkConfigError(f"Nic mtu {self.mtu!r} is not an integer from {MIN_MTU} "
                                     f"to {MAX_MTU}")


def effective_macs(nics, domain_uuid):
    """The MAC each NIC will have, in order."""
    return [nic.mac or derive_mac(domain_uuid, i) for i, nic in enumerate(nics)]


def validate_nics(nics, domain_uuid):
    """DomainConfig's check: Nic objects, no MAC given twice."""
    try:
        nics = tuple(nics)
    except TypeError:
        raise NetworkConfigError(f"nics must be a list of xvm.Nic, not {nics!r}") from None
    for nic in nics:
        if not isinstance(nic, Nic):
            raise NetworkConfigError(f"nics must be xvm.Nic objects, not {type(nic).__name__}")
    seen = set()
    for mac in effective_macs(nics, domain_uuid):
        if mac in seen:
            raise NetworkConfigError(f"MAC address {mac} is used by two NICs of the domain")
        seen.add(mac)
    return nics


@dataclass(frozen=True)
class NicPlan:
    """One NIC as it will be built for a boot; ``open_device()`` creates its
    TAP, attaches it to the bridge and returns the virtio-net device."""

    mac: str
    bridge: str
    mtu: int
    tap_name: str = "xvmtap%d"

    def open_device(self):
        from ..devices.net import Tap, VirtioNet
        tap = Tap.open(self.tap_name)
        try:
            _bridge.attach(tap.name, self.bridge, mtu=self.mtu)
            return VirtioNet(self.mac, backend=tap, mtu=self.mtu, bridge=self.bridge)
        except BaseException:
            tap.close()  # a non-persistent TAP disappears with its fd
            raise


def plan_nics(config, networks, macs_in_use):
    """Resolve ``config.nics`` for a boot: each network must be defined and
    active, each bridge must exist, no MAC may be in use by a running domain
    (``macs_in_use``: mac -> domain name)."""
    plans = []
    for nic, mac in zip(config.nics, effective_macs(config.nics, config.uuid)):
        if mac in macs_in_use:
            raise NetworkConfigError(f"domain {config.name!r}: MAC address {mac} is already used "
                                     f"by running domain {macs_in_use[mac]!r}")
        if nic.network is not None:
            net = networks.lookup(nic.network)
            if not net.active:
                raise NetworkConfigError(f"domain {config.name!r}: network {nic.network!r} is "
                                         "not active (start it first)")
            bridge, mtu = net.bridge, nic.mtu or net.config.mtu
        else:
            bridge, mtu = nic.bridge, nic.mtu or 1500
        kind = _bridge.link_kind(bridge)
        if kind != "bridge":
            what = "does not exist" if kind is None else f"is a {kind}, not a bridge"
            raise NetworkConfigError(f"domain {config.name!r}: bridge {bridge!r} {what}")
        plans.append(NicPlan(mac, bridge, mtu))
    return plans
