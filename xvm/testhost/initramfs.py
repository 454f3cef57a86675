"""Initramfs images built from busybox-static and the cached kernel modules.

* :func:`testhost_initramfs` -- the TCG test host's: loads virtio/9p/overlay/kvm_amd/fuse, mounts the
  host's root (9p, read-only) under a tmpfs overlay, starts the KVM keeper and runs the job.
* :func:`nested_initramfs` -- a tiny one for nested guests: its init runs a shell snippet (by
  default prints a marker) and powers off.

Images are uncompressed newc cpio archives, written by :class:`CpioWriter` (no cpio(1) needed),
cached in ``$XVM_CACHE/testhost`` under a hash of their content.
"""
import errno
import os
import stat
from pathlib import Path

from . import cache, keeper
from .errors import NotPreparedError

BUSYBOX = Path("/bin/busybox")

# What the test host needs; dependencies are resolved from each module's modinfo. fuse is for
# zfs-fuse (the ZFS pools of tests/hvm/test_storage_linux.py).
TESTHOST_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "kvm_amd", "fuse")

# Marker lines on the test host's console (see TestHost).
BEGIN_MARKER = "XVM-TESTHOST-BEGIN"
EXIT_MARKER = "XVM-TESTHOST-EXIT"

NESTED_MARKER = "XVM-NESTED-INIT-OK"


class CpioWriter:
    """Writes a newc ("070701") cpio archive, the format the kernel unpacks as initramfs."""

    def __init__(self):
        self._chunks = []
        self._ino = 1

    def _entry(self, name, mode, data=b"", nlink=1, rdev=(0, 0)):
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._chunks += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]

    def directory(self, name, mode=0o755):
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name, data, mode=0o644):
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, mode=0o600):
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def getvalue(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        return b"".join(self._chunks)


def _pad(length):
    return b"\0" * (-length % 4)


def busybox_base(writer: CpioWriter):
    if not BUSYBOX.exists():
        raise NotPreparedError(f"{BUSYBOX} missing (package busybox-static)", cache.cache_dir())
    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "mnt", "lib", "lib/modules"):
        writer.directory(d)
    writer.chardev("dev/console", 5, 1)
    writer.chardev("dev/null", 1, 3, 0o666)
    writer.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    writer.symlink("bin/sh", "busybox")


# --- kernel modules ---------------------------------------------------------------------------


def _modname(filename: str) -> str:
    name = filename.split(".ko")[0]
    return name.replace("-", "_")


def _modinfo_depends(data: bytes) -> list[str]:
    # The .modinfo section holds NUL-separated "key=value" strings.
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    end = data.index(b"\0", at + 1)
    value = data[at + len(b"\0depends="):end].decode()
    return [_modname(d) for d in value.split(",") if d]


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        import lzma
        data = lzma.decompress(data)
    elif path.name.endswith(".zst"):
        raise NotImplementedError(f"{path}: zstd-compressed modules are not supported")
    return data


def resolve_modules(modules_dir: Path, wanted) -> list[tuple[str, bytes]]:
    """(name, uncompressed .ko) for ``wanted`` and everything they depend on, in load order.
    modules.dep is absent from a package that was never installed, so dependencies come from
    each module's own modinfo."""
    index = {}
    for path in (modules_dir / "kernel").rglob("*.ko*"):
        index[_modname(path.name)] = path
    builtin = set()
    builtin_list = modules_dir / "modules.builtin"
    if builtin_list.exists():
        builtin = {_modname(Path(line).name) for line in builtin_list.read_text().split()}
    order, seen = [], set()

    def visit(name, chain):
        if name in seen:
            return
        if name not in index:
            if name in builtin:
                seen.add(name)
                return
            raise NotPreparedError(f"kernel module {name} (needed by {' <- '.join(chain)}) not in {modules_dir}",
                                   cache.cache_dir())
        seen.add(name)
        data = _read_module(index[name])
        for dep in _modinfo_depends(data):
            visit(dep, chain + [dep])
        order.append((name, data))

    for name in wanted:
        visit(_modname(name), [_modname(name)])
    return order


