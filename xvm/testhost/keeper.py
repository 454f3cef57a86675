"""The KVM keeper: keeps one idle KVM VM open for the life of the TCG test host.

Why (ENVIRONMENT.md): the kernel live-patches its scheduler the first time a KVM VM is created
and the last time one is destroyed; under multi-threaded TCG that patching intermittently
livelocked the machine. With one VM alive from boot to power-off it happens once, at boot,
before the job starts, and never again.

The keeper is a 115-byte static x86-64 program in the test host's initramfs (a Python keeper
costs 2-5 s of interpreter start-up under TCG, on every boot). Its machine code, assembled
from the source below with GNU as (``as k.s && objcopy -O binary -j .text``), is wrapped in a
minimal ELF by :func:`keeper_elf`::

    _start: lea rdi, [rip + path]
            mov esi, 0x80002          # open("/dev/kvm", O_RDWR | O_CLOEXEC)
            mov eax, 2
            syscall
            test eax, eax
            js fail
            mov edi, eax              # ioctl(kvm, KVM_CREATE_VM, 0)
            mov esi, 0xAE01
            xor edx, edx
            mov eax, 16
            syscall
            test eax, eax
            js fail
            mov edi, 1                # write(1, "ready\\n", 6); close(1)
            lea rsi, [rip + msg]
            mov edx, 6
            mov eax, 1
            syscall
            mov edi, 1
            mov eax, 3
            syscall
    again:  mov eax, 34               # pause() forever
            syscall
            jmp again
    fail:   mov edi, 1                # exit(1)
            mov eax, 60
            syscall
    path:   .asciz "/dev/kvm"
    msg:    .ascii "ready\\n"
"""
import struct

KVM_CREATE_VM = 0xAE01  # _IO(KVMIO, 0x01)

CODE = bytes.fromhex(
    "488d3d5d000000be02000800b8020000000f0585c0784189c7be01ae000031d2b8100000000f0585c0782d"
    "bf01000000488d3536000000ba06000000b8010000000f05bf01000000b8030000000f05b8220000000f05"
    "ebf7bf01000000b83c0000000f052f6465762f6b766d0072656164790a"
)

_BASE = 0x400000
_EHDR_SIZE = 64
_PHDR_SIZE = 56


def keeper_elf() -> bytes:
    """A static ELF64 executable: one PT_LOAD (R+X) holding the headers and CODE."""
    size = _EHDR_SIZE + _PHDR_SIZE + len(CODE)
    entry = _BASE + _EHDR_SIZE + _PHDR_SIZE
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, SysV
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, entry, _EHDR_SIZE, 0, 0,
                               _EHDR_SIZE, _PHDR_SIZE, 1, 64, 0, 0)  # ET_EXEC, EM_X86_64
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)  # PT_LOAD, R+X
    return ehdr + phdr + CODE
