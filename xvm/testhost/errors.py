"""Errors of the HVM test host.

The test host is test infrastructure, not part of the VMM, so it has its own small hierarchy:
the setup is missing (:class:`NotPreparedError`, :class:`QemuMissingError`), a run was asked
for that cannot work (:class:`TestHostConfigError`), or the TCG machine did not do its job
(:class:`TestHostTimeout`, :class:`TestHostCrashed`). Errors about the machine carry the tail
of its serial console.
"""

SETUP_COMMAND = "scripts/setup-testhost.sh"


class TestHostError(Exception):
    """Base class of every error raised by :mod:`xvm.testhost`."""

    __test__ = False  # not a pytest test class


class NotPreparedError(TestHostError):
    """The kernels (or busybox) the test host needs are not in the cache."""

    def __init__(self, what, cache_dir):
        super().__init__(
            f"HVM test host is not set up: {what} (cache {cache_dir}). "
            f"Run {SETUP_COMMAND} (as root; XVM_CACHE overrides the cache directory)."
        )
        self.what = what
        self.cache_dir = cache_dir


class QemuMissingError(TestHostError):
    """qemu-system-x86_64 is not installed."""

    def __init__(self):
        super().__init__(
            f"qemu-system-x86_64 not found: install qemu-system-x86 (run {SETUP_COMMAND})"
        )


class TestHostConfigError(TestHostError, ValueError):
    """A bad argument: a mode, a limit, a directory the test host cannot show the job."""


class _MachineError(TestHostError):
    def __init__(self, message, console_tail="", attempts=1):
        text = message
        if console_tail:
            text += "\n--- tail of the test host's serial console ---\n" + console_tail
        super().__init__(text)
        self.console_tail = console_tail
        self.attempts = attempts
        self.reason = message


class TestHostTimeout(_MachineError):
    """The TCG machine did not finish (boot or command) in time, on every attempt.

    Of the last attempt: ``running`` names what the job was doing when it was stopped (the
    test that had started and not ended, from the heartbeat; or the command; None before the
    job started), ``boot_time`` and ``duration`` are seconds from QEMU's start until the job
    started (None if it never did) and until QEMU was killed.
    """

    running = None
    boot_time = None
    duration = None


class TestHostCrashed(_MachineError):
    """QEMU exited without the command's exit status (kernel panic, init failure, QEMU error).

    ``kernel_fault``: the test host's kernel's own report (a panic, BUG or Oops line) if it
    crashed while the job ran -- such a run is retried like a hang -- else None."""

    kernel_fault = None


class TestHostCancelled(TestHostError):
    """:meth:`TestHost.cancel` was called while a job ran; its machine was killed."""
