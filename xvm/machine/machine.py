"""One running machine: guest memory, its devices and its vCPUs.

A :class:`Machine` is made by :func:`~xvm.machine.builder.build_machine`,
complete (VM, memory, irqchip, devices, ACPI tables, kernel loaded, vCPUs
configured).  ``start()`` starts the vCPU threads (:class:`~.vcpus.VcpuSet`);
when the guest powers off, resets or crashes, or the machine is stopped, every
vCPU thread ends, ``wait()`` returns the reason and ``on_exit`` has been told.
The devices live in a :class:`~.devices.DeviceManager` (``machine.devices``)
with one list of virtio slots for both transports (``machine.virtio``).
"""
import time

from .devices import VIRTIO_MMIO_GSIS, VirtioSlot  # noqa: F401  (re-exported)
from .vcpus import ExitReason, MachineExit, VcpuSet  # noqa: F401  (re-exported)


class Machine:
    """The parts of one built machine, and its lifecycle.

    Made empty by the builder, which fills in ``vm``, ``memory``, ``devices``
    and ``vcpus`` as it creates them, so :meth:`close` releases whatever
    exists if building fails halfway.
    """

    def __init__(self, kvm, *, vcpu_count, memory_bytes):
        self.kvm = kvm
        self.vcpu_count = vcpu_count
        self.memory_bytes = memory_bytes
        self.vm = None
        self.memory = None
        self.devices = None  # DeviceManager
        self.vcpus = None  # VcpuSet
        self.pending_timekeeping = None  # a restored machine's clock and TSCs (state.PendingTimekeeping)

    # -- the parts callers use -------------------------------------------
    @property
    def virtio(self):
        """Every virtio :class:`~.devices.VirtioSlot` (mmio and pci), in order added."""
        return self.devices.slots if self.devices is not None else []

    serial = property(lambda self: self.devices.serial)
    acpi_pm = property(lambda self: self.devices.acpi_pm)
    i8042 = property(lambda self: self.devices.i8042)
    pio_bus = property(lambda self: self.devices.pio_bus)
    mmio_bus = property(lambda self: self.devices.mmio_bus)
    pci = property(lambda self: self.devices.pci)

    @property
    def exit(self):
        """The :class:`MachineExit` once the machine has exited, else None."""
        return self.vcpus.exit if self.vcpus is not None else None

    def vcpu_thread_ids(self):
        """Native thread IDs (TIDs) of the vCPU threads by vCPU index (empty before start)."""
        return self.vcpus.thread_ids() if self.vcpus is not None else []

    def stats(self):
        """JSON-able: ``{"devices": [{"name", "transport", "metrics"}], "vcpus":
        [{"index", "thread_id"}]}`` (``thread_id`` the native TID, None before start)."""
        tids = self.vcpu_thread_ids()
        vcpus = self.vm.vcpus if self.vm is not None else []
        return {
            "devices": self.devices.stats() if self.devices is not None else [],
            "vcpus": [{"index": vcpu.id, "thread_id": tids[i] if i < len(tids) else None}
                      for i, vcpu in enumerate(vcpus)],
        }

    # -- state ------------------------------------------------------------
    def save_state(self):
        """The :class:`~.state.MachineState` of this machine, which must be paused
        (:meth:`pause` has drained in-flight I/O) or not yet started; disks are
        flushed first, so the state never refers to a write the image may lose."""
        from ..errors import StateError
        from .state import DevicesState, MachineState, SlotState, save_vcpu, save_vm

        if not self.vcpus.quiescent:
            raise StateError("the machine must be paused before its state is taken")
        if self.pending_timekeeping is not None:  # restored, some vCPU never ran
            self.pending_timekeeping.apply_all()
        devices = self.devices
        for slot in devices.slots:
            flush = getattr(slot.device, "flush", None)
            if flush is not None:
                flush()
        indices = self.kvm.msr_index_list()
        vcpus = tuple(save_vcpu(vcpu, indices, self.memory) for vcpu in self.vm.vcpus)
        slots = tuple(SlotState(slot.name, slot.kind, slot.device.device_id, slot.device.save(),
                                slot.transport.save()) for slot in devices.slots)
        return MachineState(
            vcpus=vcpus, vm=save_vm(self.vm, vcpus),
            devices=DevicesState(devices.serial.save(), devices.i8042.save(), devices.acpi_pm.save(),
                                 devices.pci.save(), slots),
            memory=tuple((region.gpa, region.size) for region in self.memory.regions))

    # -- disk locks (live migration hands them over) ------------------------
    def _disk_backends(self):
        return [slot.device.backend for slot in self.devices.slots
                if hasattr(getattr(slot.device, "backend", None), "take_lock")]

    def release_disks(self):
        """Let go of every disk image's lock (paused and flushed: the destination of a
        live migration takes them before it runs the guest)."""
        for backend in self._disk_backends():
            backend.release_lock()

    def take_disks(self, wait=0.0):
        """Take every disk image's lock, trying for up to ``wait`` seconds while another
        user still holds one; DiskBusyError (none of them kept) if it does not let go."""
        from ..devices.block import DiskBusyError

        deadline = time.monotonic() + wait
        taken = []
        try:
            for backend in self._disk_backends():
                while True:
                    try:
                        backend.take_lock()
                        break
                    except DiskBusyError:
                        if time.monotonic() >= deadline:
                            raise
                        time.sleep(0.02)
                taken.append(backend)
        except BaseException:
            for backend in taken:
                backend.release_lock()
            raise

    # -- lifecycle --------------------------------------------------------
    def start(self, parked=False):
        """Start the vCPU threads; ``parked``: they wait before their first KVM_RUN until
        :meth:`unpark` (a migration's destination starts them while the pages arrive, and
        loads their state before it lets them go)."""
        if self.pending_timekeeping is not None:
            self.vcpus.before_first_run = self.pending_timekeeping.apply
        self.vcpus.start(parked=parked)

    def unpark(self):
        """Let the vCPUs of a machine started ``parked`` run (their clocks set as they
        enter the guest, if a state was loaded since: :class:`~.state.PendingTimekeeping`)."""
        if self.pending_timekeeping is not None:
            self.vcpus.before_first_run = self.pending_timekeeping.apply
        self.vcpus.resume()

    def pause(self):
        """Stop every vCPU outside KVM_RUN, then let the devices finish in-flight I/O."""
        self.vcpus.pause()
        self.devices.pause()

    def resume(self):
        self.devices.resume()
        self.vcpus.resume()

    def stop(self, reason=ExitReason.STOPPED, detail=""):
        """End every vCPU thread; the first recorded exit reason wins."""
        if self.vcpus is not None:
            self.vcpus.stop(reason, detail)

    def wait(self, timeout=None):
        """Block until the machine has exited; returns the MachineExit (None on timeout)."""
        return self.vcpus.wait(timeout)

    def close(self):
        """Stop the machine (if running) and release everything it holds."""
        if self.vcpus is not None:
            self.vcpus.close()
        if self.devices is not None:
            self.devices.close()
        if self.vm is not None:
            self.vm.close()
            self.vm = None
            if self.vcpus is not None:
                self.vcpus.vm = None
        if self.memory is not None:
            self.memory.close()
            self.memory = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
