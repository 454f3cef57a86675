"""Fuzz target: the virtio-blk request parser (:func:`xvm.devices.block.request.parse`) on
chains a hostile guest builds: any header (known types with edge sectors, or random
bytes), readable and writable pieces of any length, discard / write-zeroes segments of
any value.  Either the request is refused with a :class:`RequestError` carrying IOERR or
UNSUPP for the status byte (the last device-writable byte, if there is one), or it is
valid by the rules of the virtio spec §5.2.6: data in the right direction, whole sectors
inside the capacity, segments within the limits.

Seeds: ``corpus/blk/*.json``, one request each ({"header": hex of the 16 bytes,
"readable": [[gpa, len], ...] after the header, "writable": [...], "body": hex written at
DATA}), replayed first and used as starting points.
"""
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ, examples, seeds
from xvm.devices.block.request import (
    SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, Limits, RequestError,
    parse,
)
from xvm.devices.virtio.queue import DescriptorChain
from xvm.kvm.memory import GuestMemory

LIMITS = Limits(capacity=1000, max_discard_sectors=64, max_discard_seg=2,
                max_write_zeroes_sectors=64, max_write_zeroes_seg=2)
HDR, DATA = 0x1000, 0x2000
TYPES = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD,
         VIRTIO_BLK_T_WRITE_ZEROES]
SEEDS = {name: json.loads(data) for name, data in seeds("blk", names=True)}


def check(header, readable, writable, body):
    with GuestMemory.create([(0, 0x10000)]) as memory:
        memory.write(HDR, header)
        memory.write(DATA, body)
        writable = tuple(map(tuple, writable))
        chain = DescriptorChain(0, ((HDR, 16),) + tuple(map(tuple, readable)), writable, memory)
        nonempty = [piece for piece in writable if piece[1]]
        last = nonempty[-1][0] + nonempty[-1][1] - 1 if nonempty else None
        try:
            request = parse(chain, LIMITS)
        except RequestError as e:
            assert e.status in (VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP)
            assert e.status_gpa == last
            return None
        assert request.status_gpa == last
        out_len = sum(n for _, n in readable)
        in_len = sum(n for _, n in writable) - 1
        if request.type in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT):
            assert request.data_len % SECTOR_SIZE == 0
            assert request.sector + request.data_len // SECTOR_SIZE <= LIMITS.capacity
            assert request.data_len == (in_len if request.type == VIRTIO_BLK_T_IN else out_len)
            assert (out_len if request.type == VIRTIO_BLK_T_IN else in_len) == 0
        elif request.type == VIRTIO_BLK_T_FLUSH:
            assert in_len == out_len == 0
        elif request.type == VIRTIO_BLK_T_GET_ID:
            assert out_len == 0 and request.data_len == in_len > 0
        else:
            assert request.type in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES)
            assert 0 < len(request.segments) <= 2 and in_len == 0
            for seg in request.segments:
                assert seg.num_sectors <= 64 and seg.sector + seg.num_sectors <= LIMITS.capacity
        return request


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(SEEDS))
def test_blk_request_seeds(name):
    seed = SEEDS[name]
    request = check(bytes.fromhex(seed["header"]), seed["readable"], seed["writable"], bytes.fromhex(seed["body"]))
    assert (request is not None) == name.startswith("valid"), request


SECTOR = st.one_of(st.sampled_from([0, 1, LIMITS.capacity - 1, LIMITS.capacity, LIMITS.capacity + 1,
                                    (1 << 63), (1 << 64) - 1]), st.integers(0, (1 << 64) - 1))
HEADER = st.one_of(
    st.builds(lambda t, r, s: struct.pack("<IIQ", t, r, s),
              st.one_of(st.sampled_from(TYPES), st.integers(0, 0xFFFF_FFFF)), st.integers(0, 0xFFFF_FFFF), SECTOR),
    st.binary(min_size=16, max_size=16))
LENGTH = st.one_of(st.sampled_from([0, 1, 15, 16, 32, 48, 511, 512, 513, 1024]), st.integers(1, 0x800))
PIECES = st.lists(st.tuples(st.integers(0, 0xF000), LENGTH), max_size=4)
SEGMENT = st.builds(lambda s, n, f: struct.pack("<QII", s, n, f), SECTOR,
                    st.one_of(st.integers(0, 70), st.integers(0, 0xFFFF_FFFF)), st.sampled_from([0, 1, 2, 3, 1 << 31]))
BODY = st.one_of(st.lists(SEGMENT, max_size=4).map(b"".join), st.binary(max_size=64))
SEED = st.sampled_from(sorted(SEEDS)).map(lambda n: SEEDS[n]) if SEEDS else st.nothing()


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(200))
@given(header=st.one_of(HEADER, SEED.map(lambda s: bytes.fromhex(s["header"]))),
       readable=st.one_of(PIECES, SEED.map(lambda s: s["readable"])),
       writable=st.one_of(PIECES, SEED.map(lambda s: s["writable"])),
       body=st.one_of(BODY, SEED.map(lambda s: bytes.fromhex(s["body"]))))
def test_blk_request_parser(header, readable, writable, body):
    check(header, readable, writable, body)
