"""MAC addresses of NICs: parsing, checking, and deriving them from a UUID."""
import hashlib

from .errors import NetworkConfigError

# QEMU/KVM's locally administered prefix: 0x52 has the "locally administered"
# bit set and the multicast bit clear.
MAC_PREFIX = bytes.fromhex("525400")


def derive_mac(domain_uuid, index):
    """The MAC of NIC ``index`` of the domain with ``domain_uuid``: the same
    every boot, different for every (domain, NIC) in practice."""
    digest = hashlib.sha256(domain_uuid.bytes + index.to_bytes(2, "little")).digest()
    return format_mac(MAC_PREFIX + digest[:3])


def format_mac(raw):
    return ":".join(f"{b:02x}" for b in raw)


def normalize_mac(mac):
    """``mac`` as lower-case ``xx:xx:xx:xx:xx:xx``; NetworkConfigError unless it is
    a unicast, non-zero address."""
    raw = None
    if isinstance(mac, str):
        parts = mac.replace("-", ":").split(":")
        if len(parts) == 6 and all(len(p) == 2 for p in parts):
            try:
                raw = bytes(int(p, 16) for p in parts)
            except ValueError:
                raw = None
    if raw is None:
        raise NetworkConfigError(f"MAC address {mac!r} is not six colon-separated hex bytes")
    if raw[0] & 1:
        raise NetworkConfigError(f"MAC address {mac!r} is a multicast address; a NIC needs "
                                 "a unicast one (first byte even)")
    if raw == bytes(6):
        raise NetworkConfigError("MAC address 00:00:00:00:00:00 is not usable")
    return format_mac(raw)
