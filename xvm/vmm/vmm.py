"""One domain's VMM: actions checked against one table and run on one control thread.

Every lifecycle operation is an :mod:`~xvm.vmm.actions` value handed to
:meth:`Vmm.handle`, from any thread (the socket server's connection threads, or
the caller itself when the VMM runs in-process).  They queue for the control
thread, which checks each against :data:`~xvm.vmm.lifecycle.TRANSITIONS` and
runs it; an illegal action raises :class:`~xvm.errors.StateError` and changes
nothing.  What the guest does to its machine — power off, reset, crash — reaches
the same thread as an event (the machine's ``on_exit``), so the domain's state
has one writer.

The machine comes from a *factory*, ``factory(config, console_sink, on_exit)``,
returning an object with ``start() pause() resume() power_button() close()
console_input(bytes) stats() vcpu_thread_ids()``: the real one builds a KVM
machine (:func:`machine_factory`), the tests' a fake.

Scheduling (:mod:`xvm.sched`): each boot gets a :class:`~xvm.sched.DomainScheduler` —
the domain's cgroup (named by its UUID), vCPU threads in ``vcpuN``, the VMM's other
threads in ``emulator``, weight, cap and pins applied — made before the machine is
built and closed (cgroups removed) whenever the machine goes.  Live changes
(SetScheduler, PinVcpu, PinEmulator) last until the domain stops; a guest reset keeps
them.  ``own_process=False`` for a VMM inside its caller's process: only the vCPU
threads (and what they start) are the domain's.
"""
import logging
import os
import queue
import threading
import time

from ..console import Console
from ..errors import ConfigError, XvmError
from ..sched import SWEEP_INTERVAL, DomainScheduler
from . import actions as A
from . import lifecycle
from .protocol import register_error
from .lifecycle import DomainState

log = logging.getLogger(__name__)

_STOP = object()


class VmmGone(XvmError):
    """The domain's VMM is not there (it ended, or was killed)."""


register_error(VmmGone)

# Answered from the final state once the control thread has ended.
_READ_ONLY = (A.Info, A.Stats, A.Ping, A.MigrateStatus)
_NOT_WHILE_INCOMING = (A.Boot, A.Restore, A.MigrateReceive)


class _Pending:
    """One queued action and where its outcome goes."""

    __slots__ = ("action", "done", "result", "error")

    def __init__(self, action):
        self.action = action
        self.done = threading.Event()
        self.result = None
        self.error = None


