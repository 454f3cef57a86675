"""The C chain walker is found or built on first use into the cache directory."""
import importlib.util
import os
import subprocess
import sys
import types

import pytest

from xvm.devices.virtio import native

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBE = (
    "from xvm.devices.virtio import native; m = native.load(); "
    "print('loaded' if m is not None else 'none')"
)


def _probe(tmp_path, **env):
    full = dict(os.environ, XVM_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=full, timeout=300, cwd=ROOT)


def test_built_into_an_empty_cache(tmp_path):
    if native.load() is None:
        pytest.skip("no C compiler here: the Python walker is used")
    if importlib.util.find_spec("xvm.devices.virtio._native") is not None:
        pytest.skip("installed with the prebuilt module (cffi_modules): no cache build")
    result = _probe(tmp_path)
    assert result.stdout.strip() == "loaded", result.stderr
    built = [f for f in os.listdir(tmp_path / "native") if f.endswith(".so")]
    assert len(built) == 1 and built[0].startswith("_xvm_virtio_native_")
    # A second process reuses the build.
    assert _probe(tmp_path).stdout.strip() == "loaded"
    assert [f for f in os.listdir(tmp_path / "native") if f.endswith(".so")] == built


def test_disabled_by_environment(tmp_path):
    result = _probe(tmp_path, XVM_NATIVE="0")
    assert result.stdout.strip() == "none", result.stderr
    assert not (tmp_path / "native").exists()


def test_a_module_built_from_another_source_is_stale():
    """Same functions, another body (``pip install -e`` then a ``git pull`` that changed
    one): not current, so :func:`native.load` rebuilds instead of running the old code."""
    module = native.load()
    if module is None:
        pytest.skip("no C compiler here: the Python walker is used")
    assert native._current(module)
    lib = types.SimpleNamespace(**{name: getattr(module.lib, name) for name in dir(module.lib)})
    lib.xvm_native_digest = lambda: module.ffi.new("char[]", b"0" * 64)
    assert not native._current(types.SimpleNamespace(ffi=module.ffi, lib=lib))
