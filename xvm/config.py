"""Typed, validated domain configuration: plain data.

Constructing a :class:`DomainConfig` (or a :class:`~xvm.devices.block.Disk`,
:class:`~xvm.net.Nic`) checks values only and touches nothing on the host, so
a stored or migrated configuration can always be rebuilt.  What depends on the
host (the kernel is there, a disk opens and is not locked) is checked by
:func:`preflight` when a domain starts.
"""
import os
import re
import uuid as uuid_module
from dataclasses import MISSING, dataclass, field, fields, replace

from .errors import ConfigError
from .sched.config import Sched, validate_cpuset, validate_pins

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
MIN_MEMORY_MIB = 16
MAX_MEMORY_MIB = 1 << 32  # 4 PiB: all x86-64's 52 physical address bits can reach
MAX_VCPUS = 255
CMDLINE_MAX = 4095
HOST_STOP_POLICIES = ("shutdown", "destroy", "ignore")


@dataclass(frozen=True, kw_only=True)
class DomainConfig:
    """What a domain is: validated on construction, immutable afterwards.

    ``DomainConfig(name="web", memory_mib=256, kernel="vmlinux", vcpus=2)``;
    derive a changed copy with :meth:`replace`.  Paths are made absolute but
    not looked at: :func:`preflight` does that.  :meth:`to_dict` and
    :meth:`from_dict` convert to and from JSON-able data, exactly.
    """

    name: str
    memory_mib: int
    kernel: str
    uuid: uuid_module.UUID = None
    vcpus: int = 1
    initrd: str = None
    cmdline: str = ""
    disks: tuple = field(default=())
    nics: tuple = field(default=())
    disable_cpu_features: tuple = field(default=())
    virtio_transport: str = "mmio"  # "mmio" or "pci" (virtio-pci with MSI-X)
    sched: Sched = Sched()  # credit weight and cap (None: the default)
    vcpu_pins: dict = field(default_factory=dict)  # {vcpu: CPUs}: each vCPU thread's hard affinity
    emulator_pin: frozenset = None  # CPUs of the VMM's other threads; None: wherever the VMM may run
    # What xvmd does with the domain when it stops (xVM's onxendstop): "shutdown" (the ACPI
    # power button, then destroy after shutdown_timeout seconds), "destroy", or "ignore"
    # (it keeps running; a restarted xvmd adopts it).
    on_host_stop: str = "shutdown"
    shutdown_timeout: float = 60.0

    def __post_init__(self):
        set_ = object.__setattr__.__get__(self)
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError(
                f"domain name {self.name!r} is invalid: use 1-64 letters, digits, '_', '.', '+' or '-', "
                "starting with a letter or digit"
            )
        set_("uuid", _uuid(self.uuid))
        if not _is_int(self.vcpus) or not 1 <= self.vcpus <= MAX_VCPUS:
            raise ConfigError(f"vcpus must be an integer from 1 to {MAX_VCPUS}, not {self.vcpus!r}")
        if not _is_int(self.memory_mib) or self.memory_mib < MIN_MEMORY_MIB:
            raise ConfigError(f"memory_mib must be an integer of at least {MIN_MEMORY_MIB}, not {self.memory_mib!r}")
        if self.memory_mib > MAX_MEMORY_MIB:
            raise ConfigError(f"memory_mib must be at most {MAX_MEMORY_MIB} (4 PiB, the most x86-64 can address), "
                              f"not {self.memory_mib!r}")
        set_("kernel", _boot_file(self.kernel, "kernel"))
        if self.initrd is not None:
            set_("initrd", _boot_file(self.initrd, "initrd"))
        if not isinstance(self.cmdline, str):
            raise ConfigError(f"cmdline must be a string, not {type(self.cmdline).__name__}")
        if "\0" in self.cmdline or len(self.cmdline.encode()) > CMDLINE_MAX:
            raise ConfigError(f"cmdline must be at most {CMDLINE_MAX} bytes with no NUL character")
        set_("disable_cpu_features", _cpu_features(self.disable_cpu_features))
        set_("disks", _disks(self.disks))
        if self.virtio_transport not in ("mmio", "pci"):
            raise ConfigError(f"virtio_transport must be 'mmio' or 'pci', not {self.virtio_transport!r}")
        set_("nics", _nics(self.nics, self.uuid))
        set_("sched", _sched(self.sched, self.vcpus))
        set_("vcpu_pins", _vcpu_pins(self.vcpu_pins, self.vcpus))
        if self.emulator_pin is not None:
            set_("emulator_pin", validate_cpuset(self.emulator_pin, what="emulator_pin"))
        if self.on_host_stop not in HOST_STOP_POLICIES:
            raise ConfigError(f"on_host_stop must be one of {', '.join(map(repr, HOST_STOP_POLICIES))}, "
                              f"not {self.on_host_stop!r}")
        if isinstance(self.shutdown_timeout, bool) or not isinstance(self.shutdown_timeout, (int, float)) \
                or not 0 < self.shutdown_timeout <= 3600:
            raise ConfigError(f"shutdown_timeout must be a number of seconds in (0, 3600], "
                              f"not {self.shutdown_timeout!r}")
        set_("shutdown_timeout", float(self.shutdown_timeout))

    @property
    def memory_bytes(self):
        return self.memory_mib << 20

    def replace(self, **changes):
        """A copy with ``changes`` applied, validated again."""
        return replace(self, **changes)

    def to_dict(self):
        """The config as JSON-able data: ``uuid`` a string, ``disks`` and ``nics``
        lists of dicts, ``disable_cpu_features`` a list, ``sched`` a dict,
        ``vcpu_pins`` ``{"0": [1, 2]}`` (JSON keys are strings), ``emulator_pin``
        a sorted list or None."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "uuid":
                value = str(value)
            elif f.name in ("disks", "nics"):
                value = [item.to_dict() for item in value]
            elif f.name == "disable_cpu_features":
                value = list(value)
            elif f.name == "sched":
                value = value.to_dict()
            elif f.name == "vcpu_pins":
                value = {str(vcpu): sorted(cpus) for vcpu, cpus in value.items()}
            elif f.name == "emulator_pin" and value is not None:
                value = sorted(value)
            out[f.name] = value
        return out

    def to_xml(self):
        """libvirt domain XML (validates against libvirt's schema): :mod:`xvm.xml`."""
        from .xml import config_to_xml
        return config_to_xml(self)

    @classmethod
    def from_xml(cls, text):
        """The config described by libvirt domain XML; warnings (ignored elements) are
        logged.  Malformed, hostile or unsupported XML raises ConfigError."""
        import logging

        from .xml import config_from_xml
        config, warnings = config_from_xml(text)
        for warning in warnings:
            logging.getLogger(__name__).warning("%s", warning)
        return config

    @classmethod
    def from_dict(cls, data):
        """The config that :meth:`to_dict` gave ``data``, validated like the
        constructor; a ConfigError names an unknown, missing or bad field."""
        from .devices.block import Disk
        from .net import Nic

        data = _fields_of(cls, data, "domain config")
        for name, item_cls in (("disks", Disk), ("nics", Nic)):
            if name in data:
                items = data[name]
                if not isinstance(items, (list, tuple)):
                    raise ConfigError(f"domain config field {name!r} must be a list, "
                                      f"not {type(items).__name__}")
                data[name] = tuple(item if isinstance(item, item_cls) else item_cls.from_dict(item)
                                   for item in items)
        if isinstance(data.get("sched"), dict):
            data["sched"] = Sched.from_dict(data["sched"])
        if isinstance(data.get("vcpu_pins"), dict):
            data["vcpu_pins"] = {_vcpu_key(key): cpus for key, cpus in data["vcpu_pins"].items()}
        return cls(**data)


def _fields_of(cls, data, what):
    """``data`` (a mapping) as keyword arguments for ``cls``; ConfigError for a
    field ``cls`` does not have or a required field that is missing."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a dict, not {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = [name for name in data if name not in known]
    if unknown:
        raise ConfigError(f"{what}: unknown field(s) {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(known)}")
    missing = [name for name, f in known.items() if name not in data
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{what}: missing field(s) {', '.join(map(repr, missing))}")
    return dict(data)


def preflight(config, lock=True):
    """Check what ``config`` needs from the host before a domain starts: the
    kernel and initrd exist, are regular files and readable; every disk exists,
    is a regular file or block device, opens (for writing unless read-only), is
    not locked by another user and is a whole number of sectors.  Raises
    ConfigError (DiskConfigError, DiskBusyError for the disks); returns None.
    Volume disks (``Disk(volume=...)``) must have been resolved to paths by the
    host first (:func:`resolve_disks`).  ``lock=False``: a disk may be locked by its
    user (a live migration's destination: the source holds it until the switchover)."""
    _check_boot_file(config.kernel, "kernel")
    if config.initrd is not None:
        _check_boot_file(config.initrd, "initrd")
    seen = {}
    for disk in config.disks:
        disk.check(lock=lock)
        real = os.path.realpath(disk.path)
        if real in seen:
            raise ConfigError(f"disk {real} is given more than once "
                              f"(as {seen[real]} and {disk.path})")
        seen[real] = disk.path


def resolve_disks(config, volume_path):
    """``config`` with every volume disk replaced by a path disk: ``volume_path("POOL/VOLUME")``
    gives the path. What a host does when the domain starts; the stored config keeps the names."""
    if not any(disk.volume is not None for disk in config.disks):
        return config
    return config.replace(disks=tuple(disk if disk.volume is None else disk.resolved(volume_path(disk.volume))
                                      for disk in config.disks))


def _cpu_features(names):
    from .machine.cpu import CPU_FEATURES

    try:
        names = (names,) if isinstance(names, str) else tuple(names)
        unknown = [name for name in names if name not in CPU_FEATURES]
    except TypeError:
        raise ConfigError(f"disable_cpu_features must be a list of feature names, not {names!r}") from None
    if unknown:
        raise ConfigError(
            f"unknown CPU feature(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(CPU_FEATURES))}"
        )
    return names


def _disks(disks):
    from .devices.block import Disk

    disks = tuple(disks)
    for disk in disks:
        if not isinstance(disk, Disk):
            raise ConfigError(f"disks must be xvm.Disk objects, not {type(disk).__name__}")
    sources = [disk.volume or os.path.normpath(disk.path) for disk in disks]  # symlinks: preflight()
    for source in sources:
        if sources.count(source) > 1:
            raise ConfigError(f"disk {source} is given more than once")
    return disks


def _sched(sched, vcpus):
    if sched is None:
        return Sched()
    if not isinstance(sched, Sched):
        raise ConfigError(f"sched must be an xvm.Sched, not {sched!r}")
    if sched.cap > 100 * vcpus:
        raise ConfigError(f"sched cap {sched.cap} exceeds {100 * vcpus}, all of the domain's {vcpus} vCPU(s)")
    return sched


def _vcpu_pins(pins, vcpus):
    return {} if pins is None else validate_pins(pins, vcpus)


def _vcpu_key(key):
    """A ``vcpu_pins`` key from JSON ("0") back to its vCPU index; others are left to validate_pins."""
    if isinstance(key, str) and key.isdigit():
        return int(key)
    return key


def _nics(nics, domain_uuid):
    from .net import validate_nics

    return validate_nics(nics, domain_uuid)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _uuid(value):
    if value is None:
        return uuid_module.uuid4()
    if isinstance(value, uuid_module.UUID):
        return value
    try:
        return uuid_module.UUID(str(value))
    except ValueError:
        raise ConfigError(f"uuid {value!r} is not a UUID") from None


def _boot_file(path, what):
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"{what} must be a path, not {type(path).__name__}")
    return os.path.abspath(os.fspath(path))


def _check_boot_file(path, what):
    if not os.path.exists(path):
        raise ConfigError(f"{what} {path} does not exist")
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{what} {path} is not readable")
