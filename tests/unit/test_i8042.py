"""The i8042 controller: the reset line on port 0x64 and the probe commands Linux sends."""
import pytest

from xvm.devices.legacy import i8042
from xvm.devices.legacy.i8042 import I8042
from xvm.machine.bus import Bus

DATA, STATUS = 0x60, 0x64


@pytest.fixture
def kbc():
    """(bus, resets): the controller registered at 0x60, 5 ports, as the machine does."""
    resets = []
    bus = Bus("port I/O")
    bus.register(i8042.DATA_PORT, 5, I8042(lambda: resets.append(True)))
    return bus, resets


def test_pulse_reset_command_resets_the_machine(kbc):
    bus, resets = kbc
    bus.write(STATUS, 1, 0xFE)  # what Linux's reboot=k and most BIOSes do
    assert resets == [True]


@pytest.mark.parametrize("port,value", [(STATUS, 0xAA), (STATUS, 0x20), (STATUS, 0xFF), (DATA, 0xFE), (0x61, 0xFE)])
def test_other_writes_do_not_reset(kbc, port, value):
    bus, resets = kbc
    bus.write(port, 1, value)
    assert resets == []


def test_reset_command_uses_only_the_low_byte(kbc):
    bus, resets = kbc
    bus.write(STATUS, 2, 0x01FE)
    assert resets == [True]


def test_self_test_answers_0x55(kbc):
    bus, _ = kbc
    assert bus.read(STATUS, 1) & i8042.STATUS_OUTPUT_FULL == 0
    bus.write(STATUS, 1, 0xAA)
    assert bus.read(STATUS, 1) & i8042.STATUS_OUTPUT_FULL
    assert bus.read(DATA, 1) == 0x55
    assert bus.read(STATUS, 1) & i8042.STATUS_OUTPUT_FULL == 0  # consumed


def test_config_byte_write_then_read(kbc):
    bus, _ = kbc
    bus.write(STATUS, 1, 0x60)  # write command byte
    bus.write(DATA, 1, 0x47)
    assert bus.read(STATUS, 1) & i8042.STATUS_OUTPUT_FULL == 0  # writing answers nothing
    bus.write(STATUS, 1, 0x20)  # read command byte
    assert bus.read(STATUS, 1) & i8042.STATUS_OUTPUT_FULL
    assert bus.read(DATA, 1) == 0x47


def test_data_write_without_pending_command_leaves_config(kbc):
    bus, _ = kbc
    bus.write(STATUS, 1, 0x60)
    bus.write(DATA, 1, 0x65)
    bus.write(DATA, 1, 0x00)  # a keyboard command, not a config byte
    bus.write(STATUS, 1, 0x20)
    assert bus.read(DATA, 1) == 0x65


def test_answers_queue_in_order(kbc):
    bus, _ = kbc
    bus.write(STATUS, 1, 0xAA)
    bus.write(STATUS, 1, 0x20)
    assert [bus.read(DATA, 1), bus.read(DATA, 1)] == [0x55, 0x00]
    assert bus.read(DATA, 1) == 0  # empty output buffer


def test_unused_ports_read_ff(kbc):
    bus, _ = kbc
    assert [bus.read(port, 1) for port in (0x61, 0x62, 0x63)] == [0xFF] * 3


def test_reset_callback_runs_outside_the_device_lock():
    # The machine's reset handler may touch the device again (e.g. to snapshot it).
    seen = []
    dev = I8042(lambda: seen.append(dev.read(4, 1)))  # would deadlock if called under the lock
    dev.write(4, 1, 0xFE)
    assert len(seen) == 1 and seen[0] & i8042.STATUS_OUTPUT_FULL == 0


def test_status_reports_keyboard_unlocked_and_self_test_passed(kbc):
    # Linux's i8042 driver warns "Keylock active" when status bit 4 reads 0.
    bus, _ = kbc
    status = bus.read(STATUS, 1)
    assert status & 0x10 and status & 0x04
    bus.write(STATUS, 1, 0xAA)
    assert bus.read(STATUS, 1) == 0x10 | 0x04 | i8042.STATUS_OUTPUT_FULL
