#!/usr/bin/env python3
"""Provisioning domains' disks from one golden image, and what a ZFS-file volume costs in I/O.

    python3 benchmarks/bench_storage.py [--clones N] [--golden-mib M] [--quick] [--no-io | --io-only]

Provisioning: a golden raw image of ``--golden-mib`` (1024) MiB, every byte written (random
data, so nothing compresses or stays a hole), is provisioned ``--clones`` (20) times by
* ``zfs clone``: an xvm.storage ZFS pool on a zfs-fuse zpool (a sparse file in /tmp), each
  clone ``vol.clone("golden", ...)`` (zfs(8) here: zfs-fuse has no libzfs_core);
* ``reflink``: an xvm.storage directory pool on XFS (reflink=1, a loop device), if mkfs.xfs is
  installed;
* ``full copy``: an xvm.storage directory pool on the machine's own filesystem (ext4, no reflink);
* ``qemu-img overlay``: the usual QEMU/libvirt way, ``qemu-img create -f qcow2 -b golden.qcow2``.
Printed: time per domain (median, min, max) and the space the clones use (filesystem or zpool
free space before and after, so metadata counts too).

I/O (unless ``--no-io``): 4 KiB random reads and writes at queue depth 1 by the native-speed
guest tests/guests/blk.c (``mode=bench``, TSC-timed in the guest) on a domain's disk provisioned
from one golden image (``--io-golden-mib``, 256 MiB of random data) three ways: a zfs clone
(zfs-fuse), a dir-pool clone (a raw file: a full copy on ext4), a ``qemu-img create -b`` qcow2
overlay. Each runs under xvm and under ``qemu-system-x86_64 -M microvm`` (bench_block.py's
runners, alternated); xvm opens raw files only, so the overlay is QEMU's alone. Printed side by
side with the xvm/QEMU ratio and each disk's randread against the raw file's. Asserts nothing.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import guest  # noqa: E402
from benchmarks.bench_block import qemu_argv, run_vmm, xvm_argv  # noqa: E402
from xvm.storage import Pool, Pools, zfsfuse  # noqa: E402
from xvm.store import Store  # noqa: E402

MiB = 1 << 20


def fill_random(path, size):
    with open(path, "r+b") as f:
        for _ in range(size // (8 * MiB)):
            f.write(os.urandom(8 * MiB))
        f.write(os.urandom(size % (8 * MiB)))
        f.flush()
        os.fsync(f.fileno())


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def dataset_unused(dataset):
    """Minus the bytes ``dataset`` and its children use: falls as clones take space."""
    return -int(zfsfuse.run("zfs", "get", "-H", "-p", "-o", "value", "used", dataset).stdout)


def timed(action):
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def report(name, times, used, note=""):
    ms = sorted(t * 1000 for t in times)
    print(f"  {name:18s} {statistics.median(ms):9.1f} ms/domain (min {ms[0]:.1f}, max {ms[-1]:.1f}) "
          f"  space {used / MiB:9.1f} MiB for {len(times)} clones{note}", flush=True)


def provision_with_pool(config, golden_mib, clones, free):
    with tempfile.TemporaryDirectory() as state:
        pools = Pools(Store(os.path.join(state, "domains.db")))
        pool = pools.create_pool(config)
        try:
            golden = pool.create_volume("golden", golden_mib * MiB)
            fill_random(golden.path, golden_mib * MiB)
            snapshot = golden.snapshot("golden")
            before = free()
            made = []
            times = [timed(lambda i=i: made.append(golden.clone("golden", f"vm{i}")))
                     for i in range(clones)]
            time.sleep(1 if config.type == "zfs" else 0)  # let zfs-fuse account its last txg
            used = before - free()
            methods = sorted({v.method for v in made})
            return times, used, snapshot.method, methods
        finally:
            pool.destroy()


def bench_provisioning(args, zpool):
    print(f"Provisioning {args.clones} domains from a {args.golden_mib} MiB golden image "
          "(every byte written):", flush=True)
    if zpool is not None:
        config = Pool("bz", type="zfs", dataset=f"{zpool.name}/bench")
        times, used, _, methods = provision_with_pool(config, args.golden_mib, args.clones,
                                                      lambda: dataset_unused(config.dataset))
        report("zfs clone", times, used, f"  ({', '.join(methods)}; zfs-fuse, zfs(8))")
    else:
        print("  zfs clone          skipped: zfs-fuse cannot run here")
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        xfs = mount_xfs(work, args.golden_mib)
        if xfs is not None:
            try:
                times, used, _, methods = provision_with_pool(
                    Pool("bx", type="dir", path=os.path.join(xfs, "pool")), args.golden_mib,
                    args.clones, lambda: free_bytes(xfs))
                report("reflink", times, used,
                       f"  ({', '.join(methods)}; XFS reflink=1 on a loop device)")
            finally:
                subprocess.run(["umount", xfs], check=True)
        else:
            print("  reflink            skipped: no mkfs.xfs or cannot mount a loop device")
        times, used, _, methods = provision_with_pool(
            Pool("bd", type="dir", path=os.path.join(work, "pool")), args.golden_mib, args.clones,
            lambda: free_bytes(work))
        report("full copy", times, used, f"  ({', '.join(methods)}; {fs_type(work)})")
        bench_qemu_img(work, args)


def fs_type(path):
    return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", path], capture_output=True,
                          text=True).stdout.strip() or "unknown filesystem"


def mount_xfs(work, golden_mib):
    if shutil.which("mkfs.xfs") is None:
        return None
    image, target = os.path.join(work, "xfs.img"), os.path.join(work, "xfs")
    with open(image, "wb") as f:
        f.truncate((3 * golden_mib + 512) * MiB)
    os.mkdir(target)
    if subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", image], capture_output=True).returncode:
        return None
    if subprocess.run(["mount", "-o", "loop", image, target], capture_output=True).returncode:
        return None
    return target


def bench_qemu_img(work, args):
    if shutil.which("qemu-img") is None:
        print("  qemu-img overlay   skipped: no qemu-img")
        return
    raw, qcow2 = os.path.join(work, "golden.raw"), os.path.join(work, "golden.qcow2")
    with open(raw, "wb") as f:
        f.truncate(args.golden_mib * MiB)
    fill_random(raw, args.golden_mib * MiB)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    os.unlink(raw)
    before = free_bytes(work)
    times = []
    for i in range(args.clones):
        overlay = os.path.join(work, f"vm{i}.qcow2")
        times.append(timed(lambda: subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", qcow2, "-F", "qcow2", overlay],
            check=True)))
    report("qemu-img overlay", times, before - free_bytes(work),
           "  (qcow2 backing file; the guest then pays qcow2 lookups)")


# --- a guest's random I/O on a provisioned disk -------------------------------------------------

IO_WORKLOADS = ("randread", "randwrite")


def provisioned_disks(work, zpool, golden_mib):
    """[(name, path, format, vmms)]: a domain's disk made each way from one golden image of
    ``golden_mib`` MiB of random data -- a zfs clone, a dir-pool clone (a raw file), a qcow2
    overlay -- and the Pools to destroy afterwards."""
    disks, made = [], []
    pools = Pools(Store(os.path.join(work, "domains.db")))
    if zpool is not None:
        pool = pools.create_pool(Pool("bio", type="zfs", dataset=f"{zpool.name}/io"))
        made.append(pool)
        golden = pool.create_volume("golden", golden_mib * MiB)
        fill_random(golden.path, golden_mib * MiB)
        golden.snapshot("golden")
        clone = golden.clone("golden", "vm0")
        disks.append(("zfs clone (zfs-fuse)", clone.path, "raw", ("xvm", "qemu")))
    pool = pools.create_pool(Pool("bdir", type="dir", path=os.path.join(work, "pool")))
    made.append(pool)
    golden = pool.create_volume("golden", golden_mib * MiB)
    fill_random(golden.path, golden_mib * MiB)
    golden.snapshot("golden", progress=False)
    clone = golden.clone("golden", "vm0", progress=False)
    disks.append((f"dir-pool raw file ({clone.method}, {fs_type(work)})", clone.path, "raw",
                  ("xvm", "qemu")))
    if shutil.which("qemu-img"):
        qcow2, overlay = os.path.join(work, "golden.qcow2"), os.path.join(work, "vm0.qcow2")
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", golden.path, qcow2],
                       check=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", qcow2, "-F", "qcow2",
                        overlay], check=True)
        disks.append(("qcow2 overlay (qemu-img -b)", overlay, "qcow2", ("qemu",)))  # xvm: raw only
    for _, path, fmt, _ in disks:  # every disk starts in the host's page cache (as bench_block)
        warm(path)
        if fmt == "qcow2":
            warm(qcow2)
    return disks, made


def warm(path):
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def guest_iops(vmm, kernel, path, fmt, op, count):
    """IOPS of 4 KiB ``op`` at queue depth 1 by the native-speed guest tests/guests/blk.c on
    ``path`` under ``vmm`` (TSC-timed in the guest; bench_block.py's runners)."""
    cmdline = f"mode=bench op={op} bs=4096 count={count} depth=1 linger_ms=0"
    argv = xvm_argv(kernel, path, cmdline) if vmm == "xvm" else qemu_argv(kernel, path, cmdline, fmt)
    return count / run_vmm(vmm, argv, count)["guest_s"]


def bench_io(args, zpool):
    kernel = guest("blk")
    print(f"\n4 KiB random I/O at queue depth 1 from a guest (tests/guests/blk.c), on a disk "
          f"provisioned from a {args.io_golden_mib} MiB golden image of random data; xvm and "
          f"qemu -M microvm alternated, median of {args.io_rounds} round(s) of {args.guest_ios} "
          f"I/Os; load average {os.getloadavg()[0]:.1f}:", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        disks, made = provisioned_disks(work, zpool, args.io_golden_mib)
        try:
            for r in range(args.io_rounds):
                for name, path, fmt, vmms in disks:
                    for op in IO_WORKLOADS:
                        for vmm in vmms if r % 2 == 0 else tuple(reversed(vmms)):
                            iops = guest_iops(vmm, kernel, path, fmt, op, args.guest_ios)
                            results.setdefault((name, op, vmm), []).append(iops)
        finally:
            for pool in made:
                pool.destroy()
    reference = disks[-2][0] if len(disks) > 1 else None  # the dir-pool raw file under xvm
    header = f"  {'disk':38s}"
    for op in IO_WORKLOADS:
        header += f" {op + ' xvm':>14s} {'qemu':>8s} {'xvm/qemu':>8s}"
    print(header + f" {'randread vs raw file (xvm; qemu)':>34s}")
    def med(name, op, vmm):
        values = results.get((name, op, vmm))
        return statistics.median(values) if values else None
    for name, _, _, _ in disks:
        line = f"  {name:38s}"
        for op in IO_WORKLOADS:
            x, q = med(name, op, "xvm"), med(name, op, "qemu")
            ratio = f"{x / q:8.2f}" if x and q else f"{'-':>8s}"
            line += f" {x:14.0f}" if x else f" {'n/a (raw only)':>14s}"
            line += f" {q:8.0f} {ratio}" if q else f" {'-':>8s} {ratio}"
        if reference is not None:
            rel = []
            for vmm in ("xvm", "qemu"):
                here, base = med(name, "randread", vmm), med(reference, "randread", vmm)
                rel.append(f"{here / base:.2f}" if here and base else "-")
            line += f" {'; '.join(rel):>34s}"
        print(line, flush=True)
    print("  every run, IOPS (disk, workload, VMM: runs in order):")
    for (name, op, vmm), values in results.items():
        print(f"    {name:38s} {op:9s} {vmm:4s}: {' '.join(f'{v:.0f}' for v in values)}")
    print(f"  (load average now {os.getloadavg()[0]:.1f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clones", type=int, default=20)
    parser.add_argument("--golden-mib", type=int, default=1024)
    parser.add_argument("--guest-ios", type=int, default=10000, help="I/Os per guest run")
    parser.add_argument("--io-rounds", type=int, default=3)
    parser.add_argument("--io-golden-mib", type=int, default=256)
    parser.add_argument("--dir", default="/var/tmp", help="where the ext4 copies and overlays go")
    parser.add_argument("--quick", action="store_true", help="64 MiB golden, 5 clones, short I/O")
    parser.add_argument("--no-io", action="store_true")
    parser.add_argument("--io-only", action="store_true", help="skip the provisioning half")
    args = parser.parse_args()
    if args.quick:
        args.golden_mib, args.clones, args.guest_ios, args.io_rounds = 64, 5, 2000, 1
        args.io_golden_mib = 64
    zpool = zfsfuse.TestZpool(size=(2 * max(args.golden_mib, args.io_golden_mib) + 1024) * MiB,
                              prefix="xvmtest")
    try:
        zpool.__enter__()
    except zfsfuse.ZfsFuseUnavailable as e:
        print(f"zfs-fuse cannot be used here: {e}")
        zpool = None
    try:
        if not args.io_only:
            bench_provisioning(args, zpool)
        if not args.no_io:
            bench_io(args, zpool)
    finally:
        if zpool is not None:
            zpool.__exit__(None, None, None)


if __name__ == "__main__":
    main()
