"""Bootable Linux guest images from Debian packages: ``xvm image build``.

An image is Debian's kernel (``linux-image-cloud-amd64`` by default, never installed on this
machine: ``apt-get download`` + ``dpkg-deb -x`` into the cache) and an initramfs of
busybox-static plus the kernel modules virtio devices need::

    img = xvm.images.build_image(progress=print)
    xvm.DomainConfig(name="linux", memory_mib=256, kernel=img.kernel, initrd=img.initrd,
                     cmdline="console=ttyS0 quiet")

The initramfs's ``/init`` (busybox sh) mounts /proc, /sys and /dev, loads the modules in
dependency order, starts busybox ``acpid`` (the ACPI power button -- ``Domain.shutdown()`` --
syncs and powers off), prints ``xvm-image: ready`` and ``xvm-image: cpus=<n>``, then

* with ``xvm.run=<base64 of a shell script>`` on the kernel command line (see
  :func:`run_argument`): runs the script, prints ``xvm-image: exit <status>`` and powers off;
* otherwise: a root shell on the serial console with the prompt ``# ``.

The kernel packages live where :mod:`xvm.testhost.cache` keeps them (``$XVM_CACHE``, default
/var/cache/xvm: ``kernels/<package>/``, ``kernels/<flavour>`` a link to it), so the HVM test host
and images share one download. Initramfs images are cached under ``images/`` by a hash of what
goes into them (kernel, init, module list, busybox): building again returns at once.
"""
import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import ConfigError, HostError, XvmError
from .testhost import cache as _cache
from .testhost import initramfs as _initramfs
from .testhost.errors import NotPreparedError

# flavour -> the Debian metapackage that depends on the current kernel of that flavour
FLAVOURS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}

# What every image loads; the dependencies (virtio_pci_modern_dev, virtio_pci_legacy_dev,
# net_failover, failover, ...) come from each module's modinfo.
BASE_MODULES = ("virtio", "virtio_ring", "virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net",
                "button", "evdev")

READY_LINE = "xvm-image: ready"
PROMPT = "# "
RUN_PARAMETER = "xvm.run"

# The image's /init. Each console line is slow under emulation: print only what callers wait for.
INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin:/usr/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
for m in $(cat /lib/modules/load-order); do
    insmod /lib/modules/$m.ko || echo "xvm-image: insmod $m failed"
