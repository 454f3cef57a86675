"""The ACPI PM1a event/control registers, power button, S5 power-off and PM timer."""
import pytest

from xvm.acpi import AcpiPm, AcpiPmState
from xvm.acpi import pm
from xvm.machine.bus import Bus


class Recorder:
    def __init__(self):
        self.levels = []
        self.poweroffs = 0

    def sci(self, level):
        self.levels.append(level)

    def poweroff(self):
        self.poweroffs += 1


def make():
    rec = Recorder()
    ticks = [0]
    dev = AcpiPm(sci=rec.sci, on_poweroff=rec.poweroff, clock=lambda: ticks[0])
    return dev, rec, ticks


def test_layout_matches_fadt():
    assert (pm.PM1A_EVT_BLK, pm.PM1A_CNT_BLK, pm.PM_TMR_BLK, pm.SCI_IRQ) == (0x600, 0x604, 0x608, 9)


def test_sci_en_reads_as_set():
    dev, _, _ = make()
    assert dev.read(4, 2) & pm.SCI_EN
    dev.write(4, 2, 0)
    assert dev.read(4, 2) == pm.SCI_EN


def test_power_button_raises_sci_only_when_enabled():
    dev, rec, _ = make()
    dev.raise_power_button()
    assert dev.read(0, 2) & pm.PWRBTN_STS
    assert rec.levels == []  # not enabled yet: status latched, no SCI
    dev.write(2, 2, pm.PWRBTN_EN)  # the guest's button driver enables the event
    assert rec.levels == [True] and dev.sci_level
    dev.write(0, 2, pm.PWRBTN_STS)  # write 1 to clear
    assert dev.read(0, 2) & pm.PWRBTN_STS == 0
    assert rec.levels == [True, False]
    dev.raise_power_button()
    assert rec.levels == [True, False, True]


def test_status_write_zero_does_not_clear():
    dev, _, _ = make()
    dev.raise_power_button()
    dev.write(0, 2, 0)
    assert dev.read(0, 2) & pm.PWRBTN_STS


def test_dword_access_spanning_status_and_enable():
    dev, rec, _ = make()
    dev.raise_power_button()
    dev.write(0, 4, pm.PWRBTN_EN << 16)  # enable only; status untouched
    assert dev.read(0, 4) == pm.PWRBTN_STS | (pm.PWRBTN_EN << 16)
    assert rec.levels == [True]
    assert dev.read(1, 1) == pm.PWRBTN_STS >> 8


def test_s5_poweroff_linux_sequence():
    dev, rec, _ = make()
    # ACPICA: write SLP_TYP (keeping SCI_EN), then SLP_TYP | SLP_EN
    dev.write(4, 2, pm.SCI_EN | (pm.S5_SLP_TYP << pm.SLP_TYP_SHIFT))
    assert rec.poweroffs == 0
    dev.write(4, 2, pm.SCI_EN | (pm.S5_SLP_TYP << pm.SLP_TYP_SHIFT) | pm.SLP_EN)
    assert rec.poweroffs == 1
    assert dev.read(4, 2) & pm.SLP_EN == 0  # write-only


def test_qemu_style_poweroff_value():
    dev, rec, _ = make()
    dev.write(4, 2, 0x2000)
    assert rec.poweroffs == 1


def test_other_sleep_types_do_not_power_off():
    dev, rec, _ = make()
    dev.write(4, 2, (5 << pm.SLP_TYP_SHIFT) | pm.SLP_EN)
    assert rec.poweroffs == 0
    assert (dev.read(4, 2) & pm.SLP_TYP_MASK) >> pm.SLP_TYP_SHIFT == 5


def test_pm_timer_counts_at_3_579545_mhz():
    dev, _, ticks = make()
    assert dev.read(8, 4) == 0
    ticks[0] = 1_000_000_000
    assert dev.read(8, 4) == 3_579_545
    ticks[0] = 2_000_000_000_000  # wraps at 32 bits
    assert dev.read(8, 4) == (2000 * 3_579_545) & 0xFFFF_FFFF
    dev.write(8, 4, 0)  # read-only
    assert dev.read(8, 4) == (2000 * 3_579_545) & 0xFFFF_FFFF


def test_out_of_range_access_is_harmless():
    dev, rec, _ = make()
    assert dev.read(12, 1) == 0xFF
    assert dev.read(10, 4) == 0xFFFF_FFFF
    dev.write(11, 4, 0xFFFF_FFFF)
    dev.write(-1, 2, 0xFFFF)
    assert rec.levels == [] and rec.poweroffs == 0


def test_save_restore():
    dev, rec, _ = make()
    dev.write(2, 2, pm.PWRBTN_EN)
    dev.raise_power_button()
    state = dev.save()
    assert state == AcpiPmState(pm.PWRBTN_STS, pm.PWRBTN_EN, pm.SCI_EN, 0)
    other, rec2, _ = make()
    other.restore(state)
    assert other.sci_level and rec2.levels == [True]
    assert other.read(0, 4) == pm.PWRBTN_STS | (pm.PWRBTN_EN << 16)


