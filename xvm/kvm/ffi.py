"""The cffi declarations of <linux/kvm.h> and the ioctl request numbers.

Both come from ``generated/kvm_h.py`` (made by tools/gen_kvm_bindings.py).
``ioctl()`` calls libc directly through cffi, which releases the GIL for the
duration of the call, so a vCPU thread blocked in KVM_RUN does not hold up
the rest of the process.
"""
import hashlib

from ..errors import KvmError
from .generated import kvm_h

LIBC_CDEF = """
    int ioctl(int fd, unsigned long request, ...);
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
    int munmap(void *addr, size_t length);
"""
OUT_OF_LINE = "xvm.kvm.generated._kvm_ffi"


def cdef_digest():
    return hashlib.sha256((kvm_h.CDEF + LIBC_CDEF).encode()).hexdigest()


def build_out_of_line(path):
    """Write the cffi ABI-mode module for these declarations to ``path``: it holds the
    parsed types, so importing it skips parsing ~2000 lines of C (≈0.25 s) — which
    every VMM process would otherwise pay at start."""
    import cffi

    builder = cffi.FFI()
    builder.cdef(kvm_h.CDEF)
    builder.cdef(LIBC_CDEF)
    builder.set_source(OUT_OF_LINE, None)
    builder.emit_python_code(path)
    with open(path, "a") as f:
        f.write(f"\nCDEF_DIGEST = {cdef_digest()!r}\n")


def _load():
    try:
        from .generated import _kvm_ffi
        if getattr(_kvm_ffi, "CDEF_DIGEST", None) == cdef_digest():
            return _kvm_ffi.ffi
    except ImportError:
        pass
    import cffi  # declarations changed since the module was generated: parse them

    parsed = cffi.FFI()
    parsed.cdef(kvm_h.CDEF)
    parsed.cdef(LIBC_CDEF)
    return parsed


ffi = _load()
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
