"""Disk configuration checks and the raw-file / block-device backends."""
import errno
import fcntl
import os
import shutil
import subprocess

import pytest

from xvm.devices.block import Disk, DiskBusyError, DiskConfigError
from xvm.devices.block.backend import BlockDevice, RawFile
from xvm.errors import ConfigError


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    return path


def test_valid_disk(image):
    disk = Disk(image, serial="abc")
    assert disk.path == str(image)
    assert disk.capacity == 2048
    assert disk.cache == "none"
    assert disk.serial_bytes == b"abc" + bytes(17)
    with disk.open() as backend:
        assert isinstance(backend, RawFile) and backend.size == 1 << 20


def test_missing_path(tmp_path):
    path = tmp_path / "nope.img"
    with pytest.raises(ConfigError, match="does not exist") as info:
        Disk(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_directory(tmp_path):
    with pytest.raises(DiskConfigError, match="is a directory") as info:
        Disk(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_size_not_multiple_of_512(tmp_path):
    path = tmp_path / "odd.img"
    path.write_bytes(b"x" * 1000)
    with pytest.raises(DiskConfigError, match="not a multiple of 512") as info:
        Disk(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS])
def test_cannot_open_for_write(image, monkeypatch, err):
    real_open = os.open

    def fake_open(path, flags, *args):
        if os.fspath(path) == str(image) and flags & os.O_RDWR:
            raise OSError(err, os.strerror(err), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(DiskConfigError, match="cannot be opened for writing") as info:
        Disk(image)
    assert str(image) in str(info.value) and "readonly=True" in str(info.value)
    assert Disk(image, readonly=True).readonly  # read-only is fine


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_cannot_open_for_write_permissions(image):
    os.chmod(image, 0o444)
    with pytest.raises(DiskConfigError, match="cannot be opened for writing"):
        Disk(image)


def test_locked_by_another_writer(image):
    fd = os.open(image, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(DiskBusyError, match="locked") as info:
            Disk(image)
        assert str(image) in str(info.value)
        with pytest.raises(DiskBusyError):
            Disk(image, readonly=True)
    finally:
        os.close(fd)
    Disk(image)  # free again


def test_readers_share_writers_exclude(image):
    reader = Disk(image, readonly=True).open()
    try:
        second = Disk(image, readonly=True).open()  # two readers are fine
        second.close()
        with pytest.raises(DiskBusyError):
            Disk(image)  # but nobody may write under a reader
    finally:
        reader.close()
    writer = Disk(image).open()
    try:
        with pytest.raises(DiskBusyError):
            Disk(image).open()
    finally:
        writer.close()


def test_locked_by_another_process(image):
    proc = subprocess.Popen(
        ["python3", "-c", "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
         str(image)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(DiskBusyError):
            Disk(image)
    finally:
        proc.stdin.close()
        proc.wait(10)


@pytest.mark.parametrize("kw,match", [
    ({"cache": "directsync"}, "cache mode"),
    ({"serial": "x" * 21}, "longer than 20"),
    ({"serial": "séria"}, "not ASCII"),
])
def test_bad_options(image, kw, match):
    with pytest.raises(DiskConfigError, match=match):
        Disk(image, **kw)


def test_not_a_path():
    with pytest.raises(DiskConfigError):
        Disk(42.0)


def test_raw_file_io(image):
    with RawFile(image) as backend:
        data = bytearray(os.urandom(3000))
        backend.writev(512, [memoryview(data)[:1000], memoryview(data)[1000:]])
        out = bytearray(3000)
        backend.readv(512, [memoryview(out)[:7], memoryview(out)[7:]])
        assert out == data
        assert backend.flush() is True
        backend.discard(0, 4096)
        backend.write_zeroes(4096, 4096, unmap=False)
        check = bytearray(8192)
        backend.readv(0, [memoryview(check)])
        assert check == bytes(8192)


def test_raw_file_io_many_buffers(image):
    # More iovecs than IOV_MAX are split into batches.
    with RawFile(image) as backend:
        bufs = [bytearray(os.urandom(16)) for _ in range(3000)]
        backend.writev(0, [memoryview(b) for b in bufs])
        out = [bytearray(16) for _ in range(3000)]
        backend.readv(0, [memoryview(b) for b in out])
        assert out == bufs


def _losetup(image):
    if not shutil.which("losetup") or os.geteuid() != 0:
        return None
    try:
        out = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                             text=True, timeout=20, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return out.stdout.strip() or None


def test_block_device_backend(image):
    dev = _losetup(image)
    if dev is None:
        pytest.skip("no loop device available")
    try:
        disk = Disk(dev, serial="loop")
        assert disk.is_block_device and disk.capacity == 2048
        with disk.open() as backend:
            assert isinstance(backend, BlockDevice)
            assert backend.size == 1 << 20
            data = bytearray(os.urandom(4096))
            backend.writev(8192, [memoryview(data)])
            out = bytearray(4096)
            backend.readv(8192, [memoryview(out)])
            assert out == data
            assert backend.flush()
            backend.write_zeroes(8192, 4096)
            backend.readv(8192, [memoryview(out)])
            assert out == bytes(4096)
            backend.discard(0, 4096)
            with pytest.raises(DiskBusyError):
                Disk(dev)  # held exclusively (O_EXCL and flock) by the backend
    finally:
        subprocess.run(["losetup", "-d", dev], timeout=20)
