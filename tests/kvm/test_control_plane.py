"""The control plane on the real /dev/kvm: a VMM process per domain, persistent
domains in a state directory, transient domains, ids, consoles across processes,
a VMM killed with SIGKILL, and in-process VMMs."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import xvm
from xvm import DomainState

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(guest, name="cp", image="busy", **kw):
    kw.setdefault("memory_mib", 64)
    return xvm.DomainConfig(name=name, kernel=guest(image), **kw)


def run_python(code, state_dir, timeout=60):
    """Run ``code`` in a new Python process on the same state directory."""
    env = dict(os.environ, XVM_STATE_DIR=state_dir, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_each_running_domain_is_a_process_of_its_own(host, guest):
    a = host.create(config(guest, "a"))
    b = host.create(config(guest, "b"))
    pa, pb = a.info()["pid"], b.info()["pid"]
    assert len({pa, pb, os.getpid()}) == 3
    with open(f"/proc/{pa}/cmdline", "rb") as f:
        assert b"xvm.vmm" in f.read()
    a.console.expect("ready", timeout=10)
    b.console.expect("ready", timeout=10)
    a.destroy()
    assert b.state is DomainState.RUNNING  # one domain's VMM going does not touch another


def test_a_defined_domain_survives_every_process(state_dir, guest):
    cfg = config(guest, "kept", vcpus=2, cmdline="shift=20")
    with xvm.connect() as host:
        host.define(cfg)
    out = run_python("""
        import xvm
        with xvm.connect() as host:
            dom = host.lookup("kept")
            print(dom.uuid, dom.config.vcpus, dom.config.cmdline, dom.state.value)
    """, state_dir)
    assert out.split() == [str(cfg.uuid), "2", "shift=20", "shutoff"]
    with xvm.connect() as host:
        assert host.lookup("kept").config == cfg
        host.lookup("kept").undefine()
    with xvm.connect() as host:
        with pytest.raises(xvm.NotFoundError):
            host.lookup("kept")


def test_a_running_domain_outlives_its_host_and_another_process_drives_it(state_dir, guest):
    host = xvm.connect()
    dom = host.define(config(guest, "lives"))
    dom.start()
    dom.console.expect("ready", timeout=10)
    boot_id = dom.id
    host.close()  # the script that started it is done with it
    out = run_python(f"""
        import xvm
        from xvm import DomainState
        with xvm.connect() as host:
            dom = host.lookup("lives")
            assert dom.state is DomainState.RUNNING, dom.state
            assert dom.id == {boot_id}, dom.id
            assert "xvm-guest busy ready" in dom.console.text()   # history from before
            dom.console.expect(r"count \\d+", timeout=10)           # and live output
            dom.pause(); assert dom.state is DomainState.PAUSED
            dom.resume(); assert dom.state is DomainState.RUNNING
            dom.destroy(); assert dom.state is DomainState.SHUTOFF and dom.id is None
            print("ok")
    """, state_dir)
    assert out.strip() == "ok"
    with xvm.connect() as host:
        assert host.lookup("lives").state is DomainState.SHUTOFF


def test_transient_domains_are_forgotten_when_they_stop(host, guest):
    dom = host.create(config(guest, "temp"))
    assert not dom.persistent and dom in host.domains()
    dom.destroy()
    assert [d.name for d in host.domains()] == []
    with host.create(config(guest, "scoped")) as scoped:
        scoped.console.expect("ready", timeout=10)
        pid = scoped.info()["pid"]
    assert host.domains() == []
    assert _gone(pid)


def test_ids_are_never_reused_across_processes(state_dir, guest):
    seen = []
    for _ in range(3):
        with xvm.connect() as host:
            with host.create(config(guest, "ids")) as dom:
                seen.append(dom.id)
                dom.reboot()
                seen.append(dom.id)
    assert len(set(seen)) == len(seen) == 6 and seen == sorted(seen)


def test_a_busy_name_or_uuid_is_refused_and_nothing_changes(host, guest):
    cfg = config(guest, "one")
    host.define(cfg)
    with pytest.raises(xvm.ConfigError, match="'one'"):
        host.define(config(guest, "one"))
    with pytest.raises(xvm.ConfigError, match=str(cfg.uuid)):
        host.define(cfg.replace(name="two"))
    assert [d.name for d in host.domains()] == ["one"]


def test_start_twice_from_two_hosts_is_refused(state_dir, guest):
    with xvm.connect() as first, xvm.connect() as second:
        dom = first.define(config(guest, "once"))
        dom.start()
        with pytest.raises(xvm.StateError, match="it is running"):
            second.lookup("once").start()
        dom.destroy()


def test_vmm_killed_with_sigkill_leaves_the_domain_crashed(host, guest, state_dir):
    dom = host.define(config(guest, "victim"))
    other = host.create(config(guest, "bystander"))
    dom.start()
    dom.console.expect("ready", timeout=10)
    pid = dom.info()["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while dom.state is not DomainState.CRASHED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dom.state is DomainState.CRASHED
    assert "SIGKILL" in dom.crash_reason and str(pid) in dom.crash_reason
    run = os.path.join(state_dir, "run")
    assert not [f for f in os.listdir(run) if f.startswith(str(dom.uuid)) and not f.endswith(".lock")]
    with pytest.raises(xvm.StateError):
        dom.console.write("x")
    assert other.state is DomainState.RUNNING
    dom.start()  # a crashed domain starts again
    assert dom.state is DomainState.RUNNING
    dom.destroy()


def test_a_vmm_that_is_still_dying_is_waited_for_not_reported_running(host, guest):
    """A VMM killed by seccomp holds the domain lock until its last thread has exited, after
    its socket has closed: the host waits for it rather than answer "running"."""
    dom = host.define(config(guest, "dying"))
    dom.start()
    dom.console.expect("ready", timeout=10)
    pid = dom.info()["pid"]
    # stands for the VMM's last threads: takes the lock as the VMM lets go, keeps it 1 s
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import fcntl, os, sys, time
        fd = os.open(sys.argv[1], os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(1)
    """), host.state_dir.vmm_lockfile(str(dom.uuid))], stdout=subprocess.PIPE, text=True)
    try:
        os.kill(pid, signal.SIGKILL)
        assert holder.stdout.readline() == "held\n"
        assert dom.state is DomainState.CRASHED
        assert "SIGKILL" in dom.crash_reason
    finally:
        holder.wait(timeout=10)
    dom.undefine()


