"""The snapshot file: one domain's configuration, machine state and RAM.

Layout (little-endian; every offset page aligned except the state's)::

    0       header (HEADER_SIZE bytes): magic "XVMSNAP\\0", major, minor, arch,
            state offset/length, memory offset/length, SHA-256 digest
    128     state: UTF-8 JSON {"config", "cpuid", "machine", "memory", ...}
    ...     zero padding to a page boundary
    M       RAM: each region at its own page-aligned offset, at full size; pages
            that were zero are holes (never written: a sparse file)

The digest covers the header (with the digest field zeroed) and the state.
RAM is not hashed: restore maps it ``MAP_PRIVATE`` and the guest faults pages
in as it touches them (as Firecracker does), so restore-to-running never
reads all of memory; the file must stay unchanged while a domain restored
from it runs (:func:`write_snapshot` replaces a file atomically, so saving
over it again is safe).  A change of the state's layout bumps MAJOR; a loader
refuses a newer major version and accepts newer minors.

:func:`load_snapshot` checks everything before anything is built — magic,
version, architecture, digest, truncation, the state's shape, that the state
fits its configuration, and that this host offers every CPU feature the
guest saw — and raises :class:`SnapshotError` naming what is wrong.
"""
import hashlib
import json
import os
import platform
import struct
import time
from dataclasses import dataclass

from ..errors import ConfigError
from ..kvm.memory import PAGE_SIZE, GuestMemory
from ..vmm.protocol import register_error

MAGIC = b"XVMSNAP\0"
MAJOR = 1
MINOR = 0
ARCH = "x86_64"
HEADER = struct.Struct("<8sHH16sQQQQ32s")
HEADER_SIZE = 128
_DIGEST_OFFSET = HEADER.size - 32
_ZERO_CHUNKS = (2 << 20, 64 << 10, PAGE_SIZE)  # zero detection: coarse to fine
_ZEROS = {size: bytes(size) for size in _ZERO_CHUNKS}

# CPUID registers that announce features: (leaf, subleaf, register).  Bits the VMM sets
# itself (the hypervisor bit, HTT) are not features the host must have.
FEATURE_REGISTERS = ((1, 0, "ecx"), (1, 0, "edx"), (7, 0, "ebx"), (7, 0, "ecx"), (7, 0, "edx"),
                     (0xD, 1, "eax"), (0x8000_0001, 0, "ecx"), (0x8000_0001, 0, "edx"))
VMM_BITS = {(1, 0, "ecx"): 1 << 31, (1, 0, "edx"): 1 << 28}
FEATURE_NAMES = {
    (1, "ecx", 0): "sse3", (1, "ecx", 9): "ssse3", (1, "ecx", 12): "fma", (1, "ecx", 13): "cx16",
    (1, "ecx", 19): "sse4.1", (1, "ecx", 20): "sse4.2", (1, "ecx", 21): "x2apic",
    (1, "ecx", 22): "movbe", (1, "ecx", 23): "popcnt", (1, "ecx", 25): "aes", (1, "ecx", 26): "xsave",
    (1, "ecx", 28): "avx", (1, "ecx", 29): "f16c", (1, "ecx", 30): "rdrand",
    (1, "edx", 25): "sse", (1, "edx", 26): "sse2", (7, "ebx", 3): "bmi1", (7, "ebx", 5): "avx2",
    (7, "ebx", 8): "bmi2", (7, "ebx", 16): "avx512f", (7, "ebx", 18): "rdseed", (7, "ebx", 19): "adx",
    (7, "ebx", 29): "sha", (0x8000_0001, "edx", 26): "pdpe1gb", (0x8000_0001, "edx", 27): "rdtscp",
    (0x8000_0001, "ecx", 5): "lzcnt",
}
_REGISTER_INDEX = {"eax": 3, "ebx": 4, "ecx": 5, "edx": 6}  # in a cpuid_entries() tuple


@register_error
class SnapshotError(ConfigError):
    """A snapshot file that cannot be restored here; ``what`` says which check failed
    (magic, version, arch, checksum, truncated, state, config, cpu, io)."""

    def __init__(self, message, *, what=None, path=None):
        super().__init__(message)
        self.what = what
        self.path = path


