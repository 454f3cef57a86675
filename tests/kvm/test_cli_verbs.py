"""Every ``xvm`` verb through a real process (``python3 -m xvm``) against a real embedded host
in this test's state directory, with the test guests: a domain's whole life from the shell,
``console`` on pipes and on a real pty (type into the guest, ``^]`` detaches, the guest keeps
running), errors as one ``xvm: error:`` line, install, and the same verbs through xvmd."""
import functools
import json
import os
import select
import shutil
import subprocess
import sys
import time

import pytest

import xvm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
XVM = [sys.executable, "-m", "xvm"]


def run(*args, input=None, status=0, timeout=60, uri=None):
    return _run(*args, input=input, status=status, timeout=timeout, uri=uri)


def _run(*args, input=None, status=0, timeout=60, uri=None):
    """Run ``xvm ARGS``; returns (stdout, stderr) after checking the exit status."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XVM_DEBUG", None)
    argv = XVM + (["-c", uri] if uri else []) + [str(a) for a in args]
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == status, f"xvm {' '.join(map(str, args))}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    if status:
        assert proc.stderr.splitlines()[-1].startswith("xvm: error: "), proc.stderr
    return proc.stdout, proc.stderr


def domain_xml(name, kernel, cmdline="", memory_mib=64, devices=""):
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{kernel}</kernel>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>{devices}
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""


@pytest.fixture
def xml(tmp_path):
    def write(name, kernel, **kw):
        path = tmp_path / f"{name}.xml"
        path.write_text(domain_xml(name, kernel, **kw))
        return path
    return write


def listing(*args, uri=None):
    """``xvm list ARGS`` as [(id, name, state)], checking virsh's header and dash row."""
    out, _ = run("list", *args, uri=uri)
    lines = out.splitlines()
    assert lines[0].split() == ["Id", "Name", "State"] and lines[0].startswith(" Id   Name")
    assert set(lines[1]) == {"-"} and len(lines[1]) >= len(lines[0]) + 2
    assert out.endswith("\n\n")  # virsh's blank line after the table
    return [tuple(line.split(None, 2)) for line in lines[2:-1]]


def expect_console(name, pattern, timeout=15):
    with xvm.connect() as host:
        host.lookup(name).console.expect(pattern, timeout=timeout)


@pytest.fixture
def cleanup(state_dir):
    yield
    with xvm.connect() as host:
        for dom in host.domains():
            try:
                if dom.state is not xvm.DomainState.SHUTOFF:
                    dom.destroy()
            except xvm.XvmError:
                pass
        for net in host.networks():  # a network's bridge outlives the process that started it
            if net.active:
                net.destroy()


# --- a domain's whole life ------------------------------------------------------------------------


