#!/usr/bin/env python3
"""Regenerate the seeds of tests/fuzz/corpus/migration and corpus/snapshot.  The valid
ones come from a real machine (they need /dev/kvm and gcc; run from the repository root
as root); the hostile ones are derived from them (``--edges``: only those, no KVM):

    PYTHONPATH=$PWD python3 tests/fuzz/make_corpus.py [--edges]

- ``corpus/snapshot/valid-16mib.bin``: the header and state of a real snapshot file of an
  unstarted 16 MiB, one-vCPU machine with one virtio-blk disk (its RAM, all zero, is a hole
  in the real file; the fuzz target extends the file to its declared size).
- ``corpus/migration/valid.bin``: a whole migration stream as the destination VMM receives it
  for that machine (HELLO with the fuzz target's token, a page, a zero range, a ROUND and the
  STATE a source VMM sends), and the hostile streams derived from it (``edge_streams``).

- ``corpus/snapshot/*.bin`` besides it: hostile heads that once mattered (``snapshot_edges``).

The other targets' seeds are small hand-made files (see conftest.py).
"""
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

import xvm  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "..", "guests"))
import build as guest_build  # noqa: E402
from xvm.kvm.system import Kvm  # noqa: E402
from xvm.machine import build_machine  # noqa: E402
from xvm.migration import write_snapshot  # noqa: E402
from xvm.migration.snapshot import HEADER, HEADER_SIZE  # noqa: E402

DISK = "/nonexistent/xvm-fuzz-seed.img"  # the paths the seeds name (never opened by the targets)
KERNEL = "/nonexistent/xvm-fuzz-seed.elf"


def seed_config():
    return xvm.DomainConfig(name="seed", uuid="00000000-0000-4000-8000-000000000001", kernel=KERNEL,
                            memory_mib=16, disks=[xvm.Disk(path=DISK)])


def main():
    if "--edges" not in sys.argv:
        from_machine()
    with open(os.path.join(HERE, "corpus", "snapshot", "valid-16mib.bin"), "rb") as f:
        valid = f.read()
    body = json.loads(valid[HEADER_SIZE:HEADER_SIZE + HEADER.unpack_from(valid)[5]])
    write_streams(json.dumps({"machine": body["machine"], "running": True}, separators=(",", ":")).encode(),
                  json.dumps(body["cpuid"], separators=(",", ":")).encode())
    write_snapshot_edges(valid, body)


def from_machine():
    kernel = str(guest_build.build("busy"))
    with tempfile.TemporaryDirectory(prefix="xvm-corpus-") as tmp:
        image = os.path.join(tmp, "disk.img")
        with open(image, "wb") as f:
            f.truncate(1 << 20)
        config = seed_config()
        real = xvm.DomainConfig.from_dict({**config.to_dict(), "kernel": kernel, "disks": [{"path": image}]})
        with Kvm() as kvm:
            machine = build_machine(kvm, real, console_sink=None)
            try:
                state = machine.save_state()
                cpuid = machine.vm.vcpus[0].cpuid_entries()
                path = os.path.join(tmp, "snap")
                write_snapshot(path, real, machine)
            finally:
                machine.close()
        machine_state = state.save()
        for slot in machine_state["devices"]["slots"]:  # name the seed path, not the temporary one
            slot["device"]["path"] = DISK
        snapshot = rewrite_snapshot(path, config, machine_state)
        os.makedirs(os.path.join(HERE, "corpus", "snapshot"), exist_ok=True)
        with open(os.path.join(HERE, "corpus", "snapshot", "valid-16mib.bin"), "wb") as f:
            f.write(snapshot)


TOKEN = bytes(range(32))  # the fuzz target's receiver expects this token


def frame(kind, payload=b"", length=None):
    from xvm.migration import stream as S
    return S.FRAME.pack(kind, len(payload) if length is None else length) + payload


def _hello(major=None, token=TOKEN, magic=None):
    from xvm.migration import stream as S
    return S.HELLO.pack(magic or S.MAGIC, S.MAJOR if major is None else major, S.MINOR, token)


