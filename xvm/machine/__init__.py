"""One machine: built from a config (:func:`build_machine`), run by its vCPU
set, its devices held by a device manager.

``build_machine(kvm, config, *, console_sink, disks=None, nics=(), on_exit=None)``
returns a :class:`Machine`; ``machine.start()`` runs it.
"""
from .builder import build_machine
from .devices import DeviceManager, VirtioSlot
from .machine import Machine
from .vcpus import ExitReason, MachineExit, VcpuSet

__all__ = ["build_machine", "Machine", "MachineExit", "ExitReason", "DeviceManager", "VirtioSlot",
           "VcpuSet"]
