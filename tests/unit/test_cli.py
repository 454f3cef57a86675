"""The xvm command line: results on stdout, progress on stderr, ``xvm: error: <message>`` and
status 1 for an XvmError (never a traceback), argparse's status 2 for usage errors; virsh's
layouts; the console loop on pipes and on a pty. Domains here belong to a small fake host
(the same verbs run against a real embedded host in tests/kvm/test_cli_verbs.py)."""
import os
import subprocess
import sys
import threading
import time

import pytest

import xvm
from xvm import cli
from xvm.console import Console
from xvm.domain import ShutdownTimeout
from xvm.errors import ConfigError, KvmUnavailableError, NotFoundError, StateError
from xvm.host import Capabilities
from xvm.testhost import cache as tcache
from xvm.testhost import initramfs as tinitramfs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- a fake host -------------------------------------------------------------------------------


class FakeDomain:
    def __init__(self, host, config, state="shutoff", domain_id=None, persistent=True, pid=None):
        self.host, self._config = host, config
        self.uuid = config.uuid
        self._state, self._id, self.persistent, self.pid = state, domain_id, persistent, pid
        self.calls = []
        self.console = Console()
        self.autostart = False

    name = property(lambda self: self._config.name)
    id = property(lambda self: self._id)
    config = property(lambda self: self._config)

    def info(self):
        return {"name": self.name, "uuid": self.uuid, "id": self._id, "state": self._state, "boot_count": 0,
                "crash_reason": "the VMM process (pid 9) was killed by SIGKILL" if self._state == "crashed" else None,
                "pid": self.pid, "vcpus": self._config.vcpus, "memory_mib": self._config.memory_mib,
                "started_at": None, "vcpu_thread_ids": []}

    @property
    def state(self):
        return xvm.DomainState(self._state)

    def _verb(self, name, new_state=None, allowed=None):
        if allowed and self._state not in allowed:
            raise StateError(f"cannot {name} domain {self.name!r}: it is {self._state}")
        self.calls.append(name)
        if new_state:
            self._state = new_state

    def start(self):
        self._verb("start", "running", ("shutoff", "crashed"))
        self._id = self.host.next_id = self.host.next_id + 1
        return self

    def pause(self):
        self._verb("pause", "paused", ("running",))

    def resume(self):
        self._verb("resume", "running", ("paused",))

    def destroy(self):
        self._verb("destroy", "shutoff", ("running", "paused", "crashed"))
        self._id = None

    def reboot(self):
        self._verb("reboot", None, ("running",))

    def shutdown(self, timeout=60.0):
        self.calls.append(("shutdown", timeout))
        raise ShutdownTimeout(f"domain {self.name!r} did not power off within {timeout:g}s")

    def rename(self, new_name):
        self._config = self._config.replace(name=new_name)

    def undefine(self):
        self._verb("undefine", None, ("shutoff", "crashed"))
        self.host.doms.remove(self)


class FakeRecord:
    def __init__(self, autostart):
        self.autostart = autostart


class FakeHost:
    def __init__(self, caps=None, error=None):
        self.caps, self.error, self.closed = caps, error, False
        self.doms, self.uris, self.nets, self.next_id = [], [], {}, 0

    def __call__(self, uri=None):  # stands in for xvm.connect
        self.uris.append(uri)
        if self.error:
            raise self.error
        self.closed = False
        return self

    def capabilities(self):
        return self.caps

    def close(self):
        self.closed = True

    def add(self, name, state="shutoff", domain_id=None, **kw):
        cfg = xvm.DomainConfig(name=name, memory_mib=kw.pop("memory_mib", 64), kernel=__file__,
                               vcpus=kw.pop("vcpus", 1), uuid=kw.pop("uuid", None))
        dom = FakeDomain(self, cfg, state, domain_id, **kw)
        self.doms.append(dom)
        return dom

    def domains(self):
        return sorted(self.doms, key=lambda d: d.name)

    def lookup(self, key):
        for dom in self.doms:
            if key in (dom.name, str(dom.uuid)):
                return dom
        raise NotFoundError(f"no domain named {key!r}")

    def define(self, config):
        if any(d.name == config.name for d in self.doms):
            raise ConfigError(f"domain name {config.name!r} is taken")
        dom = FakeDomain(self, config)
        self.doms.append(dom)
        return dom

    def create(self, config):
        return self.define(config).start()

    def set_autostart(self, dom, on):
        dom.autostart = on

    def _record(self, dom):
        return FakeRecord(dom.autostart)

    def networks(self):
        return list(self.nets.values())

    def define_network(self, net):
        self.nets[net.name] = FakeNet(net)

    def lookup_network(self, name):
        try:
            return self.nets[name]
        except KeyError:
            raise NotFoundError(f"no network named {name!r}") from None


