"""Typed bindings to /dev/kvm: mechanism only, no policy.

``Kvm`` is the system handle, ``Vm`` one virtual machine, ``Vcpu`` one
virtual CPU, ``GuestMemory`` the bounds-checked guest RAM.  Every failed
ioctl raises :class:`xvm.errors.KvmError` naming the ioctl and errno.
"""
from .memory import GuestMemory, MemoryRegion, PAGE_SIZE
