"""The 16550A UART as Linux's 8250 driver sees it: probe, transmit, receive, interrupts."""
import pytest

from xvm.devices.legacy import serial as uart
from xvm.devices.legacy.serial import Serial8250
from xvm.machine.bus import Bus

COM1 = 0x3F8


class Wires:
    def __init__(self):
        self.out = bytearray()
        self.levels = []

    def sink(self, data):
        self.out += data

    def set_irq(self, level):
        self.levels.append(level)

    @property
    def irq(self):
        return bool(self.levels) and self.levels[-1]


@pytest.fixture
def com1():
    """(bus, wires): the UART at COM1 on a port-I/O bus, as the machine registers it."""
    wires = Wires()
    bus = Bus("port I/O")
    bus.uart = Serial8250(wires.sink, wires.set_irq)
    bus.register(COM1, 8, bus.uart)
    return bus, wires


def inb(bus, reg):
    return bus.read(COM1 + reg, 1)


def outb(bus, reg, value):
    bus.write(COM1 + reg, 1, value)


def test_linux_8250_autoconfig_detects_a_16550a(com1):
    bus, wires = com1
    # drivers/tty/serial/8250/8250_port.c autoconfig(): IER read-back test
    saved_ier = inb(bus, uart.IER)
    outb(bus, uart.IER, 0)
    assert inb(bus, uart.IER) & 0x0F == 0
    outb(bus, uart.IER, 0x0F)
    assert inb(bus, uart.IER) & 0x0F == 0x0F
    outb(bus, uart.IER, saved_ier)
    # loopback test: MCR = LOOP | OUT2 | RTS must read back CTS | DCD in MSR
    saved_mcr = inb(bus, uart.MCR)
    outb(bus, uart.MCR, uart.MCR_LOOP | 0x0A)
    assert inb(bus, uart.MSR) & 0xF0 == 0x90
    outb(bus, uart.MCR, saved_mcr)
    # FIFO test: enabling the FIFO makes IIR[7:6] read 3 (16550A)
    outb(bus, uart.LCR, 0xBF)
    outb(bus, 2, 0)  # EFR on a 16650; harmless here
    outb(bus, uart.LCR, 0)
    outb(bus, uart.IIR_FCR, uart.FCR_ENABLE)
    assert inb(bus, uart.IIR_FCR) >> 6 == 3
    # autoconfig_16550a(): no EFR behind LCR=0x80/0xBF, so this is not a 16650/16750
    outb(bus, uart.LCR, 0x80)
    assert inb(bus, 2) != 0
    outb(bus, uart.LCR, 0xBF)
    assert inb(bus, 2) != 0
    outb(bus, uart.LCR, 0)
    # a present port never reads LSR as 0xFF
    assert inb(bus, uart.LSR) != 0xFF
    assert wires.out == b""  # probing transmits nothing


def test_scratch_register_holds_any_value(com1):
    bus, _ = com1
    for value in (0xA5, 0x5A, 0x00, 0xFF):
        outb(bus, uart.SCR, value)
        assert inb(bus, uart.SCR) == value


def test_divisor_latch_behind_dlab(com1):
    bus, wires = com1
    outb(bus, uart.IER, uart.IER_RDA)
    outb(bus, uart.LCR, uart.LCR_DLAB | 0x03)
    outb(bus, uart.RBR_THR, 0x01)  # DLL: 115200 baud
    outb(bus, uart.IER, 0x00)  # DLM
    assert inb(bus, uart.RBR_THR) == 0x01
    assert inb(bus, uart.IER) == 0x00
    assert inb(bus, uart.LCR) == uart.LCR_DLAB | 0x03
    outb(bus, uart.LCR, 0x03)  # 8N1, DLAB off
    assert inb(bus, uart.IER) == uart.IER_RDA  # IER kept its value
    assert wires.out == b""  # the DLL write was not a transmitted byte
    outb(bus, uart.LCR, uart.LCR_DLAB)
    assert (inb(bus, uart.RBR_THR), inb(bus, uart.IER)) == (0x01, 0x00)


def test_thr_writes_reach_the_sink_in_order(com1):
    bus, wires = com1
    for byte in b"Linux version 6.1\r\n":
        outb(bus, uart.RBR_THR, byte)
    assert bytes(wires.out) == b"Linux version 6.1\r\n"
    assert bus.uart.tx_count == 19


