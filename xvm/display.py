"""How xvm's objects show themselves in Jupyter (and anywhere IPython displays).

Each object's ``_repr_mimebundle_(include=None, exclude=None)`` delegates here and gets
``{"text/plain": ..., "text/html": ...}``: HTML built with :func:`html.escape` from plain
data (no scripts, no external assets), and the same facts as plain text.  Guest output
(a domain's console) is escaped and stripped of control characters, so a guest that
prints ``<script>`` shows that text and nothing runs.

The figures shown are also what ``xvm top`` and xvmd's metrics report:
:func:`vcpu_seconds` (from ``/proc/<pid>/task/<tid>/schedstat`` of the VMM's vCPU
threads) and :func:`device_counters` (from ``dom.stats()["devices"]``).

:func:`console_widget` is ``dom.console.widget()``: a live console for notebooks
(ipywidgets, ``pip install 'xvm[jupyter]'``).
"""
import codecs
import dataclasses
import html
import os
import queue
import re
import threading
import time

from .errors import XvmError

CONSOLE_TAIL_LINES = 20
CONSOLE_TAIL_BYTES = 8192
JUPYTER_EXTRA = "pip install 'xvm[jupyter]'"

_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

_TABLE = 'style="border-collapse:collapse;text-align:left"'
_CELL = 'style="padding:1px 8px;text-align:left"'
_PRE = ('style="background:#111;color:#ddd;padding:4px 6px;max-height:24em;overflow:auto;'
        'white-space:pre-wrap"')
_STATE_COLOURS = {"running": "#2a7", "paused": "#c90", "crashed": "#c33", "shutoff": "#888",
                  "active": "#2a7", "inactive": "#888"}


# -- figures ---------------------------------------------------------------------------------
def vcpu_seconds(info):
    """CPU time (seconds) of each vCPU thread of a domain's VMM, from ``info()``
    (``pid``, ``vcpu_thread_ids``); [] when it is not running or /proc says nothing."""
    pid = info.get("pid")
    out = []
    for tid in info.get("vcpu_thread_ids") or ():
        if pid is None or tid is None:
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out.append(int(f.read().split()[0]) / 1e9)  # ns on a CPU, waiting, timeslices
        except (OSError, ValueError, IndexError):
            continue
    return out


def cpu_seconds(info):
    """CPU time (seconds) of all the domain's vCPUs; None when it has none running."""
    times = vcpu_seconds(info)
    return sum(times) if times else None


def device_kind(name):
    """``"virtio-blk:/img"`` -> ``("blk", "/img")``; an unknown shape -> ``(name, "")``."""
    prefix, _, ident = (name or "").partition(":")
    return prefix.removeprefix("virtio-"), ident


def device_counters(stats):
    """``[(kind, device, {counter: int})]`` of ``dom.stats()``: the devices' metrics."""
    out = []
    for device in stats.get("devices") or ():
        kind, ident = device_kind(device.get("name"))
        counters = {k: v for k, v in (device.get("metrics") or {}).items()
                    if isinstance(v, int) and not isinstance(v, bool)}
        out.append((kind, ident, counters))
    return out


def format_seconds(value):
    return "-" if value is None else f"{value:.2f} s"


def format_mib(value):
    if value is None:
        return "-"
    return f"{value / 1024:g} GiB" if value >= 1024 and value % 1024 == 0 else f"{value} MiB"


def format_bytes(value):
    """``67108864`` -> ``"64 MiB"``, ``1610612736`` -> ``"1.5 GiB"``; None -> ``"-"``."""
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value} {unit}" if unit == "B" else f"{value:.1f}".removesuffix(".0") + f" {unit}"
        value /= 1024


def format_time(value):
    return "-" if value is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


