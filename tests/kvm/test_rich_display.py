"""Rich display of real domains and hosts in every state; the live console widget on a
real guest (issue 16)."""
import importlib.util
import os
import pathlib
import time

import pytest

import xvm
from xvm import DomainState

_spec = importlib.util.spec_from_file_location(
    "htmlcheck", pathlib.Path(__file__).resolve().parent.parent / "htmlcheck.py")
htmlcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(htmlcheck)

HOSTILE = "<script>document.title='pwned'</script><b onclick=x>bold</b>"


def shown(obj):
    """(plain text, parsed HTML) of what Jupyter would display for ``obj``."""
    bundle = obj._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    return bundle["text/plain"], htmlcheck.check(bundle["text/html"])


def host_row(host, name):
    text, doc = shown(host)
    rows = {row[1]: row for row in doc.tables["xvm-domains"]["rows"]}
    assert f"{len(rows)} domain(s)" in text
    return rows[name]


def test_domain_and_host_in_every_state(host, guest):
    dom = host.define(xvm.DomainConfig(name="shown", memory_mib=64, vcpus=2, kernel=guest("irq")))
    text, doc = shown(dom)
    assert text.startswith("Domain 'shown' shutoff")
    assert dict(doc.tables["xvm-identity"]["rows"])["state"] == "shutoff"
    assert host_row(host, "shown") == ["-", "shown", "shutoff", "2", "64 MiB", "-"]

    dom.start()
    dom.console.expect("echo ready")
    dom.console.write(HOSTILE + "\n")
    dom.console.expect("echo: <script>")
    time.sleep(0.3)  # the guest's vCPUs have run: CPU time is not zero
    text, doc = shown(dom)
    identity = dict(doc.tables["xvm-identity"]["rows"])
    assert identity["state"] == "running" and identity["id"] == str(dom.id)
    assert identity["VMM pid"] == str(dom.info()["pid"])
    assert float(identity["CPU time"].split()[0]) > 0
    assert "echo: " + HOSTILE in doc.pres[0]  # the guest's HTML is text, not markup
    assert "script" not in doc.tags and "b" not in doc.tags[doc.tags.index("pre"):]
    row = host_row(host, "shown")
    assert row[:5] == [str(dom.id), "shown", "running", "2", "64 MiB"] and row[5].endswith(" s")

    dom.pause()
    text, doc = shown(dom)
    assert text.startswith("Domain 'shown' paused")
    assert host_row(host, "shown")[2] == "paused"
    dom.resume()

    os.kill(dom.info()["pid"], 9)  # the VMM dies: the domain has crashed
    assert dom.wait(DomainState.CRASHED, timeout=10) is DomainState.CRASHED
    text, doc = shown(dom)
    identity = dict(doc.tables["xvm-identity"]["rows"])
    assert identity["state"] == "crashed" and "SIGKILL" in identity["crash reason"]
    assert "crashed: " in text
    assert "echo: " + HOSTILE in doc.pres[0]  # the console's history is still shown
    assert host_row(host, "shown")[:3] == ["-", "shown", "crashed"]
    dom.destroy()
    assert host_row(host, "shown")[2] == "shutoff"


def test_host_table_through_xvmd(any_host, guest):
    with any_host.create(xvm.DomainConfig(name="busy1", memory_mib=64, kernel=guest("busy"),
                                          cmdline="shift=26")) as dom:
        dom.console.expect("count")
        row = host_row(any_host, "busy1")
        assert row[:3] == [str(dom.id), "busy1", "running"] and float(row[5].split()[0]) > 0
        text, doc = shown(dom)
        assert "count" in doc.pres[0]


def test_a_pool_and_its_volume_show_the_running_domain_using_it(host, guest, tmp_path):
    pool = host.create_pool(xvm.Pool("shown", type="dir", path=str(tmp_path / "pool")))
    volume = pool.create_volume("disk", 8 << 20)
    volume.snapshot("clean", progress=False)
    dom = host.define(xvm.DomainConfig(name="user-1", memory_mib=64, kernel=guest("irq"),
                                       disks=[xvm.Disk(volume="shown/disk")]))
    text, doc = shown(host.lookup_pool("shown"))
    (row,) = doc.tables["xvm-volumes"]["rows"]
    assert row[0] == "disk" and row[3] == "clean" and row[6] == "-"
    dom.start()
    dom.console.expect("echo ready")
    text, doc = shown(host.lookup_pool("shown"))
    (row,) = doc.tables["xvm-volumes"]["rows"]
    assert row[6] == "user-1" and "user-1" in text
    text, doc = shown(host.lookup_pool("shown").lookup_volume("disk"))
    assert dict(doc.tables["xvm-volume-fields"]["rows"])["in use by"] == "user-1"
    assert text.endswith("in use by user-1")
    dom.destroy()
    assert dict(shown(volume)[1].tables["xvm-volume-fields"]["rows"])["in use by"] == "-"
    dom.undefine()
    pool.destroy()


def test_capabilities_of_this_host(host):
    text, doc = shown(host.capabilities())
    fields = dict(doc.tables["xvm-caps"]["rows"])
    assert fields["virtualization"] == host.capabilities().virtualization
    assert fields["missing capabilities"] == "none"


def test_console_widget_with_a_real_guest(host, guest, no_leaks):
    dom = host.define(xvm.DomainConfig(name="echo", memory_mib=64, kernel=guest("irq"))).start()
    widget = None
    try:
        dom.console.expect("echo ready")
        widget = dom.console.widget()
        _wait(lambda: "irq: echo ready" in widget.text)  # the history, then live output
        dom.console.write("typed elsewhere\n")
        _wait(lambda: "echo: typed elsewhere\n" in widget.text)
        widget.send("<i>from the widget</i>")  # what Enter in the input line does
        dom.console.expect("echo: <i>from the widget</i>")
        _wait(lambda: "echo: <i>from the widget</i>\n" in widget.text)
        assert "running" in widget.status.value
        widget.close()
        assert widget.closed
        dom.console.write("after close\n")
        dom.console.expect("echo: after close")
        time.sleep(0.2)
        assert "after close" not in widget.text
        dom.console.write("quit\n")
        assert dom.wait(timeout=10) is DomainState.SHUTOFF
    finally:
        if widget is not None:
            widget.close()
        if dom.state is not DomainState.SHUTOFF:
            dom.destroy()


def test_console_widget_follows_the_guest_to_its_end(host, guest, no_leaks):
    dom = host.define(xvm.DomainConfig(name="echo2", memory_mib=64, kernel=guest("irq"))).start()
    with dom.console.widget() as widget:
        dom.console.expect("echo ready")
        widget.send("quit")
        assert dom.wait(timeout=10) is DomainState.SHUTOFF
        _wait(lambda: "closed" in widget.status.value)
        _wait(lambda: "irq: echo ready" in widget.text)


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
