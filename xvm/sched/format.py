"""virsh's text layouts for ``vcpuinfo`` and ``schedinfo`` (tools/virsh-domain.c)."""
from .cgroup import cfs_bandwidth, cpu_weight_for_weight, shares_for_weight
from .config import host_cpus

_UNLIMITED_PERIOD = 100_000


def sched_params(sched, *, version=1):
    """libvirt's ``schedinfo`` parameters for ``sched`` as :class:`DomainCgroup` writes them.

    The cap is domain-wide, so it shows as ``global_period``/``global_quota``; the per-vCPU and
    emulator cgroups carry no quota of their own (-1 = unlimited).
    """
    period, quota = cfs_bandwidth(sched.cap)
    shares = shares_for_weight(sched.weight) if version == 1 else cpu_weight_for_weight(sched.weight)
    return {"cpu_shares": shares,
            "vcpu_period": _UNLIMITED_PERIOD, "vcpu_quota": -1,
            "emulator_period": _UNLIMITED_PERIOD, "emulator_quota": -1,
            "global_period": period, "global_quota": quota}


def format_schedinfo(sched, params=None, *, version=1, scheduler="credit"):
    """``virsh schedinfo``: the scheduler, Xen's ``weight``/``cap``, then libvirt's cgroup names.

    ``params`` defaults to :func:`sched_params`; pass :meth:`DomainCgroup.params` to show
    what the kernel holds.
    """
    if params is None:
        params = sched_params(sched, version=version)
    lines = [f"{'Scheduler':<15s}: {scheduler}", f"{'weight':<15s}: {sched.weight}", f"{'cap':<15s}: {sched.cap}"]
    lines += [f"{name:<15s}: {value}" for name, value in params.items()]
    return "\n".join(lines) + "\n"


def format_vcpuinfo(infos, *, host_cpu_count=None):
    """``virsh vcpuinfo``: one block per vCPU, blank-line separated; ``CPU time`` is left out
    when zero, as virsh does.  The affinity map has one ``y``/``-`` per host CPU."""
    if host_cpu_count is None:
        host_cpu_count = max(host_cpus()) + 1
    blocks = []
    for info in infos:
        lines = [f"{'VCPU:':<15s} {info.number}", f"{'CPU:':<15s} {info.cpu}", f"{'State:':<15s} {info.state}"]
        if info.cpu_time_ns:
            lines.append(f"{'CPU time:':<15s} {info.cpu_time_ns / 1e9:.1f}s")
        cpumap = "".join("y" if cpu in info.affinity else "-" for cpu in range(host_cpu_count))
        lines.append(f"{'CPU Affinity:':<15s} {cpumap}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
