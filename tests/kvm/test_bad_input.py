"""Bad input gets a precise error and leaves nothing behind."""
import os

import pytest

import xvm
from xvm import DomainState


def test_missing_kernel(no_leaks, host, tmp_path):
    dom = host.define(xvm.DomainConfig(name="x", memory_mib=64, kernel=tmp_path / "nope"))
    with pytest.raises(xvm.ConfigError, match=f"^kernel {tmp_path / 'nope'} does not exist$"):
        dom.start()
    assert dom.state is DomainState.SHUTOFF and dom.machine is None


def test_kernel_is_directory(no_leaks, host, tmp_path):
    dom = host.define(xvm.DomainConfig(name="x", memory_mib=64, kernel=tmp_path))
    with pytest.raises(xvm.ConfigError, match="not a regular file"):
        dom.start()
    assert dom.state is DomainState.SHUTOFF


@pytest.mark.parametrize("make,error,match", [
    (lambda p: None, xvm.ConfigError, "does not exist"),
    (lambda p: p.mkdir(), xvm.ConfigError, "is a directory"),
    (lambda p: p.write_bytes(b"x" * 1000), xvm.ConfigError, "not a multiple of 512"),
])
def test_bad_disk_fails_at_start(no_leaks, host, guest, tmp_path, make, error, match):
    image = tmp_path / "disk.img"
    make(image)
    dom = host.define(xvm.DomainConfig(name="d", memory_mib=64, kernel=guest("hello"), disks=[xvm.Disk(image)]))
    with pytest.raises(error, match=match) as info:
        dom.start()
    assert str(image) in str(info.value)
    assert dom.state is DomainState.SHUTOFF and dom.machine is None


def test_disk_locked_by_another_domain(no_leaks, host, guest, tmp_path):
    from xvm.devices.block import DiskBusyError
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    first = host.define(xvm.DomainConfig(name="a", memory_mib=64, kernel=guest("busy"), disks=[xvm.Disk(image)]))
    second = host.define(xvm.DomainConfig(name="b", memory_mib=64, kernel=guest("busy"),
                                          disks=[xvm.Disk(image, readonly=True)]))
    first.start()
    try:
        with pytest.raises(DiskBusyError, match="locked by another writer"):
            second.start()
        assert second.state is DomainState.SHUTOFF
    finally:
        first.destroy()
    second.start()
    second.destroy()


@pytest.mark.parametrize("memory", [0, -1, 1, 15, 64.0, "64", True])
def test_bad_memory(guest, memory):
    with pytest.raises(xvm.ConfigError, match="memory_mib"):
        xvm.DomainConfig(name="x", memory_mib=memory, kernel=guest("hello"))


@pytest.mark.parametrize("vcpus", [0, -2, 256, 1.5, None])
def test_bad_vcpus(guest, vcpus):
    with pytest.raises(xvm.ConfigError, match="vcpus"):
        xvm.DomainConfig(name="x", memory_mib=64, vcpus=vcpus, kernel=guest("hello"))


@pytest.mark.parametrize("name", ["", " x", "a/b", "x" * 65, None, "-x"])
def test_bad_name(guest, name):
    with pytest.raises(xvm.ConfigError, match="name"):
        xvm.DomainConfig(name=name, memory_mib=64, kernel=guest("hello"))


def test_corrupt_kernel_fails_cleanly(no_leaks, host, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(64 * 1024))
    dom = host.define(xvm.DomainConfig(name="junk", memory_mib=64, kernel=junk))
    with pytest.raises(xvm.BootError, match="not a Linux kernel"):
        dom.start()
    assert dom.state is DomainState.SHUTOFF and dom.id is None and dom.machine is None


def test_truncated_elf_fails_cleanly(no_leaks, host, guest, tmp_path):
    data = open(guest("hello"), "rb").read()
    cut = tmp_path / "cut.elf"
    cut.write_bytes(data[: len(data) // 8])
    dom = host.define(xvm.DomainConfig(name="cut", memory_mib=64, kernel=cut))
    with pytest.raises(xvm.BootError):
        dom.start()
    assert dom.state is DomainState.SHUTOFF


def test_empty_kernel(no_leaks, host, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    dom = host.define(xvm.DomainConfig(name="empty", memory_mib=64, kernel=empty))
    with pytest.raises(xvm.BootError, match="empty"):
        dom.start()


def test_kernel_deleted_after_define(no_leaks, host, guest, tmp_path):
    copy = tmp_path / "k.elf"
    copy.write_bytes(open(guest("hello"), "rb").read())
    dom = host.define(xvm.DomainConfig(name="gone", memory_mib=64, kernel=copy))
    copy.unlink()
    with pytest.raises(xvm.ConfigError, match="does not exist"):
        dom.start()
    assert dom.state is DomainState.SHUTOFF


def test_duplicate_name_and_uuid(host, guest):
    first = host.define(xvm.DomainConfig(name="dup", memory_mib=64, kernel=guest("hello")))
    with pytest.raises(xvm.ConfigError, match="already exists"):
        host.define(xvm.DomainConfig(name="dup", memory_mib=64, kernel=guest("hello")))
    with pytest.raises(xvm.ConfigError, match="uuid"):
        host.define(xvm.DomainConfig(name="other", uuid=first.uuid, memory_mib=64, kernel=guest("hello")))
    assert [d.name for d in host.domains()] == ["dup"]


def test_illegal_transitions_change_nothing(no_leaks, host, guest):
    dom = host.define(xvm.DomainConfig(name="t", memory_mib=64, kernel=guest("busy")))
    for verb in ("pause", "resume", "shutdown", "reboot", "destroy"):
        with pytest.raises(xvm.StateError, match=f"cannot {verb} domain 't': it is shutoff"):
            getattr(dom, verb)()
        assert dom.state is DomainState.SHUTOFF
    dom.start()
    boot_id = dom.id
    for verb in ("start", "resume", "undefine"):
        with pytest.raises(xvm.StateError, match="it is running"):
            getattr(dom, verb)()
        assert dom.state is DomainState.RUNNING and dom.id == boot_id
    dom.pause()
    for verb in ("pause", "start", "reboot", "shutdown"):
        with pytest.raises(xvm.StateError, match="it is paused"):
            getattr(dom, verb)()
        assert dom.state is DomainState.PAUSED
    dom.destroy()


def test_lookup_unknown(host):
    with pytest.raises(xvm.NotFoundError, match="no domain named 'ghost'"):
        host.lookup("ghost")


def test_too_much_memory_for_initrd(no_leaks, host, guest, tmp_path):
    initrd = tmp_path / "big.img"
    with open(initrd, "wb") as f:
        f.truncate(40 << 20)
    dom = host.define(xvm.DomainConfig(name="big", memory_mib=16, kernel=guest("hello"), initrd=initrd))
    with pytest.raises(xvm.BootError, match="initrd"):
        dom.start()
    assert dom.state is DomainState.SHUTOFF
