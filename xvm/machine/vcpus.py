"""The vCPUs of a machine: one thread each, and the machine's exit.

Each thread sits in KVM_RUN with the GIL released and dispatches exits to the
port-I/O or MMIO bus.  The first exit recorded (the guest powers off, resets
or crashes, or the host stops the machine) ends every thread; it is kept as a
:class:`MachineExit` and handed once to ``on_exit``.
"""
import enum
import logging
import threading
from dataclasses import dataclass

from ..kvm import exits

log = logging.getLogger(__name__)


class ExitReason(enum.Enum):
    POWEROFF = "poweroff"  # the guest powered off
    RESET = "reset"  # the guest asked for a reset (i8042, triple fault)
    CRASH = "crash"  # the guest did something the VMM cannot carry out
    STOPPED = "stopped"  # the host stopped it (destroy)


@dataclass(frozen=True)
class MachineExit:
    reason: ExitReason
    detail: str = ""


class VcpuSet:
    """The vCPU threads of one VM (``vm.vcpus``, created and configured by the
    builder) and the record of why they ended.

    ``on_exit(MachineExit)`` is called exactly once, by the thread that records
    the first exit (a vCPU thread, a device worker, or the caller of
    :meth:`stop`), right after it is recorded and before the vCPU threads have
    necessarily ended; it must not block (hand the event to another thread,
    which may then ``wait()`` or close the machine).
    """

    def __init__(self, vm, pio_bus, mmio_bus, on_exit=None):
        self.vm = vm
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.on_exit = on_exit
        self._threads = []
        self._lock = threading.Condition()
        self._exit = None
        self._pause_requested = False
        self._parked = 0
        self._started = False
        # called with each vCPU in its thread just before its first KVM_RUN (a restored
        # machine sets its TSCs there: machine.state.PendingTimekeeping); read once the
        # thread leaves its parking, so it may be set after a parked start()
        self.before_first_run = None

    @property
    def vcpus(self):
        return self.vm.vcpus if self.vm is not None else []

    @property
    def exit(self):
        return self._exit

    @property
    def quiescent(self):
        """True while no vCPU can be inside KVM_RUN: before start, paused, or exited."""
        with self._lock:
            return (not self._started or self._exit is not None
                    or (self._pause_requested and self._parked == self._running_threads()))

    def thread_ids(self):
        """Native thread IDs (TIDs) of the vCPU threads, by vCPU index; empty
        before :meth:`start`."""
        return [thread.native_id for thread in self._threads]

    # -- lifecycle --------------------------------------------------------
    def start(self, parked=False):
        """Start the vCPU threads; ``parked``: each parks before its first KVM_RUN (and
        before ``before_first_run``) until :meth:`resume`."""
        if self._started:
            raise RuntimeError("machine already started")
        self._started = True
        if parked:
            with self._lock:
                self._pause_requested = True
        for vcpu in self.vcpus:
            thread = threading.Thread(target=self._loop, args=(vcpu,), name=f"xvm-vcpu{vcpu.id}", daemon=True)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def pause(self):
        """Return once every vCPU thread is parked outside KVM_RUN (or has ended)."""
        with self._lock:
            self._pause_requested = True
        for vcpu in self.vcpus:
            vcpu.kick()
        with self._lock:
            self._lock.wait_for(lambda: self._parked == self._running_threads() or self._exit)

    def resume(self):
        with self._lock:
            self._pause_requested = False
            self._lock.notify_all()

    def record_exit(self, reason, detail=""):
        """Record why the machine ends (the first reason wins) and kick every
        vCPU out of KVM_RUN; calls ``on_exit`` if this was the first."""
        with self._lock:
            first = self._exit is None
            if first:
                self._exit = MachineExit(reason, detail)
            self._lock.notify_all()
        for vcpu in self.vcpus:
            vcpu.kick()
        if first and self.on_exit is not None:
            try:
                self.on_exit(self._exit)
            except Exception:  # the callback's bug must not take a vCPU thread down with it
                log.exception("on_exit callback failed for %s", self._exit)

    def stop(self, reason=ExitReason.STOPPED, detail=""):
        """End every vCPU thread and join them; the first recorded exit reason wins."""
        self.record_exit(reason, detail)
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join()

    def wait(self, timeout=None):
        """Block until the machine has exited; returns the MachineExit (None on timeout)."""
        with self._lock:
            self._lock.wait_for(lambda: self._exit is not None, timeout)
        for thread in self._threads:
            thread.join(timeout)
        return self._exit

    def close(self):
        """Stop (recording STOPPED unless an exit is already known) and forget the threads."""
        self.stop()
        self._threads.clear()

    # -- vCPU threads -----------------------------------------------------
    def _running_threads(self):
        return sum(1 for t in self._threads if t.is_alive())

    def _park(self):
        """Wait here while paused; returns False when the machine is exiting."""
        with self._lock:
            if self._exit is not None:
                return False
            if self._pause_requested:
                self._parked += 1
                self._lock.notify_all()
                self._lock.wait_for(lambda: not self._pause_requested or self._exit is not None)
                self._parked -= 1
            return self._exit is None

    def _loop(self, vcpu):
        vcpu.thread_id = threading.get_ident()
        pio, mmio = self.pio_bus, self.mmio_bus
        IoExit, MmioExit, InterruptedExit = exits.IoExit, exits.MmioExit, exits.InterruptedExit
        record = self.record_exit
        first = True
        try:
            while self._exit is None:
                if self._pause_requested and not self._park():
                    break
                if first:  # read only now: set after the start of threads started parked
                    first = False
                    if self.before_first_run is not None:
                        self.before_first_run(vcpu)
                exit = vcpu.run()
                kind = type(exit)
                if kind is IoExit:
                    size, data = exit.size, exit.data
                    if exit.count == 1:
                        pio.handle(exit.port, size, exit.is_write, data)
                        continue
                    for i in range(exit.count):
                        pio.handle(exit.port, size, exit.is_write, data[i * size : (i + 1) * size])
                elif kind is MmioExit:
                    mmio.handle(exit.address, exit.size, exit.is_write, exit.data)
                elif kind is InterruptedExit:
                    continue
                elif kind is exits.ShutdownExit:
                    record(ExitReason.RESET, f"triple fault on vCPU {vcpu.id}")
                elif kind is exits.SystemEventExit:
                    record(ExitReason.POWEROFF, f"system event {exit.type}")
                elif kind is exits.InternalErrorExit:
                    record(ExitReason.CRASH, f"vCPU {vcpu.id}: {exit.describe()}")
                elif kind is exits.FailEntryExit:
                    record(ExitReason.CRASH, f"vCPU {vcpu.id}: entry failed, reason {exit.hardware_reason:#x}")
                else:
                    name = exits.EXIT_NAMES.get(getattr(exit, "code", None), repr(exit))
                    record(ExitReason.CRASH, f"vCPU {vcpu.id}: unhandled exit {name}")
        except Exception as e:  # a VMM bug must stop this machine, not the process
            record(ExitReason.CRASH, f"vCPU {vcpu.id}: VMM error: {e!r}")
        finally:
            vcpu.thread_id = None
            with self._lock:
                self._lock.notify_all()
