"""The cffi declarations of <linux/kvm.h> and the ioctl request numbers.

Both come from ``generated/kvm_h.py`` (made by tools/gen_kvm_bindings.py).
``ioctl()`` calls libc directly through cffi, which releases the GIL for the
duration of the call, so a vCPU thread blocked in KVM_RUN does not hold up
the rest of the process.
"""
import cffi

from ..errors import KvmError
from .generated import kvm_h

ffi = cffi.FFI()
ffi.cdef(kvm_h.CDEF)
ffi.cdef(
    """
    int ioctl(int fd, unsigned long request, ...);
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
    int munmap(void *addr, size_t length);
    """
)
libc = ffi.dlopen(None)

IOCTLS = kvm_h.ioctl_numbers(ffi.sizeof)
_NAMES = {number: name for name, number in IOCTLS.items()}


def ioctl(fd, name, arg=0):
    """Issue the KVM ioctl ``name`` on ``fd``; ``arg`` is an int or a cdata pointer.

    Returns the ioctl's non-negative result; raises :class:`KvmError` naming
    the ioctl and errno on failure.
    """
    if isinstance(arg, int):
        arg = ffi.cast("unsigned long", arg)
    ret = libc.ioctl(fd, IOCTLS[name], arg)
    if ret < 0:
        raise KvmError(name, ffi.errno)
    return ret
