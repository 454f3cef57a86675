"""xvm.images: guest images from the cached Debian cloud kernel and busybox-static.

The initramfs is parsed back (newc cpio) and checked against what the module promises. Builds
go to a temporary cache whose kernels/cloud links to the real, already downloaded package, so
the tests never write into $XVM_CACHE. Downloads are exercised offline with fake apt tools.
"""
import os
import shutil
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from xvm import images
from xvm.errors import ConfigError, XvmError
from xvm.images import GuestImage, ImageSourceMissing, KernelDownloadError, build_image, run_argument
from xvm.testhost import cache as tcache
from xvm.testhost import initramfs as tinitramfs

SETUP_HINT = "run scripts/setup.sh (it downloads Debian's cloud kernel into $XVM_CACHE, default /var/cache/xvm)"


def parse_newc(data):
    """{name: (mode, data, (rdevmajor, rdevminor))} of a newc ("070701") cpio archive."""
    entries, at = {}, 0
    while True:
        assert data[at:at + 6] == b"070701", f"bad cpio magic at {at}"
        fields = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_at = at + 110
        name = data[name_at:name_at + namesize - 1].decode()
        body_at = (name_at + namesize + 3) & ~3
        body = data[body_at:body_at + filesize]
        at = (body_at + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body, (rmaj, rmin))


def modinfo(ko, key):
    marker = f"\0{key}=".encode()
    start = ko.index(marker) + len(marker)
    return ko[start:ko.index(b"\0", start)].decode()


@pytest.fixture(scope="module")
def package():
    try:
        pkg = tcache.kernel_package("cloud")
    except Exception as e:  # NotPreparedError
        pytest.skip(f"the Debian cloud kernel is not in the cache ({e}); {SETUP_HINT}")
    if not tinitramfs.BUSYBOX.exists():
        pytest.skip(f"{tinitramfs.BUSYBOX} missing (busybox-static); {SETUP_HINT}")
    return pkg


def linked_cache(root, package):
    """A cache directory whose kernels/cloud is the real extracted package."""
    (root / "kernels").mkdir(parents=True)
    (root / "kernels" / "cloud").symlink_to(package.root)
    real_vmlinux = tcache.build_dir() / f"vmlinux-{package.release}"
    if real_vmlinux.exists():
        (root / "testhost").mkdir()
        (root / "testhost" / real_vmlinux.name).symlink_to(real_vmlinux)
    return root


@pytest.fixture(scope="module")
def built(package, tmp_path_factory):
    root = linked_cache(tmp_path_factory.mktemp("cache"), package)
    messages = []
    start = time.monotonic()
    image = build_image("cloud", progress=messages.append, cache=root)
    return image, messages, time.monotonic() - start, root


@pytest.fixture(scope="module")
def archive(built):
    return parse_newc(built[0].initrd.read_bytes())


def test_image_paths(built, package):
    image = built[0]
    assert isinstance(image, GuestImage)
    assert image.kernel == package.bzimage and image.release == package.release
    assert image.kernel.read_bytes()[0x202:0x206] == b"HdrS"
    assert image.initrd.is_file() and image.initrd.is_relative_to(built[3] / "images")
    if image.vmlinux is not None:
        with open(image.vmlinux, "rb") as f:
            assert f.read(4) == b"\x7fELF"


def test_progress_messages(built):
    messages = built[1]
    assert f"resolving {len(images.BASE_MODULES)} modules" in messages
    assert any(m.startswith("writing initramfs") for m in messages)
    assert not any(m.startswith("downloading") for m in messages)  # the package was in the cache


def test_modules_in_dependency_order(built, archive):
    image = built[0]
    # virtio_pci's and virtio_net's dependencies come along (Debian 12's cloud kernel has them all).
    assert set(images.BASE_MODULES) | {"virtio_pci_modern_dev", "net_failover", "failover"} <= set(image.modules)
    load_order = archive["lib/modules/load-order"][1].decode().split()
    assert tuple(load_order) == image.modules
    seen = set()
    for name in load_order:
        mode, ko, _ = archive[f"lib/modules/{name}.ko"]
        assert stat.S_ISREG(mode) and ko[:4] == b"\x7fELF", name
        assert modinfo(ko, "name") == name
        for dep in filter(None, modinfo(ko, "depends").split(",")):
            assert dep.replace("-", "_") in seen, f"{name} loads before its dependency {dep}"
        seen.add(name)


