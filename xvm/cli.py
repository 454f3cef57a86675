"""The ``xvm`` command line: virsh's verbs, libvirt domain XML, and ``install``.

    xvm [-c URI] list [--all]               Id, Name, State, in virsh's layout
    xvm define vm.xml / create vm.xml       a persistent / a transient domain from libvirt XML
    xvm start vm --console                  start, then attach to the serial console (^] detaches)
    xvm shutdown|destroy|reboot|suspend|resume|undefine vm
    xvm dominfo vm / domstate --reason / domid / domname / domuuid / dumpxml
    xvm domrename vm new / autostart [--disable] vm / capabilities
    xvm net-list / net-define net.xml / net-start / net-destroy / net-undefine / net-dumpxml
    xvm save vm FILE / restore FILE           a running domain to a file and back
    xvm pool-list / pool-define-as NAME dir --target DIR / pool-info / pool-undefine / pool-delete
    xvm vol-list POOL / vol-create-as POOL NAME 10G / vol-delete / vol-clone / vol-snapshot
    xvm clone vm NEWNAME --snapshot golden  a new domain on clones of vm's disks
    xvm install --name vm --image default --disk /p/vm.img,size=2 --network network=lan
    xvm image build                         build (or find cached) a bootable Linux guest image

``-c/--connect URI`` names the host as :func:`xvm.connect` does (default ``$XVM_URI``, else
``xvm:///session``). A domain is named by its name, UUID or id, as in virsh. Results go to
stdout, progress and warnings to stderr; the listing and info verbs take ``--json``. The
tables (``list``, ``net-list``) and ``dominfo`` end with a blank line as in virsh; verbs that
print one value (``domid``, ``list --name``…) print just that line, for scripts. An
error is one line, ``xvm: error: <message>``, and status 1 (2 for a usage error), never a
traceback (``XVM_DEBUG=1`` shows one for an internal error).

Adding a verb: write ``_cmd_<verb>(args) -> int`` and one :class:`Verb` line in :data:`VERBS`
(``configure`` adds its options); a verb with sub-verbs (``image build``) is a :class:`Group`.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass

from .errors import ConfigError, NotFoundError, StateError, XvmError

PROG = "xvm"
ESCAPE = b"\x1d"  # ^] detaches from a console, as in virsh
# virsh's words for the states (virshDomainStateToString)
STATE_WORDS = {"running": "running", "paused": "paused", "shutoff": "shut off", "crashed": "crashed"}
STATE_REASONS = {"running": "booted", "paused": "user", "shutoff": "unknown", "crashed": "unknown"}


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    run: object  # callable(args) -> exit status
    configure: object = None  # callable(parser) adding the verb's options


@dataclass(frozen=True)
class Group:
    name: str
    help: str
    verbs: tuple


# --- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _host(args):
    import xvm

    host = xvm.connect(getattr(args, "connect", None))
    try:
        yield host
    finally:
        host.close()


def lookup_domain(host, key):
    """The domain ``key`` names: an id (digits) if a running domain has it, else a UUID or
    a name, as virsh looks domains up."""
    if key.isdigit():
        number = int(key)
        for domain in host.domains():
            if domain.id == number:
                return domain
    try:
        return host.lookup(key)
    except NotFoundError:
        raise NotFoundError(f"failed to get domain {key!r}: no domain with this name, UUID or id") from None


def table(headers, rows):
    """Rows in virsh's table layout (vshTablePrint): a space before every cell, columns two
    spaces apart, a dash row as wide as every column plus three, and the blank line virsh
    prints after a command's output."""
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "".join(f" {cell}" + (" " * (widths[i] - len(cell) + 2) if i < len(row) - 1 else "")
                       for i, cell in enumerate(row))

    out = [line(cells[0]), "-" * sum(w + 3 for w in widths)]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out) + "\n\n"  # virsh ends each command's output with a blank line


def _print_json(data):
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _warn(message):
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _progress(message):
    print(message, file=sys.stderr, flush=True)


def read_document(path, what="XML"):
    """The bytes of ``path`` (``-`` is stdin), refusing a file larger than the XML limit."""
    from .xml import MAX_XML_BYTES

    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_XML_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_XML_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {what} file {path}: {e.strerror}") from None
    if len(data) > MAX_XML_BYTES:
        raise ConfigError(f"{what} file {path} is larger than {MAX_XML_BYTES >> 20} MiB: refused")
    return data


def autostart_of(host, domain):
    # Needs a public Domain.autostart from the host; the record carries it meanwhile.
    return bool(getattr(host._record(domain), "autostart", False))


def set_autostart(host, domain, on):
    setter = getattr(host, "set_autostart", None)
    if setter is not None:
        return setter(domain, on)
    store = getattr(host, "store", None)
    if store is not None:  # the embedded host
        return store.set_autostart(str(domain.uuid), on)
    from .vmm import actions as A  # xvmd

    return host._channel.call(A.SetAutostart(domain=str(domain.uuid), on=bool(on)))


def _domain_xml(host, domain, inactive=False):
    from .xml import config_to_xml

    info = domain.info()
    domain_id = None if inactive else info.get("id")
    return config_to_xml(domain.config, settings={"autostart": autostart_of(host, domain)},
                         domain_id=domain_id)