# -- text from guests -----------------------------------------------------------------------
def clean_text(data):
    """Guest output (bytes or str) as printable text: UTF-8 (bad bytes replaced), ANSI
    escapes removed, ``\\r`` dropped, other control characters shown as U+FFFD."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8", "replace")
    data = _ANSI.sub("", data).replace("\r", "")
    return _CONTROL.sub("\ufffd", data)


def console_tail(data, lines=CONSOLE_TAIL_LINES, limit=CONSOLE_TAIL_BYTES):
    """The last ``lines`` lines (at most ``limit`` bytes) of console output, cleaned."""
    text = clean_text(bytes(data[-limit:]))
    return "\n".join(text.split("\n")[-lines:])


# -- HTML building blocks -------------------------------------------------------------------
def esc(value):
    return html.escape("-" if value is None else str(value), quote=True)


def badge(state):
    colour = _STATE_COLOURS.get(str(state), "#555")
    return f'<span style="color:{colour};font-weight:bold">{esc(state)}</span>'


def table(headers, rows, cls, raw_columns=()):
    """An HTML table; every cell escaped except the columns in ``raw_columns`` (built here)."""
    head = "".join(f"<th {_CELL}>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f"<td {_CELL}>{cell if i in raw_columns else esc(cell)}</td>"
                        for i, cell in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td {_CELL} colspan="{len(headers)}"><em>none</em></td></tr>')
    return (f'<table class="{cls}" {_TABLE}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def fields_table(pairs, cls, raw=()):
    """A two-column table of (name, value) pairs; names in ``raw`` carry built HTML."""
    rows = "".join(f'<tr><th {_CELL}>{esc(k)}</th><td {_CELL}>{v if k in raw else esc(v)}</td></tr>'
                   for k, v in pairs)
    return f'<table class="{cls}" {_TABLE}><tbody>{rows}</tbody></table>'


def text_table(headers, rows):
    rows = [[str("-" if c is None else c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers)] + [line(r) for r in rows])


def bundle(text, html_text, include=None, exclude=None):
    """The mime bundle ``_repr_mimebundle_`` returns, filtered as IPython asks."""
    data = {"text/plain": text, "text/html": html_text}
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return data


def _section(title, body):
    return f"<details open><summary><b>{esc(title)}</b></summary>{body}</details>"


# -- domains ---------------------------------------------------------------------------------
@dataclasses.dataclass
class DomainFacts:
    """What a domain's display shows, gathered once (plain data: render without a host)."""

    info: dict
    config: object = None  # DomainConfig, or None if it could not be read
    console: bytes = b""
    cpu: float = None
    error: str = None


def domain_facts(dom):
    try:
        info = dom.info()
    except XvmError as e:
        return DomainFacts(info={"uuid": str(dom.uuid)}, error=str(e))
    facts = DomainFacts(info=info, cpu=cpu_seconds(info))
    try:
        facts.config = dom.config
        facts.console = dom.console.log()
    except XvmError as e:
        facts.error = str(e)
    return facts


DOMAIN_HEADERS = ("id", "name", "state", "vCPUs", "memory", "CPU time")


def domain_row(info, cpu):
    return (info.get("id"), info.get("name"), info.get("state"), info.get("vcpus"),
            format_mib(info.get("memory_mib")), format_seconds(cpu))


def render_domain(facts, include=None, exclude=None):
    info, cfg = facts.info, facts.config
    name = info.get("name", info.get("uuid"))
    state = info.get("state", "unknown")
    identity = [("name", name), ("uuid", info.get("uuid")), ("state", state), ("id", info.get("id"))]
    if info.get("crash_reason"):
        identity.append(("crash reason", info["crash_reason"]))
    if info.get("pid"):
        identity += [("VMM pid", info["pid"]), ("boots", info.get("boot_count"))]
    if info.get("started_at"):
        identity.append(("started", format_time(info["started_at"])))
    identity.append(("CPU time", format_seconds(facts.cpu)))
    text = [f"Domain {name!r} {state}" + (f" id={info['id']}" if info.get("id") is not None else "")]
    if info.get("crash_reason"):
        text.append(f"  crashed: {info['crash_reason']}")
    parts = [f'<div class="xvm-domain"><h4>Domain {esc(name)} {badge(state)}</h4>',
             fields_table(identity, "xvm-identity")]
    if facts.error:
        parts.append(f'<p class="xvm-error">{esc(facts.error)}</p>')
        text.append(f"  error: {facts.error}")
    if cfg is not None:
        config = [("vCPUs", cfg.vcpus), ("memory", format_mib(cfg.memory_mib)), ("kernel", cfg.kernel),
                  ("initrd", cfg.initrd), ("cmdline", cfg.cmdline or ""), ("virtio", cfg.virtio_transport)]
        if cfg.disable_cpu_features:
            config.append(("CPU features off", ", ".join(cfg.disable_cpu_features)))
        parts.append(_section("config", fields_table(config, "xvm-config")))
        text.append(f"  {cfg.vcpus} vCPU(s), {format_mib(cfg.memory_mib)}, kernel {cfg.kernel}")
        disks = [(d.path, "yes" if d.readonly else "no", d.serial, d.cache) for d in cfg.disks]
        parts.append(_section(f"disks ({len(disks)})",
                              table(("path", "read-only", "serial", "cache"), disks, "xvm-disks")))
        nics = [(n.network, n.bridge, n.mac, n.mtu) for n in cfg.nics]
        parts.append(_section(f"NICs ({len(nics)})",
                              table(("network", "bridge", "MAC", "MTU"), nics, "xvm-nics")))
        for d in cfg.disks:
            text.append(f"  disk {d.path}{' (read-only)' if d.readonly else ''}")
        for n in cfg.nics:
            text.append(f"  nic {n.network or n.bridge} {n.mac or ''}".rstrip())
        sched = getattr(cfg, "sched", None)
        if sched is not None:
            items = dataclasses.asdict(sched) if dataclasses.is_dataclass(sched) else dict(sched)
            parts.append(_section("scheduler", fields_table(list(items.items()), "xvm-sched")))
            text.append("  scheduler: " + ", ".join(f"{k}={v}" for k, v in items.items()))
    tail = console_tail(facts.console)
    parts.append(_section("console (last lines)", f'<pre class="xvm-console" {_PRE}>{esc(tail)}</pre>'))
    if tail:
        text.append("  console: " + tail.rstrip("\n").split("\n")[-1])
    parts.append("</div>")
    return bundle("\n".join(text), "".join(parts), include, exclude)