def test_the_pm_timer_counts_on_from_its_saved_value():
    """A restored (or migrated) guest's PM timer neither restarts at 0 nor counts the time
    the guest was stopped: it goes on from where it was saved, as its kvmclock does."""
    dev, _, ticks = make()
    ticks[0] = 3_000_000_000  # 3 s after the machine started
    saved = dev.save()
    assert saved.pm_tmr == 3 * pm.PM_TIMER_HZ
    other, _, other_ticks = make()
    other_ticks[0] = 987_654_321_000  # the new VMM's clock is somewhere else entirely
    other.restore(saved)
    assert other.timer() == saved.pm_tmr
    other_ticks[0] += 1_000_000_000
    assert other.timer() == saved.pm_tmr + pm.PM_TIMER_HZ
    assert other.read(8, 4) == other.timer()


@pytest.mark.parametrize("fields", [{"pm_tmr": -1}, {"pm_tmr": 1 << 32}, {"pm_tmr": "7"}, {"pm1_sts": 1 << 16},
                                    {"pm1_cnt": 1.5}, {"pm1_en": True}])
def test_a_state_out_of_range_is_refused(fields):
    with pytest.raises(ValueError, match="ACPI PM state"):
        AcpiPmState(**fields)


def test_a_state_saved_before_the_timer_was_still_loads():
    assert AcpiPmState(**{"pm1_sts": 0, "pm1_en": 0, "pm1_cnt": pm.SCI_EN}).pm_tmr == 0


@pytest.fixture
def pm_bus():
    """(bus, recorder): the device on a port-I/O bus at PM_BASE, as Machine registers it."""
    rec = Recorder()
    bus = Bus("port I/O")
    dev = AcpiPm(sci=rec.sci, on_poweroff=rec.poweroff)
    bus.register(pm.PM_BASE, pm.PM_SIZE, dev)
    bus.pm = dev
    return bus, rec


@pytest.mark.parametrize("slp_typ", [t for t in range(8) if t != pm.S5_SLP_TYP])
def test_no_sleep_type_but_s5_powers_off(pm_bus, slp_typ):
    bus, rec = pm_bus
    bus.write(pm.PM1A_CNT_BLK, 2, pm.SCI_EN | (slp_typ << pm.SLP_TYP_SHIFT) | pm.SLP_EN)
    assert rec.poweroffs == 0


def test_s5_without_slp_en_does_not_power_off(pm_bus):
    bus, rec = pm_bus
    bus.write(pm.PM1A_CNT_BLK, 2, pm.S5_SLP_TYP << pm.SLP_TYP_SHIFT)
    bus.write(pm.PM1A_CNT_BLK, 2, pm.SCI_EN)
    assert rec.poweroffs == 0


def test_s5_through_the_bus_powers_off_once(pm_bus):
    bus, rec = pm_bus
    bus.write(pm.PM1A_CNT_BLK, 2, (pm.S5_SLP_TYP << pm.SLP_TYP_SHIFT) | pm.SLP_EN)
    assert rec.poweroffs == 1
    bus.write(pm.PM1A_EVT_BLK + 2, 2, pm.PWRBTN_EN)  # unrelated writes do not repeat it
    assert rec.poweroffs == 1


def test_slp_en_in_a_byte_write_to_the_high_half(pm_bus):
    # PM1a_CNT is 16 bits wide but the FADT allows byte access: SLP_TYP/SLP_EN live in byte 1.
    bus, rec = pm_bus
    bus.write(pm.PM1A_CNT_BLK + 1, 1, ((pm.S5_SLP_TYP << pm.SLP_TYP_SHIFT) | pm.SLP_EN) >> 8)
    assert rec.poweroffs == 1


def test_disabling_the_event_drops_the_sci_but_keeps_status(pm_bus):
    bus, rec = pm_bus
    bus.write(pm.PM1A_EVT_BLK + 2, 2, pm.PWRBTN_EN)
    bus.pm.raise_power_button()
    assert rec.levels == [True]
    bus.write(pm.PM1A_EVT_BLK + 2, 2, 0)
    assert rec.levels == [True, False]
    assert bus.read(pm.PM1A_EVT_BLK, 2) & pm.PWRBTN_STS


def test_clearing_another_status_bit_keeps_the_sci(pm_bus):
    bus, rec = pm_bus
    bus.write(pm.PM1A_EVT_BLK + 2, 2, pm.PWRBTN_EN)
    bus.pm.raise_power_button()
    bus.write(pm.PM1A_EVT_BLK, 2, pm.SLPBTN_STS | pm.TMR_STS)
    assert bus.pm.sci_level and rec.levels == [True]
    assert bus.read(pm.PM1A_EVT_BLK, 2) & pm.PWRBTN_STS


def test_pressing_twice_before_the_guest_clears_raises_once(pm_bus):
    bus, rec = pm_bus
    bus.write(pm.PM1A_EVT_BLK + 2, 2, pm.PWRBTN_EN)
    bus.pm.raise_power_button()
    bus.pm.raise_power_button()
    assert rec.levels == [True]  # level-triggered: no second edge