@dataclass(frozen=True)
class Snapshot:
    """A checked snapshot file: its configuration and machine state, and where its RAM is."""

    path: str
    config: object  # DomainConfig
    state: object  # MachineState
    cpuid: tuple  # vCPU 0's CPUID as the guest saw it
    regions: tuple  # of (gpa, size, file offset)
    saved_at: float
    data_bytes: int  # RAM bytes actually stored (non-zero pages)

    def map_memory(self, fd=None):
        """The guest's RAM, each region mapped ``MAP_PRIVATE`` from the file (``fd``, or
        opened by path): nothing is read now; the guest's writes stay in this process."""
        if fd is not None:
            return GuestMemory.map_file(fd, self.regions)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SnapshotError(f"cannot open snapshot {self.path}: {e.strerror}", what="io",
                                path=self.path) from None
        try:
            return GuestMemory.map_file(fd, self.regions)
        finally:
            os.close(fd)


# --- writing ------------------------------------------------------------------------------------

def write_snapshot(path, config, machine, *, fd=None):
    """Write ``machine`` (paused; see :meth:`~xvm.machine.Machine.save_state`) and its
    ``config`` to ``path``, atomically (a :class:`SaveFile` renamed over ``path`` once
    complete and synced); or, with ``fd``, into that open file, from its start (whoever
    opened it renames it: a confined VMM writes a file the host made, :meth:`SaveFile`).
    Returns the number of RAM bytes stored."""
    if fd is not None:
        return _write_into(fd, path, config, machine)
    with SaveFile(path) as out:
        stored = _write_into(out.fd, path, config, machine)
        out.commit()
    return stored


class SaveFile:
    """A snapshot file being written: a fresh temporary file beside ``path`` (0600,
    ``O_EXCL``: made by whoever calls this, with its own permissions), renamed over
    ``path`` by :meth:`commit`, removed if the ``with`` block ends without it.  The host
    makes one for ``dom.save(path)`` and hands :attr:`fd` to the VMM, which needs no
    access to the directory."""

    def __init__(self, path):
        import tempfile

        self.path = os.path.abspath(path)
        directory, base = os.path.split(self.path)
        try:
            self.fd, self.tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
        except OSError as e:
            raise SnapshotError(f"cannot create a snapshot file in {directory}: {e.strerror}", what="io",
                                path=self.path) from None

    def commit(self):
        try:
            os.fsync(self.fd)
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise SnapshotError(f"cannot write snapshot {self.path}: {e.strerror}", what="io",
                                path=self.path) from None
        self.tmp = None

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self.tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _write_into(fd, path, config, machine):
    state = machine.save_state()
    cpuid = machine.vm.vcpus[0].cpuid_entries() if machine.vm.vcpus else []
    regions = []
    plan = [(region, region.gpa, region.size) for region in machine.memory.regions]
    # The state's JSON names the regions' offsets, which depend on its own length: lay the
    # RAM out after a generous bound first, then check.
    body = _state_body(config, state, cpuid, [], 0)
    memory_start = _align(HEADER_SIZE + len(body) + 64 * (len(plan) + 1) + 4096)
    offset = memory_start
    for region, gpa, size in plan:
        regions.append((gpa, size, offset))
        offset += _align(size)
    try:
        os.ftruncate(fd, 0)  # whatever the file held: its RAM pages must read as holes
        os.ftruncate(fd, offset)
        stored = 0
        for (region, _, _), (_, _, file_offset) in zip(plan, regions):
            stored += _write_region(fd, region, file_offset)
        body = _state_body(config, state, cpuid, regions, stored)
        if HEADER_SIZE + len(body) > memory_start:
            raise SnapshotError("the machine state outgrew its place in the file", what="state", path=path)
        header = _header(len(body), memory_start, offset - memory_start, body)
        os.pwrite(fd, header, 0)
        os.pwrite(fd, body, HEADER_SIZE)
        os.fsync(fd)
    except OSError as e:
        raise SnapshotError(f"cannot write snapshot {path}: {e.strerror}", what="io", path=path) from None
    return stored


def _state_body(config, state, cpuid, regions, stored):
    return json.dumps({
        "config": config.to_dict(), "cpuid": [list(e) for e in cpuid], "machine": state.save(),
        "memory": [{"gpa": g, "size": s, "offset": o} for g, s, o in regions],
        "saved_at": time.time(), "data_bytes": stored,
    }, separators=(",", ":")).encode()