def domain_bundle(dom, include=None, exclude=None):
    return render_domain(domain_facts(dom), include, exclude)


# -- hosts -----------------------------------------------------------------------------------
def host_facts(host):
    """``(rows, error)``: one :func:`domain_row` per domain of ``host``."""
    rows = []
    try:
        domains = host.domains()
    except XvmError as e:
        return rows, str(e)
    for dom in domains:
        try:
            info = dom.info()
        except XvmError as e:
            rows.append((None, str(dom.uuid), f"unknown ({e})", None, "-", "-"))
            continue
        rows.append(domain_row(info, cpu_seconds(info)))
    rows.sort(key=lambda r: (r[0] is None, r[0] or 0, str(r[1])))
    return rows, None


def render_host(uri, rows, error=None, include=None, exclude=None):
    html_rows = [(r[0], r[1], badge(r[2])) + tuple(r[3:]) for r in rows]
    parts = [f'<div class="xvm-host"><h4>Host {esc(uri)}: {len(rows)} domain(s)</h4>',
             table(DOMAIN_HEADERS, html_rows, "xvm-domains", raw_columns=(2,))]
    text = [f"Host {uri}: {len(rows)} domain(s)", text_table(DOMAIN_HEADERS, rows)]
    if error:
        parts.append(f'<p class="xvm-error">{esc(error)}</p>')
        text.append(f"error: {error}")
    parts.append("</div>")
    return bundle("\n".join(text), "".join(parts), include, exclude)


def host_bundle(host, include=None, exclude=None):
    rows, error = host_facts(host)
    return render_host(host.uri, rows, error, include, exclude)


# -- networks and capabilities ---------------------------------------------------------------
def network_bundle(net, include=None, exclude=None):
    try:
        ports = ", ".join(net.ports()) or "none"
    except XvmError as e:
        ports = f"unknown ({e})"
    except OSError as e:
        ports = f"unknown ({e.strerror})"
    state = net.state.value
    pairs = [("name", net.name), ("state", state), ("bridge", net.bridge), ("address", net.address),
             ("MTU", net.config.mtu), ("bridge made by xvm", "yes" if net.created else "no"), ("ports", ports)]
    html_text = (f'<div class="xvm-network"><h4>Network {esc(net.name)} {badge(state)}</h4>'
                 f'{fields_table(pairs, "xvm-network-fields")}</div>')
    text = f"Network {net.name!r} {state}: bridge {net.bridge}" + (f", {net.address}" if net.address else "")
    return bundle(text, html_text, include, exclude)


def capabilities_bundle(caps, include=None, exclude=None):
    pairs = [("KVM API", caps.kvm_api_version), ("virtualization", caps.virtualization),
             ("unmodified guests (hvm)", "yes" if caps.hvm else "no"),
             ("PVM-contract guests (pv)", "yes" if caps.pv else "no"),
             ("max vCPUs", caps.max_vcpus), ("recommended vCPUs", caps.recommended_vcpus),
             ("memory slots", caps.memory_slots),
             ("missing capabilities", ", ".join(caps.missing_capabilities) or "none")]
    kvm = table(("capability", "value"), sorted(caps.kvm_capabilities.items()), "xvm-kvm-caps")
    html_text = (f'<div class="xvm-capabilities"><h4>Capabilities</h4>'
                 f'{fields_table(pairs, "xvm-caps")}{_section("KVM extensions", kvm)}</div>')
    text = "\n".join(["Capabilities"] + [f"  {k}: {v}" for k, v in pairs])
    return bundle(text, html_text, include, exclude)


