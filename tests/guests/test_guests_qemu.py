"""Boot the test guests under qemu-system-x86_64 -kernel and check their console.

This proves the guests themselves (PVH entry, long mode, SMP start, LAPIC
timer, IOAPIC-routed UART interrupts, power-off) against a reference VMM, so
that xvm's own guest-running tests can trust them.

Acceleration: ``-accel kvm`` when /dev/kvm is usable (on PVM hosts QEMU's
firmware and the guests' 32-bit entry run emulated, the guests' long-mode code
natively); otherwise ``-accel tcg``, which the tests say in their output
(a warning) and in the ``accel`` property recorded for each test.
XVM_GUEST_TEST_ACCEL=tcg|kvm forces one.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
import warnings

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import build as guest_build  # noqa: E402

QEMU = shutil.which("qemu-system-x86_64")

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed (Debian: qemu-system-x86)"),
    pytest.mark.skipif(shutil.which(os.environ.get("CC", "gcc")) is None, reason="gcc not installed"),
]

BOOT_TIMEOUT = 30.0  # -M pc boots SeaBIOS emulated on PVM hosts: ~5 s idle, more under load


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _pvm_host() -> bool:
    return os.path.isdir("/sys/module/kvm_pvm")


@pytest.fixture(scope="module")
def accel() -> str:
    forced = os.environ.get("XVM_GUEST_TEST_ACCEL")  # "kvm" or "tcg", for debugging the guests
    if forced:
        return forced
    if _kvm_usable():
        return "kvm"
    warnings.warn("/dev/kvm is not usable: booting the test guests with -accel tcg instead of kvm")
    return "tcg"


class Console:
    """A running QEMU with the guest's 8250 on stdin/stdout."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.buffer = b""
        self.lines: list[str] = []    # not yet matched by expect()
        self.history: list[str] = []  # every complete line so far

    def _read(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([self.proc.stdout], [], [], min(remaining, 0.5))
        if not ready:
            return True
        data = os.read(self.proc.stdout.fileno(), 65536)
        if not data:
            return False
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        decoded = [c.decode(errors="replace").rstrip("\r") for c in complete]
        self.lines += decoded
        self.history += decoded
        return True

    def expect(self, pattern: str, timeout: float = BOOT_TIMEOUT) -> re.Match:
        """Wait for a console line matching ``pattern`` (searched, not anchored)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for i in range(checked, len(self.lines)):
                m = regex.search(self.lines[i])
                if m:
                    self.lines = self.lines[i + 1:]
                    return m
            checked = len(self.lines)
            if not self._read(deadline):
                break
        raise AssertionError(f"no console line matching {pattern!r} within {timeout}s; "
                             f"seen: {self.lines!r} partial: {self.buffer!r}")

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait_exit(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass
        return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def boot(accel, record_property):
    consoles = []

    def start(guest: str, machine: str = "pc", smp: int = 1, append: str = "") -> Console:
        record_property("accel", accel)
        argv = [QEMU, "-accel", accel, "-M", machine, "-smp", str(smp), "-m", "128",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-serial", "stdio", "-kernel", str(guest_build.build(guest))]
        if append:
            argv += ["-append", append]
        if machine == "microvm":
            # microvm has no ACPI PM1a_CNT at 0x604; the guests fall back to isa-debug-exit
            argv += ["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
        console = Console(argv)
        consoles.append(console)
        return console

    yield start
    for console in consoles:
        console.close()


def _expect_poweroff(console: Console, machine: str) -> None:
    rc = console.wait_exit()
    # pc: ACPI S5 -> QEMU exits 0; microvm: isa-debug-exit writes 0 -> QEMU exits (0 << 1) | 1
    assert rc == (1 if machine == "microvm" else 0), f"QEMU exit status {rc}; console: {console.lines!r}"


@pytest.mark.parametrize("machine", ["pc", "microvm"])
def test_hello(boot, accel, machine):
    console = boot("hello", machine, append="count=42 foo=bar")
    console.expect(r"^xvm-guest hello ready$")
    console.expect(r"^Hello from xvm guest$")
    pvm = console.expect(r"^pvm=([01])$").group(1)
    if accel == "tcg" or not _pvm_host():
        assert pvm == "0"
    else:
        assert pvm == "1", "kvm_pvm is loaded but the guest did not detect PVM"
    console.expect(r"^cmdline: count=42 foo=bar$")
    _expect_poweroff(console, machine)


@pytest.mark.parametrize("machine", ["pc", "microvm"])
def test_smp_four_cpus(boot, machine):
    console = boot("smp", machine, smp=4)
    console.expect(r"^xvm-guest smp ready$")
    n = int(console.expect(r"^smp: (\d+) cpus$").group(1))
    apic_ids = [int(m.group(1)) for m in map(re.compile(r"^cpu (\d+) up").match, console.history) if m]
    assert sorted(apic_ids) == [0, 1, 2, 3], console.history
    assert n == 4
    _expect_poweroff(console, machine)


@pytest.mark.parametrize("machine", ["pc", "microvm"])
def test_irq_timer_and_uart_echo(boot, machine):
    console = boot("irq", machine)
    console.expect(r"^xvm-guest irq ready$")
    for tick in range(1, 6):
        console.expect(rf"^tick {tick}$", timeout=10)
    console.expect(r"^irq: echo ready$", timeout=10)
    console.send("hello xvm\n")
    console.expect(r"^echo: hello xvm$", timeout=10)
    console.send("second line\n")
    console.expect(r"^echo: second line$", timeout=10)
    console.send("quit\n")
    console.expect(r"^irq: quit after \d+ uart interrupts", timeout=10)
    _expect_poweroff(console, machine)


@pytest.mark.parametrize("fault,name,vector", [(1, "#UD", 6), (2, "#PF", 14), (3, "#DE", 0), (4, "#GP", 13)])
def test_exception_is_reported(boot, fault, name, vector):
    console = boot("hello", "microvm", append=f"fault={fault}")
    m = console.expect(rf"^EXCEPTION {name} vector={vector} error=0x[0-9a-f]+ rip=(0x[0-9a-f]+) .* cr2=(0x[0-9a-f]+)",
                       timeout=15)
    assert int(m.group(1), 16) >= 0x100000
    if name == "#PF":
        assert m.group(2) == "0x123456789000"


def test_reboot_resets_the_machine(boot):
    console = boot("reboot", "pc")  # -no-reboot: QEMU exits (status 0) on the guest's reset
    console.expect(r"^xvm-guest reboot ready$")
    console.expect(r"^reboot: requesting reset$")
    assert console.wait_exit() == 0
    assert not any("still running" in line for line in console.history)


def test_pio_bench_and_busy_run(boot):
    console = boot("pio_bench", "microvm", append="count=1000")
    console.expect(r"^bench start 1000$")
    console.expect(r"^bench done 1000$", timeout=15)
    _expect_poweroff(console, "microvm")
    busy = boot("busy", "microvm", append="shift=20")
    first = int(busy.expect(r"^count (\d+)$").group(1))
    second = int(busy.expect(r"^count (\d+)$").group(1))
    assert second == first + (1 << 20)