def _cpu_seconds(pid):
    """CPU time used by the process ``pid`` (its VMM), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _state_word(state):
    return STATE_WORDS.get(state, state)


def _add_domain_arg(parser):
    parser.add_argument("domain", metavar="DOMAIN", help="domain name, UUID or id")


def _add_json(parser):
    parser.add_argument("--json", action="store_true", help="print JSON")


# --- domain verbs ------------------------------------------------------------------------------


def _configure_list(parser):
    parser.add_argument("--all", action="store_true", help="list inactive domains too")
    parser.add_argument("--inactive", action="store_true", help="list only inactive domains")
    parser.add_argument("--name", action="store_true", help="print only the names")
    parser.add_argument("--uuid", action="store_true", help="print only the UUIDs")
    _add_json(parser)


def domain_rows(host, domains):
    """One dict per domain: id, name, uuid, state, persistent, autostart."""
    rows = []
    for domain in domains:
        info = domain.info()
        rows.append({"id": info["id"], "name": domain.name, "uuid": str(info["uuid"]), "state": info["state"],
                     "persistent": domain.persistent, "autostart": autostart_of(host, domain)})
    return rows


def _cmd_list(args):
    with _host(args) as host:
        rows = domain_rows(host, host.domains())
    active = [r for r in rows if r["state"] in ("running", "paused")]
    inactive = [r for r in rows if r["state"] not in ("running", "paused")]
    active.sort(key=lambda r: r["id"])
    inactive.sort(key=lambda r: r["name"])
    shown = inactive if args.inactive else active + inactive if args.all else active
    if args.json:
        _print_json(shown)
    elif args.name or args.uuid:
        for r in shown:
            print(r["name"] if args.name else r["uuid"])
    else:
        sys.stdout.write(table(("Id", "Name", "State"),
                               [("-" if r["id"] is None else r["id"], r["name"], _state_word(r["state"]))
                                for r in shown]))
    return 0


def _configure_file(parser):
    parser.add_argument("file", metavar="FILE", help="libvirt domain XML ('-' reads stdin)")


def _configure_create(parser):
    _configure_file(parser)
    parser.add_argument("--console", action="store_true", help="attach to the console once started")


def _parsed_xml(path):
    from .xml import parse_domain_xml

    parsed = parse_domain_xml(read_document(path))
    for warning in parsed.warnings:
        _warn(f"{path}: {warning}")
    return parsed


def _cmd_define(args):
    parsed = _parsed_xml(args.file)
    with _host(args) as host:
        domain = host.define(parsed.config)
        if parsed.settings.get("autostart"):
            set_autostart(host, domain, True)
        print(f"Domain '{parsed.config.name}' defined from {args.file}")
    return 0


def _cmd_create(args):
    parsed = _parsed_xml(args.file)
    with _host(args) as host:
        domain = host.create(parsed.config)
        print(f"Domain '{parsed.config.name}' created from {args.file}", flush=True)
        if args.console:
            return attach_console(domain, since=0)  # a new domain: all its output is this boot's
    return 0


def _configure_start(parser):
    _add_domain_arg(parser)
    parser.add_argument("--console", action="store_true", help="attach to the console once started")


def _cmd_start(args):
    with _host(args) as host:
        domain = lookup_domain(host, args.domain)
        boot = domain.console.end  # what the console shows from here on is this boot's
        domain.start()
        print(f"Domain '{domain.name}' started", flush=True)
        if args.console:
            return attach_console(domain, since=boot)
    return 0


def _configure_shutdown(parser):
    _add_domain_arg(parser)
    parser.add_argument("--wait", action="store_true",
                        help="wait until the guest has powered off (xvm; virsh returns at once)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="with --wait: give up after SECONDS (default 60)")


def _cmd_shutdown(args):
    from .domain import ShutdownTimeout

    with _host(args) as host:
        domain = lookup_domain(host, args.domain)
        name = domain.name
        if args.wait:
            domain.shutdown(timeout=args.timeout)
            print(f"Domain '{name}' is shut off")
        else:
            try:
                domain.shutdown(timeout=0)  # the power button, without waiting
            except ShutdownTimeout:
                pass
            print(f"Domain '{name}' is being shutdown")
    return 0


def _simple(method, message):
    def run(args):
        with _host(args) as host:
            domain = lookup_domain(host, args.domain)
            name = domain.name
            getattr(domain, method)()
            print(message.format(name=name))
        return 0

    return run


def _configure_console(parser):
    _add_domain_arg(parser)
    parser.add_argument("--linger", type=float, default=1.0, metavar="SECONDS",
                        help="when stdin is not a terminal: keep printing the guest's output for "
                             "SECONDS after stdin ends (default 1; negative: until the domain stops)")


def _cmd_console(args):
    with _host(args) as host:
        return attach_console(lookup_domain(host, args.domain), linger=args.linger)


def _configure_dumpxml(parser):
    _add_domain_arg(parser)
    parser.add_argument("--inactive", action="store_true", help="the definition, without the running id")


def _cmd_dumpxml(args):
    with _host(args) as host:
        sys.stdout.write(_domain_xml(host, lookup_domain(host, args.domain), args.inactive))
    return 0


def _configure_dominfo(parser):
    _add_domain_arg(parser)
    _add_json(parser)


def dominfo_fields(host, domain):
    """virsh dominfo's fields, in its order (no security driver: no Security lines)."""
    info = domain.info()
    fields = {"Id": "-" if info["id"] is None else str(info["id"]), "Name": domain.name, "UUID": str(info["uuid"]),
              "OS Type": "hvm", "State": _state_word(info["state"]), "CPU(s)": str(info["vcpus"])}
    seconds = _cpu_seconds(info["pid"]) if info.get("pid") else None
    if seconds:
        fields["CPU time"] = f"{seconds:.1f}s"
    memory = f"{info['memory_mib'] * 1024} KiB"
    fields.update({"Max memory": memory, "Used memory": memory,
                   "Persistent": "yes" if domain.persistent else "no",
                   "Autostart": "enable" if autostart_of(host, domain) else "disable",
                   "Managed save": "no"})
    return fields, info, seconds


def _cmd_dominfo(args):
    with _host(args) as host:
        domain = lookup_domain(host, args.domain)
        fields, info, seconds = dominfo_fields(host, domain)
        if args.json:
            _print_json(dict(info, uuid=str(info["uuid"]), persistent=domain.persistent,
                             autostart=autostart_of(host, domain), cpu_time=seconds))
            return 0
    for label, value in fields.items():
        print(f"{label + ':':<15} {value}")
    print()  # as virsh
    return 0


def _cmd_domid(args):
    with _host(args) as host:
        domain_id = lookup_domain(host, args.domain).id
    print("-" if domain_id is None else domain_id)
    return 0


def _cmd_domname(args):
    with _host(args) as host:
        print(lookup_domain(host, args.domain).name)
    return 0


def _cmd_domuuid(args):
    with _host(args) as host:
        print(lookup_domain(host, args.domain).uuid)
    return 0


def _configure_domstate(parser):
    _add_domain_arg(parser)
    parser.add_argument("--reason", action="store_true", help="say why the domain is in this state")
    _add_json(parser)


def state_reason(info):
    if info["state"] == "crashed" and info.get("crash_reason"):
        return info["crash_reason"]
    return STATE_REASONS.get(info["state"], "unknown")


def _cmd_domstate(args):
    with _host(args) as host:
        info = lookup_domain(host, args.domain).info()
    if args.json:
        _print_json({"state": info["state"], "reason": state_reason(info)})
    elif args.reason:
        print(f"{_state_word(info['state'])} ({state_reason(info)})")
    else:
        print(_state_word(info["state"]))
    return 0


