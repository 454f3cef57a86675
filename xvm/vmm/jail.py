"""Confining a VMM process: least privilege and a seccomp allow-list.

:func:`confine` is the one entry point.  The VMM process calls it once, after it
has received its descriptors from the host (``/dev/kvm``, the domain lock, disks,
TAPs), opened the store and the console log, bound its control socket and written
its pid file, and before it starts a thread or boots.  From then on it:

* runs in a **private mount namespace** whose root is a fresh tmpfs holding only
  what it still reads by path: ``/usr`` and the Python installation read-only, the
  xvm sources and the C walker's cache read-only, a copy of this domain's kernel and
  initrd at their paths (read-only, readable by the VMM user; a reboot loads them
  again), ``/sys/devices/system/cpu`` read-only (the online CPUs), ``/dev/{null,zero,
  full,random,urandom}``, a fresh ``/proc`` and a small private ``/tmp``.  No ``/etc``
  (so no ``/etc/shadow``), no state directory, no other domain's image: they are
  not in its world.  Everything it writes — the store, the console log and its
  rotation file, the control socket, the crash file, a save file (``dom.save``:
  made by the host, passed with the Snapshot action) — is a descriptor it opened
  before or was given; a restore file comes the same way.  The one directory it
  writes is its own cgroup (:func:`xvm.sched.delegate`: made with the domain's
  weight and cap and chowned to the VMM user before the drop, bound at its path):
  it places its threads there and applies live changes; the host balances the
  parent and removes the cgroup once the VMM has ended;
* has **no_new_privs**, an empty capability bounding and ambient set, and runs as
  an **unprivileged uid/gid** with no supplementary groups (``user``: a name or a
  uid; default the ``xvm`` system user if it exists, else ``nobody``; or
  :func:`domain_uid` for a uid per domain from a range, as Firecracker's jailer
  does).  Changing uid from 0 clears the permitted and effective capability sets;
* has **resource limits**: ``RLIMIT_NOFILE`` (``nofile``), ``RLIMIT_AS`` = guest RAM
  + ``overhead`` (the interpreter, thread stacks and malloc arenas), ``RLIMIT_CORE``
  = 0 (a SIGSYS would otherwise dump a core of guest RAM);
* has a **seccomp filter** (:data:`ALLOWED`, last): a system call outside the list
  is not executed; the kernel sends SIGSYS (``SECCOMP_RET_TRAP``) and a small C
  handler writes ``seccomp: <name>`` to ``<state>/run/<uuid>.crash`` (a descriptor
  opened before) and to stderr (the VMM log), then kills the process with SIGSYS.
  The host, seeing the VMM gone with its domain running, reads the crash file
  (:func:`crash_reason`) and records the domain ``crashed`` with that reason.  A
  VMM that removed the handler gains nothing: the call still fails, with ENOSYS.
  A wrong architecture kills the process outright.

The SQLite store survives the drop: its connection opened the database, its WAL
and its shared-memory index before, and SQLite keeps those three descriptors for
the connection's life (a WAL connection holds a shared lock on the database, so
no other connection deletes the WAL meanwhile); it needs no path afterwards.  What
no longer works inside the jail: removing the socket and pid file at exit (the
host ignores stale ones — liveness is the domain lock — and removes them when it
reconciles).  The console log rotates by copy and truncate, on descriptors
(:class:`~xvm.vmm.vmm.ConsoleLog`).

Confinement needs root (the host passes ``confine`` in the init message, true by
default when the host runs as root, ``XVM_CONFINE=0`` to opt out); in-process VMMs
and non-root hosts run unconfined.  It is process-wide: it runs while the process has one thread, and the
seccomp filter is one for all threads (a narrower vCPU-thread filter would save
little: a vCPU thread runs Python, which needs nearly the whole list).
"""
import errno
import hashlib
import importlib.util
import json
import os
import pwd
import resource
import shutil
import sys
import threading

import cffi

from ..errors import ConfigError, HostError

DEFAULT_USERS = ("xvm", "nobody")
DEFAULT_NOFILE = 1024
DEFAULT_OVERHEAD = 3 << 30  # measured VmPeak of a 1-vCPU VMM without guest RAM: ~1.1 GiB
JAIL_MOUNTPOINT = "/run/xvm-jail"  # each VMM mounts its own tmpfs here, in its own namespace
TMP_SIZE = 16 << 20
SYS_CPU = "/sys/devices/system/cpu"  # read-only: which CPUs are online (pins, os.cpu_count)
DEVICES = ("null", "zero", "full", "random", "urandom")
UID_RANGE = (0x10000, 0x10000)  # domain_uid's default: 65536 uids from 65536

