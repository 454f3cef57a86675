"""What a VMM needs around its :class:`~xvm.vmm.vmm.Vmm`: the real machine factory,
the store hook, and the body of the VMM process (:func:`run_domain`)."""
import logging
import os
import signal
import threading
import time

from ..errors import NotFoundError, XvmError
from . import actions as A
from . import protocol as P
from .lifecycle import DomainState

log = logging.getLogger(__name__)

STOPPED = (DomainState.SHUTOFF, DomainState.CRASHED)
MIGRATION_LINGER = 5.0  # a VMM that migrated its domain away waits this long for the host to read how
# A VMM whose host never asked it to boot, or went away before, does not linger.


class KvmMachine:
    """The real machine behind the :class:`~xvm.vmm.vmm.Vmm` factory protocol."""

    def __init__(self, machine, config=None):
        self._machine = machine
        self._config = config

    @property
    def machine(self):
        return self._machine

    def start(self, parked=False):
        self._machine.start(parked=parked)

    def unpark(self):
        self._machine.unpark()

    def load_state(self, received):
        """Load an incoming migration's state (:class:`~xvm.migration.precopy.Incoming`, its
        STATE arrived) into this machine, built for it while its pages came in."""
        from ..machine.builder import load_state

        received.phases.mark("dispatch")
        if not received.cpu_checked:
            received.check_cpu(self._machine.kvm.supported_cpuid())
        load_state(self._machine, self._config, received.state)
        received.phases.mark("load_state")

    def pause(self):
        self._machine.pause()

    def resume(self):
        self._machine.resume()

    def power_button(self):
        self._machine.acpi_pm.raise_power_button()

    def console_input(self, data):
        self._machine.serial.receive(data)

    def stats(self):
        return self._machine.stats()

    def vcpu_thread_ids(self):
        return self._machine.vcpu_thread_ids()

    def close(self):
        self._machine.close()


def machine_factory(kvm, *, disk_fds=None, nics=()):
    """A factory building KVM machines on ``kvm`` (:func:`~xvm.machine.build_machine`).

    ``disk_fds``: None to open each configured disk by path (in-process use), or one
    open descriptor per disk, opened and locked by the host; each boot's backend gets
    its own duplicate, so the lock (an ``flock``, held by the open file description)
    lasts until the VMM ends.  ``nics``: one per configured NIC, each with
    ``open_device()`` — a :class:`TapNic` over a descriptor the host opened, or, in
    process, the host's own NicPlan, which opens its TAP at each boot.
    """
    from ..machine import build_machine

    def build(config, console_sink, on_exit, restore=None, received=None):
        """``restore``: the :class:`~xvm.vmm.actions.Restore` to continue from instead of
        booting (its snapshot file by descriptor, or by path); ``received``: an incoming
        migration (:class:`~xvm.migration.precopy.Incoming`) whose memory is arriving: the
        machine is built around that memory awaiting its state (``load_state`` at the
        switchover, once the state has come too)."""
        holder = []
        snapshot = memory = None
        awaiting = received is not None and received.state is None
        if received is not None and not awaiting:
            received.check_cpu(kvm.supported_cpuid())
        if awaiting:  # the guest's CPUID is checked as it arrives (Incoming)
            received.supported_cpuid = kvm.supported_cpuid()
        if restore is not None:
            from ..migration.snapshot import load_snapshot
            snapshot = load_snapshot(restore.path, fd=restore.fd, supported_cpuid=kvm.supported_cpuid())

        def exited(exit_):
            on_exit(holder[0] if holder else None, exit_)

        disks = None
        devices = []
        try:
            if disk_fds is not None:
                disks = []
                for disk, fd in zip(config.disks, disk_fds):
                    # an incoming migration's disks are locked at the switchover (Incoming.handshake)
                    disks.append(disk.open(fd=os.dup(fd), lock=received is None))
            for nic in nics:
                devices.append(nic.open_device())
        except BaseException:
            for thing in (disks or []) + devices:
                thing.close()
            raise
        if snapshot is not None:
            try:
                memory = snapshot.map_memory(restore.fd)
            except BaseException:
                for thing in (disks or []) + devices:
                    thing.close()
                raise
        state = snapshot.state if snapshot else None
        if received is not None:
            state, memory = received.state, received.memory
            received.hand_over_memory()  # the machine's now (closed with it, or if building fails)
        machine = build_machine(kvm, config, console_sink=console_sink, disks=disks, nics=devices,
                                on_exit=exited, state=state, memory=memory, awaiting_state=awaiting)
        wrapped = KvmMachine(machine, config)
        holder.append(wrapped)
        return wrapped

    return build


