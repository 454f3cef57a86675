"""Per-vCPU accounting from the kernel's per-thread records (virsh ``vcpuinfo``'s fields).

* state: field 3 of ``/proc/<pid>/task/<tid>/stat`` (proc(5)): R → running; S, D, I → blocked;
  T, t → paused; Z, X or a thread that is gone → offline.
* cpu: field 39 (``processor``), the CPU the thread last ran on.
* cpu time: the first field of ``/proc/<pid>/task/<tid>/schedstat``, the scheduler's
  ``sum_exec_runtime`` in exact nanoseconds — not the tick-sampled utime/stime of ``stat``, so a
  thread that runs just under a tick and sleeps is charged what it ran (Xen's "accurate
  accounting").
"""
import errno
import os
from dataclasses import dataclass, field

from ..errors import HostError

_STATES = {"R": "running", "S": "blocked", "D": "blocked", "I": "blocked", "W": "blocked",
           "T": "paused", "t": "paused", "Z": "offline", "X": "offline", "x": "offline"}


@dataclass(frozen=True)
class VcpuInfo:
    """One vCPU as ``virsh vcpuinfo`` shows it; ``cpu`` is -1 and ``affinity`` empty when offline."""

    number: int
    state: str
    cpu_time_ns: int
    cpu: int
    affinity: frozenset = field(default=frozenset())

    def to_dict(self):
        return {"number": self.number, "state": self.state, "cpu_time_ns": self.cpu_time_ns,
                "cpu": self.cpu, "affinity": sorted(self.affinity)}

    @classmethod
    def from_dict(cls, data):
        return cls(data["number"], data["state"], data["cpu_time_ns"], data["cpu"], frozenset(data["affinity"]))


def _read(path):
    with open(path) as f:
        return f.read()


def thread_stat(pid, tid):
    """``(state letter, last CPU)`` of a thread from its ``stat`` (comm may hold spaces or parens)."""
    text = _read(f"/proc/{pid}/task/{tid}/stat")
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[36])  # fields 3 and 39 of proc(5)


def cpu_time_ns(pid, tid):
    """Exact CPU time of thread ``tid`` of process ``pid``, in ns (HostError if it is gone)."""
    path = f"/proc/{pid}/task/{tid}/schedstat"
    try:
        return int(_read(path).split()[0])
    except FileNotFoundError:
        raise HostError(f"thread {tid} of process {pid} does not exist", errno.ESRCH) from None
    except OSError as exc:
        raise HostError(f"cannot read {path}: {exc.strerror}", exc.errno) from None


def vcpu_info(number, pid, tid):
    """One :class:`VcpuInfo`; a ``tid`` of None or a thread that has gone is offline."""
    if tid is None:
        return VcpuInfo(number, "offline", 0, -1, frozenset())
    try:
        state, cpu = thread_stat(pid, tid)
        run_ns = cpu_time_ns(pid, tid)
        affinity = frozenset(os.sched_getaffinity(tid))
    except (OSError, ValueError):
        return VcpuInfo(number, "offline", 0, -1, frozenset())
    return VcpuInfo(number, _STATES.get(state, "no state"), run_ns, cpu, affinity)


def vcpu_infos(pid, vcpu_tids):
    """:class:`VcpuInfo` for each vCPU, in order: ``vcpu_tids[i]`` is vCPU ``i``'s thread."""
    return [vcpu_info(number, pid, tid) for number, tid in enumerate(vcpu_tids)]
