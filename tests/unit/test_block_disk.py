"""Disk configuration (plain data), its host checks (Disk.check, run by preflight), the raw-file /
block-device backends, and backends built over an fd opened and locked by another process."""
import errno
import fcntl
import os
import shutil
import socket
import subprocess
import sys

import pytest

from xvm.devices.block import Disk, DiskBusyError, DiskConfigError
from xvm.devices.block.backend import BlockDevice, RawFile
from xvm.config import DomainConfig, preflight
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
    disk = Disk(path)  # plain data: nothing is looked at on construction
    with pytest.raises(ConfigError, match="does not exist") as info:
        disk.check()
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_missing_path_fails_at_preflight(tmp_path):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    path = tmp_path / "nope.img"
    cfg = DomainConfig(name="d", memory_mib=64, kernel=kernel, disks=[Disk(path)])
    with pytest.raises(DiskConfigError, match="does not exist") as info:
        preflight(cfg)
    assert info.value.path == str(path)


def test_relative_path_is_made_absolute(image, monkeypatch):
    monkeypatch.chdir(image.parent)
    assert Disk("disk.img").path == str(image)


def test_directory(tmp_path):
    with pytest.raises(DiskConfigError, match="is a directory") as info:
        Disk(tmp_path).check()
    assert str(tmp_path) in str(info.value)


def test_size_not_multiple_of_512(tmp_path):
    path = tmp_path / "odd.img"
    path.write_bytes(b"x" * 1000)
    with pytest.raises(DiskConfigError, match="not a multiple of 512") as info:
        Disk(path).check()
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
        Disk(image).check()
    assert str(image) in str(info.value) and "readonly=True" in str(info.value)
    Disk(image, readonly=True).check()  # read-only is fine


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_cannot_open_for_write_permissions(image):
    os.chmod(image, 0o444)
    with pytest.raises(DiskConfigError, match="cannot be opened for writing"):
        Disk(image).check()


def test_locked_by_another_writer(image):
    fd = os.open(image, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(DiskBusyError, match="locked") as info:
            Disk(image).check()
        assert str(image) in str(info.value)
        with pytest.raises(DiskBusyError):
            Disk(image, readonly=True).check()
    finally:
        os.close(fd)
    Disk(image).check()  # free again


def test_readers_share_writers_exclude(image):
    reader = Disk(image, readonly=True).open()
    try:
        second = Disk(image, readonly=True).open()  # two readers are fine
        second.close()
        with pytest.raises(DiskBusyError):
            Disk(image).check()  # but nobody may write under a reader
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
            Disk(image).check()
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


@pytest.mark.parametrize("path", [42.0, b"/disk.img", "", "a\0b"])
def test_not_a_path(path):
    with pytest.raises(DiskConfigError, match="is not a path"):
        Disk(path)


def test_disk_dict_round_trip(image):
    disk = Disk(image, readonly=True, serial="s1", cache="unsafe")
    assert disk.to_dict() == {"path": str(image), "readonly": True, "serial": "s1", "cache": "unsafe"}
    assert Disk.from_dict(disk.to_dict()) == disk
    assert Disk.from_dict({"path": str(image)}) == Disk(image)


@pytest.mark.parametrize("data,match", [
    ({"path": "/a.img", "format": "qcow2"}, r"unknown field\(s\) 'format'"),
    ({"serial": "x"}, "exactly one of the fields 'path' and 'volume'"),
    ({"path": "/a.img", "volume": "p/v"}, "exactly one of the fields 'path' and 'volume'"),
    ({"path": "/a.img", "serial": "x" * 21}, "longer than 20"),
    ({"path": "/a.img", "readonly": 1}, "readonly must be True or False"),
    (["/a.img"], "must be a dict"),
])
def test_disk_from_dict_names_the_bad_field(data, match):
    with pytest.raises(DiskConfigError, match=match):
        Disk.from_dict(data)


# --- backends over an fd opened elsewhere ---------------------------------------------


def test_open_over_an_fd(image):
    disk = Disk(image)
    fd = disk.open_fd()
    with disk.open(fd=fd) as backend:
        assert isinstance(backend, RawFile) and backend.fd == fd and backend.size == 1 << 20
        backend.writev(0, [memoryview(b"\x11" * 512)])
        with pytest.raises(DiskBusyError):
            Disk(image).check()  # the lock taken by open_fd() is still held
    assert image.read_bytes()[:512] == b"\x11" * 512
    Disk(image).check()  # closing the backend closed the fd and released the lock


@pytest.mark.parametrize("flags,kw,match", [
    (os.O_RDONLY, {}, "opened read-only but the disk is writable"),
    (os.O_RDWR, {"cache": "writethrough"}, "needs an fd opened with O_DSYNC"),
])
def test_open_over_an_unsuitable_fd(image, flags, kw, match):
    fd = os.open(image, flags | os.O_CLOEXEC)
    with pytest.raises(DiskConfigError, match=match):
        Disk(image, **kw).open(fd=fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # the backend owned the fd and closed it


def test_open_over_an_fd_of_a_locked_image(image):
    holder = Disk(image).open()
    try:
        fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)  # opened, but never locked
        with pytest.raises(DiskBusyError, match="locked"):
            Disk(image).open(fd=fd)
    finally:
        holder.close()


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LOCK_HOLDER = r"""
import array, os, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
msg, fds, flags, addr = socket.recv_fds(sock, 16, 1)
from xvm.devices.block import Disk
backend = Disk(sys.argv[2]).open(fd=fds[0])
backend.writev(512, [memoryview(b"\x22" * 512)])
sock.sendall(b"ready")
sock.recv(1)
backend.close()
sock.sendall(b"closed")
sock.recv(1)
"""


def test_lock_travels_with_the_fd_to_another_process(image):
    """The parent opens and locks; the fd goes to a child over SCM_RIGHTS; the parent
    closes its copy; the lock still keeps a third opener out until the child closes."""
    parent, child = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(child.fileno()), str(image)],
                            pass_fds=[child.fileno()], env=dict(os.environ, PYTHONPATH=ROOT))
    child.close()
    try:
        fd = Disk(image).open_fd()
        socket.send_fds(parent, [b"d"], [fd])
        assert parent.recv(5) == b"ready"
        os.close(fd)  # only the child holds the open file description now
        for readonly in (False, True):
            with pytest.raises(DiskBusyError, match="locked"):
                Disk(image, readonly=readonly).check()
        parent.sendall(b"x")
        assert parent.recv(6) == b"closed"
        Disk(image).check()  # the last fd closed: the lock is gone
        assert image.read_bytes()[512:1024] == b"\x22" * 512
        parent.sendall(b"x")
        assert proc.wait(10) == 0
    finally:
        parent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_lock_held_by_an_inherited_fd_outlives_the_opener(image):
    fd = Disk(image).open_fd()
    os.set_inheritable(fd, True)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                            pass_fds=[fd])
    try:
        os.close(fd)
        with pytest.raises(DiskBusyError):
            Disk(image).check()  # the child's inherited copy still holds it
    finally:
        proc.stdin.close()
        proc.wait(10)
    Disk(image).check()


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
                Disk(dev).check()  # held exclusively (O_EXCL and flock) by the backend
    finally:
        subprocess.run(["losetup", "-d", dev], timeout=20)


