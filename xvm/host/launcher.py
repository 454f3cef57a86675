"""Starting a VMM process for one domain, and telling whether one is alive.

Liveness has one oracle: ``<run>/<uuid>.lock``.  Whoever starts a domain takes an
exclusive ``flock`` on it and hands the descriptor to the VMM process, which holds
it for its whole life; the starter then closes its own copy.  So the lock is held
exactly while a VMM for that domain exists (or is being started), whatever killed
it, and two hosts can never start one domain twice.
"""
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from ..errors import HostError, StateError
from ..vmm import actions as A
from ..vmm import protocol as P

log = logging.getLogger(__name__)

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


def confine_default():
    """VMM processes are confined (:mod:`xvm.vmm.jail`) whenever the host runs as root,
    unless ``XVM_CONFINE=0`` (or ``no``, ``false``) is in its environment.  A host that is
    not root cannot confine (it has no uid to drop to): its VMMs run as itself."""
    return os.geteuid() == 0 and os.environ.get("XVM_CONFINE", "1").lower() not in ("0", "no", "false")


def remove_leftovers(state_dir, uuid):
    """What a confined VMM of ``uuid`` cannot remove itself once it has ended (its cgroup),
    removed while no VMM holds the domain lock; False if one does (a new one may be
    starting: its cgroup is its own)."""
    from ..sched import remove_domain_cgroup

    lock = DomainLock(state_dir.vmm_lockfile(uuid))
    try:
        if not lock.try_acquire():
            return False
        try:
            remove_domain_cgroup(uuid)
        except HostError as e:
            log.warning("domain %s: cannot remove the cgroup its VMM left: %s", uuid, e)
        return True
    finally:
        lock.close()


def spawn_vmm(state_dir, config, *, persistent, lock, kvm_fd, disk_fds=(), nics=(), before_boot=None,
              confine=None, boot_action=None):
    """Start ``python3 -m xvm.vmm`` for ``config`` and wait until it has booted.

    ``lock`` is the domain's acquired :class:`DomainLock`; ``nics`` are
    ``(spec dict, tap fd, list of tap fds or None)`` pairs.  Every descriptor is passed to the VMM and
    stays the caller's to close.  ``before_boot(pid)`` runs once the VMM serves its
    socket and before it boots (to attach a console reader).  Returns ``(pid, boot
    info)``; raises the error the VMM raised if the boot failed (the same class), and
    the VMM process is gone then.  ``confine``: confine the VMM (:mod:`xvm.vmm.jail`; True,
    False, or a dict of ``confine()`` keywords); None: :func:`confine_default`.
    """
    uuid = str(config.uuid)
    fds = [kvm_fd, lock.fd, *disk_fds]
    nic_specs = []
    for spec, fd in nics:
        if isinstance(fd, (list, tuple)):  # a multi-queue TAP: one fd per queue pair
            spec = dict(spec, fds=list(range(len(fds), len(fds) + len(fd))))
            fds.extend(fd)
        elif fd is not None:
            spec = dict(spec, fd=len(fds))
            fds.append(fd)
        nic_specs.append(spec)
    resources = {"kvm": 0, "lock": 1, "disks": list(range(2, 2 + len(disk_fds))), "nics": nic_specs}
    message = {"config": config.to_dict(), "state_dir": state_dir.root, "persistent": persistent,
               "resources": resources, "confine": confine_default() if confine is None else confine}
    conn, proc = _vmm_starter(state_dir, config)
    pid = proc.pid if proc is not None else None
    try:
        try:
            P.send_message(conn, message, fds=fds)
            reply, extra = P.recv_message(conn, timeout=BOOT_TIMEOUT)
            if reply.get("ok") and isinstance(reply.get("result"), dict) and "ready" in reply["result"]:
                pid = reply["result"]["ready"]
                if before_boot is not None:
                    before_boot(pid)
                go, go_fds = {"boot": True}, []
                if boot_action is not None:  # e.g. Restore(path, fd): how the VMM boots
                    wire, go_fds = A.split_fd(boot_action)
                    go["action"] = wire.to_json()
                P.send_message(conn, go, fds=go_fds)
                reply, extra = P.recv_message(conn, timeout=BOOT_TIMEOUT)
        except (P.ConnectionClosed, OSError, P.ProtocolError) as e:
            if proc is not None:
                _kill(proc)
            how = describe_exit(pid, state_dir) if pid else None
            raise HostError(f"the VMM process for domain {config.name!r} died while booting "
                            f"({how or e}); see {state_dir.vmm_log(uuid)}") from None
        for fd in extra:
            os.close(fd)
        if not reply.get("ok"):
            if proc is not None:
                proc.wait(10)
            raise P.decode_error(reply.get("error") or {})
        return pid, reply.get("result")
    finally:
        conn.close()


