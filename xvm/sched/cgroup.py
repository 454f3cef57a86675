"""One cgroup per domain on the kernel's cpu controller, laid out the way libvirt does.

    <root>/<domain>/            cpu.shares | cpu.weight      (weight)
                                cpu.cfs_period_us + cpu.cfs_quota_us | cpu.max   (cap)
    <root>/<domain>/vcpu0 ...   one per vCPU thread
    <root>/<domain>/emulator    the VMM's other threads (libvirt's emulatorpin group)

``<root>`` is ``<cpu controller mount>/xvm`` unless given.  cgroup v1 moves single threads
through ``tasks``; cgroup v2 makes the children ``threaded`` and moves threads through
``cgroup.threads`` (Documentation/admin-guide/cgroup-v2.rst, "Threads").

Mappings (the module functions below; all exact integers, documented choices):

* weight → v1 ``cpu.shares`` = weight × 4: Xen's default 256 becomes the kernel's default 1024,
  ratios are kept exactly, 1–65535 → 4–262140 (v1 accepts 2–262144).
* weight → v2 ``cpu.weight`` = round(weight × 100 / 256) clamped to 1–10000: 256 → the kernel's
  default 100, ratios kept (to rounding) for weights up to 25600; above, all map to 10000.
* cap → the domain cgroup's CFS bandwidth, over all its vCPUs (cap 150 = 1.5 CPUs): the period
  is 30 ms, Xen's accounting period, and quota = cap × 300 µs.  The kernel's smallest quota is
  1 ms, so caps 1–3 use libvirt's 100 ms period with quota = cap × 1000 µs.  Either way
  quota / period is exactly cap / 100; the short period bounds how far a busy domain can run
  ahead of its cap inside any window to one period's quota.

Weight is set per domain (a domain with more vCPUs gets no more weight): Xen's "512 gets twice
the CPU of 256" as libvirt's ``<shares>`` gives it.  Xen's credit accounting differs in one
case: it multiplies a domain's weight by its *active* vCPUs, so there a fully busy 2-vCPU
domain weighs twice a 1-vCPU one of the same weight; here it weighs the same.  Children keep the default share, so a
domain's vCPUs and emulator threads share its CPU evenly.

The parent ``<root>`` is itself a scheduling group, and the kernel spreads a group's shares over
the CPUs in proportion to where its load runs.  With the parent at the default 1024, every
domain together would weigh as much as one host process, and a weight-1 domain alone on one CPU
would lose that CPU to any host process while a heavy domain runs on another.  So :meth:`apply`
and :meth:`remove` set the parent's weight to the sum of its domains' (clamped to the
controller's range; the default when empty): each domain then weighs against host processes as
if it sat at the top level — a weight-256 domain like one ordinary process, Xen's dom0-like peer.
"""
import errno
import os
import re
import time
import uuid as uuid_module

from ..errors import ConfigError, HostError
from .config import Sched

V1_MOUNT = "/sys/fs/cgroup/cpu"
DEFAULT_PERIOD_US = 100_000  # the kernel's (and libvirt's) default CFS period
CAP_PERIOD_US = 30_000  # Xen credit's accounting period
MIN_QUOTA_US = 1_000  # the kernel's minimum cfs quota
EMULATOR = "emulator"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_REMOVE_TIMEOUT = 2.0


def shares_for_weight(weight):
    """v1 ``cpu.shares`` for a credit weight: weight × 4 (256 → 1024)."""
    return Sched(weight=weight).weight * 4


