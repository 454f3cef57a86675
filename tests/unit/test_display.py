"""xvm.display without /dev/kvm: rendering from plain data, escaping, the figures' helpers."""
import importlib.util
import os
import pathlib
import sys
import threading

import pytest

import xvm
from xvm import display
from xvm.errors import XvmError
from xvm.host.capabilities import Capabilities
from xvm.net.network import HostNetwork, NetworkTable
from xvm.storage import Pool, Pools
from xvm.store import Store

_spec = importlib.util.spec_from_file_location(
    "htmlcheck", pathlib.Path(__file__).resolve().parent.parent / "htmlcheck.py")
htmlcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(htmlcheck)

HOSTILE = b"<script>alert('x')</script>\x1b[31mred\x1b[0m\r\n<img src=x onerror=alert(1)>\x00\x07&amp;\n"


def facts(state="running", console=b"", **info):
    cfg = xvm.DomainConfig(name="web", memory_mib=128, kernel="/boot/k", vcpus=2, cmdline="a=<b>",
                           disks=[xvm.Disk("/img/disk.img", serial="s1")],
                           nics=[xvm.Nic(bridge="br0", mac="52:54:00:00:00:01")])
    base = {"name": "web", "uuid": str(cfg.uuid), "id": 3, "state": state, "vcpus": 2,
            "memory_mib": 128, "pid": 42, "boot_count": 1, "crash_reason": None, "started_at": 0}
    base.update(info)
    return display.DomainFacts(info=base, config=cfg, console=console, cpu=1.5)


@pytest.mark.parametrize("state", ["shutoff", "running", "paused", "crashed"])
def test_domain_html_is_valid_and_escapes_guest_output(state):
    reason = "the VMM process (pid 42) was killed by <SIGKILL>" if state == "crashed" else None
    b = display.render_domain(facts(state, console=b"boot\n" + HOSTILE, crash_reason=reason))
    assert set(b) == {"text/plain", "text/html"}
    doc = htmlcheck.check(b["text/html"])  # no <script>, no onerror=, strictly valid
    assert "&lt;script&gt;" in b["text/html"]
    console = doc.pres[0]
    assert "<script>alert('x')</script>" in console  # shown as text
    assert "\x1b" not in console and "\x00" not in console and "\r" not in console
    assert "red" in console and "\ufffd" in console
    assert {"xvm-domain", "xvm-identity", "xvm-config", "xvm-disks", "xvm-nics", "xvm-console"} <= doc.classes
    identity = dict(doc.tables["xvm-identity"]["rows"])
    assert identity["state"] == state and identity["CPU time"] == "1.50 s"
    if state == "crashed":
        assert identity["crash reason"] == reason
        assert "crashed: " + reason in b["text/plain"]
    assert doc.tables["xvm-disks"]["rows"] == [["/img/disk.img", "no", "s1", "none"]]
    assert doc.tables["xvm-nics"]["rows"] == [["-", "br0", "52:54:00:00:00:01", "-"]]
    assert dict(doc.tables["xvm-config"]["rows"])["cmdline"] == "a=<b>"
    assert b["text/plain"].startswith(f"Domain 'web' {state}")


def test_scheduler_settings_shown_when_the_config_has_them():
    f = facts()
    cfg = f.config

    class WithSched:  # a config of a branch that has scheduler settings
        def __getattr__(self, name):
            return getattr(cfg, name)
        sched = {"weight": 512, "cap": 50}

    f.config = WithSched()
    b = display.render_domain(f)
    doc = htmlcheck.check(b["text/html"])
    assert dict(doc.tables["xvm-sched"]["rows"]) == {"weight": "512", "cap": "50"}
    assert "weight=512" in b["text/plain"]


def test_include_and_exclude_filter_the_bundle():
    assert set(display.render_domain(facts(), include={"text/plain"})) == {"text/plain"}
    assert set(display.render_domain(facts(), exclude={"text/html"})) == {"text/plain"}


def test_host_table_html_and_text():
    rows = [(1, "a<b>", "running", 1, "64 MiB", "0.10 s"), (None, "off", "shutoff", 2, "1 GiB", "-")]
    b = display.render_host("xvm:///session", rows)
    doc = htmlcheck.check(b["text/html"])
    table = doc.tables["xvm-domains"]
    assert table["header"] == ["id", "name", "state", "vCPUs", "memory", "CPU time"]
    assert table["rows"] == [["1", "a<b>", "running", "1", "64 MiB", "0.10 s"],
                             ["-", "off", "shutoff", "2", "1 GiB", "-"]]
    lines = b["text/plain"].splitlines()
    assert lines[1].split() == ["id", "name", "state", "vCPUs", "memory", "CPU", "time"]
    assert lines[2].split()[:3] == ["1", "a<b>", "running"]
    empty = display.render_host("xvm:///session", [], error="xvmd went away")
    assert htmlcheck.check(empty["text/html"]).tables["xvm-domains"]["rows"] == [["none"]]
    assert "xvmd went away" in empty["text/plain"]