def _header(state_length, memory_offset, memory_length, body):
    fields = HEADER.pack(MAGIC, MAJOR, MINOR, ARCH.encode(), HEADER_SIZE, state_length,
                         memory_offset, memory_length, bytes(32))
    head = fields.ljust(HEADER_SIZE, b"\0")
    return fields[:_DIGEST_OFFSET] + _digest(head, body) + head[HEADER.size:]


def _digest(head, body):
    """SHA-256 over the whole header but its digest field, and the state."""
    return hashlib.sha256(head[:_DIGEST_OFFSET] + head[HEADER.size:HEADER_SIZE] + body).digest()


def _align(n):
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _write_region(fd, region, file_offset):
    """Write the non-zero pages of ``region`` at ``file_offset`` (zero pages stay holes)."""
    mapping = region.mapping
    stored = 0
    for start, end in region.data_extents():
        for run_start, run_end in _nonzero_runs(mapping, start, end, 0):
            view = memoryview(mapping)[run_start:run_end]
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], file_offset + run_start + done)
            finally:
                view.release()
            stored += run_end - run_start
    return stored


def _nonzero_runs(mapping, start, end, level):
    """Maximal page-aligned runs in ``[start, end)`` holding a non-zero byte."""
    chunk = _ZERO_CHUNKS[level]
    zero = _ZEROS[chunk]
    runs = []
    offset = start
    while offset < end:
        stop = min(offset + chunk, end)
        if mapping[offset:stop] != zero[:stop - offset]:
            if level + 1 < len(_ZERO_CHUNKS):
                inner = _nonzero_runs(mapping, offset, stop, level + 1)
            else:
                inner = [(offset, stop)]
            for run in inner:
                if runs and runs[-1][1] == run[0]:
                    runs[-1] = (runs[-1][0], run[1])
                else:
                    runs.append(run)
        offset = stop
    return runs


# --- reading ------------------------------------------------------------------------------------

def load_snapshot(path, *, supported_cpuid=None, fd=None):
    """The checked :class:`Snapshot` in ``path``; :class:`SnapshotError` if any check fails.

    ``fd``: the file, already open (the host opened it; ``path`` only names it in
    messages); read with ``pread``, its offset untouched.  ``supported_cpuid``: this
    host's CPUID entries (``cpuid_entries`` tuples, or a ``struct kvm_cpuid2 *`` from
    ``Kvm.supported_cpuid()``); every feature bit the guest saw must be among them.
    None skips that check.
    """
    try:
        own = fd is None
        if own:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.pread(fd, HEADER_SIZE, 0)
            size = os.fstat(fd).st_size
            snapshot_head = _parse_header(head, path)
            state_offset, state_length, memory_offset, memory_length, digest = snapshot_head
            if state_offset + state_length > size:
                raise SnapshotError(f"snapshot {path} is truncated: the state ends at byte "
                                    f"{state_offset + state_length}, the file at {size}",
                                    what="truncated", path=path)
            body = _pread_all(fd, state_length, state_offset)
        finally:
            if own:
                os.close(fd)
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}", what="io", path=path) from None
    if _digest(head, body) != digest:
        raise SnapshotError(f"snapshot {path} is corrupt: its checksum does not match",
                            what="checksum", path=path)
    if memory_offset % PAGE_SIZE or memory_offset < state_offset + state_length \
            or memory_offset + memory_length > size:
        raise SnapshotError(f"snapshot {path} is truncated: its memory ends at byte "
                            f"{memory_offset + memory_length}, the file at {size}",
                            what="truncated", path=path)
    snapshot = _parse_state(body, path, memory_offset, memory_length)
    if supported_cpuid is not None:
        _check_cpu(snapshot.cpuid, supported_cpuid, path)
    return snapshot


def _pread_all(fd, length, offset):
    parts = []
    while length > 0:
        chunk = os.pread(fd, min(length, 16 << 20), offset)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _parse_header(head, path):
    if len(head) < HEADER.size:
        raise SnapshotError(f"{path} is not an xvm snapshot: {len(head)} bytes, shorter than a header",
                            what="truncated", path=path)
    magic, major, minor, arch, state_offset, state_length, memory_offset, memory_length, digest = \
        HEADER.unpack_from(head)
    if magic != MAGIC:
        raise SnapshotError(f"{path} is not an xvm snapshot (magic {magic!r})", what="magic", path=path)
    if major > MAJOR:
        raise SnapshotError(f"snapshot {path} has format version {major}.{minor}; this xvm reads "
                            f"up to {MAJOR}.x", what="version", path=path)
    if major < 1:
        raise SnapshotError(f"snapshot {path} has unknown format version {major}.{minor}",
                            what="version", path=path)
    arch = arch.rstrip(b"\0").decode("ascii", "replace")
    if arch != ARCH or platform.machine() not in ("x86_64", "AMD64"):
        raise SnapshotError(f"snapshot {path} is of a {arch} machine; this host runs "
                            f"{platform.machine()} guests of {ARCH}", what="arch", path=path)
    if state_offset != HEADER_SIZE or state_length > 64 << 20:
        raise SnapshotError(f"snapshot {path} has a malformed header (state at {state_offset}, "
                            f"{state_length} bytes)", what="state", path=path)
    return state_offset, state_length, memory_offset, memory_length, digest