done
# The power button (module button) reports KEY_POWER on an evdev; busybox acpid maps it to
# "PWRF/00000080" and runs /etc/acpi/PWRF/00000080. devtmpfs makes the event node
# asynchronously, and acpid opens the nodes after it daemonizes, writing its pid file after:
# wait for both (at most 5 s each), so that "ready" means a power-button press is heard.
i=0; while [ ! -e /dev/input/event0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid || echo "xvm-image: acpid failed"
i=0; while [ ! -e /run/acpid.pid ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo "xvm-image: ready"
echo "xvm-image: cpus=$(nproc)"
run=
set -f
for arg in $(cat /proc/cmdline); do
    case "$arg" in xvm.run=*) run="${arg#xvm.run=}" ;; esac
done
set +f
if [ -n "$run" ]; then
    if echo "$run" | base64 -d > /run/xvm-run.sh 2>/dev/null; then
        sh /run/xvm-run.sh
        status=$?
    else
        echo "xvm-image: xvm.run is not base64"
        status=126
    fi
    sync
    echo "xvm-image: exit $status"
else
    setsid cttyhack sh -l
fi
sync
poweroff -f
"""

POWER_BUTTON_HANDLER = "#!/bin/sh\nsync\npoweroff -f\n"
PROFILE = "export PS1='# '\n"


class ImageError(XvmError):
    """A guest image could not be built."""


class ImageSourceMissing(ImageError, ConfigError):
    """Something the image is made of is not on this machine (kernel package with downloads
    off, busybox-static, a kernel module); ``what`` names it."""

    def __init__(self, message, what):
        super().__init__(message)
        self.what = what


class KernelDownloadError(ImageError, HostError):
    """apt-get or dpkg-deb failed; ``command``, ``returncode`` and ``output`` (its tail) say how."""

    def __init__(self, message, command=(), returncode=None, output=""):
        HostError.__init__(self, message + (f":\n{output}" if output else ""))
        self.command = tuple(command)
        self.returncode = returncode
        self.output = output


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """A bootable guest: ``kernel`` (bzImage), ``vmlinux`` (the uncompressed ELF, bootable
    through its PVH note, or None), ``initrd`` (newc cpio), the kernel ``release`` and the
    ``modules`` the init loads, in load order."""

    kernel: Path
    vmlinux: Path | None
    initrd: Path
    release: str
    modules: tuple


def run_argument(script: str) -> str:
    """The kernel command-line parameter that makes the image's init run ``script`` (busybox
    sh), print ``xvm-image: exit <status>`` and power off."""
    return f"{RUN_PARAMETER}={base64.b64encode(script.encode()).decode()}"


def build_image(flavour="cloud", *, progress=None, extra_modules=(), cache=None, download=True,
                vmlinux=True, extra_programs=()) -> GuestImage:
    """Build (or find in the cache) the guest image of kernel ``flavour`` ("cloud" or
    "generic"). ``progress`` is called with short messages; ``extra_modules`` are loaded
    after :data:`BASE_MODULES`; ``cache`` overrides ``$XVM_CACHE``. Without ``download``, a
    kernel package that is not in the cache is an error instead of an ``apt-get download``.
    With ``vmlinux``, the uncompressed kernel is extracted too (once). ``extra_programs`` are
    host programs (names on $PATH or absolute paths, e.g. ``"mkfs.ext4"``) copied into the
    image at the same paths, with the shared libraries ``ldd`` says they need."""
    say = progress or (lambda message: None)
    root = Path(cache) if cache is not None else _cache.cache_dir()
    if flavour not in FLAVOURS:
        raise ConfigError(f"unknown kernel flavour {flavour!r}; known: {', '.join(sorted(FLAVOURS))}")
    wanted = tuple(dict.fromkeys(BASE_MODULES + tuple(_modname(m) for m in extra_modules)))
    package = _kernel_package(root, flavour, download, say)
    busybox = _busybox()
    programs = _host_programs(extra_programs)
    key = _cache.content_hash(package.release, str(package.bzimage.stat().st_size), INIT,
                              POWER_BUTTON_HANDLER, PROFILE, ",".join(wanted), busybox,
                              *(f"{guest}={_file_stamp(host)}" for guest, host in programs.items()))
    out = root / "images" / f"{package.release}-{key}"
    elf = _vmlinux(root, package, say) if vmlinux else None
    manifest = out / "manifest.json"
    initrd = out / "initrd.cpio"
    if manifest.exists() and initrd.exists():
        say(f"using cached {initrd}")
        modules = tuple(json.loads(manifest.read_text())["modules"])
    else:
        modules = _write_initramfs(out, package, wanted, busybox, say, programs)
    return GuestImage(kernel=package.bzimage, vmlinux=elf, initrd=initrd, release=package.release,
                      modules=modules)


def _modname(name):
    return name.removesuffix(".ko").replace("-", "_")


def _busybox() -> bytes:
    try:
        return _initramfs.BUSYBOX.read_bytes()
    except FileNotFoundError:
        raise ImageSourceMissing(f"{_initramfs.BUSYBOX} is missing: install busybox-static "
                                 "(apt-get install busybox-static, or run scripts/setup.sh)",
                                 str(_initramfs.BUSYBOX)) from None


def _host_programs(names):
    """``{path in the image: host file}`` for ``names`` and the shared libraries they load."""
    files = {}
    for name in names:
        path = shutil.which(name)
        if path is None:
            raise ImageSourceMissing(f"host program {name!r} is not installed (not on $PATH)", name)
        files[path.lstrip("/")] = os.path.realpath(path)
        try:
            ldd = subprocess.run(["ldd", path], capture_output=True, text=True, check=False).stdout
        except FileNotFoundError:
            raise ImageSourceMissing("ldd is missing (package libc-bin)", "ldd") from None
        for library in re.findall(r"(/\S+) \(0x", ldd):
            files[library.lstrip("/")] = os.path.realpath(library)
    return files


def _file_stamp(path):
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _write_initramfs(out, package, wanted, busybox, say, programs=None):
    say(f"resolving {len(wanted)} modules")
    try:
        resolved = _initramfs.resolve_modules(package.modules, wanted)
    except NotPreparedError as e:
        raise ImageSourceMissing(e.what, e.what) from None
    say(f"writing initramfs ({len(resolved)} modules)")
    writer = _initramfs.CpioWriter()
    _initramfs.busybox_base(writer)
    for d in ("root", "etc", "etc/acpi", "etc/acpi/PWRF", "var", "var/log"):
        writer.directory(d)
    writer.symlink("var/run", "../run")
    writer.file("init", INIT.encode(), 0o755)
    writer.file("etc/profile", PROFILE.encode())
    writer.file("etc/acpi/PWRF/00000080", POWER_BUTTON_HANDLER.encode(), 0o755)
    for name, data in resolved:
        writer.file(f"lib/modules/{name}.ko", data)
    made = {"bin", "dev", "proc", "sys", "tmp", "run", "mnt", "lib", "lib/modules", "root", "etc"}
    for guest_path, host_path in sorted((programs or {}).items()):
        parts = guest_path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth])
            if directory not in made:
                writer.directory(directory)
                made.add(directory)
        with open(host_path, "rb") as f:
            writer.file(guest_path, f.read(), 0o755)
    modules = tuple(name for name, _ in resolved)
    writer.file("lib/modules/load-order", "".join(f"{name}\n" for name in modules).encode())
    manifest = {"release": package.release, "kernel": str(package.bzimage), "modules": list(modules)}
    try:
        _cache.write_atomic(out / "initrd.cpio", writer.getvalue())
        _cache.write_atomic(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    except OSError as e:
        raise HostError(f"cannot write the image into {out}: {e.strerror}", e.errno) from None
    return modules


def _vmlinux(root, package, say):
    # The same file the HVM test host uses ($XVM_CACHE/testhost/vmlinux-<release>).
    dest = root / "testhost" / f"vmlinux-{package.release}"
    if not dest.exists():
        say("extracting vmlinux")
    try:
        return _cache.extract_vmlinux(package.bzimage, dest)
    except ValueError as e:  # a compression extract_vmlinux does not know: the bzImage still boots
        say(f"no vmlinux: {e}")
    except OSError as e:  # e.g. a read-only cache: the bzImage still boots
        say(f"no vmlinux: cannot write {dest}: {e.strerror}")
    return None


# --- the kernel package -------------------------------------------------------------------------


def _kernel_package(root, flavour, download, say) -> _cache.KernelPackage:
    """The extracted package of ``flavour`` in ``root`` (the layout of
    xvm.testhost.cache); downloaded first if need be."""
    try:
        return _cache.kernel_package(flavour, root)
    except NotPreparedError:
        pass
    link = root / "kernels" / flavour
    if not download:
        raise ImageSourceMissing(f"no {flavour} kernel in {link} and downloads are off "
                                 "(run scripts/setup.sh, or build without --no-download)", str(link))
    _download(root, flavour, say)
    try:
        return _cache.kernel_package(flavour, root)
    except NotPreparedError:
        raise ImageError(f"{link}: no vmlinuz after extracting the kernel package") from None


def _download(root, flavour, say):
    kernels = root / "kernels"
    try:
        kernels.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HostError(f"cannot create {kernels}: {e.strerror}", e.errno) from None
    meta = FLAVOURS[flavour]
    name = _resolve(meta) or (_apt_update(say) and _resolve(meta))
    if not name:
        raise KernelDownloadError(f"apt cannot resolve {meta} to a kernel package", ("apt-cache", "depends", meta))
    dest = kernels / name
    if not (dest / ".complete").exists():
        with tempfile.TemporaryDirectory(dir=kernels, prefix=".dl.") as tmp:
            os.chmod(tmp, 0o777)  # apt's sandbox user (_apt) writes the download here
            say(f"downloading {name}")
            try:
                _run(["apt-get", "download", name], cwd=tmp)
            except KernelDownloadError as first:  # stale package lists? update once and retry
                try:
                    _apt_update(say)
                except KernelDownloadError:
                    raise first from None
                _run(["apt-get", "download", name], cwd=tmp)
            debs = sorted(Path(tmp).glob(f"{name}_*.deb"))
            if not debs:
                raise KernelDownloadError(f"apt-get download {name} left no .deb", ("apt-get", "download", name))
            say(f"extracting {name}")
            staging = Path(tmp) / "root"
            _run(["dpkg-deb", "-x", str(debs[0]), str(staging)])
            (staging / ".complete").touch()
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(staging, dest)
    link = kernels / flavour
    tmp_link = kernels / f".{flavour}.{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(name)
    os.replace(tmp_link, link)


def _resolve(meta):
    result = _run(["apt-cache", "depends", meta], check=False)
    for line in result.stdout.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-") and line[len("Depends: linux-image-"):][:1].isdigit():
            return line.split(":", 1)[1].strip()
    return None


def _apt_update(say):
    say("updating the apt package lists")
    _run(["apt-get", "update"])
    return True


def _run(command, cwd=None, check=True):
    tool = shutil.which(command[0])
    if tool is None:
        raise ImageSourceMissing(f"{command[0]} not found: kernel packages are downloaded with apt "
                                 "(Debian); put the extracted package in the cache with scripts/setup.sh",
                                 command[0])
    try:
        result = subprocess.run([tool, *command[1:]], cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise KernelDownloadError(f"cannot run {command[0]}: {e.strerror}", command) from None
    if check and result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-8:])
        raise KernelDownloadError(f"{' '.join(command)} failed (exit status {result.returncode})",
                                  command, result.returncode, tail)
    return result
