"""TAP devices and bridges on the real host kernel (needs CAP_NET_ADMIN and
/dev/net/tun, no /dev/kvm): TAPs vanish with their fd or their process, a
bridge xvm created is removed on destroy, a frame from the device reaches the
host through a bridge, and missing privilege is a clear error."""
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

import xvm
from xvm.devices.net import Tap, TapError
from xvm.devices.virtio import mmio as M
from xvm.devices.virtio.device import EventFdLine
from xvm.kvm.memory import GuestMemory
from xvm.net import NetworkTable, bridge

from test_net_device import NetDriver, wait_for


pytestmark = pytest.mark.skipif(not Tap.can_create(), reason="needs CAP_NET_ADMIN and /dev/net/tun")
SUFFIX = f"{os.getpid() % 100000}"


def links():
    return set(os.listdir("/sys/class/net"))


class FakeHost:
    """Just what a NetworkTable asks of its host: the running domains on a network."""

    def __init__(self):
        self.users = set()

    def _network_users(self, net):
        return self.users


def table_of(host, tmp_path):
    """A NetworkTable over a store of its own (networks are kept in a host's store)."""
    from xvm.store import Store
    return NetworkTable(host, Store(tmp_path / "store.sqlite"))


@pytest.fixture
def no_leaks():
    before = links()
    yield
    wait_for(lambda: links() <= before, timeout=5)


def test_tap_removed_when_fd_closed(no_leaks):
    tap = Tap.open()
    assert tap.name in links()
    flags = int(open(f"/sys/class/net/{tap.name}/tun_flags").read(), 16)
    assert flags & 0x0002 and flags & 0x1000 and flags & 0x4000  # TAP, NO_PI, VNET_HDR
    assert tap.offloads & 1  # this kernel takes TUN_F_CSUM
    tap.close()
    assert tap.name not in links()