class Vmm:
    """The VMM of one domain.  ``start()`` starts its control thread; ``close()`` ends it."""

    def __init__(self, config, *, factory, next_id, on_state=None, console=None, console_log=None,
                 linger=False, own_process=True):
        self.config = config
        self._factory = factory
        self._next_id = next_id  # callable -> a new per-boot domain id
        self._on_state = on_state  # callable(vmm, state) after every change, on the control thread
        self.console = console if console is not None else Console()
        self._console_log = console_log  # ConsoleLog or None
        self.state = DomainState.SHUTOFF
        self.id = None
        self.boot_count = 0
        self.crash_reason = None
        self.started_at = None
        self.machine = None
        self.last_machine = None  # the current or last boot's machine (in-process metrics)
        self.scheduler = None  # DomainScheduler of the current boot
        self._own_process = own_process
        self._base_affinity = frozenset(os.sched_getaffinity(0))  # before any thread is pinned
        self._inbox = queue.SimpleQueue()
        self._changed = threading.Condition()
        self._thread = None
        self._closed = False
        self._inbox_lock = threading.Lock()
        self._linger = linger  # keep the control thread after the domain stops for good
        self.quit_requested = threading.Event()
        self.outgoing = None  # xvm.migration.precopy.Outgoing of the current migration
        self.incoming = None  # xvm.migration.precopy.Incoming while receiving one
        self._prebuilt = None  # (machine, scheduler, id) built for it, awaiting its state

    def __repr__(self):
        return f"<Vmm {self.config.name!r} {self.state.value} id={self.id}>"

    # -- the control thread -------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"xvm-vmm-{self.config.name}", daemon=True)
        self._thread.start()
        return self

    def handle(self, action):
        """Run ``action`` on the control thread; returns its result or raises its error."""
        if not isinstance(action, A.Action):
            raise TypeError(f"Vmm.handle takes an action, not {type(action).__name__}")
        if threading.current_thread() is self._thread:
            return self._dispatch(action)
        if isinstance(action, A.MigrateStatus):  # a progress read, also while the switchover runs
            return self._do_MigrateStatus(action)
        pending = _Pending(action)
        with self._inbox_lock:
            if self._thread is None or self._closed:
                if self._closed and isinstance(action, _READ_ONLY):
                    return self._dispatch(action)  # nothing runs any more: the final state
                raise VmmGone(f"the VMM of domain {self.config.name!r} has ended")
            self._inbox.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def close(self):
        """Destroy the machine if there is one and end the control thread."""
        if self._thread is not None and self._thread.is_alive():
            if threading.current_thread() is not self._thread:
                self._inbox.put(_STOP)
                self._thread.join()
                return
        self._teardown("the VMM was closed")

    def wait_for(self, states, timeout=None):
        """Block until the state is one of ``states``; returns it (None on timeout)."""
        with self._changed:
            if self._changed.wait_for(lambda: self.state in states, timeout):
                return self.state
            return None

    def _run(self):
        try:
            self._loop()
        finally:
            if self._console_log is not None:
                self._console_log.close()
            with self._inbox_lock:
                self._closed = True
            while True:  # whatever was queued meanwhile fails, never waits forever
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Pending):
                    item.error = VmmGone(f"the VMM of domain {self.config.name!r} has ended")
                    item.done.set()

    def _loop(self):
        while True:
            try:
                item = self._inbox.get(timeout=SWEEP_INTERVAL if self.scheduler is not None else None)
            except queue.Empty:
                self._sweep()
                continue
            if item is _STOP:
                self._teardown("the VMM was closed")
                return
            if isinstance(item, _Pending):
                try:
                    item.result = self._dispatch(item.action)
                except BaseException as e:  # handed to the caller, whatever it is
                    item.error = e
                item.done.set()
            else:
                machine, exit_ = item
                try:
                    self._machine_exited(machine, exit_)
                except Exception:
                    log.exception("domain %s: handling the machine's exit failed", self.config.name)
            if not self._linger and self.boot_count and self.state in (DomainState.SHUTOFF, DomainState.CRASHED):
                return  # stopped for good: this VMM's work is done

    def _dispatch(self, action):
        if self.incoming is not None and isinstance(action, _NOT_WHILE_INCOMING):
            from ..errors import StateError
            raise StateError(f"domain {self.config.name!r} is receiving a live migration",
                             state=self.state, operation="start")
        after = lifecycle.check(action, self.state, self.config.name)
        result = getattr(self, "_do_" + type(action).__name__)(action)
        if after is not None and after is not self.state:
            self._set_state(after)
        if isinstance(action, (A.Boot, A.Reset, A.Restore)):
            return self._info()  # the new boot, as the caller will see it
        return result

    def _set_state(self, state):
        self.state = state
        if self._on_state is not None:  # first the store, then whoever waits for the state
            try:
                self._on_state(self, state)
            except Exception:
                log.exception("domain %s: state hook failed", self.config.name)
        with self._changed:
            self._changed.notify_all()

    # -- actions ------------------------------------------------------------------------------
    def _do_Boot(self, action):
        self._boot(None)  # a fresh boot: the configured scheduling, not the last run's live changes
        self.crash_reason = None

    def _do_Restore(self, action):
        self._boot(restore=action)
        self.crash_reason = None

    def _do_Snapshot(self, action):
        """Pause (draining in-flight I/O), flush disks, write the file (``action.fd``, the
        host's; or by path), then tear down.  If writing fails the domain is left as it
        was (running or paused)."""
        from ..migration.snapshot import write_snapshot

        was_running = self.state is DomainState.RUNNING
        if was_running:
            self.machine.pause()
        try:
            write_snapshot(action.path, self.config, getattr(self.machine, "machine", self.machine),
                           fd=action.fd)
        except BaseException:
            if was_running:
                self.machine.resume()
            raise
        self._teardown("the domain was saved")

    # -- live migration (xvm.migration.precopy) --------------------------------------------------
    def _do_MigrateSend(self, action):
        from ..errors import StateError
        from ..migration.precopy import Outgoing

        if self.outgoing is not None and not self.outgoing.finished:
            raise StateError(f"domain {self.config.name!r} is migrating already", state=self.state,
                             operation="migrate")
        self.outgoing = Outgoing(self, action)
        self.outgoing.start()
        return dict(self.outgoing.status)

    def _do_MigrateStatus(self, action):
        if self.outgoing is not None:
            self.outgoing.collected = self.outgoing.finished
            return dict(self.outgoing.status)
        if self.incoming is not None:
            return {"state": "incoming", "iterations": self.incoming.rounds,
                    "machine_built": self._prebuilt is not None}
        return None

    def _do_MigrateAbort(self, action):
        if self.outgoing is not None:
            return self.outgoing.abort()
        if self.incoming is not None:
            self.incoming.abort()
            return True
        return False

    def _do_MigrateSwitchover(self, action):
        self.outgoing.switchover()  # raises with the domain running again if it failed
        self._teardown("the domain migrated to another host")
        self._set_state(DomainState.SHUTOFF)
        self.outgoing.completed()

    def _do_MigrateReceive(self, action):
        from ..migration.precopy import Incoming

        incoming = Incoming(self, action)
        try:
            self._prebuild(incoming)
        except BaseException:
            incoming.release()
            incoming.close()
            raise
        self.incoming = incoming
        incoming.start()
        return {"port": incoming.port}

    def _prebuild(self, incoming):
        """Before the pages arrive, what the switchover would otherwise build: the machine
        (VM, devices, disks and NICs opened, the vCPUs made with their CPUID and their
        threads started, parked) around the memory that receives them, the domain's
        scheduler and cgroups, the new id -- so that then only the state is loaded into the
        vCPUs and the threads let go.  (The threads read their first-run hook -- the restored
        clocks -- only once unparked: read at their start, before the state had come, it was
        never run, and the guest lost a virtio-blk request across the switchover now and then.)"""
        machine, scheduler = self._build(received=incoming)
        try:
            boot_id = self._id_above(incoming.action.after_id)
            machine.start(parked=True)  # no KVM_RUN before the state is loaded and COMMIT came
        except BaseException:
            machine.close()
            scheduler.close()
            raise
        self._prebuilt = (machine, scheduler, boot_id)

    def _do_MigrateIncoming(self, action):
        incoming = self.incoming
        (machine, scheduler, boot_id), self._prebuilt = self._prebuilt, None  # by MigrateReceive
        try:
            try:
                machine.load_state(incoming)
            except BaseException:
                machine.close()
                scheduler.close()
                raise
            # the vCPU threads wait parked since the machine was built (_prebuild)
            self._run_machine(machine, scheduler, boot_id, before_start=incoming.handshake, place=False,
                              start=machine.unpark if incoming.running else (lambda: None))
        except BaseException:
            incoming.release()
            raise
        self.incoming = None
        self.crash_reason = None
        if not incoming.running:
            self.machine.pause()  # its vCPUs never left their parking
        incoming.confirm()  # the source's downtime ends here; what follows is bookkeeping
        try:  # the vCPU threads into their cgroups (made already): a few ms the guest need not wait for
            scheduler.attach(machine.vcpu_thread_ids())
        except XvmError as e:  # the source is gone: the guest runs here, unplaced
            log.warning("domain %s: placing the vCPU threads after the migration failed: %s",
                        self.config.name, e)
        self._set_state(DomainState.RUNNING if incoming.running else DomainState.PAUSED)
        return self._info()

    def _id_above(self, after):
        """A new boot id above ``after`` (the source's: ids only grow along a domain's life)."""
        boot_id = self._next_id()
        while after is not None and boot_id <= after:
            boot_id = self._next_id()
        return boot_id

    def _do_MigrateIncomingFailed(self, action):
        prebuilt, self._prebuilt = self._prebuilt, None
        if prebuilt is not None:  # the receiving thread has stopped writing into its memory
            machine, scheduler, _ = prebuilt
            machine.close()
            scheduler.close()
        if self.incoming is None:
            return
        self.incoming = None
        if self.state in (DomainState.SHUTOFF, DomainState.CRASHED):
            self._set_state(self.state)  # the store forgets a transient domain; the VMM ends

    def _do_Pause(self, action):
        if self.outgoing is not None:
            self.outgoing.stop_throttle()  # a throttle's resume must not undo this pause
        self.machine.pause()

    def _do_Resume(self, action):
        self.machine.resume()

    def _do_PowerButton(self, action):
        self.machine.power_button()

    def _do_Reset(self, action):
        settings = self._teardown(None)
        try:
            self._boot(settings)
        except XvmError as e:
            self._crash(f"reboot failed: {e}")
            raise

    def _do_Destroy(self, action):
        self._teardown("the domain was destroyed")

    def _do_Info(self, action):
        return self._info()

    def _do_Stats(self, action):
        stats = {"domain": self._info()}
        if self.machine is not None:
            stats.update(self.machine.stats())
        return stats

    def _do_Ping(self, action):
        return "pong"

    def _do_ConsoleInput(self, action):
        self.console.write(action.data)

    def _do_ConsoleAttach(self, action):
        raise XvmError("ConsoleAttach is served by the connection, not the control thread")

    def _do_Quit(self, action):
        self.quit_requested.set()

    def _do_SetScheduler(self, action):
        sched = self.scheduler.sched.replace(weight=action.weight, cap=action.cap)
        self.scheduler.set_sched(sched)
        return sched.to_dict()

    def _do_PinVcpu(self, action):
        return sorted(self.scheduler.pin_vcpu(action.vcpu, action.cpus))

    def _do_PinEmulator(self, action):
        self.scheduler.pin_emulator(action.cpus)

    def _do_VcpuInfos(self, action):
        self._sweep()
        return [info.to_dict() for info in self.scheduler.vcpu_infos()]

    def _do_SchedInfo(self, action):
        self._sweep()
        return self.scheduler.info()

    def _info(self):
        cfg = self.config
        return {
            "name": cfg.name, "uuid": str(cfg.uuid), "id": self.id, "state": self.state.value,
            "boot_count": self.boot_count, "crash_reason": self.crash_reason, "pid": os.getpid(),
            "vcpus": cfg.vcpus, "memory_mib": cfg.memory_mib, "started_at": self.started_at,
            "vcpu_thread_ids": self.machine.vcpu_thread_ids() if self.machine is not None else [],
        }

    # -- machinery ----------------------------------------------------------------------------
    def _boot(self, settings=None, restore=None, received=None, before_start=None):
        machine, scheduler = self._build(settings, restore=restore, received=received)
        self._run_machine(machine, scheduler, None, before_start=before_start)

    def _build(self, settings=None, restore=None, received=None):
        """``(machine, scheduler)`` of a new boot, not started."""
        cfg = self.config
        sched, pins, emulator_pin = settings or (cfg.sched, cfg.vcpu_pins, cfg.emulator_pin)
        scheduler = DomainScheduler(str(cfg.uuid), cfg.vcpus, sched, pins, emulator_pin,
                                    base_affinity=self._base_affinity, own_process=self._own_process)
        try:
            if restore is not None:
                machine = self._factory(self.config, self._console_sink, self._post_exit, restore=restore)
            elif received is not None:
                machine = self._factory(self.config, self._console_sink, self._post_exit, received=received)
            else:
                machine = self._factory(self.config, self._console_sink, self._post_exit)
        except BaseException:
            scheduler.close()
            raise
        return machine, scheduler

    def _run_machine(self, machine, scheduler, boot_id, before_start=None, place=True, start=None):
        """Start the machine (``start()`` instead of ``machine.start()`` if given) and make it
        this boot's (``place``: its vCPU threads placed in their cgroups first); closed with
        its scheduler if that fails."""
        try:
            if before_start is not None:
                before_start(machine)
            (start or machine.start)()
            if place:
                scheduler.attach(machine.vcpu_thread_ids())
        except BaseException:
            machine.close()
            scheduler.close()
            raise
        self.machine = machine
        self.last_machine = machine  # in-process callers may still read its devices' metrics
        self.scheduler = scheduler
        self.id = boot_id if boot_id is not None else self._next_id()
        self.boot_count += 1
        self.started_at = time.time()
        self.console._attach(machine.console_input)

    def _console_sink(self, data):
        self.console._feed(data)
        if self._console_log is not None:
            self._console_log.write(data)

    def _post_exit(self, machine, exit_):
        """The machine's on_exit: called once from whichever thread noticed."""
        self._inbox.put((machine, exit_))

    def _sweep(self):
        if self.scheduler is not None:
            try:
                self.scheduler.sweep()
            except XvmError as e:
                log.warning("domain %s: placing new threads failed: %s", self.config.name, e)

    def _teardown(self, detach_reason):
        """Close the machine and remove its cgroups; returns the scheduling it had (or None)."""
        if self.outgoing is not None and self.outgoing.status["state"] in ("connecting", "active"):
            self.outgoing.abort(f"the domain stopped during the migration ({detach_reason})")
        machine, self.machine = self.machine, None
        scheduler, self.scheduler = self.scheduler, None
        self.id = None
        if detach_reason is not None:
            self.console._detach(detach_reason)
        if machine is not None:
            machine.close()
        if scheduler is not None:
            scheduler.close()
            return scheduler.settings()
        return None

    def _crash(self, reason):
        self.crash_reason = reason
        self._teardown("the domain crashed")
        self._set_state(DomainState.CRASHED)

    def _machine_exited(self, machine, exit_):
        from ..machine.machine import ExitReason

        if machine is not self.machine:
            return  # this boot was already torn down (destroy, reboot)
        if exit_.reason is ExitReason.RESET:
            settings = self._teardown(None)
            try:
                self._boot(settings)
            except XvmError as e:
                self._crash(f"reboot failed: {e}")
                return
            self._set_state(DomainState.RUNNING)
        elif exit_.reason is ExitReason.CRASH:
            self._crash(exit_.detail or "the guest crashed")
        else:
            self._teardown("the domain powered off")
            self._set_state(DomainState.SHUTOFF)


