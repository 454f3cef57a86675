"""Linux bridges and their ports, through netlink (pyroute2).

Mechanism only: create/delete a bridge, give it an address, attach a TAP to
it.  A Linux bridge is a MAC-learning switch: frames go only to the port
where their destination address was last seen.  Every netlink failure is a
:class:`NetworkHostError` with its errno; EPERM names CAP_NET_ADMIN.
"""
import errno as _errno
import ipaddress

from .errors import NetworkConfigError, NetworkHostError, NotFoundError

IFNAMSIZ = 16


def _ipr():
    from pyroute2 import IPRoute
    return IPRoute()


def _fail(what, e):
    code = getattr(e, "code", None) or getattr(e, "errno", None) or _errno.EIO
    if code == _errno.EPERM:
        return NetworkHostError(f"{what}: permission denied — managing network interfaces "
                                "needs CAP_NET_ADMIN", code)
    return NetworkHostError(f"{what}: {e}", code)


def check_ifname(name, what="interface"):
    if (not isinstance(name, str) or not name or len(name.encode()) >= IFNAMSIZ
            or "/" in name or any(c.isspace() for c in name) or name in (".", "..")):
        raise NetworkConfigError(f"{what} name {name!r} is not a valid interface name "
                                 f"(1-{IFNAMSIZ - 1} bytes, no '/' or spaces)")
    return name


def link_index(name):
    """The ifindex of ``name``, or None if there is no such interface."""
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_kind(name):
    """``"bridge"``, ``"tun"``... of interface ``name``; None if it does not exist."""
    from pyroute2 import NetlinkError
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        try:
            link = ipr.get_links(found[0])[0]
        except NetlinkError:
            return None
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info is not None else "device"


def is_bridge(name):
    return link_kind(name) == "bridge"


def create_bridge(name, address=None, mtu=None):
    """Create bridge ``name``, set it up, give it ``address`` (an
    ipaddress.IPv4Interface/IPv6Interface); removes it again on failure."""
    from pyroute2 import NetlinkError
    with _ipr() as ipr:
        try:
            ipr.link("add", ifname=name, kind="bridge")
        except NetlinkError as e:
            if e.code == _errno.EEXIST:
                raise NetworkConfigError(f"an interface named {name!r} already exists") from None
            raise _fail(f"creating bridge {name!r}", e) from None
        try:
            index = ipr.link_lookup(ifname=name)[0]
            if mtu is not None:
                ipr.link("set", index=index, mtu=mtu)
            if address is not None:
                ipr.addr("add", index=index, address=str(address.ip),
                         prefixlen=address.network.prefixlen)
            ipr.link("set", index=index, state="up")
        except NetlinkError as e:
            try:
                ipr.link("del", ifname=name)
            except NetlinkError:
                pass
            raise _fail(f"configuring bridge {name!r}", e) from None


def delete_link(name):
    """Remove interface ``name``; False if it was already gone."""
    from pyroute2 import NetlinkError
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as e:
            if e.code == _errno.ENODEV:
                return False
            raise _fail(f"removing {name!r}", e) from None
    return True


def attach(port, bridge, mtu=None):
    """Make interface ``port`` (a TAP) a port of ``bridge`` and set it up."""
    from pyroute2 import NetlinkError
    with _ipr() as ipr:
        ports = ipr.link_lookup(ifname=port)
        masters = ipr.link_lookup(ifname=bridge)
        if not ports:
            raise NotFoundError(f"no network interface {port!r}")
        if not masters:
            raise NotFoundError(f"bridge {bridge!r} does not exist")
        try:
            kw = {"mtu": mtu} if mtu is not None else {}
            ipr.link("set", index=ports[0], master=masters[0], state="up", **kw)
        except NetlinkError as e:
            raise _fail(f"attaching {port!r} to bridge {bridge!r}", e) from None


def detach(port):
    """Take ``port`` off its bridge (no error if it is gone)."""
    from pyroute2 import NetlinkError
    with _ipr() as ipr:
        ports = ipr.link_lookup(ifname=port)
        if not ports:
            return
        try:
            ipr.link("set", index=ports[0], master=0)
        except NetlinkError as e:
            if e.code != _errno.ENODEV:
                raise _fail(f"detaching {port!r}", e) from None


def ports(bridge):
    """Names of the interfaces attached to ``bridge``."""
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            return []
        return sorted(link.get("IFLA_IFNAME") for link in ipr.get_links()
                      if link.get("IFLA_MASTER") == found[0])


def addresses(name):
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return []
        return [ipaddress.ip_interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
                for a in ipr.get_addr(index=found[0])]
