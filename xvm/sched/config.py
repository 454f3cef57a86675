"""Scheduler settings of a domain: Xen credit's weight and cap, and vCPU pinning.

Semantics (Xen ``xl sched-credit``, ``xen/common/sched/credit.c``):

* ``weight`` 1-65535, default 256: when domains contend for a CPU, one with weight 512
  gets twice the CPU of one with 256; an uncontended domain gets all it can use.
* ``cap`` in percent of one physical CPU, 0 = none (100 = one CPU, 150 = one and a half);
  it holds even when the host is idle.  Xen's ``xen_domctl_sched_credit`` keeps both in
  16 bits, hence the upper bounds.
* pinning: a hard affinity (a set of host CPUs) per vCPU, and one for the other threads.
"""
import os
from dataclasses import asdict, dataclass

from ..errors import ConfigError

DEFAULT_WEIGHT = 256
MIN_WEIGHT = 1
MAX_WEIGHT = 65535
MAX_CAP = 65535


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Sched:
    """``Sched(weight=256, cap=0)``: a domain's credit-scheduler parameters, validated."""

    weight: int = DEFAULT_WEIGHT
    cap: int = 0

    def __post_init__(self):
        if not _is_int(self.weight) or not MIN_WEIGHT <= self.weight <= MAX_WEIGHT:
            raise ConfigError(
                f"scheduler weight must be an integer from {MIN_WEIGHT} to {MAX_WEIGHT}, not {self.weight!r}"
            )
        if not _is_int(self.cap) or not 0 <= self.cap <= MAX_CAP:
            raise ConfigError(
                f"scheduler cap must be an integer percentage of one CPU from 0 (no cap) to {MAX_CAP}, "
                f"not {self.cap!r}"
            )

    def replace(self, *, weight=None, cap=None):
        """A copy with ``weight`` and/or ``cap`` changed (None keeps the current value)."""
        return Sched(self.weight if weight is None else weight, self.cap if cap is None else cap)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ConfigError(f"scheduler settings must be a mapping, not {type(data).__name__}")
        unknown = set(data) - {"weight", "cap"}
        if unknown:
            raise ConfigError(f"unknown scheduler setting(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(**data)


def host_cpus():
    """The host CPUs that exist and are online (``/sys/devices/system/cpu/online``).

    Falls back to this process's affinity mask where sysfs is not readable.
    """
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return parse_cpuset(f.read().strip())
    except (OSError, ConfigError):
        return frozenset(os.sched_getaffinity(0))


def parse_cpuset(text):
    """Parse the kernel's / libvirt's cpu-list syntax: ``"0-2,5"``, ``"0-3,^1"``."""
    if not isinstance(text, str):
        raise ConfigError(f"a CPU list must be a string, not {type(text).__name__}")
    included, excluded = set(), set()
    for item in text.replace(" ", "").split(","):
        if not item:
            raise ConfigError(f"CPU list {text!r} has an empty element")
        target = included
        if item.startswith("^"):
            target, item = excluded, item[1:]
        low, sep, high = item.partition("-")
        try:
            first, last = int(low), int(high if sep else low)
        except ValueError:
            raise ConfigError(f"CPU list {text!r}: {item!r} is not a CPU number or range") from None
        if first < 0 or last < first:
            raise ConfigError(f"CPU list {text!r}: {item!r} is not a valid range")
        target.update(range(first, last + 1))
    return frozenset(included - excluded)


def format_cpuset(cpus):
    """``{0, 1, 2, 5}`` → ``"0-2,5"`` (the kernel's Cpus_allowed_list layout)."""
    parts, cpus = [], sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def validate_cpuset(cpus, *, what="CPU set"):
    """A non-empty frozenset of CPUs that exist on this host, from a set, a list or ``"0-2,5"``."""
    if isinstance(cpus, str):
        result = parse_cpuset(cpus)
    elif isinstance(cpus, (set, frozenset, list, tuple, range)):
        if not all(_is_int(cpu) for cpu in cpus):
            raise ConfigError(f"{what} {cpus!r} must contain only integer CPU numbers")
        result = frozenset(cpus)
    else:
        raise ConfigError(f"{what} must be a set, a list or a string like '0-2,5', not {cpus!r}")
    if not result:
        raise ConfigError(f"{what} {cpus!r} is empty")
    missing = result - host_cpus()
    if missing:
        raise ConfigError(
            f"{what} {cpus!r} names CPU(s) {format_cpuset(missing)} that this host does not have "
            f"(online: {format_cpuset(host_cpus())})"
        )
    return result


def validate_pins(vcpu_pins, vcpus):
    """``{vcpu: cpus}`` checked against ``vcpus`` and the host → ``{vcpu: frozenset}``."""
    if not _is_int(vcpus) or vcpus < 1:
        raise ConfigError(f"vcpus must be a positive integer, not {vcpus!r}")
    if not isinstance(vcpu_pins, dict):
        raise ConfigError(f"vcpu_pins must be a mapping of vCPU index to CPUs, not {vcpu_pins!r}")
    result = {}
    for vcpu, cpus in vcpu_pins.items():
        if not _is_int(vcpu) or not 0 <= vcpu < vcpus:
            raise ConfigError(f"vcpu_pins: vCPU {vcpu!r} is out of range for a domain with {vcpus} vCPU(s)")
        result[vcpu] = validate_cpuset(cpus, what=f"vcpu_pins[{vcpu}]")
    return dict(sorted(result.items()))
