"""Architectural set-up of a vCPU: CPUID, FPU, LAPIC, and boot-entry registers."""
from ..kvm.ffi import ffi
from .boot import CpuMode

X86_CR0_PE = 1 << 0
X86_CR0_ET = 1 << 4
X86_CR0_NE = 1 << 5
X86_CR0_PG = 1 << 31
X86_CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_EXTINT = 0x7
APIC_MODE_NMI = 0x4

CPUID_EXT_HYPERVISOR = 1 << 31  # leaf 1 ECX

# CPU features a domain may hide from its guest: name -> (leaf, subleaf, register, bit) to clear.
# Hiding "xsave" also hides what depends on it (OSXSAVE, AVX and its successors) and leaf 0xD.
CPU_FEATURES = {
    "xsave": ((1, 0, "ecx", 26), (1, 0, "ecx", 27), (1, 0, "ecx", 28), (1, 0, "ecx", 12), (1, 0, "ecx", 29),
              (7, 0, "ebx", 5), (7, 0, "ebx", 16), (7, 0, "ebx", 17), (7, 0, "ebx", 28), (7, 0, "ebx", 30),
              (7, 0, "ebx", 31), (7, 0, "ecx", 1), (7, 0, "edx", 2), (7, 0, "edx", 3)),
    "x2apic": ((1, 0, "ecx", 21),),
    "pdpe1gb": ((0x8000_0001, 0, "edx", 26),),
    "rdtscp": ((0x8000_0001, 0, "edx", 27),),
    "pcid": ((1, 0, "ecx", 17),),
}
XSAVE_LEAF = 0xD


def configure_cpuid(vcpu, supported, vcpu_count, disabled_features=()):
    """Give ``vcpu`` the host's supported CPUID with its own APIC ID and topology,
    less the features named in ``disabled_features`` (keys of CPU_FEATURES)."""
    cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": supported.nent, "entries": supported.nent})
    ffi.memmove(cpuid.entries, supported.entries, ffi.sizeof("struct kvm_cpuid_entry2") * supported.nent)
    clear = [bit for name in disabled_features for bit in CPU_FEATURES[name]]
    for i in range(cpuid.nent):
        entry = cpuid.entries[i]
        for leaf, subleaf, register, bit in clear:
            if entry.function == leaf and entry.index == subleaf:
                setattr(entry, register, getattr(entry, register) & ~(1 << bit))
        if entry.function == XSAVE_LEAF and "xsave" in disabled_features:
            entry.eax = entry.ebx = entry.ecx = entry.edx = 0
        if entry.function == 1:
            # EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
            entry.ebx = (vcpu.id << 24) | (min(vcpu_count, 255) << 16) | (entry.ebx & 0xFFFF)
            entry.ecx |= CPUID_EXT_HYPERVISOR
            if vcpu_count > 1:
                entry.edx |= 1 << 28  # HTT: the package has several logical processors
        elif entry.function in (0xB, 0x1F):
            entry.edx = vcpu.id  # x2APIC ID
    vcpu.set_cpuid(cpuid)


def configure_fpu(vcpu):
    fpu = ffi.new("struct kvm_fpu *")
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80
    vcpu.set_fpu(fpu)


def configure_lapic(vcpu):
    """LINT0 as ExtINT (the PIC) and LINT1 as NMI, as firmware leaves them on a PC."""
    lapic = vcpu.get_lapic()
    regs = ffi.cast("uint32_t *", lapic.regs)
    for reg, mode in ((APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)):
        word = regs[reg // 4]
        regs[reg // 4] = (word & ~0x700) | (mode << 8)
    vcpu.set_lapic(lapic)


def _flat_segment(segment, selector, code, long_mode=False):
    segment.base = 0
    segment.limit = 0xFFFF_FFFF
    segment.selector = selector
    segment.type = 0xB if code else 0x3  # execute/read accessed, or read/write accessed
    segment.present = 1
    segment.dpl = 0
    segment.s = 1
    segment.g = 1
    segment.l = 1 if (code and long_mode) else 0
    segment.db = 0 if (code and long_mode) else 1


def configure_boot_registers(vcpu, plan):
    """Put the boot vCPU at the loader's entry point in the mode the plan asks for."""
    sregs = vcpu.get_sregs()
    long_mode = plan.mode is CpuMode.LONG_64
    _flat_segment(sregs.cs, plan.code_selector, code=True, long_mode=long_mode)
    for segment in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _flat_segment(segment, plan.data_selector, code=False)
    if plan.gdt:
        sregs.gdt.base, sregs.gdt.limit = plan.gdt, plan.gdt_limit
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE
    if long_mode:
        sregs.cr3 = plan.cr3
        sregs.cr4 |= X86_CR4_PAE
        sregs.cr0 |= X86_CR0_PG
        sregs.efer |= EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)

    regs = ffi.new("struct kvm_regs *")
    regs.rflags = 0x2
    regs.rip = plan.entry
    for name, value in plan.registers.items():
        setattr(regs, name, value)
    vcpu.set_regs(regs)
