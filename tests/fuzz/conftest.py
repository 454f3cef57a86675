"""The fuzz targets: bounded hypothesis runs (``-m fuzz``), seeds from ``corpus/``."""
import os

import pytest
from hypothesis import HealthCheck, settings

# The profile of the fuzz targets: no per-example deadline (a loaded CI machine is slow; a
# real hang is caught by pytest-timeout), no health checks, no example database (CI's
# clones start fresh anyway).  Each target sets its own max_examples through examples().
settings.register_profile("xvm-fuzz", deadline=None, suppress_health_check=list(HealthCheck), database=None)
FUZZ = settings.get_profile("xvm-fuzz")

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
# XVM_FUZZ_SCALE=10 runs every target ten times longer (local hunting; CI uses 1).
SCALE = float(os.environ.get("XVM_FUZZ_SCALE", "1"))


def examples(n):
    return max(1, int(n * SCALE))


def seeds(target, names=False):
    """The seeds of ``corpus/<target>/``, in name order: bytes, or ``(name, bytes)``."""
    directory = os.path.join(CORPUS, target)
    if not os.path.isdir(directory):
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out.append((name, f.read()) if names else f.read())
    return out


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/fuzz/" in str(item.fspath):
            item.add_marker(pytest.mark.fuzz)
            item.add_marker(pytest.mark.timeout(60))  # a hang fails
