"""The generated cffi bindings of <linux/kvm.h> agree with the kernel header and the C compiler.

KVM reads and writes these structs by layout alone: a field one byte off, or an
ioctl number encoding the wrong size, corrupts guest state silently.  So the
checked-in file is regenerated and compared, and every layout and request
number cffi computes is compared with what gcc computes from the same header.
"""
import errno
import os
import pathlib
import re
import subprocess
import sys

import pytest

from xvm.errors import KvmError
from xvm.kvm import ffi as kvm_ffi
from xvm.kvm.generated import kvm_h

REPO = pathlib.Path(__file__).resolve().parents[2]
GENERATOR = REPO / "tools" / "gen_kvm_bindings.py"
CHECKED_IN = REPO / "xvm" / "kvm" / "generated" / "kvm_h.py"

ffi = kvm_ffi.ffi
ALL_STRUCTS = sorted(set(re.findall(r"^struct (\w+) \{", kvm_h.CDEF, re.M)))
CONSTANTS = sorted(name for name, value in vars(kvm_h).items() if name.startswith("KVM") and isinstance(value, int))

# The structs KVM exchanges with a VMM on every boot and exit.
STRUCTS = [
    "kvm_run",
    "kvm_regs",
    "kvm_sregs",
    "kvm_userspace_memory_region",
    "kvm_irq_routing_entry",
    "kvm_ioeventfd",
    "kvm_irqfd",
    "kvm_cpuid_entry2",
    "kvm_lapic_state",
    "kvm_xsave",
]

# (struct, C member designator) -- nested members are written as in offsetof().
OFFSETS = [
    ("kvm_run", "exit_reason"),
    ("kvm_run", "immediate_exit"),
    ("kvm_run", "cr8"),
    ("kvm_run", "apic_base"),
    ("kvm_run", "io"),
    ("kvm_run", "io.port"),
    ("kvm_run", "io.data_offset"),
    ("kvm_run", "mmio.phys_addr"),
    ("kvm_run", "mmio.data"),
    ("kvm_run", "mmio.is_write"),
    ("kvm_run", "internal.suberror"),
    ("kvm_run", "kvm_valid_regs"),
    ("kvm_run", "kvm_dirty_regs"),
    ("kvm_run", "s"),
    ("kvm_regs", "rbx"),
    ("kvm_regs", "rsi"),
    ("kvm_regs", "rip"),
    ("kvm_regs", "rflags"),
    ("kvm_sregs", "cs"),
    ("kvm_sregs", "gdt"),
    ("kvm_sregs", "cr0"),
    ("kvm_sregs", "cr3"),
    ("kvm_sregs", "efer"),
    ("kvm_sregs", "apic_base"),
    ("kvm_sregs", "interrupt_bitmap"),
    ("kvm_userspace_memory_region", "flags"),
    ("kvm_userspace_memory_region", "guest_phys_addr"),
    ("kvm_userspace_memory_region", "memory_size"),
    ("kvm_userspace_memory_region", "userspace_addr"),
    ("kvm_irq_routing_entry", "type"),
    ("kvm_irq_routing_entry", "u"),
    ("kvm_irq_routing_entry", "u.msi.address_lo"),
    ("kvm_irq_routing_entry", "u.msi.data"),
    ("kvm_ioeventfd", "datamatch"),
    ("kvm_ioeventfd", "addr"),
    ("kvm_ioeventfd", "len"),
    ("kvm_ioeventfd", "fd"),
    ("kvm_ioeventfd", "flags"),
    ("kvm_irqfd", "gsi"),
    ("kvm_irqfd", "flags"),
    ("kvm_irqfd", "resamplefd"),
    ("kvm_cpuid_entry2", "index"),
    ("kvm_cpuid_entry2", "flags"),
    ("kvm_cpuid_entry2", "eax"),
    ("kvm_cpuid_entry2", "edx"),
    ("kvm_lapic_state", "regs"),
    ("kvm_xsave", "region"),
]

