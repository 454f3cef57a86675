"""Finding the C chain walker: installed, or built once into a cache directory.

``load()`` returns the cffi module (``.ffi``, ``.lib``) or ``None`` when it
cannot be had (no compiler; ``XVM_NATIVE=0`` in the environment), in which
case the queue uses its Python walker.  Nothing is built at import time.
"""
import importlib.util
import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded = None
_tried = False


def cache_dir():
    base = os.environ.get("XVM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xvm")
    return os.path.join(base, "native")


def enabled():
    return os.environ.get("XVM_NATIVE", "1") not in ("0", "no", "false", "")


def load():
    global _loaded, _tried
    if not enabled():
        return None
    with _lock:
        if _tried:
            return _loaded
        _tried = True
        try:
            from . import _native  # built by setuptools (cffi_modules)
            if not _current(_native):
                raise ImportError("the installed C module predates its source")
            _loaded = _native
        except ImportError:
            try:
                _loaded = _build_into_cache()
            except Exception as e:  # no compiler, read-only home...: Python walker
                log.warning("virtio: C chain walker unavailable, using Python: %s", e)
                _loaded = None
        return _loaded


def _current(module):
    """Whether a compiled module was built from the source as it is now (a checkout
    updated since ``pip install -e`` has a stale one, perhaps with the same functions)."""
    from . import _build_native

    if not hasattr(module.lib, "xvm_native_digest"):
        return False
    return module.ffi.string(module.lib.xvm_native_digest()).decode() == _build_native.digest()


def _build_into_cache():
    import fcntl

    from . import _build_native

    name = f"_xvm_virtio_native_{_build_native.digest()[:16]}"
    directory = cache_dir()
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (parallel test runs)
        path = _find(directory, name)
        if path is None:
            _build_native.make_builder(name).compile(tmpdir=directory, verbose=False)
            path = _find(directory, name)
            if path is None:
                raise ImportError(f"cffi build of {name} produced no module in {directory}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def _find(directory, name):
    for entry in os.listdir(directory):
        if entry.startswith(name + ".") and entry.endswith(".so"):
            return os.path.join(directory, entry)
    return None
