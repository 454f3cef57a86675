"""A storage pool volume under an unmodified Linux guest: ext4 made and filled by the guest,
``dom.snapshot_disks``, the guest damages its filesystem, ``dom.rollback_disks``, and ``e2fsck``
finds it clean with every file intact.

Both pool types: a ZFS pool on a zfs-fuse zpool (the TCG test host loads the fuse module, see
xvm/testhost/initramfs.py TESTHOST_MODULES; the zpool's file is in its /tmp), rolled back with
``zfs rollback``, and a directory pool, rolled back by a reflink or a full copy.
"""
import os
import re

import pytest

import xvm
from xvm import DomainState
from xvm.images import build_image, run_argument
from xvm.storage import zfsfuse

TCG_SECONDS = 210  # what this file takes in the TCG test host (its workers take the costliest first)

CPU_QUIRKS = ("xsave",) if os.environ.get("XVM_TESTHOST_INNER") else ()
BOOT_TIMEOUT = 240

FILL = """
mkfs.ext4 -q -F /dev/vda || exit 10
mount -t ext4 /dev/vda /mnt || exit 11
i=0
while [ $i -lt 8 ]; do
  dd if=/dev/urandom of=/mnt/file$i bs=64k count=$((i + 1)) 2>/dev/null || exit 12
  i=$((i + 1))
done
cd /mnt && md5sum file* | sed 's/^/SUM /'
cd / && umount /mnt || exit 13
echo XVM-FILLED
"""

# Zero the first 1 MiB after the boot block: the superblock, group descriptors and bitmaps.
DAMAGE = """
dd if=/dev/zero of=/dev/vda bs=4k seek=1 count=256 conv=fsync 2>/dev/null || exit 20
e2fsck -f -n /dev/vda >/dev/null 2>&1; echo "FSCK=$?"
"""

CHECK = """
e2fsck -f -n /dev/vda; echo "FSCK=$?"
mount -t ext4 /dev/vda /mnt || exit 30
cd /mnt && md5sum file* | sed 's/^/SUM /'
"""


def sums(text):
    return dict(re.findall(r"SUM ([0-9a-f]{32})\s+(\S+)", text))


def run(host, image, volume, name, script):
    """Boot a domain ``name`` on ``volume`` with ``script`` as its job; the domain and its
    console text once it powered off."""
    dom = host.define(xvm.DomainConfig(
        name=name, memory_mib=256, kernel=image.kernel, initrd=image.initrd,
        cmdline=f"console=ttyS0 quiet panic=-1 {run_argument(script)}",
        disks=[xvm.Disk(volume=volume.key)], disable_cpu_features=CPU_QUIRKS))
    dom.start()
    dom.console.expect(r"xvm-image: exit \d+", timeout=BOOT_TIMEOUT)
    assert dom.wait(timeout=60) is DomainState.SHUTOFF
    return dom, dom.console.text()


@pytest.fixture(scope="module")
def zpool():
    """A zfs-fuse zpool on a sparse file, its daemon started (and stopped) by the fixture. No
    skip: inside the test host zfs-fuse must run."""
    with zfsfuse.TestZpool(size=256 << 20) as test_pool:
        yield test_pool


@pytest.fixture(params=["zfs", "dir"])
def pool_spec(request, tmp_path):
    if request.param == "zfs":
        zpool = request.getfixturevalue("zpool")
        return xvm.Pool("hvm", type="zfs", dataset=f"{zpool.name}/xvm"), ["zfs rollback"]
    return xvm.Pool("hvm", type="dir", path=str(tmp_path / "pool")), ["reflink", "copy"]


def test_ext4_on_a_pool_volume_snapshot_damage_rollback_fsck_clean(no_leaks, host, pool_spec):
    spec, rollback_methods = pool_spec
    image = build_image(extra_programs=("mkfs.ext4", "e2fsck"))
    pool = host.create_pool(spec)
    volume = pool.create_volume("root", 64 << 20)

    dom, text = run(host, image, volume, "fill", FILL)
    assert "XVM-FILLED" in text, text[-3000:]
    written = sums(text)
    assert len(written) == 8
    (snapshot,) = dom.snapshot_disks("clean")
    assert snapshot.volume == "hvm/root"

    _, text = run(host, image, volume, "damage", DAMAGE)
    assert re.search(r"FSCK=([1-9]\d*)", text), text[-3000:]  # e2fsck finds the damage

    (method,) = dom.rollback_disks("clean")
    assert method in rollback_methods
    _, text = run(host, image, volume, "check", CHECK)
    assert "FSCK=0" in text, text[-3000:]
    assert sums(text) == written
    assert dom.config.disks[0].volume == "hvm/root"  # the stored config keeps the volume name
    for each in host.domains():
        each.undefine()
    pool.destroy()