def _vmm_starter(state_dir, config):
    """A connection to whatever will become the VMM: a fork server's (no Popen), or a
    fresh ``python3 -m xvm.vmm`` child's (with its Popen)."""
    if os.environ.get("XVM_FORKSERVER", "1") not in ("0", "no", "false"):
        conn = _zygote_connection(state_dir)
        if conn is not None:
            return conn, None
    uuid = str(config.uuid)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with open(state_dir.vmm_log(uuid), "ab") as log:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "xvm.vmm", "--init-fd", str(child.fileno())],
                    pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, env=_child_env(), cwd="/",
                )
            except OSError as e:
                parent.close()
                raise HostError(f"cannot start the VMM process for domain {config.name!r}: {e.strerror}",
                                e.errno) from None
    finally:
        child.close()
    with _children_lock:
        _children[proc.pid] = proc
    return parent, proc


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = _XVM_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def warm_forkserver(state_dir):
    """Have the state directory's fork server up -- started if none serves it, or its idle
    clock restarted (it exits after ``zygote.IDLE_EXIT`` seconds unasked) -- so that the
    next VMM starts in milliseconds (a migration listener keeps it so).  False if there is
    none to be had (``XVM_FORKSERVER=0``, or it cannot start)."""
    if os.environ.get("XVM_FORKSERVER", "1") in ("0", "no", "false"):
        return False
    conn = _zygote_connection(state_dir)
    if conn is None:
        return False
    conn.close()  # an empty request: the server drops it
    return True


def _zygote_connection(state_dir, start_timeout=10.0):
    """A connection to the state directory's fork server, started if need be; None if
    it cannot be had (then a VMM is started the slow way)."""
    from ..vmm import zygote

    path = zygote.socket_path(state_dir.run_dir)
    conn = _try_connect(path)
    if conn is not None:
        return conn
    with open(os.path.join(state_dir.log_dir, "zygote.log"), "ab") as log:
        try:
            subprocess.Popen([sys.executable, "-m", "xvm.vmm.zygote", "--state-dir", state_dir.root],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                             env=_child_env(), cwd="/")
        except OSError:
            return None
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        conn = _try_connect(path)
        if conn is not None:
            return conn
        time.sleep(0.01)
    return None


def _try_connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        return sock
    except OSError:
        sock.close()
        return None


def _kill(proc):
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait(10)


def describe_exit(pid, state_dir=None, wait=0.0):
    """How a VMM process ended ("killed by SIGKILL"), or None if that is not known: from
    this process's own children, or from the fork server's record of its children
    (waiting up to ``wait`` seconds for that record to appear)."""
    with _children_lock:
        proc = _children.get(pid)
    if proc is None:
        if state_dir is None:
            return None
        from ..vmm import zygote

        path = zygote.exit_path(state_dir.run_dir, pid)
        deadline = time.monotonic() + wait
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            with open(path) as f:
                record = json.load(f)
            os.unlink(path)
        except (OSError, ValueError):
            return None
        code = -record["signal"] if record.get("signal") else record.get("code")
        if not isinstance(code, int):
            return None
    else:
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
