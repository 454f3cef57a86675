"""The suite's own fixtures (tests/conftest.py, tests/procs.py): what a test's teardown leaves must not run on."""
import subprocess
import sys

from procs import kill_processes_of


def test_processes_serving_a_state_directory_are_killed_and_named(tmp_path):
    # Stand-ins for a VMM and its fork server: any process started with --state-dir DIR.
    serving = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--state-dir", str(tmp_path)])
               for _ in range(2)]
    # An idle fork server (no VMM forked from it): killed, but nothing a test left running.
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "xvm.vmm.zygote",
                               "--state-dir", str(tmp_path)])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--state-dir",
                              str(tmp_path) + "-other"])
    try:  # Popen returns once they are exec'd: their command lines are in /proc
        killed = kill_processes_of(str(tmp_path))
        assert len(killed) == 2 and all(f"--state-dir {tmp_path}" in k for k in killed), killed
        assert [p.wait(10) for p in serving + [server]] == [-9, -9, -9]
        assert other.poll() is None  # another directory's process is left alone
    finally:
        for p in serving + [server, other]:
            p.kill()
            p.wait()