def write_streams(state, cpuid):
    """corpus/migration/*.bin: the valid stream, and hostile ones that once mattered (each
    after the HELLO and the CPUID frame, unless it is about them)."""
    from xvm.migration import stream as S

    def hello(major=None, token=TOKEN, magic=None, cpuid_frame=frame(S.CPUID, cpuid)):
        return _hello(major, token, magic) + cpuid_frame

    page = bytes(range(256)) * 16
    ram = 16 << 20
    body = (frame(S.PAGES, S.ADDRESS.pack(0x100000) + page) + frame(S.ZERO, S.RANGE.pack(0x200000, 0x10000))
            + frame(S.ROUND, S.ROUND_NUMBER.pack(1)))
    deep = b"[" * 5000 + b"]" * 5000
    doc = json.loads(state)
    doc["machine"]["memory"] = [[0, float("inf")]]
    infinite = json.dumps(doc).encode()
    streams = {
        "valid": hello() + body + frame(S.STATE, state),
        # a ROUND declaring 4 GiB: the receiver allocated it all before reading
        "round-4gib-length": hello() + frame(S.ROUND, S.ROUND_NUMBER.pack(1), length=0xFFFF_FFFF),
        # a zero range of one byte: madvise zeroed the whole page
        "zero-unaligned-size": hello() + frame(S.PAGES, S.ADDRESS.pack(0) + page) + frame(S.ZERO, S.RANGE.pack(0, 1)),
        # an empty zero range at the end of RAM: mmap.madvise raised ValueError
        "zero-empty-at-end": hello() + frame(S.ZERO, S.RANGE.pack(ram, 0)),
        "zero-past-end": hello() + frame(S.ZERO, S.RANGE.pack(ram - 0x1000, 0x2000)),
        "zero-wrapping": hello() + frame(S.ZERO, S.RANGE.pack(0x1000, (1 << 64) - 0x1000)),
        "pages-past-end": hello() + frame(S.PAGES, S.ADDRESS.pack(ram - 0x1000) + page * 2),
        "pages-unaligned": hello() + frame(S.PAGES, S.ADDRESS.pack(0x800) + page),
        "pages-truncated": hello() + frame(S.PAGES, S.ADDRESS.pack(0x3000) + page * 2)[:-5000],
        # a STATE nested deeper than Python's recursion limit: RecursionError from json
        "state-deep-nesting": hello() + frame(S.STATE, deep),
        # Infinity where an integer is due: OverflowError from int()
        "state-infinity": hello() + frame(S.STATE, infinite),
        "state-not-utf8": hello() + frame(S.STATE, b"\xff\xfe{}"),
        "state-over-limit": hello() + frame(S.STATE, b"{}", length=S.MAX_CONTROL + 1),
        "wrong-major": hello(major=S.MAJOR + 1) + body,
        "wrong-token": hello(token=bytes(32)) + body,
        "wrong-magic": hello(magic=b"XVMSNAP\0") + body,
        "error-instead-of-hello": frame(S.ERROR, b"no thanks"),
        "ready-out-of-turn": hello() + frame(S.READY),
        "unknown-type": hello() + frame(0xEE, b"?" * 16),
        # the CPUID frame missing, or not 7 u32s per entry
        "cpuid-missing": hello(cpuid_frame=b"") + body,
        "cpuid-not-u32": hello(cpuid_frame=frame(S.CPUID, b"[[1,0,0,0,0,0,4294967296]]")) + body,
        "cpuid-bool": hello(cpuid_frame=frame(S.CPUID, b"[[true,0,0,0,0,0,0]]")) + body,
    }
    directory = os.path.join(HERE, "corpus", "migration")
    os.makedirs(directory, exist_ok=True)
    for name, data in streams.items():
        with open(os.path.join(directory, name + ".bin"), "wb") as f:
            f.write(data)


def write_snapshot_edges(valid, body):
    """corpus/snapshot/*.bin: heads with hostile contents, signed (a correct checksum)."""
    from xvm.migration.snapshot import _header

    fields = HEADER.unpack_from(valid)

    def signed(doc, memory_offset=fields[6], memory_length=fields[7], raw=None):
        raw = json.dumps(doc).encode() if raw is None else raw
        return _header(len(raw), memory_offset, memory_length, raw) + raw

    def changed(change):
        doc = json.loads(json.dumps(body))
        change(doc)
        return doc

    edges = {
        # Infinity where an integer is due: OverflowError from int()
        "state-infinity": signed(changed(lambda d: d.update(data_bytes=float("inf")))),
        "msr-infinity": signed(changed(lambda d: d["machine"]["vcpus"][0].update(msrs=[[16, float("inf")]]))),
        # nested past Python's recursion limit: RecursionError from json
        "state-deep-nesting": signed(None, raw=b"[" * 5000 + b"]" * 5000),
        "region-outside-file": signed(changed(lambda d: d["memory"][0].update(offset=1 << 40))),
        "region-unaligned": signed(changed(lambda d: d["memory"][0].update(offset=fields[6] + 1))),
        "memory-offset-unaligned": signed(body, memory_offset=fields[6] + 1),
        "memory-huge": signed(body, memory_length=(1 << 64) - 1),
        "config-bad-memory": signed(changed(lambda d: d["config"].update(memory_mib=-1))),
        "state-vcpus-missing": signed(changed(lambda d: d["machine"].update(vcpus=[]))),
        "header-only": valid[:HEADER_SIZE],
        "header-cut": valid[:40],
        "version-99": valid[:8] + (99).to_bytes(2, "little") + valid[10:],
        "checksum-flipped": valid[:HEADER.size - 1] + bytes([valid[HEADER.size - 1] ^ 1]) + valid[HEADER.size:],
    }
    directory = os.path.join(HERE, "corpus", "snapshot")
    for name, data in edges.items():
        with open(os.path.join(directory, name + ".bin"), "wb") as f:
            f.write(data)


def rewrite_snapshot(path, config, machine_state):
    """The snapshot's header and state, its disk renamed to DISK (digest recomputed)."""
    from xvm.migration.snapshot import _header

    with open(path, "rb") as f:
        data = f.read(1 << 20)
    fields = HEADER.unpack_from(data)
    body = json.loads(data[HEADER_SIZE:HEADER_SIZE + fields[5]])
    body["config"] = config.to_dict()
    body["machine"] = machine_state
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert HEADER_SIZE + len(raw) <= fields[6]
    return _header(len(raw), fields[6], fields[7], raw) + raw


if __name__ == "__main__":
    main()
