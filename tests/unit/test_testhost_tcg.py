"""The HVM test host's machinery, booting the TCG machine itself (no /dev/kvm needed, but
QEMU and the test host's cached kernels: scripts/setup-testhost.sh). Marked ``hvm``: they need
the test host, so the quick tier (``-m "not hvm"``) leaves them out.

* a checkout under /tmp (the test host's own /tmp) is visible to the job at the same path;
* a job that goes silent is stopped by the heartbeat within the stall limit, retried once, and
  the error names what was running.
"""
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from xvm.testhost import TestHost, TestHostTimeout, qemu_path

REPO = Path(__file__).resolve().parents[2]
STALL = 10.0  # seconds of silence that count as a hang here
MARGIN = 15.0  # polling, killing QEMU, a late console line

pytestmark = [
    pytest.mark.hvm,
    pytest.mark.skipif(qemu_path() is None, reason="needs qemu-system-x86_64 (run scripts/setup-testhost.sh)"),
    pytest.mark.skipif(bool(os.environ.get("XVM_TESTHOST_INNER")), reason="already inside the test host"),
]


def test_checkout_under_tmp_runs_in_the_test_host():
    checkout = Path(tempfile.mkdtemp(prefix="xvm-checkout-", dir="/tmp"))
    try:
        shutil.copytree(REPO / "xvm", checkout / "xvm", ignore=shutil.ignore_patterns("__pycache__"))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        run = subprocess.run(
            [sys.executable, "-m", "xvm.testhost", "run", "--mode", "tcg", "--timeout", "300", "--",
             "python3", "-c", "import os, xvm; print('XVM-RAN-FROM', xvm.__file__, os.getcwd())"],
            cwd=checkout, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=700)
    finally:
        shutil.rmtree(checkout, ignore_errors=True)
    assert run.returncode == 0, run.stdout
    assert f"XVM-RAN-FROM {checkout}/xvm/__init__.py {checkout}\n" in run.stdout, run.stdout
    assert "exit status 0 (tcg," in run.stdout


def test_a_silent_job_is_stopped_by_the_heartbeat_and_retried_once(tmp_path):
    name = "tests/hvm/test_fake.py::test_sleeps_forever"
    # Reports that a test started (as the inner pytest's progress plugin does), then prints
    # nothing and sleeps: a hung TCG machine looks exactly like this from outside.
    command = f'echo "start {name}" >> "$XVM_TESTHOST_PROGRESS"; exec sleep 3600'
    stream = io.StringIO()
    host = TestHost(mode="tcg", retries=1, stall_timeout=STALL, stream=stream)
    start = time.monotonic()
    with pytest.raises(TestHostTimeout) as caught:
        host.run(command, timeout=600, cwd=REPO, results_dir=tmp_path)
    wall = time.monotonic() - start
    error = caught.value
    assert error.attempts == 2
    assert error.running == name
    assert f"no console output and no progress for {STALL:g} s while running {name}" in str(error)
    assert error.boot_time is not None
    silent = error.duration - error.boot_time
    assert STALL <= silent <= STALL + MARGIN, f"stopped after {silent:.1f} s of silence"
    assert wall < 2 * (host.boot_timeout + STALL + MARGIN)
    assert f"attempt 1 hung (no console output and no progress for {STALL:g} s while running {name}); " \
           "retrying" in stream.getvalue()
    ctl = tmp_path / ".xvm-testhost"
    assert (ctl / "console-1.log").exists() and (ctl / "console-2.log").exists()
    assert (ctl / "progress-2.log").read_text() == f"start {name}\n"
