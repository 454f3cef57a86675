"""PCI: a host bridge for bus 0 (mechanism #1 ports and ECAM), type-0 functions
with memory BARs and capabilities, MSI-X, and GSI routing for MSI vectors.

Mechanism only: the machine creates the bridge, plugs functions in
(:mod:`xvm.devices.virtio.pci` is one) and describes the bridge in ACPI
(:mod:`.acpi`).
"""
from .config import PciFunction
from .host import ECAM_BUS_SIZE, PCI_CONFIG_ADDRESS, PciHostBridge
from .irq import GsiRouter
from .msix import Msix

__all__ = ["ECAM_BUS_SIZE", "PCI_CONFIG_ADDRESS", "GsiRouter", "Msix", "PciFunction", "PciHostBridge"]