def test_capabilities_and_network_display(tmp_path):
    caps = Capabilities(kvm_api_version=12, virtualization="pvm", hvm=False, pv=True, max_vcpus=8,
                        recommended_vcpus=2, memory_slots=32, kvm_capabilities={"KVM_CAP_IRQFD": 1},
                        missing_capabilities=("KVM_CAP_X",))
    b = caps._repr_mimebundle_()
    doc = htmlcheck.check(b["text/html"])
    fields = dict(doc.tables["xvm-caps"]["rows"])
    assert fields["virtualization"] == "pvm" and fields["unmodified guests (hvm)"] == "no"
    assert fields["missing capabilities"] == "KVM_CAP_X"
    assert doc.tables["xvm-kvm-caps"]["rows"] == [["KVM_CAP_IRQFD", "1"]]
    net = NetworkTable(None, Store(tmp_path / "store.sqlite")).define(xvm.Network("lab", address="10.9.0.1/24"))
    b = net._repr_mimebundle_()
    fields = dict(htmlcheck.check(b["text/html"]).tables["xvm-network-fields"]["rows"])
    assert fields["state"] == "inactive" and fields["bridge"] == "xvmbr-lab"
    assert fields["address"] == "10.9.0.1/24" and fields["ports"] == "none"
    assert b["text/plain"] == "Network 'lab' inactive: bridge xvmbr-lab, 10.9.0.1/24"


MiB = 1 << 20


@pytest.fixture
def storage(tmp_path):
    """Pools on a real store whose in-use callable says clone "c1" is used by domain "web<1>";
    the pool's directory has HTML in its name."""
    with Store(tmp_path / "domains.db") as store:
        yield Pools(store, in_use=lambda path: "web<1>" if path.endswith("/c1") else None), \
            tmp_path / "<b>pools&amp;"


def test_pool_html_lists_its_volumes_with_sizes_snapshots_origins_and_users(storage):
    pools, root = storage
    pool = pools.create_pool(Pool("lab", type="dir", path=str(root)))
    empty = htmlcheck.check(pool._repr_mimebundle_()["text/html"])
    assert empty.tables["xvm-volumes"]["rows"] == [["none"]]
    golden = pool.create_volume("golden", 64 * MiB)
    with open(golden.path, "r+b") as f:
        f.write(b"x" * MiB)
    golden.snapshot("base")
    golden.snapshot("tuned")
    golden.clone("base", "c1")
    b = pool._repr_mimebundle_()
    assert set(b) == {"text/plain", "text/html"}
    doc = htmlcheck.check(b["text/html"])
    assert "&lt;b&gt;pools&amp;amp;" in b["text/html"] and "b" not in doc.tags  # the path is text
    fields = dict(doc.tables["xvm-pool-fields"]["rows"])
    assert fields["type"] == "dir" and fields["location"] == str(root)
    assert fields["backend"] == f"directory {root}" and fields["available"].endswith("iB")
    volumes = doc.tables["xvm-volumes"]
    assert volumes["header"] == ["name", "size", "allocation", "snapshots", "origin", "made by", "in use by"]
    rows = {row[0]: row for row in volumes["rows"]}
    assert rows["golden"] == ["golden", "64 MiB", "1 MiB", "base, tuned", "-", "created", "-"]
    assert rows["c1"][:2] == ["c1", "64 MiB"] and rows["c1"][3:] == ["none", "lab/golden@base",
                                                                   "copy", "web<1>"]
    text = b["text/plain"].splitlines()
    assert text[0].startswith(f"StoragePool lab (dir, {root}): 2 volume(s), ")
    assert text[1].split()[:4] == ["name", "size", "allocation", "snapshots"]
    assert "web<1>" in text[2] + text[3]
    assert repr(pool) == f"<StoragePool lab directory {root}>"


