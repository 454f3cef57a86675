"""Helpers shared by the benchmarks: building the test guests and the C peer VMM."""
import importlib.util
import os
import pathlib
import re
import statistics
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def guest(name):
    """Path of a built test guest."""
    return str(_load("xvm_test_guests", ROOT / "tests" / "guests" / "build.py").build(name))


def cvmm():
    """Path of the built C baseline VMM."""
    return str(_load("xvm_cvmm_build", ROOT / "benchmarks" / "cvmm" / "build.py").build())


def summary(values, unit):
    values = sorted(values)
    return f"median {statistics.median(values):.1f} {unit} (min {values[0]:.1f}, max {values[-1]:.1f}, n={len(values)})"


def add_program(writer, binary):
    """Put the host's program ``binary`` and every shared library it loads (as ldd lists
    them) into the initramfs ``writer`` (a :class:`~xvm.testhost.initramfs.CpioWriter` with
    busybox_base's directories), each at its own path."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = [m.group(1) for m in (re.search(r"(/\S+) \(0x", line) for line in out.splitlines()) if m]
    made = {"bin", "lib", "tmp"}
    for path in [binary] + libs:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            directory = "/".join(parts[:i])
            if directory not in made:
                made.add(directory)
                writer.directory(directory)
        with open(os.path.realpath(path), "rb") as f:
            writer.file(path.strip("/"), f.read(), 0o755)
