"""Processes a test left behind (used by tests/conftest.py's fixtures)."""
import os
import signal


def kill_processes_of(state):
    """SIGKILL every process started with ``--state-dir STATE`` (its VMMs, their fork server,
    an xvmd); returns their command lines."""
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"--state-dir" and argv[i + 1] == os.fsencode(state):
                try:
                    os.kill(int(entry), signal.SIGKILL)
                    killed.append(b" ".join(argv).decode(errors="replace").strip())
                except OSError:
                    pass
                break
    return killed
