"""Fuzz targets for what a guest or a client feeds xvm: device register files, boot
loaders, the domain config parser and the virtio net header parser.

Each target: hypothesis with a bounded number of examples (``conftest.examples``),
the seeds of ``corpus/<target>/`` replayed first (``conftest.replay``); byte-level
targets also start from them, mutated.  Only the errors of the documented kind may come
out; anything else, or a hang (pytest-timeout), fails.  The other targets: the sibling
files test_fuzz_*.py (see conftest.py).
"""
import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ, examples, mutated, replay
from xvm.errors import XvmError

ACCESS = st.tuples(st.integers(0, 7), st.sampled_from([1, 2, 4]), st.booleans(), st.integers(0, 0xFFFF_FFFF))


def drive(bus, base, accesses, span):
    for reg, size, write, value in accesses:
        port = base + reg % span
        if write:
            bus.write(port, size, value & ((1 << (8 * size)) - 1))
        else:
            assert 0 <= bus.read(port, size) < 1 << (8 * size)


@replay("uart")
@settings(FUZZ, max_examples=examples(200))
@given(accesses=st.lists(ACCESS, max_size=60))
def test_uart_registers(accesses):
    from xvm.devices.legacy.serial import Serial8250
    from xvm.machine.bus import Bus
    bus = Bus("port I/O")
    bus.register(0x3F8, 8, Serial8250(lambda data: None, lambda level: None))
    drive(bus, 0x3F8, accesses, 8)


@replay("i8042")
@settings(FUZZ, max_examples=examples(200))
@given(accesses=st.lists(ACCESS, max_size=60))
def test_i8042_registers(accesses):
    from xvm.devices.legacy import i8042
    from xvm.machine.bus import Bus
    bus = Bus("port I/O")
    bus.register(i8042.DATA_PORT, 5, i8042.I8042(lambda: None))
    drive(bus, i8042.DATA_PORT, accesses, 5)


@replay("acpi_pm")
@settings(FUZZ, max_examples=examples(200))
@given(accesses=st.lists(ACCESS, max_size=60))
def test_acpi_pm_registers(accesses):
    from xvm.acpi import AcpiPm, pm
    from xvm.machine.bus import Bus
    bus = Bus("port I/O")
    bus.register(pm.PM_BASE, pm.PM_SIZE, AcpiPm(sci=lambda level: None, on_poweroff=lambda: None))
    drive(bus, pm.PM_BASE, accesses, pm.PM_SIZE)


@replay("pci_host_bridge")
@settings(FUZZ, max_examples=examples(200))
@given(accesses=st.lists(st.tuples(st.booleans(), st.integers(0, 0xFFFF), st.sampled_from([1, 2, 4]),
                          st.booleans(), st.integers(0, 0xFFFF_FFFF)), max_size=60))
def test_pci_host_bridge_config_space(accesses):
    from xvm.devices.pci import PciFunction, PciHostBridge
    from xvm.machine import layout
    from xvm.machine.bus import Bus

    class Region:
        def read(self, offset, size):
            return 0

        def write(self, offset, size, value):
            pass

    mmio, pio = Bus("MMIO"), Bus("PIO")
    bridge = PciHostBridge(mmio, window=layout.PCI_MMIO_WINDOW, ecam_base=layout.PCI_ECAM_BASE)
    bridge.register(pio)
    f = PciFunction(vendor_id=0x1234, device_id=0x5678, class_code=0xFF0000, revision=2,
                    subsystem_vendor_id=0x1234, subsystem_id=1, name="fuzz")
    f.add_memory_bar(0, 0x4000, Region())
    bridge.add(f)
    for conf1, where, size, write, value in accesses:
        value &= (1 << (8 * size)) - 1
        if conf1:  # mechanism #1: address at 0xCF8, data at 0xCFC..0xCFF
            pio.write(0xCF8, 4, 0x8000_0000 | (where << 2) & 0x00FF_FFFC)
            port = 0xCFC + where % 4
            pio.write(port, size, value) if write else pio.read(port, size)
        else:  # ECAM, bus 0
            address = layout.PCI_ECAM_BASE + where * 16
            mmio.write(address, size, value) if write else mmio.read(address, size)


def _elf_seed():
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 62, 1, 0x1000000,
                       64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, 0x1000000, 0x1000000, 0x100, 0x200, 0x1000)
    return ehdr + phdr + b"\0" * (0x1000 - 120) + b"\xf4" * 0x100


@replay("elf", lambda data: {"image": data})
@settings(FUZZ, max_examples=examples(200))
@given(image=mutated("elf"))
def test_elf_loader(image):
    from xvm.errors import BootError
    from xvm.kvm.memory import GuestMemory
    from xvm.machine import layout
    from xvm.machine.boot.elf import ElfImage, load_pvh
    with GuestMemory.create(layout.ram_ranges(32 << 20)) as memory:
        try:
            load_pvh(memory, ElfImage(image), memory_bytes=32 << 20)
        except BootError:
            pass


@replay("bzimage", lambda data: {"image": data})
@settings(FUZZ, max_examples=examples(200))
@given(image=mutated("bzimage"))
def test_bzimage_loader(image):
    from xvm.errors import BootError
    from xvm.kvm.memory import GuestMemory
    from xvm.machine import layout
    from xvm.machine.boot.linux import load_bzimage
    with GuestMemory.create(layout.ram_ranges(64 << 20)) as memory:
        try:
            load_bzimage(memory, image)
        except BootError:
            pass


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
CONFIG_KEYS = st.sampled_from(["name", "uuid", "memory_mib", "vcpus", "kernel", "initrd", "cmdline",
                               "disks", "nics", "cpu_features", "virtio_transport", "path", "readonly"])


@replay("domain_config")
@settings(FUZZ, max_examples=examples(100))
@given(data=st.dictionaries(CONFIG_KEYS, JSON, max_size=8))
def test_domain_config_parser(data):
    """A client's config (xvmd takes it as JSON): ConfigError or a config that round-trips."""
    from xvm.config import DomainConfig
    try:
        config = DomainConfig.from_dict(data)
    except XvmError:
        return
    assert DomainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@replay("net_tx", lambda data: (lambda seed: {"header": bytes.fromhex(seed["header"]), "features": seed["features"],
                                               "pieces": [tuple(p) for p in seed["pieces"]]})(json.loads(data)))
@settings(FUZZ, max_examples=examples(200))
@given(header=st.binary(max_size=64),
       pieces=st.lists(st.tuples(st.integers(0, 0xF000), st.integers(1, 0x800)), max_size=4),
       features=st.integers(0, (1 << 64) - 1))
def test_net_tx_header_parser(header, pieces, features):
    from xvm.devices.net.request import TxError, parse_tx
    from xvm.devices.virtio.queue import DescriptorChain
    from xvm.kvm.memory import GuestMemory
    with GuestMemory.create([(0, 0x10000)]) as memory:
        memory.write(0, header)
        chain = DescriptorChain(0, ((0, max(len(header), 1)),) + tuple(pieces), (), memory)
        try:
            parse_tx(chain, features)
        except TxError:
            pass
