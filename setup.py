"""Build hook: compiles the C virtqueue chain walker with cffi at install time.

Everything else is declared in setup.cfg. Without a compiler the walker is
built on first use into ~/.cache/xvm/native instead, or the pure Python
walker is used (xvm.devices.virtio.native).
"""
from setuptools import setup

setup(cffi_modules=["xvm/devices/virtio/_build_native.py:ffibuilder"])