class FakeNet:
    def __init__(self, config):
        self.config, self.active = config, False

    name = property(lambda self: self.config.name)
    bridge = property(lambda self: self.config.bridge)
    address = property(lambda self: self.config.address)

    def start(self):
        self.active = True


@pytest.fixture
def host(monkeypatch):
    fake = FakeHost()
    monkeypatch.setattr(xvm, "connect", fake)
    return fake


def run(capsys, *argv, status=0):
    assert cli.main(list(argv)) == status
    out, err = capsys.readouterr()
    if status == 0:
        assert "error" not in err
    else:
        last = err.splitlines()[-1]
        assert last.startswith("xvm: error: ") and "Traceback" not in err, err
        assert not any(line.startswith("xvm: error") for line in err.splitlines()[:-1]), err
    return out, err


# --- list, in virsh's layout --------------------------------------------------------------------


def test_list_of_nothing_is_virshs_empty_table(host, capsys):
    out, _ = run(capsys, "list")
    assert out == " Id   Name   State\n--------------------\n\n"


def test_list_layout_matches_virsh(host, capsys):
    host.add("web", "running", 12)
    host.add("db", "running", 3)
    host.add("batch-worker", "paused", 7)
    host.add("old", "shutoff")
    host.add("broken", "crashed")
    out, _ = run(capsys, "list")
    assert out == (" Id   Name           State\n"
                   "------------------------------\n"
                   " 3    db             running\n"
                   " 7    batch-worker   paused\n"
                   " 12   web            running\n"
                   "\n")
    out, _ = run(capsys, "list", "--all")
    assert out.splitlines()[-3:-1] == [" -    broken         crashed", " -    old            shut off"]
    out, _ = run(capsys, "list", "--inactive")
    assert [line.split()[1] for line in out.splitlines()[2:-1]] == ["broken", "old"]
    assert run(capsys, "list", "--all", "--name")[0] == "db\nbatch-worker\nweb\nbroken\nold\n"
    assert run(capsys, "list", "--uuid")[0].split() == [str(host.lookup(n).uuid) for n in ("db", "batch-worker", "web")]


def test_list_json(host, capsys):
    import json

    dom = host.add("web", "running", 12)
    host.add("old")
    rows = json.loads(run(capsys, "list", "--all", "--json")[0])
    assert rows == [{"id": 12, "name": "web", "uuid": str(dom.uuid), "state": "running", "persistent": True,
                     "autostart": False},
                    {"id": None, "name": "old", "uuid": str(host.lookup("old").uuid), "state": "shutoff",
                     "persistent": True, "autostart": False}]


def test_table_widths_follow_vshtable():
    assert cli.table(("A", "Bee"), [("xxxx", "y")]) == " A      Bee\n-------------\n xxxx   y\n\n"


# --- naming domains -------------------------------------------------------------------------------


def test_domains_by_name_uuid_or_id(host, capsys):
    dom = host.add("web", "running", 5, uuid="4dea24b3-1d52-d8f3-2516-782e98a23fa0")
    host.add("42")  # a name made of digits: found by name once no running domain has that id
    for key in ("web", "4dea24b3-1d52-d8f3-2516-782e98a23fa0", "5"):
        assert run(capsys, "domname", key)[0] == "web\n"
    assert run(capsys, "domuuid", "5")[0] == f"{dom.uuid}\n"
    assert run(capsys, "domid", "web")[0] == "5\n"
    assert run(capsys, "domid", "42")[0] == "-\n"
    _, err = run(capsys, "domid", "nope", status=1)
    assert err == "xvm: error: failed to get domain 'nope': no domain with this name, UUID or id\n"


