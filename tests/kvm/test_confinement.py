"""Confined VMM processes (xvm.vmm.jail) on the real /dev/kvm: uid, capabilities, mount
namespace, no_new_privs, seccomp and limits in /proc/PID/status; a forbidden system call
crashes the domain with ``seccomp: <name>``; the VMM cannot open host files outside its
allowance (/etc/shadow, another domain's disk image)."""
import os
import time

import pytest

import xvm
from xvm import DomainState
from xvm.errors import XvmError
from xvm.vmm import actions as A
from xvm.vmm.jail import resolve_user, status_of

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(os.geteuid() != 0, reason="confinement needs a root host")]


@pytest.fixture(autouse=True)
def confined_by_default(monkeypatch):
    """Confinement is the default for a root host: nothing in the environment asks for it."""
    monkeypatch.delenv("XVM_CONFINE", raising=False)


@pytest.fixture
def hooks(monkeypatch):
    """VMMs started from now on serve the test-only actions."""
    monkeypatch.setenv("XVM_TEST_HOOKS", "1")


def config(guest, name, **kw):
    kw.setdefault("memory_mib", 64)
    return xvm.DomainConfig(name=name, kernel=guest("busy"), **kw)


def threads_of(pid):
    return [status_of(f"{pid}/task/{tid}") for tid in os.listdir(f"/proc/{pid}/task")]


def test_a_vmm_process_runs_confined(host, guest):
    dom = host.create(config(guest, "jailed", vcpus=2))
    dom.console.expect("ready", timeout=10)
    pid = dom.info()["pid"]
    uid, gid = resolve_user()
    status = status_of(pid)
    assert status["Uid"].split() == [str(uid)] * 4
    assert status["Gid"].split() == [str(gid)] * 4
    assert status["Groups"] == ""
    for field in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, field
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    threads = threads_of(pid)
    assert len(threads) >= 4  # main, control, acceptor, 2 vCPUs...
    assert {t["Seccomp"] for t in threads} == {"2"}  # the vCPU threads too
    assert {t["NoNewPrivs"] for t in threads} == {"1"}
    assert {int(t["CapEff"], 16) for t in threads} == {0}
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    with open(f"/proc/{pid}/limits") as f:
        limits = {line[:26].strip(): line[26:].split() for line in f}
    assert limits["Max open files"][:2] == ["1024", "1024"]
    assert limits["Max core file size"][:2] == ["0", "0"]
    assert int(limits["Max address space"][0]) == (64 << 20) + (3 << 30)
    # its whole world: what the jail bound, and nothing of the host's /etc or state
    root = f"/proc/{pid}/root"
    assert set(os.listdir(root)) >= {"dev", "proc", "tmp", "usr"}
    assert not os.path.exists(f"{root}/etc")
    assert not os.path.exists(root + host.state_dir.root)
    assert os.path.isfile(root + guest("busy"))
    # it still does its work: the store follows its state, the console log fills
    dom.pause()
    assert host.store.domain(str(dom.uuid)).state == "paused"
    dom.resume()
    with open(host.state_dir.console_log("jailed"), "rb") as f:
        assert b"ready" in f.read()
    dom.destroy()


def test_the_vmm_cannot_open_host_files_outside_its_allowance(host, guest, hooks, tmp_path):
    other_image = tmp_path / "other.img"
    other_image.write_bytes(b"\0" * (1 << 20))
    os.chmod(other_image, 0o644)  # readable by anyone on the host: the namespace hides it
    other = host.define(config(guest, "other", disks=[xvm.Disk(str(other_image))]))
    mine = tmp_path / "mine.img"
    mine.write_bytes(b"\0" * (1 << 20))
    dom = host.create(config(guest, "nosy", disks=[xvm.Disk(str(mine))]))
    for path in ("/etc/shadow", "/etc/passwd", str(other_image), str(mine), host.state_dir.store,
                 f"/proc/1/root/etc/shadow"):
        result = host._act(dom, A.DebugOpen(path=path))
        assert result["opened"] is False, path
    assert host._act(dom, A.DebugOpen(path="/dev/null"))["opened"] is True  # the hook works
    assert host._act(dom, A.DebugOpen(path=guest("busy")))["opened"] is True  # its own kernel
    assert dom.state is DomainState.RUNNING
    dom.destroy()
    other.undefine()


@pytest.mark.parametrize("name", ["ptrace", "mount", "execve"])
def test_a_forbidden_syscall_ends_the_vmm_and_crashes_the_domain(host, guest, hooks, name):
    dom = host.define(config(guest, f"bad-{name}"))
    dom.start()
    pid = dom.info()["pid"]
    dom.console.expect("ready", timeout=10)
    try:  # the VMM dies answering: the host finds it gone, and answers for the crashed domain
        host._act(dom, A.DebugSyscall(name=name))
    except XvmError:
        pass
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}/status") and status_of(pid).get("State", "").startswith(("R", "S", "D")):
        assert time.monotonic() < deadline, "the VMM did not end"
        time.sleep(0.02)
    assert dom.state is DomainState.CRASHED
    assert dom.crash_reason == f"seccomp: {name}"
    with open(host.state_dir.vmm_log(str(dom.uuid)), "rb") as f:
        assert f"seccomp: {name}".encode() in f.read()
    dom.destroy()
    dom.start()  # a crashed domain starts again, confined again
    assert status_of(dom.info()["pid"])["Seccomp"] == "2"
    dom.destroy()
    dom.undefine()


def test_an_allowed_syscall_through_the_hook_does_not_crash(host, guest, hooks):
    dom = host.create(config(guest, "fine"))
    assert host._act(dom, A.DebugSyscall(name="getppid"))["result"] > 0
    assert dom.state is DomainState.RUNNING
    dom.destroy()


def test_the_test_hooks_are_absent_without_the_variable(host, guest, monkeypatch):
    monkeypatch.delenv("XVM_TEST_HOOKS", raising=False)
    dom = host.create(config(guest, "nohooks"))
    with pytest.raises(XvmError, match="DebugSyscall"):
        host._act(dom, A.DebugSyscall(name="ptrace"))
    assert dom.state is DomainState.RUNNING
    dom.destroy()


def test_confinement_can_be_turned_off(host, guest, monkeypatch):
    monkeypatch.setenv("XVM_CONFINE", "0")
    dom = host.create(config(guest, "free"))
    status = status_of(dom.info()["pid"])
    assert status["Uid"].split()[0] == "0" and status["Seccomp"] == "0"
    dom.destroy()


def test_the_console_log_rotates_inside_the_jail(host, guest, monkeypatch):
    """log/<name>.log passes its limit while the VMM is confined: the full log becomes
    .log.1 and the log starts again, though the VMM sees no log directory."""
    monkeypatch.setenv("XVM_CONSOLE_LOG_LIMIT", "4096")
    dom = host.create(xvm.DomainConfig(name="chatty", memory_mib=64, kernel=guest("busy"), cmdline="shift=12"))
    assert status_of(dom.info()["pid"])["Seccomp"] == "2"
    path = host.state_dir.console_log("chatty")
    deadline = time.monotonic() + 20
    while not (os.path.exists(path + ".1") and os.path.getsize(path + ".1") > 0):
        assert time.monotonic() < deadline, "the log never rotated"
        time.sleep(0.05)
    with open(path + ".1", "rb") as f:
        older = f.read()
    assert 4096 - 64 < len(older) <= 4096 and b"count" in older
    assert os.path.getsize(path) <= 4096
    assert dom.state is DomainState.RUNNING
    dom.destroy()