def test_a_domains_whole_life_from_the_shell(cleanup, guest, xml, tmp_path):
    path = xml("busy", guest("busy"), cmdline="shift=20")
    out, err = run("define", path)
    assert out == f"Domain 'busy' defined from {path}\n" and err == ""
    assert listing() == []
    assert listing("--all") == [("-", "busy", "shut off")]
    assert run("domid", "busy")[0] == "-\n"
    assert run("domstate", "busy")[0] == "shut off\n"

    assert run("start", "busy")[0] == "Domain 'busy' started\n"
    (domain_id, name, state), = listing()
    assert (name, state) == ("busy", "running") and domain_id.isdigit()
    assert run("domid", "busy")[0] == f"{domain_id}\n"
    uuid = run("domuuid", "busy")[0].strip()
    for key in (domain_id, uuid, "busy"):
        assert run("domname", key)[0] == "busy\n"
    assert run("domstate", domain_id, "--reason")[0] == "running (booted)\n"

    info = dict(line.split(":", 1) for line in run("dominfo", "busy")[0].splitlines()[:-1])
    info = {k: v.strip() for k, v in info.items()}
    assert (info["Id"], info["Name"], info["UUID"], info["State"]) == (domain_id, "busy", uuid, "running")
    assert (info["OS Type"], info["CPU(s)"], info["Max memory"], info["Persistent"]) == ("hvm", "1", "65536 KiB", "yes")
    assert info["Autostart"] == "disable" and info["CPU time"].endswith("s")
    data = json.loads(run("dominfo", "busy", "--json")[0])
    assert data["state"] == "running" and data["pid"] > 0

    assert run("suspend", "busy")[0] == "Domain 'busy' suspended\n"
    assert run("domstate", "busy")[0] == "paused\n"
    assert listing() == [(domain_id, "busy", "paused")]
    assert run("resume", "busy")[0] == "Domain 'busy' resumed\n"
    expect_console("busy", r"count \d+")

    assert run("autostart", "busy")[0] == "Domain 'busy' marked as autostarted\n"
    assert "Autostart:      enable" in run("dominfo", "busy")[0]
    dumped = run("dumpxml", "busy")[0]
    assert f'id="{domain_id}"' in dumped.splitlines()[0] and "<xvm:autostart>yes</xvm:autostart>" in dumped
    assert run("autostart", "--disable", "busy")[0] == "Domain 'busy' unmarked as autostarted\n"

    assert run("reboot", "busy")[0] == "Domain 'busy' is being rebooted\n"
    assert run("domstate", "busy")[0] == "running\n"
    expect_console("busy", r"count \d+")

    # busy ignores the power button: shutdown asks and returns, --wait gives up with an error
    assert run("shutdown", "busy")[0] == "Domain 'busy' is being shutdown\n"
    _, err = run("shutdown", "busy", "--wait", "--timeout", "1", status=1)
    assert "did not power off within 1s" in err
    assert run("domstate", "busy")[0] == "running\n"

    assert run("domrename", "busy", "busy2")[0] == "Domain successfully renamed\n"
    assert run("domname", uuid)[0] == "busy2\n"
    assert run("destroy", "busy2")[0] == "Domain 'busy2' destroyed\n"
    assert listing("--all") == [("-", "busy2", "shut off")]
    assert run("domstate", "busy2", "--reason")[0].startswith("shut off (")

    assert run("undefine", "busy2")[0] == "Domain 'busy2' has been undefined\n"
    assert listing("--all") == []