# --- the allow-list -------------------------------------------------------------------------
# Each entry: syscall name -> why the VMM needs it.  Entries with argument checks are in
# ALLOWED_IF below.  Reading new files by path (openat...) stays allowed: the mount namespace
# decides what exists.
ALLOWED = {
    # memory: the interpreter's allocator, guest RAM (a memfd mapped at each boot), thread stacks
    "brk": "the C heap", "mmap": "malloc arenas, guest RAM, ring mappings, loading modules",
    "munmap": "freeing the above", "mremap": "realloc of large blocks", "mprotect": "thread stack guards, ld.so",
    "madvise": "malloc trimming, MADV_DONTNEED of guest RAM", "memfd_create": "guest RAM at each boot",
    "ftruncate": "sizing the guest RAM memfd", "fallocate": "disk discard / write-zeroes",
    # descriptors the VMM holds: disks, TAPs, eventfds, sockets, the store
    "read": "every fd", "write": "every fd", "pread64": "disk reads, SQLite", "pwrite64": "disk writes, SQLite",
    "readv": "disk and TAP reads", "writev": "disk and TAP writes", "preadv": "disk reads",
    "pwritev": "disk writes", "preadv2": "disk reads", "pwritev2": "disk writes",
    "lseek": "files", "close": "every fd", "dup": "each boot's copy of disk and TAP fds", "dup3": "os.dup2",
    "fcntl": "O_NONBLOCK, CLOEXEC, SQLite's POSIX locks", "flock": "the domain and disk locks",
    "fsync": "disk flush, SQLite", "fdatasync": "disk flush, SQLite",
    "fstat": "files", "newfstatat": "stat (imports)", "statx": "stat", "fstatfs": "SQLite",
    "openat": "imports after confine (the namespace limits what exists)", "readlink": "os.path.realpath",
    "getdents64": "listing the module cache", "access": "os.access", "faccessat2": "os.access",
    "getcwd": "os.getcwd", "unlink": "removing the socket at exit (fails harmlessly in the jail)",
    "mkdir": "the vCPU cgroups inside the domain's delegated cgroup (xvm.sched)",
    "rmdir": "removing them again (reboot, stop)",
    "eventfd2": "virtqueue notifications, irqfds, wake-ups",
    # waiting
    "epoll_create1": "device workers' event loops", "epoll_ctl": "event loops", "epoll_wait": "event loops",
    "epoll_pwait": "event loops", "poll": "socket timeouts", "ppoll": "socket timeouts",
    "select": "socket timeouts", "pselect6": "socket timeouts",
    "futex": "locks and condition variables", "nanosleep": "time.sleep", "clock_nanosleep": "time.sleep",
    "clock_gettime": "time (outside the vDSO)", "clock_getres": "time", "gettimeofday": "time",
    "sched_yield": "the GIL", "sched_getaffinity": "os.cpu_count",
    "sched_setaffinity": "vCPU and emulator pinning (xvm.sched)", "statfs": "cgroup mount detection (xvm.sched)", "getrandom": "hash seeds, uuids",
    # the control socket
    "accept4": "client connections", "recvfrom": "requests", "sendto": "replies", "recvmsg": "descriptors",
    "sendmsg": "replies", "shutdown": "closing connections", "getsockopt": "socket errors",
    "setsockopt": "socket timeouts", "getsockname": "sockets", "getpeername": "sockets",
    # threads and signals: vCPU threads, device workers, the kick signal that stops a vCPU's KVM_RUN
    "set_robust_list": "pthread_create", "rseq": "pthread_create", "set_tid_address": "threads",
    "gettid": "threading.get_native_id", "getpid": "os.getpid", "getppid": "os.getppid",
    "rt_sigaction": "signal handlers", "rt_sigprocmask": "pthread_sigmask", "rt_sigreturn": "signal return",
    "sigaltstack": "faulthandler", "rt_sigtimedwait": "signal.sigtimedwait",
    "restart_syscall": "restarting an interrupted sleep", "exit": "a thread ends", "exit_group": "the VMM ends",
    # identity and limits (read only)
    "getuid": "os.getuid", "geteuid": "os.geteuid", "getgid": "os.getgid", "getegid": "os.getegid",
    "uname": "os.uname", "sysinfo": "os.sysconf", "prlimit64": "resource.getrlimit",
    "getrusage": "resource.getrusage (stats)", "times": "os.times",
}

