"""Build a machine for a boot from a :class:`~xvm.config.DomainConfig`.

The order is fixed: VM (TSS, identity map, irqchip, PIT), guest RAM, the
device manager with the legacy devices, the virtio devices (disks, then
NICs), the ACPI tables describing them, the kernel, and the vCPUs (CPUID,
FPU, LAPIC, boot registers).  Any failure releases everything made so far.
"""
from ..devices.block import VirtioBlock
from ..errors import BootError, ConfigError
from ..kvm.memory import GuestMemory
from ..kvm.vcpu import install_kick_handler
from ..net import NicPlan
from . import cpu, layout
from .boot.elf import ElfImage, load_pvh
from .boot.linux import KernelFormat, kernel_format, load_bzimage
from .devices import DeviceManager
from .machine import Machine
from .vcpus import ExitReason, VcpuSet


def build_machine(kvm, config, *, console_sink, disks=None, nics=(), on_exit=None, state=None,
                  memory=None, awaiting_state=False):
    """A complete, not yet started :class:`Machine` for ``config`` on ``kvm``.

    With ``state`` (a :class:`~.state.MachineState` taken from a machine of the
    same configuration) and ``memory`` (a :class:`~xvm.kvm.memory.GuestMemory`
    holding that machine's RAM, e.g. mapped from a snapshot file), the machine is
    restored instead of booted: no kernel is loaded and no ACPI table written;
    the vCPUs, interrupt controllers, clock and devices are loaded from
    ``state``, and ``start()`` continues the guest where it was.  ``memory``
    belongs to the machine from the call on.

    ``console_sink(bytes)`` receives what the guest writes to COM1.
    ``disks``: None opens each of ``config.disks`` by its path (taking its lock);
    or a list of already-open disk backends (``Disk.open(fd=...)``), one per
    ``config.disks``, in order.
    ``nics``: one entry per NIC, in order; each is either a
    :class:`~xvm.net.NicPlan` (its TAP is opened here, which needs
    CAP_NET_ADMIN) or an already-built virtio device
    (``NicPlan.device_from_tap(fd)``).
    ``on_exit(MachineExit)`` is called exactly once when the machine exits
    (power-off, reset, crash, stop, or close), from whichever thread notices;
    see :class:`~.vcpus.VcpuSet`.
    Backends and devices passed in belong to the machine from the call on:
    they are closed with it, or when building fails.

    ``awaiting_state=True`` (with ``memory``, without ``state``): build what a restore
    builds before its vCPUs -- VM, memory mapped, devices -- and load no state yet:
    :func:`load_state` makes the vCPUs and loads it later (a live migration's destination
    builds while the pages arrive and loads the state at the switchover).
    """
    if awaiting_state and (state is not None or memory is None):
        raise ValueError("a machine awaiting its state needs the guest memory and no state yet")
    if (state is None) != (memory is None) and not awaiting_state:
        raise ValueError("a restore needs both the machine state and the guest memory")
    pending = [item for item in (disks or ()) if item is not None]
    if memory is not None:
        pending.append(memory)
    pending += [nic for nic in nics if not isinstance(nic, NicPlan)]
    install_kick_handler()
    machine = Machine(kvm, vcpu_count=config.vcpus, memory_bytes=config.memory_bytes)
    try:
        if disks is not None and len(disks) != len(config.disks):
            raise ConfigError(f"domain {config.name!r} has {len(config.disks)} disk(s) but "
                              f"{len(disks)} backend(s) were given")
        if state is not None:
            misfit = state.misfit(config)
            if misfit is not None:
                raise ConfigError(f"domain {config.name!r}: the saved state does not fit: {misfit}")
        _build(machine, config, console_sink, disks, nics, pending, state, memory, awaiting_state)
    except BaseException:
        machine.close()
        for item in pending:
            item.close()
        raise
    machine.vcpus.on_exit = on_exit
    return machine


