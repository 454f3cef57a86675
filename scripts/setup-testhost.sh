#!/bin/sh
# Set up the HVM test host (see xvm/testhost/__init__.py and /work/shared/ENVIRONMENT.md).
#
# Idempotent. Installs QEMU and busybox-static, downloads Debian's generic and cloud kernels
# WITHOUT installing them on this machine (apt-get download + dpkg-deb -x into the cache
# directory), then builds the test host's initramfs.
#
#   XVM_CACHE   cache directory (default /var/cache/xvm)
#
# Layout of the cache:
#   $XVM_CACHE/kernels/<package>/        dpkg-deb -x of linux-image-<version>-{amd64,cloud-amd64}
#   $XVM_CACHE/kernels/generic -> <package>   the kernel of the TCG test host (has 9p)
#   $XVM_CACHE/kernels/cloud   -> <package>   the nested guest kernel
#   $XVM_CACHE/testhost/                 initramfs images, vmlinux extracted from the bzImages
set -eu

CACHE="${XVM_CACHE:-/var/cache/xvm}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PROJECT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"

need_install=""
dpkg -s qemu-system-x86 >/dev/null 2>&1 || need_install="$need_install qemu-system-x86"
dpkg -s busybox-static >/dev/null 2>&1 || need_install="$need_install busybox-static"
command -v lz4 >/dev/null 2>&1 || need_install="$need_install lz4"  # the cloud bzImage is lz4
if [ -n "$need_install" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends $need_install || {
        apt-get update
        apt-get install -y --no-install-recommends $need_install
    }
fi

# Download and extract the kernels (never installed here) through xvm's own image builder,
# which keeps them in $XVM_CACHE/kernels/<package> with the links generic and cloud; building
# the default cloud-kernel guest image also warms the cache for the tests.
cd "$PROJECT"
XVM_CACHE="$CACHE" "$PYTHON" -m xvm.cli image build --flavour generic --no-vmlinux --quiet >/dev/null
XVM_CACHE="$CACHE" "$PYTHON" -m xvm.cli image build --flavour cloud --quiet

# Build (or reuse) the initramfs images and the extracted vmlinux files.
cd "$PROJECT"
XVM_CACHE="$CACHE" "$PYTHON" -m xvm.testhost prepare