def test_init_and_power_button_handler(archive, tmp_path):
    mode, init, _ = archive["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 and init.decode() == images.INIT
    text = init.decode()
    for promised in ("mount -t proc", "mount -t sysfs", "mount -t devtmpfs", "insmod /lib/modules/$m.ko",
                     "acpid -c /etc/acpi", 'echo "xvm-image: ready"', 'echo "xvm-image: cpus=$(nproc)"',
                     "xvm.run=*", 'echo "xvm-image: exit $status"', "setsid cttyhack sh -l", "poweroff -f"):
        assert promised in text, promised
    # busybox acpid maps KEY_POWER to "PWRF/00000080" under its -c directory and runs that file.
    mode, handler, _ = archive["etc/acpi/PWRF/00000080"]
    assert stat.S_ISREG(mode) and mode & 0o111
    assert handler.startswith(b"#!/bin/sh\n") and b"sync" in handler and b"poweroff -f" in handler
    assert b"PS1='# '" in archive["etc/profile"][1]
    for name, script in (("init", init), ("handler", handler)):
        path = tmp_path / name
        path.write_bytes(script)
        check = subprocess.run(["/bin/busybox", "sh", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, f"{name}: {check.stderr}"


def test_busybox_and_devices(archive):
    mode, data, _ = archive["bin/busybox"]
    assert stat.S_ISREG(mode) and data == tinitramfs.BUSYBOX.read_bytes()
    mode, target, _ = archive["bin/sh"]
    assert stat.S_ISLNK(mode) and target == b"busybox"
    mode, _, rdev = archive["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == (5, 1)
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "etc/acpi/PWRF"):
        assert stat.S_ISDIR(archive[d][0]), d


def test_run_argument_decodes_with_busybox():
    script = "echo 'hello'; exit 3\nuname -r | tr a-z A-Z\n"
    arg = run_argument(script)
    assert arg.startswith("xvm.run=") and " " not in arg
    decoded = subprocess.run(["/bin/busybox", "base64", "-d"], input=arg[len("xvm.run="):].encode(),
                             capture_output=True, check=True).stdout
    assert decoded.decode() == script


def test_cache_hit_is_fast_and_identical(built):
    image, _, cold, root = built
    messages = []
    start = time.monotonic()
    again = build_image("cloud", progress=messages.append, cache=root)
    warm = time.monotonic() - start
    assert again == image
    assert warm < 0.5, f"cache hit took {warm:.2f} s (cold build {cold:.2f} s)"
    assert messages == [f"using cached {image.initrd}"]


def test_extra_modules_change_the_image(built, archive):
    image, _, _, root = built
    extra = build_image("cloud", extra_modules=["virtio-console"], cache=root, vmlinux=False)
    assert extra.initrd != image.initrd
    assert extra.modules[:len(image.modules)] == image.modules and "virtio_console" in extra.modules
    assert extra.vmlinux is None
    assert "lib/modules/virtio_console.ko" in parse_newc(extra.initrd.read_bytes())


def test_unknown_module_is_a_clear_error(built):
    with pytest.raises(ImageSourceMissing, match="no_such_module") as info:
        build_image("cloud", extra_modules=["no_such_module"], cache=built[3])
    assert isinstance(info.value, XvmError)


def test_unknown_flavour():
    with pytest.raises(ConfigError, match="flavour"):
        build_image("rt", cache="/nonexistent")


def test_busybox_missing(built, monkeypatch):
    monkeypatch.setattr(tinitramfs, "BUSYBOX", Path("/nonexistent/busybox"))
    with pytest.raises(ImageSourceMissing, match="busybox-static"):
        build_image("cloud", cache=built[3])


def test_empty_cache_without_downloads(tmp_path):
    with pytest.raises(ImageSourceMissing, match=r"no cloud kernel .* downloads are off.*scripts/setup.sh"):
        build_image("cloud", cache=tmp_path, download=False)
    assert not (tmp_path / "images").exists()


# --- downloads, offline: fake apt-cache / apt-get on PATH -------------------------------------

FAKE_RELEASE = "6.1.0-999-cloud-amd64"
FAKE_PACKAGE = f"linux-image-{FAKE_RELEASE}"


def fake_apt(bindir, deb=None, log=None):
    """apt-cache resolving the cloud metapackage to FAKE_PACKAGE; apt-get that copies ``deb``
    (or fails like apt without network when ``deb`` is None)."""
    bindir.mkdir(exist_ok=True)
    (bindir / "apt-cache").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$1 $2" >> {log}
        echo "linux-image-cloud-amd64"
        echo "  Depends: {FAKE_PACKAGE}"
        """))
    fetch = f'cp {deb} "./{FAKE_PACKAGE}_1_amd64.deb"' if deb else \
        'echo "E: Failed to fetch http://deb.debian.org/debian/pool/main/l/linux/x.deb  Could not resolve"; exit 100'
    (bindir / "apt-get").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$1 $2" >> {log}
        case "$1" in
            update) exit 0 ;;
            download) {fetch} ;;
        esac
        """))
    for tool in ("apt-cache", "apt-get"):
        (bindir / tool).chmod(0o755)
    return bindir


@pytest.fixture
def fake_deb(package, tmp_path):
    """A small linux-image package: a stand-in vmlinuz and the real modules the image needs."""
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {FAKE_PACKAGE}\nVersion: 1\nArchitecture: amd64\nMaintainer: xvm tests <t@example.org>\n"
        "Description: test kernel\n")
    (tree / "boot").mkdir()
    shutil.copy(package.bzimage, tree / "boot" / f"vmlinuz-{FAKE_RELEASE}")
    modules = tree / "lib" / "modules" / FAKE_RELEASE
    for path in package.modules.rglob("*.ko*"):
        if path.name.split(".ko")[0].replace("-", "_") in images.BASE_MODULES + (
                "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "net_failover", "failover"):
            dest = modules / path.relative_to(package.modules)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest)
    deb = tmp_path / "kernel.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    return deb


