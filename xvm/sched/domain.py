"""The scheduling of one running domain: its cgroups, where its threads are, their pins.

The VMM makes a :class:`DomainScheduler` at each boot, before it builds the machine, then
:meth:`~DomainScheduler.attach` es the vCPU threads once they run, and :meth:`~DomainScheduler.close`
s it when the machine has stopped (destroy, power-off, crash, the VMM exiting)::

    scheduler = DomainScheduler(str(config.uuid), config.vcpus, config.sched, config.vcpu_pins,
                                config.emulator_pin)
    scheduler.attach(machine.vcpu_thread_ids())
    scheduler.set_sched(Sched(weight=512))      # live, no pause
    scheduler.close()                           # the cgroups are gone

Threads: vCPU thread ``i`` goes to ``vcpu<i>`` with its pin (or the VMM's own mask); every
other thread of the VMM process goes to ``emulator`` with the emulator pin.  A thread inherits
its creator's cgroup and mask, and a vCPU thread starts a device worker when the guest's driver
sets DRIVER_OK, so :meth:`~DomainScheduler.sweep` (the VMM calls it every
:data:`SWEEP_INTERVAL` seconds and before answering about threads) moves new threads where
they belong.  An in-process VMM (``own_process=False``) shares its process with its caller
and other domains: then only the vCPU threads, and threads found in their cgroups, are its own.

Without cgroup write access (or no cpu controller) a domain with the default weight and no cap
still runs, pinned as asked; one that asks for another weight or a cap fails with a HostError
saying why.  ``$XVM_CGROUP_ROOT`` (default ``<cpu controller>/xvm``) is where the domain
cgroups go; the host uses the same to clean up after a VMM that was killed.
"""
import errno
import logging
import os

from ..errors import HostError
from .accounting import vcpu_infos
from .affinity import pin_thread
from .cgroup import DomainCgroup
from .config import Sched, validate_cpuset, validate_pins

log = logging.getLogger(__name__)

CGROUP_ROOT_ENV = "XVM_CGROUP_ROOT"
SWEEP_INTERVAL = 0.5  # seconds between looks for threads started since the last


_delegated = {}  # name -> (path, version): this process's own cgroup, given by root (delegate)


def domain_cgroup(name):
    """The :class:`DomainCgroup` of domain ``name`` (xvm uses its UUID) under
    ``$XVM_CGROUP_ROOT`` or ``<cpu controller>/xvm``; HostError if the host has no cpu controller."""
    if name in _delegated:
        return DomainCgroup.delegated_to_this_process(name, *_delegated[name])
    return DomainCgroup(name, root=os.environ.get(CGROUP_ROOT_ENV) or None)


def delegate(name, vcpus, sched, uid, gid):
    """Before a VMM drops root (:mod:`xvm.vmm.jail`): make domain ``name``'s cgroup with its
    settings (the parent balanced), hand it to ``uid``/``gid``, and have this process use
    it from now on without seeing the rest of the hierarchy.  Returns its path (for the
    jail to keep visible), or None when the host offers no usable cpu controller (the
    domain then runs without cgroups, as :class:`DomainScheduler` decides).  The cgroup
    outlives the process: :func:`remove_domain_cgroup` (the host, the fork server) removes
    it once the VMM has ended."""
    try:
        cgroup = domain_cgroup(name)
        if cgroup.version != 1:
            return None  # v2 delegation (cgroup.procs of a common ancestor) is not done yet
        cgroup.create(vcpus)
        cgroup.apply(sched or Sched(), max(vcpus, 1))
        cgroup.chown(uid, gid)
    except HostError as e:
        log.info("domain %s: no cgroup to delegate to its confined VMM: %s", name, e)
        return None
    _delegated[name] = (cgroup.path, cgroup.version)
    return cgroup.path


def rebalance(name):
    """Root's share of a delegated cgroup's live change: the parent's weight again."""
    try:
        cgroup = domain_cgroup(name)
    except HostError:
        return
    if cgroup.exists():
        cgroup._balance_parent()


