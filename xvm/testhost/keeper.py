"""Keeps one idle KVM VM open for the life of the TCG test host.

Run by the test host's init as ``python3 -I -S keeper.py READY_FILE`` (standard library only,
no site: it starts in well under the ~1.3 s a normal interpreter start costs under TCG).

Why (ENVIRONMENT.md): the kernel live-patches its scheduler the first time a KVM VM is created
and the last time one is destroyed; under multi-threaded TCG that patching intermittently
livelocked the machine. With one VM alive from boot to power-off it happens once, before any
test runs.
"""
import fcntl
import os
import signal
import sys

KVM_CREATE_VM = 0xAE01  # _IO(KVMIO, 0x01)


def main(ready_file):
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    with open(ready_file, "w") as f:
        f.write(f"{os.getpid()} {vm}\n")
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1])