# --- info verbs ----------------------------------------------------------------------------------


def test_dominfo_has_virshs_fields(host, capsys):
    dom = host.add("web", "running", 5, memory_mib=512, vcpus=2, pid=os.getpid())
    dom.autostart = True
    out = run(capsys, "dominfo", "web")[0]
    assert out.endswith(" no\n\n")
    lines = out.splitlines()[:-1]
    labels = [line[:16] for line in lines]
    assert labels == ["Id:             ", "Name:           ", "UUID:           ", "OS Type:        ",
                      "State:          ", "CPU(s):         ", "CPU time:       ", "Max memory:     ",
                      "Used memory:    ", "Persistent:     ", "Autostart:      ", "Managed save:   "]
    values = dict(line.split(":", 1) for line in lines)
    assert {k: v.strip() for k, v in values.items() if k != "CPU time"} == {
        "Id": "5", "Name": "web", "UUID": str(dom.uuid), "OS Type": "hvm", "State": "running", "CPU(s)": "2",
        "Max memory": "524288 KiB", "Used memory": "524288 KiB", "Persistent": "yes", "Autostart": "enable",
        "Managed save": "no"}
    assert values["CPU time"].strip().endswith("s")  # this test process's CPU time stands in for the VMM's
    host.add("off")
    lines = run(capsys, "dominfo", "off")[0].splitlines()[:-1]
    assert lines[0] == "Id:             -" and "State:          shut off" in lines
    assert not any(line.startswith("CPU time") for line in lines)


def test_dominfo_json(host, capsys):
    import json

    host.add("web", "paused", 5)
    data = json.loads(run(capsys, "dominfo", "web", "--json")[0])
    assert (data["id"], data["state"], data["persistent"], data["autostart"]) == (5, "paused", True, False)


def test_domstate(host, capsys):
    host.add("web", "running", 5)
    host.add("p", "paused", 6)
    host.add("c", "crashed")
    assert run(capsys, "domstate", "web")[0] == "running\n"
    assert run(capsys, "domstate", "web", "--reason")[0] == "running (booted)\n"
    assert run(capsys, "domstate", "p", "--reason")[0] == "paused (user)\n"
    assert run(capsys, "domstate", "c", "--reason")[0] == "crashed (the VMM process (pid 9) was killed by SIGKILL)\n"
    assert run(capsys, "domstate", "c", "--json")[0].replace(" ", "").startswith('{\n"reason"')


# --- lifecycle verbs -----------------------------------------------------------------------------


def test_lifecycle_verbs_print_virshs_messages(host, capsys):
    dom = host.add("web")
    assert run(capsys, "start", "web")[0] == "Domain 'web' started\n"
    assert run(capsys, "suspend", "web")[0] == "Domain 'web' suspended\n"
    assert run(capsys, "resume", "web")[0] == "Domain 'web' resumed\n"
    assert run(capsys, "reboot", "web")[0] == "Domain 'web' is being rebooted\n"
    assert run(capsys, "shutdown", "web")[0] == "Domain 'web' is being shutdown\n"
    assert dom.calls[-1] == ("shutdown", 0)  # the power button, not waiting
    assert run(capsys, "destroy", "web")[0] == "Domain 'web' destroyed\n"
    assert run(capsys, "domrename", "web", "www")[0] == "Domain successfully renamed\n"
    assert run(capsys, "undefine", "www")[0] == "Domain 'www' has been undefined\n"
    assert host.doms == []
    assert dom.calls == ["start", "pause", "resume", "reboot", ("shutdown", 0), "destroy", "undefine"]


def test_an_illegal_transition_is_one_line(host, capsys):
    host.add("web")
    _, err = run(capsys, "suspend", "web", status=1)
    assert err == "xvm: error: cannot pause domain 'web': it is shutoff\n"


def test_shutdown_wait_times_out_as_an_error(host, capsys):
    host.add("web", "running", 1)
    _, err = run(capsys, "shutdown", "web", "--wait", "--timeout", "2", status=1)
    assert "did not power off within 2s" in err


