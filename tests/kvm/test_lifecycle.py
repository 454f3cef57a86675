"""The domain lifecycle on the real /dev/kvm with the small test guests."""
import re
import threading
import time
import uuid as uuid_module

import pytest

import xvm
from xvm import DomainState


@pytest.fixture
def host(any_host):
    """Every lifecycle test runs against the embedded host and against xvmd."""
    return any_host


def define(host, guest, name="dom", image="hello", **kw):
    kw.setdefault("memory_mib", 64)
    return host.define(xvm.DomainConfig(name=name, kernel=guest(image), **kw))


def test_hello_runs_and_powers_off(no_leaks, host, guest):
    dom = define(host, guest, cmdline="greeting=1")
    assert dom.id is None and dom.state is DomainState.SHUTOFF
    dom.start()
    dom.console.expect("Hello from xvm guest", timeout=10)
    dom.console.expect(r"cmdline: greeting=1", timeout=10)
    assert dom.wait(timeout=10) is DomainState.SHUTOFF
    assert dom.id is None and dom.machine is None


def test_start_sets_id_and_state(no_leaks, host, guest):
    dom = define(host, guest, image="busy", cmdline="shift=20")
    dom.start()
    try:
        assert dom.state is DomainState.RUNNING
        assert isinstance(dom.id, int) and dom.id > 0
        assert host.lookup(dom.name) is dom and host.lookup(str(dom.uuid)) is dom
        assert dom in host.domains()
    finally:
        dom.destroy()


def _counts(text):
    return [int(n) for n in re.findall(r"count (\d+)\n", text)]  # whole lines only


def test_pause_keeps_state_and_resume_continues(no_leaks, host, guest):
    dom = define(host, guest, image="busy", cmdline="shift=24")
    dom.start()
    dom.console.expect(r"count \d+\n", timeout=10)
    dom.pause()
    assert dom.state is DomainState.PAUSED
    boot_id = dom.id
    dom.console.read()
    time.sleep(0.5)
    paused_output = dom.console.read()
    # At most a line that was being written when the vCPU stopped.
    assert len(_counts(paused_output.decode())) <= 1
    before = _counts(dom.console.text())
    dom.resume()
    assert dom.state is DomainState.RUNNING
    while int(dom.console.expect(r"count (\d+)\n", timeout=10).group(1)) <= before[-1]:
        pass  # lines printed before the pause, still on their way to this reader
    dom.console.expect(r"count \d+\n", timeout=10)  # and one more: it keeps counting
    after = _counts(dom.console.text())
    assert after[: len(before)] == before
    # The counter kept going from where it was: no restart, strictly increasing.
    assert after == sorted(after) and len(set(after)) == len(after) and after[-1] > before[-1]
    assert dom.console.text().count("xvm-guest busy ready") == 1
    assert dom.id == boot_id
    dom.destroy()


def test_destroy_running_guest(no_leaks, host, guest):
    dom = define(host, guest, image="busy")
    dom.start()
    dom.console.expect("ready", timeout=10)
    dom.destroy()
    assert dom.state is DomainState.SHUTOFF and dom.id is None
    assert not [t for t in threading.enumerate() if t.name.startswith("xvm-vcpu")]
    with pytest.raises(xvm.StateError):
        dom.console.write("x")


def test_destroy_paused_guest(no_leaks, host, guest):
    dom = define(host, guest, image="busy")
    dom.start()
    dom.pause()
    dom.destroy()
    assert dom.state is DomainState.SHUTOFF


def test_reboot_gives_new_id(no_leaks, host, guest):
    dom = define(host, guest, image="busy")
    dom.start()
    dom.console.expect("busy ready", timeout=10)
    first = dom.id
    dom.reboot()
    assert dom.state is DomainState.RUNNING and dom.id != first
    dom.console.expect("busy ready", timeout=10)  # booted again from the kernel
    dom.destroy()


def test_guest_requested_reboot_restarts_with_new_id(no_leaks, host, guest):
    dom = define(host, guest, image="reboot")
    dom.start()
    deadline = time.monotonic() + 15
    ids = set()
    while dom.boot_count < 3 and time.monotonic() < deadline:
        if dom.id is not None:
            ids.add(dom.id)
        time.sleep(0.005)
    assert dom.boot_count >= 3
    assert dom.console.text().count("requesting reset") >= 2
    dom.destroy()


