"""xvm.sched: a credit-style scheduler for domains on the kernel's own mechanisms.

Xen credit's weight and cap become the cpu controller's shares and CFS bandwidth on one cgroup
per domain (a child per vCPU thread and one for the other threads, as libvirt lays them out);
pinning is ``sched_setaffinity`` per thread; accounting reads the kernel's exact per-thread run
time.  The package works on a process and its native thread ids; the VMM wires it in
through :class:`DomainScheduler` (one per boot of a domain).

    cg = DomainCgroup("web")
    cg.place(vcpu_tids, other_tids)
    cg.apply(Sched(weight=512, cap=150), vcpus=2)
    pin_thread(vcpu_tids[0], "0-1")
    print(format_vcpuinfo(vcpu_infos(pid, vcpu_tids)))
    cg.remove()
"""
from .accounting import VcpuInfo, cpu_time_ns, thread_stat, vcpu_info, vcpu_infos
from .affinity import cpus_allowed_list, pin_thread, thread_affinity
from .cgroup import (
    CAP_PERIOD_US,
    DEFAULT_PERIOD_US,
    DomainCgroup,
    cfs_bandwidth,
    cpu_max_value,
    cpu_weight_for_weight,
    detect,
    shares_for_weight,
)
from .config import (
    DEFAULT_WEIGHT,
    MAX_CAP,
    MAX_WEIGHT,
    MIN_WEIGHT,
    Sched,
    format_cpuset,
    host_cpus,
    parse_cpuset,
    validate_cpuset,
    validate_pins,
)
from .domain import (
    CGROUP_ROOT_ENV,
    SWEEP_INTERVAL,
    DomainScheduler,
    delegate,
    domain_cgroup,
    rebalance,
    remove_domain_cgroup,
)
from .format import format_schedinfo, format_vcpuinfo, sched_params

__all__ = [
    "CAP_PERIOD_US", "CGROUP_ROOT_ENV", "DomainScheduler", "SWEEP_INTERVAL", "delegate", "domain_cgroup",
    "rebalance", "remove_domain_cgroup", "DEFAULT_PERIOD_US", "DEFAULT_WEIGHT", "DomainCgroup", "MAX_CAP", "MAX_WEIGHT",
    "MIN_WEIGHT", "Sched", "VcpuInfo", "cfs_bandwidth", "cpu_max_value", "cpu_time_ns",
    "cpu_weight_for_weight", "cpus_allowed_list", "detect", "format_cpuset", "format_schedinfo",
    "format_vcpuinfo", "host_cpus", "parse_cpuset", "pin_thread", "sched_params", "shares_for_weight",
    "thread_affinity", "thread_stat", "validate_cpuset", "validate_pins", "vcpu_info", "vcpu_infos",
]
