"""``xvm top``: the host's domains, live, in a terminal (what xvmd's metrics report).

    xvm top [--connect URI] [--interval 2] [--iterations N] [--once]

One row per domain: id, name, state, vCPUs, memory, CPU use (percent of one CPU over the
last interval) and CPU time, block bytes read/written and network bytes received/sent
per second.  On a terminal the screen is redrawn every interval until Ctrl-C; otherwise
(or with ``--once``) each sample is printed as a block.  ``--once`` samples over one
interval and prints once.
"""
import argparse
import sys
import time

from .display import cpu_seconds, device_counters, format_mib, text_table
from .errors import XvmError

HEADERS = ("ID", "NAME", "STATE", "VCPU", "MEM", "CPU%", "CPU TIME", "BLK RD/s", "BLK WR/s",
           "NET RX/s", "NET TX/s")
CLEAR = "\x1b[H\x1b[2J"


def configure(parser):
    parser.add_argument("--connect", "-c", default=None, metavar="URI",
                        help="host URI (default: $XVM_URI, else xvm:///session)")
    parser.add_argument("--interval", "-d", type=float, default=2.0, help="seconds between samples (2)")
    parser.add_argument("--iterations", "-n", type=int, default=None, help="stop after N screens")
    parser.add_argument("--once", action="store_true", help="one sample over one interval, then exit")


def sample(host):
    """``{uuid: figures}`` now: info, CPU seconds and summed device bytes per domain."""
    out = {}
    for dom in host.domains():
        try:
            info = dom.info()
            stats = dom.stats() if info.get("pid") else {}
        except XvmError:
            continue
        totals = {"blk_read": 0, "blk_write": 0, "net_rx": 0, "net_tx": 0}
        for kind, _ident, counters in device_counters(stats):
            if kind == "blk":
                totals["blk_read"] += counters.get("read_bytes", 0)
                totals["blk_write"] += counters.get("write_bytes", 0)
            elif kind == "net":
                totals["net_rx"] += counters.get("rx_bytes", 0)
                totals["net_tx"] += counters.get("tx_bytes", 0)
        out[info["uuid"]] = {"info": info, "cpu": cpu_seconds(info), "time": time.monotonic(),
                             "boot": (info.get("pid"), info.get("boot_count")), **totals}
    return out


def rows(before, after):
    """Table rows from two samples (rates need the same boot in both)."""
    table = []
    for uuid, now in after.items():
        info, then = now["info"], before.get(uuid)
        same = then is not None and then["boot"] == now["boot"] and now["time"] > then["time"]
        elapsed = now["time"] - then["time"] if same else None

        def rate(key):
            if not same:
                return "-"
            return _bytes((now[key] - then[key]) / elapsed) + "/s"

        cpu_pct = "-"
        if same and now["cpu"] is not None and then["cpu"] is not None:
            cpu_pct = f"{100 * (now['cpu'] - then['cpu']) / elapsed:.1f}"
        table.append((info.get("id"), info["name"], info["state"], info.get("vcpus"),
                      format_mib(info.get("memory_mib")), cpu_pct,
                      "-" if now["cpu"] is None else f"{now['cpu']:.2f}s",
                      rate("blk_read"), rate("blk_write"), rate("net_rx"), rate("net_tx")))
    table.sort(key=lambda r: (r[0] is None, r[0] or 0, r[1]))
    return table


def _bytes(value):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024


def render(host, table):
    return (f"xvm top - {host.uri} - {time.strftime('%H:%M:%S')} - {len(table)} domain(s)\n"
            + text_table(HEADERS, table))


def main(args=None):
    """``xvm top``: ``args`` an argparse namespace (:func:`configure`), or argv (a list)."""
    if args is None or isinstance(args, (list, tuple)):
        parser = argparse.ArgumentParser(prog="xvm top", description=__doc__.split("\n")[0])
        configure(parser)
        args = parser.parse_args(args)
    import xvm

    if args.interval <= 0:
        raise XvmError(f"--interval must be positive, not {args.interval:g}")
    iterations = 1 if args.once else args.iterations
    live = sys.stdout.isatty() and not args.once
    with xvm.connect(args.connect) as host:
        before = sample(host)
        shown = 0
        try:
            while iterations is None or shown < iterations:
                time.sleep(args.interval)
                after = sample(host)
                screen = render(host, rows(before, after))
                print((CLEAR if live else "") + screen + ("" if live else "\n"), flush=True)
                before = after
                shown += 1
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    from .cli import PROG

    try:
        sys.exit(main(sys.argv[1:]))
    except XvmError as e:
        print(f"{PROG} top: {e}", file=sys.stderr)
        sys.exit(1)
