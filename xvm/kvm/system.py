"""The /dev/kvm system handle."""
import os

from ..errors import KvmUnavailableError
from .ffi import ffi, ioctl
from .generated import kvm_h

KVM_PATH = "/dev/kvm"
MAX_CPUID_ENTRIES = 256
MAX_MSR_INDICES = 1024


class Kvm:
    """An open /dev/kvm: API version, capabilities, and VM creation."""

    def __init__(self, path=KVM_PATH, *, fd=None):
        if fd is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise KvmUnavailableError(f"cannot open {path}: {e.strerror}", e.errno) from None
        self.fd = fd
        self.path = path
        version = ioctl(self.fd, "KVM_GET_API_VERSION")
        if version != kvm_h.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailableError(
                f"{path} speaks KVM API {version}, xvm needs {kvm_h.KVM_API_VERSION}"
            )
        self.api_version = version
        self.vcpu_mmap_size = ioctl(self.fd, "KVM_GET_VCPU_MMAP_SIZE")

    @classmethod
    def from_fd(cls, fd):
        """Adopt an already-open /dev/kvm descriptor (a VMM process is handed one)."""
        return cls(fd=fd)

    def check_extension(self, cap):
        """``KVM_CHECK_EXTENSION``: 0 if unsupported, else a capability-specific value."""
        if isinstance(cap, str):
            cap = getattr(kvm_h, cap)
        return ioctl(self.fd, "KVM_CHECK_EXTENSION", cap)

    def supported_cpuid(self):
        """The CPUID entries KVM can expose, as a ``struct kvm_cpuid2 *``."""
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": MAX_CPUID_ENTRIES, "entries": MAX_CPUID_ENTRIES})
        ioctl(self.fd, "KVM_GET_SUPPORTED_CPUID", cpuid)
        return cpuid

    def msr_index_list(self):
        """The MSR indices KVM saves and restores for a vCPU."""
        msrs = ffi.new("struct kvm_msr_list *", {"nmsrs": MAX_MSR_INDICES, "indices": MAX_MSR_INDICES})
        ioctl(self.fd, "KVM_GET_MSR_INDEX_LIST", msrs)
        return [msrs.indices[i] for i in range(msrs.nmsrs)]

    def create_vm(self):
        from .vm import Vm

        return Vm(self, ioctl(self.fd, "KVM_CREATE_VM", 0))

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

