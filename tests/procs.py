"""Processes a test left behind (used by tests/conftest.py's fixtures)."""
import os
import signal


def kill_processes_of(state):
    """SIGKILL every process started with ``--state-dir STATE`` (its VMMs, their fork server,
    an xvmd); returns the command lines of those that were more than an idle fork server
    (a VMM, a child of the fork server, or anything else), which a test should have stopped."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(arg == b"--state-dir" and argv[i + 1] == os.fsencode(state) for i, arg in enumerate(argv[:-1])):
            found[int(entry)] = (ppid, b" ".join(argv).decode(errors="replace").strip())
    left = []
    for pid, (ppid, command) in found.items():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
        if ppid in found or "xvm.vmm.zygote" not in command:  # a VMM the fork server forked, or xvmd
            left.append(command)
    return left