def test_thr_write_masks_to_a_byte(com1):
    bus, wires = com1
    bus.write(COM1, 2, 0x4142)
    assert bytes(wires.out) == b"\x42"


def test_lsr_transmitter_always_empty(com1):
    bus, _ = com1
    outb(bus, uart.RBR_THR, ord("x"))
    lsr = inb(bus, uart.LSR)
    assert lsr & uart.LSR_THRE and lsr & uart.LSR_TEMT


def test_input_without_rda_enabled_sets_dr_but_no_irq(com1):
    bus, wires = com1
    assert inb(bus, uart.LSR) & uart.LSR_DR == 0
    assert bus.uart.receive(b"ab") == 2
    assert inb(bus, uart.LSR) & uart.LSR_DR
    assert wires.levels == []
    assert inb(bus, uart.IIR_FCR) & 0x0F == uart.IIR_NONE


def test_enabling_rda_with_queued_input_raises_irq(com1):
    bus, wires = com1
    bus.uart.receive(b"a")
    outb(bus, uart.IER, uart.IER_RDA)
    assert wires.levels == [True]
    assert inb(bus, uart.IIR_FCR) & 0x0F == uart.IIR_RDA


def test_rda_irq_follows_the_fifo(com1):
    bus, wires = com1
    outb(bus, uart.IER, uart.IER_RDA)
    assert wires.levels == []
    bus.uart.receive(b"hi")
    assert wires.levels == [True]
    assert inb(bus, uart.IIR_FCR) & 0x0F == uart.IIR_RDA
    assert inb(bus, uart.RBR_THR) == ord("h")
    assert wires.irq and inb(bus, uart.LSR) & uart.LSR_DR  # one byte left
    assert inb(bus, uart.RBR_THR) == ord("i")
    assert wires.levels == [True, False]  # drained: line dropped
    assert inb(bus, uart.LSR) & uart.LSR_DR == 0
    assert inb(bus, uart.IIR_FCR) & 0x0F == uart.IIR_NONE
    assert inb(bus, uart.RBR_THR) == 0  # empty RBR reads 0, changes nothing
    assert wires.levels == [True, False]


def test_disabling_rda_drops_the_irq(com1):
    bus, wires = com1
    outb(bus, uart.IER, uart.IER_RDA)
    bus.uart.receive(b"x")
    outb(bus, uart.IER, 0)
    assert wires.levels == [True, False]
    assert inb(bus, uart.RBR_THR) == ord("x")  # the byte is still there


def test_fcr_clear_rx_discards_input_and_irq(com1):
    bus, wires = com1
    outb(bus, uart.IER, uart.IER_RDA)
    bus.uart.receive(b"stale")
    outb(bus, uart.IIR_FCR, uart.FCR_ENABLE | uart.FCR_CLEAR_RX)
    assert wires.levels == [True, False]
    assert inb(bus, uart.LSR) & uart.LSR_DR == 0
    assert inb(bus, uart.IIR_FCR) == uart.IIR_FIFO_ENABLED | uart.IIR_NONE


def test_iir_fifo_bits_follow_fcr(com1):
    bus, _ = com1
    assert inb(bus, uart.IIR_FCR) == uart.IIR_NONE
    outb(bus, uart.IIR_FCR, uart.FCR_ENABLE)
    assert inb(bus, uart.IIR_FCR) == 0xC1
    outb(bus, uart.IIR_FCR, 0)
    assert inb(bus, uart.IIR_FCR) == uart.IIR_NONE


def test_thre_interrupt_raised_when_enabled_and_cleared_by_iir_read(com1):
    bus, wires = com1
    outb(bus, uart.IER, uart.IER_THRE)  # the transmitter is empty: interrupt at once
    assert wires.levels == [True]
    assert inb(bus, uart.IIR_FCR) & 0x0F == uart.IIR_THRE
    assert wires.levels == [True, False]  # reading IIR acknowledged it
    assert inb(bus, uart.IIR_FCR) & 0x0F == uart.IIR_NONE