def test_autostart(host, capsys):
    dom = host.add("web")
    assert run(capsys, "autostart", "web")[0] == "Domain 'web' marked as autostarted\n"
    assert dom.autostart is True
    assert run(capsys, "autostart", "--disable", "web")[0] == "Domain 'web' unmarked as autostarted\n"
    assert dom.autostart is False
    host.add("t", persistent=False)
    assert "transient" in run(capsys, "autostart", "t", status=1)[1]


def test_connect_uri_is_passed(host, capsys):
    run(capsys, "-c", "xvm+unix:///run/x.sock", "list")
    run(capsys, "--connect", "xvm:///system", "list")
    run(capsys, "list")
    assert host.uris == ["xvm+unix:///run/x.sock", "xvm:///system", None]
    assert host.closed


# --- define, create, dumpxml ------------------------------------------------------------------------


@pytest.fixture
def xml_file(tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    path = tmp_path / "vm.xml"
    path.write_text(f"""<domain type='kvm'>
  <name>vm1</name>
  <metadata><xvm:domain xmlns:xvm='https://xvm.dev/schema/domain/1'><xvm:autostart>yes</xvm:autostart></xvm:domain></metadata>
  <memory unit='MiB'>128</memory>
  <os><type>hvm</type><kernel>{kernel}</kernel></os>
  <features><acpi/></features>
</domain>""")
    return path


def test_define_reports_warnings_on_stderr(host, capsys, xml_file):
    out, err = run(capsys, "define", str(xml_file))
    assert out == f"Domain 'vm1' defined from {xml_file}\n"
    assert err == f"xvm: warning: {xml_file}: <features> at line 6 ignored: it does not change what the guest sees\n"
    dom = host.lookup("vm1")
    assert dom.config.memory_mib == 128 and dom.autostart is True and dom.calls == []


def test_define_from_stdin(host, capsys, xml_file, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(xml_file.read_bytes())))
    assert run(capsys, "define", "-")[0] == "Domain 'vm1' defined from -\n"


def test_create_starts_a_domain(host, capsys, xml_file):
    assert run(capsys, "create", str(xml_file))[0] == f"Domain 'vm1' created from {xml_file}\n"
    assert host.lookup("vm1").calls == ["start"]


