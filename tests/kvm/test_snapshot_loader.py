"""The snapshot loader on a file a real machine wrote: it loads; a newer major version or a
host lacking a CPU feature is refused.  Damaged files (truncated, flipped, hostile states) are
the fuzz targets of tests/fuzz/test_fuzz_snapshot.py."""
import os
import tempfile

import pytest

import xvm
from xvm.kvm.system import Kvm
from xvm.kvm.vcpu import install_kick_handler
from xvm.machine import build_machine
from xvm.migration import SnapshotError, load_snapshot, write_snapshot
from xvm.migration.snapshot import missing_cpu_features


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


def test_a_good_file_loads(snapshot_file):
    path, data, config = snapshot_file
    snap = load_snapshot(path)
    assert snap.config == config and len(snap.state.vcpus) == 1


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