_CLONE_THREAD = 0x00010000
_PR_SET_NAME, _PR_GET_NAME = 15, 16
_SOCK_FAMILY_UNIX = 1
# ioctl request types ((request >> 8) & 0xff): KVM, TTY/TUN/FIONREAD/FIONBIO/FIOCLEX, block devices
IOCTL_TYPES = {0xAE: "KVM (the vm, vcpu and system fds)", 0x54: "TUN, TCGETS (isatty), FIONBIO, FIOCLEX",
               0x12: "BLKGETSIZE64, BLKDISCARD on block-device disks"}

# name -> (why, [argument checks]); each check is a list of (arg, op, a, b) that must all hold.
ALLOWED_IF = {
    "clone": ("threads only (CLONE_THREAD set): never a new process", [[(0, "masked_eq", _CLONE_THREAD,
                                                                          _CLONE_THREAD)]]),
    "tgkill": ("signals to our own threads (the vCPU kick, abort)", [[(0, "eq", "pid", 0)]]),
    "kill": ("signals to this process only (the SIGSYS handler ends it)", [[(0, "eq", "pid", 0)]]),
    "prctl": ("thread names only", [[(0, "eq", _PR_SET_NAME, 0)], [(0, "eq", _PR_GET_NAME, 0)]]),
    "socket": ("AF_UNIX only (socket.socketpair, socket.fromfd)", [[(0, "eq", _SOCK_FAMILY_UNIX, 0)]]),
    "socketpair": ("AF_UNIX only", [[(0, "eq", _SOCK_FAMILY_UNIX, 0)]]),
    "ioctl": ("; ".join(f"type {t:#x}: {why}" for t, why in IOCTL_TYPES.items()),
              [[(1, "masked_eq", 0xFF00, t << 8)] for t in IOCTL_TYPES]),
}
# clone3 cannot be checked (its flags are in memory): it fails with ENOSYS, and glibc falls
# back to clone, which is.
ERRNO = {"clone3": errno.ENOSYS}

# --- libseccomp (ABI mode) and the SIGSYS handler (built once, like the C walker) -------------

_SECCOMP_CDEF = """
typedef void *scmp_filter_ctx;
struct scmp_arg_cmp { unsigned int arg; int op; uint64_t datum_a; uint64_t datum_b; };
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                           unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
int seccomp_attr_set(scmp_filter_ctx ctx, int attr, uint32_t value);
int seccomp_syscall_resolve_name(const char *name);
char *seccomp_syscall_resolve_num_arch(uint32_t arch_token, int num);
int seccomp_load(const scmp_filter_ctx ctx);
void free(void *);
"""
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_FLTATR_CTL_OPTIMIZE = 8
_SCMP_OPS = {"ne": 1, "eq": 4, "masked_eq": 7}

_HANDLER_CDEF = """
int xvm_jail_install_sigsys(int fd);
void xvm_jail_set_name(int nr, const char *name);
long xvm_jail_syscall(long nr);
"""
_HANDLER_SOURCE = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#define NAMES 512
static int crash_fd = -1;
static char names[NAMES][32];

/* SIGSYS from SECCOMP_RET_TRAP: say which call it was, then die of SIGSYS.  Only
   async-signal-safe calls that are in the allow-list: write, getpid, kill. */
static void on_sigsys(int sig, siginfo_t *info, void *context)
{
    char line[64];
    int n = 0, nr = info->si_syscall;
    const char *p = "seccomp: ";
    while (*p) line[n++] = *p++;
    if (nr >= 0 && nr < NAMES && names[nr][0]) {
        for (p = names[nr]; *p && n < 60; ) line[n++] = *p++;
    } else {
        char digits[12]; int k = 0; unsigned v = nr < 0 ? 0 : (unsigned)nr;
        for (p = "syscall "; *p; ) line[n++] = *p++;
        do { digits[k++] = '0' + v % 10; v /= 10; } while (v && k < 11);
        while (k) line[n++] = digits[--k];
    }
    line[n++] = '\n';
    if (crash_fd >= 0 && write(crash_fd, line, n) < 0) {}
    if (write(2, line, n) < 0) {}
    kill(getpid(), SIGSYS);   /* SA_RESETHAND: the default action, death by SIGSYS */
    _exit(128 + SIGSYS);
}