# -- volume disks: a storage pool volume by name, resolved by the host at start -----------------

def test_a_volume_disk_is_plain_data(tmp_path):
    disk = Disk(volume="fast/web1", readonly=True, serial="w1")
    assert (disk.path, disk.volume, disk.source) == (None, "fast/web1", "fast/web1")
    assert disk.to_dict() == {"volume": "fast/web1", "readonly": True, "serial": "w1", "cache": "none"}
    assert Disk.from_dict(disk.to_dict()) == disk
    resolved = disk.resolved(str(tmp_path / "vol.img"))
    assert resolved == Disk(tmp_path / "vol.img", readonly=True, serial="w1")
    assert resolved.to_dict()["path"] == str(tmp_path / "vol.img") and "volume" not in resolved.to_dict()


@pytest.mark.parametrize("kw,match", [
    ({}, "exactly one of path= .* or volume="),
    ({"path": None}, "exactly one of path="),
    ({"path": "/a.img", "volume": "p/v"}, "exactly one of path="),
    ({"volume": "nopool"}, "'nopool' is not a 'POOL/VOLUME' name"),
    ({"volume": "a/b/c"}, "is not a 'POOL/VOLUME' name"),
    ({"volume": "p/-v"}, "is not a 'POOL/VOLUME' name"),
    ({"volume": 7}, "is not a 'POOL/VOLUME' name"),
    ({"volume": "p/v", "serial": "x" * 21}, "disk 'p/v': serial .* longer than 20"),
])
def test_bad_volume_disks(kw, match):
    with pytest.raises(DiskConfigError, match=match):
        Disk(**kw)


def test_an_unresolved_volume_disk_cannot_be_opened():
    disk = Disk(volume="p/v")
    for call in (disk.check, disk.open):
        with pytest.raises(DiskConfigError, match="'p/v' has not been resolved to a path"):
            call()


def test_a_config_with_volume_disks(tmp_path, image):
    from xvm.config import resolve_disks

    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    cfg = DomainConfig(name="d", memory_mib=64, kernel=kernel,
                       disks=[Disk(volume="p/root"), Disk(image, readonly=True)])
    assert DomainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="disk p/root is given more than once"):
        cfg.replace(disks=[Disk(volume="p/root"), Disk(volume="p/root", readonly=True)])
    with pytest.raises(DiskConfigError, match="has not been resolved"):
        preflight(cfg)
    resolved = resolve_disks(cfg, {"p/root": str(tmp_path / "root.img")}.__getitem__)
    assert [d.path for d in resolved.disks] == [str(tmp_path / "root.img"), str(image)]
    assert resolved.disks[1] is cfg.disks[1] and cfg.disks[0].volume == "p/root"
    assert resolve_disks(resolved, None) is resolved  # nothing left to resolve
