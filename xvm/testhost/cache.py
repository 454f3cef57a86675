"""The test host's cache: kernels downloaded by scripts/setup-testhost.sh, and what is built
from them (vmlinux extracted from a bzImage, initramfs images).

Layout (``$XVM_CACHE``, default ``/var/cache/xvm``)::

    kernels/linux-image-<version>-amd64/         dpkg-deb -x of the package (never installed)
    kernels/linux-image-<version>-cloud-amd64/
    kernels/generic -> linux-image-<version>-amd64     kernel of the TCG test host
    kernels/cloud   -> linux-image-<version>-cloud-amd64   nested guest kernel
    testhost/                                    built artefacts, named by a content hash
"""
import dataclasses
import hashlib
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from .errors import NotPreparedError

DEFAULT_CACHE = "/var/cache/xvm"


def cache_dir() -> Path:
    return Path(os.environ.get("XVM_CACHE") or DEFAULT_CACHE)


def build_dir() -> Path:
    return cache_dir() / "testhost"


@dataclasses.dataclass(frozen=True)
class KernelPackage:
    """An extracted ``linux-image-*`` package."""

    flavour: str  # "generic" or "cloud"
    root: Path  # the directory dpkg-deb -x extracted into
    release: str  # uname -r, e.g. 6.1.0-56-cloud-amd64

    @property
    def bzimage(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.release}"


@dataclasses.dataclass(frozen=True)
class GuestKernel:
    """Paths of a cached kernel to boot as a guest: ``bzimage`` always, ``vmlinux`` (the
    uncompressed ELF, bootable through its PVH note) when it was asked for."""

    release: str
    bzimage: Path
    vmlinux: Path | None
    config: Path


def kernel_package(flavour: str, cache: Path | None = None) -> KernelPackage:
    """The extracted kernel package of ``flavour`` ("generic" or "cloud") in ``cache``
    (default: :func:`cache_dir`), or NotPreparedError."""
    cache = Path(cache) if cache is not None else cache_dir()
    link = cache / "kernels" / flavour
    root = link.resolve()
    if not (root / ".complete").exists():
        raise NotPreparedError(f"no {flavour} kernel in {link}", cache)
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise NotPreparedError(f"no vmlinuz in {root / 'boot'}", cache)
    release = images[-1].name[len("vmlinuz-"):]
    return KernelPackage(flavour=flavour, root=root, release=release)


def cloud_kernel(vmlinux: bool = True) -> GuestKernel:
    """The cached, unmodified Debian cloud kernel: the standard nested guest of the HVM tests
    and the peer baseline of the benchmarks. With ``vmlinux``, also the uncompressed ELF
    (extracted once from the bzImage and cached)."""
    return guest_kernel("cloud", vmlinux=vmlinux)


def guest_kernel(flavour: str, vmlinux: bool = True) -> GuestKernel:
    package = kernel_package(flavour)
    elf = extract_vmlinux(package.bzimage, build_dir() / f"vmlinux-{package.release}") if vmlinux else None
    return GuestKernel(release=package.release, bzimage=package.bzimage, vmlinux=elf, config=package.config)


# Boot protocol fields of the bzImage setup header (Documentation/x86/boot.rst).
_SETUP_SECTS = 0x1F1
_HEADER_MAGIC = 0x202  # "HdrS"
_PAYLOAD_OFFSET = 0x248
_PAYLOAD_LENGTH = 0x24C
_XZ_MAGIC = b"\xfd7zXZ\x00"
_LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
_LZ4_LEGACY_BLOCK = 8 << 20


def extract_vmlinux(bzimage: Path, dest: Path) -> Path:
    """Decompress the kernel ELF out of a bzImage (xz or lz4, which Debian's generic and cloud
    kernels use) into ``dest``, unless already there. Returns ``dest``."""
    if dest.exists():
        return dest
    data = bzimage.read_bytes()
    if data[_HEADER_MAGIC:_HEADER_MAGIC + 4] != b"HdrS":
        raise ValueError(f"{bzimage}: not a bzImage (no HdrS magic)")
    setup_sects = data[_SETUP_SECTS] or 4
    offset, length = struct.unpack_from("<II", data, _PAYLOAD_OFFSET)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start:start + length]
    if payload.startswith(_XZ_MAGIC):  # Debian's generic kernel: CONFIG_KERNEL_XZ
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(_LZ4_LEGACY_MAGIC):  # Debian's cloud kernel: CONFIG_KERNEL_LZ4
        elf = _lz4_legacy_decompress(payload)
    else:
        raise ValueError(f"{bzimage}: unsupported payload compression {payload[:4].hex()}")
    if not elf.startswith(b"\x7fELF"):
        raise ValueError(f"{bzimage}: decompressed payload is not an ELF")
    write_atomic(dest, elf)
    return dest


def _lz4_legacy_blocks(payload: bytes):
    # Legacy lz4 frame: magic, then (u32 compressed size, block)...; the kernel build appends
    # the u32 uncompressed size, which never fits as a block and ends the walk.
    at = 4
    while at + 4 <= len(payload):
        (size,) = struct.unpack_from("<I", payload, at)
        if size == 0 or size > _LZ4_LEGACY_BLOCK + (_LZ4_LEGACY_BLOCK >> 6) or at + 4 + size > len(payload):
            break
        yield payload[at + 4:at + 4 + size]
        at += 4 + size


def _lz4_legacy_decompress(payload: bytes) -> bytes:
    blocks = list(_lz4_legacy_blocks(payload))
    tool = shutil.which("lz4")
    if tool:
        stream = _LZ4_LEGACY_MAGIC + b"".join(struct.pack("<I", len(b)) + b for b in blocks)
        return subprocess.run([tool, "-dc"], input=stream, stdout=subprocess.PIPE, check=True).stdout
    return b"".join(_lz4_block_decompress(b) for b in blocks)


def _lz4_block_decompress(src: bytes) -> bytes:
    """The LZ4 block format (lz4_Block_format.md), for hosts without the lz4 tool."""
    out = bytearray()
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        length = token >> 4
        if length == 15:
            while True:
                b = src[i]
                i += 1
                length += b
                if b != 255:
                    break
        out += src[i:i + length]
        i += length
        if i >= n:
            break
        offset = src[i] | (src[i + 1] << 8)
        i += 2
        length = token & 15
        if length == 15:
            while True:
                b = src[i]
                i += 1
                length += b
                if b != 255:
                    break
        length += 4
        start = len(out) - offset
        if offset >= length:
            out += out[start:start + length]
        else:
            for k in range(length):
                out.append(out[start + k])
    return bytes(out)


def write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise


def content_hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]