def cpu_weight_for_weight(weight):
    """v2 ``cpu.weight`` for a credit weight: round(weight × 100 / 256) in 1–10000 (256 → 100)."""
    return max(1, min(10000, (Sched(weight=weight).weight * 100 + 128) // 256))


def cfs_bandwidth(cap):
    """``(period_us, quota_us)`` for a cap; quota -1 (unlimited) for cap 0."""
    cap = Sched(cap=cap).cap
    if cap == 0:
        return DEFAULT_PERIOD_US, -1
    if cap * CAP_PERIOD_US // 100 >= MIN_QUOTA_US:
        return CAP_PERIOD_US, cap * CAP_PERIOD_US // 100
    return DEFAULT_PERIOD_US, cap * DEFAULT_PERIOD_US // 100


def cpu_max_value(cap):
    """v2 ``cpu.max`` for a cap: ``"<quota> <period>"``, or ``"max <period>"`` for cap 0."""
    period, quota = cfs_bandwidth(cap)
    return f"{'max' if quota < 0 else quota} {period}"


def _mounts():
    """``(mount point, fstype, super options)`` of every cgroup mount, from mountinfo."""
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, options = (right.split() + ["", ""])[:3]
            if fstype in ("cgroup", "cgroup2"):
                point = left.split()[4].replace("\\040", " ")
                result.append((point, fstype, set(options.split(","))))
    return result


def _mount_of(path):
    """The cgroup mount that holds ``path`` (the longest matching mount point)."""
    best = None
    for mount in _mounts():
        point = mount[0].rstrip("/") or "/"
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) > len(best[0]):
                best = mount
    return best


def _v2_has_cpu(point):
    try:
        with open(os.path.join(point, "cgroup.controllers")) as f:
            return "cpu" in f.read().split()
    except OSError:
        return False


def detect():
    """``(version, mount point)`` of this host's cpu controller, or raise HostError.

    cgroup v1 when a ``cgroup`` mount carries the cpu controller and is writable; else v2 when a
    ``cgroup2`` mount lists ``cpu`` in ``cgroup.controllers``.
    """
    mounts = _mounts()
    for point, fstype, options in mounts:
        if fstype == "cgroup" and "cpu" in options:
            if os.access(point, os.W_OK):
                return 1, point
            raise HostError(f"the cgroup v1 cpu controller at {point} is not writable by this process "
                            "(run as root or delegate it)", errno.EACCES)
    for point, fstype, _ in mounts:
        if fstype == "cgroup2" and _v2_has_cpu(point):
            return 2, point
    raise HostError("this host has no cgroup cpu controller (no cgroup v1 'cpu' mount, "
                    "no cgroup2 mount offering 'cpu')", errno.ENOENT)


def _domain_dir_name(name_or_uuid):
    if isinstance(name_or_uuid, uuid_module.UUID):
        return str(name_or_uuid)
    if not isinstance(name_or_uuid, str) or not _NAME.fullmatch(name_or_uuid):
        raise ConfigError(f"{name_or_uuid!r} is not a domain name or UUID usable as a cgroup name")
    return name_or_uuid


def _oserror(exc, action, path):
    why = exc.strerror or os.strerror(exc.errno)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why += " (no write access to the cgroup cpu controller: run as root or delegate it)"
    return HostError(f"cannot {action} {path}: {why}", exc.errno)


def _write(path, value):
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as exc:
        raise _oserror(exc, f"write {str(value)!r} to", path) from None


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as exc:
        raise _oserror(exc, "read", path) from None


def _tgid(tid):
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    raise HostError(f"thread {tid} does not exist", errno.ESRCH)


class DomainCgroup:
    """The cgroups of one domain: ``DomainCgroup("web")``, then :meth:`place`, :meth:`apply`,
    :meth:`remove`.

    The constructor only detects the controller (HostError if there is none) and writes nothing,
    so ``DomainCgroup(name).remove()`` cleans up after a VMM that died.  ``root`` is the
    directory that holds the domain cgroups (default ``<mount>/xvm``).
    """

    def __init__(self, name_or_uuid, *, root=None):
        self.name = _domain_dir_name(name_or_uuid)
        if root is None:
            self.version, self.mount = detect()
            root = os.path.join(self.mount, "xvm")
        else:
            root = os.path.abspath(root)
            mount = _mount_of(root)
            if mount is None or (mount[1] == "cgroup" and "cpu" not in mount[2]) or (
                    mount[1] == "cgroup2" and not _v2_has_cpu(mount[0])):
                raise HostError(f"{root} is not on a cgroup mount with the cpu controller", errno.ENOENT)
            self.version, self.mount = (1 if mount[1] == "cgroup" else 2), mount[0]
        self.root = root
        self.path = os.path.join(root, self.name)
        self.delegated = False

    @classmethod
    def delegated_to_this_process(cls, name_or_uuid, path, version):
        """The domain cgroup ``path``, made by root and handed (chowned) to this unprivileged
        process, which sees no other cgroup (a confined VMM, :func:`~xvm.sched.delegate`).
        It creates and removes the children, moves its threads and writes the settings;
        balancing the parent and removing ``path`` itself are root's (the host's) work."""
        self = cls.__new__(cls)
        self.name = _domain_dir_name(name_or_uuid)
        self.version = version
        self.root = os.path.dirname(path)
        self.mount = self.path = path
        self.delegated = True
        return self

    def chown(self, uid, gid):
        """Hand the domain cgroup, its files and its children to ``uid``/``gid`` (delegation)."""
        for dirpath, _, filenames in os.walk(self.path):
            for path in [dirpath] + [os.path.join(dirpath, name) for name in filenames]:
                try:
                    os.chown(path, uid, gid)
                except OSError as exc:
                    raise _oserror(exc, "delegate", path) from None

    def __repr__(self):
        return f"DomainCgroup({self.path!r}, v{self.version})"

    def vcpu_path(self, vcpu):
        return os.path.join(self.path, f"vcpu{vcpu}")

    @property
    def emulator_path(self):
        return os.path.join(self.path, EMULATOR)

    def exists(self):
        return os.path.isdir(self.path)

    # -- creation ----------------------------------------------------------------------------

    def _mkdir(self, path):
        try:
            os.mkdir(path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _oserror(exc, "create cgroup", path) from None
        return True

    def _enable_cpu(self, path):
        """v2: make the cpu controller available to ``path``'s children."""
        control = os.path.join(path, "cgroup.subtree_control")
        if "cpu" not in _read(control).split():
            _write(control, "+cpu")

    def create(self, vcpus):
        """Create the domain cgroup with ``vcpu0``..``vcpu{vcpus-1}`` and ``emulator``; idempotent."""
        if not isinstance(vcpus, int) or isinstance(vcpus, bool) or vcpus < 0:
            raise ConfigError(f"vcpus must be a non-negative integer, not {vcpus!r}")
        missing = []
        path = self.path
        while not os.path.isdir(path) and path != self.mount:
            missing.append(path)
            path = os.path.dirname(path)
        for path in reversed(missing):
            if self.version == 2:
                self._enable_cpu(os.path.dirname(path))
            self._mkdir(path)
        if missing:
            self._balance_parent()
        children = [self.vcpu_path(i) for i in range(vcpus)] + [self.emulator_path]
        if self.version == 2:
            self._enable_cpu(self.path)
        for child in children:
            self._mkdir(child)
            if self.version == 2 and _read(os.path.join(child, "cgroup.type")) != "threaded":
                _write(os.path.join(child, "cgroup.type"), "threaded")

    # -- threads -----------------------------------------------------------------------------

    def _move(self, cgroup, tid):
        name = "tasks" if self.version == 1 else "cgroup.threads"
        try:
            with open(os.path.join(cgroup, name), "w") as f:
                f.write(str(tid))
        except ProcessLookupError:
            raise HostError(f"cannot move thread {tid} into {cgroup}: it does not exist", errno.ESRCH) from None
        except OSError as exc:
            raise _oserror(exc, f"move thread {tid} into", cgroup) from None

    def place(self, vcpu_tids, other_tids=()):
        """Move vCPU thread ``vcpu_tids[i]`` into ``vcpu<i>`` and ``other_tids`` into ``emulator``.

        Creates the cgroups as needed.  On v2 the whole process first joins the domain cgroup
        (its threads may only move inside one threaded subtree).
        """
        vcpu_tids, other_tids = list(vcpu_tids), list(other_tids)
        for tid in vcpu_tids + other_tids:
            if not isinstance(tid, int) or isinstance(tid, bool) or tid <= 0:
                raise ConfigError(f"thread id must be a positive integer, not {tid!r}")
        self.create(len(vcpu_tids))
        if self.version == 2 and (vcpu_tids or other_tids):
            _write(os.path.join(self.path, "cgroup.procs"), _tgid((vcpu_tids + other_tids)[0]))
        for tid in other_tids:
            self._move(self.emulator_path, tid)
        for vcpu, tid in enumerate(vcpu_tids):
            self._move(self.vcpu_path(vcpu), tid)

    def move(self, tid, vcpu=None):
        """Move one thread into ``vcpu<vcpu>`` (or, for None, ``emulator``); the cgroups must
        exist (:meth:`create`, :meth:`place`).  HostError with errno ESRCH if it is gone."""
        self._move(self.emulator_path if vcpu is None else self.vcpu_path(vcpu), tid)

    def threads(self, cgroup=None):
        """Thread ids in one of this domain's cgroups (default: the domain cgroup itself)."""
        name = "tasks" if self.version == 1 else "cgroup.threads"
        text = _read(os.path.join(cgroup or self.path, name))
        return [int(t) for t in text.split()]

    # -- settings ----------------------------------------------------------------------------

    def apply(self, sched, vcpus):
        """Write ``sched``'s weight and cap to the domain cgroup (live; no pause needed).

        ``cap`` may not exceed 100 × ``vcpus`` (Xen refuses such caps too).
        """
        if not isinstance(sched, Sched):
            raise ConfigError(f"apply() needs a Sched, not {sched!r}")
        if not isinstance(vcpus, int) or isinstance(vcpus, bool) or vcpus < 1:
            raise ConfigError(f"vcpus must be a positive integer, not {vcpus!r}")
        if sched.cap > 100 * vcpus:
            raise ConfigError(f"cap {sched.cap} exceeds {100 * vcpus}, all of the domain's {vcpus} vCPU(s)")
        if not self.exists():
            self.create(0)
        period, quota = cfs_bandwidth(sched.cap)
        if self.version == 1:
            _write(os.path.join(self.path, "cpu.shares"), shares_for_weight(sched.weight))
            # Lift the old quota first: a (new period, old quota) pair may be refused.
            _write(os.path.join(self.path, "cpu.cfs_quota_us"), -1)
            _write(os.path.join(self.path, "cpu.cfs_period_us"), period)
            _write(os.path.join(self.path, "cpu.cfs_quota_us"), quota)
        else:
            _write(os.path.join(self.path, "cpu.weight"), cpu_weight_for_weight(sched.weight))
            _write(os.path.join(self.path, "cpu.max"), cpu_max_value(sched.cap))
        self._balance_parent()

    def _balance_parent(self):
        """Give ``<root>`` the sum of its domains' weights (see the module docstring)."""
        name, low, high, default = (("cpu.shares", 2, 262144, 1024) if self.version == 1
                                    else ("cpu.weight", 1, 10000, 100))
        if self.delegated or self.root == self.mount or not os.path.isdir(self.root):
            return
        total = 0
        for entry in os.scandir(self.root):
            try:
                if entry.is_dir():
                    total += int(_read(os.path.join(entry.path, name)))
            except (HostError, ValueError):
                pass  # a domain being removed meanwhile
        _write(os.path.join(self.root, name), min(high, max(low, total)) if total else default)

    def params(self):
        """What the kernel holds now, in libvirt's ``schedinfo`` names (quota -1 = unlimited)."""
        def bandwidth(path):
            if self.version == 1:
                return (int(_read(os.path.join(path, "cpu.cfs_period_us"))),
                        int(_read(os.path.join(path, "cpu.cfs_quota_us"))))
            quota, period = _read(os.path.join(path, "cpu.max")).split()
            return int(period), (-1 if quota == "max" else int(quota))

        shares = "cpu.shares" if self.version == 1 else "cpu.weight"
        result = {"cpu_shares": int(_read(os.path.join(self.path, shares)))}
        vcpu0 = self.vcpu_path(0)
        if os.path.isdir(vcpu0):
            result["vcpu_period"], result["vcpu_quota"] = bandwidth(vcpu0)
        if os.path.isdir(self.emulator_path):
            result["emulator_period"], result["emulator_quota"] = bandwidth(self.emulator_path)
        result["global_period"], result["global_quota"] = bandwidth(self.path)
        return result

    # -- removal -----------------------------------------------------------------------------

    def _evacuate_target(self):
        # v1: where the xvm tree hangs from.  v2: the mount root, the one cgroup that may hold
        # processes whatever its subtree_control says.  Delegated: the domain cgroup itself.
        if self.delegated:
            return self.path
        if self.version == 2 or self.root == self.mount:
            return self.mount
        return os.path.dirname(self.root)

    def _evacuate(self, cgroup, target):
        name = "tasks" if self.version == 1 else "cgroup.procs"
        try:
            with open(os.path.join(cgroup, name)) as f:
                ids = f.read().split()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _oserror(exc, "read", os.path.join(cgroup, name)) from None
        for task in ids:
            try:
                with open(os.path.join(target, name), "w") as f:
                    f.write(task)
            except ProcessLookupError:
                pass  # exited meanwhile
            except OSError as exc:
                raise _oserror(exc, f"move {task} out of {cgroup} into", target) from None

    def remove(self):
        """Move any remaining threads out and delete the domain's cgroups; idempotent.

        Retries briefly while the kernel still counts exiting threads (a SIGKILLed VMM).
        """
        if not self.exists():
            return
        self._remove()
        self._balance_parent()

    def _remove(self):
        target = self._evacuate_target()
        deadline = time.monotonic() + _REMOVE_TIMEOUT
        while True:
            try:
                if self.version == 2:
                    # A threaded domain's cgroup.procs lists every process of its subtree (and
                    # the threaded children refuse to list any): moving those empties it all.
                    self._evacuate(self.path, target)
                for dirpath, dirnames, _ in os.walk(self.path, topdown=False):
                    if self.delegated and dirpath == self.path:
                        break  # emptied of children; the host removes it once this process ends
                    if self.version == 1:
                        self._evacuate(dirpath, target)
                    try:
                        os.rmdir(dirpath)
                    except FileNotFoundError:
                        pass
                return
            except HostError:
                raise
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise _oserror(exc, "remove cgroup", self.path) from None
                if time.monotonic() > deadline:
                    raise HostError(f"cannot remove cgroup {exc.filename}: it still has threads "
                                    f"after {_REMOVE_TIMEOUT:g}s", errno.EBUSY) from None
                time.sleep(0.02)
