"""Domains: named virtual machines with a persistent identity, as handles.

A :class:`Domain` is a handle on a domain of a host: it holds the domain's UUID and
asks the host for everything else, so every handle — in this process or another,
through the embedded host or xvmd — sees the same domain.  Each lifecycle verb is one
action (:mod:`xvm.vmm.actions`) sent to the domain's VMM, which checks it against
its state in one table (:data:`xvm.vmm.lifecycle.TRANSITIONS`); an illegal verb
raises :class:`~xvm.errors.StateError` and changes nothing.
"""
import time

from .console import Console
from .errors import ConfigError, StateError, XvmError
from .sched import Sched, VcpuInfo, parse_cpuset
from .vmm import actions as A
from .vmm.lifecycle import TRANSITIONS, DomainState  # noqa: F401  (public names)
from .vmm.protocol import register_error


class ShutdownTimeout(StateError, TimeoutError):
    """The guest did not power off within the time ``shutdown()`` allowed."""


register_error(ShutdownTimeout)

STOPPED = (DomainState.SHUTOFF, DomainState.CRASHED)
LIVE = (DomainState.RUNNING, DomainState.PAUSED)


class Domain:
    """A virtual machine known to a host (``host.define(cfg)``, ``host.lookup(name)``)."""

    def __init__(self, host, uuid):
        self._host = host
        self._uuid = uuid
        self.console = DomainConsole(self)

    def __repr__(self):
        try:
            info = self.info()
            return f"<Domain {info['name']!r} {info['state']} id={info['id']}>"
        except XvmError:
            return f"<Domain {self._uuid}>"

    def _repr_mimebundle_(self, include=None, exclude=None):
        """Jupyter's view: identity, state, config, disks, NICs, the console's last lines."""
        from .display import domain_bundle
        return domain_bundle(self, include, exclude)

    def __eq__(self, other):
        return isinstance(other, Domain) and other._uuid == self._uuid and other._host is self._host

    def __hash__(self):
        return hash(self._uuid)

    # -- identity -----------------------------------------------------------------------------
    @property
    def uuid(self):
        return self._uuid

    @property
    def name(self):
        return self._host._record(self).name

    @property
    def config(self):
        """The stored :class:`~xvm.config.DomainConfig`."""
        return self._host._config(self)

    def info(self):
        """A dict: name, uuid, id, state, boot_count, crash_reason, pid, vcpus, memory_mib..."""
        return self._host._act(self, A.Info())

    @property
    def state(self):
        return DomainState(self.info()["state"])

    @property
    def id(self):
        """The per-boot domain ID: None unless running or paused, new on every boot."""
        return self.info()["id"]

    @property
    def boot_count(self):
        """Boots of the current VMM (guest resets and reboot() included); 0 when not running."""
        return self.info()["boot_count"]

    @property
    def crash_reason(self):
        return self.info().get("crash_reason")

    @property
    def persistent(self):
        return self._host._record(self).persistent

    @property
    def autostart(self):
        """Whether xvmd starts the domain when it starts (``set_autostart``)."""
        return self._host._record(self).autostart

    def set_autostart(self, on=True):
        """Start the domain whenever the xvmd service starts (persistent domains only)."""
        self._host._set_autostart(self, bool(on))

    @property
    def machine(self):
        """The machine when the VMM is in this process (``in_process=True``): the running one,
        or once the guest stopped that boot's (closed; its devices' metrics stay readable);
        None for a VMM process."""
        return self._host._machine(self)

    def stats(self):
        """The VMM's counters: the domain's info, every device's metrics, the vCPUs."""
        return self._host._act(self, A.Stats())

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self):
        """Boot the domain; returns once its vCPUs are running."""
        self.console._boot_begins()
        try:
            self._host._start(self)
        except BaseException:
            self.console._boot_failed()
            raise
        return self

    def pause(self):
        self._host._act(self, A.Pause())

    def resume(self):
        self._host._act(self, A.Resume())

    def destroy(self):
        """Stop the domain at once, without asking the guest."""
        self._host._act(self, A.Destroy())
        self._host._stopped(self)

    def save(self, path, *, progress=None):
        """Save the running (or paused) domain to the snapshot file ``path``: it is paused,
        its disks flushed, its state and RAM written; it ends shut off.
        ``host.restore(path)`` brings it back (with nothing to show a bar for: it maps the
        file's RAM and faults it in lazily).  ``progress``: None (a byte bar in Jupyter or on
        a terminal), True, False, or a callable ``progress(written, total)``."""
        import os

        self._host._save(self, os.path.abspath(path), progress=progress)
        self._host._stopped(self)

    def migrate(self, uri, *, downtime_ms=300, bandwidth=None, timeout_s=None, tls_dir=None,
                insecure=False, progress=None):
        """Live-migrate the running (or paused) domain to the host listening at ``uri``
        (``xvm+tls://ADDR:PORT``; ``xvm+tcp://`` only with ``insecure=True``), which runs
        ``xvmd --migration-listen`` or ``host.listen_migrations()``.  The guest keeps
        running while its memory is copied; it is paused for about ``downtime_ms`` at the
        end, then runs on the destination (a new id there) and this host's copy ends.
        ``bandwidth``: MiB/s at most (None: no limit); ``timeout_s``: give up after that
        long; ``tls_dir``: client-cert.pem, client-key.pem and ca-cert.pem (default
        $XVM_TLS_DIR, /etc/pki/xvm); ``progress(status)``: called as it goes.  Returns
        :class:`xvm.MigrationStats`.  On any failure — :meth:`abort_migration`, the
        timeout, Ctrl-C, a dead or refusing destination — :class:`xvm.MigrationError` is
        raised and the domain keeps running here as if nothing happened."""
        return self._host._migrate(self, uri, downtime_ms=downtime_ms, bandwidth=bandwidth,
                                   timeout_s=timeout_s, tls_dir=tls_dir, insecure=insecure,
                                   progress=progress)

    def abort_migration(self):
        """Abort the domain's live migration (from any thread or process): the ``migrate()``
        call raises MigrationError and the domain keeps running here.  Returns whether
        there was a migration to abort."""
        return bool(self._host._act(self, A.MigrateAbort()))

    def reboot(self):
        """Reset the domain: the guest starts again from its kernel, with a new id."""
        self._host._act(self, A.Reset())

    def xml(self, inactive=False):
        """The domain as libvirt XML (with its id while running, unless ``inactive``)."""
        from .xml import config_to_xml

        domain_id = None if inactive else self.id
        settings = {"autostart": self.autostart} if self.persistent else {}
        return config_to_xml(self.config, settings=settings, domain_id=domain_id)

    def shutdown(self, timeout=60.0, wait=True):
        """Ask the guest to power off (ACPI power button) and wait up to ``timeout`` s.

        Raises :class:`ShutdownTimeout` if the guest has not powered off by then;
        the domain is left running.  ``wait=False`` only presses the button.
        """
        self._host._act(self, A.PowerButton())
        if not wait:
            return
        state = self._host._act(self, A.Wait(states=[s.value for s in STOPPED], timeout=timeout))
        if state is None:
            raise ShutdownTimeout(
                f"domain {self.name!r} did not power off within {timeout:g}s of the power button",
                state=self.state, operation="shutdown")
        self._host._stopped(self)

    def wait(self, states=STOPPED, timeout=None):
        """Wait until the domain is in one of ``states``; returns the state (TimeoutError)."""
        if isinstance(states, DomainState):
            states = (states,)
        names = [DomainState(s).value for s in states]
        state = self._host._act(self, A.Wait(states=names, timeout=timeout))
        if state is None:
            raise TimeoutError(f"domain {self.name!r} is still {self.state.value} after {timeout:g}s")
        return DomainState(state)

    # -- scheduling (xvm.sched: Xen credit's weight and cap, vCPU pinning) --------------------
    def scheduler(self):
        """The :class:`~xvm.sched.Sched` in force: the live one while running, else the stored one."""
        info = self._live(A.SchedInfo())
        if info is None:
            return self.config.sched
        return Sched(weight=info["weight"], cap=info["cap"])

    def set_scheduler(self, weight=None, cap=None, live=True, config=True):
        """Change the credit weight and/or cap (None keeps a value), as ``virsh schedinfo``
        with ``--live`` / ``--config``: ``live`` changes the running domain at once, without a
        pause (StateError if it is not running); ``config`` changes its stored configuration,
        for the next boot (StateError for a transient domain).  Returns the new :class:`Sched`."""
        if not (live or config):
            raise ConfigError("set_scheduler needs live=True, config=True or both")
        stored = self.config
        if config and not self.persistent:
            raise StateError(f"domain {stored.name!r} is transient: it has no stored configuration to change "
                             "(pass config=False)", operation="change the scheduler of")
        if live:
            self._require_live("change the scheduler of")
            new = self.scheduler().replace(weight=weight, cap=cap)  # ConfigError before any change
        if config:
            new_config = stored.replace(sched=stored.sched.replace(weight=weight, cap=cap))
        if live:
            self._host._act(self, A.SetScheduler(weight=weight, cap=cap))
        if config:
            self._host._update_config(self, new_config)
        return new if live else new_config.sched

    def pin_vcpu(self, vcpu, cpus):
        """Pin vCPU ``vcpu``'s thread to host CPUs ``cpus`` (a set, a list or ``"0-2,5"``) now;
        returns the mask the kernel holds.  For the next boot, use ``vcpu_pins`` in the config."""
        return frozenset(self._host._act(self, A.PinVcpu(vcpu=_int(vcpu, "vcpu"), cpus=_cpu_list(cpus))))

    def pin_emulator(self, cpus):
        """Pin the VMM's other threads (device workers, its control thread) to ``cpus`` now."""
        self._host._act(self, A.PinEmulator(cpus=_cpu_list(cpus)))

    def vcpus(self):
        """One :class:`~xvm.sched.VcpuInfo` per vCPU (``virsh vcpuinfo``): state, exact CPU time,
        the CPU it last ran on and its affinity, from the kernel's per-thread records; a domain
        that is not running has every vCPU offline."""
        infos = self._live(A.VcpuInfos())
        if infos is None:
            return [VcpuInfo(number, "offline", 0, -1, frozenset()) for number in range(self.config.vcpus)]
        return [VcpuInfo.from_dict(info) for info in infos]

    def _live(self, action):
        """``action``'s result from the running domain's VMM, or None if it is not running."""
        try:
            return self._host._act(self, action)
        except StateError as e:
            if e.state is None or DomainState(e.state) in LIVE:
                raise
            return None

    def _require_live(self, verb):
        state = self.state
        if state not in LIVE:
            raise StateError(f"cannot {verb} domain {self.name!r} live: it is {state.value} "
                             "(pass live=False to change only its stored configuration)",
                             state=state, operation=verb)

    def rename(self, new_name):
        """Give the domain a new name; legal in every state."""
        self._host._rename(self, new_name)

    def undefine(self):
        """Forget the domain; it must not be running."""
        self._host._undefine(self)

    # -- storage ------------------------------------------------------------------------------
    def snapshot_disks(self, name, *, progress=None):
        """Snapshot every disk (each a storage pool volume) as ``name``, all or nothing; the
        domain must be shut off (StateError otherwise). Returns the :class:`xvm.storage.Snapshot`
        list, in the disks' order. A full copy shows a byte bar as ``progress`` says (None: in
        Jupyter or on a terminal; True, False, or a callable(done, total); see xvm.storage)."""
        return self._host._snapshot_disks(self, name, progress=progress)

    def rollback_disks(self, name, *, progress=None):
        """Roll every disk back to its snapshot ``name`` (checked on every disk first, so a
        refusal changes nothing); the domain must be shut off. Returns how each was done.
        ``progress`` as for :meth:`snapshot_disks`."""
        return self._host._rollback_disks(self, name, progress=progress)

    # -- scripts ------------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """``with host.create(cfg) as dom:`` — the domain is destroyed when the block ends."""
        try:
            if self.state not in STOPPED or self.state is DomainState.CRASHED:
                self.destroy()
        except (StateError, XvmError):
            pass