def _build(machine, config, console_sink, disks, nics, pending, state=None, memory=None,
           awaiting_state=False):
    if state is None and not awaiting_state:
        kernel_data = _read_boot_file(config.kernel, "kernel")
        initrd_data = _read_boot_file(config.initrd, "initrd") if config.initrd is not None else None
        kind = kernel_format(kernel_data, str(config.kernel))
        image = ElfImage(kernel_data, str(config.kernel)) if kind is KernelFormat.ELF else None

    vm = machine.vm = machine.kvm.create_vm()
    vm.set_tss_address()
    vm.set_identity_map_address()
    vm.create_irqchip()
    vm.create_pit2()
    if memory is not None:
        pending.remove(memory)
        machine.memory = memory
    else:
        machine.memory = GuestMemory.create(layout.ram_ranges(config.memory_bytes))
    vm.map_memory(machine.memory)

    devices = machine.devices = DeviceManager(
        vm, machine.memory, console_sink=console_sink or (lambda data: None),
        on_reset=lambda: vcpus.record_exit(ExitReason.RESET, "i8042 reset"),
        on_poweroff=lambda: vcpus.record_exit(ExitReason.POWEROFF),
        virtio_transport=config.virtio_transport,
    )
    vcpus = machine.vcpus = VcpuSet(vm, devices.pio_bus, devices.mmio_bus)

    for index, disk in enumerate(config.disks):
        backend = disks[index] if disks is not None else None
        device = VirtioBlock(disk, backend=backend)
        if backend is not None:
            pending.remove(backend)
        devices.add_virtio(device, name=f"virtio-blk:{disk.path}")
    for nic in nics:
        if isinstance(nic, NicPlan):
            device = nic.open_device()  # creates a TAP on the bridge
        else:
            device = nic
            pending.remove(nic)
        devices.add_virtio(device, name=f"virtio-net:{getattr(device, 'mac_address', '?')}")
    if state is not None:
        load_state(machine, config, state)
        return
    if awaiting_state:  # the vCPUs made now, their registers loaded with the state (load_state)
        _make_vcpus(machine, config)
        return
    rsdp = devices.build_acpi(config.vcpus)

    cmdline = config.cmdline.encode()
    if image is not None:
        plan = load_pvh(machine.memory, image, cmdline=cmdline, initrd=initrd_data,
                        memory_bytes=config.memory_bytes, rsdp=rsdp)
    else:
        plan = load_bzimage(machine.memory, kernel_data, cmdline=cmdline, initrd=initrd_data, rsdp=rsdp,
                            e820=layout.e820_map(config.memory_bytes), path=str(config.kernel))
    for vcpu in _make_vcpus(machine, config):
        cpu.configure_fpu(vcpu)
        cpu.configure_lapic(vcpu)
    cpu.configure_boot_registers(vm.vcpus[0], plan)


def _make_vcpus(machine, config):
    """The vCPUs of ``config``, their CPUID set and their readable MSRs found
    (:func:`~.state.probe_msrs`: a later save reads them in one go)."""
    from .state import msr_indices, probe_msrs

    supported = machine.kvm.supported_cpuid()
    indices = msr_indices(machine.kvm.msr_index_list())
    for index in range(config.vcpus):
        vcpu = machine.vm.create_vcpu(index)
        cpu.configure_cpuid(vcpu, supported, config.vcpus, config.disable_cpu_features)
        probe_msrs(vcpu, indices)
    return machine.vm.vcpus


def load_state(machine, config, state):
    """Load ``state`` into the vCPUs (made here unless ``build_machine(...,
    awaiting_state=True)`` made them), the VM and the devices of a machine built to
    restore it."""
    from .state import PendingTimekeeping, restore_vcpu, restore_vm

    vm, devices = machine.vm, machine.devices
    misfit = state.misfit(config)
    if misfit is not None:
        raise ConfigError(f"domain {config.name!r}: the saved state does not fit: {misfit}")
    if not vm.vcpus:  # made already if the machine was built awaiting its state
        supported = machine.kvm.supported_cpuid()
        for index in range(config.vcpus):
            cpu.configure_cpuid(vm.create_vcpu(index), supported, config.vcpus, config.disable_cpu_features)
    for vcpu, vcpu_state in zip(vm.vcpus, state.vcpus):
        restore_vcpu(vcpu, vcpu_state)
    restore_vm(vm, state.vm)
    machine.pending_timekeeping = PendingTimekeeping(vm, state.vcpus, state.vm.clock)  # as the vCPUs start
    saved = state.devices
    devices.serial.restore(saved.serial)
    devices.i8042.restore(saved.i8042)
    devices.acpi_pm.restore(saved.acpi_pm)
    devices.pci.restore(saved.pci)
    for slot, slot_state in zip(devices.slots, saved.slots):
        if slot.device.device_id != slot_state.device_id or slot.kind != slot_state.kind:
            raise ConfigError(f"{slot.name}: the saved state is of another device "
                              f"({slot_state.name})")
        slot.device.restore(slot_state.device)
        slot.transport.restore(slot_state.transport)


def _read_boot_file(path, what):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    if not data:
        raise BootError(f"{what} {path} is empty")
    return data