def test_tap_removed_when_its_process_dies(no_leaks):
    code = textwrap.dedent("""
        import sys, time
        from xvm.devices.net import Tap
        tap = Tap.open()
        print(tap.name, flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        name = child.stdout.readline().strip()
        assert name in links()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        wait_for(lambda: name not in links())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_missing_cap_net_admin_is_clear():
    code = textwrap.dedent("""
        import xvm
        from xvm.devices.net import Tap, TapError
        from xvm.net import bridge
        try:
            Tap.open()
        except TapError as e:
            print("TAP", e.errno, e)
        try:
            bridge.create_bridge("xvmnocap0")
        except xvm.HostError as e:
            print("BRIDGE", e.errno, e)
    """)
    out = subprocess.run(["capsh", "--drop=cap_net_admin", "--", "-c",
                          f"{sys.executable} -c '{code}'"],
                         capture_output=True, text=True, timeout=60)
    assert "TAP 1 " in out.stdout and "CAP_NET_ADMIN" in out.stdout, out
    assert "BRIDGE 1 " in out.stdout, out
    assert "xvmnocap0" not in links()


def test_network_lifecycle_removes_created_bridge(no_leaks, tmp_path):
    table = table_of(FakeHost(), tmp_path)
    net = table.define(xvm.Network(f"t{SUFFIX}", address="10.213.0.1/24"))
    assert not net.active and net.bridge not in links()
    net.start()
    try:
        assert bridge.is_bridge(net.bridge)
        assert str(bridge.addresses(net.bridge)[0]) == "10.213.0.1/24"
        with pytest.raises(xvm.StateError):
            net.start()
        with pytest.raises(xvm.StateError):
            net.undefine()
        with pytest.raises(xvm.ConfigError, match="already exists"):
            table.define(xvm.Network(f"t{SUFFIX}"))
    finally:
        net.destroy()
    assert net.bridge not in links()


def test_network_adopts_existing_bridge_and_keeps_it(no_leaks, tmp_path):
    name = f"xvmadopt{SUFFIX}"[:15]
    bridge.create_bridge(name)
    try:
        net = table_of(FakeHost(), tmp_path).define(xvm.Network("adopt", bridge=name)).start()
        assert not net.created
        net.destroy()
        assert bridge.is_bridge(name)
    finally:
        bridge.delete_link(name)


def test_network_on_a_non_bridge_refused(no_leaks, tmp_path):
    with Tap.open() as tap:
        net = table_of(FakeHost(), tmp_path).define(xvm.Network("x", bridge=tap.name))
        with pytest.raises(xvm.ConfigError, match="not a bridge"):
            net.start()


def test_network_in_use_not_destroyed(no_leaks, tmp_path):
    host = FakeHost()
    net = table_of(host, tmp_path).define(xvm.Network(f"u{SUFFIX}")).start()
    host.users = {"web"}
    with pytest.raises(xvm.StateError, match="web"):
        net.destroy()
    host.users = set()
    net.destroy()


def test_nic_plan_missing_bridge(tmp_path):
    from xvm.net import plan_nics
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    cfg = xvm.DomainConfig(name="d", memory_mib=32, kernel=kernel,
                           nics=[xvm.Nic(bridge="xvmnosuchbr")])
    with pytest.raises(xvm.ConfigError, match="does not exist"):
        plan_nics(cfg, table_of(FakeHost(), tmp_path), {})
    cfg = cfg.replace(nics=[xvm.Nic(network="nosuch")])
    with pytest.raises(xvm.NotFoundError, match="no network named"):
        plan_nics(cfg, table_of(FakeHost(), tmp_path), {})
    cfg = cfg.replace(nics=[xvm.Nic(bridge="lo")])
    with pytest.raises(xvm.ConfigError, match="not a bridge"):
        plan_nics(cfg, table_of(FakeHost(), tmp_path), {})


def test_duplicate_mac_among_running_domains(tmp_path):
    from xvm.net import plan_nics
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    cfg = xvm.DomainConfig(name="d", memory_mib=32, kernel=kernel,
                           nics=[xvm.Nic(bridge="lo", mac="52:54:00:00:00:07")])
    with pytest.raises(xvm.ConfigError, match="already used by running domain 'other'"):
        plan_nics(cfg, table_of(FakeHost(), tmp_path), {"52:54:00:00:00:07": "other"})


def test_device_frame_reaches_host_through_bridge(no_leaks, tmp_path):
    """The simulated guest ARPs for the bridge's address; the host kernel answers
    through the bridge and the TAP into the guest's rx buffer."""
    table = table_of(FakeHost(), tmp_path)
    net = table.define(xvm.Network(f"a{SUFFIX}", address="10.214.0.1/24")).start()
    plan = xvm.net.NicPlan("52:54:00:12:34:99", net.bridge, 1500)
    dev = plan.open_device()
    line = EventFdLine()
    try:
        with GuestMemory.create([(0, 0x1000000)]) as memory:
            mmio = M.VirtioMmioDevice(dev, memory, line)
            try:
                assert bridge.ports(net.bridge) == [dev.backend.name]
                drv = NetDriver(memory, mmio)
                bufs = drv.add_rx(8)
                mac = bytes.fromhex("525400123499")
                arp = (b"\xff" * 6 + mac + b"\x08\x06"
                       + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
                       + mac + socket.inet_aton("10.214.0.2")
                       + bytes(6) + socket.inet_aton("10.214.0.1"))
                deadline = time.monotonic() + 10
                reply = None
                while reply is None and time.monotonic() < deadline:
                    drv.send(arp)
                    time.sleep(0.2)
                    for head, n in drv.rx.take_used():
                        gpa = dict(bufs)[head]
                        frame = memory.read(gpa + 12, n - 12)
                        if frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02":
                            reply = frame
                assert reply is not None, "no ARP reply from the host"
                assert reply[:6] == mac  # to us
                assert reply[28:32] == socket.inet_aton("10.214.0.1")
                assert dev.metrics.tx_packets >= 1 and dev.metrics.rx_packets >= 1
            finally:
                mmio.close()
    finally:
        dev.close()
        line.close()
        net.destroy()


def _tx_queues(name):
    return sorted(q for q in os.listdir(f"/sys/class/net/{name}/queues") if q.startswith("tx-"))


def test_multiqueue_tap_queues_detach_and_vanish_with_the_last_fd(no_leaks):
    taps = Tap.open_queues(queues=3)
    try:
        name = taps[0].name
        assert [t.name for t in taps] == [name] * 3
        flags = int(open(f"/sys/class/net/{name}/tun_flags").read(), 16)
        assert flags & 0x0100  # IFF_MULTI_QUEUE
        assert _tx_queues(name) == ["tx-0", "tx-1", "tx-2"]
        taps[2].set_queue_attached(False)  # out of the kernel's steering
        assert _tx_queues(name) == ["tx-0", "tx-1"]
        with pytest.raises(TapError, match="TUNSETQUEUE") as info:
            taps[2].set_queue_attached(False)
        assert info.value.errno == 22  # EINVAL: already detached
        taps[2].set_queue_attached(True)
        assert _tx_queues(name) == ["tx-0", "tx-1", "tx-2"]
        taps[1].set_queue_attached(False)
        # A detached queue's fd handed on (a VMM's next boot): tap_from_fd attaches it again.
        from xvm.net.nic import tap_from_fd
        again = tap_from_fd(os.dup(taps[1].fd))
        assert again.name == name and _tx_queues(name) == ["tx-0", "tx-1", "tx-2"]
        again.close()
        taps.pop().close()
        taps.pop().close()
        assert name in links()  # one queue left holds the interface
    finally:
        for tap in taps:
            tap.close()
    wait_for(lambda: name not in links())


def test_multiqueue_nic_plan_builds_one_pair_per_tap_queue(no_leaks, tmp_path):
    table = table_of(FakeHost(), tmp_path)
    net = table.define(xvm.Network(f"q{SUFFIX}", address="10.215.0.1/24")).start()
    try:
        plan = xvm.net.NicPlan("52:54:00:12:34:98", net.bridge, 1500, queues=2)
        with pytest.raises(xvm.ConfigError, match="open_taps"):
            plan.open_tap()
        fds = plan.open_taps()
        assert len(fds) == 2
        dev = plan.device_from_taps(fds)
        try:
            name = dev.backend.name
            assert dev.max_pairs == 2 and [b.name for b in dev.backends] == [name, name]
            assert bridge.ports(net.bridge) == [name]
            # Until the guest enables the second pair, the kernel steers nothing to it.
            assert _tx_queues(name) == ["tx-0"]
        finally:
            dev.close()
        wait_for(lambda: name not in links())
        with pytest.raises(xvm.ConfigError, match="2 queue pairs but 1 TAP fds"):
            plan.device_from_taps([os.open("/dev/null", os.O_RDONLY)])
    finally:
        net.destroy()
