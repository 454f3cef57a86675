#!/usr/bin/env python3
"""Provisioning domains' disks from one golden image, and what a ZFS-file volume costs in I/O.

    python3 benchmarks/bench_storage.py [--clones N] [--golden-mib M] [--quick] [--no-io]

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

I/O (unless ``--no-io``): 4 KiB random reads from the native-speed guest tests/guests/blk.c
(``mode=bench``, under xvm, TSC-timed in the guest) on a plain file and on a ZFS-file volume, and
4 KiB random reads and writes by fio on the host on both (fio's psync engine, direct=0), so users
know the cost of zfs-fuse's FUSE round trips. Asserts nothing.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import guest  # noqa: E402
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


# --- I/O cost of a ZFS-file volume ------------------------------------------------------------

RESULT = re.compile(r"blk: bench (\w+) (\d+) ios in (\d+) ns")


def guest_iops(path, count):
    import xvm
    with xvm.connect() as host:
        dom = host.define(xvm.DomainConfig(
            name="bench-storage", memory_mib=128, kernel=guest("blk"),
            cmdline=f"mode=bench op=randread bs=4096 count={count} depth=1 linger_ms=0",
            disks=[xvm.Disk(path)]))
        try:
            dom.start()
            line = dom.console.expect(RESULT.pattern, timeout=600)
            dom.wait(timeout=30)
        finally:
            if dom.state is not xvm.DomainState.SHUTOFF:
                dom.destroy()
            dom.undefine()
    _, ios, ns = line.groups()
    return int(ios) / (int(ns) / 1e9)


def fio_iops(path, rw, seconds):
    done = subprocess.run(["fio", "--name=x", f"--filename={path}", f"--rw={rw}", "--bs=4k",
                           "--ioengine=psync", "--direct=0", "--time_based", f"--runtime={seconds}",
                           "--output-format=json"], capture_output=True, text=True, check=True)
    job = json.loads(done.stdout)["jobs"][0]
    return job["read" if rw == "randread" else "write"]["iops"]


def bench_io(args, zpool):
    print("4 KiB random I/O, plain file vs ZFS-file volume (256 MiB of random data):", flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        plain = os.path.join(work, "plain.img")
        with open(plain, "wb") as f:
            f.truncate(256 * MiB)
        fill_random(plain, 256 * MiB)
        targets = [(f"plain file ({fs_type(work)})", plain)]
        pools = pool = None
        if zpool is not None:
            pools = Pools(Store(os.path.join(work, "domains.db")))
            pool = pools.create_pool(Pool("bio", type="zfs", dataset=f"{zpool.name}/io"))
            volume = pool.create_volume("io", 256 * MiB)
            fill_random(volume.path, 256 * MiB)
            targets.append(("ZFS-file volume", volume.path))
        try:
            for name, path in targets:
                figures = []
                if os.access("/dev/kvm", os.R_OK | os.W_OK):
                    figures.append(f"guest randread {guest_iops(path, args.guest_ios):8.0f} IOPS")
                if shutil.which("fio"):
                    figures += [f"fio {rw} {fio_iops(path, rw, args.fio_seconds):8.0f} IOPS"
                                for rw in ("randread", "randwrite")]
                print(f"  {name:24s} " + "   ".join(figures), flush=True)
        finally:
            if pool is not None:
                pool.destroy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clones", type=int, default=20)
    parser.add_argument("--golden-mib", type=int, default=1024)
    parser.add_argument("--guest-ios", type=int, default=20000)
    parser.add_argument("--fio-seconds", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp", help="where the ext4 copies and overlays go")
    parser.add_argument("--quick", action="store_true", help="64 MiB golden, 5 clones, short I/O")
    parser.add_argument("--no-io", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.golden_mib, args.clones, args.guest_ios, args.fio_seconds = 64, 5, 2000, 1
    zpool = zfsfuse.TestZpool(size=(2 * args.golden_mib + 1024) * MiB, prefix="xvmtest")
    try:
        zpool.__enter__()
    except zfsfuse.ZfsFuseUnavailable as e:
        print(f"zfs-fuse cannot be used here: {e}")
        zpool = None
    try:
        bench_provisioning(args, zpool)
        if not args.no_io:
            bench_io(args, zpool)
    finally:
        if zpool is not None:
            zpool.__exit__(None, None, None)


if __name__ == "__main__":
    main()