class TapNic:
    """A NIC whose TAP the host created and attached to its bridge, handed to the VMM
    as descriptors (one per queue pair, a multi-queue TAP's queues); each boot's
    virtio-net device gets duplicates of them.  The TAP disappears when the last
    descriptor closes, i.e. with the VMM process."""

    def __init__(self, plan, fds):
        self.plan = plan
        self.fds = [fds] if isinstance(fds, int) else list(fds)
        self.fd = self.fds[0]
        self.mac = plan.mac

    def open_device(self):
        return self.plan.device_from_taps([os.dup(fd) for fd in self.fds])

    @staticmethod
    def spec(plan):
        spec = {"mac": plan.mac, "bridge": plan.bridge, "mtu": plan.mtu}
        if plan.queues != 1:
            spec["queues"] = plan.queues
        return spec

    @classmethod
    def from_message(cls, spec, fds):
        from ..net.nic import NicPlan
        plan = NicPlan(spec["mac"], spec["bridge"], spec["mtu"], queues=spec.get("queues", 1))
        if "fds" in spec:
            return cls(plan, [fds[i] for i in spec["fds"]])
        return cls(plan, fds[spec["fd"]])


class HostResources:
    """What the host opens for a VMM process — /dev/kvm, each disk image with its lock,
    each TAP on its bridge — so that the VMM itself opens nothing.  Close it once the
    VMM has them (or failed): the VMM's copies keep locks and TAPs alive."""

    def __init__(self, kvm_path, config, plans, lock_disks=True):
        self.kvm_fd = -1
        self.disk_fds = []
        self.nics = []
        try:
            try:
                self.kvm_fd = os.open(kvm_path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                from ..errors import KvmUnavailableError
                raise KvmUnavailableError(f"cannot open {kvm_path}: {e.strerror}", e.errno) from None
            for disk in config.disks:
                self.disk_fds.append(disk.open_fd(lock=lock_disks))
            for plan in plans:
                # one fd, or (multiqueue) a list of them: launcher.spawn_vmm passes either
                fds = plan.open_taps()
                self.nics.append((TapNic.spec(plan), fds[0] if plan.queues == 1 else fds))
        except BaseException:
            self.close()
            raise

    def close(self):
        nic_fds = [fd for _, fds in self.nics for fd in ([fds] if isinstance(fds, int) else fds)]
        for fd in [self.kvm_fd, *self.disk_fds, *nic_fds]:
            if fd >= 0:
                os.close(fd)
        self.kvm_fd, self.disk_fds, self.nics = -1, [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_host_resources(kvm_path, config, plans, lock_disks=True):
    return HostResources(kvm_path, config, plans, lock_disks)


def local_nics(plans):
    """In-process VMMs have the host's privileges: the plans open their TAPs at each boot."""
    return list(plans)


def store_hook(store, uuid, finished=None):
    """``on_state`` for a Vmm: the store follows the domain's state; a transient
    domain is forgotten when it stops (transient *then*: a running domain may be
    defined or undefined meanwhile); ``finished`` is set when the domain has
    stopped for good."""

    def on_state(vmm, state):
        try:
            if state not in STOPPED:
                store.set_state(uuid, state.value)
            elif getattr(store.domain(uuid), "persistent", False):
                store.set_state(uuid, state.value, vmm.crash_reason)
            else:
                store.remove_domain(uuid)
        except NotFoundError:
            pass
        if state in STOPPED and finished is not None:
            finished.set()

    return on_state


def run_domain(init, message, fds):
    """The VMM process's body (see :mod:`xvm.vmm.__main__`); returns the exit status."""
    from ..config import DomainConfig
    from ..host.paths import StateDir
    from ..kvm.system import Kvm
    from ..kvm.vcpu import install_kick_handler
    from ..store import Store
    from .server import VmmServer
    from .vmm import ConsoleLog, Vmm

    finished = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: finished.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    install_kick_handler()
    server = vmm = store = kvm = console_log = None
    state_dir = None
    try:
        config = DomainConfig.from_dict(message["config"])
        uuid = str(config.uuid)
        state_dir = StateDir(message["state_dir"])
        resources = message["resources"]
        kvm = Kvm.from_fd(fds[resources["kvm"]])
        disk_fds = [fds[i] for i in resources["disks"]]
        nics = [_nic_from_message(spec, fds) for spec in resources["nics"]]
        store = Store(state_dir.store)
        console_log = ConsoleLog(state_dir.console_log(config.name))
        vmm = Vmm(config, factory=machine_factory(kvm, disk_fds=disk_fds, nics=nics),
                  next_id=store.next_domain_id,
                  on_state=store_hook(store, uuid, finished),
                  console_log=console_log)
        server = VmmServer(vmm, state_dir.vmm_socket(uuid))  # bound, not serving yet
        with open(state_dir.vmm_pidfile(uuid), "w") as f:
            f.write(f"{os.getpid()}\n")
        from . import jail
        jail.install_test_hooks()
        jail.confine_from_message(message, config)  # still one thread: everything above stays open
        vmm.start()
        server.start()
        # Serving, not booted: the host attaches its console reader now, so that not a
        # byte of the boot is missed, then says "boot".
        P.send_message(init, P.reply(0, {"ready": os.getpid()}))
        go, go_fds = P.recv_message(init, timeout=60)
        try:
            if go.get("boot") is not True:
                raise P.BadPayload("the host did not ask for the boot")
            boot = A.join_fd(A.decode_action(go["action"], allowed=(A.Boot, A.Restore, A.MigrateReceive))
                             if "action" in go else A.Boot(), go_fds)
            info = vmm.handle(boot)
        finally:
            P.close_fds(go_fds)  # a Restore's file: its RAM is mapped, the state read
    except BaseException as e:
        _send_quietly(init, P.error_reply(0, e))
        _cleanup(server, vmm, store, kvm, console_log, state_dir, message)
        return 1
    _send_quietly(init, P.reply(0, info))
    init.close()
    finished.wait()
    if vmm.outgoing is not None and vmm.outgoing.finished:  # migrated away: the host reads the end
        deadline = time.monotonic() + MIGRATION_LINGER
        while not vmm.outgoing.collected and time.monotonic() < deadline:
            time.sleep(0.01)
    if vmm.state not in STOPPED:  # SIGTERM: the host is going away and asked us to stop
        try:
            vmm.handle(A.Destroy())
        except XvmError:
            pass
    _cleanup(server, vmm, store, kvm, console_log, state_dir, message)
    return 0


def _nic_from_message(spec, fds):
    return TapNic.from_message(spec, fds)


def _cleanup(server, vmm, store, kvm, console_log, state_dir, message):
    if server is not None:
        server.close()
    if state_dir is not None:
        try:
            uuid = str(message["config"]["uuid"])
            os.unlink(state_dir.vmm_pidfile(uuid))
        except (OSError, KeyError, TypeError):
            pass
    if vmm is not None:
        vmm.close()
    for thing in (console_log, store, kvm):
        if thing is not None:
            thing.close()


def _send_quietly(sock, message):
    try:
        P.send_message(sock, message)
    except OSError:
        pass
