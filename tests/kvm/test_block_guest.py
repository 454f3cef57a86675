"""virtio-blk end to end: the native-speed test guest ``blk`` drives xvm's device on /dev/kvm.

The guest (tests/guests/blk.c) is a polling virtio-mmio driver; these tests check what it
reports on the console and what it left in the host's image file.
"""
import hashlib
import os
import shutil
import subprocess

import pytest

import xvm
from xvm import DomainState

SECTOR = 512
MiB = 1 << 20


@pytest.fixture
def host(inprocess_host):
    """These tests read device metrics and internals: the VMM runs in this process."""
    return inprocess_host


def pattern(sector):
    """The 512 bytes blk.c's blk_pattern() writes to ``sector``."""
    return bytes(((i + sector * 37) ^ 0xA5 ^ (sector >> 8)) & 0xFF for i in range(SECTOR))


def verify_writes(capacity):
    """(first sector, sector count) of every write of ``mode=verify`` (blk.c verify())."""
    return [(0, 1), (1, 1), (16, 8), (capacity // 2, 1), (capacity - 1, 1)]


def sparse_image(path, size, marker_at=None):
    with open(path, "wb") as f:
        f.truncate(size)
        if marker_at is not None:
            f.seek(marker_at)
            f.write(b"\x5a" * 4096)
    return str(path)


def run(host, guest, image, cmdline, *, readonly=False, serial=None, cache="none"):
    """Boot the blk guest on ``image``; returns (console text of its result line, device)."""
    dom = host.define(xvm.DomainConfig(
        name="blk", memory_mib=64, kernel=guest("blk"), cmdline=cmdline,
        disks=[xvm.Disk(image, readonly=readonly, serial=serial, cache=cache)]))
    dom.start()
    try:
        device = dom.machine.virtio[0].device
        line = dom.console.expect(r"blk: (ok|verify ok|ro ok|FAIL)[^\n]*\n", timeout=30).group(0)
        assert dom.wait(timeout=10) is DomainState.SHUTOFF
    finally:
        if dom.state is not DomainState.SHUTOFF:
            dom.destroy()
        dom.undefine()
    return line.strip(), device


def data_extents(path):
    """[(start, end)] of the allocated (non-hole) ranges of ``path`` (SEEK_DATA/SEEK_HOLE)."""
    extents = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return extents


def expected_image(size, capacity, marker=None):
    expected = bytearray(size)
    if marker is not None:
        expected[marker:marker + 4096] = b"\x5a" * 4096
    for first, count in verify_writes(capacity):
        for sector in range(first, first + count):
            expected[sector * SECTOR:(sector + 1) * SECTOR] = pattern(sector)
    return expected


def assert_image(path, expected):
    with open(path, "rb") as f:
        content = f.read()
    if content != expected:
        bad = next(i for i in range(len(expected)) if i >= len(content) or content[i] != expected[i])
        pytest.fail(f"image differs from the guest's pattern first at byte {bad} (sector {bad // SECTOR})")


def test_verify_writes_exactly_the_pattern_and_flush_reaches_fdatasync(no_leaks, host, guest, tmp_path):
    size = 64 * MiB
    marker = 4 * MiB  # 4 KiB of 0x5a the guest never touches
    image = sparse_image(tmp_path / "disk.img", size, marker_at=marker)
    line, device = run(host, guest, image, "mode=verify", serial="xvm-serial-0001")

    capacity = size // SECTOR
    assert line == f"blk: verify ok capacity={capacity} serial=xvm-serial-0001"
    assert_image(image, expected_image(size, capacity, marker))

    m = device.metrics
    assert (m.write_count, m.write_bytes) == (5, 12 * SECTOR)
    assert (m.read_count, m.read_bytes) == (5, 12 * SECTOR)
    assert m.get_id_count == 1
    # The FLUSH completed only after fdatasync (cache="none").
    assert (m.flush_count, m.fdatasync_count) == (1, 1)
    # The two reads at and across the end were refused with IOERR, nothing else failed.
    assert m.invalid_request_count == 2
    assert (m.io_error_count, m.unsupported_count, m.invalid_chain_count, m.queue_error_count) == (0, 0, 0, 0)
    # A polling driver set VIRTQ_AVAIL_F_NO_INTERRUPT: no interrupt was sent.
    assert m.interrupt_count == 0


def test_unsafe_cache_flush_skips_fdatasync(no_leaks, host, guest, tmp_path):
    image = sparse_image(tmp_path / "disk.img", 8 * MiB)
    line, device = run(host, guest, image, "mode=verify", cache="unsafe")
    assert line.startswith("blk: verify ok capacity=16384 serial=")
    assert (device.metrics.flush_count, device.metrics.fdatasync_count) == (1, 0)


def test_sparse_image_stays_sparse_where_the_guest_never_wrote(no_leaks, host, guest, tmp_path):
    size = 1 << 30
    image = sparse_image(tmp_path / "disk.img", size)
    line, _ = run(host, guest, image, "mode=verify")
    assert line.startswith(f"blk: verify ok capacity={size // SECTOR}")

    capacity = size // SECTOR
    written = [(first * SECTOR, (first + count) * SECTOR) for first, count in verify_writes(capacity)]
    slack = 64 * 1024  # the file system may allocate a little around a write
    extents = data_extents(image)
    assert extents, "nothing allocated although the guest wrote"
    for start, end in extents:
        assert any(start >= w0 - slack and end <= w1 + slack for w0, w1 in written), \
            f"allocated {start:#x}..{end:#x} where the guest never wrote; extents {extents}"
    assert os.stat(image).st_blocks * 512 <= len(written) * 2 * slack


def test_readonly_disk_refuses_writes_and_reads_work(no_leaks, host, guest, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 * MiB))
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    line, device = run(host, guest, str(image), "mode=ro", readonly=True, serial="ro-disk")
    assert line == f"blk: ro ok capacity={MiB // SECTOR} serial=ro-disk"
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    m = device.metrics
    assert (m.write_count, m.read_count, m.io_error_count) == (0, 2, 1)


def test_verify_mode_on_a_readonly_disk_fails_precisely(no_leaks, host, guest, tmp_path):
    image = sparse_image(tmp_path / "disk.img", 8 * MiB)
    line, _ = run(host, guest, image, "mode=verify", readonly=True)
    assert line.startswith("blk: FAIL verify needs a writable disk but the device offers VIRTIO_BLK_F_RO")


def test_bench_mode_reports_and_does_the_ios(no_leaks, host, guest, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(8 * MiB))
    for cmdline, reads, writes in (("op=randread bs=4096 count=200 depth=4", 200, 0),
                                   ("op=seqwrite bs=1048576 count=12 depth=2", 0, 12)):
        dom = host.define(xvm.DomainConfig(name="blk", memory_mib=64, kernel=guest("blk"),
                                           cmdline=f"mode=bench linger_ms=0 {cmdline}",
                                           disks=[xvm.Disk(str(image))]))
        dom.start()
        try:
            device = dom.machine.virtio[0].device
            op = cmdline.split()[0][3:]
            m = dom.console.expect(rf"blk: (bench {op} (\d+) ios in (\d+) ns|FAIL[^\n]*)\n", timeout=30)
            assert m.group(2) is not None, m.group(0)
            assert int(m.group(2)) == reads + writes and int(m.group(3)) > 0
            assert dom.wait(timeout=10) is DomainState.SHUTOFF
        finally:
            if dom.state is not DomainState.SHUTOFF:
                dom.destroy()
            dom.undefine()
        assert (device.metrics.read_count, device.metrics.write_count) == (reads, writes)


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed (Debian: qemu-system-x86)")
@pytest.mark.parametrize("machine", ["microvm", "microvm,acpi=off"])
def test_same_guest_under_qemu_microvm(tmp_path, guest, machine):
    """The library finds QEMU's transports: probed (ACPI on) or from virtio_mmio.device= (acpi=off)."""
    size = 16 * MiB
    image = sparse_image(tmp_path / "disk.img", size)
    argv = [QEMU, "-accel", "kvm", "-M", machine, "-m", "64M", "-smp", "1", "-nodefaults",
            "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-global", "virtio-mmio.force-legacy=false",
            "-drive", f"file={image},format=raw,if=none,id=d0", "-device", "virtio-blk-device,drive=d0,serial=qemu-disk",
            "-kernel", guest("blk"), "-append", "mode=verify"]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert f"blk: verify ok capacity={size // SECTOR} serial=qemu-disk\n" in proc.stdout, proc.stdout + proc.stderr
    assert_image(image, expected_image(size, size // SECTOR))