def test_volume_html_shows_its_facts_snapshots_and_clones(storage):
    pools, root = storage
    pool = pools.create_pool(Pool("lab", type="dir", path=str(root)))
    golden = pool.create_volume("golden", 3 * MiB // 2 * 1024)
    golden.snapshot("base")
    clone = golden.clone("base", "c1")
    b = golden._repr_mimebundle_()
    doc = htmlcheck.check(b["text/html"])
    fields = dict(doc.tables["xvm-volume-fields"]["rows"])
    assert fields["volume"] == "lab/golden" and fields["path"] == golden.path
    assert fields["size"] == "1.5 GiB" and fields["format"] == "raw"
    assert fields["made by"] == "created" and fields["origin"] == "-" and fields["in use by"] == "-"
    assert [row[0] for row in doc.tables["xvm-snapshots"]["rows"]] == ["base"]
    assert doc.tables["xvm-snapshots"]["rows"][0][2] in ("reflink", "copy")
    assert doc.tables["xvm-clones"]["rows"] == [["lab/c1"]]
    assert b["text/plain"].splitlines() == [f"Volume lab/golden: 1.5 GiB, {golden.path}",
                                            "  snapshots: base", "  clones: lab/c1"]
    b = clone._repr_mimebundle_()
    fields = dict(htmlcheck.check(b["text/html"]).tables["xvm-volume-fields"]["rows"])
    assert fields["origin"] == "lab/golden@base" and fields["in use by"] == "web<1>"
    assert "&lt;1&gt;" in b["text/html"]
    assert b["text/plain"].endswith("\n  in use by web<1>")
    assert htmlcheck.check(clone._repr_mimebundle_()["text/html"]).tables["xvm-snapshots"]["rows"] \
        == [["none"]]


def test_a_deleted_volume_and_a_missing_pool_directory_show_the_error(storage):
    pools, root = storage
    pool = pools.create_pool(Pool("lab", type="dir", path=str(root)))
    volume = pool.create_volume("gone", MiB)
    volume.delete()
    b = volume._repr_mimebundle_()
    doc = htmlcheck.check(b["text/html"])
    assert "xvm-error" in doc.classes and "no volume lab/gone (deleted?)" in b["text/plain"]
    pool.create_volume("v", MiB)
    os.rename(root, str(root) + ".moved")
    b = pool._repr_mimebundle_()
    doc = htmlcheck.check(b["text/html"])
    assert "v" in [row[0] for row in doc.tables["xvm-volumes"]["rows"]]
    row = dict(zip(doc.tables["xvm-volumes"]["header"], doc.tables["xvm-volumes"]["rows"][0]))
    assert row["size"] == "unknown"  # the file is gone: said, not raised
    assert dict(doc.tables["xvm-pool-fields"]["rows"])["available"] == "unknown"
    assert "xvm-error" in doc.classes
    assert b["text/plain"].splitlines()[-1] == (f"error: {root}: No such file or directory; "
                                                f"stat volume {root}/v: No such file or directory")
    os.rename(str(root) + ".moved", root)


def test_format_bytes():
    assert [display.format_bytes(v) for v in (None, 0, 512, 1024, 64 * MiB, 3 << 29, 1000 * MiB, 5 << 40)] \
        == ["-", "0 B", "512 B", "1 KiB", "64 MiB", "1.5 GiB", "1000 MiB", "5 TiB"]


def test_figures_from_proc_and_stats():
    tid = threading.get_native_id()
    info = {"pid": os.getpid(), "vcpu_thread_ids": [tid, 999999999]}
    times = display.vcpu_seconds(info)
    assert len(times) == 1 and times[0] > 0  # the thread that does not exist is left out
    assert display.cpu_seconds({"pid": None, "vcpu_thread_ids": []}) is None
    stats = {"devices": [{"name": "virtio-blk:/a.img", "metrics": {"read_bytes": 5, "ok": True}},
                         {"name": "virtio-net:52:54:00:00:00:01", "metrics": {"rx_packets": 2}}]}
    assert display.device_counters(stats) == [("blk", "/a.img", {"read_bytes": 5}),
                                              ("net", "52:54:00:00:00:01", {"rx_packets": 2})]


def test_console_tail_keeps_the_last_lines():
    data = b"".join(b"line %d\n" % i for i in range(100))
    tail = display.console_tail(data, lines=3)
    assert tail == "line 98\nline 99\n"
    assert display.clean_text(b"\xff ok") == "\ufffd ok"


def test_widget_without_ipywidgets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ImportError
    with pytest.raises(XvmError, match=r"pip install 'xvm\[jupyter\]'"):
        xvm.Console().widget()


def test_widget_on_a_plain_console_shows_output_and_sends_lines(no_leaks):
    console = xvm.Console()
    sent = []
    console._attach(sent.append)
    console._feed(b"before\n")
    w = console.widget()
    console._feed(b"<b>after</b> \xe2\x82")  # a character split across two writes
    console._feed(b"\xac\n")
    _wait(lambda: "\u20ac" in w.text)
    assert w.text == "before\n<b>after</b> \u20ac\n"
    w.send("hello")
    assert sent == [b"hello\n"] and w.input.value == ""
    console._detach("guest powered off")
    _wait(lambda: "guest powered off" in w.status.value)
    w.send("too late")  # the console is closed: the error is shown, nothing raised
    _wait(lambda: any("cannot write" in o.get("text", "") for o in w.output.outputs))
    w.close()
    assert w.closed and not console._listeners
    console._feed(b"not shown\n")
    assert "not shown" not in w.text


def _wait(predicate, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
