"""Where a host keeps its state: the store, console logs, VMM sockets.

A state directory belongs to one host; two hosts with different state directories
on one machine share nothing.  ``$XVM_STATE_DIR`` names it for the session URI;
otherwise ``/var/lib/xvm`` as root and ``$XDG_STATE_HOME/xvm`` (``~/.local/state/xvm``)
for anyone else.  Sockets and pid files go to its ``run/`` directory.
"""
import os
from dataclasses import dataclass

from ..errors import ConfigError, HostError


def default_state_dir():
    env = os.environ.get("XVM_STATE_DIR")
    if env:
        return os.path.abspath(env)
    if os.geteuid() == 0:
        return "/var/lib/xvm"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "xvm")


# AF_UNIX paths are limited to 108 bytes (sun_path) including the NUL.
SUN_PATH_MAX = 107


@dataclass(frozen=True)
class StateDir:
    root: str

    @property
    def store(self):
        return os.path.join(self.root, "domains.sqlite")

    @property
    def log_dir(self):
        return os.path.join(self.root, "log")

    @property
    def run_dir(self):
        return os.path.join(self.root, "run")

    def console_log(self, name):
        return os.path.join(self.log_dir, f"{name}.log")

    def vmm_log(self, uuid):
        return os.path.join(self.log_dir, f"vmm-{uuid}.log")

    def vmm_socket(self, uuid):
        return os.path.join(self.run_dir, f"{uuid}.sock")

    def vmm_lockfile(self, uuid):
        return os.path.join(self.run_dir, f"{uuid}.lock")

    def vmm_pidfile(self, uuid):
        return os.path.join(self.run_dir, f"{uuid}.pid")

    def ensure(self):
        """Create the directories (0700 state, 0700 run, 0700 log); returns self."""
        if len(self.vmm_socket("00000000-0000-0000-0000-000000000000")) > SUN_PATH_MAX:
            raise ConfigError(f"state directory {self.root} is too long: its socket paths would exceed "
                              f"{SUN_PATH_MAX} bytes (choose a shorter path)")
        for path in (self.root, self.log_dir, self.run_dir):
            try:
                os.makedirs(path, mode=0o700, exist_ok=True)
            except OSError as e:
                raise HostError(f"cannot create state directory {path}: {e.strerror}", e.errno) from None
            if not os.path.isdir(path):
                raise ConfigError(f"state directory {path} is not a directory")
        return self
