"""virtio-net packets (virtio 1.2 §5.1.6): the header and checks on guest frames.

Every packet on either queue starts with ``struct virtio_net_hdr`` (12 bytes:
VIRTIO_F_VERSION_1 always includes ``num_buffers``, §5.1.6).  A transmitted
packet is guest input: :func:`parse_tx` checks the header against the
negotiated features and raises :class:`TxError` naming the violated rule; the
device drops that one packet.  The header goes to the TAP unchanged
(IFF_VNET_HDR), so the host kernel does the checksum and segmentation the
guest left to it.
"""
import struct
from dataclasses import dataclass

from ..virtio.device import has_feature
from ..virtio.queue import split_ranges

# §5.1.3 Feature bits
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_HOST_UFO = 14
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_CTRL_RX = 18
VIRTIO_NET_F_CTRL_VLAN = 19
VIRTIO_NET_F_GUEST_ANNOUNCE = 21
VIRTIO_NET_F_MQ = 22
VIRTIO_NET_F_CTRL_MAC_ADDR = 23
VIRTIO_NET_F_RSS = 60

# §5.1.6.5 Control Virtqueue: classes and commands, and the ack values.
VIRTIO_NET_OK = 0
VIRTIO_NET_ERR = 1
VIRTIO_NET_CTRL_RX = 0
VIRTIO_NET_CTRL_MAC = 1
VIRTIO_NET_CTRL_VLAN = 2
VIRTIO_NET_CTRL_ANNOUNCE = 3
VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0
VIRTIO_NET_CTRL_MQ = 4
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0
VIRTIO_NET_CTRL_MQ_RSS_CONFIG = 1
VIRTIO_NET_CTRL_MQ_HASH_CONFIG = 2
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000
VIRTIO_NET_CTRL_GUEST_OFFLOADS = 5

# §5.1.6 struct virtio_net_hdr
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_F_RSC_INFO = 4
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80

VIRTIO_NET_HDR_SIZE = 12
_HDR = struct.Struct("<BBHHHHH")
assert _HDR.size == VIRTIO_NET_HDR_SIZE

ETH_HLEN = 14
# The largest frame either way: a 64 KiB GSO packet plus its Ethernet and VLAN
# headers (what Linux's virtio_net allows, §5.1.6.3.1's 65562-byte buffers).
MAX_FRAME = 65550
MAX_PACKET = VIRTIO_NET_HDR_SIZE + MAX_FRAME

# gso_type -> the feature the driver needs before it may send it (§5.1.6.2.1)
_GSO_FEATURE = {
    VIRTIO_NET_HDR_GSO_TCPV4: VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_HDR_GSO_TCPV6: VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_HDR_GSO_UDP: VIRTIO_NET_F_HOST_UFO,
}


# The most command-specific data read from a control chain: the largest command this
# device carries out (VQ_PAIRS_SET) has 2 bytes; more is read only to be refused.
MAX_CTRL_DATA = 64


