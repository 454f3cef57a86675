"""libvirt domain XML for :class:`~xvm.config.DomainConfig` (and network XML for
:class:`~xvm.net.Network`).

    text = config_to_xml(cfg)                  # validates against libvirt's domain.rng
    cfg, warnings = config_from_xml(text)      # from_xml(to_xml(c)) == c

What xvm reads is what people write for KVM with direct kernel boot: ``<name>``, ``<uuid>``,
``<memory unit=…>`` (KiB by default), ``<vcpu>``, ``<os>`` with ``<type>hvm</type>``,
``<kernel>``, ``<initrd>``, ``<cmdline>``, ``<on_poweroff>/<on_reboot>/<on_crash>`` (only the
behaviour xvm has: destroy, restart, destroy), file and block ``<disk>``s on the virtio bus,
``<interface type='bridge'|'network'>`` with a virtio model, and the serial console. xvm's
own settings (virtio transport, hidden CPU features, host-stop policy, autostart) live in
``<metadata><xvm:domain xmlns:xvm="https://xvm.dev/schema/domain/1">``.

Elements that do not change what the guest sees (``<features>``, ``<clock>``,
``<emulator>``…) are accepted and named in the warnings; elements xvm cannot honour (a cdrom,
graphics, a SATA or IDE bus, hostdev…) are a :class:`~xvm.errors.ConfigError` naming the
element and its line. The parser is defusedxml's with DTDs forbidden, so entity expansion
and external entities are refused before anything is expanded or read, and a document over
:data:`MAX_XML_BYTES` is refused before it is parsed.
"""
import ipaddress
import math
import os
import re
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, fields

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from .errors import ConfigError

NS = "https://xvm.dev/schema/domain/1"
PREFIX = "xvm"
MAX_XML_BYTES = 10 << 20
# A domain document has tens of elements; these bound the tree (and so the memory) that a
# small but hostile document could make the parser build.
MAX_ELEMENTS = 10_000
MAX_ATTRIBUTES = 20_000
MAX_DEPTH = 64

ET.register_namespace(PREFIX, NS)

# libvirt's virScaleInteger: a suffix of one letter or "<letter>iB" is a power of 1024,
# "<letter>B" a power of 1000; "b"/"bytes" are bytes; no unit means KiB for <memory>.
_SCALE_LETTERS = "kmgtpe"

# What xvm does when the guest powers off, reboots or crashes (DomainConfig has no choice).
LIFECYCLE = {"on_poweroff": "destroy", "on_reboot": "restart", "on_crash": "destroy"}

# Elements that do not change what the guest sees: accepted, named in a warning.
_HARMLESS = {
    "domain": {"title", "description", "features", "clock", "cpu", "pm", "resource", "seclabel",
               "memoryBacking", "blkiotune", "memtune", "numatune", "cputune", "iothreads",
               "on_lockfailure", "perf", "keywrap", "currentMemory"},
    "os": {"boot", "bootmenu", "bios", "smbios"},
    "devices": {"emulator", "memballoon", "input", "controller", "audio"},
    "disk": {"alias", "address", "boot", "iotune", "blockio"},
    "interface": {"alias", "address", "boot", "target", "link", "bandwidth", "virtualport"},
    "serial": {"alias", "log", "source"},
    "console": {"alias", "log", "source"},
}
# Controllers that put a bus in front of the guest that xvm does not have.
_REFUSED_CONTROLLERS = {"ide", "sata", "scsi", "fdc", "virtio-serial", "ccid"}
_CACHE_MODES = ("none", "writethrough", "writeback", "unsafe")
# What libvirt's domaincommon.rng allows (diskSerial, interface-bridge-attributes).
_LIBVIRT_SERIAL = re.compile(r"[A-Za-z0-9_.+\- ]+")
_LIBVIRT_BRIDGE = re.compile(r"[a-zA-Z0-9_.\-\\:/ ]*")