def _configure_domrename(parser):
    _add_domain_arg(parser)
    parser.add_argument("new_name", metavar="NEWNAME")


def _cmd_domrename(args):
    with _host(args) as host:
        lookup_domain(host, args.domain).rename(args.new_name)
    print("Domain successfully renamed")
    return 0


def _configure_autostart(parser):
    _add_domain_arg(parser)
    parser.add_argument("--disable", action="store_true", help="do not start the domain with the host service")


def _cmd_autostart(args):
    with _host(args) as host:
        domain = lookup_domain(host, args.domain)
        if not domain.persistent:
            raise StateError(f"cannot set autostart for transient domain {domain.name!r}")
        set_autostart(host, domain, not args.disable)
        print(f"Domain '{domain.name}' {'unmarked' if args.disable else 'marked'} as autostarted")
    return 0


def _cmd_capabilities(args):
    with _host(args) as host:
        caps = host.capabilities()
    if getattr(args, "json", False):
        _print_json(dataclasses.asdict(caps))
        return 0
    for f in dataclasses.fields(caps):
        value = getattr(caps, f.name)
        if isinstance(value, dict):
            print(f"{f.name}:")
            for key, item in value.items():
                print(f"  {key}: {_show(item)}")
        else:
            print(f"{f.name}: {_show(value)}")
    return 0


def _show(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value)) or "none"
    return str(value)


# --- the console -------------------------------------------------------------------------------


def attach_console(domain, *, stdin=None, stdout=None, linger=1.0, since=None):
    """Connect the terminal to ``domain``'s serial console until ``^]`` (on a terminal),
    the end of stdin (otherwise; then ``linger`` seconds more of output), or the domain
    stopping. ``since``: show the output from that console position on (a boot this command
    started, from its first byte: ``start --console``), not only what comes after attaching
    (``console``, as virsh). Returns the exit status."""
    name = domain.name
    info = domain.info()
    if info["state"] not in ("running", "paused"):
        raise StateError(f"cannot attach to the console of domain {name!r}: it is {_state_word(info['state'])}")
    stdin = sys.stdin.fileno() if stdin is None else stdin
    stdout = sys.stdout.fileno() if stdout is None else stdout
    session = _ConsoleSession(domain, stdin, stdout, since)
    on_tty = os.isatty(stdin)
    if on_tty:
        print(f"Connected to domain '{name}'\nEscape character is ^] (Ctrl + ])", file=sys.stderr, flush=True)
    try:
        outcome, reason = session.run(on_tty, linger)
    finally:
        session.close()
    if outcome == "stopped":
        print(f"{PROG}: domain '{name}' stopped: {reason}", file=sys.stderr)
    return 0


