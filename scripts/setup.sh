#!/usr/bin/env bash
# Install everything xvm needs on a fresh Debian 12 machine (run as root):
# Debian packages (compiler, QEMU as the peer VMM, ACPI tools, I/O benchmarks),
# xvm itself with its Python dependencies, and the HVM test host's pieces.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
    gcc libc6-dev make python3-dev \
    qemu-system-x86 qemu-utils busybox-static cpio xz-utils zstd \
    acpica-tools fio iperf3 iproute2 bridge-utils libvirt-clients libvirt0 libxml2-utils \
    zfs-fuse xfsprogs libseccomp2

python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e '.[test]'

if [ -x scripts/setup-testhost.sh ]; then
    scripts/setup-testhost.sh
fi
echo "xvm: setup complete"
