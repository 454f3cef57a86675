"""xvmd's autostart and host-stop policies with real guests (xVM's onxendstart/onxendstop)."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import xvm
from xvm import DomainState

UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "systemd", "xvmd.service")


@pytest.fixture
def service(xvmd_starter, destroyer):
    """``(state_dir, socket, start())``: start() runs an xvmd on them and returns its Popen."""
    state = tempfile.mkdtemp(prefix="xvmd-", dir="/tmp")
    sock = os.path.join(state, "xvmd.sock")
    procs = []

    def start():
        procs.append(xvmd_starter(state, sock))
        return procs[-1]

    yield state, sock, start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with xvm.connect(state_dir=state) as h:
        destroyer(h)
    shutil.rmtree(state, ignore_errors=True)


def busy(guest, name, **kw):
    return xvm.DomainConfig(name=name, memory_mib=64, kernel=guest("busy"), cmdline="shift=26", **kw)


def stop(proc, timeout=60):
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def wait_state(dom, state, timeout=20):
    deadline = time.monotonic() + timeout
    while dom.state is not state and time.monotonic() < deadline:
        time.sleep(0.05)
    return dom.state


def test_autostart_domains_start_with_the_service(service, guest):
    state, sock, start = service
    with xvm.connect(state_dir=state) as host:
        auto = host.define(busy(guest, "auto"))
        auto.set_autostart(True)
        assert auto.autostart
        host.define(busy(guest, "manual"))
        transient = host.create(busy(guest, "temp"))
        with pytest.raises(xvm.StateError, match="transient"):
            transient.set_autostart(True)
        transient.destroy()
    start()
    with xvm.connect(f"xvm+unix://{sock}") as host:
        assert wait_state(host.lookup("auto"), DomainState.RUNNING) is DomainState.RUNNING
        assert host.lookup("manual").state is DomainState.SHUTOFF
        host.lookup("auto").set_autostart(False)
        assert not host.lookup("auto").autostart


def test_host_stop_policies(service, guest):
    """shutdown: a guest that ignores the power button is destroyed after its timeout;
    destroy: at once; ignore: it keeps running across a restart, same id, still counting."""
    state, sock, start = service
    proc = start()
    with xvm.connect(f"xvm+unix://{sock}") as host:
        deaf = host.define(busy(guest, "deaf", on_host_stop="shutdown", shutdown_timeout=2))
        gone = host.define(busy(guest, "gone", on_host_stop="destroy"))
        kept = host.define(busy(guest, "kept", on_host_stop="ignore"))
        for dom in (deaf, gone, kept):
            dom.start()
        kept.console.expect(r"count \d+", timeout=10)
        kept_id = kept.id
    t0 = time.monotonic()
    assert stop(proc) == 0
    elapsed = time.monotonic() - t0
    assert 2 <= elapsed < 10, elapsed  # waited for the deaf guest's timeout, in parallel
    with xvm.connect(state_dir=state) as host:
        assert host.lookup("deaf").state is DomainState.SHUTOFF
        assert host.lookup("gone").state is DomainState.SHUTOFF
        assert host.lookup("kept").state is DomainState.RUNNING
    start()
    with xvm.connect(f"xvm+unix://{sock}") as host:
        kept = host.lookup("kept")
        assert kept.state is DomainState.RUNNING and kept.id == kept_id
        before = int(kept.console.expect(r"count (\d+)\n", timeout=10).group(1))
        assert int(kept.console.expect(r"count (\d+)\n", timeout=10).group(1)) > before


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_file_passes_systemd_analyze_verify():
    out = subprocess.run(["systemd-analyze", "verify", UNIT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Type=notify" in open(UNIT).read()