def _int(value, what):
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, not {value!r}")
    return value


def _cpu_list(cpus):
    """CPUs as the actions carry them, a sorted list (the VMM checks they exist)."""
    if isinstance(cpus, str):
        return sorted(parse_cpuset(cpus))
    if not isinstance(cpus, (set, frozenset, list, tuple, range)):
        raise ConfigError(f"CPUs must be a set, a list or a string like '0-2,5', not {cpus!r}")
    return sorted(_int(cpu, "a CPU number") for cpu in set(cpus))


class DomainConsole(Console):
    """A domain's serial console, the same API wherever its VMM runs.

    It mirrors the VMM's console server: on first use (and after each new boot) it
    attaches, receives the retained history, then every byte as the guest writes it
    (dropped by the server for falling behind, it attaches again from the bytes it has:
    :class:`~xvm.host.channel.SocketChannel`); ``write()`` sends input to the VMM.  The mirror keeps what it received across
    boots, bounded like the VMM's own log.
    """

    def __init__(self, domain):
        super().__init__()
        self._domain = domain
        self._detach_fn = None
        self._attached_boot = None
        self._booting = False  # start() asked for a boot whose console has not opened yet

    def _listener(self, event, payload):
        if event == "data":
            self._feed(payload)
        elif event == "open":
            with self._cond:
                self._booting = False
            self._attach(self._send)
        elif not self._booting:  # a "closed" from before the boot we wait for is old news
            self._detach(payload or "the domain is not running")

    def _boot_begins(self):
        with self._cond:
            self._booting = True

    def _boot_failed(self):
        with self._cond:
            self._booting = False
            self._cond.notify_all()

    def _is_closed(self):
        return self._input is None and not self._booting

    def _send(self, data):
        self._domain._host._act(self._domain, A.ConsoleInput(data=bytes(data)))

    def _ensure(self):
        """Attach to the current boot's console server if not attached to it already."""
        self._domain._host._ensure_console(self._domain, self)

    def _reset_attachment(self):
        if self._detach_fn is not None:
            fn, self._detach_fn = self._detach_fn, None
            fn()
        self._attached_boot = None

    def log(self):
        self._ensure()
        return super().log()

    def read(self):
        self._ensure()
        return super().read()

    def write(self, data):
        self._ensure()
        return super().write(data)

    def expect(self, pattern, timeout=30.0):
        self._ensure()
        return super().expect(pattern, timeout)

    def widget(self, history=True):
        self._ensure()
        return super().widget(history=history, title=f"console of {self._domain.name}")