def test_restart_after_poweroff(no_leaks, host, guest):
    dom = define(host, guest)
    dom.start()
    dom.wait(timeout=10)
    first_log = dom.console.text().count("Hello from xvm guest")
    dom.start()
    dom.wait(timeout=10)
    assert dom.console.text().count("Hello from xvm guest") == first_log + 1


@pytest.mark.parametrize("vcpus", [2, 4])
def test_smp_every_vcpu_reports(no_leaks, host, guest, vcpus):
    dom = define(host, guest, image="smp", vcpus=vcpus)
    dom.start()
    match = dom.console.expect(r"smp: (\d+) cpus", timeout=30)
    assert int(match.group(1)) == vcpus
    ids = sorted(int(n) for n in re.findall(r"cpu (\d+) up", dom.console.text()))
    assert ids == list(range(vcpus))
    assert dom.wait(timeout=10) is DomainState.SHUTOFF


def test_timer_interrupts_and_console_input(no_leaks, host, guest):
    dom = define(host, guest, image="irq")
    dom.start()
    dom.console.expect(r"tick 3", timeout=10)
    dom.console.expect(r"echo ready|waiting for input|>", timeout=10)
    dom.console.write("hello guest\n")
    dom.console.expect(r"echo: hello guest", timeout=10)
    dom.console.write("second line\n")
    dom.console.expect(r"echo: second line", timeout=10)
    dom.console.write("quit\n")
    assert dom.wait(timeout=10) is DomainState.SHUTOFF


def test_rename_running_domain(no_leaks, host, guest):
    dom = define(host, guest, image="busy", name="old")
    other = define(host, guest, name="taken")
    dom.start()
    dom.rename("new")
    assert dom.name == "new" and host.lookup("new") is dom
    with pytest.raises(xvm.NotFoundError):
        host.lookup("old")
    with pytest.raises(xvm.ConfigError, match="already exists"):
        dom.rename("taken")
    assert dom.name == "new" and host.lookup("taken") is other
    dom.destroy()


def test_two_domains_run_side_by_side(no_leaks, host, guest):
    a = define(host, guest, image="busy", name="a", cmdline="shift=22")
    b = define(host, guest, image="busy", name="b", cmdline="shift=22")
    a.start()
    b.start()
    a.console.expect(r"count \d+", timeout=10)
    b.console.expect(r"count \d+", timeout=10)
    assert a.id != b.id
    a.destroy()
    b.destroy()


def test_define_again_replaces_the_stored_config(no_leaks, host, guest):
    """virsh define semantics: the same UUID and name is a new configuration for the next
    start (the running boot keeps its own); another domain's name or UUID is refused."""
    dom = define(host, guest, image="busy", name="redef", cmdline="shift=20")
    dom.start()
    dom.console.expect(r"every 2\^20 ", timeout=15)
    assert host.define(dom.config.replace(cmdline="shift=21")) is dom
    assert dom.state is DomainState.RUNNING and dom.config.cmdline == "shift=21"
    dom.destroy()
    dom.start()
    dom.console.expect(r"every 2\^21 ", timeout=15)
    dom.destroy()
    with pytest.raises(xvm.ConfigError, match=f"domain 'redef' already exists with uuid {dom.uuid}"):
        host.define(dom.config.replace(uuid=uuid_module.uuid4()))
    with pytest.raises(xvm.ConfigError, match=f"domain 'redef' is already defined with uuid {dom.uuid}"):
        host.define(dom.config.replace(name="other"))
    assert [d.name for d in host.domains()] == ["redef"] and dom.config.cmdline == "shift=21"


def test_define_makes_a_running_transient_domain_persistent(no_leaks, host, guest):
    config = xvm.DomainConfig(name="trans", memory_mib=64, kernel=guest("busy"), cmdline="shift=20")
    dom = host.create(config)
    assert not dom.persistent
    assert host.define(config) is dom
    assert dom.persistent and dom.state is DomainState.RUNNING
    dom.destroy()
    assert host.lookup("trans").state is DomainState.SHUTOFF  # kept once it stopped
    dom.undefine()
