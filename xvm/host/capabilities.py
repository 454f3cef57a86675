"""What this host's KVM can do: :class:`Capabilities` (``/dev/xen/domcaps`` for xvm)."""
import os
from dataclasses import dataclass, field

from ..kvm.generated import kvm_h

# The KVM capabilities xvm relies on, by name.
REQUIRED_CAPS = (
    "KVM_CAP_IRQCHIP",
    "KVM_CAP_USER_MEMORY",
    "KVM_CAP_SET_TSS_ADDR",
    "KVM_CAP_PIT2",
    "KVM_CAP_IRQFD",
    "KVM_CAP_IOEVENTFD",
    "KVM_CAP_IRQ_ROUTING",
    "KVM_CAP_EXT_CPUID",
    "KVM_CAP_IMMEDIATE_EXIT",
)
REPORTED_CAPS = REQUIRED_CAPS + (
    "KVM_CAP_XSAVE",
    "KVM_CAP_XCRS",
    "KVM_CAP_SIGNAL_MSI",
    "KVM_CAP_READONLY_MEM",
    "KVM_CAP_TSC_CONTROL",
    "KVM_CAP_NR_MEMSLOTS",
    "KVM_CAP_MAX_VCPUS",
    "KVM_CAP_NR_VCPUS",
)
PVM_MODULE = "/sys/module/kvm_pvm"


@dataclass(frozen=True)
class Capabilities:
    """What this host's KVM can do (``/dev/xen/domcaps`` for xvm)."""

    kvm_api_version: int
    virtualization: str  # "vmx", "svm", "pvm" or "none"
    hvm: bool  # runs unmodified guests (hardware-assisted)
    pv: bool  # runs guests that follow the PVM contract
    max_vcpus: int
    recommended_vcpus: int
    memory_slots: int
    kvm_capabilities: dict = field(default_factory=dict)
    missing_capabilities: tuple = ()

    def _repr_mimebundle_(self, include=None, exclude=None):
        from ..display import capabilities_bundle
        return capabilities_bundle(self, include, exclude)


def _virtualization():
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    for flag in ("vmx", "svm"):
        if flag in flags:
            return flag
    return "pvm" if os.path.isdir(PVM_MODULE) else "none"


def capabilities_of(kvm):
    """The :class:`Capabilities` of an open :class:`~xvm.kvm.system.Kvm`."""
    caps = {name: kvm.check_extension(getattr(kvm_h, name)) for name in REPORTED_CAPS}
    virt = _virtualization()
    return Capabilities(
        kvm_api_version=kvm.api_version,
        virtualization=virt,
        hvm=virt in ("vmx", "svm"),
        pv=virt == "pvm",
        max_vcpus=caps["KVM_CAP_MAX_VCPUS"] or caps["KVM_CAP_NR_VCPUS"] or 4,
        recommended_vcpus=caps["KVM_CAP_NR_VCPUS"] or 4,
        memory_slots=caps["KVM_CAP_NR_MEMSLOTS"] or 32,
        kvm_capabilities=caps,
        missing_capabilities=tuple(name for name in REQUIRED_CAPS if not caps[name]),
    )
