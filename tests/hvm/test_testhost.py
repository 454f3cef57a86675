"""The HVM test host works: /dev/kvm is hardware-assisted, and QEMU -- the peer VMM of the
benchmarks -- boots the unmodified Debian cloud kernel to its init as a nested guest.

On PVM machines these run inside the TCG test host (see conftest.py)."""
import fcntl
import os
import subprocess
import time

import pytest

from xvm.testhost import TestHost, qemu_path
from xvm.testhost.junit import junit_key
from xvm.testhost.peer import qemu_kvm_command

TCG_SECONDS = 20  # what this file takes in the TCG test host (its workers take the costliest first)

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
NESTED_BOOT_TIMEOUT = 240


def _cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_dev_kvm_is_hardware_assisted():
    assert os.path.exists("/dev/kvm")
    flags = _cpu_flags()
    if os.environ.get("XVM_TESTHOST_INNER"):
        assert "svm" in flags, "the TCG test host (-cpu max) should offer AMD-V"
    else:
        assert flags & {"svm", "vmx"}
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        assert fcntl.ioctl(fd, KVM_GET_API_VERSION, 0) == 12
        vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm)
    finally:
        os.close(fd)


def test_qemu_kvm_boots_unmodified_cloud_kernel(guest_kernel, guest_initramfs, nested_marker, record_property):
    if qemu_path() is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    start = time.monotonic()
    proc = subprocess.run(qemu_kvm_command(guest_kernel.bzimage, guest_initramfs),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=NESTED_BOOT_TIMEOUT)
    elapsed = time.monotonic() - start
    console = proc.stdout.decode(errors="replace")
    assert nested_marker in console, f"no {nested_marker} on the nested console (QEMU exit {proc.returncode}):\n{console[-3000:]}"
    assert proc.returncode == 0, console[-3000:]
    guest_uptime = float(console.split(nested_marker, 1)[1].split()[0])
    record_property("nested_qemu_boot_s", round(elapsed, 2))
    record_property("nested_guest_uptime_at_init_s", guest_uptime)
    print(f"nested qemu -accel kvm: {guest_kernel.release} reached init in {elapsed:.1f} s "
          f"(guest uptime {guest_uptime:.2f} s)")


def test_cloud_kernel_paths(guest_kernel):
    with open(guest_kernel.bzimage, "rb") as f:
        assert f.read(0x206)[0x202:] == b"HdrS"
    assert guest_kernel.vmlinux is not None
    with open(guest_kernel.vmlinux, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert "cloud" in guest_kernel.release


def test_run_is_direct_where_virtualization_is_hardware_assisted():
    host = TestHost()
    assert host.mode == "direct"
    result = host.run(["sh", "-c", "echo out; exit 3"], timeout=60)
    assert (result.exit_status, result.output, result.mode) == (3, "out\n", "direct")


@pytest.mark.parametrize("nodeid", [
    "tests/hvm/test_x.py::test_a",
    "tests/hvm/test_x.py::test_b[1-a b]",
    "tests/hvm/test_x.py::TestC::test_d[x::y]",
    "tests/hvm/sub/test_y.py::test_e",
])
def test_junit_key_matches_pytest(nodeid):
    # The outer pytest finds an inner result by the (classname, name) pytest's junitxml derives
    # from the node id; keep our copy of that rule in step with pytest's.
    from _pytest.junitxml import mangle_test_address
    names = mangle_test_address(nodeid)
    assert junit_key(nodeid) == (".".join(names[:-1]), names[-1])


def test_nested_initramfs_is_a_cpio_the_kernel_reads(guest_initramfs):
    listing = subprocess.run(["/bin/busybox", "cpio", "-t"], stdin=open(guest_initramfs, "rb"),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout.decode()
    assert {"init", "bin/busybox", "bin/sh", "dev/console"} <= set(listing.split())
