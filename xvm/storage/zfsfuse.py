"""The zfs-fuse daemon and throwaway zpools on sparse files, for tests and benchmarks.

zfs-fuse (Debian's ZFS without a kernel module) is a daemon: ``/sbin/zfs-fuse --pidfile FILE``
forks into the background and serves zfs(8)/zpool(8) over ``/var/run/zfs/zfs_socket``. It refuses
to start, silently, while a stale pid file exists, and it re-imports the pools listed in
``/var/lib/zfs/zpool.cache`` on start but does not mount them; SIGTERM unmounts and exits.
"""
import os
import secrets
import shutil
import signal
import subprocess
import time

PIDFILE = "/var/run/zfs-fuse.pid"
_SEARCH_PATH = os.pathsep.join(["/sbin", "/usr/sbin", os.environ.get("PATH", "")])


class ZfsFuseUnavailable(Exception):
    """zfs-fuse is not installed or cannot be started here (the reason is the message)."""


def daemon_path():
    return shutil.which("zfs-fuse", path=_SEARCH_PATH)


def _command(program):
    path = shutil.which(program, path=_SEARCH_PATH)
    if path is None:
        raise ZfsFuseUnavailable(f"{program}(8) is not installed (apt-get install zfs-fuse)")
    return path


def run(program, *args, check=True):
    done = subprocess.run([_command(program), *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise ZfsFuseUnavailable(f"{program} {' '.join(args)}: {done.stderr.strip()}")
    return done


def daemon_pid():
    """The pid of the running zfs-fuse daemon, or None."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "zfs-fuse":
                        return int(entry)
            except OSError:
                continue
    return None


def ready():
    return run("zpool", "list", "-H", check=False).returncode == 0


def start(timeout=20.0):
    """Start the daemon unless it runs; True if this call started it. Waits until it answers."""
    if daemon_pid() is not None:
        _wait_ready(timeout)
        return False
    daemon = daemon_path()
    if daemon is None:
        raise ZfsFuseUnavailable("zfs-fuse is not installed (apt-get install zfs-fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise ZfsFuseUnavailable("zfs-fuse needs read/write access to /dev/fuse")
    try:
        os.unlink(PIDFILE)  # stale: no daemon runs
    except FileNotFoundError:
        pass
    # No pipes: the daemon keeps the fds it is given, and a pipe would hold its reader open.
    done = subprocess.run([daemon, "--pidfile", PIDFILE], cwd="/", stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                          start_new_session=True)
    if done.returncode != 0:
        raise ZfsFuseUnavailable(f"zfs-fuse did not start (exit status {done.returncode}; "
                                 "see the system log)")
    _wait_ready(timeout)
    return True


def _wait_ready(timeout):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise ZfsFuseUnavailable(f"zfs-fuse does not answer after {timeout:g}s")
        time.sleep(0.1)


def stop(timeout=20.0):
    """Stop the daemon (SIGTERM: it unmounts its filesystems and exits) and wait for it."""
    pid = daemon_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            raise ZfsFuseUnavailable(f"zfs-fuse (pid {pid}) did not exit {timeout:g}s after SIGTERM")
        time.sleep(0.05)
    try:
        os.unlink(PIDFILE)
    except FileNotFoundError:
        pass


def restart():
    """Start the daemon again and mount every dataset of its pools."""
    start()
    run("zfs", "mount", "-a", check=False)


class TestZpool:
    """A zpool ``xvmtest-RANDOM`` on a sparse file in ``directory``, destroyed on exit."""

    def __init__(self, directory="/tmp", size=1 << 30, prefix="xvmtest"):
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self.image = os.path.join(directory, f"{self.name}.img")
        self.mountpoint = os.path.join(directory, f"{self.name}-mnt")
        self.size = size

    def __enter__(self):
        self.started_daemon = start()
        _forget_stale_pools()
        with open(self.image, "xb") as f:
            f.truncate(self.size)
        try:
            run("zpool", "create", "-m", self.mountpoint, self.name, self.image)
        except BaseException:
            os.unlink(self.image)
            raise
        return self

    def __exit__(self, *exc):
        if daemon_pid() is None:
            start()
        run("zpool", "destroy", "-f", self.name, check=False)
        if self.started_daemon:
            stop()
        for remove in (lambda: os.unlink(self.image), lambda: os.rmdir(self.mountpoint)):
            try:
                remove()
            except OSError:
                pass


def _forget_stale_pools():
    """Destroy xvmtest-* pools whose image file is gone (left by a killed test run)."""
    listed = run("zpool", "list", "-H", "-o", "name", check=False).stdout.split()
    for name in listed:
        if name.startswith("xvmtest-") and not os.path.exists(f"/tmp/{name}.img"):
            run("zpool", "destroy", "-f", name, check=False)
