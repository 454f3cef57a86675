"""Fuzz targets: the snapshot loader (:func:`xvm.migration.load_snapshot`) on damaged files.

The seeds of ``corpus/snapshot/`` are the header and state of snapshot files (the valid
one written by a real machine, see tests/fuzz/make_corpus.py); each example is written
to a file, extended (sparse) to the size its header declares, and loaded.  Either it
loads -- and then every RAM region lies inside the file and the state fits its
configuration -- or it is refused with a :class:`SnapshotError`; never another exception.

- :func:`test_snapshot_loader_damaged_bytes`: bytes flipped, cut or appended anywhere
  (the checksum and the truncation checks see them);
- :func:`test_snapshot_loader_hostile_state`: a writer that signs what it writes: the real
  state with hostile values anywhere in its tree (Infinity, huge or negative numbers,
  wrong types, missing keys), hostile header fields, and the checksum recomputed, so the
  loader's own checks of the state's shape are what stands between it and a crash.
"""
import json
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ, examples, hostile_tree, mutated, seeds
from xvm.kvm.memory import PAGE_SIZE
from xvm.migration import SnapshotError, load_snapshot
from xvm.migration.snapshot import HEADER, HEADER_SIZE, _header

SPARSE_LIMIT = 1 << 30  # a header declaring more than this is loaded as the file is (not extended)
SEEDS = dict(seeds("snapshot", names=True))
VALID = SEEDS.get("valid-16mib.bin")


def load(data, directory, extend=True):
    """Write ``data`` to a file (extended to its declared memory end) and load it."""
    path = os.path.join(directory, "snap")
    with open(path, "wb") as f:
        f.write(data)
        if extend and len(data) >= HEADER.size:
            fields = HEADER.unpack_from(data)
            end = fields[6] + fields[7]
            if len(data) < end <= SPARSE_LIMIT:
                f.truncate(end)
    try:
        snapshot = load_snapshot(path)
    except SnapshotError as e:
        assert e.what in ("magic", "version", "arch", "checksum", "truncated", "state", "config"), e
        return None
    size = os.path.getsize(path)
    for gpa, length, offset in snapshot.regions:
        assert offset % PAGE_SIZE == 0 and offset + length <= size
    assert snapshot.state.misfit(snapshot.config) is None
    return snapshot


def signed(body, memory_offset=None, memory_length=None):
    """A snapshot head with ``body`` as its state and a correct checksum."""
    fields = HEADER.unpack_from(VALID)
    memory_offset = fields[6] if memory_offset is None else memory_offset
    memory_length = fields[7] if memory_length is None else memory_length
    return _header(len(body), memory_offset, memory_length, body) + body


def _state(data):
    fields = HEADER.unpack_from(data)
    return json.loads(data[HEADER_SIZE:HEADER_SIZE + fields[5]])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(SEEDS))
def test_snapshot_loader_seeds(tmp_path, name):
    snapshot = load(SEEDS[name], str(tmp_path))
    if name.startswith("valid"):
        assert snapshot is not None and snapshot.config.name == "seed"
    else:  # every other seed is damaged on purpose
        assert snapshot is None


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(100))
@given(data=mutated("snapshot", max_size=64 << 10), extend=st.booleans())
def test_snapshot_loader_damaged_bytes(tmp_path, data, extend):
    load(data, str(tmp_path), extend)


HEADER_FIELD = st.one_of(st.none(), st.sampled_from([0, PAGE_SIZE, 1 << 24, (1 << 64) - PAGE_SIZE, (1 << 64) - 1]),
                         st.integers(0, (1 << 64) - 1))


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(100))
@given(state=hostile_tree(_state(VALID)) if VALID else st.nothing(), offset=HEADER_FIELD, length=HEADER_FIELD)
def test_snapshot_loader_hostile_state(tmp_path, state, offset, length):
    load(signed(json.dumps(state).encode(), offset, length), str(tmp_path))


def test_a_snapshot_seed_is_checked_in():
    assert VALID is not None, "corpus/snapshot/valid-16mib.bin is missing (see tests/fuzz/make_corpus.py)"
    assert struct.unpack_from("<8s", VALID)[0] == b"XVMSNAP\0"
