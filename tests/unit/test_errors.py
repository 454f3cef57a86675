"""The exception hierarchy: who is at fault, what happened, and the errno / offending value attached."""
import errno
import os
import pickle

import pytest

from xvm import errors
from xvm.errors import (
    BootError,
    ConfigError,
    ConsoleTimeout,
    GuestError,
    GuestMemoryError,
    HostError,
    KvmError,
    KvmUnavailableError,
    NotFoundError,
    StateError,
    XvmError,
)

ALL = [
    ConfigError,
    NotFoundError,
    StateError,
    HostError,
    KvmError,
    KvmUnavailableError,
    GuestMemoryError,
    GuestError,
    BootError,
    ConsoleTimeout,
]


def test_every_public_exception_is_listed_here():
    public = {
        obj for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }
    assert public == set(ALL) | {XvmError}


@pytest.mark.parametrize("cls", ALL)
def test_everything_derives_from_xvm_error(cls):
    assert issubclass(cls, XvmError)


@pytest.mark.parametrize(
    "cls,builtin",
    [
        (ConfigError, ValueError),
        (NotFoundError, LookupError),
        (NotFoundError, ConfigError),
        (BootError, ConfigError),
        (HostError, OSError),
        (KvmError, HostError),
        (KvmUnavailableError, HostError),
        (GuestMemoryError, IndexError),
        (ConsoleTimeout, TimeoutError),
    ],
)
def test_familiar_builtin_bases(cls, builtin):
    # Callers can catch what they would catch for the same failure in the standard library.
    assert issubclass(cls, builtin)


@pytest.mark.parametrize(
    "a,b",
    [
        (ConfigError, StateError),
        (ConfigError, HostError),
        (ConfigError, GuestError),
        (StateError, HostError),
        (GuestError, HostError),
        (GuestError, StateError),
    ],
)
def test_fault_branches_are_kept_apart(a, b):
    # Guest-caused, host-caused, caller-caused and wrong-state errors are distinct (STYLE 7).
    assert not issubclass(a, b) and not issubclass(b, a)


def test_kvm_error_names_the_ioctl_and_errno():
    err = KvmError("KVM_SET_USER_MEMORY_REGION", errno.EINVAL)
    assert str(err) == "KVM_SET_USER_MEMORY_REGION failed: EINVAL (Invalid argument)"
    assert err.ioctl == "KVM_SET_USER_MEMORY_REGION"
    assert err.errno == errno.EINVAL
    assert err.strerror == os.strerror(errno.EINVAL)


def test_kvm_error_detail():
    err = KvmError("KVM_CREATE_VCPU", errno.EEXIST, "vCPU 0 exists")
    assert str(err) == "KVM_CREATE_VCPU failed: EEXIST (File exists): vCPU 0 exists"


def test_kvm_error_with_an_unknown_errno():
    err = KvmError("KVM_RUN", 4242)
    assert str(err).startswith("KVM_RUN failed: 4242 (")
    assert err.errno == 4242


def test_kvm_error_is_caught_as_oserror_with_errno():
    with pytest.raises(OSError) as info:
        raise KvmError("KVM_RUN", errno.EINTR)
    assert info.value.errno == errno.EINTR


def test_host_error_str_is_the_message():
    err = HostError("cannot open /dev/kvm", errno.ENOENT)
    assert str(err) == "cannot open /dev/kvm"  # not OSError's "[Errno 2] ..." formatting
    assert (err.errno, err.strerror) == (errno.ENOENT, "No such file or directory")
    assert HostError("no errno").errno is None and HostError("no errno").strerror is None


def test_kvm_unavailable_error():
    err = KvmUnavailableError("/dev/kvm: permission denied", errno.EACCES)
    assert isinstance(err, HostError) and err.errno == errno.EACCES


def test_state_error_carries_state_and_operation():
    err = StateError("cannot pause: the domain is shut off", state="shutoff", operation="pause")
    assert str(err) == "cannot pause: the domain is shut off"
    assert (err.state, err.operation) == ("shutoff", "pause")
    plain = StateError("x")
    assert (plain.state, plain.operation) == (None, None)


def test_guest_memory_error_names_the_range():
    err = GuestMemoryError(0xC000_0000, 0x1000)
    assert str(err) == "guest-physical range 0xc0000000+0x1000 is not in guest RAM"
    assert (err.gpa, err.length) == (0xC000_0000, 0x1000)


def test_console_timeout_shows_the_tail():
    tail = b"x" * 5000 + b"\nKernel panic \xff"
    err = ConsoleTimeout("login:", 2.5, tail)
    text = str(err)
    assert text.startswith("no match for 'login:' within 2.5s; last console output:\n")
    assert text.endswith("Kernel panic \ufffd")  # undecodable bytes shown, not raised
    shown = text.split("\n", 1)[1]
    assert len(shown.encode()) <= 2000 + 2  # only the last 2000 bytes (U+FFFD is 3 bytes for 1)
    assert err.tail == tail and err.pattern == "login:" and err.timeout == 2.5


def test_console_timeout_with_bytes_pattern():
    assert "no match for b'\\\\$ ' within 1s" in str(ConsoleTimeout(rb"\$ ", 1, b""))


@pytest.mark.parametrize(
    "err",
    [
        ConfigError("memory_mib must be an integer"),
        StateError("cannot start", state="running", operation="start"),
        HostError("cannot open /dev/kvm", errno.ENOENT),
    ],
    ids=lambda e: type(e).__name__,
)
def test_simple_errors_survive_pickling(err):
    # One process per domain is the target (DESIGN.md): errors must cross a process boundary.
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err) and str(copy) == str(err)
    assert vars(copy) == vars(err)


@pytest.mark.parametrize(
    "err",
    [KvmError("KVM_RUN", errno.EFAULT), GuestMemoryError(0x1000, 8), ConsoleTimeout("x", 1.0, b"tail")],
    ids=lambda e: type(e).__name__,
)
def test_errors_with_structured_arguments_survive_pickling(err):
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err) and str(copy) == str(err)
    assert vars(copy) == vars(err)