def test_dumpxml_defines_the_same_domain_again(cleanup, guest, xml, tmp_path):
    run("define", xml("kept", guest("busy"), cmdline="shift=20 a&lt;b", memory_mib=48))
    dumped = tmp_path / "dumped.xml"
    dumped.write_text(run("dumpxml", "kept", "--inactive")[0])
    if shutil.which("virt-xml-validate") and shutil.which("xmllint"):
        proc = subprocess.run(["virt-xml-validate", str(dumped), "domain"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    with xvm.connect() as host:
        before = host.lookup("kept").config
    run("undefine", "kept")
    run("define", dumped)
    with xvm.connect() as host:
        assert host.lookup("kept").config == before


def test_create_is_transient(cleanup, guest, xml):
    path = xml("flash", guest("busy"), cmdline="shift=20")
    assert run("create", path)[0] == f"Domain 'flash' created from {path}\n"
    (domain_id, name, state), = listing()
    assert (name, state) == ("flash", "running")
    assert "Persistent:     no" in run("dominfo", "flash")[0]
    assert "transient" in run("autostart", "flash", status=1)[1]
    run("destroy", "flash")
    assert listing("--all") == []  # a transient domain is gone once it stops


def test_a_guest_that_powers_off(cleanup, guest, xml):
    run("define", xml("hello", guest("hello")))
    run("start", "hello")
    deadline = time.monotonic() + 20
    while run("domstate", "hello")[0] != "shut off\n":
        assert time.monotonic() < deadline, "hello did not power off"
        time.sleep(0.2)
    assert listing("--all") == [("-", "hello", "shut off")]


def test_list_json_and_names(cleanup, guest, xml):
    run("define", xml("a", guest("busy"), cmdline="shift=20"))
    run("define", xml("b", guest("busy"), cmdline="shift=20"))
    run("start", "b")
    rows = json.loads(run("list", "--all", "--json")[0])
    assert [(r["name"], r["state"], r["persistent"]) for r in rows] == [("b", "running", True), ("a", "shutoff", True)]
    assert run("list", "--all", "--name")[0] == "b\na\n"
    assert run("list", "--inactive", "--name")[0] == "a\n"


# --- errors ---------------------------------------------------------------------------------------


def test_errors_are_one_line(cleanup, guest, xml, tmp_path):
    run("define", xml("e", guest("busy"), cmdline="shift=20"))
    assert "cannot pause" in run("suspend", "e", status=1)[1]
    run("start", "e")
    _, err = run("start", "e", status=1)
    assert err.startswith("xvm: error: ") and err.count("\n") == 1
    _, err = run("undefine", "e", status=1)
    assert "running" in err
    assert "failed to get domain 'nope'" in run("dominfo", "nope", status=1)[1]
    assert "already exists" in run("define", xml("e", guest("busy")), status=1)[1]

    hostile = tmp_path / "hostile.xml"
    hostile.write_text('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]>'
                       "<domain><name>&x;</name></domain>")
    assert "document type declaration" in run("define", hostile, status=1)[1]
    cdrom = tmp_path / "cdrom.xml"
    text = domain_xml("c", guest("busy"), devices="\n<disk type='file' device='cdrom'>"
                      "<source file='/x.iso'/><target dev='hdc' bus='ide'/></disk>")
    cdrom.write_text(text)
    line = text[:text.index("<disk")].count("\n") + 1
    assert f"unsupported element <disk> at line {line}" in run("define", cdrom, status=1)[1]
    assert listing("--all") == [(run("domid", "e")[0].strip(), "e", "running")]
    usage = subprocess.run(XVM + ["start"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert usage.returncode == 2 and usage.stderr.splitlines()[-1].startswith("xvm: error: ")


# --- the console ------------------------------------------------------------------------------------


def test_console_on_pipes(cleanup, guest, xml):
    run("define", xml("irq", guest("irq")))
    run("start", "irq")
    expect_console("irq", "echo ready")
    out, err = run("console", "irq", input="hello\nworld\n", timeout=30)
    assert "echo: hello" in out and "echo: world" in out
    assert err == ""  # no banner when stdin is not a terminal
    assert run("domstate", "irq")[0] == "running\n"
    out, _ = run("console", "irq", input="quit\n", timeout=30)  # the guest powers off: console ends
    deadline = time.monotonic() + 10
    while run("domstate", "irq")[0] != "shut off\n":
        assert time.monotonic() < deadline
        time.sleep(0.2)


def read_until(fd, pattern, timeout=15):
    seen = b""
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"pty closed before {pattern!r}; got {seen!r}")
            seen += chunk
    return seen


def on_pty(*args):
    """Start ``xvm ARGS`` on a new pty; returns (process, master fd)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(XVM + list(args), stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True)
    os.close(slave)
    return proc, master


def test_console_on_a_real_terminal(cleanup, guest, xml):
    run("define", xml("irq", guest("irq")))
    run("start", "irq")
    expect_console("irq", "echo ready")
    proc, master = on_pty("console", "irq")
    try:
        read_until(master, b"Escape character is ^] (Ctrl + ])")
        time.sleep(0.3)
        os.write(master, b"typed on a pty\r")
        read_until(master, b"echo: typed on a pty")
        os.write(master, b"\x1d")  # ^] detaches
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert run("domstate", "irq")[0] == "running\n"  # the guest keeps running
    out, _ = run("console", "irq", input="still here\n", timeout=30)
    assert "echo: still here" in out


def test_start_console_on_a_real_terminal(cleanup, guest, xml):
    run("define", xml("irq2", guest("irq")))
    proc, master = on_pty("start", "irq2", "--console")
    try:
        read_until(master, b"Domain 'irq2' started")
        # The boot this command started, from its first line: what the guest printed before
        # the console attached included (it used to show only what came after).
        read_until(master, b"xvm-guest irq ready")
        read_until(master, b"echo ready")
        os.write(master, b"hi\r")
        read_until(master, b"echo: hi")
        os.write(master, b"\x1d")
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert run("domstate", "irq2")[0] == "running\n"


# --- install ----------------------------------------------------------------------------------------


def test_install_with_a_kernel(cleanup, guest, tmp_path):
    disk = tmp_path / "inst.img"
    out, err = run("install", "--name", "inst", "--memory", "64", "--kernel", guest("busy"), "--cmdline", "shift=20",
                   "--disk", f"{disk},size=0.01,serial=inst0", "--autostart", "--noautoconsole")
    assert out == "Domain 'inst' started\n"
    assert f"Creating disk image {disk}" in err and "Defining domain 'inst'" in err
    assert disk.stat().st_size >= 0.01 * (1 << 30) and disk.stat().st_blocks == 0
    assert listing()[0][1:] == ("inst", "running")
    assert "Autostart:      enable" in run("dominfo", "inst")[0]
    dumped = run("dumpxml", "inst")[0]
    assert f"<source file=\"{disk}\" />" in dumped and "<serial>inst0</serial>" in dumped
    run("destroy", "inst")
    run("undefine", "inst")


def test_a_failed_install_defines_nothing(cleanup, guest, tmp_path):
    disk = tmp_path / "big.img"
    _, err = run("install", "--name", "big", "--memory", "64", "--vcpus", "100000", "--kernel", guest("busy"),
                 "--disk", f"{disk},size=0.01", "--noautoconsole", status=1)
    assert "vcpus" in err
    assert listing("--all") == [] and not disk.exists()


# --- networks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("through", ["session", "xvmd"])
def test_network_verbs(cleanup, tmp_path, through, request):
    uri = request.getfixturevalue("xvmd")[0] if through == "xvmd" else None
    try:
        network_verbs(tmp_path, uri)
    finally:
        with xvm.connect(uri) as host:
            for net in host.networks():
                if net.active:
                    net.destroy()
                net.undefine()


def network_verbs(tmp_path, uri):
    """Each verb in its own process: the network lives in the host's store in between."""
    run = functools.partial(_run, uri=uri)
    path = tmp_path / "net.xml"
    path.write_text("<network><name>clinet</name><bridge name='xvmbr-clinet'/>"
                    "<ip address='10.77.0.1' prefix='24'/></network>")
    assert run("net-define", path)[0] == f"Network clinet defined from {path}\n"
    assert "clinet" in run("net-list", "--all")[0]
    assert run("net-start", "clinet")[0] == "Network clinet started\n"
    assert " clinet   active" in run("net-list")[0]
    assert run("net-destroy", "clinet")[0] == "Network clinet destroyed\n"
    assert run("net-undefine", "clinet")[0] == "Network clinet has been undefined\n"


# --- save and restore ----------------------------------------------------------------------------


def test_save_and_restore_verbs(cleanup, guest, xml, tmp_path):
    run("define", xml("sav", guest("busy"), cmdline="shift=20"))
    run("start", "sav")
    expect_console("sav", "busy: printing")
    image = tmp_path / "sav.xvmsave"
    assert run("save", "sav", image)[0] == f"Domain 'sav' saved to {image}\n"
    assert run("domstate", "sav")[0] == "shut off\n" and image.stat().st_size > 0
    assert run("restore", image)[0] == f"Domain restored from {image}\n"
    assert run("domstate", "sav")[0] == "running\n"
    run("destroy", "sav")
    assert "no such file" in run("restore", tmp_path / "nonesuch", status=1)[1].lower()
    assert "nosuch" in run("save", "nosuch", image, status=1)[1]


def test_restore_with_edited_xml(cleanup, guest, xml, tmp_path):
    """virsh's save-image-dumpxml, then restore --xml with the disk's image moved: the domain
    continues on the new image; an edit the guest would notice is one clear error."""
    first, second = tmp_path / "first.img", tmp_path / "second.img"
    first.write_bytes(bytes(1 << 20))
    disk = f"<disk type='file' device='disk'><source file='{first}'/><target dev='vda' bus='virtio'/></disk>"
    run("define", xml("mv", guest("busy"), cmdline="shift=20", devices=disk))
    run("start", "mv")
    expect_console("mv", "busy: printing")
    image = tmp_path / "mv.xvmsave"
    run("save", "mv", image)
    saved = run("save-image-dumpxml", image)[0]
    assert f"<source file=\"{first}\"" in saved or f"<source file='{first}'" in saved, saved
    os.rename(first, second)
    edited = tmp_path / "edited.xml"
    edited.write_text(saved.replace(str(first), str(second)))
    wrong = tmp_path / "wrong.xml"
    wrong.write_text(saved.replace(str(first), str(second)).replace(">64<", ">128<").replace(">65536<", ">131072<"))
    assert "memory_mib" in run("restore", image, "--xml", wrong, status=1)[1]
    assert run("domstate", "mv")[0] == "shut off\n"
    assert run("restore", image, "--xml", edited)[0] == f"Domain restored from {image}\n"
    assert run("domstate", "mv")[0] == "running\n"
    assert str(second) in run("dumpxml", "mv")[0]
    run("destroy", "mv")


# --- storage pools and volumes ------------------------------------------------------------------------


def pool_verbs(tmp_path, uri=None):
    """A dir pool's whole life through the verbs, with virsh's messages and layouts."""
    target = tmp_path / "pool"
    assert run("pool-define-as", "cli", "dir", "--target", target, uri=uri)[0] == "Pool cli defined\n"
    assert target.is_dir()
    out = run("pool-list", uri=uri)[0]
    assert out.splitlines()[0].split() == ["Name", "State", "Autostart"] and " cli    active   yes" in out
    assert "Type:           dir" in run("pool-info", "cli", uri=uri)[0]
    assert run("vol-create-as", "cli", "gold", "16M", uri=uri)[0] == "Vol gold created\n"
    assert (target / "gold").stat().st_size == 16 << 20 and (target / "gold").stat().st_blocks == 0
    out = run("vol-list", "cli", uri=uri)[0]
    assert out.splitlines()[0].split() == ["Name", "Path"] and f" gold   {target / 'gold'}" in out
    assert "16.00 MiB" in run("vol-list", "cli", "--details", uri=uri)[0]
    assert "exists" in run("vol-create-as", "cli", "gold", "1M", status=1, uri=uri)[1]
    assert "not a size" in run("vol-create-as", "cli", "x", "12Q", status=1, uri=uri)[1]
    assert "no storage pool named 'nope'" in run("vol-create-as", "nope", "x", "1M", status=1, uri=uri)[1]
    (target / "gold").write_bytes(b"golden" * 100)
    assert run("vol-snapshot", "cli/gold", "golden", uri=uri)[0] == "Vol gold snapshot golden created\n"
    assert run("vol-clone", "gold", "copy", "--pool", "cli", "--snapshot", "golden", uri=uri)[0] == \
        "Vol copy cloned from gold\n"
    assert (target / "copy").read_bytes() == b"golden" * 100
    assert json.loads(run("vol-snapshot-list", "cli/gold", "--json", uri=uri)[0])[0]["name"] == "golden"
    assert run("vol-delete", target / "copy", uri=uri)[0] == "Vol copy deleted\n"
    assert not (target / "copy").exists()
    return target


def test_pool_and_volume_verbs(cleanup, tmp_path):
    target = pool_verbs(tmp_path)
    assert run("pool-delete", "cli")[0] == "Pool cli deleted\n"
    assert run("pool-list")[0].count("\n") == 3 and not target.exists()


def test_a_volume_in_use_is_not_deleted(cleanup, guest, tmp_path):
    target = tmp_path / "pool"
    run("pool-create-as", "use", "dir", "--target", target)
    run("vol-create-as", "use", "disk", "1M")
    path = tmp_path / "d.xml"
    path.write_text(domain_xml("user", guest("busy"), cmdline="shift=20",
                               devices=f"<disk type='file' device='disk'><source file='{target / 'disk'}'/>"
                                       "<target dev='vda' bus='virtio'/></disk>"))
    run("define", path)
    run("start", "user")
    assert "in use by running domain 'user'" in run("vol-delete", "use/disk", status=1)[1]
    assert "in use" in run("pool-delete", "use", status=1)[1]
    run("destroy", "user")
    run("vol-delete", "use/disk")


def test_clone_verb(cleanup, guest, tmp_path):
    target = tmp_path / "pool"
    run("pool-create-as", "gp", "dir", "--target", target)
    run("vol-create-as", "gp", "root", "1M")
    with open(target / "root", "r+b") as f:
        f.write(b"golden data")
    run("vol-snapshot", "gp/root", "golden")
    path = tmp_path / "src.xml"
    path.write_text(domain_xml("src", guest("busy"), cmdline="shift=20",
                               devices=f"<disk type='file' device='disk'><source file='{target / 'root'}'/>"
                                       "<target dev='vda' bus='virtio'/></disk>"))
    run("define", path)
    out, _ = run("clone", "src", "copy1")
    assert out == "Domain 'copy1' cloned from 'src' (disks gp/copy1-root)\n"
    assert (target / "copy1-root").read_bytes()[:11] == b"golden data"
    assert run("domuuid", "copy1")[0] != run("domuuid", "src")[0]
    run("start", "copy1")
    assert run("domstate", "copy1")[0] == "running\n"
    assert "exists" in run("clone", "src", "copy1", status=1)[1]
    assert "no snapshot 'nope'" in run("clone", "src", "copy2", "--snapshot", "nope", status=1)[1]
    assert ("-", "copy2", "shut off") not in listing("--all")


# --- the same verbs through xvmd ----------------------------------------------------------------------


def test_verbs_through_xvmd(xvmd, guest, xml):
    uri = xvmd[0]
    path = xml("viad", guest("busy"), cmdline="shift=20")
    try:
        assert run("define", path, uri=uri)[0] == f"Domain 'viad' defined from {path}\n"
        assert ("-", "viad", "shut off") in listing("--all", uri=uri)
        run("start", "viad", uri=uri)
        (domain_id, _, state), = [row for row in listing(uri=uri) if row[1] == "viad"]
        assert state == "running"
        assert run("domname", domain_id, uri=uri)[0] == "viad\n"
        assert run("autostart", "viad", uri=uri)[0] == "Domain 'viad' marked as autostarted\n"
        assert "Autostart:      enable" in run("dominfo", "viad", uri=uri)[0]
        run("suspend", "viad", uri=uri)
        assert run("domstate", "viad", uri=uri)[0] == "paused\n"
        run("resume", "viad", uri=uri)
        out, _ = run("dumpxml", "viad", uri=uri)
        assert "<name>viad</name>" in out
        run("destroy", "viad", uri=uri)
    finally:
        for verb in ("destroy", "undefine"):  # whatever the test left behind
            subprocess.run(XVM + ["-c", uri, verb, "viad"], capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert ("-", "viad", "shut off") not in listing("--all", uri=uri)


def test_pool_and_volume_verbs_through_xvmd(xvmd, tmp_path):
    uri = xvmd[0]
    try:
        target = pool_verbs(tmp_path, uri=uri)
        assert run("pool-delete", "cli", uri=uri)[0] == "Pool cli deleted\n"
        assert not target.exists()
    finally:
        subprocess.run(XVM + ["-c", uri, "pool-delete", "cli"], capture_output=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))


def test_console_through_xvmd(xvmd, guest, xml):
    uri = xvmd[0]
    run("define", xml("irqd", guest("irq")), uri=uri)
    try:
        run("start", "irqd", uri=uri)
        with xvm.connect(uri) as host:
            host.lookup("irqd").console.expect("echo ready", timeout=15)
        out, _ = run("console", "irqd", input="over xvmd\n", uri=uri, timeout=30)
        assert "echo: over xvmd" in out
        assert run("domstate", "irqd", uri=uri)[0] == "running\n"
    finally:
        for verb in ("destroy", "undefine"):
            subprocess.run(XVM + ["-c", uri, verb, "irqd"], capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT))
