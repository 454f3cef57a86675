"""Unmodified Linux guests on an xvm network (hardware-assisted KVM: inside the HVM test host
here): the guests' own virtio_net driver configures addresses, and they ping each other and
the host side of the bridge."""
import os
import subprocess

import pytest

import xvm
from xvm import DomainState

TCG_SECONDS = 70  # what this file takes in the TCG test host (its workers take the costliest first)

CPU_QUIRKS = ("xsave",) if os.environ.get("XVM_TESTHOST_INNER") else ()
CMDLINE = "console=ttyS0 quiet panic=-1"
BOOT_TIMEOUT = 240
GUEST_MODULES = ("virtio_mmio", "virtio_net")  # + virtio_ring, virtio, failover, net_failover
HOST_MODULES = ("tun", "bridge")
SUBNET = "10.218.0"


def _load_host_modules():
    from xvm.testhost import NotPreparedError
    from xvm.testhost.initramfs import load_testhost_modules

    try:
        load_testhost_modules(HOST_MODULES)
    except NotPreparedError as e:
        pytest.skip(str(e))


def net_initramfs(script):
    """A busybox initramfs with the guest's virtio-net modules; /init loads them and runs
    ``script`` (XVMID is the guest's number from the kernel command line)."""
    from xvm.testhost.initramfs import nested_initramfs

    return nested_initramfs("XVMID=$(sed -n 's/.*xvmid=\\([0-9]*\\).*/\\1/p' /proc/cmdline)\n" + script,
                            modules=GUEST_MODULES)


PING_SCRIPT = f"""
ip link set lo up
ip link set eth0 up
ip addr add {SUBNET}.$XVMID/24 dev eth0
echo "XVM-NET-UP $XVMID $(cat /sys/class/net/eth0/address) mtu=$(cat /sys/class/net/eth0/mtu)"
PEER=$((5 - XVMID))
try() {{ for i in $(seq 1 90); do ping -c 1 -W 2 $1 >/dev/null 2>&1 && return 0; done; return 1; }}
try {SUBNET}.1 && echo "XVM-PING-HOST-OK $XVMID" || echo "XVM-PING-HOST-FAIL $XVMID"
try {SUBNET}.$PEER && echo "XVM-PING-PEER-OK $XVMID" || echo "XVM-PING-PEER-FAIL $XVMID"
ping -c 5 -i 0.2 {SUBNET}.$PEER | tail -1
sleep 600
"""


@pytest.fixture
def lan(host):
    _load_host_modules()
    before = set(os.listdir("/sys/class/net"))
    net = host.create_network(xvm.Network("hvmlan", address=f"{SUBNET}.1/24"))
    yield net
    for dom in host.domains():
        if dom.state is not xvm.DomainState.SHUTOFF:
            dom.destroy()
    net.destroy()
    import gc
    gc.collect()
    assert set(os.listdir("/sys/class/net")) <= before, "a TAP or bridge was left behind"


def test_linux_guests_ping_each_other_and_the_host(no_leaks, host, guest_kernel, lan):
    initrd = net_initramfs(PING_SCRIPT)  # cached by content in the test host's build directory
    doms = []
    for n in (2, 3):
        doms.append(host.define(xvm.DomainConfig(
            name=f"linux{n}", memory_mib=256, kernel=guest_kernel.bzimage, initrd=initrd,
            cmdline=f"{CMDLINE} xvmid={n}", disable_cpu_features=CPU_QUIRKS,
            nics=[xvm.Nic(network=lan.name)])))
    for dom in doms:
        dom.start()
    for n, dom in zip((2, 3), doms):
        mac = xvm.net.derive_mac(dom.uuid, 0)
        dom.console.expect(rf"XVM-NET-UP {n} {mac} mtu=1500", timeout=BOOT_TIMEOUT)
    for n, dom in zip((2, 3), doms):
        dom.console.expect(rf"XVM-PING-HOST-OK {n}", timeout=240)
        dom.console.expect(rf"XVM-PING-PEER-OK {n}", timeout=240)
        summary = dom.console.expect(r"round-trip min/avg/max = [\d./]+ ms", timeout=60)
        print(f"linux{n} -> peer: {summary.group(0)}")
    # The host side reaches the guests too.
    for n in (2, 3):
        out = subprocess.run(["busybox", "ping", "-c", "2", "-W", "5", f"{SUBNET}.{n}"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    for dom in doms:
        text = dom.console.text()
        for bad in ("WARNING:", "Call Trace", "BUG:", "Kernel panic"):
            assert bad not in text, text[-3000:]
        nic = dom.machine.virtio[0].device
        assert nic.metrics.tx_dropped_count == 0 and nic.metrics.rx_packets > 0
        assert dom.state is DomainState.RUNNING