def _parse_state(body, path, memory_offset, memory_length):
    from ..config import DomainConfig
    from ..machine.state import STATE_VERSION, MachineState

    try:
        data = json.loads(body)
        config = DomainConfig.from_dict(data["config"])
        state = MachineState.restore(data["machine"])
        regions = tuple((int(r["gpa"]), int(r["size"]), int(r["offset"])) for r in data["memory"])
        cpuid = tuple(tuple(int(x) for x in e) for e in data["cpuid"])
        saved_at, stored = float(data["saved_at"]), int(data["data_bytes"])
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError, RecursionError) as e:
        # OverflowError: Infinity where an integer is due; RecursionError: nested too deep
        raise SnapshotError(f"snapshot {path} has a malformed state: {e}", what="state",
                            path=path) from None
    if state.version > STATE_VERSION:
        raise SnapshotError(f"snapshot {path} holds machine state version {state.version}; this "
                            f"xvm knows up to {STATE_VERSION}", what="version", path=path)
    end = memory_offset + memory_length
    for gpa, size, offset in regions:
        if offset % PAGE_SIZE or size % PAGE_SIZE or size <= 0 or offset < memory_offset \
                or offset + size > end:
            raise SnapshotError(f"snapshot {path}: RAM region {gpa:#x}+{size:#x} lies outside the "
                                f"file's memory", what="state", path=path)
    if tuple((g, s) for g, s, _ in regions) != state.memory:
        raise SnapshotError(f"snapshot {path}: the RAM regions disagree with the machine state",
                            what="state", path=path)
    misfit = state.misfit(config)
    if misfit is not None:
        raise SnapshotError(f"snapshot {path} does not fit its configuration: {misfit}",
                            what="config", path=path)
    return Snapshot(os.path.abspath(path), config, state, cpuid, regions, saved_at, stored)


