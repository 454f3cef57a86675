"""QEMU as the peer VMM: the baseline xvm is compared against, booting the same guest in the
same machine (inside the TCG test host, absolute times mean nothing; ratios do).

    argv = qemu_kvm_command(cloud_kernel().bzimage, nested_initramfs())
"""
from .host import QEMU, qemu_path

DEFAULT_APPEND = "console=ttyS0 quiet panic=-1"


def qemu_kvm_command(kernel, initrd=None, *, append=DEFAULT_APPEND, memory="256M", vcpus=1,
                     machine="pc", hide_xsave=True, extra=()) -> list[str]:
    """argv for ``qemu-system-x86_64 -accel kvm`` booting ``kernel`` (a bzImage, or a vmlinux
    through its PVH note) with the serial console on stdout, exiting when the guest powers off
    or reboots.

    ``hide_xsave``: TCG does not forward XSETBV faithfully, and a nested kernel that sees XSAVE
    warns about an inconsistent XSAVE state (ENVIRONMENT.md); hiding it avoids that. It costs
    nothing on real hardware, and keeps the guest the same everywhere.
    """
    cpu = "host,-xsave" if hide_xsave else "host"
    argv = [
        qemu_path() or QEMU, "-accel", "kvm", "-M", machine, "-cpu", cpu, "-m", str(memory),
        "-smp", str(vcpus), "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", "stdio", "-kernel", str(kernel), "-append", append,
    ]
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    return argv + list(extra)
