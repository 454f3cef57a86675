"""libvirt domain XML: golden documents after libvirt's formatdomain examples read correctly,
what xvm writes validates against libvirt's own schema (virt-xml-validate) and round-trips,
and hostile, malformed and unsupported documents are refused with a clear ConfigError."""
import os
import pathlib
import shutil
import subprocess
import time
import tracemalloc
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xvm
from xvm import xml as X
from xvm.errors import ConfigError
from xvm.machine.cpu import CPU_FEATURES

DATA = pathlib.Path(__file__).parent / "data"
VALIDATOR = shutil.which("virt-xml-validate")
needs_validator = pytest.mark.skipif(
    VALIDATOR is None or shutil.which("xmllint") is None,
    reason="virt-xml-validate or xmllint missing (libvirt-clients, libxml2-utils: scripts/setup.sh)")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A directory with the kernels and disk images the golden documents name."""
    root = tmp_path_factory.mktemp("xml-files")
    for name in ("vmlinuz", "initrd.img"):
        (root / name).write_bytes(b"\x7fELF not really")
    for name in ("demo2.img", "d.img", "root.img", "data.img", "a.img", "b.img", "c.img"):
        with open(root / name, "wb") as f:
            f.truncate(1 << 20)
    return root


def golden(name, files):
    return (DATA / name).read_text().replace("@DATA@", str(files))


def validate(text, tmp_path, schema="domain"):
    path = tmp_path / f"written-{uuid.uuid4().hex}.xml"
    path.write_text(text)
    proc = subprocess.run([VALIDATOR, str(path), schema], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{text}"


def domain(files, body="", devices="", os_extra="", top=""):
    return (f"<domain type='kvm'>{top}<name>t</name><memory unit='MiB'>64</memory>"
            f"<os><type>hvm</type><kernel>{files}/vmlinuz</kernel>{os_extra}</os>{body}"
            f"<devices>{devices}</devices></domain>")


# --- golden documents ------------------------------------------------------------------------


def test_direct_kernel_boot_example(files):
    cfg, warnings = X.config_from_xml(golden("domain-kernel-boot.xml", files))
    assert cfg.name == "demo2"
    assert cfg.uuid == uuid.UUID("4dea24b3-1d52-d8f3-2516-782e98a23fa0")
    assert cfg.memory_mib == 128  # 131072 KiB: KiB is <memory>'s default unit
    assert cfg.vcpus == 1
    assert (cfg.kernel, cfg.initrd) == (str(files / "vmlinuz"), str(files / "initrd.img"))
    assert cfg.cmdline == "console=ttyS0 ks=http://example.com/f8-i386/os/"
    assert [d.path for d in cfg.disks] == [str(files / "demo2.img")]
    assert cfg.disks[0].readonly is False and cfg.disks[0].cache == "none"
    assert cfg.nics == (xvm.Nic(network="default", mac="24:42:53:21:52:45"),)
    text = "\n".join(warnings)
    for ignored in ("<currentMemory> at line 8", "<clock> at line 16", "<emulator> at line 18",
                    "machine='pc'"):
        assert ignored in text, warnings


def test_anchor_example(files):
    cfg, warnings = X.config_from_xml(golden("domain-anchor.xml", files))
    assert warnings == []
    assert (cfg.name, cfg.memory_mib, cfg.vcpus, cfg.cmdline) == ("vm1", 512, 2, "console=ttyS0")
    assert cfg.disks == (xvm.Disk(str(files / "d.img"), readonly=True, serial="s0", cache="none"),)
    assert cfg.nics == (xvm.Nic(bridge="br0", mac="52:54:00:12:34:56"),)
    assert cfg.virtio_transport == "mmio" and cfg.disable_cpu_features == ()


def test_virt_install_style_example(files):
    cfg, warnings = X.config_from_xml(golden("domain-virt-install.xml", files))
    assert (cfg.name, cfg.memory_mib, cfg.vcpus) == ("web", 1024, 2)
    assert cfg.cmdline == "console=ttyS0 root=/dev/vda rw quiet"
    assert [(d.path, d.cache, d.serial) for d in cfg.disks] == [
        (str(files / "root.img"), "writeback", None), (str(files / "data.img"), "writethrough", "data-01")]
    assert cfg.nics == (xvm.Nic(bridge="br0", mac="52:54:00:ab:cd:ef", mtu=9000),)
    text = "\n".join(warnings)
    for ignored in ("<title>", "<description>", "libosinfo", "<features>", "<cpu>", "<clock>", "<pm>",
                    "<boot>", "<emulator>", "<controller>", "<input>", "<memballoon>", "<address>",
                    "discard='unmap'", "<resource>"):
        assert ignored in text, (ignored, warnings)


def test_example_with_graphics_is_refused_naming_the_element(files):
    with pytest.raises(ConfigError, match=r"unsupported element <graphics> at line 24"):
        X.config_from_xml(golden("domain-unsupported.xml", files))


@needs_validator
def test_golden_documents_are_valid_libvirt_xml(files, tmp_path):
    for name in ("domain-kernel-boot.xml", "domain-anchor.xml", "domain-virt-install.xml"):
        validate(golden(name, files), tmp_path)
    validate((DATA / "network-isolated.xml").read_text(), tmp_path, "network")


# --- what xvm writes -------------------------------------------------------------------------


def full_config(files, **kw):
    kw.setdefault("disks", (xvm.Disk(str(files / "a.img"), serial="s0", readonly=True, cache="unsafe"),
                            xvm.Disk(str(files / "b.img"))))
    kw.setdefault("nics", (xvm.Nic(bridge="br0", mac="52:54:00:12:34:56", mtu=9000),
                           xvm.Nic(network="lan", queues=4)))
    return xvm.DomainConfig(name="full", memory_mib=300, vcpus=3, kernel=str(files / "vmlinuz"),
                            initrd=str(files / "initrd.img"), cmdline="console=ttyS0 a<b & c>d 'q' \"dq\"",
                            disable_cpu_features=("x2apic", "pcid"), virtio_transport="pci", **kw)


def test_written_xml_round_trips(files):
    cfg = full_config(files)
    text = X.config_to_xml(cfg)
    back, warnings = X.config_from_xml(text)
    assert back == cfg and warnings == []
    assert "<target dev=\"vdb\" bus=\"virtio\" />" in text
    assert f'xmlns:xvm="{X.NS}"' in text


@needs_validator
def test_written_xml_validates(files, tmp_path):
    validate(X.config_to_xml(full_config(files), settings={"autostart": True}), tmp_path)
    minimal = xvm.DomainConfig(name="m", memory_mib=16, kernel=str(files / "vmlinuz"))
    validate(X.config_to_xml(minimal), tmp_path)


def test_interface_driver_queues_both_ways(files):
    text = X.config_to_xml(full_config(files))
    assert text.count("<driver queues=\"4\" />") == 1  # only the NIC with 4 queue pairs
    nic = ("<interface type='network'><source network='lan'/><model type='virtio'/>"
           "<driver name='vhost' txmode='iothread' queues='{}'/></interface>")
    cfg, warnings = X.config_from_xml(domain(files, devices=nic.format(8)))
    assert cfg.nics == (xvm.Nic(network="lan", queues=8),)
    assert any("name='vhost'" in w for w in warnings) and any("txmode" in w for w in warnings)
    no_queues = nic.replace(" queues='{}'", "")
    assert X.config_from_xml(domain(files, devices=no_queues))[0].nics[0].queues == 1
    for bad, match in (("0", "queues 0"), ("17", "queues 17"), ("two", "'two' is not an integer")):
        with pytest.raises(ConfigError, match=match):
            X.config_from_xml(domain(files, devices=nic.format(bad)))


def test_settings_beyond_domain_config_travel_in_the_metadata(files):
    cfg = full_config(files).replace(on_host_stop="ignore", shutdown_timeout=12.5)
    text = X.config_to_xml(cfg, settings={"autostart": True})
    assert "<xvm:autostart>yes</xvm:autostart>" in text
    assert "<xvm:shutdown_timeout>" in text and "<xvm:on_host_stop>ignore" in text
    parsed = X.parse_domain_xml(text)
    assert parsed.config == cfg
    assert parsed.config.shutdown_timeout == 12.5 and parsed.settings["autostart"] is True
    assert not [w for w in parsed.warnings if "autostart" in w or "shutdown_timeout" in w]


def test_a_cmdline_xml_cannot_carry_is_refused(files):
    cfg = xvm.DomainConfig(name="c", memory_mib=16, kernel=str(files / "vmlinuz"), cmdline="a\x01b")
    with pytest.raises(ConfigError, match="cmdline .* character XML cannot carry"):
        X.config_to_xml(cfg)
    with pytest.raises(ConfigError, match="character XML cannot carry"):
        X.config_to_xml(cfg.replace(cmdline="a\rb"))


def test_what_libvirt_xml_cannot_name_is_refused(files):
    cfg = full_config(files, disks=(xvm.Disk(str(files / "a.img"), serial="a/b"),))
    with pytest.raises(ConfigError, match="serial 'a/b' cannot be written in libvirt XML"):
        X.config_to_xml(cfg)
    with pytest.raises(ConfigError, match="the network 'a.x01b' has a character XML cannot carry"):
        X.config_to_xml(full_config(files, nics=(xvm.Nic(network="a\x01b"),)))
    with pytest.raises(ConfigError, match="bridge name 'br[+]0' cannot be written"):
        X.config_to_xml(full_config(files, nics=(xvm.Nic(bridge="br+0"),)))


def test_disks_are_named_like_libvirts():
    assert [X._disk_name(i) for i in (0, 1, 25, 26, 27, 701, 702)] == [
        "vda", "vdb", "vdz", "vdaa", "vdab", "vdzz", "vdaaa"]


# --- hypothesis: generated configs round-trip --------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,20}", fullmatch=True)
xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
                   | st.sampled_from("\t\n"), max_size=60)
bridges = st.from_regex(r"[a-zA-Z0-9_.:\\-]{1,15}", fullmatch=True).filter(lambda b: b not in (".", ".."))
macs = st.lists(st.integers(0, 255), min_size=5, max_size=5).map(
    lambda b: "52:" + ":".join(f"{x:02x}" for x in b))


@st.composite
def configs(draw, files):
    images = draw(st.lists(st.sampled_from(["a.img", "b.img", "c.img", "d.img"]), unique=True, max_size=4))
    disks = tuple(xvm.Disk(str(files / image), readonly=draw(st.booleans()),
                           serial=draw(st.none() | st.from_regex(r"[A-Za-z0-9_.+\- ]{1,20}", fullmatch=True)),
                           cache=draw(st.sampled_from(["none", "writethrough", "writeback", "unsafe"])))
                  for image in images)
    nic_macs = draw(st.lists(macs, unique=True, max_size=3))
    nics = tuple(xvm.Nic(mac=draw(st.none()) if draw(st.booleans()) else mac,
                         mtu=draw(st.none() | st.integers(68, 65535)),
                         **({"network": draw(names)} if draw(st.booleans()) else
                            {"bridge": draw(bridges)}))
                 for mac in nic_macs)
    return xvm.DomainConfig(
        name=draw(names), uuid=draw(st.uuids()), memory_mib=draw(st.integers(16, 1 << 20)),
        vcpus=draw(st.integers(1, 255)), kernel=str(files / "vmlinuz"),
        initrd=draw(st.none() | st.just(str(files / "initrd.img"))), cmdline=draw(xml_text),
        disks=disks, nics=nics,
        disable_cpu_features=tuple(draw(st.lists(st.sampled_from(sorted(CPU_FEATURES)), unique=True))),
        virtio_transport=draw(st.sampled_from(["mmio", "pci"])))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_configs_round_trip(files, data):
    cfg = data.draw(configs(files))
    back, warnings = X.config_from_xml(X.config_to_xml(cfg))
    assert back == cfg
    assert warnings == []


@needs_validator
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_configs_validate(files, tmp_path, data):
    validate(X.config_to_xml(data.draw(configs(files))), tmp_path)


# --- reading what people write ------------------------------------------------------------------


@pytest.mark.parametrize("size, unit, mib", [
    ("65536", None, 64), ("65536", "KiB", 64), ("65536", "k", 64), ("64", "MiB", 64), ("64", "M", 64),
    ("2", "GiB", 2048), ("2", "g", 2048), ("67108864", "b", 64), ("67108864", "bytes", 64),
    ("1", "TiB", 1 << 20), ("128000000", "B", 123), ("128", "MB", 123), ("1", "GB", 954)])
def test_memory_units(files, size, unit, mib):
    attr = f" unit='{unit}'" if unit else ""
    text = domain(files).replace("<memory unit='MiB'>64</memory>", f"<memory{attr}>{size}</memory>")
    cfg, warnings = X.config_from_xml(text)
    assert cfg.memory_mib == mib
    assert bool(warnings) == (mib << 20 != int(size) * X._unit_scale(unit or "KiB"))


@pytest.mark.parametrize("memory, match", [
    ("<memory unit='parsecs'>1</memory>", "unknown unit 'parsecs'"),
    ("<memory>lots</memory>", "'lots' is not an integer"),
    ("<memory>0</memory>", "must be positive"),
    ("<memory>1024</memory>", "memory_mib must be an integer of at least 16"),
])
def test_bad_memory(files, memory, match):
    with pytest.raises(ConfigError, match=match):
        X.config_from_xml(domain(files).replace("<memory unit='MiB'>64</memory>", memory))


def test_missing_essentials(files):
    with pytest.raises(ConfigError, match="no <name>"):
        X.config_from_xml(domain(files).replace("<name>t</name>", ""))
    with pytest.raises(ConfigError, match="no <memory>"):
        X.config_from_xml(domain(files).replace("<memory unit='MiB'>64</memory>", ""))
    with pytest.raises(ConfigError, match=r"no <os><kernel> \(it has <boot> at line 1"):
        X.config_from_xml(domain(files).replace(f"<kernel>{files}/vmlinuz</kernel>", "<boot dev='hd'/>"))
    # Plain data: a kernel that is not there is preflight's business when the domain starts.
    assert X.config_from_xml(domain(files).replace(str(files), "/nonexistent"))[0].kernel == "/nonexistent/vmlinuz"


def test_lifecycle_actions_xvm_has(files):
    body = "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
    assert X.config_from_xml(domain(files, body))[1] == []
    for element, value in (("on_reboot", "destroy"), ("on_crash", "coredump-restart"), ("on_poweroff", "restart")):
        with pytest.raises(ConfigError, match=f"unsupported element <{element}> at line 1: '{value}'"):
            X.config_from_xml(domain(files, f"<{element}>{value}</{element}>"))


def test_vcpu_attributes(files):
    cfg, warnings = X.config_from_xml(domain(files, "<vcpu placement='static' current='2'>2</vcpu>"))
    assert cfg.vcpus == 2 and warnings == []
    with pytest.raises(ConfigError, match="current='1' .vCPU hot-plug"):
        X.config_from_xml(domain(files, "<vcpu current='1'>2</vcpu>"))


def test_block_disks(files):
    disk = ("<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/>"
            "<source dev='/dev/vg0/web'/><target dev='vda' bus='virtio'/></disk>")
    cfg, warnings = X.config_from_xml(domain(files, devices=disk))
    assert cfg.disks == (xvm.Disk("/dev/vg0/web"),) and warnings == []
    with pytest.raises(ConfigError, match="a type='block' disk needs source dev="):
        X.config_from_xml(domain(files, devices=disk.replace("dev='/dev/vg0/web'", "file='/x'")))


@pytest.mark.parametrize("serial", ["<serial/>", "<serial>a/b</serial>"])
def test_a_serial_libvirt_would_refuse_is_refused_on_reading(files, serial):
    # What is read must write back: an empty serial (a fuzz find) or one outside libvirt's
    # diskSerial pattern would give a config that config_to_xml refuses.
    disk = f"<disk type='file' device='disk'><source file='/x.img'/><target dev='vda'/>{serial}</disk>"
    with pytest.raises(ConfigError, match=r"<serial> at line 1: serial '(|a/b)' is not a libvirt disk serial"):
        X.config_from_xml(domain(files, devices=disk))


def test_disk_errors_name_the_line(files):
    disk = f"<disk type='file' device='disk'>\n<source file='/x.img'/><target dev='vda'/><serial>{'s' * 21}</serial></disk>"
    with pytest.raises(ConfigError, match=r"<disk> at line 1: disk '/x.img': serial 's{21}' is longer than 20 bytes"):
        X.config_from_xml(domain(files, devices=disk))
    twice = (f"<disk type='file'><source file='{files}/a.img'/><target dev='vda'/></disk>\n"
             f"<disk type='file'><source file='{files}/b.img'/><target dev='vda'/></disk>")
    with pytest.raises(ConfigError, match=r"<disk> at line 2: target dev 'vda' is used by <disk> at line 1"):
        X.config_from_xml(domain(files, devices=twice))


# --- refused and ignored elements ----------------------------------------------------------------


@pytest.mark.parametrize("devices, element", [
    ("<disk type='file' device='cdrom'><source file='/x.iso'/><target dev='vda' bus='virtio'/></disk>", "disk"),
    ("<disk type='file' device='disk'><source file='/x'/><target dev='sda' bus='sata'/></disk>", "target"),
    ("<disk type='file' device='disk'><source file='/x'/><target dev='hda' bus='ide'/></disk>", "target"),
    ("<disk type='file' device='disk'><source file='/x'/><target dev='hda'/></disk>", "target"),
    ("<disk type='file'><driver name='qemu' type='qcow2'/><source file='/x'/><target dev='vda'/></disk>", "driver"),
    ("<disk type='network'><source protocol='nbd' name='x'/><target dev='vda'/></disk>", "disk"),
    ("<disk type='file'><source file='/x'/><target dev='vda'/><shareable/></disk>", "shareable"),
    ("<controller type='sata' index='0'/>", "controller"),
    ("<controller type='ide' index='0'/>", "controller"),
    ("<graphics type='vnc' port='-1'/>", "graphics"),
    ("<video><model type='vga'/></video>", "video"),
    ("<hostdev mode='subsystem' type='pci'><source><address bus='0x06' slot='0x02'/></source></hostdev>", "hostdev"),
    ("<interface type='user'><model type='virtio'/></interface>", "interface"),
    ("<interface type='bridge'><source bridge='br0'/><model type='e1000'/></interface>", "model"),
    ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>", "channel"),
    ("<console type='pty'><target type='virtio' port='0'/></console>", "target"),
    ("<serial type='pty'><target port='1'/></serial>", "target"),
    ("<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>", "rng"),
    ("<watchdog model='i6300esb'/>", "watchdog"),
])
def test_unsupported_devices_are_refused(files, devices, element):
    with pytest.raises(ConfigError, match=rf"unsupported element <{element}> at line 3"):
        X.config_from_xml(domain(files, devices="\n\n" + devices))


@pytest.mark.parametrize("os_extra, element", [
    ("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>", "loader"),
    ("<nvram>/var/lib/libvirt/nvram/guest_VARS.fd</nvram>", "nvram"),
    ("<dtb>/root/ppc.dtb</dtb>", "dtb"),
    ("<acpi><table type='slic'>/path/to/slic.dat</table></acpi>", "acpi"),
])
def test_firmware_is_refused(files, os_extra, element):
    with pytest.raises(ConfigError, match=rf"unsupported element <{element}> at line 1: xvm boots the kernel directly"):
        X.config_from_xml(domain(files, os_extra=os_extra))


def test_unknown_elements_anywhere_are_refused(files):
    with pytest.raises(ConfigError, match=r"unsupported element <maxMemory> at line 1"):
        X.config_from_xml(domain(files, "<maxMemory slots='16' unit='KiB'>16777216</maxMemory>"))
    qemu = "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-s'/></qemu:commandline>"
    with pytest.raises(ConfigError, match=r"unsupported element <commandline xmlns='http://libvirt.org/schemas/domain/qemu/1.0'>"):
        X.config_from_xml(domain(files, qemu))
    for kind in ("xen", "lxc"):
        with pytest.raises(ConfigError, match=f"type='{kind}'"):
            X.config_from_xml(domain(files).replace("type='kvm'", f"type='{kind}'"))
    with pytest.raises(ConfigError, match="arch='aarch64'"):
        X.config_from_xml(domain(files).replace("<type>hvm</type>", "<type arch='aarch64'>hvm</type>"))


def test_unknown_xvm_setting_is_refused(files):
    meta = f"<metadata><xvm:domain xmlns:xvm='{X.NS}'>\n<xvm:warp_drive>on</xvm:warp_drive></xvm:domain></metadata>"
    with pytest.raises(ConfigError, match=r"unknown xvm setting <xvm:warp_drive> at line 2"):
        X.config_from_xml(domain(files, top=meta))
    meta = f"<metadata><xvm:domain xmlns:xvm='{X.NS}'><xvm:autostart>maybe</xvm:autostart></xvm:domain></metadata>"
    with pytest.raises(ConfigError, match="'maybe' is not 'yes' or 'no'"):
        X.config_from_xml(domain(files, top=meta))
    meta = f"<metadata><xvm:domain xmlns:xvm='{X.NS}'><xvm:virtio_transport>isa</xvm:virtio_transport></xvm:domain></metadata>"
    with pytest.raises(ConfigError, match="virtio_transport must be 'mmio' or 'pci'"):
        X.config_from_xml(domain(files, top=meta))


def test_harmless_elements_are_listed_in_warnings(files):
    body = "<features><acpi/><apic/></features><clock offset='utc'/><on_lockfailure>poweroff</on_lockfailure>"
    devices = "<emulator>/usr/bin/qemu-system-x86_64</emulator><memballoon model='none'/>"
    cfg, warnings = X.config_from_xml(domain(files, body, devices))
    assert cfg.name == "t"
    assert [w.split(" at ")[0] for w in warnings] == [
        "<features>", "<clock>", "<on_lockfailure>", "<emulator>", "<memballoon>"]
    assert all("does not change what the guest sees" in w for w in warnings)


# --- malformed and hostile documents -------------------------------------------------------------


@pytest.mark.parametrize("text, where", [
    ("<domain>\n  <name>x</nam>\n</domain>", "line 2, column 12: mismatched tag"),
    ("<domain>\n<name x=1/></domain>", "line 2, column 9: not well-formed"),
    ("", "line 1, column 1: no element found"),
    ("<domain><name>x</name>", "line 1, column 23: no element found"),
    ("<domain/><domain/>", "line 1, column 10: junk after document element"),
])
def test_malformed_xml_gives_line_and_column(text, where):
    with pytest.raises(ConfigError, match=f"malformed domain XML at {where}"):
        X.config_from_xml(text)


def test_not_a_domain():
    with pytest.raises(ConfigError, match="is a <network>, not a <domain>"):
        X.config_from_xml("<network/>")
    with pytest.raises(ConfigError, match="must be str or bytes"):
        X.config_from_xml(42)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<domain type='kvm'><name>&lol9;</name></domain>"""