# --- the test host's initramfs ----------------------------------------------------------------

# Kernel command line parameters read by the init below:
#   xvm.results=<path>     the results share's path, the same as on the host; the job is
#                          <path>/.xvm-testhost/job.sh
#   xvm.rw=<tag>:<path>    a writable 9p share mounted at <path> (the results share)
#   xvm.ro=<tag>:<path>    a read-only 9p share under a tmpfs overlay at <path> (a cwd in /tmp)
#                          -- mounted in the order given, after the machine's own /tmp and /run
TESTHOST_INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "xvm-testhost: $*"; }
fail() { say "FATAL: $*"; echo "XVM-TESTHOST-EXIT 125"; poweroff -f; sleep 5; reboot -f; }
for m in $(cat /lib/modules/load-order); do
    insmod /lib/modules/$m.ko || say "insmod $m failed"
done
MOUNTS=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        xvm.results=*) RESULTS="${arg#xvm.results=}" ;;
        xvm.rw=*|xvm.ro=*) MOUNTS="$MOUNTS $arg" ;;
    esac
done
mkdir -p /mnt/lower /mnt/rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /mnt/lower \
    || fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 rw /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay /newroot \
    || fail "cannot mount the overlay"
N=/newroot
mount -t proc proc $N/proc
mount -t sysfs sys $N/sys
mount -t cgroup2 cgroup2 $N/sys/fs/cgroup 2>/dev/null || say "no cgroup2 mount"
mount -t devtmpfs dev $N/dev
mkdir -p $N/dev/pts $N/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $N/dev/pts
mount -t tmpfs -o mode=1777 shm $N/dev/shm
mount -t tmpfs -o mode=1777 tmp $N/tmp
mount -t tmpfs -o mode=0755 run $N/run
mkdir -p -m 1777 $N/run/lock  # /var/lock, as systemd-tmpfiles makes it (zfs-fuse locks there)
for m in $MOUNTS; do
    spec="${m#xvm.r?=}"; tag="${spec%%:*}"; path="${spec#*:}"
    mkdir -p "$N$path"
    case "$m" in
    xvm.rw=*)
        mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "$tag" "$N$path" \
            || fail "cannot mount the share $tag at $path" ;;
    *)
        mkdir -p "/mnt/$tag" "/mnt/rw/$tag/upper" "/mnt/rw/$tag/work"
        mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose "$tag" "/mnt/$tag" \
            || fail "cannot mount the share $tag at $path"
        mount -t overlay -o "lowerdir=/mnt/$tag,upperdir=/mnt/rw/$tag/upper,workdir=/mnt/rw/$tag/work" \
            overlay "$N$path" || fail "cannot mount the overlay on $path" ;;
    esac
done
CTL="$RESULTS/.xvm-testhost"
hostname xvm-testhost
ip link set lo up 2>/dev/null
if [ -e /dev/kvm ]; then
    # Keep one idle KVM VM for the machine's whole life (keeper.py says why).
    /bin/xvm-kvm-keeper </dev/null >/run/xvm-keeper.ready &
    i=0
    while [ ! -s /run/xvm-keeper.ready ] && [ $i -lt 1200 ] && kill -0 $! 2>/dev/null; do
        sleep 0.05; i=$((i+1))
    done
    [ -s /run/xvm-keeper.ready ] || say "warning: the KVM keeper did not start"
else
    say "warning: no /dev/kvm (kvm_amd did not load)"
