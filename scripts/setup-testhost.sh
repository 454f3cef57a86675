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

# The package a metapackage (linux-image-amd64, linux-image-cloud-amd64) depends on.
resolve() {
    apt-cache depends "$1" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1
}

fetch_kernel() {  # $1 = metapackage, $2 = link name in $CACHE/kernels
    pkg="$(resolve "$1")"
    if [ -z "$pkg" ]; then
        apt-get update
        pkg="$(resolve "$1")"
    fi
    [ -n "$pkg" ] || { echo "setup-testhost: cannot resolve $1" >&2; exit 1; }
    dest="$CACHE/kernels/$pkg"
    if [ ! -f "$dest/.complete" ]; then
        tmp="$(mktemp -d "$CACHE/kernels/.dl.XXXXXX")"
        # apt's _apt user must be able to write the download directory.
        chmod 0777 "$tmp"
        (cd "$tmp" && apt-get download "$pkg") || {
            apt-get update
            (cd "$tmp" && apt-get download "$pkg")
        }
        rm -rf "$dest"
        mkdir -p "$dest"
        dpkg-deb -x "$tmp"/"$pkg"_*.deb "$dest"
        rm -rf "$tmp"
        touch "$dest/.complete"
        echo "setup-testhost: extracted $pkg into $dest"
    fi
    ln -sfn "$pkg" "$CACHE/kernels/$2"
}

mkdir -p "$CACHE/kernels"
fetch_kernel linux-image-amd64 generic
fetch_kernel linux-image-cloud-amd64 cloud

# Build (or reuse) the initramfs images and the extracted vmlinux files.
cd "$PROJECT"
XVM_CACHE="$CACHE" "$PYTHON" -m xvm.testhost prepare