def refused_cheaply(text, match):
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError, match=match):
            X.config_from_xml(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 1.0
    return peak


def test_entity_expansion_is_refused():
    assert refused_cheaply(BILLION_LAUGHS, "refused: it has a document type declaration") < 1 << 20


def test_internal_entities_without_doctype_do_not_exist():
    # An entity reference with no declaration is a well-formedness error, not an expansion.
    with pytest.raises(ConfigError, match="malformed domain XML at line 1, column 15: undefined entity"):
        X.config_from_xml("<domain><name>&lol;</name></domain>")


def test_external_entities_are_not_read(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    for decl in (f'<!ENTITY x SYSTEM "file://{secret}">', f'<!ENTITY x SYSTEM "{secret}">',
                 f'<!ENTITY % p SYSTEM "file://{secret}"> %p;'):
        text = f'<?xml version="1.0"?>\n<!DOCTYPE domain [{decl}]>\n<domain><name>&x;</name></domain>'
        before = os.stat(secret).st_atime_ns
        refused_cheaply(text, "refused: it has a document type declaration")
        assert os.stat(secret).st_atime_ns == before
    external_dtd = f'<?xml version="1.0"?>\n<!DOCTYPE domain SYSTEM "file://{secret}">\n<domain/>'
    refused_cheaply(external_dtd, "refused: it has a document type declaration")


def test_a_huge_document_is_refused_before_parsing():
    huge = b"<domain><name>" + b"x" * (100 << 20) + b"</name></domain>"
    assert refused_cheaply(huge, "larger than 10 MiB") < 1 << 20
    just_over = "<domain>" + " " * (X.MAX_XML_BYTES) + "</domain>"
    refused_cheaply(just_over, "larger than 10 MiB")


def test_a_small_document_with_a_huge_tree_is_refused():
    assert refused_cheaply(b"<domain>" + b"<a/>" * 2_000_000 + b"</domain>", "more than 10000 elements") < 1 << 20
    assert refused_cheaply(b"<domain " + b" ".join(b"a%d=''" % i for i in range(500_000)) + b"/>",
                           "20000 attributes") < 1 << 20
    deep = "<domain>" + "<a>" * 100 + "</a>" * 100 + "</domain>"
    assert refused_cheaply(deep, "nests elements more than 64 deep at line 1") < 1 << 20


def test_str_and_bytes_with_an_encoding_declaration(files):
    text = "<?xml version='1.0' encoding='UTF-8'?>\n" + domain(files).replace("<name>t</name>", "<name>t\u00e9</name>")
    with pytest.raises(ConfigError, match="domain name 't\u00e9' is invalid"):
        X.config_from_xml(text)
    with pytest.raises(ConfigError, match="domain name 't\u00e9' is invalid"):
        X.config_from_xml(text.encode())


# --- networks --------------------------------------------------------------------------------------


def test_network_golden_and_round_trip(tmp_path):
    net, warnings = X.network_from_xml((DATA / "network-isolated.xml").read_text())
    assert net == xvm.Network("private", bridge="virbr2", address="192.168.152.1/24", mtu=9000)
    assert warnings == []
    text = X.network_to_xml(net)
    assert X.network_from_xml(text) == (net, [])
    plain = xvm.Network("lan")
    assert X.network_from_xml(X.network_to_xml(plain)) == (plain, [])
    if VALIDATOR:
        validate(text, tmp_path, "network")
        validate(X.network_to_xml(plain), tmp_path, "network")


def test_network_features_xvm_lacks_are_refused():
    with pytest.raises(ConfigError, match=r"unsupported element <forward> at line 2"):
        X.network_from_xml("<network><name>n</name>\n<forward mode='nat'/></network>")
    with pytest.raises(ConfigError, match=r"unsupported element <dhcp> at line 2"):
        X.network_from_xml("<network><name>n</name><ip address='10.0.0.1' prefix='24'>\n"
                           "<dhcp><range start='10.0.0.2' end='10.0.0.9'/></dhcp></ip></network>")