# -- storage pools and volumes ---------------------------------------------------------------
VOLUME_HEADERS = ("name", "size", "allocation", "snapshots", "origin", "made by", "in use by")
SNAPSHOT_HEADERS = ("name", "created", "made by")


_STORAGE_ERRORS = (XvmError, OSError)  # StorageError is an XvmError; a dir pool's stat an OSError


def _why(error):
    if isinstance(error, OSError) and not isinstance(error, XvmError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)


def _volume_row(volume, errors):
    """One :data:`VOLUME_HEADERS` row of ``volume``; a field that cannot be read is "unknown",
    and why is added to ``errors`` (once)."""
    def read(getter):
        try:
            return getter()
        except _STORAGE_ERRORS as e:
            if _why(e) not in errors:
                errors.append(_why(e))
            return "unknown"

    snapshots = read(lambda: ", ".join(s.name for s in volume.snapshots()) or "none")
    return (volume.name, read(lambda: format_bytes(volume.size)),
            read(lambda: format_bytes(volume.allocation)), snapshots, read(lambda: volume.origin),
            read(lambda: volume.method or "created"), read(volume.user) or "-")


def pool_facts(pool):
    """``(fields, volume rows, error)`` of a StoragePool, read once."""
    config = pool.config
    fields = [("name", pool.name), ("type", pool.type),
              ("location", config.path if pool.type == "dir" else config.dataset),
              ("backend", pool.backend.description)]
    rows, errors = [], []
    try:
        fields.append(("available", format_bytes(pool.available)))
    except _STORAGE_ERRORS as e:
        fields.append(("available", "unknown"))
        errors.append(_why(e))
    try:
        rows = [_volume_row(volume, errors) for volume in pool.volumes()]
    except _STORAGE_ERRORS as e:
        errors.append(_why(e))
    return fields, rows, "; ".join(errors) or None


def render_pool(fields, rows, error=None, include=None, exclude=None):
    facts = dict(fields)
    title = f"StoragePool {facts['name']} ({facts['type']}, {facts['location']})"
    parts = [f'<div class="xvm-pool"><h4>{esc(title)}: {len(rows)} volume(s)</h4>',
             fields_table(fields, "xvm-pool-fields"),
             table(VOLUME_HEADERS, rows, "xvm-volumes")]
    text = [f"{title}: {len(rows)} volume(s), {facts.get('available', '-')} available",
            text_table(VOLUME_HEADERS, rows)]
    if error:
        parts.append(f'<p class="xvm-error">{esc(error)}</p>')
        text.append(f"error: {error}")
    parts.append("</div>")
    return bundle("\n".join(text), "".join(parts), include, exclude)


def pool_bundle(pool, include=None, exclude=None):
    return render_pool(*pool_facts(pool), include=include, exclude=exclude)


def volume_facts(volume):
    """``(fields, snapshot rows, clone names, error)`` of a Volume, read once."""
    fields = [("volume", volume.key)]
    snapshots, clones, errors = [], [], []
    try:
        row = dict(zip(VOLUME_HEADERS, _volume_row(volume, errors)))
        fields += [("path", volume.path), ("size", row["size"]), ("allocation", row["allocation"]),
                   ("format", volume.format), ("made by", row["made by"]), ("origin", row["origin"]),
                   ("created", format_time(volume.created)), ("in use by", row["in use by"])]
        snapshots = [(s.name, format_time(s.created), s.method) for s in volume.snapshots()]
        clones = [clone.key for clone in volume.dependents()]
    except _STORAGE_ERRORS as e:
        errors.append(_why(e))
    return fields, snapshots, clones, "; ".join(errors) or None


