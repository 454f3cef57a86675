"""Boot the test guests under benchmarks/cvmm (the C baseline VMM) on /dev/kvm.

cvmm uses the bare KVM API the way xvm does (PVH entry, in-kernel irqchip), so
these tests pin down what the guests need from a VMM, and on PVM hosts the PVM
behaviour the guests rely on (VIF page, port 0x80 doorbell, INIT-SIPI-SIPI).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import build as guest_build  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
CVMM_BUILD = REPO / "benchmarks" / "cvmm" / "build.py"

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs read/write access to /dev/kvm"),
    pytest.mark.skipif(shutil.which(os.environ.get("CC", "gcc")) is None, reason="gcc not installed"),
    pytest.mark.skipif(not CVMM_BUILD.exists(), reason="benchmarks/cvmm not present"),
]


@pytest.fixture(scope="module")
def cvmm() -> pathlib.Path:
    spec = importlib.util.spec_from_file_location("cvmm_build", CVMM_BUILD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build()


def run(cvmm, guest, cmdline="", *args, input=None, timeout=20):
    proc = subprocess.run([str(cvmm), "-v", *args, str(guest_build.build(guest)), cmdline],
                          input=input, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def test_hello_powers_off(cvmm):
    rc, out, err = run(cvmm, "hello", "count=7")
    assert rc == 0, err
    assert out.splitlines()[:2] == ["xvm-guest hello ready", "Hello from xvm guest"]
    assert re.search(r"^pvm=[01]$", out, re.M)
    assert "cmdline: count=7" in out
    assert "guest powered off" in err


def test_reboot_exits_with_reset(cvmm):
    rc, out, err = run(cvmm, "reboot")
    assert rc == 2, err
    assert "reboot: requesting reset" in out


@pytest.mark.parametrize("vcpus", [1, 2, 4])
def test_smp_finds_every_vcpu(cvmm, vcpus):
    rc, out, err = run(cvmm, "smp", "", "-c", str(vcpus))
    assert rc == 0, err
    ids = sorted(int(m) for m in re.findall(r"^cpu (\d+) up", out, re.M))
    assert ids == list(range(vcpus))
    assert f"smp: {vcpus} cpus" in out


def test_irq_ticks_and_echo(cvmm):
    # Input sent before "irq: echo ready" is kept (cvmm's FIFO is 4 KiB); send
    # after it anyway, as a console user would.
    proc = subprocess.Popen([str(cvmm), str(guest_build.build("irq"))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line.rstrip("\n"))
            if line.startswith("irq: echo ready"):
                break
        assert [f"tick {n}" for n in range(1, 6)] == [x for x in lines if x.startswith("tick")]
        proc.stdin.write("hello cvmm\nquit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "echo: hello cvmm" in out
    assert proc.returncode == 0, err


def test_pio_bench_counts_every_exit(cvmm):
    rc, out, err = run(cvmm, "pio_bench", "count=2000")
    assert rc == 0, err
    assert "bench done 2000" in out
    m = re.search(r"bench (\d+) PIO exits in [\d.]+ ms: (\d+) ns per PIO exit", err)
    assert m and int(m.group(1)) == 2000, err


pvm_only = pytest.mark.skipif(not os.path.isdir("/sys/module/kvm_pvm"), reason="PVM host only")


@pvm_only
def test_pvm_port80_without_pending_interrupt_exits_to_userspace(cvmm):
    rc, out, err = run(cvmm, "pio_bench", "count=500 port=0x80")
    assert rc == 0, err
    assert re.search(r"port exits:.* 0x80:500\b", err), err


def _irq_probe(cvmm, cmdline, until):
    proc = subprocess.Popen([str(cvmm), "-v", str(guest_build.build("irq")), cmdline], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        found = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            found = found or re.search(until, line)
            if line.startswith("irq: echo ready"):
                break
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert found, f"no line matching {until!r}"
    return found


@pvm_only
def test_pvm_iretq_restores_virtual_if(cvmm):
    m = _irq_probe(cvmm, "iretq_test=1", r"iretq_test: virtual IF after iretq = (\d)")
    assert m.group(1) == "1"


@pvm_only
def test_pvm_doorbell_delivers_pending_interrupt(cvmm):
    m = _irq_probe(cvmm, "ifonly_test=1", r"ifonly_test: .* (\d+) us after if_=1 \+ out 0x80")
    assert int(m.group(1)) < 1_000_000  # delivered (the probe gives up after 1 s)
