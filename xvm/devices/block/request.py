"""virtio-blk requests (virtio 1.2 §5.2.6): parsing and validating a chain.

A request is ``struct virtio_blk_req { le32 type; le32 reserved; le64 sector;
u8 data[]; u8 status; }``: the 16-byte header and, for writes, the data are
device-readable; read data and the status byte are device-writable, the
status byte last.  Everything is guest input; each check cites its rule.
:func:`parse` returns a :class:`Request` or raises :class:`RequestError`
carrying the status to report (and where, if the status byte could be
found at all).
"""
import struct
from dataclasses import dataclass

from ..virtio.queue import split_ranges

# §5.2.6 request types
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_GET_LIFETIME = 10
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_T_SECURE_ERASE = 14

# §5.2.6 status values
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

# §5.2.6 struct virtio_blk_discard_write_zeroes flags
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1

SECTOR_SIZE = 512
SECTOR_SHIFT = 9
VIRTIO_BLK_ID_BYTES = 20
REQUEST_HEADER_SIZE = 16
DISCARD_SEGMENT_SIZE = 16

_HEADER = struct.Struct("<IIQ")
_SEGMENT = struct.Struct("<QII")

TYPE_NAMES = {
    VIRTIO_BLK_T_IN: "IN", VIRTIO_BLK_T_OUT: "OUT", VIRTIO_BLK_T_FLUSH: "FLUSH",
    VIRTIO_BLK_T_GET_ID: "GET_ID", VIRTIO_BLK_T_GET_LIFETIME: "GET_LIFETIME",
    VIRTIO_BLK_T_DISCARD: "DISCARD", VIRTIO_BLK_T_WRITE_ZEROES: "WRITE_ZEROES",
    VIRTIO_BLK_T_SECURE_ERASE: "SECURE_ERASE",
}


