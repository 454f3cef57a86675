#!/usr/bin/env python3
"""Build the xvm test guests (freestanding ELF64 images with a PVH entry note).

Each guest is ``<name>.c`` in this directory linked with the shared runtime in
``runtime/``. Images load at 1 MiB and boot under xvm, cvmm and
``qemu-system-x86_64 -kernel``. Builds are cached: a guest is rebuilt only
when one of its sources (or this script) is newer than the image.

    python3 tests/guests/build.py            # build every guest
    python3 tests/guests/build.py hello smp  # build some
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
RUNTIME = HERE / "runtime"
DEFAULT_OUTDIR = HERE / "out"

GUESTS = ("hello", "smp", "irq", "busy", "poweroff", "reboot", "pio_bench", "net", "blk",
          "blkstorm", "dirty")

RUNTIME_SOURCES = ("start.S", "rt.c", "lib.c", "virtio_mmio.c")
RUNTIME_DEPS = RUNTIME_SOURCES + ("rt.h", "layout.h", "guest.ld", "virtio_mmio.h")

CFLAGS = (
    "-m64", "-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
    "-ffreestanding", "-fno-builtin", "-nostdlib", "-nostdinc",
    "-fno-pic", "-fno-pie", "-no-pie", "-static",
    "-mno-red-zone", "-mgeneral-regs-only", "-mcmodel=small",
    "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fno-omit-frame-pointer",
    "-fcf-protection=none", "-fno-tree-loop-distribute-patterns",
)
LDFLAGS = ("-Wl,--build-id=none", "-Wl,-z,max-page-size=0x1000", "-Wl,-z,noexecstack",
           "-Wl,--no-warn-rwx-segments")


class GuestBuildError(RuntimeError):
    """A guest failed to build; carries the compiler's output."""


def _sources(name: str) -> list[pathlib.Path]:
    return [RUNTIME / s for s in RUNTIME_SOURCES] + [HERE / f"{name}.c"]


def _deps(name: str) -> list[pathlib.Path]:
    return [RUNTIME / s for s in RUNTIME_DEPS] + [HERE / f"{name}.c", pathlib.Path(__file__).resolve()]


def _gcc_include_dir(cc: str) -> str:
    """The compiler's own header directory (stdarg.h), kept despite -nostdinc."""
    out = subprocess.run([cc, "-print-file-name=include"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def build(name: str, outdir: str | os.PathLike | None = None) -> pathlib.Path:
    """Build guest ``name`` (if out of date) and return the path of its ELF image."""
    if name not in GUESTS:
        raise ValueError(f"unknown guest {name!r}; known: {', '.join(GUESTS)}")
    out = pathlib.Path(outdir) if outdir is not None else DEFAULT_OUTDIR
    out.mkdir(parents=True, exist_ok=True)
    image = out / f"{name}.elf"
    if image.exists():
        built = image.stat().st_mtime
        if all(d.stat().st_mtime <= built for d in _deps(name)):
            return image

    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise GuestBuildError(f"compiler {cc!r} not found")
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".elf", dir=out)
    os.close(fd)
    cmd = [cc, *CFLAGS, "-isystem", _gcc_include_dir(cc), f"-I{RUNTIME}",
           f"-T{RUNTIME / 'guest.ld'}", *LDFLAGS, "-o", tmp, *map(str, _sources(name))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise GuestBuildError(f"building guest {name!r} failed:\n{' '.join(cmd)}\n{proc.stderr}")
        os.replace(tmp, image)  # atomic: concurrent builders never see half an image
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return image


def build_all(outdir: str | os.PathLike | None = None) -> dict[str, pathlib.Path]:
    return {name: build(name, outdir) for name in GUESTS}


def main(argv: list[str]) -> int:
    names = argv or list(GUESTS)
    status = 0
    for name in names:
        try:
            print(build(name))
        except (GuestBuildError, ValueError) as exc:
            print(exc, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