@pytest.mark.parametrize("text, message", [
    ("<domain>\n<name>x</nam></domain>", "malformed domain XML at line 2, column 10: mismatched tag"),
    ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><domain/>',
     "domain XML refused: it has a document type declaration"),
    (f"<domain type='kvm'><name>x</name><memory>65536</memory><os><type>hvm</type><kernel>{__file__}</kernel></os>\n<devices>"
     "<graphics type='vnc'/></devices></domain>", "unsupported element <graphics> at line 2"),
])
def test_bad_xml_defines_nothing(host, capsys, tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    _, err = run(capsys, "define", str(path), status=1)
    assert message in err
    assert host.doms == []


def test_missing_and_huge_files(host, capsys, tmp_path):
    assert "cannot read XML file /nonexistent.xml: No such file or directory" in run(
        capsys, "define", "/nonexistent.xml", status=1)[1]
    huge = tmp_path / "huge.xml"
    with open(huge, "wb") as f:
        f.truncate(200 << 20)  # sparse: read only up to the limit
    assert "larger than 10 MiB" in run(capsys, "define", str(huge), status=1)[1]


def test_dumpxml_round_trips_through_define(host, capsys, xml_file, tmp_path):
    run(capsys, "define", str(xml_file))
    dom = host.lookup("vm1")
    dom.start()
    out, _ = run(capsys, "dumpxml", "vm1")
    assert out.startswith(f'<domain xmlns:xvm="https://xvm.dev/schema/domain/1" type="kvm" id="{dom.id}">')
    assert "<xvm:autostart>yes</xvm:autostart>" in out
    inactive, _ = run(capsys, "dumpxml", "--inactive", "vm1")
    assert " id=" not in inactive.splitlines()[0]
    cfg, warnings = xvm.xml.config_from_xml(out)
    assert cfg == dom.config and warnings == []


# --- errors ------------------------------------------------------------------------------------------


def test_usage_errors_are_status_2(host, capsys):
    for argv in ([], ["start"], ["list", "--bogus"], ["frobnicate"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("xvm: error: ")


def test_an_internal_error_is_one_line_without_traceback(host, capsys, monkeypatch):
    monkeypatch.delenv("XVM_DEBUG", raising=False)
    host.add("web")
    monkeypatch.setattr(FakeHost, "domains", lambda self: 1 / 0)
    _, err = run(capsys, "list", status=1)
    assert err == "xvm: error: internal error: ZeroDivisionError: division by zero (XVM_DEBUG=1 shows the traceback)\n"


def test_a_multi_line_error_is_one_line(host, capsys):
    host.add("web", "running", 1)
    host.doms[0].rename = lambda new: (_ for _ in ()).throw(StateError("first\nsecond line"))
    assert run(capsys, "domrename", "web", "x", status=1)[1] == "xvm: error: first second line\n"


def test_error_without_traceback_in_a_real_process(tmp_path):
    env = dict(os.environ, XVM_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "xvm", "-c", "xvm://bogus/uri", "list"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("xvm: error: unknown host URI 'xvm://bogus/uri'") and "Traceback" not in proc.stderr


# --- capabilities, networks, completion ------------------------------------------------------------


CAPS = Capabilities(kvm_api_version=12, virtualization="pvm", hvm=False, pv=True, max_vcpus=1024,
                    recommended_vcpus=2, memory_slots=32764,
                    kvm_capabilities={"KVM_CAP_IRQCHIP": 1, "KVM_CAP_TSC_CONTROL": 0}, missing_capabilities=())


def test_capabilities(monkeypatch, capsys):
    import json

    host = FakeHost(CAPS)
    monkeypatch.setattr(xvm, "connect", host)
    out = run(capsys, "capabilities")[0].splitlines()
    assert out[:4] == ["kvm_api_version: 12", "virtualization: pvm", "hvm: no", "pv: yes"]
    assert "max_vcpus: 1024" in out and "missing_capabilities: none" in out
    at = out.index("kvm_capabilities:")
    assert out[at + 1:at + 3] == ["  KVM_CAP_IRQCHIP: 1", "  KVM_CAP_TSC_CONTROL: 0"]
    assert host.closed
    assert json.loads(run(capsys, "capabilities", "--json")[0])["max_vcpus"] == 1024


def test_capabilities_without_kvm(monkeypatch, capsys):
    monkeypatch.setattr(xvm, "connect", FakeHost(error=KvmUnavailableError("cannot open /dev/kvm: No such file")))
    assert run(capsys, "capabilities", status=1)[1] == "xvm: error: cannot open /dev/kvm: No such file\n"


def test_network_verbs(host, capsys, tmp_path):
    path = tmp_path / "net.xml"
    path.write_text("<network><name>lan</name><bridge name='xvmbr-lan'/><ip address='10.9.0.1' prefix='24'/></network>")
    assert run(capsys, "net-define", str(path))[0] == f"Network lan defined from {path}\n"
    assert run(capsys, "net-list")[0] == " Name   State   Autostart   Persistent\n" + "-" * 40 + "\n\n"
    assert run(capsys, "net-list", "--all")[0].splitlines()[2] == " lan    inactive   no          yes"
    assert run(capsys, "net-start", "lan")[0] == "Network lan started\n"
    assert run(capsys, "net-list")[0].splitlines()[2] == " lan    active   no          yes"
    assert "<ip family=\"ipv4\" address=\"10.9.0.1\" prefix=\"24\" />" in run(capsys, "net-dumpxml", "lan")[0]
    assert "no network named 'wan'" in run(capsys, "net-start", "wan", status=1)[1]


def test_completion_script(capsys):
    out = run(capsys, "completion", "bash")[0]
    assert "complete -F _xvm xvm" in out and "dominfo" in out and "net-list" in out
    proc = subprocess.run(["bash", "-n"], input=out, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_a_new_verb_is_one_entry(capsys):
    called = []
    verbs = cli.VERBS + (cli.Group("domain", "domains", (
        cli.Verb("list", "list domains", lambda args: called.append(args.all) or 0,
                 lambda p: p.add_argument("--all", action="store_true")),
    )),)
    args = cli.build_parser(verbs).parse_args(["domain", "list", "--all"])
    assert args.run(args) == 0 and called == [True]


# --- install --------------------------------------------------------------------------------------


def test_disk_and_network_options():
    spec = cli.parse_disk("/tmp/x.img,size=0.5,serial=s1,readonly=on")
    assert (spec.path, spec.size_bytes, spec.serial, spec.readonly) == ("/tmp/x.img", 1 << 29, "s1", True)
    assert cli.parse_disk("path=rel.img").path == os.path.abspath("rel.img")
    assert cli.parse_disk("/a,size=0.000001").size_bytes == 1536  # rounded up to whole sectors
    for bad, match in (("/a,size=-1", "positive number of GiB"), ("/a,format=qcow2", "raw images"),
                       ("/a,bus=sata", "virtio bus"), ("/a,colour=red", "unknown option"),
                       ("/a,readonly=maybe", "not on or off"), ("/a,size=1,size=2", "given twice"), (",size=1", "no path")):
        with pytest.raises(ConfigError, match=match):
            cli.parse_disk(bad)
    assert cli.parse_network("network=lan,mac=52:54:00:00:00:01") == xvm.Nic(network="lan", mac="52:54:00:00:00:01")
    assert cli.parse_network("bridge=br0,mtu=9000,model=virtio") == xvm.Nic(bridge="br0", mtu=9000)
    assert cli.parse_network("network=lan,queues=4") == xvm.Nic(network="lan", queues=4)
    for bad in ("lan", "network=lan,model=e1000", "bridge=br0,mtu=big", "network=a,bridge=b",
                "network=lan,queues=many", "network=lan,queues=0"):
        with pytest.raises(ConfigError):
            cli.parse_network(bad)


def test_install_creates_a_sparse_disk_defines_and_starts(host, capsys, tmp_path):
    disk = tmp_path / "vm.img"
    out, err = run(capsys, "install", "--name", "vm", "--memory", "128", "--vcpus", "2", "--kernel", __file__,
                   "--cmdline", "console=ttyS0", "--disk", f"{disk},size=0.01,serial=d0", "--network",
                   "bridge=br0", "--autostart", "--noautoconsole")
    assert out == "Domain 'vm' started\n"
    assert err.splitlines() == [f"Creating disk image {disk} (0.01 GiB, sparse)", "Defining domain 'vm'",
                                "Starting domain 'vm'"]
    st = os.stat(disk)
    assert st.st_size == -(-int(0.01 * (1 << 30)) // 512) * 512 and st.st_blocks == 0
    dom = host.lookup("vm")
    assert dom.calls == ["start"] and dom.autostart is True
    cfg = dom.config
    assert (cfg.memory_mib, cfg.vcpus, cfg.cmdline) == (128, 2, "console=ttyS0")
    assert cfg.disks == (xvm.Disk(str(disk), serial="d0"),) and cfg.nics == (xvm.Nic(bridge="br0"),)


def test_a_failed_install_leaves_nothing(host, capsys, tmp_path, monkeypatch):
    disk = tmp_path / "vm.img"

    def refuse(self):
        raise StateError("cannot start: no")

    monkeypatch.setattr(FakeDomain, "start", refuse)
    _, err = run(capsys, "install", "--name", "vm", "--kernel", __file__, "--disk", f"{disk},size=0.01",
                 status=1)
    assert err.endswith("xvm: error: cannot start: no\n")
    assert host.doms == [] and not disk.exists()
    _, err = run(capsys, "install", "--name", "vm", "--kernel", __file__, "--disk", str(disk), status=1)
    assert f"disk image {disk} does not exist (give size=GiB to create it)" in err


def test_install_print_xml_defines_nothing(host, capsys, tmp_path):
    out, _ = run(capsys, "install", "--name", "vm", "--kernel", __file__, "--transport", "pci",
                 "--network", "network=lan", "--print-xml")
    cfg, warnings = xvm.xml.config_from_xml(out)
    assert (cfg.name, cfg.memory_mib, cfg.virtio_transport, cfg.nics) == ("vm", 256, "pci", (xvm.Nic(network="lan"),))
    assert host.doms == [] and host.uris == []


def test_install_default_image(host, capsys, monkeypatch, tmp_path):
    from xvm import images

    built = []

    def build_image(flavour, progress=None, **kw):
        built.append((flavour, kw.get("vmlinux")))
        progress("using cached initrd")
        return images.GuestImage(kernel=tmp_path / "vmlinuz", vmlinux=None, initrd=tmp_path / "initrd.cpio",
                                 release="6.1.0-test", modules=("virtio_blk",))

    monkeypatch.setattr(images, "build_image", build_image)
    out, err = run(capsys, "install", "--name", "deb", "--image", "default", "--print-xml")
    cfg, _ = xvm.xml.config_from_xml(out)
    assert (cfg.kernel, cfg.initrd, cfg.cmdline) == (str(tmp_path / "vmlinuz"), str(tmp_path / "initrd.cpio"),
                                                     "console=ttyS0 quiet")
    assert built == [("cloud", False)] and "using cached initrd" in err
    out, _ = run(capsys, "install", "--name", "deb", "--image", "generic", "--cmdline", "console=ttyS0 x=1",
                 "--print-xml")
    assert xvm.xml.config_from_xml(out)[0].cmdline == "console=ttyS0 x=1" and built[-1] == ("generic", False)


def test_install_needs_one_boot_source(host, capsys):
    assert "give --kernel" in run(capsys, "install", "--name", "vm", status=1)[1]
    assert "not both" in run(capsys, "install", "--name", "vm", "--kernel", "k", "--image", "default", status=1)[1]
    assert "unknown image 'windows'" in run(capsys, "install", "--name", "vm", "--image", "windows", status=1)[1]


# --- the console ------------------------------------------------------------------------------------


class Guest:
    """A console whose 'guest' echoes each line it receives as ``echo: LINE``."""

    def __init__(self):
        self.console = Console()
        self.received = bytearray()
        self.console._attach(self.receive)

    def receive(self, data):
        self.received += data
        while b"\n" in self.received or b"\r" in self.received:
            cut = min(i for i in (self.received.find(b"\n"), self.received.find(b"\r")) if i >= 0)
            line, self.received = bytes(self.received[:cut]), self.received[cut + 1:]
            if line:
                self.console._feed(b"echo: " + line + b"\r\n")


def console_domain(host):
    dom = host.add("web", "running", 1)
    guest = Guest()
    dom.console = guest.console
    return dom, guest


def test_console_on_pipes_copies_until_stdin_ends(host):
    dom, guest = console_domain(host)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    os.write(stdin_w, b"hello\nworld\n")
    os.close(stdin_w)
    started = time.monotonic()
    assert cli.attach_console(dom, stdin=stdin_r, stdout=stdout_w, linger=0.5) == 0
    assert 0.5 <= time.monotonic() - started < 3
    os.close(stdout_w)
    assert os.read(stdout_r, 4096) == b"echo: hello\r\necho: world\r\n"
    os.close(stdin_r)
    os.close(stdout_r)


def test_console_ends_when_the_domain_stops(host):
    dom, guest = console_domain(host)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    threading.Timer(0.2, guest.console._detach, ("the guest powered off",)).start()
    assert cli.attach_console(dom, stdin=stdin_r, stdout=stdout_w, linger=-1) == 0
    for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
        os.close(fd)


def test_console_of_a_stopped_domain_is_an_error(host):
    dom = host.add("off")
    with pytest.raises(StateError, match="cannot attach to the console of domain 'off': it is shut off"):
        cli.attach_console(dom)


def test_console_on_a_terminal_is_raw_and_ctrl_bracket_detaches(host):
    import termios

    dom, guest = console_domain(host)
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    result = []
    thread = threading.Thread(target=lambda: result.append(cli.attach_console(dom, stdin=slave, stdout=slave)))
    thread.start()
    time.sleep(0.3)
    raw = termios.tcgetattr(slave)
    assert not raw[3] & termios.ICANON and not raw[3] & termios.ECHO  # raw mode while attached
    os.write(master, b"ping\r")
    seen = b""
    deadline = time.monotonic() + 5
    while b"echo: ping" not in seen and time.monotonic() < deadline:
        seen += os.read(master, 4096)
    assert b"echo: ping\r\n" in seen
    os.write(master, b"\x03tail\x1dnot sent")  # ^C goes to the guest; ^] detaches
    thread.join(5)
    assert result == [0]
    assert guest.received.endswith(b"\x03tail") and b"not sent" not in guest.received
    assert termios.tcgetattr(slave) == before  # the terminal is given back as it was
    assert guest.console.closed_reason is None  # the domain's console is still open
    os.close(master)
    os.close(slave)


# --- image build (needs the cached kernel) ------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    """An XVM_CACHE whose kernels/cloud is the real, already downloaded package."""
    try:
        package = tcache.kernel_package("cloud")
    except Exception as e:
        pytest.skip(f"the Debian cloud kernel is not in the cache ({e}); run scripts/setup.sh")
    if not tinitramfs.BUSYBOX.exists():
        pytest.skip("/bin/busybox missing (busybox-static); run scripts/setup.sh")
    root = tmp_path_factory.mktemp("xvm-cache")
    (root / "kernels").mkdir()
    (root / "kernels" / "cloud").symlink_to(package.root)
    return root


def lines(text):
    return dict(line.split(": ", 1) for line in text.strip().splitlines())


def test_image_build_prints_paths(kernel_cache, monkeypatch, capsys):
    monkeypatch.setenv("XVM_CACHE", str(kernel_cache))
    assert cli.main(["image", "build", "--no-vmlinux"]) == 0
    out, err = capsys.readouterr()
    fields = lines(out)
    assert os.path.isfile(fields["kernel"]) and os.path.basename(fields["kernel"]) == f"vmlinuz-{fields['release']}"
    assert os.path.isfile(fields["initrd"]) and fields["initrd"].startswith(str(kernel_cache / "images"))
    assert fields["vmlinux"] == "-"
    assert "virtio_blk" in fields["modules"].split()
    assert "writing initramfs" in err or "using cached" in err

    # Again, quietly: the same paths, nothing on stderr.
    assert cli.main(["image", "build", "--flavour", "cloud", "--quiet", "--no-vmlinux"]) == 0
    out2, err2 = capsys.readouterr()
    assert out2 == out and err2 == ""


def test_image_build_error_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XVM_CACHE", str(tmp_path))
    assert cli.main(["image", "build", "--no-download"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("xvm: error: no cloud kernel in ") and "scripts/setup.sh" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_image_build_error_in_a_real_process(tmp_path):
    env = dict(os.environ, XVM_CACHE=str(tmp_path / "empty"))
    proc = subprocess.run([sys.executable, "-m", "xvm.cli", "image", "build", "--no-download", "-m", "virtio_console"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("xvm: error: ") and "Traceback" not in proc.stderr


def test_unknown_flavour_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["image", "build", "--flavour", "rt"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_verb_is_a_usage_error(capsys):
    for argv in ([], ["image"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "required" in capsys.readouterr().err


def test_unwritable_cache_is_status_1(kernel_cache, tmp_path, monkeypatch, capsys):
    root = tmp_path / "cache"
    (root / "kernels").mkdir(parents=True)
    (root / "kernels" / "cloud").symlink_to((kernel_cache / "kernels" / "cloud").resolve())
    (root / "images").write_text("not a directory")
    monkeypatch.setenv("XVM_CACHE", str(root))
    assert cli.main(["image", "build", "--quiet", "--no-vmlinux"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"xvm: error: cannot write the image into {root / 'images'}")


def test_sizes_are_virshs_scaled_integers():
    assert cli.parse_scaled("1048576") == 1 << 20
    assert cli.parse_scaled("10G") == 10 << 30 and cli.parse_scaled("10GiB") == 10 << 30
    assert cli.parse_scaled("512k") == 512 << 10 and cli.parse_scaled("2MB") == 2 * 10 ** 6
    for bad in ("", "G", "1.5G", "-1M", "10Q", "1 G"):
        with pytest.raises(ConfigError, match="is not a size"):
            cli.parse_scaled(bad)


def test_pool_as_needs_the_right_source(capsys):
    assert cli.main(["pool-define-as", "p", "dir"]) == 1
    assert capsys.readouterr().err == "xvm: error: a dir pool needs --target DIR (and no --source-name)\n"
    assert cli.main(["pool-create-as", "p", "zfs", "--target", "/x"]) == 1
    assert "a zfs pool needs --source-name ZPOOL/DATASET" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["pool-define-as", "p", "lvm", "--target", "/x"])
    assert e.value.code == 2
