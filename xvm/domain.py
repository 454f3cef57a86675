"""Domains: named, persistent-identity virtual machines and their lifecycle.

Every lifecycle verb goes through :meth:`Domain._transition`, which checks the
verb against the current state in one table; an illegal verb raises
:class:`~xvm.errors.StateError` and changes nothing.
"""
import enum
import threading

from .config import preflight
from .console import Console
from .errors import StateError, XvmError
from .machine import ExitReason, build_machine


class DomainState(enum.Enum):
    SHUTOFF = "shutoff"
    RUNNING = "running"
    PAUSED = "paused"
    CRASHED = "crashed"


S = DomainState
# verb: (states it is legal in, state after it)
TRANSITIONS = {
    "start": ({S.SHUTOFF, S.CRASHED}, S.RUNNING),
    "pause": ({S.RUNNING}, S.PAUSED),
    "resume": ({S.PAUSED}, S.RUNNING),
    "shutdown": ({S.RUNNING}, S.SHUTOFF),
    "reboot": ({S.RUNNING}, S.RUNNING),
    "destroy": ({S.RUNNING, S.PAUSED, S.CRASHED}, S.SHUTOFF),
    "undefine": ({S.SHUTOFF, S.CRASHED}, S.SHUTOFF),
}


class ShutdownTimeout(StateError, TimeoutError):
    """The guest did not power off within the time ``shutdown()`` allowed."""


class Domain:
    """A virtual machine known to a :class:`~xvm.host.Host`."""

    def __init__(self, host, config):
        self._host = host
        self._config = config
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = DomainState.SHUTOFF
        self._machine = None
        self._watcher = None
        self._id = None
        self.console = Console()
        self.crash_reason = None
        self.boot_count = 0

    def __repr__(self):
        return f"<Domain {self.name!r} {self._state.value} id={self._id}>"

    # -- identity -----------------------------------------------------------
    @property
    def name(self):
        return self._config.name

    @property
    def uuid(self):
        return self._config.uuid

    @property
    def id(self):
        """The per-boot domain ID: None unless running or paused, new on every boot."""
        return self._id

    @property
    def state(self):
        return self._state

    @property
    def config(self):
        return self._config

    @property
    def machine(self):
        """The running :class:`~xvm.machine.Machine`, or None."""
        return self._machine

    def rename(self, new_name):
        """Give the domain a new name; legal in every state."""
        with self._lock:
            new_config = self._config.replace(name=new_name)
            self._host._rename(self, new_config)
            self._config = new_config

    # -- lifecycle ------------------------------------------------------------
    def _transition(self, verb):
        legal, _ = TRANSITIONS[verb]
        if self._state not in legal:
            allowed = ", ".join(sorted(s.value for s in legal))
            raise StateError(
                f"cannot {verb} domain {self.name!r}: it is {self._state.value} (allowed when {allowed})",
                state=self._state,
                operation=verb,
            )
        return TRANSITIONS[verb][1]

    def _set_state(self, state):
        self._state = state
        self._changed.notify_all()

    def start(self):
        """Boot the domain; returns once its vCPUs are running."""
        with self._lock:
            after = self._transition("start")
            self._host._check_can_start(self)
            self._boot()
            self.crash_reason = None
            self._set_state(after)
        return self

    def pause(self):
        with self._lock:
            after = self._transition("pause")
            self._machine.pause()
            self._set_state(after)

    def resume(self):
        with self._lock:
            after = self._transition("resume")
            self._machine.resume()
            self._set_state(after)

    def destroy(self):
        """Stop the domain at once, without asking the guest."""
        with self._lock:
            after = self._transition("destroy")
            watcher = self._teardown("destroyed")
            self._set_state(after)
        _join(watcher)

    def reboot(self):
        """Reset the domain: the guest starts again from its kernel, with a new id."""
        with self._lock:
            after = self._transition("reboot")
            watcher = self._teardown(None)
            self._boot()
            self._set_state(after)
        _join(watcher)

    def shutdown(self, timeout=60.0):
        """Ask the guest to power off (ACPI power button) and wait up to ``timeout`` s.

        Raises :class:`ShutdownTimeout` if the guest has not powered off by then;
        the domain is left running.
        """
        with self._lock:
            self._transition("shutdown")
            machine, watcher = self._machine, self._watcher
            machine.acpi_pm.raise_power_button()
            if not self._changed.wait_for(lambda: self._machine is not machine, timeout):
                raise ShutdownTimeout(
                    f"domain {self.name!r} did not power off within {timeout:g}s of the power button",
                    state=self._state,
                    operation="shutdown",
                )
        _join(watcher)

    def wait(self, states=(DomainState.SHUTOFF, DomainState.CRASHED), timeout=None):
        """Wait until the domain is in one of ``states``; returns the state (raises on timeout)."""
        if isinstance(states, DomainState):
            states = (states,)
        with self._lock:
            if not self._changed.wait_for(lambda: self._state in states, timeout):
                raise TimeoutError(
                    f"domain {self.name!r} is still {self._state.value} after {timeout:g}s"
                )
            return self._state

    def undefine(self):
        """Forget the domain; it must not be running."""
        with self._lock:
            self._transition("undefine")
            self._host._forget(self)

    # -- machinery ------------------------------------------------------------
    def _boot(self):
        cfg = self._config
        preflight(cfg)
        machine = build_machine(
            self._host.kvm, cfg, console_sink=self.console._feed,
            nics=self._host._plan_nics(self) if cfg.nics else (),
        )
        try:
            machine.start()
        except BaseException:
            machine.close()
            raise
        self._machine = machine
        self._id = self._host._next_id()
        self.boot_count += 1
        self.console._attach(machine.serial.receive)
        self._watcher = threading.Thread(
            target=self._watch, args=(machine,), name=f"xvm-watch-{self.name}", daemon=True
        )
        self._watcher.start()

    def _teardown(self, detach_reason):
        """Stop and release the current boot; returns its watcher thread to join."""
        machine, self._machine = self._machine, None
        watcher, self._watcher = self._watcher, None
        self._id = None
        if detach_reason is not None:
            self.console._detach(f"the domain was {detach_reason}")
        if machine is not None:
            machine.close()
        return watcher

    def _watch(self, machine):
        """Follow one boot: act on the guest's power-off, reset or crash."""
        result = machine.wait()
        with self._lock:
            if self._machine is not machine:
                return  # the host already tore this boot down (destroy, reboot)
            self._watcher = None  # this thread ends here; nobody needs to join it
            if result.reason is ExitReason.RESET:
                self._teardown(None)
                try:
                    self._boot()
                except XvmError as e:
                    self.crash_reason = f"reboot failed: {e}"
                    self.console._detach("the domain crashed")
                    self._set_state(DomainState.CRASHED)
                    return
                self._set_state(DomainState.RUNNING)
            elif result.reason is ExitReason.CRASH:
                self.crash_reason = result.detail
                self._teardown("crashed")
                self._set_state(DomainState.CRASHED)
            else:
                self._teardown("powered off")
                self._set_state(DomainState.SHUTOFF)




def _join(thread):
    if thread is not None and thread is not threading.current_thread():
        thread.join()