CONSOLE_LOG_LIMIT = 4 << 20
CONSOLE_LOG_LIMIT_ENV = "XVM_CONSOLE_LOG_LIMIT"


def console_log_limit():
    """How large ``log/<name>.log`` grows before it rotates: ``$XVM_CONSOLE_LOG_LIMIT``
    bytes, else :data:`CONSOLE_LOG_LIMIT`."""
    value = os.environ.get(CONSOLE_LOG_LIMIT_ENV)
    if not value:
        return CONSOLE_LOG_LIMIT
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ConfigError(f"{CONSOLE_LOG_LIMIT_ENV} must be a positive number of bytes, not {value!r}")
    return limit


class ConsoleLog:
    """``<state>/log/<name>.log``: console output appended as it arrives, bounded and
    rotated (one older file, ``.log.1``) when it would pass ``limit`` bytes
    (:func:`console_log_limit`).

    Both files are opened once, here, and rotation works on the descriptors alone: the
    full log is copied over ``.log.1`` and truncated (logrotate's copytruncate), so a
    confined VMM (:mod:`xvm.vmm.jail`), which sees no log directory and could not
    rename in it, rotates all the same.  The copy is bounded by ``limit`` and rare."""

    def __init__(self, path, limit=None):
        self.path = path
        self.limit = console_log_limit() if limit is None else limit
        self._lock = threading.Lock()
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(path, flags | os.O_APPEND, 0o644)
        try:
            self._old_fd = os.open(path + ".1", flags, 0o644)
        except BaseException:
            os.close(self._fd)
            raise
        self._size = os.fstat(self._fd).st_size

    def write(self, data):
        with self._lock:
            if self._fd < 0:
                return
            if self._size + len(data) > self.limit:
                self._rotate()
            _write_all(self._fd, data)
            self._size += len(data)

    def _rotate(self):
        os.ftruncate(self._old_fd, 0)
        offset = 0
        while True:
            chunk = os.pread(self._fd, 1 << 20, offset)
            if not chunk:
                break
            while chunk:
                done = os.pwrite(self._old_fd, chunk, offset)
                chunk = chunk[done:]
                offset += done
        os.ftruncate(self._fd, 0)  # O_APPEND: the next write lands at 0
        self._size = 0

    def close(self):
        with self._lock:
            for fd in (self._fd, self._old_fd):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._old_fd = -1


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
