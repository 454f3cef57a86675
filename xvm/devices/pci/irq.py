"""GSI routing for message-signalled interrupts.

KVM_SET_GSI_ROUTING replaces the whole routing table, so every update carries
the routes KVM_CREATE_IRQCHIP installed by default (GSI 0-15 to the PIC and the
IOAPIC pin of the same number, GSI 16-23 to the IOAPIC) together with the MSI
routes.  GSIs from :data:`FIRST_MSI_GSI` up are handed out for MSI(-X)
vectors.
"""
import threading

from ...errors import ConfigError
from ...kvm.vm import IrqchipRoute, MsiRoute

KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
IOAPIC_PINS = 24
FIRST_MSI_GSI = IOAPIC_PINS
MAX_GSI = 1024  # KVM_MAX_IRQ_ROUTES is 4096 on x86; plenty below it


def default_routes():
    """The routes KVM_CREATE_IRQCHIP sets up (virt/kvm/irqchip.c default routing)."""
    routes = []
    for gsi in range(IOAPIC_PINS):
        if gsi < 8:
            routes.append(IrqchipRoute(gsi, KVM_IRQCHIP_PIC_MASTER, gsi))
        elif gsi < 16:
            routes.append(IrqchipRoute(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8))
        routes.append(IrqchipRoute(gsi, KVM_IRQCHIP_IOAPIC, gsi))
    return routes


class GsiRouter:
    """Owns the machine's GSI routing table; ``vm`` needs ``set_gsi_routing``."""

    def __init__(self, vm):
        self.vm = vm
        self.msi = {}  # gsi -> (address, data)
        self._allocated = set()
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()

    def allocate(self):
        with self._lock:
            for gsi in range(FIRST_MSI_GSI, MAX_GSI):
                if gsi not in self._allocated:
                    self._allocated.add(gsi)
                    return gsi
        raise ConfigError(f"no free GSI for an MSI vector (limit {MAX_GSI})")

    def release(self, gsi):
        with self._lock:
            self._allocated.discard(gsi)
            changed = self.msi.pop(gsi, None) is not None
        if changed:
            self.commit()

    def set_msi(self, gsi, address, data):
        with self._lock:
            if self.msi.get(gsi) == (address, data):
                return
            self.msi[gsi] = (address, data)
        self.commit()

    def clear(self, gsi):
        with self._lock:
            if self.msi.pop(gsi, None) is None:
                return
        self.commit()

    def routes(self):
        with self._lock:
            msi = sorted(self.msi.items())
        return default_routes() + [MsiRoute(gsi, address, data) for gsi, (address, data) in msi]

    def commit(self):
        # One update at a time, each with the newest table: never an older one last.
        with self._commit_lock:
            if self.vm is not None:
                self.vm.set_gsi_routing(self.routes())
