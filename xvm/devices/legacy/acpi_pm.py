"""ACPI fixed-hardware power management registers (PM1a event and control blocks).

Ports (base 0x600): PM1a_STS 0x600 (2 bytes), PM1a_EN 0x602 (2 bytes),
PM1a_CNT 0x604 (2 bytes).  A write to PM1a_CNT with SLP_EN set and SLP_TYP
equal to the \\_S5 value powers the machine off.  ``press_power_button()`` sets
PWRBTN_STS and raises the SCI when the guest has enabled it, which makes an
ACPI-aware guest shut down cleanly.
"""
import threading

PM_BASE = 0x600
PM_SIZE = 0x10
PM1_STS = 0x0
PM1_EN = 0x2
PM1_CNT = 0x4

PWRBTN_STS = 1 << 8
PWRBTN_EN = 1 << 8
SCI_EN = 1 << 0
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0x7 << SLP_TYP_SHIFT
SLP_EN = 1 << 13
SLP_TYP_S5 = 0  # must match the DSDT's \_S5 package


class AcpiPm:
    def __init__(self, on_poweroff, set_sci):
        self._on_poweroff = on_poweroff
        self._set_sci = set_sci
        self._lock = threading.Lock()
        self._sts = 0
        self._en = 0
        self._cnt = SCI_EN  # no SMI_CMD: the machine is always in ACPI mode

    def press_power_button(self):
        with self._lock:
            self._sts |= PWRBTN_STS
            self._update_sci()
        return bool(self._en & PWRBTN_EN)

    def read(self, offset, size):
        with self._lock:
            if offset == PM1_STS:
                value = self._sts
            elif offset == PM1_EN:
                value = self._en
            elif offset == PM1_CNT:
                value = self._cnt
            else:
                return (1 << (8 * size)) - 1
        return value & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        poweroff = False
        with self._lock:
            if offset == PM1_STS:
                self._sts &= ~value  # write 1 to clear
            elif offset == PM1_EN:
                self._en = value & 0xFFFF
            elif offset == PM1_CNT:
                if value & SLP_EN and (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == SLP_TYP_S5:
                    poweroff = True
                self._cnt = (value & ~SLP_EN) | SCI_EN
            self._update_sci()
        if poweroff:
            self._on_poweroff()

    def _update_sci(self):
        self._set_sci(bool(self._sts & self._en & PWRBTN_STS))
