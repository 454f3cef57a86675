"""A small encoder for ACPI Machine Language (ACPI 6.x, chapter 20 "AML Specification").

Only the terms a static DSDT needs: names, scopes, devices, integers, strings,
buffers, packages, EISA IDs and resource templates (chapter 6.4 "Resource Data
Types for ACPI").  Every function returns ``bytes`` ready to be concatenated
into a term list.  No methods, no operators: the tables xvm builds are data.
"""
import struct

from ..errors import ConfigError

# 20.2.5.1 Namespace Modifier Objects Encoding / 20.2.5.2 Named Objects Encoding
ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82  # after EXT_OP_PREFIX
ROOT_CHAR = 0x5C  # '\'
PARENT_PREFIX_CHAR = 0x5E  # '^'
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
NULL_NAME = 0x00



class Encoded(bytes):
    """Bytes that are already AML (so ``name()`` does not wrap them in a Buffer)."""


_LEAD_CHARS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _LEAD_CHARS | set(b"0123456789")


def pkg_length(length):
    """PkgLength (20.2.4) for a body of ``length`` bytes; the encoding counts itself."""
    for size in (1, 2, 3, 4):
        total = length + size
        if size == 1 and total < 0x40:
            return bytes([total])
        if size > 1 and total < 1 << (4 + 8 * (size - 1)):
            lead = ((size - 1) << 6) | (total & 0x0F)
            rest = (total >> 4).to_bytes(size - 1, "little")
            return bytes([lead]) + rest
    raise ConfigError(f"AML package of {length} bytes is too large")


def name_seg(seg):
    """A NameSeg: 1-4 characters, padded with '_' to four."""
    raw = seg.encode("ascii")
    if not 1 <= len(raw) <= 4 or raw[0] not in _LEAD_CHARS or not set(raw) <= _NAME_CHARS:
        raise ConfigError(f"invalid ACPI name segment {seg!r}")
    return raw.ljust(4, b"_")


def name_string(path):
    """A NameString (20.2.2): ``"\\_SB.COM1"``, ``"_HID"``, ``"^PCI0"``, ``"\\"``."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = b"\\", path[1:]
    else:
        while path.startswith("^"):
            prefix, path = prefix + b"^", path[1:]
    if not path:
        return prefix + bytes([NULL_NAME])
    segs = [name_seg(s) for s in path.split(".")]
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
    if len(segs) > 255:
        raise ConfigError(f"ACPI name path {path!r} is too deep")
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


def integer(value):
    """The shortest ComputationalData encoding of an unsigned integer."""
    if value < 0 or value >= 1 << 64:
        raise ConfigError(f"AML integer {value} out of range")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value < 1 << 8:
        return bytes([BYTE_PREFIX, value])
    if value < 1 << 16:
        return bytes([WORD_PREFIX]) + struct.pack("<H", value)
    if value < 1 << 32:
        return bytes([DWORD_PREFIX]) + struct.pack("<I", value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text):
    """A String: ASCII characters 0x01-0x7F, NUL-terminated."""
    raw = text.encode("ascii")
    if b"\x00" in raw:
        raise ConfigError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + raw + b"\x00"


def data_object(value):
    """Encode a Python value: int, str, bytes (a Buffer) or list/tuple (a Package).

    :class:`Encoded` bytes are already AML and pass through unchanged.
    """
    if isinstance(value, Encoded):
        return bytes(value)
    if isinstance(value, bool):
        return integer(int(value))
    if isinstance(value, int):
        return integer(value)
    if isinstance(value, str):
        return string(value)
    if isinstance(value, (bytes, bytearray)):
        return buffer(value)
    if isinstance(value, (list, tuple)):
        return package(value)
    raise ConfigError(f"cannot encode {type(value).__name__} as AML data")


def buffer(data):
    """DefBuffer: BufferOp PkgLength BufferSize ByteList."""
    body = integer(len(data)) + bytes(data)
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def package(elements):
    """DefPackage: PackageOp PkgLength NumElements PackageElementList."""
    if len(elements) > 255:
        raise ConfigError("AML package has more than 255 elements")
    body = bytes([len(elements)]) + b"".join(data_object(e) for e in elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def name(path, value):
    """DefName: ``Name(path, value)``; ``value`` is :class:`Encoded` AML or a Python value."""
    return bytes([NAME_OP]) + name_string(path) + data_object(value)


def scope(path, *terms):
    """DefScope: ``Scope(path) { terms }``."""
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path, *terms):
    """DefDevice: ``Device(path) { terms }``."""
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def eisa_id(text):
    """The 32-bit compressed EISA ID of ``"PNP0501"`` (what ASL's EISAID() produces)."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ConfigError(f"invalid EISA ID {text!r}")
    try:
        product = int(text[3:], 16)
    except ValueError:
        raise ConfigError(f"invalid EISA ID {text!r}") from None
    vendor = ((ord(text[0]) - 0x40) << 10) | ((ord(text[1]) - 0x40) << 5) | (ord(text[2]) - 0x40)
    value = (vendor << 16) | product
    # Stored big-endian in the original spec, i.e. byte-swapped as a little-endian DWORD.
    return Encoded(integer(int.from_bytes(value.to_bytes(4, "big"), "little")))


# 6.4 Resource Data Types.  Small items: tag byte = (name << 3) | length.
_SMALL_IRQ = 0x04
_SMALL_IO = 0x08
_SMALL_END = 0x0F
# Large items: tag byte = 0x80 | name, then a 16-bit length.
_LARGE_MEMORY32_FIXED = 0x06
_LARGE_EXTENDED_IRQ = 0x09


def _small(item, body):
    return bytes([(item << 3) | len(body)]) + body


def _large(item, body):
    return bytes([0x80 | item]) + struct.pack("<H", len(body)) + body


def io(base, length, *, alignment=1, decode16=True):
    """6.4.2.5 I/O Port Descriptor for a fixed range (minimum = maximum = ``base``)."""
    return _small(_SMALL_IO, struct.pack("<BHHBB", int(decode16), base, base, alignment, length))


def irq_no_flags(*irqs):
    """6.4.2.1 IRQ Descriptor without the flags byte: edge, active high, exclusive."""
    mask = 0
    for irq in irqs:
        if not 0 <= irq < 16:
            raise ConfigError(f"ISA IRQ {irq} out of range")
        mask |= 1 << irq
    return _small(_SMALL_IRQ, struct.pack("<H", mask))


def memory32_fixed(base, length, *, writable=True):
    """6.4.3.4 32-Bit Fixed Memory Range Descriptor."""
    return _large(_LARGE_MEMORY32_FIXED, struct.pack("<BII", int(writable), base, length))


def extended_interrupt(*gsis, level=False, active_low=False, shared=False, consumer=True):
    """6.4.3.6 Extended Interrupt Descriptor (ASL ``Interrupt(...)``) for global interrupts."""
    if not 1 <= len(gsis) <= 255:
        raise ConfigError("an extended interrupt descriptor needs 1-255 interrupts")
    flags = int(consumer) | (0 if level else 1 << 1) | (int(active_low) << 2) | (int(shared) << 3)
    return _large(_LARGE_EXTENDED_IRQ, struct.pack(f"<BB{len(gsis)}I", flags, len(gsis), *gsis))


def resource_template(*descriptors):
    """A Buffer holding ``descriptors`` and the End Tag (checksum 0: "treated as correct")."""
    return Encoded(buffer(b"".join(descriptors) + bytes([(_SMALL_END << 3) | 1, 0])))