def test_thr_write_rearms_thre(com1):
    bus, wires = com1
    outb(bus, uart.IER, uart.IER_THRE)
    inb(bus, uart.IIR_FCR)
    outb(bus, uart.RBR_THR, ord("a"))
    assert wires.levels == [True, False, True]
    assert inb(bus, uart.IIR_FCR) & 0x0F == uart.IIR_THRE
    assert wires.levels == [True, False, True, False]


def test_thr_write_without_thre_enabled_raises_nothing(com1):
    bus, wires = com1
    outb(bus, uart.RBR_THR, ord("a"))
    assert wires.levels == []


def test_disabling_thre_drops_the_irq(com1):
    bus, wires = com1
    outb(bus, uart.IER, uart.IER_THRE)
    outb(bus, uart.IER, 0)
    assert wires.levels == [True, False]


def test_rda_has_priority_over_thre_and_thre_survives(com1):
    bus, wires = com1
    outb(bus, uart.IER, uart.IER_RDA | uart.IER_THRE)
    bus.uart.receive(b"k")
    assert inb(bus, uart.IIR_FCR) & 0x0F == uart.IIR_RDA
    assert inb(bus, uart.RBR_THR) == ord("k")
    assert wires.irq  # THRE still pending: reading IIR while RDA was shown did not clear it
    assert inb(bus, uart.IIR_FCR) & 0x0F == uart.IIR_THRE
    assert not wires.irq


def test_loopback_returns_output_as_input(com1):
    bus, wires = com1
    outb(bus, uart.MCR, uart.MCR_LOOP | uart.MCR_OUT2)
    outb(bus, uart.IER, uart.IER_RDA)
    outb(bus, uart.RBR_THR, 0x5A)
    assert wires.out == b""  # nothing leaves the chip
    assert wires.irq
    assert inb(bus, uart.LSR) & uart.LSR_DR
    assert inb(bus, uart.RBR_THR) == 0x5A
    assert not wires.irq
    outb(bus, uart.MCR, uart.MCR_OUT2)
    outb(bus, uart.RBR_THR, 0x5A)
    assert bytes(wires.out) == b"\x5a"


@pytest.mark.parametrize(
    "mcr,msr",
    [
        (uart.MCR_RTS, uart.MSR_CTS),
        (uart.MCR_DTR, uart.MSR_DSR),
        (uart.MCR_OUT1, uart.MSR_RI),
        (uart.MCR_OUT2, uart.MSR_DCD),
        (0, 0),
    ],
)
def test_loopback_wires_modem_control_to_status(com1, mcr, msr):
    bus, _ = com1
    outb(bus, uart.MCR, uart.MCR_LOOP | mcr)
    assert inb(bus, uart.MSR) & 0xF0 == msr


def test_modem_status_outside_loopback_says_connected(com1):
    bus, _ = com1
    msr = inb(bus, uart.MSR)
    assert msr & (uart.MSR_CTS | uart.MSR_DSR | uart.MSR_DCD) == uart.MSR_CTS | uart.MSR_DSR | uart.MSR_DCD


def test_input_limit_drops_and_counts_excess():
    wires = Wires()
    dev = Serial8250(wires.sink, wires.set_irq)
    limit = uart.RX_BUFFER_LIMIT
    assert dev.receive(bytes(limit - 3)) == limit - 3
    assert dev.dropped_input == 0
    assert dev.receive(b"abcdef") == 3
    assert dev.dropped_input == 3
    assert dev.receive(b"zz") == 0
    assert dev.dropped_input == 5
    assert dev.read(uart.RBR_THR, 1) == 0  # the guest takes one byte out...
    assert dev.receive(b"yz") == 1  # ...and there is room for exactly one more
    assert dev.dropped_input == 6


def test_input_kept_at_the_limit_is_the_oldest_in_order(monkeypatch):
    monkeypatch.setattr(uart, "RX_BUFFER_LIMIT", 4)
    wires = Wires()
    dev = Serial8250(wires.sink, wires.set_irq)
    dev.write(uart.IER, 1, uart.IER_RDA)
    assert dev.receive(b"abcdef") == 4
    assert dev.dropped_input == 2
    assert bytes(dev.read(uart.RBR_THR, 1) for _ in range(4)) == b"abcd"
    assert dev.read(uart.LSR, 1) & uart.LSR_DR == 0
    assert wires.levels == [True, False]