@dataclass(frozen=True)
class DomainXml:
    """A parsed domain document: the config, the warnings, and the xvm settings of the
    metadata that DomainConfig does not hold (``{"autostart": True}``)."""

    config: object
    warnings: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)


# --- writing -----------------------------------------------------------------------------------


def config_to_xml(cfg, *, settings=None, domain_id=None):
    """The libvirt domain XML of ``cfg`` (a str). ``settings`` adds xvm settings that are not
    DomainConfig fields (``{"autostart": False}``) to the xvm metadata; ``domain_id`` (of a
    running domain) goes in ``<domain id=…>``, as in libvirt's live XML."""
    from .config import DomainConfig

    if not isinstance(cfg, DomainConfig):
        raise ConfigError(f"config_to_xml wants an xvm.DomainConfig, not {type(cfg).__name__}")
    root = ET.Element("domain", type="kvm")
    if domain_id is not None:
        root.set("id", str(domain_id))
    _text(root, "name", cfg.name)
    _text(root, "uuid", str(cfg.uuid))
    _metadata(root, cfg, settings or {})
    _text(root, "memory", str(cfg.memory_mib), unit="MiB")
    _text(root, "vcpu", str(cfg.vcpus))
    os_ = ET.SubElement(root, "os")
    _text(os_, "type", "hvm", arch="x86_64")
    _text(os_, "kernel", cfg.kernel, what="kernel path")
    if cfg.initrd is not None:
        _text(os_, "initrd", cfg.initrd, what="initrd path")
    if cfg.cmdline:
        _text(os_, "cmdline", cfg.cmdline, what="cmdline")
    for name, fixed in LIFECYCLE.items():
        _text(root, name, getattr(cfg, name, fixed))
    devices = ET.SubElement(root, "devices")
    for index, disk in enumerate(cfg.disks):
        _write_disk(devices, disk, index)
    for nic in cfg.nics:
        _write_nic(devices, nic)
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    ET.indent(root, "  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _metadata(root, cfg, settings):
    present = {f.name for f in fields(cfg)}
    meta = ET.SubElement(ET.SubElement(root, "metadata"), _q("domain"))
    _text(meta, _q("virtio_transport"), cfg.virtio_transport)
    for feature in cfg.disable_cpu_features:
        _text(meta, _q("disable_cpu_feature"), feature)
    for name, kind in _SETTINGS.items():
        if name in present:
            value = getattr(cfg, name)
        elif name in settings:
            value = settings[name]
        else:
            continue
        if value is not None:
            _text(meta, _q(name), _format_setting(value, kind), what=f"xvm setting {name}")


def _write_disk(devices, disk, index):
    try:
        block = stat.S_ISBLK(os.stat(disk.path).st_mode)
    except OSError:  # not there (yet): preflight says so when the domain starts
        block = False
    el = ET.SubElement(devices, "disk", type="block" if block else "file", device="disk")
    ET.SubElement(el, "driver", name="qemu", type="raw", cache=disk.cache)
    ET.SubElement(el, "source", {"dev" if block else "file": _checked(disk.path, "disk path")})
    ET.SubElement(el, "target", dev=_disk_name(index), bus="virtio")
    if disk.serial is not None:
        if not _LIBVIRT_SERIAL.fullmatch(disk.serial):
            raise ConfigError(f"disk {disk.path}: serial {disk.serial!r} cannot be written in libvirt XML "
                              "(1-20 letters, digits, spaces, '_', '.', '+' or '-')")
        _text(el, "serial", disk.serial)
    if disk.readonly:
        ET.SubElement(el, "readonly")


def _write_nic(devices, nic):
    kind = "network" if nic.network is not None else "bridge"
    el = ET.SubElement(devices, "interface", type=kind)
    if nic.mac is not None:
        ET.SubElement(el, "mac", address=nic.mac)
    if nic.bridge is not None and not _LIBVIRT_BRIDGE.fullmatch(nic.bridge):
        raise ConfigError(f"bridge name {nic.bridge!r} cannot be written in libvirt XML "
                          "(letters, digits, '_', '.', '-', ':', '\\')")
    ET.SubElement(el, "source", {kind: _checked(nic.network if nic.network is not None else nic.bridge, kind)})
    ET.SubElement(el, "model", type="virtio")
    if nic.mtu is not None:
        ET.SubElement(el, "mtu", size=str(nic.mtu))
    if nic.queues != 1:
        ET.SubElement(el, "driver", queues=str(nic.queues))


def _disk_name(index):
    """vda … vdz, vdaa …: the names libvirt gives virtio disks."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return "vd" + letters


def _text(parent, tag, text, what=None, **attrs):
    el = ET.SubElement(parent, tag, attrs)
    el.text = _checked(text, what or tag) if what else text
    return el


def _checked(text, what):
    """``text`` if XML 1.0 can carry it unchanged (no control characters, no CR)."""
    for ch in text:
        code = ord(ch)
        if (code < 0x20 and ch not in "\t\n") or 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            raise ConfigError(f"the {what} {text!r} has a character XML cannot carry ({ch!r})")
    return text


def _q(local):
    return f"{{{NS}}}{local}"


# --- reading -----------------------------------------------------------------------------------


def config_from_xml(text):
    """Parse libvirt domain XML: returns ``(DomainConfig, warnings)``; raises ConfigError."""
    parsed = parse_domain_xml(text)
    return parsed.config, parsed.warnings


def parse_domain_xml(text):
    """Parse libvirt domain XML into a :class:`DomainXml`; raises ConfigError."""
    doc = _parse(text, "domain")
    return _Reader(doc).read()


class _Document:
    """A parsed tree and the line of every element."""

    def __init__(self, root, lines):
        self.root = root
        self.lines = lines

    def where(self, el):
        return f"<{_show_tag(el.tag)}> at line {self.lines.get(el, '?')}"


def _parse(text, root_tag):
    if isinstance(text, str):
        if len(text) > MAX_XML_BYTES:
            raise ConfigError(f"the {root_tag} XML is larger than {MAX_XML_BYTES >> 20} MiB: refused")
        data = text.encode("utf-8", "surrogatepass")
    elif isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
    else:
        raise ConfigError(f"{root_tag} XML must be str or bytes, not {type(text).__name__}")
    if len(data) > MAX_XML_BYTES:
        raise ConfigError(f"the {root_tag} XML is larger than {MAX_XML_BYTES >> 20} MiB: refused")
    if data.count(b"<") > MAX_ELEMENTS or data.count(b"=") > MAX_ATTRIBUTES:
        raise ConfigError(f"the {root_tag} XML has more than {MAX_ELEMENTS} elements or {MAX_ATTRIBUTES} "
                          "attributes: refused")
    target = _LineTracker()
    parser = DefusedXMLParser(target=target, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    target.expat = parser.parser
    try:
        parser.feed(data)
        root = parser.close()
    except ET.ParseError as e:
        line, column = e.position
        detail = str(e).split(":")[0]
        raise ConfigError(f"malformed {root_tag} XML at line {line}, column {column + 1}: {detail}") from None
    except DefusedXmlException as e:
        raise ConfigError(f"{root_tag} XML refused: {_hostile(e)}") from None
    if root.tag != root_tag:
        raise ConfigError(f"the document is a <{_show_tag(root.tag)}>, not a <{root_tag}>")
    return _Document(root, target.lines)


def _hostile(e):
    from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden

    if isinstance(e, DTDForbidden):
        return "it has a document type declaration (<!DOCTYPE>), which xvm does not accept"
    if isinstance(e, EntitiesForbidden):
        return f"it declares the entity {e.name!r}, which xvm does not accept"
    if isinstance(e, ExternalReferenceForbidden):
        return f"it refers to the external resource {e.sysid or e.pubid!r}, which xvm does not read"
    return str(e)


class _LineTracker:
    """A TreeBuilder target that notes the line where each element starts."""

    def __init__(self):
        self.builder = ET.TreeBuilder()
        self.lines = {}
        self.expat = None
        self.depth = 0

    def start(self, tag, attrs):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConfigError(f"the XML nests elements more than {MAX_DEPTH} deep at line "
                              f"{self.expat.CurrentLineNumber}: refused")
        el = self.builder.start(tag, attrs)
        self.lines[el] = self.expat.CurrentLineNumber
        return el

    def end(self, tag):
        self.depth -= 1
        return self.builder.end(tag)

    def data(self, data):
        self.builder.data(data)

    def close(self):
        return self.builder.close()


def _show_tag(tag):
    if tag.startswith(f"{{{NS}}}"):
        return f"{PREFIX}:{tag[len(NS) + 2:]}"
    if tag.startswith("{"):
        uri, local = tag[1:].split("}", 1)
        return f"{local} xmlns='{uri}'"
    return tag


class _Reader:
    """Reads one parsed document into constructor arguments, collecting warnings."""

    def __init__(self, doc):
        self.doc = doc
        self.warnings = []
        self.settings = {}
        self.fields = {}

    # -- helpers -------------------------------------------------------------------------------
    def where(self, el):
        return self.doc.where(el)

    def refuse(self, el, why):
        raise ConfigError(f"unsupported element {self.where(el)}: {why}")

    def warn(self, text):
        self.warnings.append(text)

    def children(self, el, handled, context):
        """``el``'s children by tag; refuses or warns about the ones not in ``handled``."""
        out = {}
        harmless = _HARMLESS.get(context, set())
        for child in el:
            tag = child.tag
            if tag in handled:
                out.setdefault(tag, []).append(child)
            elif tag in harmless:
                self.warn(f"{self.where(child)} ignored: it does not change what the guest sees")
            else:
                self.refuse(child, f"xvm cannot honour it inside <{_show_tag(el.tag)}>")
        return out

    def attrs(self, el, known):
        for name in el.attrib:
            if name not in known:
                self.warn(f"attribute {_show_tag(name)}={el.attrib[name]!r} of {self.where(el)} ignored")

    def one(self, found, tag, parent=None, required=False):
        items = found.get(tag, [])
        if len(items) > 1:
            raise ConfigError(f"{self.where(items[1])}: <{tag}> is given more than once")
        if not items and required:
            where = f" in {self.where(parent)}" if parent is not None else ""
            raise ConfigError(f"the domain XML has no <{tag}>{where}")
        return items[0] if items else None

    def value(self, el):
        self.attrs(el, ())
        return (el.text or "").strip()

    def integer(self, el, text=None):
        text = (el.text or "").strip() if text is None else text
        try:
            return int(text, 10)
        except ValueError:
            raise ConfigError(f"{self.where(el)}: {text!r} is not an integer") from None

    def fixed(self, el, attr, allowed, default=None, why=""):
        value = el.get(attr, default)
        if value not in allowed:
            self.refuse(el, f"{attr}={value!r}{why}; xvm supports {', '.join(map(repr, allowed))}")
        return value

    def wrap(self, el, build):
        try:
            return build()
        except ConfigError as e:
            raise ConfigError(f"{self.where(el)}: {e}") from None

    # -- the document --------------------------------------------------------------------------
    def read(self):
        from .config import DomainConfig

        root = self.doc.root
        self.attrs(root, ("type", "id"))
        kind = root.get("type")
        if kind == "qemu":
            self.warn("<domain type='qemu'> runs on KVM in xvm (there is no emulation)")
        elif kind != "kvm":
            self.refuse(root, f"type={kind!r}; xvm runs 'kvm' domains")
        handled = {"name", "uuid", "memory", "vcpu", "os", "devices", "metadata", *LIFECYCLE}
        found = self.children(root, handled, "domain")
        self.fields["name"] = self.value(self.one(found, "name", required=True))
        uuid = self.one(found, "uuid")
        if uuid is not None:
            self.fields["uuid"] = self.value(uuid)
        self.fields["memory_mib"] = self.memory(self.one(found, "memory", required=True))
        vcpu = self.one(found, "vcpu")
        if vcpu is not None:
            self.fields["vcpus"] = self.vcpus(vcpu)
        self.os(self.one(found, "os", required=True))
        for name, behaviour in LIFECYCLE.items():
            el = self.one(found, name)
            if el is not None:
                self.lifecycle(el, name, behaviour)
        devices = self.one(found, "devices")
        self.fields.setdefault("disks", ())
        self.fields.setdefault("nics", ())
        if devices is not None:
            self.devices(devices)
        metadata = self.one(found, "metadata")
        if metadata is not None:
            self.metadata(metadata)
        config = DomainConfig(**self.fields)
        return DomainXml(config, self.warnings, self.settings)

    def memory(self, el):
        self.attrs(el, ("unit", "dumpCore"))
        size = self.integer(el)
        unit = el.get("unit", "KiB")
        scale = _unit_scale(unit)
        if scale is None:
            raise ConfigError(f"{self.where(el)}: unknown unit {unit!r} (use b, KiB, MiB, GiB, KB, MB, …)")
        if size <= 0:
            raise ConfigError(f"{self.where(el)}: the memory size must be positive, not {size}")
        nbytes = size * scale
        mib = -(-nbytes // (1 << 20))
        if mib << 20 != nbytes:
            self.warn(f"memory of {size} {unit} rounded up to {mib} MiB (xvm gives memory in whole MiB)")
        return mib

    def vcpus(self, el):
        self.attrs(el, ("placement", "cpuset", "current"))
        count = self.integer(el)
        current = el.get("current")
        if current is not None and self.integer(el, current) != count:
            self.refuse(el, f"current={current!r} (vCPU hot-plug); xvm starts every vCPU")
        if "cpuset" in el.attrib:
            self.warn(f"cpuset={el.get('cpuset')!r} of {self.where(el)} ignored: xvm does not pin vCPUs yet")
        return count

    def os(self, el):
        self.attrs(el, ())
        found = self.children(el, {"type", "kernel", "initrd", "cmdline", "loader", "nvram", "dtb",
                                   "acpi", "init", "firmware"}, "os")
        for refused in ("loader", "nvram", "dtb", "acpi", "init", "firmware"):
            for child in found.get(refused, []):
                self.refuse(child, "xvm boots the kernel directly, without firmware")
        kind = self.one(found, "type", el, required=True)
        self.attrs(kind, ("arch", "machine"))
        if (kind.text or "").strip() != "hvm":
            self.refuse(kind, f"OS type {(kind.text or '').strip()!r}; xvm runs 'hvm' guests")
        if kind.get("arch", "x86_64") != "x86_64":
            self.refuse(kind, f"arch={kind.get('arch')!r}; xvm runs x86_64 guests")
        if "machine" in kind.attrib:
            self.warn(f"machine={kind.get('machine')!r} of {self.where(kind)} ignored: "
                      "xvm has one machine type")
        kernel = self.one(found, "kernel")
        if kernel is None:
            boot = el.find("boot")
            hint = f" (it has {self.where(boot)}: xvm has no firmware to boot a disk)" if boot is not None else ""
            raise ConfigError(f"the domain XML has no <os><kernel>{hint}: xvm boots a kernel directly")
        self.attrs(kernel, ())
        self.fields["kernel"] = kernel.text or ""
        initrd = self.one(found, "initrd")
        if initrd is not None:
            self.attrs(initrd, ())
            self.fields["initrd"] = initrd.text or ""
        cmdline = self.one(found, "cmdline")
        if cmdline is not None:
            self.attrs(cmdline, ())
            self.fields["cmdline"] = cmdline.text or ""

    def lifecycle(self, el, name, behaviour):
        from .config import DomainConfig

        value = self.value(el)
        if name in {f.name for f in fields(DomainConfig)}:
            self.fields[name] = value
        elif value != behaviour:
            self.refuse(el, f"{value!r}: xvm always does {behaviour!r} {name.replace('on_', 'on ')}")

    # -- devices -------------------------------------------------------------------------------
    def devices(self, el):
        self.attrs(el, ())
        for child in el:
            if child.tag == "controller" and child.get("type") in _REFUSED_CONTROLLERS:
                self.refuse(child, f"a {child.get('type')} controller: xvm's disks are on the virtio bus")
        found = self.children(el, {"disk", "interface", "serial", "console"}, "devices")
        disks, nics, targets = [], [], {}
        for disk in found.get("disk", []):
            target, built = self.disk(disk)
            if target in targets:
                raise ConfigError(f"{self.where(disk)}: target dev {target!r} is used by {targets[target]} too")
            targets[target] = self.where(disk)
            disks.append(built)
        for nic in found.get("interface", []):
            nics.append(self.interface(nic))
        for serial in found.get("serial", []) + found.get("console", []):
            self.serial(serial)
        self.fields["disks"] = tuple(disks)
        self.fields["nics"] = tuple(nics)

    def disk(self, el):
        from .devices.block import Disk

        self.attrs(el, ("type", "device", "snapshot"))
        kind = self.fixed(el, "type", ("file", "block"))
        self.fixed(el, "device", ("disk",), default="disk")
        found = self.children(el, {"driver", "source", "target", "readonly", "serial", "shareable",
                                   "transient", "backingStore", "encryption", "auth", "geometry"}, "disk")
        for refused in ("shareable", "transient", "encryption", "auth", "geometry"):
            for child in found.get(refused, []):
                self.refuse(child, "xvm does not have it for disks")
        for child in found.get("backingStore", []):
            if len(child) or child.attrib:
                self.refuse(child, "xvm disks are raw images without a backing chain")
        cache = "none"
        driver = self.one(found, "driver")
        if driver is not None:
            self.attrs(driver, ("name", "type", "cache", "io", "discard", "detect_zeroes"))
            if driver.get("type", "raw") != "raw":
                self.refuse(driver, f"type={driver.get('type')!r}: xvm disks are raw images")
            cache = driver.get("cache", "none")
            if cache not in _CACHE_MODES:
                self.refuse(driver, f"cache={cache!r}; xvm supports {', '.join(_CACHE_MODES)}")
            for ignored in ("io", "discard", "detect_zeroes"):
                if ignored in driver.attrib:
                    self.warn(f"{ignored}={driver.get(ignored)!r} of {self.where(driver)} ignored")
        source = self.one(found, "source", el, required=True)
        attr = "file" if kind == "file" else "dev"
        self.attrs(source, (attr,))
        path = source.get(attr)
        if not path:
            raise ConfigError(f"{self.where(source)}: a type={kind!r} disk needs source {attr}=")
        target = self.one(found, "target", el, required=True)
        self.attrs(target, ("dev", "bus"))
        dev = target.get("dev")
        if not dev:
            raise ConfigError(f"{self.where(target)}: a disk target needs dev=")
        bus = target.get("bus") or ("virtio" if dev.startswith("vd") else None)
        if bus != "virtio":
            self.refuse(target, f"bus={bus or dev!r}: xvm's disks are on the virtio bus (dev='vdX', bus='virtio')")
        serial = self.one(found, "serial")
        readonly = self.one(found, "readonly")
        if readonly is not None:
            self.attrs(readonly, ())
        if serial is not None:
            self.attrs(serial, ())
            if not _LIBVIRT_SERIAL.fullmatch(serial.text or ""):
                raise ConfigError(f"{self.where(serial)}: serial {serial.text or ''!r} is not a libvirt disk "
                                  "serial (1-20 letters, digits, spaces, '_', '.', '+' or '-')")
        disk = self.wrap(el, lambda: Disk(path, readonly=readonly is not None,
                                          serial=None if serial is None else serial.text, cache=cache))
        return dev, disk

    def interface(self, el):
        from .net import Nic

        self.attrs(el, ("type",))
        kind = self.fixed(el, "type", ("bridge", "network"))
        found = self.children(el, {"source", "mac", "model", "mtu", "driver"}, "interface")
        source = self.one(found, "source", el, required=True)
        self.attrs(source, (kind,) + (("portgroup",) if kind == "network" else ()))
        name = source.get(kind)
        if not name:
            raise ConfigError(f"{self.where(source)}: a type={kind!r} interface needs source {kind}=")
        mac = self.one(found, "mac")
        if mac is not None:
            self.attrs(mac, ("address",))
        model = self.one(found, "model")
        if model is not None:
            self.attrs(model, ("type",))
            self.fixed(model, "type", ("virtio",), why=" (an emulated NIC)")
        else:
            self.warn(f"{self.where(el)} has no <model>: xvm's NICs are virtio")
        mtu = self.one(found, "mtu")
        if mtu is not None:
            self.attrs(mtu, ("size",))
        driver = self.one(found, "driver")
        queues = 1
        if driver is not None:
            # name= (vhost, qemu), txmode=, ioeventfd=... choose how QEMU serves the queues;
            # the guest sees none of them.  queues= is the number of queue pairs.
            self.attrs(driver, ("queues",))
            if driver.get("queues") is not None:
                queues = self.integer(driver, driver.get("queues"))
        kwargs = {kind: name,
                  "mac": None if mac is None else mac.get("address"),
                  "mtu": None if mtu is None else self.integer(mtu, mtu.get("size", "")),
                  "queues": queues}
        return self.wrap(el, lambda: Nic(**kwargs))

    def serial(self, el):
        self.attrs(el, ("type",))
        found = self.children(el, {"target"}, el.tag)
        if el.get("type", "pty") != "pty":
            self.warn(f"type={el.get('type')!r} of {self.where(el)} ignored: xvm serves the console itself")
        target = self.one(found, "target")
        if target is None:
            return
        self.attrs(target, ("port", "type"))
        if el.tag == "console" and target.get("type", "serial") != "serial":
            self.refuse(target, f"a {target.get('type')} console: xvm's console is the serial port")
        if el.tag == "serial" and target.get("type", "isa-serial") != "isa-serial":
            self.refuse(target, f"a {target.get('type')} serial port: xvm has one ISA serial port")
        if target.get("port", "0") != "0":
            self.refuse(target, f"port={target.get('port')!r}: xvm has one serial port, port 0")

    # -- xvm's own settings --------------------------------------------------------------------
    def metadata(self, el):
        from .config import DomainConfig

        present = {f.name for f in fields(DomainConfig)}
        for child in el:
            if child.tag != _q("domain"):
                self.warn(f"{self.where(child)} in <metadata> ignored: it is not xvm's")
                continue
            features = []
            for setting in child:
                name = setting.tag[len(NS) + 2:] if setting.tag.startswith(f"{{{NS}}}") else None
                text = self.value(setting)
                if name == "virtio_transport":
                    self.fields["virtio_transport"] = text
                elif name == "disable_cpu_feature":
                    features.append(text)
                elif name in _SETTINGS:
                    value = self.setting(setting, text, _SETTINGS[name])
                    if name in present:
                        self.fields[name] = value
                    else:
                        self.settings[name] = value
                        if name not in RECORD_SETTINGS:
                            self.warn(f"{self.where(setting)}: this xvm does not have the setting yet; ignored")
                else:
                    raise ConfigError(f"unknown xvm setting {self.where(setting)}")
            if features:
                self.fields["disable_cpu_features"] = tuple(features)

    def setting(self, el, text, kind):
        try:
            return _parse_setting(text, kind)
        except ValueError:
            raise ConfigError(f"{self.where(el)}: {text!r} is not {_KIND_WORDS[kind]}") from None


# Settings the host keeps with the domain's record rather than in its DomainConfig.
RECORD_SETTINGS = ("autostart",)
# xvm settings in the metadata beyond virtio_transport and disable_cpu_feature, by kind.
_SETTINGS = {"on_host_stop": "word", "shutdown_timeout": "number", "autostart": "bool"}
_KIND_WORDS = {"word": "a word", "number": "a number", "bool": "'yes' or 'no'"}


def _format_setting(value, kind):
    if kind == "bool":
        return "yes" if value else "no"
    if kind == "number":
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def _parse_setting(text, kind):
    if kind == "bool":
        if text not in ("yes", "no"):
            raise ValueError(text)
        return text == "yes"
    if kind == "number":
        number = float(text) if any(c in text for c in ".eE") else int(text)
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(text)
        return number
    if not text:
        raise ValueError(text)
    return text


def _unit_scale(unit):
    """Bytes per ``unit`` as libvirt reads it (virScaleInteger), or None."""
    lower = unit.lower()
    if lower in ("b", "byte", "bytes"):
        return 1
    if not lower or lower[0] not in _SCALE_LETTERS:
        return None
    if len(lower) == 1 or lower[1:] == "ib":
        base = 1024
    elif lower[1:] == "b":
        base = 1000
    else:
        return None
    return base ** (_SCALE_LETTERS.index(lower[0]) + 1)


# --- networks ----------------------------------------------------------------------------------


def network_to_xml(net):
    """The libvirt network XML of an :class:`xvm.Network` (an isolated bridge)."""
    root = ET.Element("network")
    _text(root, "name", net.name)
    ET.SubElement(root, "bridge", name=net.bridge)
    ET.SubElement(root, "mtu", size=str(net.mtu))
    if net.address is not None:
        interface = ipaddress.ip_interface(net.address)
        family = "ipv4" if interface.version == 4 else "ipv6"
        ET.SubElement(root, "ip", family=family, address=str(interface.ip),
                      prefix=str(interface.network.prefixlen))
    ET.indent(root, "  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def network_from_xml(text):
    """Parse libvirt network XML: returns ``(xvm.Network, warnings)``; raises ConfigError.

    xvm networks are bridges without forwarding, DHCP or DNS: ``<forward>``, ``<dhcp>``,
    ``<dns>`` and the like are refused."""
    from .net import Network

    doc = _parse(text, "network")
    reader = _Reader(doc)
    root = doc.root
    reader.attrs(root, ())
    found = {}
    for child in root:
        if child.tag in ("name", "bridge", "mtu", "ip"):
            found.setdefault(child.tag, []).append(child)
        elif child.tag in ("uuid", "title", "description", "metadata", "mac"):
            reader.warn(f"{doc.where(child)} ignored")
        else:
            reader.refuse(child, "xvm networks are bridges without forwarding, DHCP or DNS")
    name = reader.value(reader.one(found, "name", required=True))
    kwargs = {"name": name}
    bridge = reader.one(found, "bridge")
    if bridge is not None:
        reader.attrs(bridge, ("name", "stp", "delay"))
        kwargs["bridge"] = bridge.get("name")
    mtu = reader.one(found, "mtu")
    if mtu is not None:
        reader.attrs(mtu, ("size",))
        kwargs["mtu"] = reader.integer(mtu, mtu.get("size", ""))
    ip = reader.one(found, "ip")
    if ip is not None:
        kwargs["address"] = _network_address(reader, ip)
    return reader.wrap(root, lambda: Network(**kwargs)), reader.warnings


def _network_address(reader, ip):
    reader.attrs(ip, ("address", "netmask", "prefix", "family"))
    for child in ip:
        reader.refuse(child, "xvm networks have no DHCP or TFTP")
    address, netmask, prefix = ip.get("address"), ip.get("netmask"), ip.get("prefix")
    if not address:
        raise ConfigError(f"{reader.where(ip)}: needs address=")
    if netmask is not None:
        try:
            prefix = str(ipaddress.ip_network(f"0.0.0.0/{netmask}").prefixlen)
        except ValueError:
            raise ConfigError(f"{reader.where(ip)}: netmask {netmask!r} is not a netmask") from None
    if prefix is None:
        raise ConfigError(f"{reader.where(ip)}: needs netmask= or prefix=")
    return f"{address}/{prefix}"
