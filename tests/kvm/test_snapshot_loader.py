"""The snapshot loader refuses every damaged file with a SnapshotError (hypothesis)."""
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xvm
from xvm.kvm.system import Kvm
from xvm.kvm.vcpu import install_kick_handler
from xvm.machine import build_machine
from xvm.migration import SnapshotError, load_snapshot, write_snapshot
from xvm.migration.snapshot import HEADER_SIZE, missing_cpu_features


@pytest.fixture(scope="module")
def snapshot_file(guest):
    install_kick_handler()
    config = xvm.DomainConfig(name="s", kernel=guest("busy"), memory_mib=16)
    directory = tempfile.mkdtemp(prefix="xvm-snap-")
    path = os.path.join(directory, "snap")
    with Kvm() as kvm:
        machine = build_machine(kvm, config, console_sink=None)
        try:
            write_snapshot(path, config, machine)  # an unstarted machine is quiescent
        finally:
            machine.close()
    with open(path, "rb") as f:
        data = f.read()
    yield path, data, config
    os.unlink(path)
    os.rmdir(directory)


def _state_end(data):
    import struct
    return HEADER_SIZE + struct.unpack_from("<Q", data, 8 + 2 + 2 + 16 + 8)[0]


def test_a_good_file_loads(snapshot_file):
    path, data, config = snapshot_file
    snap = load_snapshot(path)
    assert snap.config == config and len(snap.state.vcpus) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=1 << 30))
def test_truncated_files_are_refused(snapshot_file, cut):
    path, data, _ = snapshot_file
    cut = cut % len(data)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path)) as f:
        f.write(data[:cut])
        f.flush()
        with pytest.raises(SnapshotError) as info:
            load_snapshot(f.name)
    assert info.value.what in ("truncated", "magic", "checksum", "state")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_bit_flips_in_header_or_state_are_refused(snapshot_file, position, bit):
    path, data, _ = snapshot_file
    position %= _state_end(data)
    damaged = bytearray(data)
    damaged[position] ^= 1 << bit
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path)) as f:
        f.write(damaged)
        f.flush()
        with pytest.raises(SnapshotError):
            load_snapshot(f.name)


def test_newer_major_version_is_refused(snapshot_file):
    path, data, _ = snapshot_file
    damaged = bytearray(data)
    damaged[8:10] = (99).to_bytes(2, "little")
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path)) as f:
        f.write(damaged)
        f.flush()
        with pytest.raises(SnapshotError) as info:
            load_snapshot(f.name)
    assert info.value.what == "version" and "99" in str(info.value)


def test_a_host_lacking_a_cpu_feature_is_refused(snapshot_file):
    path, _, _ = snapshot_file
    snap = load_snapshot(path)
    leaf1 = next(e for e in snap.cpuid if e[0] == 1)
    bit = next(b for b in range(31) if leaf1[5] & (1 << b))  # a feature the guest saw (ecx)
    host = [list(e) for e in snap.cpuid]
    for entry in host:
        if entry[0] == 1:
            entry[5] &= ~(1 << bit)
    assert [(m[0], m[2], m[3]) for m in missing_cpu_features(snap.cpuid, host)] == [(1, "ecx", bit)]
    with pytest.raises(SnapshotError) as info:
        load_snapshot(path, supported_cpuid=host)
    assert info.value.what == "cpu" and f"ecx bit {bit}" in str(info.value)
