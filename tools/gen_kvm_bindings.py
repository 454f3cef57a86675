#!/usr/bin/env python3
"""Generate xvm/kvm/generated/kvm_h.py from the system's <linux/kvm.h>.

The output is checked in and never edited by hand: rerun this script against
newer kernel headers instead.  It produces three things:

* ``CDEF``: every type declared by <linux/kvm.h> (and what it includes), as
  cffi declarations, preprocessed by the system compiler;
* the integer constants ``KVM_*`` (exit reasons, capabilities, flags);
* the ioctl request numbers, computed at import time with ``ioctl_opt`` from
  their direction, number and argument type, so their size always matches the
  declarations above;

and ``_kvm_ffi.py`` beside it: the same declarations pre-parsed by cffi (ABI
mode, out of line), so that a VMM process imports them in milliseconds.

Usage: python3 tools/gen_kvm_bindings.py [--header linux/kvm.h] [--out PATH]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "xvm", "kvm", "generated", "kvm_h.py")

# Kernel-header idioms that are not C89 declarations pycparser understands.
PREPROCESSOR_DEFINES = ["-D__signed__=signed", "-D__extension__=", "-D__attribute__(x)="]
# __DECLARE_FLEX_ARRAY(T, name) expands to `struct { struct { } __empty_name; T name[]; };`
FLEX_ARRAY = re.compile(r"struct\s*\{\s*struct\s*\{\s*\}\s*__empty_\w+;\s*([^;]*\[\]);\s*\};")
# A union of zero-length arrays has size 0 to gcc but 1 to cffi; declare it as a flexible
# byte array instead, which is 0 to both (kvm_nested_state.data).
ZERO_LENGTH_UNION = re.compile(r"union\s*\{(?:\s*[^;{}]*\[0\];)+\s*\}\s*(\w+);")
ARRAY_BOUND = re.compile(r"\[([^\]\[]*[^\d\]\s][^\]\[]*)\]")
INT_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
IOCTL = re.compile(r"^_IO(W|R|WR)?\(\s*(\w+)\s*,\s*(\w+)\s*(?:,\s*(.+?))?\s*\)$")


def preprocess(header, macros_only=False):
    with tempfile.NamedTemporaryFile("w", suffix=".c", delete=False) as f:
        f.write(f"#include <{header}>\n")
        path = f.name
    try:
        args = ["gcc", "-E", "-P"] + (["-dM"] if macros_only else PREPROCESSOR_DEFINES) + [path]
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(path)


def c_int_eval(expr, names):
    expr = INT_SUFFIX.sub(r"\1", expr)
    expr = re.sub(r"sizeof\s*\(\s*(unsigned\s+)?long\s*\)", "8", expr)
    if not re.fullmatch(r"[\w\s()+\-*/<>|&~^]+", expr):
        raise ValueError(expr)
    expr = expr.replace("/", "//")
    return int(eval(expr, {"__builtins__": {}}, names))


def declarations(header):
    src = FLEX_ARRAY.sub(r"\1;", preprocess(header))
    src = ZERO_LENGTH_UNION.sub(r"__u8 \1[];", src)
    # cffi wants array bounds as plain numbers.
    return ARRAY_BOUND.sub(lambda m: "[%d]" % c_int_eval(m.group(1), {}), src)


def macros(header):
    defs = {}
    for line in preprocess(header, macros_only=True).splitlines():
        m = re.match(r"#define (\w+) (.+)$", line)
        if m and not m.group(1).startswith("__"):
            defs[m.group(1)] = m.group(2).strip()
    return defs


def enum_constants(cdef):
    """The enumerators declared in ``cdef`` (macros may be written in terms of them)."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(cdef)
    lib = ffi.dlopen(None)
    return {name: getattr(lib, name) for name in dir(lib)}


def split_macros(defs, enums):
    constants, ioctls = {}, {}
    for name in sorted(defs):
        if not name.startswith("KVM"):
            continue
        body = defs[name]
        m = IOCTL.match(body)
        if m:
            ioctls[name] = (m.group(1) or "", m.group(2), m.group(3), m.group(4))
            continue
        try:
            constants[name] = c_int_eval(body, {**enums, **constants})
        except Exception:
            pass  # strings, function-like macros, expressions over types
    return constants, ioctls


def sizable(cdef, ioctls):
    """Drop ioctls whose argument type this architecture's header does not declare."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(cdef)
    kept = {}
    for name, spec in ioctls.items():
        try:
            if spec[3]:
                ffi.sizeof(spec[3])
        except (cffi.CDefError, ValueError):
            continue
        kept[name] = spec
    return kept


def render(header, cdef, constants, ioctls):
    out = [
        f'"""Generated from <{header}> by tools/gen_kvm_bindings.py. Do not edit."""',
        "from ioctl_opt import IOC, IOC_NONE, IOC_READ, IOC_WRITE",
        "",
        'CDEF = r"""',
        cdef.strip(),
        '"""',
        "",
        "# Integer constants",
    ]
    out += [f"{name} = {value:#x}" if value > 9 else f"{name} = {value}" for name, value in constants.items()]
    out += [
        "",
        "",
        "def ioctl_numbers(sizeof):",
        '    """Request numbers, given ``sizeof(ctype)`` for the argument types in CDEF."""',
        "    return {",
    ]
    direction = {"": "IOC_NONE", "W": "IOC_WRITE", "R": "IOC_READ", "WR": "IOC_READ | IOC_WRITE"}
    for name, (kind, type_, nr, arg) in ioctls.items():
        size = f"sizeof({arg!r})" if arg else "0"
        type_value = constants.get(type_, type_)
        out.append(f"        {name!r}: IOC({direction[kind]}, {type_value:#x}, {nr}, {size}),")
    out += ["    }", ""]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--header", default="linux/kvm.h")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    cdef = declarations(args.header)
    constants, ioctls = split_macros(macros(args.header), enum_constants(cdef))
    text = render(args.header, cdef, constants, sizable(cdef, ioctls))
    with open(args.out, "w") as f:
        f.write(text)
    print(f"{args.out}: written", file=sys.stderr)
    # The same declarations, pre-parsed for cffi (fast import); needs the new kvm_h.py.
    out_of_line = os.path.join(os.path.dirname(args.out), "_kvm_ffi.py")
    subprocess.run([sys.executable, "-c", "import sys; from xvm.kvm.ffi import build_out_of_line; "
                    "build_out_of_line(sys.argv[1])", out_of_line], check=True,
                   cwd=os.path.join(HERE, ".."))
    print(f"{out_of_line}: written", file=sys.stderr)


if __name__ == "__main__":
    main()
