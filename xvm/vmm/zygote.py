"""The fork server: one process per state directory with xvm already imported, which
forks a VMM process for each domain that starts.

Starting ``python3 -m xvm.vmm`` costs a Python start and xvm's imports (≈0.3–0.6 s);
forking this process costs about a millisecond, and the VMMs share its pages
copy-on-write, so each costs less memory.  It is single-threaded, so forking it is
safe.  Hosts find it at ``<state>/run/zygote-<key>.sock`` (the key names the Python
and the xvm checkout, so two checkouts never share one) and start it on demand
(:func:`xvm.host.launcher.spawn_vmm`); ``XVM_FORKSERVER=0`` turns it off.

A request is exactly a VMM process's init message (see :mod:`xvm.vmm.__main__`) with
its descriptors; the forked child takes over the connection and speaks the rest of
that exchange itself.  The server reaps its children at once (SIGCHLD wakes it) and
writes how each ended to ``<run>/exit-<pid>.json`` so that any host can say "killed
by SIGKILL".  It exits after :data:`IDLE_EXIT` seconds with no VMM and no request,
or as soon as its state directory is gone.
"""
import argparse
import errno
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import sys
import time

IDLE_EXIT = 60.0
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def key():
    """What a fork server must share with its host: the same Python and xvm checkout."""
    return hashlib.sha256(f"{sys.executable}\0{_ROOT}".encode()).hexdigest()[:12]


def socket_path(run_dir):
    return os.path.join(run_dir, f"zygote-{key()}.sock")


def exit_path(run_dir, pid):
    return os.path.join(run_dir, f"exit-{pid}.json")


def _warm_kvm():
    """Open /dev/kvm and keep one empty VM for the server's life; returns the descriptors
    (children close them).  Measured here: a process's first KVM_CREATE_VM costs ~21 ms
    when no VM exists on the host (KVM flips kernel-wide switches for the first VM and
    back for the last), ~1 ms otherwise — so every forked VMM saves that."""
    try:
        from ..kvm.system import Kvm

        kvm = Kvm()
        vm = kvm.create_vm()
        return [kvm.fd, vm.fd]
    except Exception:  # no /dev/kvm for us: the children pay the first-VM cost, that is all
        return []


def _preload():
    """Import what a VMM uses, so a forked child has it already."""
    from ..machine import build_machine  # noqa: F401
    from ..devices.block import VirtioBlock  # noqa: F401
    from ..devices.net import VirtioNet  # noqa: F401
    from ..devices.virtio import native
    from ..store import Store  # noqa: F401
    from . import process, server  # noqa: F401
    from ..machine import state  # noqa: F401
    from ..migration import precopy, tls  # noqa: F401  (a switchover imports nothing)

    native.load()  # the C chain walker, built or found once


def serve(state_dir):
    from ..host.paths import StateDir
    from . import protocol as P

    state = StateDir(state_dir)
    run_dir = state.run_dir
    lock_fd = os.open(os.path.join(run_dir, f"zygote-{key()}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another fork server serves this state directory
    _preload()
    warm_fds = _warm_kvm()
    path = socket_path(run_dir)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd fires
    signal.signal(signal.SIGTERM, lambda *_: None)
    children = {}  # pid -> domain uuid
    idle_since = time.monotonic()
    stopping = False

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            uuid = children.pop(pid, None)
            record = {"pid": pid, "status": status,
                      "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                      "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
            tmp = exit_path(run_dir, pid) + ".tmp"
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, exit_path(run_dir, pid))
            if uuid is not None:
                from ..host.launcher import remove_leftovers
                try:
                    remove_leftovers(state, uuid)  # a confined VMM's cgroup
                except Exception as e:  # noqa: BLE001 — the server keeps serving
                    print(f"xvm-zygote: cleaning up after {uuid}: {e!r}", file=sys.stderr)

    try:
        while True:
            readable, _, _ = select.select([listener, wake_r], [], [], 1.0)
            if wake_r in readable:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                reap()
            if not os.path.isdir(run_dir) or not os.path.exists(path):
                stopping = True  # the state directory went away, or another server took over
            if listener in readable and not stopping:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    conn = None
                if conn is not None:
                    idle_since = time.monotonic()
                    try:
                        message, fds = P.recv_message(conn, timeout=10)
                    except Exception as e:  # a bad request fails alone
                        try:
                            P.send_message(conn, P.error_reply(0, e))
                        except OSError:
                            pass
                        conn.close()
                        continue
                    pid = os.fork()
                    if pid == 0:
                        os._exit(_child(conn, message, fds,
                                        [listener.fileno(), lock_fd, wake_r, wake_w, *warm_fds], state))
                    children[pid] = _uuid_of(message)
                    conn.close()
                    for fd in fds:
                        os.close(fd)
            if children:
                idle_since = time.monotonic()
            elif stopping or time.monotonic() - idle_since > IDLE_EXIT:
                return 0
    finally:
        try:
            if os.path.exists(path) and os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
                os.unlink(path)
        except OSError:
            pass
        listener.close()


def _uuid_of(message):
    import uuid

    config = message.get("config") if isinstance(message, dict) else None
    try:
        return str(uuid.UUID(str(config["uuid"])))
    except (TypeError, KeyError, ValueError):
        return None


def _child(conn, message, fds, inherited, state):
    """The forked VMM: a session of its own, its own log, then the VMM process's body."""
    for fd in inherited:
        try:
            os.close(fd)
        except OSError:
            pass
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    code = 1
    try:
        uuid = str(message.get("config", {}).get("uuid", "unknown"))
        log_fd = os.open(state.vmm_log(uuid), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                            format="%(asctime)s xvm-vmm[%(process)d] %(levelname)s %(name)s: %(message)s")
        from .process import run_domain

        code = run_domain(conn, message, fds)
    except BaseException as e:  # noqa: BLE001 — the child must never return into the server loop
        try:
            print(f"xvm-vmm: {e!r}", file=sys.stderr)
        except Exception:
            pass
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    return code if isinstance(code, int) else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m xvm.vmm.zygote")
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)
    try:
        return serve(os.path.abspath(args.state_dir))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return 0  # the state directory vanished while we started
        raise


if __name__ == "__main__":
    sys.exit(main())
