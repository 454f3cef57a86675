"""The HVM test host: where tests boot unmodified Linux guests on hosts without VT-x/AMD-V.

/dev/kvm on the project's machines is PVM and cannot run unmodified kernels. The test host is a
QEMU-TCG machine (``-accel tcg,thread=multi -cpu max -smp 2``, emulated AMD-V) running Debian's
generic kernel with kvm_amd, so that inside it /dev/kvm is hardware-assisted and xvm (or QEMU,
the peer) boots unmodified Debian kernels as nested guests. See /work/shared/ENVIRONMENT.md.

Setup (idempotent): ``scripts/setup-testhost.sh`` installs qemu-system-x86 and busybox-static,
downloads the kernels into ``$XVM_CACHE`` (default /var/cache/xvm) without installing them, and
runs ``python3 -m xvm.testhost prepare``.

Use::

    from xvm.testhost import TestHost
    result = TestHost(stream=sys.stderr).run(["python3", "-m", "pytest", "tests/hvm"], timeout=1800)
    result.exit_status, result.output

    python3 -m xvm.testhost run [--timeout S] [--stall-timeout S] -- CMD...

Where this machine itself has vmx/svm (real hardware, or inside the test host), ``run`` simply
runs the command here (``mode="direct"``).

Inside the test host: the host's / is mounted read-only (9p, ``cache=loose``) under a tmpfs
overlay, so writes succeed but vanish at power-off; /tmp, /run, /dev, /proc and /sys are the
machine's own. A ``cwd`` or ``$XVM_CACHE`` under /tmp or /run (a checkout in /tmp, say) is
shared in read-only, under its own tmpfs overlay, at the same path; under /dev, /proc or /sys
it is refused (:class:`TestHostConfigError`). The only writable share is ``results_dir``, at
the same path inside and out. The job gets a clean environment: the caller's PATH and HOME,
LANG=C.UTF-8, PYTHONPATH=cwd, PYTHONUNBUFFERED=1, XVM_TESTHOST_INNER=1, every XVM_* variable,
XVM_TESTHOST_PROGRESS (its heartbeat file, :mod:`xvm.testhost.progress`), plus ``env``. Each
run boots a fresh machine (≈6 s idle, up to ≈35 s on a loaded host), has a timeout, and is
retried once on a hang (boot timeout, the kernel's soft lockup/RCU stall messages, the overall
timeout, or -- ``stall_timeout=S`` / ``--stall-timeout S`` -- S seconds with neither console
output nor a heartbeat event; the error names what was running). Consoles are kept in
``<results_dir>/.xvm-testhost/console-<attempt>.log`` (the temporary directory is kept when
a run fails). For nested guests: :func:`cloud_kernel` (paths of the
cached Debian cloud kernel: bzImage and extracted vmlinux) and :func:`nested_initramfs` (a tiny
busybox initramfs whose init prints :data:`NESTED_MARKER` and powers off); for the peer
baseline, :func:`xvm.testhost.peer.qemu_kvm_command` (QEMU -accel kvm booting them).
"""
from .cache import GuestKernel, cache_dir, cloud_kernel, guest_kernel
from .errors import (NotPreparedError, QemuMissingError, TestHostCancelled, TestHostConfigError, TestHostCrashed,
                     TestHostError, TestHostTimeout, SETUP_COMMAND)
from .host import Result, TestHost, hardware_virtualization, qemu_path
from .initramfs import NESTED_MARKER, nested_initramfs

__all__ = [
    "GuestKernel", "NESTED_MARKER", "NotPreparedError", "QemuMissingError", "Result", "SETUP_COMMAND",
    "TestHost", "TestHostCancelled", "TestHostConfigError", "TestHostCrashed", "TestHostError", "TestHostTimeout", "cache_dir",
    "cloud_kernel", "guest_kernel", "hardware_virtualization", "nested_initramfs", "qemu_path",
]