fi
echo "XVM-TESTHOST-BEGIN $(cut -d' ' -f1 /proc/uptime)"
chroot $N /usr/bin/env -i /bin/sh "$CTL/job.sh" </dev/null
rc=$?
echo "$rc" > "$N$CTL/status"
sync
echo "XVM-TESTHOST-EXIT $rc"
poweroff -f
sleep 5
reboot -f
"""


def testhost_initramfs() -> tuple[cache.KernelPackage, Path]:
    """The generic kernel package and the test host's initramfs for it (built once, cached)."""
    package = cache.kernel_package("generic")
    busybox = BUSYBOX.read_bytes() if BUSYBOX.exists() else b""
    key = cache.content_hash(package.release, TESTHOST_INIT, busybox, ",".join(TESTHOST_MODULES),
                             keeper.keeper_elf())
    dest = cache.build_dir() / f"testhost-{package.release}-{key}.cpio"
    if dest.exists():
        return package, dest
    writer = CpioWriter()
    busybox_base(writer)
    writer.file("init", TESTHOST_INIT.encode(), 0o755)
    writer.file("bin/xvm-kvm-keeper", keeper.keeper_elf(), 0o755)
    modules = resolve_modules(package.modules, TESTHOST_MODULES)
    for name, data in modules:
        writer.file(f"lib/modules/{name}.ko", data)
    writer.file("lib/modules/load-order", "".join(f"{name}\n" for name, _ in modules).encode())
    cache.write_atomic(dest, writer.getvalue())
    return package, dest


# --- initramfs for nested guests --------------------------------------------------------------

NESTED_DEFAULT_SCRIPT = f'echo "{NESTED_MARKER} $(cut -d" " -f1 /proc/uptime)"\n'


def nested_initramfs(script: str = NESTED_DEFAULT_SCRIPT, modules=()) -> Path:
    """A tiny busybox initramfs for nested guests (built once per content, cached): /init
    mounts /proc, /sys and /dev, loads ``modules`` of the cloud kernel (with what they depend
    on, in order), runs ``script`` with busybox sh, then powers off."""
    busybox = BUSYBOX.read_bytes() if BUSYBOX.exists() else b""
    resolved = resolve_modules(cache.kernel_package("cloud").modules, modules) if modules else []
    names = " ".join(name for name, _ in resolved)
    init = (
        "#!/bin/sh\n"
        "/bin/busybox --install -s /bin\n"
        "export PATH=/bin\n"
        "mount -t proc proc /proc\n"
        "mount -t sysfs sys /sys\n"
        "mount -t devtmpfs dev /dev\n"
        + (f"for m in {names}; do insmod /lib/modules/$m.ko; done\n" if names else "")
        + f"{script}\n"
        "poweroff -f\n"
        "sleep 5\n"
        "reboot -f\n"
    )
    dest = cache.build_dir() / f"nested-{cache.content_hash(init, busybox)}.cpio"
    if dest.exists():
        return dest
    writer = CpioWriter()
    busybox_base(writer)
    for name, data in resolved:
        writer.file(f"lib/modules/{name}.ko", data)
    writer.file("init", init.encode(), 0o755)
    cache.write_atomic(dest, writer.getvalue())
    return dest


# --- kernel modules for the test host itself ----------------------------------------------------

SYS_init_module = 175  # x86-64


def load_testhost_modules(names) -> None:
    """Load ``names`` (and what they depend on) into the running test host kernel.

    The generic kernel has e.g. tun and bridge as modules, and its root (the host's, over
    9p) has no /lib/modules for it, so they come from the cached package. Raises
    NotPreparedError if the cached package is not the running kernel's."""
    import ctypes

    need = [name for name in names if not os.path.isdir(f"/sys/module/{name}")]
    if not need:
        return
    package = cache.kernel_package("generic")
    release = os.uname().release
    if package.release != release:
        raise NotPreparedError(f"no modules for the running kernel {release} (cached: {package.release})",
                               cache.cache_dir())
    libc = ctypes.CDLL(None, use_errno=True)
    for name, data in resolve_modules(package.modules, need):
        if os.path.isdir(f"/sys/module/{name}"):
            continue
        image = ctypes.create_string_buffer(data, len(data))
        if libc.syscall(SYS_init_module, image, ctypes.c_ulong(len(data)), b"") != 0:
            err = ctypes.get_errno()
            if err != errno.EEXIST:  # loaded meanwhile
                raise OSError(err, f"loading module {name}: {os.strerror(err)}")
