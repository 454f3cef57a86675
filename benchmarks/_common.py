"""Helpers shared by the benchmarks: building the test guests and the C peer VMM."""
import importlib.util
import pathlib
import statistics

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