class TxError(Exception):
    """This transmitted packet is malformed and is dropped."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class NetHeader:
    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0

    def pack(self):
        return _HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                         self.csum_start, self.csum_offset, self.num_buffers)

    @classmethod
    def unpack(cls, data):
        return cls(*_HDR.unpack_from(data))


def parse_tx(chain, features):
    """Check a tx chain (§5.1.6.2); returns the frame's length (without the header)."""
    # §5.1.6.2: a transmitted packet is device-readable only.
    if chain.writable:
        raise TxError("device-writable buffer in a transmit chain (§5.1.6.2)")
    readable = chain.readable
    total = 0
    for _, length in readable:
        total += length
    # §5.1.6: every packet starts with the 12-byte struct virtio_net_hdr.
    if total < VIRTIO_NET_HDR_SIZE + ETH_HLEN:
        raise TxError(f"transmit chain of {total} bytes is shorter than the header "
                      "and an Ethernet header (§5.1.6)")
    frame_len = total - VIRTIO_NET_HDR_SIZE
    if frame_len > MAX_FRAME:
        raise TxError(f"frame of {frame_len} bytes is larger than {MAX_FRAME} (§5.1.6.2)")
    memory = chain.memory
    gpa, length = readable[0]
    if length >= VIRTIO_NET_HDR_SIZE:
        raw = memory.read(gpa, VIRTIO_NET_HDR_SIZE)
    else:
        raw = b"".join(memory.read(gpa, length) for gpa, length in
                       split_ranges(readable, 0, VIRTIO_NET_HDR_SIZE))
    flags, gso_type, _, gso_size, csum_start, csum_offset, _ = _HDR.unpack(raw)
    if not flags and not gso_type:
        return frame_len  # nothing offloaded: the common case without CSUM
    # §5.1.6.2.1 "The driver MUST NOT set the VIRTIO_NET_HDR_F_DATA_VALID and
    # VIRTIO_NET_HDR_F_RSC_INFO bits in flags."
    if flags & ~VIRTIO_NET_HDR_F_NEEDS_CSUM:
        raise TxError(f"flags {flags:#x}: only NEEDS_CSUM is legal on transmit (§5.1.6.2.1)")
    # §5.1.6.2.1 "If VIRTIO_NET_F_CSUM is not negotiated, the driver MUST NOT set
    # VIRTIO_NET_HDR_F_NEEDS_CSUM"; csum_start/offset must lie inside the packet.
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        if not has_feature(features, VIRTIO_NET_F_CSUM):
            raise TxError("NEEDS_CSUM without VIRTIO_NET_F_CSUM (§5.1.6.2.1)")
        if csum_start + csum_offset + 2 > frame_len:
            raise TxError(f"checksum at {csum_start}+{csum_offset} lies outside the "
                          f"{frame_len}-byte frame (§5.1.6.2)")
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso != VIRTIO_NET_HDR_GSO_NONE:
        # §5.1.6.2.1 "If none of the VIRTIO_NET_F_HOST_TSO4, TSO6 or UFO options have
        # been negotiated, the driver MUST set gso_type to VIRTIO_NET_HDR_GSO_NONE";
        # each type needs its own feature.
        feature = _GSO_FEATURE.get(gso)
        if feature is None or not has_feature(features, feature):
            raise TxError(f"gso_type {gso_type:#x} not negotiated (§5.1.6.2.1)")
        # §5.1.6.2.1 "the driver MUST set VIRTIO_NET_HDR_F_NEEDS_CSUM" with GSO, and
        # a segment size of 0 would make no progress.
        if not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM or gso_size == 0:
            raise TxError("GSO without NEEDS_CSUM or with gso_size 0 (§5.1.6.2.1)")
        # §5.1.6.2.1 ECN only with VIRTIO_NET_F_HOST_ECN.
        if gso_type & VIRTIO_NET_HDR_GSO_ECN and not has_feature(features,
                                                                 VIRTIO_NET_F_HOST_ECN):
            raise TxError("GSO_ECN without VIRTIO_NET_F_HOST_ECN (§5.1.6.2.1)")
    elif gso_type & VIRTIO_NET_HDR_GSO_ECN:
        raise TxError("GSO_ECN on a packet without GSO (§5.1.6.2.1)")
    return frame_len


class CtrlError(Exception):
    """This control command is malformed: answered VIRTIO_NET_ERR if it has an ack byte."""

    def __init__(self, reason, ack_gpa):
        super().__init__(reason)
        self.reason = reason
        self.ack_gpa = ack_gpa


@dataclass(frozen=True)
class CtrlCommand:
    """One control virtqueue request (§5.1.6.5 struct virtio_net_ctrl): ``cls`` and
    ``command``, the command-specific ``data`` (up to :data:`MAX_CTRL_DATA` bytes;
    ``data_len`` is its whole length) and where the device writes its ack."""

    cls: int
    command: int
    data: bytes
    data_len: int
    ack_gpa: int


def parse_ctrl(chain):
    """Check a control chain (§5.1.6.5): the device-readable class, command and
    command-specific data, then at least one device-writable byte for the ack.
    Returns a :class:`CtrlCommand`; raises :class:`CtrlError` (``ack_gpa`` on it
    when there is somewhere to write VIRTIO_NET_ERR, else None)."""
    writable = chain.writable
    ack_gpa = writable[0][0] if writable else None
    if ack_gpa is None:
        # §5.1.6.5: "u8 ack" is device-writable; without it nothing can be answered.
        raise CtrlError("control command without a device-writable ack byte (§5.1.6.5)", None)
    readable = chain.readable
    total = sum(length for _, length in readable)
    if total < 2:
        # §5.1.6.5: "u8 class; u8 command;" come first, device-readable.
        raise CtrlError(f"control command of {total} bytes has no class and command "
                        "(§5.1.6.5)", ack_gpa)
    take = min(total, 2 + MAX_CTRL_DATA)
    raw = b"".join(chain.memory.read(gpa, length)
                   for gpa, length in split_ranges(readable, 0, take))
    return CtrlCommand(raw[0], raw[1], raw[2:], total - 2, ack_gpa)


def tun_offloads(features, supported):
    """The TUNSETOFFLOAD flags matching what the driver can receive
    (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN), limited to ``supported``."""
    from .backend.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN
    flags = 0
    if has_feature(features, VIRTIO_NET_F_GUEST_CSUM):
        flags |= TUN_F_CSUM
        if has_feature(features, VIRTIO_NET_F_GUEST_TSO4):
            flags |= TUN_F_TSO4
        if has_feature(features, VIRTIO_NET_F_GUEST_TSO6):
            flags |= TUN_F_TSO6
        if flags & (TUN_F_TSO4 | TUN_F_TSO6) and has_feature(features,
                                                            VIRTIO_NET_F_GUEST_ECN):
            flags |= TUN_F_TSO_ECN
    return flags & supported