def render_volume(fields, snapshots, clones=(), error=None, include=None, exclude=None):
    facts = dict(fields)
    parts = [f'<div class="xvm-volume"><h4>Volume {esc(facts["volume"])}</h4>',
             fields_table(fields, "xvm-volume-fields"),
             _section(f"snapshots ({len(snapshots)})", table(SNAPSHOT_HEADERS, snapshots, "xvm-snapshots"))]
    text = [f"Volume {facts['volume']}" + (f": {facts['size']}, {facts['path']}" if "path" in facts else "")]
    if snapshots:
        text.append("  snapshots: " + ", ".join(s[0] for s in snapshots))
    if clones:
        parts.append(_section(f"clones ({len(clones)})", table(("volume",), [(c,) for c in clones],
                                                               "xvm-clones")))
        text.append("  clones: " + ", ".join(clones))
    if facts.get("in use by", "-") != "-":
        text.append(f"  in use by {facts['in use by']}")
    if error:
        parts.append(f'<p class="xvm-error">{esc(error)}</p>')
        text.append(f"  error: {error}")
    parts.append("</div>")
    return bundle("\n".join(text), "".join(parts), include, exclude)


def volume_bundle(volume, include=None, exclude=None):
    return render_volume(*volume_facts(volume), include=include, exclude=exclude)


# -- the live console widget -----------------------------------------------------------------
def _ipywidgets():
    try:
        import ipywidgets
    except ImportError:
        raise XvmError(f"the console widget needs ipywidgets: {JUPYTER_EXTRA}") from None
    return ipywidgets


class ConsoleWidget:
    """A live console in a notebook: output as it arrives, an input line, a detach button.

    Output reaches the page the way ipywidgets documents for threads: the ``Output`` is
    displayed from the main thread and a worker thread calls ``append_stdout``.  The
    console's listener only queues (it runs on the guest's output path and must not
    block).  :meth:`close` unsubscribes, ends the worker and closes the widgets.
    """

    POLL = 0.05

    def __init__(self, console, *, history=True, title=None):
        widgets = _ipywidgets()
        self.console = console
        self.output = widgets.Output(layout=widgets.Layout(
            max_height="24em", overflow="auto", border="1px solid #888"))
        self.input = widgets.Text(placeholder="type a line, Enter sends it", continuous_update=False,
                                  layout=widgets.Layout(width="100%"))
        self.status = widgets.HTML(value="")
        self.detach_button = widgets.Button(description="detach", tooltip="stop following the console")
        self.box = widgets.VBox([widgets.HBox([widgets.HTML(value=f"<b>{esc(title or 'console')}</b>"),
                                               self.status, self.detach_button]),
                                 self.output, self.input])
        self._events = queue.Queue()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._closed = threading.Event()
        self.input.observe(self._submitted, names="value")
        self.detach_button.on_click(lambda _button: self.close())
        self._thread = threading.Thread(target=self._pump, name="xvm-console-widget", daemon=True)
        self._thread.start()
        self._unsubscribe = console.subscribe(self._listener, history=history)

    def _listener(self, event, payload):
        self._events.put((event, payload))

    def _pump(self):
        while True:
            event, payload = self._events.get()
            if event is None:
                return
            chunks = []
            while event == "data":  # coalesce what is queued into one update
                chunks.append(payload)
                try:
                    event, payload = self._events.get_nowait()
                except queue.Empty:
                    event = None
            if chunks:
                text = clean_text(self._decoder.decode(b"".join(chunks)))
                if text:
                    self.output.append_stdout(text)
            if event == "open":
                self.status.value = badge("running")
            elif event == "closed":
                self.status.value = f"{badge('closed')} {esc(payload)}"
            elif event is None and self._closed.is_set():
                return

    def _submitted(self, change):
        line = change["new"]
        if self._closed.is_set() or line == "":
            return
        try:
            self.console.write(line + "\n")
        except XvmError as e:
            self.output.append_stderr(f"[xvm: {e}]\n")
        self.input.value = ""

    def send(self, line):
        """Send ``line`` as if typed into the input line."""
        self.input.value = line

    @property
    def text(self):
        """Everything shown so far (the Output's stdout stream)."""
        return "".join(o.get("text", "") for o in self.output.outputs if o.get("name") == "stdout")

    @property
    def closed(self):
        return self._closed.is_set()

    def close(self):
        """Detach from the console and close the widgets; no thread is left."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._unsubscribe()
        self._events.put((None, None))
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.input.unobserve(self._submitted, names="value")
        self.status.value = f"{badge('detached')}"
        self.input.disabled = True
        self.detach_button.disabled = True

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.box._repr_mimebundle_(include=include, exclude=exclude)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def console_widget(console, **kwargs):
    """``dom.console.widget()``: a :class:`ConsoleWidget` on ``console``."""
    return ConsoleWidget(console, **kwargs)
