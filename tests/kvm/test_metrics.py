"""xvmd's Prometheus endpoint scraped while a guest does I/O; ``xvm top`` on the same host."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

import xvm
from xvm import DomainState

prometheus_parser = pytest.importorskip("prometheus_client.parser")
MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def metrics_xvmd(xvmd_starter, destroyer):
    """An xvmd serving metrics: ``(host, metrics url, state dir)``."""
    state = tempfile.mkdtemp(prefix="xvmd-m-", dir="/tmp")
    sock = os.path.join(state, "xvmd.sock")
    port = free_port()
    proc = xvmd_starter(state, sock, "--metrics-listen", f"127.0.0.1:{port}")
    host = xvm.connect(f"xvm+unix://{sock}")
    try:
        yield host, f"http://127.0.0.1:{port}/metrics", state
    finally:
        destroyer(host)
        host.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(state, ignore_errors=True)


def scrape(url, timeout=10.0):
    """``{(name, frozenset(labels.items())): value}`` of one scrape, via the text parser."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            break
        except OSError:  # the endpoint starts just after the socket
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    samples = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def test_metrics_while_a_guest_reads_its_disk(metrics_xvmd, guest, tmp_path):
    host, url, state = metrics_xvmd
    image = str(tmp_path / "disk.img")
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    quiet = host.define(xvm.DomainConfig(name="quiet", memory_mib=64, kernel=guest("irq")))
    dom = host.create(xvm.DomainConfig(
        name="reader", memory_mib=64, kernel=guest("blk"), disks=[xvm.Disk(image)],
        cmdline="mode=bench op=seqread bs=4096 count=1000000000 depth=1"))  # reads until destroyed
    dom.console.expect("blk: bench start", timeout=30)
    time.sleep(0.5)
    first = scrape(url)
    time.sleep(1.0)
    second = scrape(url)
    assert dom.state is DomainState.RUNNING

    assert value(second, "xvm_domains") == 2
    assert value(second, "xvm_domain_state", domain="reader", uuid=str(dom.uuid), state="running") == 1
    assert value(second, "xvm_domain_state", domain="reader", uuid=str(dom.uuid), state="paused") == 0
    assert value(second, "xvm_domain_state", domain="quiet", uuid=str(quiet.uuid), state="shutoff") == 1
    assert value(second, "xvm_domain_memory_bytes", domain="reader") == 64 * MiB
    cpu = [value(s, "xvm_domain_vcpu_seconds_total", domain="reader", vcpu="0") for s in (first, second)]
    assert 0 < cpu[0] < cpu[1]
    reads = [value(s, "xvm_blk_read_bytes_total", domain="reader", device=image) for s in (first, second)]
    assert 0 < reads[0] < reads[1]  # the counters move while the guest reads
    requests = value(second, "xvm_blk_read_total", domain="reader", device=image)
    assert reads[1] == requests * 4096
    assert value(second, "xvm_blk_write_bytes_total", domain="reader", device=image) == 0
    assert not any(name.startswith("xvm_blk") and dict(labels)["domain"] == "quiet"
                   for name, labels in second)

    top = subprocess.run([sys.executable, "-m", "xvm.top", "--connect", host.uri, "--once",
                          "--interval", "0.5"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    assert lines[1].split()[:3] == ["ID", "NAME", "STATE"]
    rows = {line.split()[1]: line.split() for line in lines[2:] if line.strip()}
    assert rows["reader"][2] == "running" and rows["quiet"][2] == "shutoff"
    assert rows["reader"][-4].endswith("/s") and not rows["reader"][-4].startswith("0B")  # BLK RD/s

    dom.destroy()
    samples = scrape(url)
    assert value(samples, "xvm_domains") == 1  # the transient domain is gone
    assert not any(dict(labels).get("domain") == "reader" for _, labels in samples)


def test_metrics_listen_is_checked(xvmd_starter):
    state = tempfile.mkdtemp(prefix="xvmd-m-", dir="/tmp")
    try:
        result = subprocess.run([sys.executable, "-m", "xvm.daemon", "--state-dir", state, "--socket",
                                 os.path.join(state, "s"), "--metrics-listen", "localhost"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        assert result.returncode == 1
        assert "--metrics-listen wants HOST:PORT" in result.stderr and "Traceback" not in result.stderr
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_top_refuses_a_bad_interval(state_dir):
    from xvm import top

    with pytest.raises(xvm.XvmError, match="--interval must be positive"):
        top.main(["--once", "--interval", "0"])
