"""A storage pool volume under an unmodified Linux guest: ext4 made and filled by the guest,
``dom.snapshot_disks``, the guest damages its filesystem, ``dom.rollback_disks``, and ``e2fsck``
finds it clean with every file intact.

The volume is in a directory pool: the TCG test host loads no fuse module (xvm/testhost
initramfs.py TESTHOST_MODULES), so zfs-fuse cannot run inside it; ZFS snapshots and rollbacks
under a guest are tested natively in tests/kvm/test_storage_guest.py.
"""
import os
import re

import xvm
from xvm import DomainState
from xvm.images import build_image, run_argument

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


def test_ext4_on_a_pool_volume_snapshot_damage_rollback_fsck_clean(no_leaks, host, tmp_path):
    image = build_image(extra_programs=("mkfs.ext4", "e2fsck"))
    pool = host.create_pool(xvm.Pool("hvm", type="dir", path=str(tmp_path / "pool")))
    volume = pool.create_volume("root", 64 << 20)

    dom, text = run(host, image, volume, "fill", FILL)
    assert "XVM-FILLED" in text, text[-3000:]
    written = sums(text)
    assert len(written) == 8
    (snapshot,) = dom.snapshot_disks("clean")
    assert snapshot.volume == "hvm/root"

    _, text = run(host, image, volume, "damage", DAMAGE)
    assert re.search(r"FSCK=([1-9]\d*)", text), text[-3000:]  # e2fsck finds the damage

    assert dom.rollback_disks("clean") in (["reflink"], ["copy"])
    _, text = run(host, image, volume, "check", CHECK)
    assert "FSCK=0" in text, text[-3000:]
    assert sums(text) == written
    assert dom.config.disks[0].volume == "hvm/root"  # the stored config keeps the volume name
    for each in host.domains():
        each.undefine()
    pool.destroy()