def test_another_process_sees_a_killed_vmm_as_crashed(state_dir, guest):
    with xvm.connect() as host:
        dom = host.define(config(guest, "orphan"))
        dom.start()
        pid = dom.info()["pid"]
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if _gone(pid):
            break
        time.sleep(0.05)
    out = run_python("""
        import xvm
        with xvm.connect() as host:
            dom = host.lookup("orphan")
            print(dom.state.value, "|", dom.crash_reason)
    """, state_dir)
    state, reason = out.strip().split(" | ")
    assert state == "crashed" and "VMM process" in reason


def test_console_history_and_input_across_processes(state_dir, guest):
    with xvm.connect() as host:
        dom = host.create(config(guest, "talk", image="irq"))
        dom.console.expect("irq: echo ready", timeout=10)
        out = run_python("""
            import xvm
            with xvm.connect() as host:
                dom = host.lookup("talk")
                dom.console.expect("irq: echo ready", timeout=10)   # history first
                dom.console.write("from another process\\n")
                dom.console.expect("echo: from another process", timeout=10)
                print("ok")
        """, state_dir)
        assert out.strip() == "ok"
        dom.console.expect("echo: from another process", timeout=10)  # every reader sees it
        dom.destroy()


def test_console_log_file_is_written(host, guest, state_dir):
    dom = host.create(config(guest, "logged", image="hello", cmdline="greeting=1"))
    assert dom.wait(timeout=10) is DomainState.SHUTOFF
    with open(os.path.join(state_dir, "log", "logged.log"), "rb") as f:
        assert b"Hello from xvm guest" in f.read()


def test_in_process_vmm(state_dir, guest):
    with xvm.connect(in_process=True) as host:
        dom = host.create(config(guest, "inside"))
        assert dom.info()["pid"] == os.getpid() and dom.machine is not None
        dom.console.expect("ready", timeout=10)
        dom.pause()
        dom.resume()
        dom.destroy()
        assert dom.machine is None


def test_bad_uri_and_in_process_over_xvmd_are_refused():
    with pytest.raises(xvm.ConfigError, match="unknown host URI"):
        xvm.connect("qemu:///system")
    with pytest.raises(xvm.ConfigError, match="in_process"):
        xvm.connect("xvm+unix:///tmp/x.sock", in_process=True)


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_domain_xml_api(host, guest):
    cfg = config(guest, "xmlapi", on_host_stop="ignore")
    assert xvm.DomainConfig.from_xml(cfg.to_xml()) == cfg
    dom = host.define_xml(cfg.to_xml())
    assert dom.config == cfg and "<name>xmlapi</name>" in dom.xml()
    dom.start()
    assert f"id=\"{dom.id}\"" in dom.xml() or f"id='{dom.id}'" in dom.xml()
    assert "id=" not in dom.xml(inactive=True).split(">", 1)[0].replace("xmlns:xvm", "")
    dom.rename("xmlapi2")
    assert dom.info()["name"] == "xmlapi2"
    dom.shutdown(wait=False)  # the busy guest ignores the button: it keeps running
    assert dom.state is DomainState.RUNNING
    dom.destroy()
