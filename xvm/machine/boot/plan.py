"""What a loader hands the machine: where and how the boot vCPU starts."""
import enum
from dataclasses import dataclass, field


class CpuMode(enum.Enum):
    PROTECTED_32 = "protected-32"  # flat 32-bit protected mode, paging off (PVH entry)
    LONG_64 = "long-64"  # 64-bit long mode with the plan's page tables (Linux 64-bit entry)


@dataclass(frozen=True)
class BootPlan:
    """The boot vCPU's entry state; plain data, turned into sregs/regs by the machine."""

    mode: CpuMode
    entry: int  # rip
    registers: dict = field(default_factory=dict)  # e.g. {"rbx": start_info} or {"rsi": boot_params}
    cr3: int = 0  # LONG_64 only: guest-physical address of the PML4
    gdt: int = 0  # guest-physical address of a GDT the loader wrote (0: none)
    gdt_limit: int = 0
    code_selector: int = 0x10
    data_selector: int = 0x18
    kernel_end: int = 0  # first byte after the loaded image
