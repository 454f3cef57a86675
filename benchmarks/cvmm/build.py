#!/usr/bin/env python3
"""Build cvmm (the C baseline VMM) with gcc; cached on source mtime.

    python3 benchmarks/cvmm/build.py   # prints the path of the binary
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "cvmm.c"
BINARY = HERE / "cvmm"


def build() -> pathlib.Path:
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    tmp = BINARY.with_name(f".cvmm.{os.getpid()}")
    cc = os.environ.get("CC", "gcc")
    subprocess.run([cc, "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(tmp), str(SOURCE)],
                   check=True)
    os.replace(tmp, BINARY)
    return BINARY


if __name__ == "__main__":
    print(build())
    sys.exit(0)