def remove_domain_cgroup(name):
    """Remove the cgroups a VMM of domain ``name`` left (it was killed); True if there were any.

    A host with no cpu controller has none to remove (False); HostError if they cannot go.
    """
    try:
        cgroup = domain_cgroup(name)
    except HostError:
        return False
    existed = cgroup.exists()
    cgroup.remove()
    return existed


def _describe(sched):
    wanted = ([f"weight {sched.weight}"] if sched.weight != Sched().weight else []) + (
        [f"cap {sched.cap}"] if sched.cap else [])
    return " and ".join(wanted)


def _own_threads():
    return {int(tid) for tid in os.listdir("/proc/self/task")}


class DomainScheduler:
    """Scheduling of one boot of one domain (see the module docstring).

    ``base_affinity``: the mask of threads nobody pinned (default: this thread's now; the VMM
    passes the one it started with, since its own threads get pinned).
    """

    def __init__(self, name, vcpus, sched=None, vcpu_pins=None, emulator_pin=None, *,
                 base_affinity=None, own_process=True):
        self.name = name
        self.vcpus = vcpus
        self.sched = Sched() if sched is None else sched
        self.vcpu_pins = validate_pins(vcpu_pins or {}, vcpus)
        self.emulator_pin = None if emulator_pin is None else validate_cpuset(emulator_pin, what="emulator_pin")
        self.base_affinity = frozenset(base_affinity if base_affinity is not None else os.sched_getaffinity(0))
        self.own_process = own_process
        self.vcpu_tids = []
        self.cgroup = None
        self.no_cgroup = None  # (why, errno) when the domain runs without cgroups
        self._emulator = set()
        try:
            cgroup = domain_cgroup(name)
        except HostError as e:
            self._without_cgroups(e)
            return
        try:
            cgroup.create(vcpus)
        except HostError as e:
            _remove_quietly(cgroup)
            self._without_cgroups(e)
            return
        self.cgroup = cgroup
        try:
            cgroup.apply(self.sched, vcpus)
        except BaseException:
            self.close()
            raise

    def _without_cgroups(self, error):
        if self.sched != Sched():
            raise HostError(f"domain {self.name!r} asks for {_describe(self.sched)}, which needs the cgroup "
                            f"cpu controller: {error}", error.errno) from None
        self.no_cgroup = (str(error), error.errno)
        log.info("domain %s runs without cgroups (default weight, no cap): %s", self.name, error)

    def __repr__(self):
        return f"<DomainScheduler {self.name} {self.sched} cgroup={self.cgroup}>"

    # -- threads -----------------------------------------------------------------------------
    def attach(self, vcpu_tids):
        """Place and pin the vCPU threads (``vcpu_tids[i]`` is vCPU ``i``'s), then the others."""
        self.vcpu_tids = list(vcpu_tids)
        for vcpu, tid in enumerate(self.vcpu_tids):  # a guest that powered off at once has none left
            try:
                if self.cgroup is not None:
                    if self.cgroup.version == 2 and vcpu == 0:
                        self.cgroup.place([tid])  # the process joins the threaded subtree first
                    else:
                        self.cgroup.move(tid, vcpu)
                pin_thread(tid, self.vcpu_pins.get(vcpu, self.base_affinity))
            except HostError as e:
                if e.errno != errno.ESRCH:
                    raise
        self.sweep()

    def sweep(self):
        """Move threads started since the last sweep to ``emulator`` with the emulator mask.

        Own process: every thread that is not a vCPU's.  Either way: any thread in a vCPU's
        cgroup that is not that vCPU's thread (a device worker a vCPU thread started).
        """
        vcpus = set(self.vcpu_tids)
        alive = _own_threads()
        strays = set()
        if self.cgroup is not None:
            for vcpu, tid in enumerate(self.vcpu_tids):
                try:
                    strays.update(set(self.cgroup.threads(self.cgroup.vcpu_path(vcpu))) - {tid})
                except HostError:
                    pass  # the cgroup went (the domain is stopping)
        candidates = (alive - vcpus) if self.own_process else set()
        for tid in (candidates - self._emulator) | strays:
            self._to_emulator(tid)
        self._emulator &= alive

    def _to_emulator(self, tid):
        try:
            if self.cgroup is not None:
                self.cgroup.move(tid)
            os.sched_setaffinity(tid, self.emulator_pin or self.base_affinity)
        except ProcessLookupError:
            return
        except HostError as e:
            if e.errno == errno.ESRCH:
                return
            raise
        self._emulator.add(tid)

    # -- live changes ------------------------------------------------------------------------
    def set_sched(self, sched):
        """Make ``sched`` the domain's weight and cap now (ConfigError for a cap above its vCPUs)."""
        if self.cgroup is None:
            if sched != Sched():
                why, code = self.no_cgroup
                raise HostError(f"cannot give domain {self.name!r} {_describe(sched)}: it runs without cgroups "
                                f"({why})", code)
        else:
            self.cgroup.apply(sched, self.vcpus)
        self.sched = sched

    def pin_vcpu(self, vcpu, cpus):
        """Pin vCPU ``vcpu``'s thread to ``cpus``; returns the mask the kernel now holds."""
        cpus = validate_pins({vcpu: cpus}, self.vcpus)[vcpu]
        if vcpu >= len(self.vcpu_tids):
            raise HostError(f"vCPU {vcpu} of domain {self.name!r} has no thread", errno.ESRCH)
        mask = pin_thread(self.vcpu_tids[vcpu], cpus)
        self.vcpu_pins[vcpu] = cpus
        return mask

    def pin_emulator(self, cpus):
        """Pin every non-vCPU thread of the domain to ``cpus`` (and the ones started later)."""
        cpus = validate_cpuset(cpus, what="emulator_pin")
        self.sweep()
        for tid in sorted(self._emulator):
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:
                pass
            except OSError as e:
                raise HostError(f"cannot pin thread {tid} to CPUs {sorted(cpus)}: {e.strerror}", e.errno) from None
        self.emulator_pin = cpus

    # -- reading -----------------------------------------------------------------------------
    @property
    def emulator_threads(self):
        return sorted(self._emulator)

    def vcpu_infos(self):
        """:class:`~xvm.sched.VcpuInfo` of each vCPU, from the kernel's per-thread records."""
        return vcpu_infos(os.getpid(), self.vcpu_tids)

    def settings(self):
        """``(sched, vcpu_pins, emulator_pin)`` as they are now (kept across a guest reset)."""
        return self.sched, dict(self.vcpu_pins), self.emulator_pin

    def info(self):
        """JSON-able: the live settings, the cgroup (None without), what the kernel holds there."""
        cgroup = self.cgroup
        return {
            "weight": self.sched.weight, "cap": self.sched.cap,
            "vcpu_pins": {str(vcpu): sorted(cpus) for vcpu, cpus in self.vcpu_pins.items()},
            "emulator_pin": None if self.emulator_pin is None else sorted(self.emulator_pin),
            "cgroup": cgroup.path if cgroup else None,
            "cgroup_version": cgroup.version if cgroup else None,
            "params": cgroup.params() if cgroup and cgroup.exists() else None,
            "no_cgroup_reason": self.no_cgroup[0] if self.no_cgroup else None,
            "vcpu_thread_ids": list(self.vcpu_tids), "emulator_thread_ids": self.emulator_threads,
        }

    # -- the end -----------------------------------------------------------------------------
    def close(self):
        """Remove the domain's cgroups (threads still there move out first); idempotent."""
        cgroup, self.cgroup = self.cgroup, None
        if cgroup is not None:
            _remove_quietly(cgroup)


def _remove_quietly(cgroup):
    try:
        cgroup.remove()
    except HostError as e:
        log.warning("cannot remove %s: %s", cgroup.path, e)