def test_download_and_extract(fake_deb, tmp_path, monkeypatch):
    log = tmp_path / "apt.log"
    monkeypatch.setenv("PATH", f"{fake_apt(tmp_path / 'bin', fake_deb, log)}:{os.environ['PATH']}")
    root = tmp_path / "cache"
    messages = []
    image = build_image("cloud", progress=messages.append, cache=root, vmlinux=False)
    assert image.release == FAKE_RELEASE
    assert image.kernel == root / "kernels" / FAKE_PACKAGE / "boot" / f"vmlinuz-{FAKE_RELEASE}"
    assert (root / "kernels" / "cloud").resolve() == (root / "kernels" / FAKE_PACKAGE)
    assert (root / "kernels" / FAKE_PACKAGE / ".complete").exists()
    assert messages[:2] == [f"downloading {FAKE_PACKAGE}", f"extracting {FAKE_PACKAGE}"]
    assert [p.name for p in (root / "kernels").iterdir() if p.name.startswith(".")] == []
    assert "download " + FAKE_PACKAGE in log.read_text()
    # Downloaded once: the next build finds the package and the image in the cache.
    log.write_text("")
    assert build_image("cloud", cache=root, vmlinux=False) == image
    assert log.read_text() == ""


def test_download_failure_is_a_clear_error(package, tmp_path, monkeypatch):
    log = tmp_path / "apt.log"
    monkeypatch.setenv("PATH", f"{fake_apt(tmp_path / 'bin', None, log)}:{os.environ['PATH']}")
    root = tmp_path / "cache"
    with pytest.raises(KernelDownloadError) as info:
        build_image("cloud", cache=root)
    error = info.value
    assert isinstance(error, XvmError)
    assert error.returncode == 100 and error.command == ("apt-get", "download", FAKE_PACKAGE)
    assert "Failed to fetch" in str(error) and f"apt-get download {FAKE_PACKAGE} failed" in str(error)
    assert "update " in log.read_text()  # retried once after refreshing the package lists
    assert not (root / "kernels" / "cloud").exists()
    assert [p.name for p in (root / "kernels").iterdir()] == []


def test_unwritable_cache(package, tmp_path):
    # Running as root ignores permissions: make the cache's subdirectories plain files instead.
    root = tmp_path / "cache"
    (root / "kernels").mkdir(parents=True)
    (root / "kernels" / "cloud").symlink_to(package.root)
    (root / "testhost").write_text("not a directory")
    (root / "images").write_text("not a directory")
    messages = []
    with pytest.raises(XvmError, match=r"cannot write the image into .*images") as info:
        build_image("cloud", progress=messages.append, cache=root)
    assert info.value.errno is not None
    assert any(m.startswith("no vmlinux: cannot write") for m in messages)  # optional: not fatal
