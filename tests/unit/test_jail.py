"""xvm.vmm.jail without a VM: users, the allow-list, and the seccomp filter with its
SIGSYS handler in a forked child (root not needed for the filter: no_new_privs is)."""
import os
import signal

import pytest

from xvm.errors import ConfigError
from xvm.vmm import jail


def test_every_allowed_name_is_a_syscall_and_has_a_reason():
    for name, why in {**jail.ALLOWED, **{k: v[0] for k, v in jail.ALLOWED_IF.items()}}.items():
        assert jail.syscall_number(name) >= 0 and why
    for forbidden in ("execve", "ptrace", "mount", "setuid", "unshare", "bpf", "fork"):
        assert forbidden not in jail.ALLOWED and forbidden not in jail.ALLOWED_IF


def test_users():
    assert jail.resolve_user("nobody")[0] == 65534
    assert jail.resolve_user((1234, 99)) == (1234, 99)
    with pytest.raises(ConfigError):
        jail.resolve_user("root")
    with pytest.raises(ConfigError):
        jail.resolve_user("no-such-user-xvm")
    uid, gid = jail.domain_uid("6f1c0f4e-0000-4000-8000-000000000000", 100000, 1000)
    assert 100000 <= uid < 101000 and uid == gid


def _in_filtered_child(tmp_path, syscall):
    crash = tmp_path / "crash"
    handler = jail._handler()
    flt = jail.Filter()
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(crash, os.O_WRONLY | os.O_CREAT, 0o600)
            for nr in range(512):
                name = jail.syscall_name(nr)
                if name:
                    handler.lib.xvm_jail_set_name(nr, name.encode())
            jail._libc()[1].prctl(jail.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            handler.lib.xvm_jail_install_sigsys(fd)
            flt.load()
            handler.lib.xvm_jail_syscall(jail.syscall_number(syscall))
            os.write(fd, b"survived")
        finally:
            os._exit(0)
    flt.close()
    _, status = os.waitpid(pid, 0)
    return status, crash.read_text()


def test_a_forbidden_syscall_dies_of_sigsys_and_names_itself(tmp_path):
    status, text = _in_filtered_child(tmp_path, "ptrace")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
    assert text == "seccomp: ptrace\n"


def test_an_allowed_syscall_passes(tmp_path):
    status, text = _in_filtered_child(tmp_path, "getppid")
    assert os.WIFEXITED(status) and text == "survived"


def test_crash_reason_reads_and_removes(tmp_path):
    from xvm.host.paths import StateDir
    state = StateDir(str(tmp_path))
    os.makedirs(state.run_dir)
    assert jail.crash_reason(state, "u") is None
    with open(jail.crash_path(state, "u"), "w") as f:
        f.write("seccomp: mount\n")
    assert jail.crash_reason(state, "u") == "seccomp: mount"
    assert not os.path.exists(jail.crash_path(state, "u"))
