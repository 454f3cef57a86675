"""The embedded host (``xvm:///session``): this process keeps the store of a state
directory and starts a VMM process per running domain; no daemon is involved.

Any number of processes may open the same state directory at once: the store is
SQLite, a domain's VMM is found by its socket, and the domain lock
(:mod:`~xvm.host.launcher`) says whether it is alive.  Closing a host leaves its
running domains running; another ``xvm.connect()`` finds them again.
"""
import dataclasses
import logging
import os
import threading
import time
import uuid as uuid_module

from ..config import DomainConfig, preflight, resolve_disks
from ..domain import STOPPED, Domain
from ..errors import ConfigError, NotFoundError, StateError, XvmError
from ..kvm.generated import kvm_h
from ..kvm.system import KVM_PATH, Kvm
from ..net import NetworkTable, effective_macs, plan_nics
from ..store import Store
from ..vmm import actions as A
from ..vmm import lifecycle
from ..vmm.lifecycle import DomainState
from ..vmm.vmm import VmmGone
from . import launcher
from .capabilities import capabilities_of
from .channel import LocalChannel, SocketChannel
from .paths import StateDir, default_state_dir

log = logging.getLogger(__name__)

WAIT_POLL = 0.05  # a domain with no VMM changes state only when someone starts it
GONE_SETTLE = 5.0  # seconds a VMM whose socket closed has to release the domain lock
VMM_EXIT_WAIT = 10.0  # how long a VMM may take to exit once its domain has stopped
CONSOLE_DRAIN = 2.0  # seconds the console mirror may take to read what an ending VMM sent last
VOLUME_RELEASE_WAIT = 3.0  # how long a disk nobody uses may stay locked (FUSE releases late)


