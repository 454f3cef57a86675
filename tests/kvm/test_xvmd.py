"""xvmd, the host service: one per state directory, peer credentials checked, hostile
messages answered and survived, VMMs kept across a SIGKILL of xvmd and re-adopted."""
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import pytest

import xvm
from xvm import DomainState
from xvm.vmm import protocol as P


@pytest.fixture
def daemon(xvmd_starter, destroyer):
    """A fresh xvmd: ``(state_dir, socket, [processes])``; a test may add restarts."""
    state = tempfile.mkdtemp(prefix="xvmd-", dir="/tmp")
    sock = os.path.join(state, "xvmd.sock")
    procs = [xvmd_starter(state, sock)]
    yield state, sock, procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    with xvm.connect(state_dir=state) as h:
        destroyer(h)
    shutil.rmtree(state, ignore_errors=True)


def cfg(guest, name="d", image="busy"):
    return xvm.DomainConfig(name=name, memory_mib=64, kernel=guest(image))


def test_a_second_xvmd_on_the_same_state_refuses_naming_the_first(daemon):
    state, sock, procs = daemon
    other = subprocess.run([sys.executable, "-m", "xvm.daemon", "--state-dir", state,
                            "--socket", sock + "2"], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert other.returncode == 1
    assert f"another xvmd (pid {procs[0].pid}) already serves state directory {state}" in other.stderr
    assert "Traceback" not in other.stderr


def test_xvmd_killed_leaves_domains_running_and_a_new_one_adopts_them(daemon, guest, xvmd_starter):
    state, sock, procs = daemon
    host = xvm.connect(f"xvm+unix://{sock}")
    dom = host.define(cfg(guest, "adopted"))
    dom.start()
    dom.console.expect("ready", timeout=10)
    boot_id, pid = dom.id, dom.info()["pid"]
    host.close()
    procs[0].kill()
    procs[0].wait()
    os.kill(pid, 0)  # the VMM is still there
    procs.append(xvmd_starter(state, sock))
    with xvm.connect(f"xvm+unix://{sock}") as host:
        dom = host.lookup("adopted")
        assert dom.state is DomainState.RUNNING and dom.id == boot_id and dom.info()["pid"] == pid
        assert "xvm-guest busy ready" in dom.console.text()
        dom.destroy()


def test_peer_credentials_are_checked(daemon):
    state, sock, procs = daemon
    os.chmod(state, 0o755)
    os.chmod(sock, 0o666)  # let anyone connect(): the daemon itself must refuse
    code = f"""
import os, socket
os.setgid(65534); os.setgroups([]); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.connect({sock!r})
s.settimeout(5)
print(repr(s.recv(100)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "b''"  # closed before a byte was read or written
    with xvm.connect(f"xvm+unix://{sock}") as host:  # root still gets in
        assert host.domains() == []


def _raw(sock_path, data):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.settimeout(10)
    s.sendall(data)
    try:
        return P.recv_message(s, timeout=10)[0]
    except P.ConnectionClosed:
        return None
    finally:
        s.close()


@pytest.mark.parametrize("data,expect", [
    (b"GET / HTTP/1.1\r\n\r\n", "BadMagic"),
    (P.MAGIC + struct.pack(">HHI", 99, 0, 2) + b"{}", "UnsupportedVersion"),
    (P.MAGIC + struct.pack(">HHI", 1, 0, 1 << 30), "MessageTooLarge"),
    (P.MAGIC + struct.pack(">HHI", 1, 0, 5) + b"[1,2", None),  # truncated: the peer then closes
    (P.encode_frame({"id": 1, "action": {"type": "Format", "disk": "/"}}), "BadAction"),
    (P.encode_frame({"id": 1, "action": {"type": "Rename", "domain": 5, "new_name": "x"}}), "BadAction"),
    (P.encode_frame({"id": "x", "action": {"type": "ListDomains"}}), "BadPayload"),
    # id true: the error reply for it raised in xvmd's connection thread, and no answer came
    (P.encode_frame({"id": True, "action": {"type": "ListDomains"}}), "BadPayload"),
    (P.encode_frame({"id": 2, "action": {"type": "DomainRequest", "domain": "nope",
                                         "action": {"type": "Destroy"}}}), "NotFoundError"),
])
def test_hostile_messages_get_an_error_and_harm_nothing(daemon, guest, data, expect):
    state, sock, procs = daemon
    with xvm.connect(f"xvm+unix://{sock}") as host:
        dom = host.create(cfg(guest, "bystander"))
        if expect is None:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            reply = P.recv_message(s, timeout=10)[0]
            s.close()
            assert reply["ok"] is False and reply["error"]["type"] == "Truncated"
        else:
            reply = _raw(sock, data)
            assert reply is not None and reply["ok"] is False
            assert expect in [reply["error"]["type"], *reply["error"].get("bases", [])], reply
        assert procs[0].poll() is None
        assert dom.state is DomainState.RUNNING
        assert [d.name for d in host.domains()] == ["bystander"]
        dom.destroy()


def test_lifecycle_errors_keep_their_class_over_xvmd(daemon, guest):
    state, sock, procs = daemon
    with xvm.connect(f"xvm+unix://{sock}") as host:
        dom = host.define(cfg(guest, "cls"))
        with pytest.raises(xvm.StateError, match="cannot pause domain 'cls': it is shutoff"):
            dom.pause()
        with pytest.raises(xvm.ConfigError, match="'cls'"):
            host.define(cfg(guest, "cls"))
        with pytest.raises(xvm.NotFoundError):
            host.lookup("missing")
        bad = xvm.DomainConfig(name="badkernel", memory_mib=64, kernel="/nonexistent/vmlinux")
        dom2 = host.define(bad)
        with pytest.raises(xvm.ConfigError, match="/nonexistent/vmlinux"):
            dom2.start()
        assert dom2.state is DomainState.SHUTOFF


def test_a_vmm_that_stops_answering_is_reported_not_waited_for(state_dir, guest, monkeypatch):
    monkeypatch.setenv("XVM_VMM_TIMEOUT", "1.5")
    with xvm.connect() as host:
        dom = host.create(cfg(guest, "stuck"))
        pid = dom.info()["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(xvm.HostError, match="did not answer"):
                dom.pause()
            assert time.monotonic() - start < 5
        finally:
            os.kill(pid, signal.SIGCONT)
        dom.destroy()
