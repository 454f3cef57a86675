"""The xvm exception hierarchy.

Every error xvm raises derives from :class:`XvmError`.  The branches keep apart
who is at fault:

* :class:`ConfigError` — the caller asked for something invalid (bad
  configuration, a missing kernel, a busy name); nothing was changed.
* :class:`StateError` — the operation is not legal in the domain's current
  state (``pause()`` on a stopped domain); nothing was changed.
* :class:`HostError` — the host refused: an ioctl or system call failed.
  Carries ``errno`` and, for KVM, the ioctl's name.
* :class:`GuestError` — the guest did something the VMM cannot carry out
  (a malformed kernel image, an emulation failure); the domain is stopped,
  the VMM is not.
"""
import errno as _errno
import os


class XvmError(Exception):
    """Base class of every error raised by xvm."""


class ConfigError(XvmError, ValueError):
    """Invalid configuration or argument; nothing was changed."""


class NotFoundError(ConfigError, LookupError):
    """A named object (domain, file, network) does not exist."""


class StateError(XvmError):
    """The operation is not legal in the object's current state."""

    def __init__(self, message, *, state=None, operation=None):
        super().__init__(message)
        self.state = state
        self.operation = operation


class HostError(XvmError, OSError):
    """A system call on the host failed."""

    def __init__(self, message, errno=None):
        XvmError.__init__(self, message)
        self.errno = errno
        self.strerror = os.strerror(errno) if errno else None

    def __str__(self):
        return self.args[0]


class KvmError(HostError):
    """A KVM ioctl failed; ``ioctl`` names it and ``errno`` says why."""

    def __init__(self, ioctl, errno, detail=""):
        name = _errno.errorcode.get(errno, str(errno))
        message = f"{ioctl} failed: {name} ({os.strerror(errno)})"
        if detail:
            message += f": {detail}"
        super().__init__(message, errno)
        self.ioctl = ioctl
        self._args = (ioctl, errno, detail)

    def __reduce__(self):
        return (type(self), self._args)


class KvmUnavailableError(HostError):
    """/dev/kvm is missing or cannot be opened."""


class GuestMemoryError(XvmError, IndexError):
    """A guest-physical access falls outside guest RAM."""

    def __init__(self, gpa, length):
        super().__init__(f"guest-physical range {gpa:#x}+{length:#x} is not in guest RAM")
        self.gpa = gpa
        self.length = length

    def __reduce__(self):
        return (type(self), (self.gpa, self.length))


class GuestError(XvmError):
    """The guest did something the VMM cannot carry out; it was stopped."""


class BootError(ConfigError):
    """The kernel image cannot be booted (not an ELF/bzImage, too large...)."""


class ConsoleTimeout(XvmError, TimeoutError):
    """``Console.expect`` did not see its pattern in time."""

    def __init__(self, pattern, timeout, tail):
        shown = tail[-2000:].decode("utf-8", "replace")
        super().__init__(
            f"no match for {pattern!r} within {timeout:g}s; last console output:\n{shown}"
        )
        self.pattern = pattern
        self.timeout = timeout
        self.tail = tail

    def __reduce__(self):
        return (type(self), (self.pattern, self.timeout, self.tail))
