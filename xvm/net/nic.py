"""A domain's network interface: :class:`Nic` (configuration) and
:class:`NicPlan` (resolved for one boot: MAC, bridge, MTU).

``Nic(network="lan")`` plugs into a host network; ``Nic(bridge="br0")`` into
an existing bridge xvm does not manage.  ``mac=None`` derives the MAC from
the domain UUID and the NIC's index (:func:`~xvm.net.mac.derive_mac`).
``queues=N`` (1 to 16) gives the NIC N rx/tx queue pairs (virtio-net
multiqueue) over a multi-queue TAP, one TAP queue per pair.
"""
import errno
import fcntl
import os
from dataclasses import dataclass, fields

from . import bridge as _bridge
from .errors import NetworkConfigError
from .mac import derive_mac, normalize_mac
from .network import MAX_MTU, MIN_MTU, Network

MAX_QUEUES = 16  # xvm.devices.net.device.MAX_QUEUE_PAIRS


@dataclass(frozen=True)
class Nic:
    """A NIC in a domain's config: plain data, checked on construction, nothing
    on the host looked at (``plan_nics`` does that when the domain starts)."""

    network: str = None
    mac: str = None
    bridge: str = None
    mtu: int = None
    queues: int = 1

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
        if (not isinstance(self.queues, int) or isinstance(self.queues, bool)
                or not 1 <= self.queues <= MAX_QUEUES):
            raise NetworkConfigError(f"Nic queues {self.queues!r} is not an integer from 1 "
                                     f"to {MAX_QUEUES}")

    def to_dict(self):
        """JSON-able: ``{"network", "mac", "bridge", "mtu"}`` (None where unset), and
        ``"queues"`` when it is not 1."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if data["queues"] == 1:
            del data["queues"]
        return data

    @classmethod
    def from_dict(cls, data):
        """The Nic :meth:`to_dict` gave ``data``; NetworkConfigError names an
        unknown or bad field."""
        if not isinstance(data, dict):
            raise NetworkConfigError(f"a NIC must be a dict, not {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [name for name in data if name not in known]
        if unknown:
            raise NetworkConfigError(f"NIC: unknown field(s) {', '.join(map(repr, unknown))}; "
                                     f"known: {', '.join(known)}")
        return cls(**data)


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
    """One NIC as it will be built for a boot.

    The host side and the VMM side are two steps, so they can run in two
    processes: :meth:`open_tap` (needs CAP_NET_ADMIN) creates the TAP, makes it
    a port of the bridge and returns its fd; :meth:`device_from_tap` (needs no
    privilege) builds the virtio-net device over such an fd, wherever it was
    passed to.  :meth:`open_device` does both in one process.  The TAP is never
    persistent (no TUNSETPERSIST): it disappears when its last fd is closed,
    in whichever process that is.
    """

    mac: str
    bridge: str
    mtu: int
    tap_name: str = "xvmtap%d"
    queues: int = 1

    def open_tap(self):
        """Create the TAP, attach it to the bridge; returns its fd (the caller owns it).
        A NIC with several queues has several fds: :meth:`open_taps`."""
        if self.queues != 1:
            raise NetworkConfigError(f"NIC {self.mac} has {self.queues} queues: open_taps() "
                                     "opens one TAP fd per queue")
        return self.open_taps()[0]

    def open_taps(self):
        """Create the TAP (multi-queue with ``queues`` > 1: one fd per queue pair),
        attach it to the bridge; returns the list of its fds (the caller owns them)."""
        from ..devices.net import Tap
        if self.queues == 1:
            taps = [Tap.open(self.tap_name)]
        else:
            taps = Tap.open_queues(self.tap_name, self.queues)
        try:
            _bridge.attach(taps[0].name, self.bridge, mtu=self.mtu)
        except BaseException:
            for tap in taps:
                tap.close()  # a non-persistent TAP disappears with its fds
            raise
        fds = []
        for tap in taps:
            fds.append(tap.fd)
            tap.fd = -1
        return fds

    def device_from_tap(self, fd):
        """The virtio-net device over TAP ``fd`` (from :meth:`open_tap`, maybe in
        another process); the device owns ``fd`` (closed on failure too)."""
        return self.device_from_taps([fd])

    def device_from_taps(self, fds):
        """The virtio-net device over the TAP queue fds ``fds`` (from :meth:`open_taps`,
        maybe in another process; one per queue pair); the device owns them (closed
        on failure too)."""
        from ..devices.net import VirtioNet
        fds = list(fds)
        taps = []
        try:
            if len(fds) != self.queues:
                raise NetworkConfigError(f"NIC {self.mac} has {self.queues} queue pairs but "
                                         f"{len(fds)} TAP fds were given")
            while fds:
                taps.append(tap_from_fd(fds.pop(0)))  # owns the fd from here, failing too
            if self.queues > 1 and len({tap.name for tap in taps}) != 1:
                raise NetworkConfigError(f"NIC {self.mac}: its TAP fds are queues of different "
                                         f"interfaces ({', '.join(t.name for t in taps)})")
            if self.queues == 1:
                return VirtioNet(self.mac, backend=taps[0], mtu=self.mtu, bridge=self.bridge)
            return VirtioNet(self.mac, backends=taps, mtu=self.mtu, bridge=self.bridge)
        except BaseException:
            for tap in taps:
                tap.close()
            for fd in fds:
                os.close(fd)
            raise

    def open_device(self):
        """:meth:`open_taps` then :meth:`device_from_taps`, in this process."""
        return self.device_from_taps(self.open_taps())


def tap_from_fd(fd):
    """A :class:`~xvm.devices.net.Tap` over ``fd``, an open /dev/net/tun file
    already attached to a TAP with IFF_VNET_HDR (what ``Tap.open`` makes): its
    name from TUNGETIFF, the offloads this kernel accepts probed again.  A queue
    of a multi-queue TAP (``Tap.open_queues``) is attached again if it was
    detached.  Takes ownership of ``fd`` (closed on failure)."""
    from ..devices.net import Tap, TapError
    from ..devices.net.backend.tap import (IFF_ATTACH_QUEUE, IFF_MULTI_QUEUE, IFF_NO_PI,
                                           IFF_TAP, IFF_VNET_HDR, TUNGETIFF, TUNSETQUEUE,
                                           TUNSETVNETHDRSZ, VNET_HDR_SIZE, _IFREQ)
    try:
        try:
            out = fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size))
        except OSError as e:
            out = None
            if e.errno == errno.EBADFD:
                # A multi-queue TAP's queue a previous device detached (the device
                # re-attaches its queues when it closes; one that crashed may not have).
                try:
                    fcntl.ioctl(fd, TUNSETQUEUE, _IFREQ.pack(b"", IFF_ATTACH_QUEUE))
                    out = fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size))
                except OSError:
                    pass
            if out is None:
                raise TapError(f"fd {fd} is not an attached TAP (TUNGETIFF: {e.strerror})",
                               e.errno) from None
        raw_name, flags = _IFREQ.unpack(out)
        name = raw_name.rstrip(b"\0").decode()
        if flags & IFF_MULTI_QUEUE:
            # One queue of a multi-queue TAP, maybe left detached by a device before
            # (one that crashed): attached again, as devices expect their queues.
            try:
                fcntl.ioctl(fd, TUNSETQUEUE, _IFREQ.pack(b"", IFF_ATTACH_QUEUE))
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: it is attached
                    raise TapError(f"cannot attach queue fd {fd} of TAP {name!r} "
                                   f"(TUNSETQUEUE: {e.strerror})", e.errno) from None
        wanted = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        if flags & wanted != wanted:
            raise TapError(f"{name!r} (fd {fd}) is not a TAP with IFF_NO_PI and IFF_VNET_HDR "
                           f"(flags {flags:#x})", None)
        flags_now = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not flags_now & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags_now | os.O_NONBLOCK)
        os.set_inheritable(fd, False)
        tap = Tap(fd, name)
        tap._ioctl_int(TUNSETVNETHDRSZ, VNET_HDR_SIZE, "TUNSETVNETHDRSZ")
        tap.offloads = tap._probe_offloads()
        return tap
    except BaseException:
        os.close(fd)
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
        plans.append(NicPlan(mac, bridge, mtu, queues=nic.queues))
    return plans