int xvm_jail_install_sigsys(int fd)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    crash_fd = fd;
    return sigaction(SIGSYS, &sa, 0);
}

void xvm_jail_set_name(int nr, const char *name)
{
    if (nr >= 0 && nr < NAMES) {
        strncpy(names[nr], name, sizeof names[nr] - 1);
    }
}

long xvm_jail_syscall(long nr)
{
    return syscall(nr, 0L, 0L, 0L, 0L, 0L, 0L);
}
"""

_LIBC_CDEF = """
int unshare(int flags);
int mount(const char *source, const char *target, const char *fstype, unsigned long flags,
          const void *data);
int umount2(const char *target, int flags);
long syscall(long number, ...);
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
"""
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_pivot_root = 155
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4

_lock = threading.Lock()
_modules = {}


def _libseccomp():
    with _lock:
        if "seccomp" not in _modules:
            ffi = cffi.FFI()
            ffi.cdef(_SECCOMP_CDEF)
            try:
                lib = ffi.dlopen("libseccomp.so.2")
            except OSError as e:
                raise HostError(f"seccomp: cannot load libseccomp.so.2 (Debian: libseccomp2): {e}") from None
            _modules["seccomp"] = (ffi, lib)
        return _modules["seccomp"]


def _libc():
    with _lock:
        if "libc" not in _modules:
            ffi = cffi.FFI()
            ffi.cdef(_LIBC_CDEF)
            _modules["libc"] = (ffi, ffi.dlopen(None))
        return _modules["libc"]


def _handler():
    """The compiled SIGSYS handler (built once into the cache directory)."""
    from ..devices.virtio import native

    with _lock:
        if "handler" in _modules:
            return _modules["handler"]
        import fcntl
        digest = hashlib.sha256((_HANDLER_CDEF + _HANDLER_SOURCE).encode()).hexdigest()
        name = f"_xvm_jail_{digest[:16]}"
        directory = native.cache_dir()
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = _find_module(directory, name)
            if path is None:
                builder = cffi.FFI()
                builder.cdef(_HANDLER_CDEF)
                builder.set_source(name, _HANDLER_SOURCE, extra_compile_args=["-O2"])
                try:
                    builder.compile(tmpdir=directory, verbose=False)
                except Exception as e:
                    raise HostError(f"seccomp: cannot build the SIGSYS handler: {e}") from None
                path = _find_module(directory, name)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules["handler"] = module
        return module


def _find_module(directory, name):
    for entry in os.listdir(directory):
        if entry.startswith(name + ".") and entry.endswith(".so"):
            return os.path.join(directory, entry)
    return None


def syscall_number(name):
    """The x86-64 number of the system call ``name``; ConfigError if there is none."""
    _, lib = _libseccomp()
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        raise ConfigError(f"seccomp: no system call named {name!r}")
    return nr


def syscall_name(nr):
    ffi, lib = _libseccomp()
    raw = lib.seccomp_syscall_resolve_num_arch(0, nr)
    if raw == ffi.NULL:
        return None
    try:
        return ffi.string(raw).decode()
    finally:
        lib.free(raw)


# --- the filter ------------------------------------------------------------------------------

class Filter:
    """The allow-list as a libseccomp context, built before the jail is entered (names are
    resolved while libseccomp can still read what it needs) and loaded last."""

    def __init__(self, *, default=SCMP_ACT_TRAP, extra=()):
        ffi, lib = self._ffi, self._lib = _libseccomp()
        self._ctx = lib.seccomp_init(default)
        if self._ctx == ffi.NULL:
            raise HostError("seccomp: seccomp_init failed")
        self._check(lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS), "badarch")
        self._check(lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_CTL_TSYNC, 1), "tsync")
        # A binary tree over the syscall numbers instead of a linear list (libseccomp >= 2.5):
        # every call the VMM makes is looked up in O(log n) rules.  Older libseccomp: linear.
        lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        pid = os.getpid()
        for name in [*ALLOWED, *extra]:
            self._rule(SCMP_ACT_ALLOW, name, [])
        for name, (_, alternatives) in ALLOWED_IF.items():
            for checks in alternatives:
                self._rule(SCMP_ACT_ALLOW, name, [(arg, op, pid if a == "pid" else a, b)
                                                  for arg, op, a, b in checks])
        for name, code in ERRNO.items():
            self._rule(0x00050000 | code, name, [])

    def _rule(self, action, name, checks):
        nr = syscall_number(name)
        args = self._ffi.new("struct scmp_arg_cmp[]", max(len(checks), 1))
        for i, (arg, op, a, b) in enumerate(checks):
            args[i].arg, args[i].op, args[i].datum_a, args[i].datum_b = arg, _SCMP_OPS[op], a, b
        self._check(self._lib.seccomp_rule_add_array(self._ctx, action, nr, len(checks), args), name)

    @staticmethod
    def _check(rc, what):
        if rc < 0:
            raise HostError(f"seccomp: cannot add {what}: {os.strerror(-rc)}", -rc)

    def load(self):
        self._check(self._lib.seccomp_load(self._ctx), "the filter (seccomp_load)")

    def close(self):
        if self._ctx is not None:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None


# --- users -----------------------------------------------------------------------------------

def resolve_user(user=None):
    """``(uid, gid)`` for ``user``: a user name, a uid (its group = its uid unless the
    passwd entry says otherwise), a ``(uid, gid)`` pair, or None for the first of
    :data:`DEFAULT_USERS` that exists."""
    if isinstance(user, tuple):
        uid, gid = user
    elif isinstance(user, int) and not isinstance(user, bool):
        try:
            entry = pwd.getpwuid(user)
            uid, gid = entry.pw_uid, entry.pw_gid
        except KeyError:
            uid, gid = user, user
    else:
        names = (user,) if user is not None else DEFAULT_USERS
        for name in names:
            try:
                entry = pwd.getpwnam(name)
                uid, gid = entry.pw_uid, entry.pw_gid
                break
            except KeyError:
                continue
        else:
            raise ConfigError(f"confinement: no user named {' or '.join(names)}")
    if uid == 0 or gid == 0:
        raise ConfigError("confinement: the VMM must not run as root (uid or gid 0)")
    return uid, gid


def domain_uid(uuid, first=UID_RANGE[0], count=UID_RANGE[1]):
    """A uid (and gid) for one domain from ``first .. first+count-1``, derived from its UUID
    (a hash: two domains can collide in a small range; give the range a domain per uid if
    that matters)."""
    digest = int.from_bytes(hashlib.sha256(str(uuid).encode()).digest()[:8], "little")
    uid = first + digest % count
    return uid, uid


# --- the jail --------------------------------------------------------------------------------

def crash_path(state_dir, uuid):
    return os.path.join(state_dir.run_dir, f"{uuid}.crash")


def crash_reason(state_dir, uuid, *, remove=True):
    """The reason a confined VMM wrote before the kernel killed it (``seccomp: ptrace``), or
    None; the file is removed once read."""
    path = crash_path(state_dir, uuid)
    try:
        with open(path) as f:
            text = f.read(256).strip()
    except OSError:
        return None
    if remove:
        try:
            os.unlink(path)
        except OSError:
            pass
    return text.splitlines()[0] if text else None


class Jail:
    """What :func:`confine` did (for logs and tests)."""

    def __init__(self, uid, gid, root_paths, crash_fd, limits):
        self.uid, self.gid = uid, gid
        self.root_paths = root_paths
        self.crash_fd = crash_fd
        self.limits = limits

    def to_dict(self):
        return {"uid": self.uid, "gid": self.gid, "paths": self.root_paths, "limits": self.limits}


def confine(state_dir, uuid, *, memory_bytes, read_paths=(), write_dirs=(), user=None, nofile=DEFAULT_NOFILE,
            overhead=DEFAULT_OVERHEAD, seccomp=True):
    """Confine this (single-threaded) VMM process for the domain ``uuid`` of ``state_dir``
    (see the module docstring); returns a :class:`Jail`.  ``read_paths``: files the VMM
    still reads by path (the kernel, the initrd).  ``write_dirs``: directories it keeps,
    writable, at their paths (its delegated cgroup).  Raises HostError (and leaves the
    process to exit) when any step fails: a VMM is never left half confined and running."""
    if os.geteuid() != 0:
        raise HostError("confinement needs root (run the host as root, or start it unconfined)")
    if threading.active_count() != 1:
        raise HostError("confine() must run before the VMM starts a thread "
                        f"({threading.active_count()} threads are running)")
    uid, gid = resolve_user(user)
    # Everything that needs the host's filesystem, before it disappears.
    from ..devices.virtio import native
    native.load()
    handler = _handler()
    ffi, libc = _libc()
    seccomp_filter = Filter() if seccomp else None
    try:
        for nr in range(512):
            name = syscall_name(nr) if seccomp else None
            if name:
                handler.lib.xvm_jail_set_name(nr, name.encode())
        crash_fd = os.open(crash_path(state_dir, uuid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                           0o600)
        paths = _root_paths(read_paths, write_dirs)
        _enter_mount_namespace(ffi, libc, paths, uid, gid)
        limits = _set_limits(memory_bytes + overhead, nofile)
        _drop_privileges(ffi, libc, uid, gid)
        if seccomp_filter is not None:
            if handler.lib.xvm_jail_install_sigsys(crash_fd) != 0:
                raise HostError("seccomp: cannot install the SIGSYS handler")
            seccomp_filter.load()
    finally:
        if seccomp_filter is not None:
            seccomp_filter.close()
    return Jail(uid, gid, paths, crash_fd, limits)


def confine_from_message(message, config):
    """:func:`confine` as the VMM process calls it: with the init message's ``confine``
    settings (``True``/``False``, or a dict of :func:`confine` keywords), or not at all."""
    from ..host.paths import StateDir

    settings = message.get("confine")
    if not settings:
        return None
    from .. import sched

    options = dict(settings) if isinstance(settings, dict) else {}
    read_paths = [config.kernel] + ([config.initrd] if config.initrd else [])
    uid, gid = resolve_user(options.pop("user", None))
    cgroup = sched.delegate(str(config.uuid), config.vcpus, config.sched, uid, gid)
    return confine(StateDir(message["state_dir"]), str(config.uuid), memory_bytes=config.memory_mib << 20,
                   read_paths=read_paths, write_dirs=[cgroup] if cgroup else [], user=(uid, gid), **options)


def _root_paths(read_paths, write_dirs=()):
    """``(host path, kind)`` for everything the jail's root holds: "dir" and "file" bound
    read-only, "rw" bound writable (no exec, no devices, no setuid), "link" recreated as
    the same symlink."""
    from ..devices.virtio import native

    entries = {}
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            entries[path] = "link"
        elif os.path.isdir(path):
            entries[path] = "dir"
    dirs = ["/usr", sys.prefix, sys.base_prefix, sys.exec_prefix, native.cache_dir(),
            os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    dirs += [p for p in sys.path if p and os.path.isabs(p)]
    dirs.append(SYS_CPU)
    for path in sorted({os.path.realpath(p) for p in dirs}):
        if path == "/" or not os.path.isdir(path):
            continue
        if _inside(path, entries):
            continue  # inside a directory already bound
        entries[path] = "dir"
    for path in read_paths:
        if os.path.isfile(path):
            entries[os.path.abspath(path)] = "file"
    for path in write_dirs:
        if os.path.isdir(path):
            entries[os.path.abspath(path)] = "rw"
    return sorted(entries.items())


def _inside(path, entries):
    return any(path.startswith(d.rstrip("/") + "/") for d, kind in entries.items() if kind == "dir")


def _mount(ffi, libc, source, target, fstype, flags, data=None):
    if libc.mount(source.encode() if source else ffi.NULL, target.encode(), fstype.encode() if fstype else ffi.NULL,
                  flags, data.encode() if data else ffi.NULL) != 0:
        e = ffi.errno
        raise HostError(f"confinement: mount {source or fstype} on {target}: {os.strerror(e)}", e)


def _enter_mount_namespace(ffi, libc, paths, uid, gid):
    """A new mount namespace whose root is a tmpfs holding only ``paths`` (files as copies
    owned by ``uid``: a kernel built 0711 is still loadable)."""
    if libc.unshare(CLONE_NEWNS) != 0:
        raise HostError(f"confinement: unshare(CLONE_NEWNS): {os.strerror(ffi.errno)}", ffi.errno)
    _mount(ffi, libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing leaks back to the host
    os.makedirs(JAIL_MOUNTPOINT, mode=0o700, exist_ok=True)
    root = JAIL_MOUNTPOINT
    size = (1 << 20) + sum(os.path.getsize(path) for path, kind in paths if kind == "file")
    _mount(ffi, libc, "xvm-jail", root, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={size}")
    os.makedirs(root + "/.boot", mode=0o755)
    # The private /tmp first: a checkout or cache under /tmp is bound inside it below,
    # instead of being hidden by it.
    os.makedirs(root + "/tmp", mode=0o1777)
    _mount(ffi, libc, "tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"mode=1777,size={TMP_SIZE}")
    ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    for path, kind in paths:
        target = root + path
        if kind == "link":
            os.symlink(os.readlink(path), target)
            continue
        if kind == "file":  # a copy the VMM user can read, whatever the original's mode
            copy = f"{root}/.boot/{len(os.listdir(root + '/.boot'))}"
            shutil.copyfile(path, copy)
            os.chown(copy, uid, gid)
            os.chmod(copy, 0o400)
            path = copy
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            if kind in ("dir", "rw"):
                os.makedirs(target, mode=0o755)
            else:
                open(target, "a").close()
        _mount(ffi, libc, path, target, None, MS_BIND | MS_REC)
        _mount(ffi, libc, None, target, None,
               MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC if kind == "rw" else ro)
    os.makedirs(root + "/dev", mode=0o755)
    for name in DEVICES:
        target = f"{root}/dev/{name}"
        open(target, "a").close()
        _mount(ffi, libc, f"/dev/{name}", target, None, MS_BIND)
        _mount(ffi, libc, None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC)
    os.makedirs(root + "/proc", mode=0o555)
    _mount(ffi, libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/.old-root", mode=0o700)
    new_root, put_old = ffi.new("char[]", root.encode()), ffi.new("char[]", (root + "/.old-root").encode())
    if libc.syscall(SYS_pivot_root, ffi.cast("char *", new_root), ffi.cast("char *", put_old)) != 0:
        raise HostError(f"confinement: pivot_root: {os.strerror(ffi.errno)}", ffi.errno)
    os.chdir("/")
    if libc.umount2(b"/.old-root", MNT_DETACH) != 0:
        raise HostError(f"confinement: detaching the host's root: {os.strerror(ffi.errno)}", ffi.errno)
    os.rmdir("/.old-root")
    _mount(ffi, libc, None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _set_limits(address_space, nofile):
    limits = {"RLIMIT_NOFILE": nofile, "RLIMIT_AS": address_space, "RLIMIT_CORE": 0}
    for name, value in limits.items():
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (OSError, ValueError) as e:
            raise HostError(f"confinement: setrlimit {name}={value}: {e}") from None
    return limits


def _drop_privileges(ffi, libc, uid, gid):
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise HostError(f"confinement: PR_SET_NO_NEW_PRIVS: {os.strerror(ffi.errno)}", ffi.errno)
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ffi.errno != errno.EINVAL:
            raise HostError(f"confinement: dropping capability {cap}: {os.strerror(ffi.errno)}", ffi.errno)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from 0 to non-zero: permitted and effective sets become empty
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    if int(status["CapEff"].strip(), 16) or int(status["CapPrm"].strip(), 16) or os.geteuid() != uid:
        raise HostError(f"confinement: capabilities are left after the drop: {status['CapEff'].strip()}")


# --- test hooks --------------------------------------------------------------------------------

def _debug_syscall(vmm, action):
    """``DebugSyscall(name)``: make the system call ``name`` with zero arguments (XVM_TEST_HOOKS=1)."""
    nr = syscall_number(action.name)
    result = _handler().lib.xvm_jail_syscall(nr)
    return {"syscall": action.name, "result": int(result)}


def _debug_open(vmm, action):
    """``DebugOpen(path)``: try to read ``path`` (XVM_TEST_HOOKS=1)."""
    try:
        with open(action.path, "rb") as f:
            f.read(1)
    except OSError as e:
        return {"opened": False, "errno": e.errno, "error": e.strerror}
    return {"opened": True, "errno": 0, "error": None}


def install_test_hooks():
    """With XVM_TEST_HOOKS=1 in this process's environment, the VMM serves the test-only
    actions (:class:`~xvm.vmm.actions.DebugSyscall`); otherwise nothing happens."""
    from . import actions as A
    from .vmm import Vmm

    if A.TEST_HOOKS:
        Vmm._do_DebugSyscall = _debug_syscall
        Vmm._do_DebugOpen = _debug_open


def status_of(pid):
    """``/proc/<pid>/status`` as a dict (for tests and diagnostics)."""
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}


def describe(jail):
    return json.dumps(jail.to_dict()) if jail is not None else "unconfined"