class _ConsoleSession:
    """Copies bytes between a terminal (or pipes) and a domain's console mirror."""

    def __init__(self, domain, stdin, stdout, since=None):
        import queue

        self.console = domain.console
        self.stdin, self.stdout = stdin, stdout
        self.events = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.console.log()  # attaches the mirror to the VMM's console server
        sys.stdout.flush()
        if since is not None:  # the output from there on, what came before attaching included
            self.unsubscribe = self.console.subscribe(self._listener, offset=min(since, self.console.end))
        else:
            self.unsubscribe = self.console.subscribe(self._listener, history=False)
        self.saved_tty = None
        self.old_sigterm = None

    def _listener(self, event, payload):  # runs on the console's reader thread: never block
        self.events.put((event, payload))
        try:
            os.write(self.wake_w, b"!")
        except BlockingIOError:
            pass

    def run(self, on_tty, linger):
        import termios
        import tty

        if on_tty:
            self.saved_tty = termios.tcgetattr(self.stdin)
            if threading.current_thread() is threading.main_thread():  # give the terminal back on SIGTERM
                self.old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
            tty.setraw(self.stdin)
        stdin_open, deadline = True, None
        while True:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
            ready, _, _ = select.select([self.wake_r] + ([self.stdin] if stdin_open else []), [], [], timeout)
            if self.wake_r in ready:
                stopped = self._guest_output()
                if stopped is not None:
                    return "stopped", stopped
            if self.stdin in ready:
                data = os.read(self.stdin, 4096)
                if not data:
                    stdin_open = False
                    if on_tty or linger == 0:
                        return "eof", None
                    if linger > 0:
                        deadline = time.monotonic() + linger
                elif on_tty and ESCAPE in data:
                    before = data[:data.index(ESCAPE)]
                    if before:
                        self.console.write(before)
                    return "detached", None
                else:
                    self.console.write(data)
            if deadline is not None and time.monotonic() >= deadline:
                return "eof", None

    def _guest_output(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while not self.events.empty():
            event, payload = self.events.get()
            if event == "data":
                _write_all(self.stdout, payload)
            elif event == "closed":
                return payload or "the domain is not running"
        return None

    def close(self):
        import termios

        if self.saved_tty is not None:
            termios.tcsetattr(self.stdin, termios.TCSADRAIN, self.saved_tty)
            if os.isatty(self.stdout):
                os.write(self.stdout, b"\r\n")
            if self.old_sigterm is not None:
                signal.signal(signal.SIGTERM, self.old_sigterm)
        self.unsubscribe()
        os.close(self.wake_r)
        os.close(self.wake_w)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


# --- install -----------------------------------------------------------------------------------


def _configure_install(parser):
    parser.add_argument("--name", "-n", required=True, help="the domain's name")
    parser.add_argument("--memory", type=int, default=256, metavar="MiB", help="memory in MiB (default 256)")
    parser.add_argument("--vcpus", type=int, default=1, help="number of vCPUs (default 1)")
    parser.add_argument("--kernel", help="the kernel to boot (bzImage or ELF)")
    parser.add_argument("--initrd", help="the initramfs")
    parser.add_argument("--cmdline", help="the kernel command line")
    parser.add_argument("--image", metavar="NAME",
                        help="'default' (the Debian cloud kernel and xvm's initramfs, built or cached), "
                             "or a kernel flavour: cloud, generic")
    parser.add_argument("--disk", action="append", default=[], metavar="PATH[,size=GiB][,serial=S][,readonly=on]",
                        help="a raw disk image (created sparse when missing and size= is given; repeatable)")
    parser.add_argument("--network", action="append", default=[],
                        metavar="network=NAME|bridge=BR[,mac=MAC][,mtu=N][,queues=N]", help="a virtio NIC (repeatable)")
    parser.add_argument("--transport", choices=("mmio", "pci"), default="mmio", help="virtio transport")
    parser.add_argument("--autostart", action="store_true", help="start the domain with the host service")
    parser.add_argument("--print-xml", action="store_true", help="print the domain XML; define nothing")
    console = parser.add_mutually_exclusive_group()
    console.add_argument("--console", action="store_true", dest="autoconsole", default=None,
                         help="attach to the console once started")
    console.add_argument("--noautoconsole", action="store_false", dest="autoconsole",
                         help="do not attach to the console (the default when stdin is not a terminal)")


def parse_options(text, first_key, what):
    """``"PATH,size=2,readonly=on"`` -> {first_key: PATH, "size": "2", "readonly": "on"}
    (virt-install's option syntax; a first item with no ``=`` is ``first_key``)."""
    out = {}
    for i, item in enumerate(text.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            if i == 0 and first_key:
                key, value = first_key, item
            else:
                raise ConfigError(f"{what} {text!r}: {item!r} is not KEY=VALUE")
        if key in out:
            raise ConfigError(f"{what} {text!r}: {key}= is given twice")
        out[key] = value
    return out


def _flag(value, what):
    if value.lower() in ("on", "yes", "true", "1"):
        return True
    if value.lower() in ("off", "no", "false", "0"):
        return False
    raise ConfigError(f"{what}: {value!r} is not on or off")


@dataclass(frozen=True)
class DiskSpec:
    path: str
    size_bytes: int = None  # the size= asked for, rounded up to whole sectors
    size_text: str = None
    serial: str = None
    readonly: bool = False
    cache: str = "none"


def parse_disk(text):
    opts = parse_options(text, "path", "--disk")
    unknown = set(opts) - {"path", "size", "serial", "readonly", "cache", "format", "bus"}
    if unknown:
        raise ConfigError(f"--disk {text!r}: unknown option(s) {', '.join(sorted(unknown))}")
    if not opts.get("path"):
        raise ConfigError(f"--disk {text!r}: no path")
    if opts.get("format", "raw") != "raw":
        raise ConfigError(f"--disk {text!r}: xvm disks are raw images, not {opts['format']}")
    if opts.get("bus", "virtio") != "virtio":
        raise ConfigError(f"--disk {text!r}: xvm disks are on the virtio bus, not {opts['bus']}")
    size = None
    if "size" in opts:
        try:
            gib = float(opts["size"])
        except ValueError:
            gib = -1
        if not gib > 0:
            raise ConfigError(f"--disk {text!r}: size={opts['size']!r} is not a positive number of GiB")
        size = -(-int(gib * (1 << 30)) // 512) * 512
    return DiskSpec(os.path.abspath(opts["path"]), size, opts.get("size"), opts.get("serial"),
                    _flag(opts.get("readonly", "off"), f"--disk {text!r} readonly"), opts.get("cache", "none"))


def parse_network(text):
    from .net import Nic

    opts = parse_options(text, None, "--network")
    unknown = set(opts) - {"network", "bridge", "mac", "mtu", "model", "queues"}
    if unknown:
        raise ConfigError(f"--network {text!r}: unknown option(s) {', '.join(sorted(unknown))}")
    if opts.pop("model", "virtio") != "virtio":
        raise ConfigError(f"--network {text!r}: xvm NICs are virtio")
    if "mtu" in opts:
        try:
            opts["mtu"] = int(opts["mtu"])
        except ValueError:
            raise ConfigError(f"--network {text!r}: mtu={opts['mtu']!r} is not an integer") from None
    if "queues" in opts:
        try:
            opts["queues"] = int(opts["queues"])
        except ValueError:
            raise ConfigError(f"--network {text!r}: queues={opts['queues']!r} is not an integer") from None
    return Nic(**opts)


def _cmd_install(args):
    import xvm

    if args.image is not None and args.kernel is not None:
        raise ConfigError("give --kernel or --image, not both")
    if args.image is None and args.kernel is None:
        raise ConfigError("give --kernel (with --initrd, --cmdline) or --image default")
    kernel, initrd, cmdline = args.kernel, args.initrd, args.cmdline
    if args.image is not None:
        kernel, initrd, default_cmdline = _install_image(args.image, args.initrd)
        cmdline = default_cmdline if cmdline is None else cmdline
    disks = [parse_disk(text) for text in args.disk]
    nics = tuple(parse_network(text) for text in args.network)
    created = []
    try:
        for spec in disks:
            if not os.path.exists(spec.path):
                if spec.size_bytes is None:
                    raise ConfigError(f"disk image {spec.path} does not exist (give size=GiB to create it)")
                if not args.print_xml:
                    _progress(f"Creating disk image {spec.path} ({spec.size_text} GiB, sparse)")
                    _create_sparse(spec.path, spec.size_bytes)
                    created.append(spec.path)
        config = xvm.DomainConfig(
            name=args.name, memory_mib=args.memory, vcpus=args.vcpus, kernel=kernel, initrd=initrd,
            cmdline=cmdline or "", nics=nics, virtio_transport=args.transport,
            disks=tuple(xvm.Disk(s.path, readonly=s.readonly, serial=s.serial, cache=s.cache) for s in disks))
        if args.print_xml:
            from .xml import config_to_xml

            sys.stdout.write(config_to_xml(config, settings={"autostart": args.autostart}))
            return 0
        with _host(args) as host:
            domain = _install_domain(host, config, args.autostart)
            created = []  # the domain owns its disks now
            print(f"Domain '{config.name}' started", flush=True)
            autoconsole = args.autoconsole
            if autoconsole is None:
                autoconsole = os.isatty(sys.stdin.fileno()) and os.isatty(sys.stdout.fileno())
            if autoconsole:
                return attach_console(domain, since=0)
        return 0
    finally:
        for path in created:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _install_domain(host, config, autostart):
    _progress(f"Defining domain '{config.name}'")
    domain = host.define(config)
    try:
        if autostart:
            set_autostart(host, domain, True)
        _progress(f"Starting domain '{config.name}'")
        domain.start()
    except BaseException:
        with contextlib.suppress(XvmError):
            domain.undefine()  # nothing is left defined when the install fails
        raise
    return domain


def _install_image(name, initrd):
    from .images import FLAVOURS, build_image

    flavour = "cloud" if name == "default" else name
    if flavour not in FLAVOURS:
        raise ConfigError(f"unknown image {name!r}: use default or one of {', '.join(sorted(FLAVOURS))}")
    if initrd is not None:
        raise ConfigError("--image brings its own initrd; give --kernel to use another")
    _progress(f"Building the {name} image (cached after the first time)")
    image = build_image(flavour, progress=_progress, vmlinux=False)
    return str(image.kernel), str(image.initrd), "console=ttyS0 quiet"


def _create_sparse(path, size):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ConfigError(f"cannot create disk image {path}: {e.strerror}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        os.unlink(path)
        raise ConfigError(f"cannot size disk image {path}: {e.strerror}") from None
    finally:
        os.close(fd)


# --- networks ----------------------------------------------------------------------------------


def _configure_net_list(parser):
    parser.add_argument("--all", action="store_true", help="list inactive networks too")
    parser.add_argument("--inactive", action="store_true", help="list only inactive networks")
    _add_json(parser)


def _cmd_net_list(args):
    with _host(args) as host:
        nets = sorted(host.networks(), key=lambda n: n.name)
        rows = [{"name": n.name, "state": "active" if n.active else "inactive", "bridge": n.bridge,
                 "address": n.address, "autostart": False, "persistent": True} for n in nets]
    shown = [r for r in rows if (r["state"] == "inactive") == args.inactive or (args.all and not args.inactive)]
    if args.json:
        _print_json(shown)
    else:
        sys.stdout.write(table(("Name", "State", "Autostart", "Persistent"),
                               [(r["name"], r["state"], "yes" if r["autostart"] else "no",
                                 "yes" if r["persistent"] else "no") for r in shown]))
    return 0


def _configure_net_file(parser):
    parser.add_argument("file", metavar="FILE", help="libvirt network XML ('-' reads stdin)")


def _cmd_net_define(args):
    from .xml import network_from_xml

    net, warnings = network_from_xml(read_document(args.file, "network XML"))
    for warning in warnings:
        _warn(f"{args.file}: {warning}")
    with _host(args) as host:
        host.define_network(net)
    print(f"Network {net.name} defined from {args.file}")
    return 0


def _configure_net_name(parser):
    parser.add_argument("network", metavar="NETWORK", help="network name")


def _net_verb(action, message):
    def run(args):
        with _host(args) as host:
            getattr(host.lookup_network(args.network), action)()
        print(message.format(name=args.network))
        return 0

    return run


def _cmd_net_dumpxml(args):
    from .xml import network_to_xml

    with _host(args) as host:
        sys.stdout.write(network_to_xml(host.lookup_network(args.network).config))
    return 0


# --- save and restore --------------------------------------------------------------------------


def _configure_save(parser):
    _add_domain_arg(parser)
    parser.add_argument("file", metavar="FILE", help="the snapshot file to write")


def _cmd_save(args):
    with _host(args) as host:
        domain = lookup_domain(host, args.domain)
        name = domain.name
        domain.save(args.file)
    print(f"Domain '{name}' saved to {args.file}")
    return 0


def _configure_restore(parser):
    parser.add_argument("file", metavar="FILE", help="a snapshot file written by save")
    parser.add_argument("--xml", metavar="XML", help="domain XML with other host resources (disk "
                        "sources, networks): save-image-dumpxml's, edited; what the guest saw must not change")


def _cmd_restore(args):
    config = None if args.xml is None else _parsed_xml(args.xml).config
    with _host(args) as host:
        host.restore(args.file, config=config)
    print(f"Domain restored from {args.file}")
    return 0


def _configure_save_image_dumpxml(parser):
    parser.add_argument("file", metavar="FILE", help="a snapshot file written by save")


def _cmd_save_image_dumpxml(args):
    from .migration.snapshot import snapshot_config
    from .xml import config_to_xml

    sys.stdout.write(config_to_xml(snapshot_config(args.file)))
    return 0


# --- storage pools and volumes -----------------------------------------------------------------

SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 10 ** 3, "m": 1 << 20, "mib": 1 << 20,
              "mb": 10 ** 6, "g": 1 << 30, "gib": 1 << 30, "gb": 10 ** 9, "t": 1 << 40, "tib": 1 << 40,
              "tb": 10 ** 12}  # virsh's scaled integers: bytes by default, k/M/G/T binary, KB/MB... decimal


def parse_scaled(text, what="size"):
    """A virsh scaled integer ("10G", "512M", "1048576") in bytes."""
    number = text.rstrip("bBkKmMgGtTiI")
    unit = text[len(number):]
    scale = SIZE_UNITS.get(unit.lower())
    if not number.isdigit() or scale is None:
        raise ConfigError(f"{what} {text!r} is not a size (bytes, or a number with k, M, G or T)")
    return int(number) * scale


def _human(size):
    """virsh's sizes in pool-info and vol-info: two decimals, the largest binary unit under 1024."""
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.2f} {unit}"


def _target(pool):
    return pool.config.path or pool.config.dataset


def _configure_pool_list(parser):
    parser.add_argument("--all", action="store_true", help="accepted for virsh's sake: every pool is active")
    parser.add_argument("--details", action="store_true", help="add the Type and Target columns")
    _add_json(parser)


def _cmd_pool_list(args):
    with _host(args) as host:
        pools = sorted(host.pools(), key=lambda p: p.name)
        rows = [{"name": p.name, "state": "active", "autostart": True, "type": p.type,
                 "target": _target(p)} for p in pools]
    if args.json:
        _print_json(rows)
    elif args.details:
        sys.stdout.write(table(("Name", "State", "Autostart", "Type", "Target"),
                               [(r["name"], r["state"], "yes", r["type"], r["target"]) for r in rows]))
    else:
        sys.stdout.write(table(("Name", "State", "Autostart"), [(r["name"], r["state"], "yes") for r in rows]))
    return 0


def _configure_pool_as(parser):
    parser.add_argument("name", metavar="NAME", help="the pool's name")
    parser.add_argument("type", metavar="TYPE", choices=("dir", "zfs"), help="dir or zfs")
    parser.add_argument("--target", metavar="DIR", help="a dir pool's directory (made if missing)")
    parser.add_argument("--source-name", metavar="DATASET",
                        help="a zfs pool's dataset, ZPOOL/NAME (made if missing)")


def _pool_as(message):
    def run(args):
        import xvm

        if args.type == "dir" and (args.target is None or args.source_name is not None):
            raise ConfigError("a dir pool needs --target DIR (and no --source-name)")
        if args.type == "zfs" and (args.source_name is None or args.target is not None):
            raise ConfigError("a zfs pool needs --source-name ZPOOL/DATASET (and no --target)")
        pool = (xvm.Pool(args.name, type="dir", path=os.path.abspath(args.target)) if args.type == "dir"
                else xvm.Pool(args.name, type="zfs", dataset=args.source_name))
        with _host(args) as host:
            host.create_pool(pool)
        print(message.format(name=args.name))
        return 0

    return run


def _configure_pool_name(parser):
    parser.add_argument("pool", metavar="POOL", help="pool name")


def _configure_pool_info(parser):
    _configure_pool_name(parser)
    _add_json(parser)


def _cmd_pool_info(args):
    with _host(args) as host:
        pool = host.lookup_pool(args.pool)
        volumes = pool.volumes()
        info = {"name": pool.name, "type": pool.type, "target": _target(pool), "state": "running",
                "persistent": True, "autostart": True, "volumes": len(volumes),
                "allocation": sum(v.allocation for v in volumes), "available": pool.available}
    if args.json:
        _print_json(info)
        return 0
    for label, value in (("Name", info["name"]), ("Type", info["type"]), ("Target", info["target"]),
                         ("State", "running"), ("Persistent", "yes"), ("Autostart", "yes"),
                         ("Volumes", info["volumes"]), ("Allocation", _human(info["allocation"])),
                         ("Available", _human(info["available"]))):
        print(f"{label + ':':<15} {value}")
    print()
    return 0


def _pool_removal(delete_volumes, message):
    def run(args):
        with _host(args) as host:
            host.lookup_pool(args.pool).destroy(delete_volumes=delete_volumes)
        print(message.format(name=args.pool))
        return 0

    return run


def _add_volume_arg(parser, name="vol", help="the volume: VOLUME with --pool, POOL/VOLUME, or its path"):
    parser.add_argument(name, metavar=name.upper(), help=help)
    parser.add_argument("--pool", metavar="POOL", help="the pool the volume is in")


def lookup_volume(host, key, pool=None):
    """The volume ``key`` names: "VOL" with ``pool``, "POOL/VOL", or a volume's path."""
    if pool is not None:
        return host.lookup_pool(pool).lookup_volume(key)
    if os.path.isabs(key):
        for each in host.pools():
            for volume in each.volumes():
                if os.path.realpath(volume.path) == os.path.realpath(key):
                    return volume
        raise NotFoundError(f"no storage volume with path {key}")
    if key.count("/") != 1:
        raise ConfigError(f"volume {key!r}: give POOL/VOLUME, a path, or --pool POOL")
    pool, name = key.split("/")
    return host.lookup_pool(pool).lookup_volume(name)


def _configure_vol_list(parser):
    _configure_pool_name(parser)
    parser.add_argument("--details", action="store_true", help="add the Capacity and Allocation columns")
    _add_json(parser)


def _cmd_vol_list(args):
    with _host(args) as host:
        volumes = sorted(host.lookup_pool(args.pool).volumes(), key=lambda v: v.name)
        rows = [{"name": v.name, "path": v.path, "capacity": v.size, "allocation": v.allocation,
                 "origin": v.origin} for v in volumes]
    if args.json:
        _print_json(rows)
    elif args.details:
        sys.stdout.write(table(("Name", "Path", "Type", "Capacity", "Allocation"),
                               [(r["name"], r["path"], "file", _human(r["capacity"]), _human(r["allocation"]))
                                for r in rows]))
    else:
        sys.stdout.write(table(("Name", "Path"), [(r["name"], r["path"]) for r in rows]))
    return 0


def _configure_vol_create_as(parser):
    _configure_pool_name(parser)
    parser.add_argument("name", metavar="NAME", help="the new volume's name")
    parser.add_argument("capacity", metavar="CAPACITY", help="its size: bytes, or with k, M, G, T (10G)")
    parser.add_argument("--format", default="raw", help="raw (the only format)")


def _cmd_vol_create_as(args):
    size = parse_scaled(args.capacity, "capacity")
    with _host(args) as host:
        host.lookup_pool(args.pool).create_volume(args.name, size, format=args.format)
    print(f"Vol {args.name} created")
    return 0


def _cmd_vol_delete(args):
    with _host(args) as host:
        volume = lookup_volume(host, args.vol, args.pool)
        name = volume.name
        volume.delete()
    print(f"Vol {name} deleted")
    return 0


def _configure_vol_clone(parser):
    _add_volume_arg(parser)
    parser.add_argument("newname", metavar="NEWNAME", help="the clone's name (in the same pool)")
    parser.add_argument("--snapshot", metavar="SNAPSHOT",
                        help="clone this snapshot of the volume (default: a snapshot made now, named "
                             "after the clone, which the clone depends on)")


def _cmd_vol_clone(args):
    with _host(args) as host:
        volume = lookup_volume(host, args.vol, args.pool)
        snapshot = args.snapshot
        if snapshot is None:
            snapshot = f"for-{args.newname}"
            volume.snapshot(snapshot)
        volume.clone(snapshot, args.newname)
        name = volume.name
    print(f"Vol {args.newname} cloned from {name}")
    return 0


def _configure_vol_snapshot(parser):
    _add_volume_arg(parser)
    parser.add_argument("snapshot", metavar="SNAPSHOT", help="the snapshot's name")


def _cmd_vol_snapshot(args):
    with _host(args) as host:
        volume = lookup_volume(host, args.vol, args.pool)
        volume.snapshot(args.snapshot)
    print(f"Vol {volume.name} snapshot {args.snapshot} created")
    return 0


def _cmd_vol_rollback(args):
    with _host(args) as host:
        volume = lookup_volume(host, args.vol, args.pool)
        volume.rollback(args.snapshot)
    print(f"Vol {volume.name} rolled back to snapshot {args.snapshot}")
    return 0


def _configure_vol_snapshot_list(parser):
    _add_volume_arg(parser)
    _add_json(parser)


def _cmd_vol_snapshot_list(args):
    with _host(args) as host:
        snapshots = lookup_volume(host, args.vol, args.pool).snapshots()
    rows = [{"name": s.name, "created": s.created, "method": s.method} for s in snapshots]
    if args.json:
        _print_json(rows)
    else:
        sys.stdout.write(table(("Name", "Creation Time", "Method"),
                               [(r["name"], time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(r["created"])),
                                 r["method"]) for r in rows]))
    return 0


def _configure_clone(parser):
    parser.add_argument("domain", metavar="DOMAIN", help="the source domain (shut off, its disks in pools)")
    parser.add_argument("name", metavar="NEWNAME", help="the new domain's name")
    parser.add_argument("--snapshot", default="golden", metavar="SNAPSHOT",
                        help="the disks' snapshot to clone (default: golden)")


def _cmd_clone(args):
    with _host(args) as host:
        source = lookup_domain(host, args.domain)
        source_name = source.name
        clone = host.clone_domain(source, args.name, snapshot=args.snapshot)
        disks = [d.volume for d in clone.config.disks]
    print(f"Domain '{args.name}' cloned from '{source_name}'" + (f" (disks {', '.join(disks)})" if disks else ""))
    return 0


# --- images ------------------------------------------------------------------------------------


def _configure_image_build(parser):
    from .images import FLAVOURS

    parser.add_argument("--flavour", "--flavor", default="cloud", choices=sorted(FLAVOURS),
                        help="Debian kernel flavour (default: cloud)")
    parser.add_argument("--module", "-m", action="append", default=[], dest="modules", metavar="NAME",
                        help="an extra kernel module to load at boot (repeatable)")
    parser.add_argument("--no-download", action="store_true",
                        help="fail instead of downloading a kernel package that is not in the cache")
    parser.add_argument("--no-vmlinux", action="store_true", help="do not extract the uncompressed kernel")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress messages")


def _cmd_image_build(args):
    from .images import build_image

    image = build_image(args.flavour, progress=None if args.quiet else _progress, extra_modules=args.modules,
                        download=not args.no_download, vmlinux=not args.no_vmlinux)
    print(f"kernel: {image.kernel}")
    print(f"initrd: {image.initrd}")
    print(f"vmlinux: {image.vmlinux if image.vmlinux is not None else '-'}")
    print(f"release: {image.release}")
    print(f"modules: {' '.join(image.modules)}")
    return 0


# --- shell completion --------------------------------------------------------------------------


def _configure_completion(parser):
    parser.add_argument("shell", choices=("bash",), help="the shell")


def _cmd_completion(args):
    verbs = " ".join(v.name for v in VERBS)
    domain_verbs = " ".join(v.name for v in VERBS if isinstance(v, Verb) and v.configure in _DOMAIN_CONFIGURES)
    net_verbs = "net-start net-destroy net-undefine net-dumpxml"
    print(f"""# bash completion for xvm: eval "$(xvm completion bash)"
_xvm() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} verb="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in -c|--connect) ((i++)) ;; -*) ;; *) verb=${{COMP_WORDS[i]}}; break ;; esac
    done
    if [[ -z $verb ]]; then COMPREPLY=($(compgen -W "{verbs}" -- "$cur")); return; fi
    case " {domain_verbs} " in *" $verb "*)
        [[ $cur == -* ]] || COMPREPLY=($(compgen -W "$(xvm list --all --name 2>/dev/null)" -- "$cur")); return ;;
    esac
    case " {net_verbs} " in *" $verb "*)
        COMPREPLY=($(compgen -W "$(xvm net-list --all --json 2>/dev/null | sed -n 's/ *"name": "\\(.*\\)",/\\1/p')" -- "$cur"));
        return ;;
    esac
    COMPREPLY=($(compgen -f -- "$cur"))
}}
complete -F _xvm xvm""")
    return 0


# --- the table of verbs ------------------------------------------------------------------------

_DOMAIN_CONFIGURES = set()


def _domain_verb(name, help, run, configure=_add_domain_arg):
    _DOMAIN_CONFIGURES.add(configure)
    return Verb(name, help, run, configure)



# --- live migration ----------------------------------------------------------------------------


def _configure_migrate(parser):
    _add_domain_arg(parser)
    parser.add_argument("uri", metavar="URI", help="the destination: xvm+tls://ADDR:PORT (xvm+tcp:// with --insecure)")
    parser.add_argument("--downtime", type=float, default=300, metavar="MS",
                        help="the longest pause allowed at the end (default 300 ms)")
    parser.add_argument("--bandwidth", type=float, default=None, metavar="MIB_PER_S", help="at most this rate")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="give up after SECONDS")
    parser.add_argument("--tls-dir", default=None, metavar="DIR",
                        help="client-cert.pem, client-key.pem, ca-cert.pem (default: $XVM_TLS_DIR, /etc/pki/xvm)")
    parser.add_argument("--insecure", action="store_true", help="allow xvm+tcp:// (memory sent unencrypted)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_json(parser)


def _cmd_migrate(args):
    """``xvm migrate NAME URI``: a progress bar of the bytes sent; Ctrl-C aborts (the domain
    keeps running here)."""
    from .progress import bar

    with _host(args) as host:
        domain = lookup_domain(host, args.domain)
        name = domain.name
        progress_bar = bar(None, desc=f"migrating {name}", unit="B", force=False if args.quiet else None)
        try:
            def progress(status):
                progress_bar.total = max(status["memory_bytes"], status["bytes_sent"] + status["remaining_bytes"])
                progress_bar.update(status["bytes_sent"] - progress_bar.n)
                throttle = f", throttled {status['throttle_pct']}%" if status["throttle_pct"] else ""
                dirty = status["remaining_bytes"] // 4096
                progress_bar.set_postfix_str(f"{status['state']}, pass {status['iterations'] + 1}, "
                                             f"{dirty} dirty pages{throttle}", refresh=False)

            stats = domain.migrate(args.uri, downtime_ms=args.downtime, bandwidth=args.bandwidth,
                                   timeout_s=args.timeout, tls_dir=args.tls_dir, insecure=args.insecure,
                                   progress=progress)
        finally:
            progress_bar.close()
    if args.json:
        _print_json(stats.to_dict())
        return 0
    downtime = "?" if stats.downtime_ms is None else f"{stats.downtime_ms:.0f} ms"
    print(f"Domain '{name}' migrated to {args.uri} in {stats.total_ms / 1000:.1f} s: downtime {downtime}, "
          f"{stats.iterations} passes, {stats.bytes_sent / (1 << 20):.1f} MiB sent"
          + (f", auto-converged at {stats.throttle_pct}% throttle" if stats.throttle_pct else ""), flush=True)
    return 0


VERBS = (
    Verb("list", "list domains (Id, Name, State)", _cmd_list, _configure_list),
    Verb("define", "define a domain from libvirt domain XML", _cmd_define, _configure_file),
    Verb("create", "start a transient domain from libvirt domain XML", _cmd_create, _configure_create),
    _domain_verb("undefine", "forget a domain (it must not be running)",
                 _simple("undefine", "Domain '{name}' has been undefined")),
    _domain_verb("start", "start a defined domain", _cmd_start, _configure_start),
    _domain_verb("shutdown", "ask the guest to power off (ACPI power button)", _cmd_shutdown, _configure_shutdown),
    _domain_verb("destroy", "stop a domain at once", _simple("destroy", "Domain '{name}' destroyed")),
    _domain_verb("reboot", "reset a domain: the guest starts again", _simple("reboot", "Domain '{name}' is being rebooted")),
    _domain_verb("suspend", "pause a domain's vCPUs", _simple("pause", "Domain '{name}' suspended")),
    _domain_verb("resume", "resume a paused domain", _simple("resume", "Domain '{name}' resumed")),
    _domain_verb("console", "connect to a domain's serial console (^] detaches)", _cmd_console, _configure_console),
    _domain_verb("dumpxml", "print a domain's libvirt XML", _cmd_dumpxml, _configure_dumpxml),
    _domain_verb("dominfo", "show a domain's information", _cmd_dominfo, _configure_dominfo),
    _domain_verb("domid", "print a domain's id ('-' when it is not running)", _cmd_domid),
    _domain_verb("domname", "print a domain's name", _cmd_domname),
    _domain_verb("domuuid", "print a domain's UUID", _cmd_domuuid),
    _domain_verb("domstate", "print a domain's state", _cmd_domstate, _configure_domstate),
    _domain_verb("domrename", "rename a domain", _cmd_domrename, _configure_domrename),
    _domain_verb("autostart", "start a domain with the host service (or not: --disable)", _cmd_autostart,
                 _configure_autostart),
    Verb("top", "the host's domains, live (CPU, block and network rates)",
         lambda a: __import__("xvm.top", fromlist=["main"]).main(a),
         lambda p: __import__("xvm.top", fromlist=["configure"]).configure(p)),
    Verb("capabilities", "show what this host's KVM can do (hvm, pv, vCPUs, KVM capabilities)",
         _cmd_capabilities, _add_json),
    Verb("migrate", "live-migrate a running domain to another host (xvm+tls://ADDR:PORT)", _cmd_migrate,
         _configure_migrate),
    Verb("install", "define and start a domain from a kernel or the default image (like virt-install)",
         _cmd_install, _configure_install),
    Verb("net-list", "list networks", _cmd_net_list, _configure_net_list),
    Verb("net-define", "define a network from libvirt network XML", _cmd_net_define, _configure_net_file),
    Verb("net-start", "start a network (create its bridge)", _net_verb("start", "Network {name} started"),
         _configure_net_name),
    Verb("net-destroy", "stop a network", _net_verb("destroy", "Network {name} destroyed"), _configure_net_name),
    Verb("net-undefine", "forget an inactive network", _net_verb("undefine", "Network {name} has been undefined"),
         _configure_net_name),
    Verb("net-dumpxml", "print a network's libvirt XML", _cmd_net_dumpxml, _configure_net_name),
    _domain_verb("save", "save a running domain's state to a file (it ends shut off)", _cmd_save,
                 _configure_save),
    Verb("restore", "start a domain from a file written by save", _cmd_restore, _configure_restore),
    Verb("save-image-dumpxml", "print the domain XML saved in a file written by save", _cmd_save_image_dumpxml,
         _configure_save_image_dumpxml),
    _domain_verb("clone", "a new domain whose disks are clones of a domain's disks at a snapshot",
                 _cmd_clone, _configure_clone),
    Verb("pool-list", "list storage pools", _cmd_pool_list, _configure_pool_list),
    Verb("pool-define-as", "define a storage pool (dir --target DIR, zfs --source-name DATASET)",
         _pool_as("Pool {name} defined"), _configure_pool_as),
    Verb("pool-create-as", "create a storage pool (the same as pool-define-as: pools are always active)",
         _pool_as("Pool {name} created"), _configure_pool_as),
    Verb("pool-info", "show a storage pool's information", _cmd_pool_info, _configure_pool_info),
    Verb("pool-undefine", "forget a storage pool, leaving its volumes' data in place",
         _pool_removal(False, "Pool {name} has been undefined"), _configure_pool_name),
    Verb("pool-delete", "forget a storage pool and delete its volumes (and what xvm made for it)",
         _pool_removal(True, "Pool {name} deleted"), _configure_pool_name),
    Verb("vol-list", "list a pool's volumes", _cmd_vol_list, _configure_vol_list),
    Verb("vol-create-as", "create a sparse raw volume", _cmd_vol_create_as, _configure_vol_create_as),
    Verb("vol-delete", "delete a volume", _cmd_vol_delete, _add_volume_arg),
    Verb("vol-clone", "clone a volume (from a snapshot)", _cmd_vol_clone, _configure_vol_clone),
    Verb("vol-snapshot", "snapshot a volume", _cmd_vol_snapshot, _configure_vol_snapshot),
    Verb("vol-snapshot-list", "list a volume's snapshots", _cmd_vol_snapshot_list, _configure_vol_snapshot_list),
    Verb("vol-rollback", "roll a volume back to a snapshot", _cmd_vol_rollback, _configure_vol_snapshot),
    Group("image", "guest images", (
        Verb("build", "build a bootable Linux guest image (Debian kernel + busybox initramfs)",
             _cmd_image_build, _configure_image_build),
    )),
    Verb("completion", "print a shell completion script", _cmd_completion, _configure_completion),
)


# --- plumbing ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser(verbs=VERBS):
    parser = _Parser(prog=PROG, description="xvm: virtual machines on Linux KVM")
    parser.add_argument("-c", "--connect", metavar="URI",
                        help="the host: xvm:///session (default, or $XVM_URI), xvm:///system, "
                             "xvm+unix:///path/to/xvmd.sock")
    _add(parser, verbs, "verb")
    return parser


def _add(parser, verbs, dest):
    sub = parser.add_subparsers(dest=dest, metavar="VERB", required=True, parser_class=_Parser)
    for verb in verbs:
        child = sub.add_parser(verb.name, help=verb.help, description=verb.help)
        if isinstance(verb, Group):
            _add(child, verb.verbs, f"{dest}_{verb.name}")
        else:
            if verb.configure is not None:
                verb.configure(child)
            child.set_defaults(run=verb.run)


def main(argv=None):
    """Run the ``xvm`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except XvmError as e:
        _error(str(e))
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # stdout's reader went away: say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        if os.environ.get("XVM_DEBUG"):
            raise
        _error(f"internal error: {type(e).__name__}: {e} (XVM_DEBUG=1 shows the traceback)")
        return 1


def _error(message):
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
