"""virtio-blk request parsing on hand-made chains (on generated ones: the fuzz target
tests/fuzz/test_fuzz_block.py)."""
import struct

import pytest

from xvm.devices.block.request import (
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, Limits,
    Request, RequestError, parse,
)
from xvm.devices.virtio.queue import DescriptorChain
from xvm.kvm.memory import GuestMemory

LIMITS = Limits(capacity=1000, max_discard_sectors=64, max_discard_seg=2,
                max_write_zeroes_sectors=64, max_write_zeroes_seg=2)
HDR, DATA, STATUS = 0x1000, 0x2000, 0x8000


@pytest.fixture(scope="module")
def memory():
    with GuestMemory.create([(0, 0x10000)]) as mem:
        yield mem


def chain(memory, type_, sector=0, readable=(), writable=((STATUS, 1),), header_len=16):
    memory.write(HDR, struct.pack("<IIQ", type_, 0, sector))
    return DescriptorChain(0, ((HDR, header_len),) + tuple(readable), tuple(writable), memory)


def test_read(memory):
    req = parse(chain(memory, VIRTIO_BLK_T_IN, 10, writable=((DATA, 1024), (STATUS, 1))),
                LIMITS)
    assert isinstance(req, Request)
    assert (req.type, req.sector, req.data, req.status_gpa) == (0, 10, ((DATA, 1024),), STATUS)


def test_status_byte_is_the_last_writable_byte(memory):
    # Data and status in one descriptor: the status is its last byte.
    req = parse(chain(memory, VIRTIO_BLK_T_IN, 0, writable=((DATA, 513),)), LIMITS)
    assert req.data == ((DATA, 512),) and req.status_gpa == DATA + 512


def test_header_split_over_descriptors(memory):
    memory.write(HDR, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 7))
    c = DescriptorChain(0, ((HDR, 4), (HDR + 4, 12), (DATA, 512)), ((STATUS, 1),), memory)
    req = parse(c, LIMITS)
    assert (req.type, req.sector, req.data) == (VIRTIO_BLK_T_OUT, 7, ((DATA, 512),))


@pytest.mark.parametrize("type_,sector,readable,writable,status", [
    (VIRTIO_BLK_T_IN, 999, (), ((DATA, 1024), (STATUS, 1)), VIRTIO_BLK_S_IOERR),
    (VIRTIO_BLK_T_IN, 0, (), ((DATA, 100), (STATUS, 1)), VIRTIO_BLK_S_IOERR),
    (VIRTIO_BLK_T_IN, 0, ((DATA, 512),), ((STATUS, 1),), VIRTIO_BLK_S_IOERR),
    (VIRTIO_BLK_T_OUT, 2**64 - 1, ((DATA, 512),), ((STATUS, 1),), VIRTIO_BLK_S_IOERR),
    (VIRTIO_BLK_T_OUT, 0, ((DATA, 512),), ((DATA + 512, 512), (STATUS, 1)),
     VIRTIO_BLK_S_IOERR),
    (VIRTIO_BLK_T_FLUSH, 0, ((DATA, 512),), ((STATUS, 1),), VIRTIO_BLK_S_IOERR),
    (VIRTIO_BLK_T_GET_ID, 0, (), ((STATUS, 1),), VIRTIO_BLK_S_IOERR),
    (VIRTIO_BLK_T_DISCARD, 0, ((DATA, 15),), ((STATUS, 1),), VIRTIO_BLK_S_IOERR),
    (VIRTIO_BLK_T_DISCARD, 0, ((DATA, 48),), ((STATUS, 1),), VIRTIO_BLK_S_UNSUPP),
    (12345, 0, (), ((STATUS, 1),), VIRTIO_BLK_S_UNSUPP),
])
def test_refused(memory, type_, sector, readable, writable, status):
    memory.fill(DATA, 64)
    with pytest.raises(RequestError) as info:
        parse(chain(memory, type_, sector, readable, writable), LIMITS)
    assert info.value.status == status
    assert info.value.status_gpa == writable[-1][0] + writable[-1][1] - 1


def test_no_status_byte(memory):
    with pytest.raises(RequestError) as info:
        parse(chain(memory, VIRTIO_BLK_T_FLUSH, writable=()), LIMITS)
    assert info.value.status_gpa is None


def test_short_header(memory):
    with pytest.raises(RequestError, match="header"):
        parse(chain(memory, VIRTIO_BLK_T_FLUSH, header_len=15), LIMITS)


@pytest.mark.parametrize("type_,seg,status", [
    (VIRTIO_BLK_T_DISCARD, (0, 8, 1), VIRTIO_BLK_S_UNSUPP),        # unmap on discard
    (VIRTIO_BLK_T_WRITE_ZEROES, (0, 8, 2), VIRTIO_BLK_S_UNSUPP),   # unknown flag
    (VIRTIO_BLK_T_WRITE_ZEROES, (0, 65, 0), VIRTIO_BLK_S_IOERR),   # > max sectors
    (VIRTIO_BLK_T_DISCARD, (990, 11, 0), VIRTIO_BLK_S_IOERR),      # beyond capacity
])
def test_segments_refused(memory, type_, seg, status):
    memory.write(DATA, struct.pack("<QII", *seg))
    with pytest.raises(RequestError) as info:
        parse(chain(memory, type_, readable=((DATA, 16),)), LIMITS)
    assert info.value.status == status


def test_segments_ok(memory):
    memory.write(DATA, struct.pack("<QIIQII", 0, 8, 0, 100, 64, 1))
    req = parse(chain(memory, VIRTIO_BLK_T_WRITE_ZEROES, readable=((DATA, 32),)), LIMITS)
    assert [(s.sector, s.num_sectors, s.flags) for s in req.segments] == [(0, 8, 0), (100, 64, 1)]
