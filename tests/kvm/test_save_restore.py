"""Save and restore of running domains on the real /dev/kvm (issue 13)."""
import dataclasses
import os
import re
import shutil
import tempfile
import time

import pytest

import xvm
from xvm.devices.net import Tap
from xvm import DomainState
from xvm.migration import SnapshotError

COUNT = re.compile(rb"count (\d+)")


def log(dom):
    text = dom.console.log()
    return text if isinstance(text, bytes) else text.encode()


def counts(dom):
    """The counts printed on whole lines; a line torn by the save (its start before, its
    end after) reads as a number that is no multiple of the step, and is left out."""
    return [n for n in (int(m) for m in COUNT.findall(log(dom))) if n % (1 << 24) == 0]


def busy(host, guest, name="busy", **kw):
    kw.setdefault("memory_mib", 64)
    return host.define(xvm.DomainConfig(name=name, kernel=guest("busy"), cmdline="shift=24", **kw))


def last_count(dom, at_least=1, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = counts(dom)
        if len(seen) >= at_least:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the guest printed {counts(dom)} only")


def test_saved_guest_continues_counting(host, guest, tmp_path):
    dom = busy(host, guest)
    dom.start()
    before = last_count(dom, 3)
    old_id = dom.id
    path = tmp_path / "busy.xvmsnap"
    t = time.perf_counter()
    dom.save(path)
    save_s = time.perf_counter() - t
    assert dom.state is DomainState.SHUTOFF and dom.id is None
    saved_max = max(counts(dom))
    # The console mirror here has all the VMM wrote before it ended (its log file has it too).
    with open(host.state_dir.console_log("busy"), "rb") as f:
        on_file = [n for n in (int(m) for m in COUNT.findall(f.read())) if n % (1 << 24) == 0]
    assert saved_max == max(on_file), "the last lines the guest printed before the save were lost"
    t = time.perf_counter()
    restored = host.restore(path)
    restore_s = time.perf_counter() - t
    assert restored.uuid == dom.uuid and restored.name == "busy"
    assert restored.state is DomainState.RUNNING and restored.id not in (None, old_id)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and max(counts(restored)) <= saved_max + (1 << 24):
        time.sleep(0.05)
    after = [n for n in counts(restored) if n > saved_max]
    assert after, "the restored guest printed no new count"
    # it continues from where it was: the first new count is the next multiple, never a restart
    assert after[0] == saved_max + (1 << 24)
    assert log(restored).count(b"busy ready") <= 1  # never booted again from its kernel
    print(f"save {save_s * 1000:.1f} ms, restore to running {restore_s * 1000:.1f} ms "
          f"(first counts before save {before[:2]})")
    restored.destroy()


def test_restore_twice_and_onto_a_fresh_host(host, guest, tmp_path, monkeypatch):
    dom = busy(host, guest)
    dom.start()
    last_count(dom, 2)
    path = tmp_path / "snap"
    dom.save(path)
    saved_max = max(counts(dom))
    for _ in range(2):  # one file, restored twice in a row
        again = host.restore(path)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not [n for n in counts(again) if n > saved_max]:
            time.sleep(0.05)
        assert min(n for n in counts(again) if n > saved_max) == saved_max + (1 << 24)
        again.destroy()
    other_dir = tempfile.mkdtemp(prefix="xvm-", dir="/tmp")  # short: socket paths
    with xvm.connect(state_dir=other_dir) as other:  # a host that never saw the domain
        assert other.domains() == []
        there = other.restore(path)
        try:
            assert there.uuid == dom.uuid and there.state is DomainState.RUNNING
            assert not there.persistent
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not [n for n in counts(there) if n > saved_max]:
                time.sleep(0.05)
            seen = counts(there)  # this host's console saw only the restored run
            assert seen and min(seen) > saved_max and seen == sorted(seen)  # never restarts or goes back
        finally:
            there.destroy()
    shutil.rmtree(other_dir, ignore_errors=True)


def test_bad_files_are_refused_and_nothing_starts(host, guest, tmp_path):
    dom = busy(host, guest)
    dom.start()
    last_count(dom, 1)
    path = tmp_path / "snap"
    dom.save(path)
    data = path.read_bytes()
    cases = {
        "magic": b"NOTASNAP" + data[8:],
        "checksum": data[:200] + bytes([data[200] ^ 1]) + data[201:],
        "truncated": data[:100],
    }
    for what, content in cases.items():
        bad = tmp_path / f"bad-{what}"
        bad.write_bytes(content)
        with pytest.raises(SnapshotError) as info:
            host.restore(bad)
        assert info.value.what == what, info.value
    short = tmp_path / "bad-short-memory"
    short.write_bytes(data[:len(data) // 2])
    with pytest.raises(SnapshotError) as info:
        host.restore(short)
    assert info.value.what == "truncated"
    assert dom.state is DomainState.SHUTOFF  # nothing half-restored
    assert os.path.exists(path)


def confined(dom):
    from xvm.vmm.jail import status_of

    status = status_of(dom.info()["pid"])
    return status["Seccomp"] == "2" and status["Uid"].split()[0] != "0"


@pytest.mark.skipif(os.geteuid() != 0, reason="confinement needs a root host")
def test_save_and_restore_through_a_confined_vmm(any_host, guest, tmp_path):
    """A VMM is confined by default: it sees no host directory and runs as another user, yet
    saves into the caller's private (0700) directory and restores from it, the host (or,
    through xvmd, the client) opening the file and passing its descriptor."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    dom = busy(any_host, guest, name="jailed-save")
    dom.start()
    assert confined(dom)
    last_count(dom, 2)
    path = private / "s.xvmsnap"
    dom.save(path)
    assert dom.state is DomainState.SHUTOFF
    assert os.listdir(private) == ["s.xvmsnap"]  # the temporary file was renamed, nothing left
    st = path.stat()
    assert st.st_uid == os.getuid() and st.st_mode & 0o777 == 0o600
    saved_max = max(counts(dom))
    restored = any_host.restore(path)
    assert restored.uuid == dom.uuid and restored.state is DomainState.RUNNING
    assert confined(restored)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not [n for n in counts(restored) if n > saved_max]:
        time.sleep(0.05)
    assert min(n for n in counts(restored) if n > saved_max) == saved_max + (1 << 24)
    restored.destroy()
    restored.undefine()


def _request(sock_path, action, fds=()):
    import socket

    from xvm.vmm import protocol as P

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        P.send_message(s, P.request(1, action), fds=fds)
        return P.recv_message(s, timeout=30)[0]


def test_no_server_opens_a_snapshot_path_for_its_client(xvmd, guest, tmp_path):
    """xvmd runs as root: a client naming a path would have it written or read with root's
    permissions.  A Snapshot or Restore without the file's descriptor — or with a number in
    its JSON, which would name one of the server's own descriptors — is refused by xvmd and
    by the VMM's socket alike, and nothing is written."""
    uri, state, sock, _ = xvmd
    with xvm.connect(uri) as host:
        dom = busy(host, guest, name="deputy")
        dom.start()
        last_count(dom, 1)
        target = tmp_path / "written-for-the-client"
        vmm_sock = os.path.join(state, "run", f"{dom.uuid}.sock")
        for action in ({"type": "Snapshot", "path": str(target)},
                       {"type": "Snapshot", "path": str(target), "fd": 3}):
            reply = _request(sock, {"type": "DomainRequest", "domain": str(dom.uuid), "action": action})
            assert reply["ok"] is False and "descriptor" in reply["error"]["message"], reply
            reply = _request(vmm_sock, action)
            assert reply["ok"] is False and "descriptor" in reply["error"]["message"], reply
        assert not target.exists() and os.listdir(tmp_path) == []
        assert dom.state is DomainState.RUNNING
        with open(os.devnull) as f:  # a descriptor for an action that takes none
            reply = _request(vmm_sock, {"type": "Pause"}, fds=[f.fileno()])
        assert reply["ok"] is False and "takes no descriptor" in reply["error"]["message"]
        assert dom.state is DomainState.RUNNING
        path = tmp_path / "real"
        dom.save(path)
        reply = _request(sock, {"type": "RestoreDomain", "path": str(path)})
        assert reply["ok"] is False and "descriptor" in reply["error"]["message"], reply
        assert dom.state is DomainState.SHUTOFF
        dom.undefine()


def test_save_reports_its_progress_in_bytes(any_host, guest, tmp_path):
    dom = busy(any_host, guest, memory_mib=64)
    dom.start()
    last_count(dom)
    calls = []
    with pytest.raises(xvm.ConfigError, match="progress must be"):
        dom.save(str(tmp_path / "never.save"), progress="yes")
    assert dom.state is DomainState.RUNNING and not os.path.exists(tmp_path / "never.save")
    dom.save(str(tmp_path / "busy.save"), progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (64 << 20, 64 << 20)
    assert all(total == 64 << 20 and 0 <= done <= total for done, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert dom.state is DomainState.SHUTOFF


# --- restoring with other host resources -------------------------------------------------------

SOAK = re.compile(rb"blk: soak round (\d+) ok")


def _soak_rounds(dom, since=0):
    return [int(n) for n in SOAK.findall(log(dom)[since:])]


def _image(path, mib=8):
    with open(path, "wb") as f:
        f.truncate(mib << 20)
    return str(path)


def _open_images(pid):
    """The files the VMM process ``pid`` holds open."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not Tap.can_create(), reason="needs CAP_NET_ADMIN")
def test_restore_with_another_disk_image_and_network(any_host, guest, tmp_path):
    """A saved domain comes back on other host resources -- its disk image copied elsewhere,
    its NIC on another network -- given as the configuration ``xvm.snapshot_config`` read
    from the file, edited on its host side; it becomes the stored configuration, and the
    guest goes on reading right data from the new image."""
    suffix = os.getpid() % 100000
    nets = [any_host.create_network(xvm.Network(f"rs{side}{suffix}", bridge=f"xvmr{side}{suffix}"))
            for side in "ab"]
    try:
        first = _image(tmp_path / "first.img")
        dom = any_host.define(xvm.DomainConfig(
            name="moved", kernel=guest("blk"), memory_mib=64, disks=[xvm.Disk(first)],
            cmdline="mode=soak chunk=256 chunks=64 checks=2 every=8",
            nics=[xvm.Nic(network=nets[0].name)]))
        dom.start()
        deadline = time.monotonic() + 20
        while len(_soak_rounds(dom)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        path = tmp_path / "moved.xvmsnap"
        dom.save(path)
        mark, before = len(log(dom)), max(_soak_rounds(dom))
        second = str(tmp_path / "second.img")
        shutil.copyfile(first, second)
        os.unlink(first)  # the old image is gone: the restore must not need it
        config = xvm.snapshot_config(path)
        assert config.disks[0].path == first and config.nics[0].network == nets[0].name
        config = config.replace(disks=[dataclasses.replace(config.disks[0], path=second)],
                                nics=[dataclasses.replace(config.nics[0], network=nets[1].name)])
        restored = any_host.restore(path, config=config)
        assert restored.state is DomainState.RUNNING
        stored = restored.config
        assert stored.disks[0].path == second and stored.nics[0].network == nets[1].name
        assert second in _open_images(restored.info()["pid"])
        assert os.listdir(f"/sys/class/net/{nets[1].bridge}/brif"), "no TAP on the new network's bridge"
        assert not os.listdir(f"/sys/class/net/{nets[0].bridge}/brif")
        deadline = time.monotonic() + 20
        while len(_soak_rounds(restored, mark)) < 3 and "FAIL" not in log(restored)[mark:].decode(errors="replace") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"FAIL" not in log(restored)[mark:], log(restored)[mark:][-300:]
        rounds = _soak_rounds(restored, mark)
        assert len(rounds) >= 3 and rounds[0] >= before  # it went on, it did not boot again
        restored.destroy()
    finally:
        for d in any_host.domains():
            if d.state is not DomainState.SHUTOFF:
                d.destroy()
        for net in nets:
            net.destroy()


def test_restore_refuses_a_configuration_the_guest_would_notice(any_host, guest, tmp_path):
    """Only the host side may change: other vCPUs, memory, MAC, serial, a disk more or less, a
    disk image of another size, another UUID or name are each refused, naming what, and
    nothing starts."""
    image = _image(tmp_path / "disk.img")
    dom = any_host.define(xvm.DomainConfig(
        name="strict", kernel=guest("busy"), cmdline="shift=24", memory_mib=64, vcpus=1,
        disks=[xvm.Disk(image, serial="disk-1")]))
    dom.start()
    last_count(dom, 1)
    path = tmp_path / "strict.xvmsnap"
    dom.save(path)
    small = _image(tmp_path / "small.img", mib=4)

    def edited(**changes):
        return xvm.snapshot_config(path).replace(**changes)

    cases = {
        "vcpus": edited(vcpus=2),
        "memory_mib": edited(memory_mib=128),
        "serial": edited(disks=[xvm.Disk(image, serial="disk-2")]),
        "2 disks": edited(disks=[xvm.Disk(image), xvm.Disk(small)]),
        "sectors": edited(disks=[xvm.Disk(small, serial="disk-1")]),
        "uuid": xvm.DomainConfig(name="strict", kernel=guest("busy"), memory_mib=64, disks=[xvm.Disk(image)]),
        "name": edited(name="other"),
    }
    for what, config in cases.items():
        with pytest.raises(SnapshotError, match=what) as info:
            any_host.restore(path, config=config)
        assert info.value.what == "config"
        assert dom.state is DomainState.SHUTOFF
    with pytest.raises(xvm.ConfigError, match="DomainConfig"):
        any_host.restore(path, config={"name": "strict"})
    assert [d.name for d in any_host.domains()] == ["strict"]
    edited_ok = edited(cmdline="shift=24 next-boot", sched=xvm.Sched(weight=512))
    restored = any_host.restore(path, config=edited_ok)  # the host side may change
    assert restored.state is DomainState.RUNNING and restored.config.cmdline.endswith("next-boot")
    restored.destroy()
    restored.undefine()
