"""Hard CPU affinity of single threads: ``sched_setaffinity(2)`` on native thread ids."""
import errno
import os

from ..errors import HostError
from .config import format_cpuset, parse_cpuset, validate_cpuset


def pin_thread(tid, cpus):
    """Restrict thread ``tid`` to ``cpus`` (a set, a list or ``"0-2,5"``); returns the new mask.

    Works without cgroup access.  ConfigError for a bad or non-existent CPU set; HostError if
    the thread is gone or the kernel refuses (e.g. CPUs outside the thread's cpuset).
    """
    cpus = validate_cpuset(cpus)
    try:
        os.sched_setaffinity(tid, cpus)
    except ProcessLookupError:
        raise HostError(f"cannot pin thread {tid}: it does not exist", errno.ESRCH) from None
    except OSError as exc:
        raise HostError(f"cannot pin thread {tid} to CPUs {format_cpuset(cpus)}: {exc.strerror}"
                        + (" (outside the CPUs its cpuset allows)" if exc.errno == errno.EINVAL else ""),
                        exc.errno) from None
    return thread_affinity(tid)


def thread_affinity(tid):
    """The CPUs thread ``tid`` may run on (``sched_getaffinity(2)``)."""
    try:
        return frozenset(os.sched_getaffinity(tid))
    except ProcessLookupError:
        raise HostError(f"thread {tid} does not exist", errno.ESRCH) from None
    except OSError as exc:
        raise HostError(f"cannot read the affinity of thread {tid}: {exc.strerror}", exc.errno) from None


def cpus_allowed_list(pid, tid):
    """The kernel's own account of ``tid``'s mask: ``Cpus_allowed_list`` of
    ``/proc/<pid>/task/<tid>/status``."""
    path = f"/proc/{pid}/task/{tid}/status"
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return parse_cpuset(line.split(":", 1)[1].strip())
    except FileNotFoundError:
        raise HostError(f"thread {tid} of process {pid} does not exist", errno.ESRCH) from None
    except OSError as exc:
        raise HostError(f"cannot read {path}: {exc.strerror}", exc.errno) from None
    raise HostError(f"{path} has no Cpus_allowed_list line", errno.EINVAL)