class Host:
    """A connection to a hypervisor host; use :func:`xvm.connect`."""

    uri = None

    def _repr_mimebundle_(self, include=None, exclude=None):
        """Jupyter's view: the host's domains as a table (id, name, state, vCPUs, memory, CPU time)."""
        from ..display import host_bundle
        return host_bundle(self, include, exclude)

    def define_xml(self, text):
        """Define a domain from libvirt domain XML (its xvm metadata's autostart too)."""
        from ..xml import parse_domain_xml

        parsed = parse_domain_xml(text)
        domain = self.define(parsed.config)
        if parsed.settings.get("autostart"):
            domain.set_autostart(True)
        return domain

    def _save(self, domain, path, progress=None):
        """``dom.save(path)``: the file is made here, with this caller's permissions, and its
        descriptor handed to the VMM (confined, it sees no directory of the host's); renamed
        to ``path`` once the VMM has written and synced it, removed if it failed.  The bar
        (``progress``: :func:`xvm.progress.byte_reporter`) follows the file as it fills."""
        from ..migration.snapshot import SaveFile
        from ..progress import byte_reporter, file_growth

        with SaveFile(path) as out, byte_reporter(progress, f"save {domain.name}") as report:
            with file_growth(out.fd, domain.config.memory_mib << 20, report):
                self._act(domain, A.Snapshot(path=out.path, fd=out.fd))
            out.commit()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalHost(Host):
    """The embedded host of one state directory (see the module docstring)."""

    def __init__(self, state_dir=None, *, in_process=False, kvm_path=KVM_PATH, uri="xvm:///session"):
        self.uri = uri
        self.state_dir = StateDir(os.path.abspath(state_dir or default_state_dir())).ensure()
        self.in_process = in_process
        self.kvm_path = kvm_path
        if in_process:  # vCPUs will run in this process: the kick signal is set up here
            from ..kvm.vcpu import install_kick_handler
            install_kick_handler()
        self.kvm = Kvm(kvm_path)
        try:
            self.store = Store(self.state_dir.store)
        except BaseException:
            self.kvm.close()
            raise
        self._lock = threading.RLock()
        self._handles = {}  # uuid -> Domain
        self._channels = {}  # uuid -> (vmm key, channel)
        self._vmms = {}  # uuid -> Vmm, in-process only
        self._vmm_locks = {}  # uuid -> DomainLock held for an in-process Vmm
        self._ended_vmms = {}  # uuid -> the last in-process Vmm that ended (dom.machine afterwards)
        self._networks = NetworkTable(self, self.store)
        self._pools = None  # xvm.storage.Pools over this store, made on first use
        self._starting = set()  # uuids this host is starting: their disks count as in use
        self._closed = False
        self._listeners = []  # MigrationListeners (listen_migrations)
        for record in self.store.domains():
            if self._reconcile(record.uuid).state not in (DomainState.RUNNING.value, DomainState.PAUSED.value):
                launcher.remove_leftovers(self.state_dir, record.uuid)  # a confined VMM's cgroup
        self._networks.reconcile()

    def __repr__(self):
        return f"<LocalHost {self.uri} state_dir={self.state_dir.root!r}>"

    def capabilities(self):
        return capabilities_of(self.kvm)

    # -- domains ------------------------------------------------------------------------------
    def define(self, config):
        """Store a domain (it starts shut off and survives every process).  Defining again
        a domain's UUID with its name replaces its stored configuration, as virsh define
        does: a running domain gets it at its next start, a running transient one becomes
        persistent.  A UUID or name taken by another domain is a ConfigError."""
        if not isinstance(config, DomainConfig):
            raise ConfigError(f"define wants an xvm.DomainConfig, not {type(config).__name__}")
        record, _ = self.store.define_domain(str(config.uuid), config.name, config.to_dict())
        return self._handle(record.uuid)

    def create(self, config):
        """Start a *transient* domain: forgotten once it shuts off.
        ``with host.create(cfg) as dom:`` destroys it when the block ends."""
        domain = self._add(config, persistent=False)
        try:
            return domain.start()
        except BaseException:
            try:
                self.store.remove_domain(str(config.uuid))
            except NotFoundError:
                pass
            raise

    def _add(self, config, persistent):
        if not isinstance(config, DomainConfig):
            raise ConfigError(f"define wants an xvm.DomainConfig, not {type(config).__name__}")
        record = self.store.add_domain(str(config.uuid), config.name, config.to_dict(), persistent=persistent)
        return self._handle(record.uuid)

    def domains(self):
        """Every domain of this host (persistent ones, and transient ones while they exist)."""
        return [self._handle(record.uuid) for record in self.store.domains()]

    def lookup(self, key):
        """The domain with this name, UUID or running id; raises NotFoundError."""
        if isinstance(key, int) and not isinstance(key, bool):
            for domain in self.domains():
                if domain.id == key:
                    return domain
            raise NotFoundError(f"no running domain has id {key}")
        record = self.store.domain(str(key))
        if record is None:
            raise NotFoundError(f"no domain named {key!r}")
        return self._handle(record.uuid)

    def _handle(self, uuid):
        uuid = str(uuid)
        with self._lock:
            handle = self._handles.get(uuid)
            if handle is None:
                handle = self._handles[uuid] = Domain(self, uuid_module.UUID(uuid))
            return handle

    def _record(self, domain):
        record = self.store.domain(str(domain.uuid))
        if record is None:
            raise NotFoundError(f"domain {domain.uuid} no longer exists")
        return record

    def _config(self, domain):
        return DomainConfig.from_dict(self._record(domain).config)

    def _machine(self, domain):
        vmm = self._vmms.get(str(domain.uuid)) or self._ended_vmms.get(str(domain.uuid))
        if vmm is None:
            return None
        # The last machine also while a stop is under way (it is closed before the state moves).
        machine = vmm.machine or vmm.last_machine
        return machine.machine if machine is not None else None

    # -- talking to VMMs ----------------------------------------------------------------------
    def _channel(self, uuid):
        """The channel to the VMM of ``uuid`` and its key (pid), or (None, None)."""
        with self._lock:
            cached = self._channels.get(uuid)
            if cached is not None:
                return cached
            vmm = self._vmms.get(uuid)
            if vmm is not None:
                entry = (id(vmm), LocalChannel(vmm))
            elif launcher.vmm_alive(self.state_dir, uuid):
                record = self.store.domain(uuid)
                name = record.name if record else uuid
                entry = (launcher.read_pid(self.state_dir, uuid),
                         SocketChannel(self.state_dir.vmm_socket(uuid), name))
            else:
                return None, None
            self._channels[uuid] = entry
            return entry

    def _drop_channel(self, uuid, drain=0.0):
        with self._lock:
            entry = self._channels.pop(uuid, None)
            vmm = self._vmms.get(uuid)
            if vmm is not None and vmm.state in STOPPED and vmm.boot_count:
                self._ended_vmms[uuid] = self._vmms.pop(uuid)
                vmm.close()
                self._vmm_locks.pop(uuid).close()
        if entry is not None:
            entry[1].close(drain)

    def _act(self, domain, action):
        uuid = str(domain.uuid)
        _, channel = self._channel(uuid)
        if channel is not None:
            try:
                result = channel.call(action)
                if isinstance(action, A.SetScheduler):
                    from ..sched import rebalance
                    rebalance(uuid)  # the parent's weight: root's part of a confined VMM's change
                if isinstance(action, A.Info) and isinstance(result, dict):
                    record = self.store.domain(uuid)  # renamed since the VMM started?
                    if record is not None:
                        result["name"] = record.name
                return result
            except VmmGone:
                self._drop_channel(uuid)
                if isinstance(action, A.Destroy) and self.store.domain(uuid) is None:
                    return None  # a transient domain, gone with its VMM: destroyed all the same
                return self._act_offline(domain, uuid, action, gone=True)
        return self._act_offline(domain, uuid, action)

    def _act_offline(self, domain, uuid, action, gone=False):
        """An action for a domain that has no VMM (it is shut off or crashed); ``gone``
        when its VMM's socket has just closed under a call."""
        record = self._reconcile(uuid, gone=gone)
        state = DomainState(record.state)
        if isinstance(action, A.Info):
            return _offline_info(record)
        if isinstance(action, A.Stats):
            return {"domain": _offline_info(record)}
        if isinstance(action, A.Wait):
            deadline = None if action.timeout is None else time.monotonic() + action.timeout
            while state.value not in action.states:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                time.sleep(WAIT_POLL)
                _, channel = self._channel(uuid)
                if channel is not None:  # someone started it meanwhile
                    remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
                    return self._act(domain, A.Wait(states=action.states, timeout=remaining))
                state = DomainState(self._reconcile(uuid).state)
            return state.value
        lifecycle.check(action, state, record.name)
        if isinstance(action, A.Destroy):  # a crashed domain with no VMM left
            if record.persistent:
                self.store.set_state(uuid, DomainState.SHUTOFF.value)
            else:
                self.store.remove_domain(uuid)
        return None

    def _reconcile(self, uuid, gone=False):
        """The domain's record, after noticing a VMM that died without recording it.

        ``gone``: the VMM's socket has just closed under a call.  A VMM that is dying still
        holds the domain lock until its last thread has exited (a process killed by seccomp
        takes a moment), so its end is waited for, up to ``GONE_SETTLE`` seconds, rather than
        reporting a domain still running whose VMM no longer answers."""
        record = self.store.domain(uuid)
        if record is None:
            raise NotFoundError(f"domain {uuid} no longer exists")
        running = (DomainState.RUNNING.value, DomainState.PAUSED.value)
        if gone and record.state in running:
            deadline = time.monotonic() + GONE_SETTLE
            while launcher.vmm_alive(self.state_dir, uuid) and time.monotonic() < deadline:
                time.sleep(0.01)
            record = self.store.domain(uuid) or record  # a VMM that stopped may have recorded it
        if record.state in running and not launcher.vmm_alive(self.state_dir, uuid):
            pid = launcher.read_pid(self.state_dir, uuid)
            how = launcher.describe_exit(pid, self.state_dir, wait=1.0) if pid else None
            reason = f"the VMM process{f' (pid {pid})' if pid else ''} {how or 'ended without stopping the domain'}"
            from ..vmm.jail import crash_reason
            reason = crash_reason(self.state_dir, uuid) or reason  # "seccomp: ptrace", from the VMM itself
            self.store.set_state(uuid, DomainState.CRASHED.value, reason)
            for path in (self.state_dir.vmm_socket(uuid), self.state_dir.vmm_pidfile(uuid)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            _remove_cgroups(uuid)
            record = self.store.domain(uuid)
        return record

    def _ensure_console(self, domain, console):
        uuid = str(domain.uuid)
        key, channel = self._channel(uuid)
        if channel is None or (console._attached_boot == key and console._detach_fn is not None):
            return
        console._reset_attachment()
        try:
            console._detach_fn = channel.attach_console(console._listener, history=True)
        except VmmGone:
            self._drop_channel(uuid)
            # the attachment let go of above would have said so when its VMM ended: say it
            console._listener("closed", "the VMM ended")
            return
        console._attached_boot = key

    def _stopped(self, domain):
        """The domain has stopped (destroy, shutdown): let go of its VMM's channel and wait
        for the VMM to be gone, so that a start() right after this succeeds."""
        uuid = str(domain.uuid)
        self._drop_channel(uuid, drain=CONSOLE_DRAIN)  # the console mirror gets the guest's last output
        self._ended_vmms.pop(uuid, None)  # destroyed or shut down by the caller: no machine left
        self._wait_vmm_gone(uuid, VMM_EXIT_WAIT)

    def _wait_vmm_gone(self, uuid, timeout):
        deadline = time.monotonic() + timeout
        while launcher.vmm_alive(self.state_dir, uuid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        launcher.reap()
        for path in (self.state_dir.vmm_socket(uuid), self.state_dir.vmm_pidfile(uuid)):
            try:  # a confined VMM cannot remove them itself
                os.unlink(path)
            except FileNotFoundError:
                pass
        launcher.remove_leftovers(self.state_dir, uuid)  # nor its cgroup
        return True

    # -- lifecycle on the host side -----------------------------------------------------------
    def _vmm_state(self, domain):
        try:
            return DomainState(self._act(domain, A.Info())["state"])
        except XvmError:
            return None

    def restore(self, path, config=None):
        """Start the domain saved in the snapshot file ``path`` (:meth:`Domain.save`): the
        same name and UUID, a new id, continuing where it was.  A domain this host does
        not know comes back transient.  The file is checked first (SnapshotError).

        ``config``: the domain's configuration with other host resources, a
        :class:`~xvm.DomainConfig`: e.g. ``xvm.snapshot_config(path)`` with
        other disk image paths, networks or bridges, scheduling or boot settings.  What the
        guest saw (vCPUs, memory, devices, MACs, serials, disk sizes) must not change
        (SnapshotError, what="config", naming the difference).  It becomes the stored
        configuration."""
        return self._restore(os.path.abspath(path), config=config)

    def _restore(self, path, fd=None, config=None):
        """:meth:`restore` from the open snapshot file ``fd`` (xvmd: the client's; ``path``
        names it), or from ``path`` opened here.  The VMM gets the descriptor."""
        from ..migration.snapshot import SnapshotError, load_snapshot, restore_config

        own = fd is None
        if own:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}", what="io", path=path) from None
        try:
            snapshot = load_snapshot(path, fd=fd, supported_cpuid=self.kvm.supported_cpuid())
            config = restore_config(snapshot, config)
            uuid = str(config.uuid)
            added = False
            action = A.Restore(path=path, fd=fd)
            with self._lock:
                record = self.store.domain(uuid)
                if record is None:
                    self.store.add_domain(uuid, config.name, config.to_dict(), persistent=False)
                    added = True
                else:
                    record = self._reconcile(uuid)
                    lifecycle.check(action, DomainState(record.state), record.name)
                    self.store.update_config(uuid, config.to_dict())
            domain = self._handle(uuid)
            domain.console._boot_begins()
            try:
                self._start(domain, boot_action=action)
            except BaseException:
                domain.console._boot_failed()
                if added:
                    try:
                        self.store.remove_domain(uuid)
                    except NotFoundError:
                        pass
                raise
            return domain
        finally:
            if own:
                os.close(fd)

    # -- live migration (xvm.migration.live) ---------------------------------------------------
    def listen_migrations(self, address, *, tls_dir=None, insecure=False):
        """Accept live migrations of domains into this host on ``address`` ("ADDR:PORT", or
        ``(addr, port)``; port 0 picks one).  TLS 1.3 with client certificates, from
        ``tls_dir`` (libvirt's layout: ca-cert.pem, server-cert.pem, server-key.pem;
        default $XVM_TLS_DIR, /etc/pki/xvm); plain TCP only with ``insecure=True``.
        Returns the :class:`~xvm.migration.live.MigrationListener` (``.uri``, ``.close()``;
        a context manager); closing this host closes it too."""
        from ..migration.live import MigrationListener

        listener = MigrationListener(self, address, tls_dir=tls_dir, insecure=insecure)
        self._listeners.append(listener)
        return listener

    def _migrate(self, domain, uri, **options):
        from ..migration.live import migrate

        return migrate(self, domain, uri, **options)

    def _start(self, domain, boot_action=None):
        uuid = str(domain.uuid)
        with self._lock:
            record = self._reconcile(uuid)
            lock = launcher.DomainLock(self.state_dir.vmm_lockfile(uuid))
            try:
                if not lock.try_acquire() and self._vmm_state(domain) in STOPPED:
                    self._wait_vmm_gone(uuid, VMM_EXIT_WAIT)  # a VMM finishing its exit
                if not lock.try_acquire():
                    info = self._act(domain, A.Info())
                    lifecycle.check(A.Boot(), DomainState(info["state"]), record.name)
                    raise StateError(f"cannot start domain {record.name!r}: another host is starting it",
                                     state=DomainState(info["state"]), operation="start")
                lifecycle.check(A.Boot(), DomainState(record.state), record.name)
                config = DomainConfig.from_dict(record.config)
                self._check_can_start(config)
                self._starting.add(uuid)
                config = resolve_disks(config, self._volume_path)  # the VMM gets paths
                # an incoming migration's disks are still the source's: locked at the switchover
                incoming = isinstance(boot_action, A.MigrateReceive)
                self._preflight(config, uuid, lock=not incoming)
                plans = self._plan_nics(config) if config.nics else []
                if self.in_process:
                    result = self._start_in_process(uuid, record, config, plans, boot_action)
                    self._vmm_locks[uuid], lock = lock, None  # held while the Vmm lives
                else:
                    result = self._spawn(uuid, record, config, plans, lock, boot_action)
            finally:
                self._starting.discard(uuid)
                if lock is not None:
                    lock.close()
        domain.console._ensure()
        return result

    def _preflight(self, config, uuid, lock=True):
        """preflight(config), waiting a moment for a disk that no domain uses but that is still
        locked: on a FUSE mount (a zfs-fuse volume) the last user's close, and with it its lock,
        reaches the daemon a little after that user has gone."""
        from ..devices.block import DiskBusyError

        deadline = time.monotonic() + VOLUME_RELEASE_WAIT
        while True:
            try:
                return preflight(config, lock=lock)
            except DiskBusyError as e:
                if time.monotonic() >= deadline or self._disk_user(e.path, exclude=uuid) is not None:
                    raise
                time.sleep(0.05)

    def _spawn(self, uuid, record, config, plans, lock, boot_action=None):
        from ..vmm.process import open_host_resources

        domain = self._handle(uuid)

        def attach_console(pid):
            self._drop_channel(uuid)
            domain.console._ensure()

        with open_host_resources(self.kvm_path, config, plans,
                                 lock_disks=not isinstance(boot_action, A.MigrateReceive)) as res:
            _, result = launcher.spawn_vmm(self.state_dir, config, persistent=record.persistent, lock=lock,
                                           kvm_fd=res.kvm_fd, disk_fds=res.disk_fds, nics=res.nics,
                                           before_boot=attach_console, boot_action=boot_action)
        return result

    def _start_in_process(self, uuid, record, config, plans, boot_action=None):
        from ..vmm.process import local_nics, machine_factory, store_hook
        from ..vmm.vmm import ConsoleLog, Vmm

        old = self._vmms.pop(uuid, None)
        if old is not None:
            old.close()
        console_log = ConsoleLog(self.state_dir.console_log(config.name))
        vmm = Vmm(config, factory=machine_factory(self.kvm, nics=local_nics(plans)),
                  next_id=self.store.next_domain_id,
                  on_state=store_hook(self.store, uuid), console_log=console_log,
                  own_process=False)
        vmm.start()
        self._vmms[uuid] = vmm
        self._drop_channel(uuid)
        self._handle(uuid).console._ensure()  # attached before the boot: nothing is missed
        try:
            return vmm.handle(boot_action or A.Boot())
        except BaseException:
            self._vmms.pop(uuid, None)
            self._drop_channel(uuid)
            vmm.close()
            console_log.close()
            raise

    def _check_can_start(self, config):
        caps_max = self.kvm.check_extension(kvm_h.KVM_CAP_MAX_VCPUS) or 4
        if config.vcpus > caps_max:
            raise ConfigError(f"domain {config.name!r} wants {config.vcpus} vCPUs; this host allows {caps_max}")

    def _running_configs(self, exclude):
        out = []
        for record in self.store.domains():
            if record.uuid != exclude and record.state in (DomainState.RUNNING.value, DomainState.PAUSED.value):
                out.append(DomainConfig.from_dict(record.config))
        return out

    def _plan_nics(self, config):
        in_use = {}
        for other in self._running_configs(str(config.uuid)):
            for mac in effective_macs(other.nics, other.uuid):
                in_use[mac] = other.name
        return plan_nics(config, self._networks, in_use)

    def _update_config(self, domain, config):
        """Store ``config`` as the domain's configuration (from its next boot on); the domain
        must be persistent and keep its UUID and name (``rename()`` changes the name)."""
        record = self._record(domain)
        if not isinstance(config, DomainConfig):
            raise ConfigError(f"a domain's configuration is an xvm.DomainConfig, not {type(config).__name__}")
        if str(config.uuid) != record.uuid or config.name != record.name:
            raise ConfigError(f"the new configuration of domain {record.name!r} must keep its uuid and name "
                              f"(it has {config.uuid} and {config.name!r})")
        if not record.persistent:
            raise StateError(f"domain {record.name!r} is transient: it has no stored configuration to change",
                             state=DomainState(record.state), operation="change the configuration of")
        self.store.update_config(record.uuid, config.to_dict())

    def _rename(self, domain, new_name):
        record = self._record(domain)
        config = DomainConfig.from_dict(record.config).replace(name=new_name)
        self.store.rename(record.uuid, config.name)
        self.store.update_config(record.uuid, config.to_dict())

    def _set_autostart(self, domain, on):
        record = self._record(domain)
        if not record.persistent:
            raise StateError(f"cannot set autostart for transient domain {record.name!r}",
                             state=None, operation="autostart")
        self.store.set_autostart(record.uuid, on)

    def _undefine(self, domain):
        uuid = str(domain.uuid)
        record = self._reconcile(uuid)
        _, channel = self._channel(uuid)
        state = DomainState(self._act(domain, A.Info())["state"]) if channel else DomainState(record.state)
        if state not in STOPPED:
            raise StateError(f"cannot undefine domain {record.name!r}: it is {state.value} "
                             "(allowed when crashed, shutoff)", state=state, operation="undefine")
        self.store.remove_domain(uuid)
        with self._lock:
            self._handles.pop(uuid, None)
        self._drop_channel(uuid)

    # -- networks -----------------------------------------------------------------------------
    def define_network(self, network):
        """Store an :class:`xvm.Network` (inactive); returns a HostNetwork.  Like a domain,
        it is known to every process on this state directory until undefined."""
        return self._networks.define(network)

    def create_network(self, network):
        """Define a network and start it (its bridge is created now)."""
        net = self._networks.define(network)
        try:
            return net.start()
        except BaseException:
            self._networks.forget(net)
            raise

    def networks(self):
        return self._networks.list()

    def lookup_network(self, name):
        """The HostNetwork called ``name``; raises NotFoundError."""
        return self._networks.lookup(name)

    def _network_users(self, net):
        return {cfg.name for cfg in self._running_configs(None)
                if any(n.network == net.name or n.bridge == net.bridge for n in cfg.nics)}

    # -- storage ------------------------------------------------------------------------------
    @property
    def storage(self):
        """The :class:`xvm.storage.Pools` of this host (its catalog is in the host's store)."""
        if self._pools is None:
            from ..storage import Pools

            self._pools = Pools(self.store, in_use=self._disk_user)
        return self._pools

    def create_pool(self, pool):
        """Define an :class:`xvm.Pool` and make its directory or ZFS dataset if missing;
        returns its :class:`~xvm.storage.StoragePool`."""
        return self.storage.create_pool(pool)

    def pools(self):
        return self.storage.pools()

    def lookup_pool(self, name):
        """The StoragePool called ``name``; raises NotFoundError (StorageNotFoundError)."""
        return self.storage.lookup_pool(name)

    def _volume_path(self, key):
        """The host path of volume "POOL/VOLUME" (its dataset mounted if need be), for a start."""
        path = self.storage.lookup_volume(key).path
        if not os.path.exists(path):
            from ..storage import StorageNotFoundError

            raise StorageNotFoundError(f"volume {key}: its data {path} is missing", target=key,
                                       operation="resolve volume")
        return path

    def _disk_user(self, path, exclude=None):
        """The name of the domain with ``path`` among its disks that is running, paused or
        being started by this host, or None: what the pools ask before changing a volume."""
        path = os.path.realpath(path)
        for record in self.store.domains():
            if record.uuid == exclude:
                continue
            if record.uuid not in self._starting and record.state not in (
                    DomainState.RUNNING.value, DomainState.PAUSED.value):
                continue
            if record.uuid not in self._starting and self._reconcile(record.uuid).state not in (
                    DomainState.RUNNING.value, DomainState.PAUSED.value):
                continue  # its VMM died
            for disk in DomainConfig.from_dict(record.config).disks:
                if disk.volume is None:
                    disk_path = disk.path
                else:
                    try:
                        volume = self.storage.lookup_volume(disk.volume)
                        disk_path = volume.pool.backend.volume_path(volume.name, mount=False)
                    except XvmError:
                        continue  # its volume is gone: it cannot be this one
                if os.path.realpath(disk_path) == path:
                    return record.name
        return None

    def _volumes_of(self, config):
        """Every disk of ``config`` as its Volume (ConfigError for a disk outside the pools)."""
        from ..storage import volume_of

        return [volume_of(self.storage, disk.volume or disk.path) for disk in config.disks]

    def clone_domain(self, source, new_name, snapshot="golden", *, progress=None):
        """A new persistent domain ``new_name`` like ``source`` (a Domain or a name), with a new
        UUID, new MACs (explicit ones are dropped: they derive from the new UUID) and, for each
        disk, a clone of its volume at ``snapshot``, named "NEW_NAME-VOLUME" in the same pool.
        All or nothing: if the define fails, the clones are deleted again. A full copy (a
        directory pool without reflinks) shows a byte bar as ``progress`` says (xvm.storage)."""
        from ..storage import clone_disks

        source = source if isinstance(source, Domain) else self.lookup(source)
        config = source.config
        if self.store.domain(str(new_name)) is not None:
            raise ConfigError(f"clone_domain: a domain named {new_name!r} exists already")
        new_uuid = uuid_module.uuid4()
        probe = config.replace(name=new_name, uuid=new_uuid, disks=(),
                               nics=tuple(dataclasses.replace(nic, mac=None) for nic in config.nics))
        volumes = self._volumes_of(config)
        clones = clone_disks(self.storage, volumes, snapshot, new_name, progress=progress)
        try:
            disks = tuple(dataclasses.replace(disk, path=None, volume=clone.key)
                          for disk, clone in zip(config.disks, clones))
            return self.define(probe.replace(disks=disks))
        except BaseException:
            for clone in reversed(clones):
                try:
                    clone.delete()
                except XvmError:
                    pass
            raise

    def _offline_disks(self, domain, operation, change):
        """Run ``change(volumes)`` on every disk of a shut-off domain while holding its lock,
        so that it cannot start meanwhile; StateError while it runs."""
        uuid = str(domain.uuid)
        with self._lock:
            record = self._reconcile(uuid)
            lock = launcher.DomainLock(self.state_dir.vmm_lockfile(uuid))
            try:
                if not lock.try_acquire():
                    state = self._vmm_state(domain) or DomainState(record.state)
                    if state in STOPPED:  # a VMM finishing its exit
                        self._drop_channel(uuid)
                        self._wait_vmm_gone(uuid, VMM_EXIT_WAIT)
                    if not lock.try_acquire():
                        raise StateError(f"cannot {operation} of domain {record.name!r}: it is "
                                         f"{state.value} (allowed when shutoff, crashed)",
                                         state=state, operation=operation)
                return change(self._volumes_of(DomainConfig.from_dict(record.config)))
            finally:
                lock.close()

    def _snapshot_disks(self, domain, name, progress=None):
        from ..storage import snapshot_disks

        return self._offline_disks(domain, "snapshot the disks", lambda volumes: snapshot_disks(
            self.storage, volumes, name, progress=progress))

    def _rollback_disks(self, domain, name, progress=None):
        from ..storage import rollback_disks

        return self._offline_disks(domain, "roll back the disks", lambda volumes: rollback_disks(
            self.storage, volumes, name, progress=progress))

    # -- closing ------------------------------------------------------------------------------
    def close(self):
        """Let go of this host.  Running domains keep running (their VMMs are processes of
        their own), except in-process ones, which end with this host."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handles = list(self._handles.values())
            vmms = list(self._vmms.values())
            self._vmms.clear()
        for listener in self._listeners:
            listener.close()
        for handle in handles:
            handle.console._reset_attachment()
        for vmm in vmms:  # in-process domains end with this host
            try:
                vmm.handle(A.Destroy())
            except XvmError:
                pass
            vmm.close()
        for uuid in list(self._channels):
            self._drop_channel(uuid)
        for lock in self._vmm_locks.values():
            lock.close()
        self._vmm_locks.clear()
        launcher.reap()
        self.store.close()  # active networks keep their bridges: they are stored, like domains
        self.kvm.close()


def _remove_cgroups(uuid):
    """What the scheduler of a VMM that was killed left under the cgroup root."""
    from ..sched import remove_domain_cgroup

    try:
        remove_domain_cgroup(uuid)
    except XvmError as e:
        log.warning("domain %s: cannot remove the cgroups its VMM left: %s", uuid, e)


def _offline_info(record):
    config = record.config
    return {"name": record.name, "uuid": record.uuid, "id": None, "state": record.state,
            "boot_count": 0, "crash_reason": record.reason if record.state == "crashed" else None,
            "pid": None, "vcpus": config.get("vcpus"), "memory_mib": config.get("memory_mib"),
            "started_at": None, "vcpu_thread_ids": []}