# The request numbers xvm issues most; all others are compared too, below.
KEY_IOCTLS = [
    "KVM_GET_API_VERSION",
    "KVM_CREATE_VM",
    "KVM_RUN",
    "KVM_SET_USER_MEMORY_REGION",
    "KVM_GET_SUPPORTED_CPUID",
    "KVM_SET_CPUID2",
    "KVM_IRQFD",
    "KVM_IOEVENTFD",
    "KVM_GET_REGS",
    "KVM_SET_SREGS",
    "KVM_SET_GSI_ROUTING",
    "KVM_GET_LAPIC",
    "KVM_GET_XSAVE",
]


def _cffi_offset(struct, member):
    return ffi.offsetof(f"struct {struct}", *member.split("."))


@pytest.fixture(scope="module")
def c_values(tmp_path_factory):
    """``{key: value}`` printed by a C program compiled against <linux/kvm.h>."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for struct in STRUCTS:
        lines.append(f'  printf("sizeof {struct} %zu\\n", sizeof(struct {struct}));')
    for struct, member in OFFSETS:
        lines.append(f'  printf("offsetof {struct} {member} %zu\\n", offsetof(struct {struct}, {member}));')
    for struct in ALL_STRUCTS:
        lines.append(f'  printf("layout {struct} %zu %zu\\n", sizeof(struct {struct}), _Alignof(struct {struct}));')
    for name in kvm_ffi.IOCTLS:
        lines.append(f'  printf("ioctl {name} %lu\\n", (unsigned long)({name}));')
    for name in CONSTANTS:
        lines.append(f'  printf("const {name} %llu\\n", (unsigned long long)({name}));')
    lines += ["  return 0;", "}"]
    workdir = tmp_path_factory.mktemp("kvm_h_c")
    source = workdir / "layout.c"
    source.write_text("\n".join(lines) + "\n")
    binary = workdir / "layout"
    subprocess.run(["gcc", "-O0", "-o", str(binary), str(source)], check=True, capture_output=True, text=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    values = {}
    for line in out.splitlines():
        if line.startswith("layout "):
            _, struct, size, align = line.split()
            values[f"layout {struct}"] = (int(size), int(align))
            continue
        key, _, value = line.rpartition(" ")
        values[key] = int(value)
    return values


def test_checked_in_bindings_match_generator_output(tmp_path):
    out = tmp_path / "kvm_h.py"
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)], check=True, capture_output=True, text=True, cwd=REPO
    )
    generated = out.read_text()
    checked_in = CHECKED_IN.read_text()
    assert generated == checked_in, (
        "xvm/kvm/generated/kvm_h.py differs from what tools/gen_kvm_bindings.py produces from this "
        "system's <linux/kvm.h>: regenerate it, never edit it by hand"
    )


@pytest.mark.parametrize("struct", STRUCTS)
def test_struct_size_matches_c_compiler(c_values, struct):
    assert ffi.sizeof(f"struct {struct}") == c_values[f"sizeof {struct}"]


@pytest.mark.parametrize("struct,member", OFFSETS, ids=[f"{s}.{m}" for s, m in OFFSETS])
def test_field_offset_matches_c_compiler(c_values, struct, member):
    assert _cffi_offset(struct, member) == c_values[f"offsetof {struct} {member}"]


def test_kvm_run_layout_has_the_well_known_abi_offsets():
    # Fixed by the KVM ABI since 2.6.x: the exit union starts at byte 32, io.port at 34.
    assert ffi.offsetof("struct kvm_run", "exit_reason") == 8
    assert ffi.offsetof("struct kvm_run", "io") == 32
    assert ffi.offsetof("struct kvm_run", "io", "port") == 34


@pytest.mark.parametrize("name", KEY_IOCTLS)
def test_key_ioctl_numbers_match_c_macros(c_values, name):
    assert kvm_ffi.IOCTLS[name] == c_values[f"ioctl {name}"]


# A union made only of zero-length arrays (struct kvm_nested_state's ``data``) is 0 bytes to gcc
# but 1 byte to cffi; the generator declares it as a flexible byte array so both agree.
NESTED_STATE_STRUCTS = {"kvm_nested_state"}
NESTED_STATE_IOCTLS = {"KVM_GET_NESTED_STATE", "KVM_SET_NESTED_STATE"}


def test_every_generated_struct_layout_matches_c_compiler(c_values):
    assert len(ALL_STRUCTS) > 100
    wrong = {
        struct: ((ffi.sizeof(f"struct {struct}"), ffi.alignof(f"struct {struct}")), c_values[f"layout {struct}"])
        for struct in ALL_STRUCTS
        if struct not in NESTED_STATE_STRUCTS
        and (ffi.sizeof(f"struct {struct}"), ffi.alignof(f"struct {struct}")) != c_values[f"layout {struct}"]
    }
    assert not wrong, f"(sizeof, alignof) differ from gcc's (cffi, C): {wrong}"


def test_every_generated_ioctl_number_matches_its_c_macro(c_values):
    assert len(kvm_ffi.IOCTLS) > 100
    wrong = {
        name: (hex(number), hex(c_values[f"ioctl {name}"]))
        for name, number in kvm_ffi.IOCTLS.items()
        if name not in NESTED_STATE_IOCTLS and number != c_values[f"ioctl {name}"]
    }
    assert not wrong, f"ioctl numbers differ from <linux/kvm.h> (cffi, C): {wrong}"


def test_kvm_nested_state_size_matches_c_compiler(c_values):
    assert ffi.sizeof("struct kvm_nested_state") == c_values["layout kvm_nested_state"][0]


@pytest.mark.parametrize("name", sorted(NESTED_STATE_IOCTLS))
def test_nested_state_ioctl_numbers_match_c_macros(c_values, name):
    assert kvm_ffi.IOCTLS[name] == c_values[f"ioctl {name}"]


def test_every_generated_constant_matches_its_c_macro(c_values):
    assert len(CONSTANTS) > 100  # exit reasons, capabilities, flags
    wrong = {
        name: (getattr(kvm_h, name), c_values[f"const {name}"])
        for name in CONSTANTS
        if getattr(kvm_h, name) & 0xFFFF_FFFF_FFFF_FFFF != c_values[f"const {name}"]
    }
    assert not wrong, f"constants differ from <linux/kvm.h> (generated, C): {wrong}"


def test_bindings_cover_what_xvm_needs():
    # A generator regression that silently dropped these would break every boot.
    for name in KEY_IOCTLS:
        assert name in kvm_ffi.IOCTLS
    assert kvm_h.KVM_EXIT_IO == 2 and kvm_h.KVM_EXIT_MMIO == 6 and kvm_h.KVM_EXIT_HLT == 5
    assert kvm_h.KVM_API_VERSION == 12


def test_failing_ioctl_raises_kvm_error_naming_it():
    # /dev/null does not implement KVM's ioctls: the call reaches the kernel and fails with ENOTTY.
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        with pytest.raises(KvmError) as info:
            kvm_ffi.ioctl(fd, "KVM_GET_API_VERSION")
    finally:
        os.close(fd)
    assert info.value.ioctl == "KVM_GET_API_VERSION"
    assert info.value.errno == errno.ENOTTY
    assert str(info.value).startswith("KVM_GET_API_VERSION failed: ENOTTY")


def test_ioctl_on_a_closed_fd_reports_ebadf():
    fd = os.open("/dev/null", os.O_RDWR)
    os.close(fd)
    with pytest.raises(KvmError) as info:
        kvm_ffi.ioctl(fd, "KVM_CREATE_VM", 0)
    assert info.value.errno == errno.EBADF and info.value.ioctl == "KVM_CREATE_VM"