class RequestError(Exception):
    """This request fails with ``status``; ``status_gpa`` is where to write it
    (``None`` when the chain has no usable status byte: the request is then
    returned with used length 0)."""

    def __init__(self, reason, status, status_gpa=None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.status_gpa = status_gpa


@dataclass(frozen=True)
class Segment:
    """One ``virtio_blk_discard_write_zeroes`` range."""

    sector: int
    num_sectors: int
    flags: int


@dataclass(frozen=True)
class Request:
    """A validated request.  ``data`` are ``(gpa, len)`` pieces: device-readable
    for OUT, device-writable for IN and GET_ID, empty otherwise."""

    head: int
    type: int
    sector: int
    data: tuple
    status_gpa: int
    segments: tuple = ()

    @property
    def data_len(self):
        return sum(length for _, length in self.data)

    @property
    def type_name(self):
        return TYPE_NAMES.get(self.type, str(self.type))


@dataclass(frozen=True)
class Limits:
    """What the device told the driver in its configuration space (§5.2.4)."""

    capacity: int
    max_discard_sectors: int
    max_discard_seg: int
    max_write_zeroes_sectors: int
    max_write_zeroes_seg: int


def parse(chain, limits):
    """Parse and validate ``chain`` (a DescriptorChain) as a virtio-blk request."""
    memory = chain.memory
    # §5.2.6 "u8 status" is the last device-writable byte of the request.
    writable_len = chain.writable_len
    if writable_len == 0:
        raise RequestError("no device-writable status byte (§5.2.6)", VIRTIO_BLK_S_IOERR)
    status_gpa = split_ranges(chain.writable, writable_len - 1, 1)[0][0]
    in_data = split_ranges(chain.writable, 0, writable_len - 1)

    # §5.2.6 the header (type, reserved, sector) is device-readable and comes first.
    readable_len = chain.readable_len
    if readable_len < REQUEST_HEADER_SIZE:
        raise RequestError("request header shorter than 16 bytes (§5.2.6)",
                           VIRTIO_BLK_S_IOERR, status_gpa)
    header = b"".join(memory.read(gpa, n)
                      for gpa, n in split_ranges(chain.readable, 0, REQUEST_HEADER_SIZE))
    type_, _reserved, sector = _HEADER.unpack(header)
    out_data = split_ranges(chain.readable, REQUEST_HEADER_SIZE,
                            readable_len - REQUEST_HEADER_SIZE)
    out_len = readable_len - REQUEST_HEADER_SIZE
    in_len = writable_len - 1

    def fail(reason, status=VIRTIO_BLK_S_IOERR):
        raise RequestError(reason, status, status_gpa)

    if type_ in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT):
        data, length = (in_data, in_len) if type_ == VIRTIO_BLK_T_IN else (out_data, out_len)
        other = out_len if type_ == VIRTIO_BLK_T_IN else in_len
        # §5.2.6: IN data is device-writable, OUT data device-readable; nothing else.
        if other:
            fail("data buffers in the wrong direction for IN/OUT (§5.2.6)")
        # §5.2.6.1 "The length of data MUST be a multiple of 512 bytes for
        # VIRTIO_BLK_T_IN and VIRTIO_BLK_T_OUT requests."
        if length % SECTOR_SIZE:
            fail("IN/OUT data length not a multiple of 512 (§5.2.6.1)")
        # §5.2.6.1 "A driver MUST NOT submit a request which would cause a read or
        # write beyond capacity."
        if sector > limits.capacity or (length >> SECTOR_SHIFT) > limits.capacity - sector:
            fail("IN/OUT beyond capacity (§5.2.6.1)")
        return Request(chain.head, type_, sector, tuple(data), status_gpa)

    if type_ == VIRTIO_BLK_T_FLUSH:
        # §5.2.6: FLUSH carries no data (its sector field is ignored by the device).
        if in_len or out_len:
            fail("FLUSH with data buffers (§5.2.6)")
        return Request(chain.head, type_, 0, (), status_gpa)

    if type_ == VIRTIO_BLK_T_GET_ID:
        # §5.2.6: GET_ID writes a 20-byte, NUL-padded serial into device-writable data.
        if out_len or in_len == 0:
            fail("GET_ID without a device-writable id buffer (§5.2.6)")
        return Request(chain.head, type_, 0, tuple(in_data), status_gpa)

    if type_ in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        is_discard = type_ == VIRTIO_BLK_T_DISCARD
        max_sectors = limits.max_discard_sectors if is_discard else limits.max_write_zeroes_sectors
        max_seg = limits.max_discard_seg if is_discard else limits.max_write_zeroes_seg
        # §5.2.6: data is an array of 16-byte struct virtio_blk_discard_write_zeroes.
        if in_len or out_len == 0 or out_len % DISCARD_SEGMENT_SIZE:
            fail("DISCARD/WRITE_ZEROES data not a non-empty array of 16-byte segments (§5.2.6)")
        count = out_len // DISCARD_SEGMENT_SIZE
        # §5.2.6.1 the number of segments MUST NOT exceed max_discard_seg /
        # max_write_zeroes_seg.
        if count > max_seg:
            fail("more segments than max_discard_seg/max_write_zeroes_seg (§5.2.6.1)",
                 VIRTIO_BLK_S_UNSUPP)
        raw = b"".join(memory.read(gpa, n) for gpa, n in out_data)
        segments = []
        for i in range(count):
            seg = Segment(*_SEGMENT.unpack_from(raw, DISCARD_SEGMENT_SIZE * i))
            # §5.2.6.2 "the device MUST set the status byte to VIRTIO_BLK_S_UNSUPP for
            # discard and write zeroes commands if any unknown flag is set" and "for
            # discard commands if the unmap flag is set".
            if seg.flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or (is_discard and seg.flags):
                fail("unknown or illegal DISCARD/WRITE_ZEROES flags (§5.2.6.2)",
                     VIRTIO_BLK_S_UNSUPP)
            # §5.2.6.1 num_sectors MUST NOT exceed max_discard_sectors /
            # max_write_zeroes_sectors; and no request goes beyond capacity.
            if seg.num_sectors > max_sectors:
                fail("segment larger than max_discard_sectors/max_write_zeroes_sectors "
                     "(§5.2.6.1)")
            if seg.sector > limits.capacity or seg.num_sectors > limits.capacity - seg.sector:
                fail("DISCARD/WRITE_ZEROES beyond capacity (§5.2.6.1)")
            segments.append(seg)
        return Request(chain.head, type_, 0, (), status_gpa, tuple(segments))

    # §5.2.6.2: a request type the device does not implement gets VIRTIO_BLK_S_UNSUPP.
    fail(f"unsupported request type {type_} (§5.2.6.2)", VIRTIO_BLK_S_UNSUPP)
