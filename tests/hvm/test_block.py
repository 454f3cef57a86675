"""virtio-blk with an unmodified Linux guest: a real filesystem, durability, read-only disks."""
import os
import re
import signal
import subprocess
import sys

import pytest

import xvm
from xvm import DomainState
from xvm.images import build_image, run_argument

TCG_SECONDS = 155  # what this file takes in the TCG test host (its workers take the costliest first)

CPU_QUIRKS = ("xsave",) if os.environ.get("XVM_TESTHOST_INNER") else ()
BOOT_TIMEOUT = 240


@pytest.fixture(scope="module")
def image():
    return build_image(extra_programs=("mkfs.ext4",))


def config(image, disk, script, name="blk", readonly=False):
    return xvm.DomainConfig(
        name=name, memory_mib=256, kernel=image.kernel, initrd=image.initrd,
        cmdline=f"console=ttyS0 quiet panic=-1 {run_argument(script)}",
        disks=[xvm.Disk(disk, readonly=readonly)], disable_cpu_features=CPU_QUIRKS,
    )


WRITE_AND_SYNC = """
mkfs.ext4 -q -F /dev/vda || exit 10
mount -t ext4 /dev/vda /mnt || exit 11
i=0
while [ $i -lt 16 ]; do
  dd if=/dev/urandom of=/mnt/file$i bs=64k count=$((i + 1)) 2>/dev/null || exit 12
  i=$((i + 1))
done
sync
cd /mnt && md5sum file* | sed 's/^/SUM /'
echo XVM-SYNCED
sleep 3600
"""

VERIFY = """
mount -t ext4 /dev/vda /mnt || exit 20
cd /mnt && md5sum file* | sed 's/^/SUM /'
echo XVM-VERIFIED
"""

# The VMM that gets SIGKILLed: a separate process running one domain in-process.
CHILD = """
import sys, xvm
kernel, initrd, disk, script, quirks = sys.argv[1:6]
host = xvm.connect(in_process=True)
cfg = xvm.DomainConfig(name="victim", memory_mib=256, kernel=kernel, initrd=initrd,
                       cmdline="console=ttyS0 quiet panic=-1 " + script, disks=[xvm.Disk(disk)],
                       disable_cpu_features=tuple(q for q in quirks.split(",") if q))
dom = host.define(cfg)
dom.start()
dom.console.expect("XVM-SYNCED", timeout=600)
sys.stdout.write(dom.console.text())
sys.stdout.write("\\nCHILD-READY\\n")
sys.stdout.flush()
import time
time.sleep(3600)
"""


def sums(text):
    return dict(re.findall(r"SUM ([0-9a-f]{32})\s+(\S+)", text))


def test_synced_data_survives_sigkill_of_the_vmm(no_leaks, host, image, tmp_path):
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(128 << 20)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(image.kernel), str(image.initrd), str(disk),
         run_argument(WRITE_AND_SYNC), ",".join(CPU_QUIRKS)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        output = []
        for line in child.stdout:
            output.append(line)
            if line.strip() == "CHILD-READY":
                break
        written = sums("".join(output))
        assert len(written) == 16, "".join(output)[-3000:]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    # The disk lock died with the VMM: the image can be used again at once.
    dom = host.define(config(image, disk, VERIFY))
    dom.start()
    dom.console.expect("XVM-VERIFIED", timeout=BOOT_TIMEOUT)
    assert sums(dom.console.text()) == written
    dom.console.expect(r"xvm-image: exit 0", timeout=60)
    assert dom.wait(timeout=60) is DomainState.SHUTOFF


def test_read_only_disk_refuses_writes(no_leaks, host, image, tmp_path):
    disk = tmp_path / "ro.img"
    content = os.urandom(1 << 20)
    disk.write_bytes(content)
    script = """
cat /sys/block/vda/ro | sed 's/^/RO=/'
dd if=/dev/vda bs=1M count=1 2>/dev/null | md5sum | sed 's/^/READ /'
if dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct 2>/dev/null; then echo WRITE-OK; else echo WRITE-REFUSED; fi
"""
    dom = host.define(config(image, disk, script, readonly=True))
    dom.start()
    dom.console.expect(r"xvm-image: exit \d+", timeout=BOOT_TIMEOUT)
    text = dom.console.text()
    assert "RO=1" in text
    assert "WRITE-REFUSED" in text and "WRITE-OK" not in text
    import hashlib

    assert f"READ {hashlib.md5(content).hexdigest()}" in text
    dom.wait(timeout=60)
    assert disk.read_bytes() == content


def test_busy_disk_is_refused(no_leaks, host, image, tmp_path):
    disk = tmp_path / "shared.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    first = host.define(config(image, disk, "sleep 3600", name="first"))
    first.start()
    try:
        second = host.define(config(image, disk, "true", name="second").replace())
    except xvm.ConfigError as e:  # validated at definition: the first domain holds the lock
        assert "disk" in str(e) and str(disk) in str(e)
    else:
        with pytest.raises(xvm.ConfigError, match="in use|locked|busy"):
            second.start()
        assert second.state is DomainState.SHUTOFF
    first.destroy()