def _entries(cpuid):
    if isinstance(cpuid, (list, tuple)):
        return [tuple(e) for e in cpuid]
    return [(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            for e in (cpuid.entries[i] for i in range(cpuid.nent))]


def missing_cpu_features(guest, host):
    """``[(leaf, subleaf, register, bit, name)]`` the guest saw but ``host`` lacks."""
    def table(entries):
        return {(e[0], e[1] if e[0] in (7, 0xD) else 0): e for e in entries}

    guest_t, host_t = table(_entries(guest)), table(_entries(host))
    missing = []
    for leaf, subleaf, register in FEATURE_REGISTERS:
        g = guest_t.get((leaf, subleaf))
        if g is None:
            continue
        h = host_t.get((leaf, subleaf))
        have = h[_REGISTER_INDEX[register]] if h is not None else 0
        want = g[_REGISTER_INDEX[register]] & ~VMM_BITS.get((leaf, subleaf, register), 0)
        for bit in range(32):
            if want & ~have & (1 << bit):
                missing.append((leaf, subleaf, register, bit,
                                FEATURE_NAMES.get((leaf, register, bit), "")))
    return missing


def _check_cpu(guest, host, path):
    missing = missing_cpu_features(guest, host)
    if missing:
        names = ", ".join(f"{name or 'feature'} (CPUID {leaf:#x}.{subleaf} {register} bit {bit})"
                          for leaf, subleaf, register, bit, name in missing[:8])
        raise SnapshotError(f"snapshot {path}: this host lacks CPU features the guest saw: {names}",
                            what="cpu", path=path)


__all__ = ["SnapshotError", "Snapshot", "write_snapshot", "load_snapshot", "missing_cpu_features",
           "MAGIC", "MAJOR", "MINOR", "HEADER_SIZE"]


# --- restoring with other host resources ------------------------------------------------------
# What ``host.restore(path, config=...)`` may change: the host's side of the domain, which the
# guest never saw -- where each disk's image is, which network or bridge each NIC is on, how
# the domain is scheduled and pinned, what happens when the host stops, and how it boots the
# next time it is started cold.  Everything else is what the guest saw and must stay.
HOST_SIDE = frozenset({"kernel", "initrd", "cmdline", "sched", "vcpu_pins", "emulator_pin",
                       "on_host_stop", "shutdown_timeout"})
DISK_HOST_SIDE = frozenset({"path"})
NIC_HOST_SIDE = frozenset({"network", "bridge"})


def restore_misfit(saved, config):
    """Why the configuration ``config`` cannot take over a domain saved with ``saved`` (both
    :class:`~xvm.config.DomainConfig`), or None: only its host side may differ
    (``HOST_SIDE``, ``DISK_HOST_SIDE``, ``NIC_HOST_SIDE``)."""
    from ..net.nic import effective_macs

    old, new = saved.to_dict(), config.to_dict()
    old_macs, new_macs = effective_macs(saved.nics, saved.uuid), effective_macs(config.nics, config.uuid)
    for key in ("uuid", "name"):
        if old[key] != new[key]:
            return f"its {key} is {new[key]!r}, the saved domain's {old[key]!r}"
    for key in sorted(set(old) | set(new)):
        if key in HOST_SIDE or key in ("uuid", "name", "disks", "nics"):
            continue
        if old.get(key) != new.get(key):
            return f"its {key} is {new.get(key)!r}, the saved domain's {old.get(key)!r} (the guest saw it)"
    for kind, allowed in (("disks", DISK_HOST_SIDE), ("nics", NIC_HOST_SIDE)):
        if len(old[kind]) != len(new[kind]):
            return f"it has {len(new[kind])} {kind}, the saved domain {len(old[kind])}"
        for index, (a, b) in enumerate(zip(old[kind], new[kind])):
            if kind == "nics":  # the MAC the guest saw: the configured one, or derived from the UUID
                a = dict(a, mac=old_macs[index], queues=a.get("queues", 1))  # to_dict leaves out 1
                b = dict(b, mac=new_macs[index], queues=b.get("queues", 1))
            for key in sorted(set(a) | set(b)):
                if key not in allowed and a.get(key) != b.get(key):
                    return (f"its {kind[:-1]} {index} has {key} {b.get(key)!r}, the saved domain's "
                            f"{a.get(key)!r} (the guest saw it; only {', '.join(sorted(allowed))} may change)")
    return None


def check_restore_config(config):
    """ConfigError unless ``config``, as given to ``host.restore(path, config=)``, is a DomainConfig."""
    from ..config import DomainConfig

    if not isinstance(config, DomainConfig):
        raise ConfigError(f"restore wants an xvm.DomainConfig as config, not {type(config).__name__}")


def restore_config(snapshot, config):
    """The configuration to restore ``snapshot`` (a checked :class:`Snapshot`) with: its own, or
    ``config`` (a DomainConfig) if only its host side differs (else
    SnapshotError, what="config").  A disk whose new image is not the saved one's size is
    refused here too: the guest knows its capacity."""
    from ..devices.block.persist import BlockState

    if config is None:
        return snapshot.config
    check_restore_config(config)
    misfit = restore_misfit(snapshot.config, config)
    if misfit is not None:
        raise SnapshotError(f"cannot restore snapshot {snapshot.path} with that configuration: {misfit}",
                            what="config", path=snapshot.path)
    saved_disks = [s.device for s in snapshot.state.devices.slots if isinstance(s.device, BlockState)]
    for disk, saved in zip(config.disks, saved_disks):
        try:
            size = os.stat(disk.path).st_size
        except OSError as e:
            raise SnapshotError(f"cannot restore snapshot {snapshot.path}: disk image {disk.path}: "
                                f"{e.strerror}", what="config", path=snapshot.path) from None
        if size // 512 != saved.capacity:
            raise SnapshotError(f"cannot restore snapshot {snapshot.path}: disk image {disk.path} has "
                                f"{size // 512} sectors, the guest saw {saved.capacity}",
                                what="config", path=snapshot.path)
    return config


def snapshot_config(path):
    """The domain configuration saved in the snapshot file ``path`` (checked as
    :func:`load_snapshot` checks it): to edit its host side and give to
    ``host.restore(path, config=...)``."""
    return load_snapshot(path).config
