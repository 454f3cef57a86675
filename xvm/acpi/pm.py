"""The ACPI fixed-hardware PM registers the FADT promises (ACPI 6.x, 4.8 "ACPI Hardware Features").

One I/O-port device, 12 bytes at ``PM_BASE`` (0x600)::

    0x600  PM1a_STS  16 bit  write 1 to clear   (4.8.3.1.1 PM1 Status Registers)
    0x602  PM1a_EN   16 bit  read/write         (4.8.3.1.2 PM1 Enable Registers)
    0x604  PM1a_CNT  16 bit  SCI_EN reads 1; SLP_TYP r/w; SLP_EN write-only (4.8.3.2.1)
    0x606  (reserved, reads 0)
    0x608  PM_TMR    32 bit  read-only, 3.579545 MHz (4.8.3.3 Power Management Timer)

The SCI (ISA IRQ 9, level, active high) is asserted while any status bit is set
whose enable bit is set.  The machine wires :attr:`AcpiPm.sci` to the interrupt
line and :attr:`AcpiPm.on_poweroff` to its stop logic; the control plane calls
:meth:`AcpiPm.raise_power_button` to ask the guest to shut down cleanly.
"""
import threading
import time
from dataclasses import dataclass

PM_BASE = 0x600
PM_SIZE = 12
PM1A_EVT_BLK = PM_BASE
PM1A_CNT_BLK = PM_BASE + 4
PM_TMR_BLK = PM_BASE + 8
SCI_IRQ = 9
PM_TIMER_HZ = 3_579_545
# SLP_TYP value of \_S5 in the DSDT: writing SLP_TYP=S5_SLP_TYP | SLP_EN to PM1a_CNT powers off.
S5_SLP_TYP = 0

# PM1 status / enable bits (Tables 4.16 and 4.17)
TMR_STS = 1 << 0
BM_STS = 1 << 4
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
SLPBTN_STS = 1 << 9
RTC_STS = 1 << 10
WAK_STS = 1 << 15
TMR_EN = 1 << 0
GBL_EN = 1 << 5
PWRBTN_EN = 1 << 8
SLPBTN_EN = 1 << 9
RTC_EN = 1 << 10
_EVENT_BITS = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS
# PM1 control bits (Table 4.18)
SCI_EN = 1 << 0
BM_RLD = 1 << 1
GBL_RLS = 1 << 2
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0b111 << SLP_TYP_SHIFT
SLP_EN = 1 << 13
_CNT_WRITABLE = BM_RLD | SLP_TYP_MASK

_STS, _EN, _CNT, _TMR = 0, 2, 4, 8
_REGISTERS = ((_STS, 2), (_EN, 2), (_CNT, 2), (_TMR, 4))


@dataclass(frozen=True)
class AcpiPmState:
    """Snapshot state of :class:`AcpiPm`: the PM1 registers and the PM timer's value, from
    which the restored timer counts on (as the kvmclock does: the time a saved guest spent
    stopped is not counted; 0 in a state saved before the timer was)."""

    pm1_sts: int = 0
    pm1_en: int = 0
    pm1_cnt: int = SCI_EN
    pm_tmr: int = 0

    def __post_init__(self):
        for name, bits in (("pm1_sts", 16), ("pm1_en", 16), ("pm1_cnt", 16), ("pm_tmr", 32)):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < 1 << bits:
                raise ValueError(f"ACPI PM state: {name} must be a {bits}-bit unsigned integer, not {value!r}")


class AcpiPm:
    """PM1a event/control blocks and the PM timer, as an I/O-port bus device.

    ``sci(level: bool)`` is called whenever the SCI line changes level (under
    the device lock: it must not call back into the device); ``on_poweroff()``
    when the guest enters S5.  Both run on the calling thread (the vCPU thread
    for register writes).
    """

    def __init__(self, *, sci=None, on_poweroff=None, clock=time.monotonic_ns):
        self.sci = sci
        self.on_poweroff = on_poweroff
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self._sts = 0
        self._en = 0
        self._cnt = SCI_EN
        self._sci_level = False

    # --- bus interface -------------------------------------------------------------------

    def read(self, offset, size):
        """Read ``size`` bytes at ``offset`` from PM_BASE, as a little-endian integer."""
        if offset < 0 or size <= 0 or offset + size > PM_SIZE:
            return (1 << (8 * max(size, 0))) - 1
        with self._lock:
            image = (
                self._sts.to_bytes(2, "little")
                + self._en.to_bytes(2, "little")
                + self._cnt.to_bytes(2, "little")
                + bytes(2)
                + self.timer().to_bytes(4, "little")
            )
        return int.from_bytes(image[offset : offset + size], "little")

    def write(self, offset, size, value):
        """Write ``size`` bytes of ``value`` at ``offset``; accesses may span registers."""
        if offset < 0 or size <= 0 or offset + size > PM_SIZE:
            return  # guest input: out-of-range writes are ignored
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        poweroff = False
        with self._lock:
            for start, width in _REGISTERS:
                lo, hi = max(start, offset), min(start + width, offset + size)
                if lo >= hi:
                    continue
                shift = 8 * (lo - start)
                mask = ((1 << (8 * (hi - lo))) - 1) << shift
                bits = int.from_bytes(data[lo - offset : hi - offset], "little") << shift
                if start == _STS:
                    self._sts &= ~(bits & mask)  # write 1 to clear
                elif start == _EN:
                    self._en = (self._en & ~mask) | (bits & mask)
                elif start == _CNT:
                    self._cnt = SCI_EN | (self._cnt & ~(mask & _CNT_WRITABLE)) | (bits & mask & _CNT_WRITABLE)
                    if bits & mask & SLP_EN:
                        sleep_type = (self._cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT
                        poweroff = sleep_type == S5_SLP_TYP
                # PM_TMR is read-only
            self._update_sci()
        if poweroff and self.on_poweroff is not None:
            self.on_poweroff()

    # --- control plane -----------------------------------------------------------------

    def raise_power_button(self):
        """Press the power button: set PWRBTN_STS; the SCI fires if the guest enabled it.

        Linux's ACPI button driver enables PWRBTN_EN at boot and answers with an
        orderly power-off (systemd-logind / acpid decide the policy).
        """
        with self._lock:
            self._sts |= PWRBTN_STS
            self._update_sci()

    def timer(self):
        """The 32-bit PM timer value (TMR_VAL_EXT)."""
        return ((self._clock() - self._t0) * PM_TIMER_HZ // 1_000_000_000) & 0xFFFF_FFFF

    @property
    def sci_level(self):
        return self._sci_level

    def save(self):
        with self._lock:
            return AcpiPmState(self._sts, self._en, self._cnt, self.timer())

    def restore(self, state):
        with self._lock:
            self._sts, self._en, self._cnt = state.pm1_sts, state.pm1_en, state.pm1_cnt | SCI_EN
            # The timer reads state.pm_tmr now and counts on from there.
            self._t0 = self._clock() - -(-state.pm_tmr * 1_000_000_000 // PM_TIMER_HZ)
            self._update_sci(force=True)

    # --- internals ---------------------------------------------------------------------

    def _update_sci(self, force=False):
        """Drive the SCI from status & enable; called with the lock held, so that
        level changes reach ``sci`` in order."""
        level = bool(self._sts & self._en & _EVENT_BITS)
        if level != self._sci_level or force:
            self._sci_level = level
            if self.sci is not None:
                self.sci(level)
