"""Starting a VMM process for one domain, and telling whether one is alive.

Liveness has one oracle: ``<run>/<uuid>.lock``.  Whoever starts a domain takes an
exclusive ``flock`` on it and hands the descriptor to the VMM process, which holds
it for its whole life; the starter then closes its own copy.  So the lock is held
exactly while a VMM for that domain exists (or is being started), whatever killed
it, and two hosts can never start one domain twice.
"""
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading

from ..errors import HostError, StateError
from ..vmm import protocol as P

BOOT_TIMEOUT = 120.0  # spawning, loading the kernel and starting the vCPUs
_XVM_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# VMM processes started by this process, by pid, so that any host in it can reap them
# and say how they ended.
_children = {}
_children_lock = threading.Lock()


class DomainLock:
    """The exclusive lock of one domain (held while a VMM for it exists)."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.path = path

    def try_acquire(self):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def vmm_alive(state_dir, uuid):
    """True while a VMM process for ``uuid`` holds the domain's lock."""
    lock = DomainLock(state_dir.vmm_lockfile(uuid))
    try:
        return not lock.try_acquire()
    finally:
        lock.close()  # releases it again if we got it


def spawn_vmm(state_dir, config, *, persistent, lock, kvm_fd, disk_fds=(), nics=(), before_boot=None,
              boot_action=None):
    """Start ``python3 -m xvm.vmm`` for ``config`` and wait until it has booted.

    ``lock`` is the domain's acquired :class:`DomainLock`; ``nics`` are
    ``(spec dict, tap fd or None)`` pairs.  Every descriptor is passed to the VMM and
    stays the caller's to close.  ``before_boot(pid)`` runs once the VMM serves its
    socket and before it boots (to attach a console reader).  Returns ``(pid, boot
    info)``; raises the error the VMM raised if the boot failed (the same class), and
    the VMM process is gone then.
    """
    uuid = str(config.uuid)
    fds = [kvm_fd, lock.fd, *disk_fds]
    nic_specs = []
    for spec, fd in nics:
        if fd is not None:
            spec = dict(spec, fd=len(fds))
            fds.append(fd)
        nic_specs.append(spec)
    resources = {"kvm": 0, "lock": 1, "disks": list(range(2, 2 + len(disk_fds))), "nics": nic_specs}
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ)
    env["PYTHONPATH"] = _XVM_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        with open(state_dir.vmm_log(uuid), "ab") as log:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "xvm.vmm", "--init-fd", str(child.fileno())],
                    pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, env=env, cwd="/",
                )
            except OSError as e:
                raise HostError(f"cannot start the VMM process for domain {config.name!r}: {e.strerror}",
                                e.errno) from None
        child.close()
        with _children_lock:
            _children[proc.pid] = proc
        message = {"config": config.to_dict(), "state_dir": state_dir.root, "persistent": persistent,
                   "resources": resources}
        try:
            P.send_message(parent, message, fds=fds)
            reply, extra = P.recv_message(parent, timeout=BOOT_TIMEOUT)
            if reply.get("ok") and isinstance(reply.get("result"), dict) and "ready" in reply["result"]:
                if before_boot is not None:
                    before_boot(proc.pid)
                go = {"boot": True}
                if boot_action is not None:  # e.g. Restore(path): how the VMM boots
                    go["action"] = boot_action.to_json()
                P.send_message(parent, go)
                reply, extra = P.recv_message(parent, timeout=BOOT_TIMEOUT)
        except (P.ConnectionClosed, OSError, P.ProtocolError) as e:
            _kill(proc)
            raise HostError(f"the VMM process for domain {config.name!r} died while booting "
                            f"({describe_exit(proc.pid) or e}); see {state_dir.vmm_log(uuid)}") from None
        for fd in extra:
            os.close(fd)
        if not reply.get("ok"):
            proc.wait(10)
            raise P.decode_error(reply.get("error") or {})
        return proc.pid, reply.get("result")
    finally:
        parent.close()
        child.close()


def _kill(proc):
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait(10)


def describe_exit(pid):
    """How a VMM process this process started ended ("killed by SIGKILL"), or None."""
    with _children_lock:
        proc = _children.get(pid)
    if proc is None:
        return None
    code = proc.poll()
    if code is None:
        return None
    with _children_lock:
        _children.pop(pid, None)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def reap():
    """Collect VMM processes of ours that have ended (no zombies are left)."""
    with _children_lock:
        procs = list(_children.values())
    for proc in procs:
        if proc.poll() is not None and proc.returncode == 0:
            with _children_lock:
                _children.pop(proc.pid, None)


def read_pid(state_dir, uuid):
    try:
        with open(state_dir.vmm_pidfile(uuid)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def terminate(state_dir, uuid, name):
    """SIGTERM the VMM of ``uuid`` (it destroys its domain and exits)."""
    pid = read_pid(state_dir, uuid)
    if pid is None:
        raise StateError(f"domain {name!r} has no VMM process")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
