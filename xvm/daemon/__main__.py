"""``xvmd --state-dir DIR --socket PATH [--group G] [--metrics-listen HOST:PORT]
[--migration-listen ADDR:PORT [--tls-dir DIR]]``: the xvm host service, in the foreground.
With ``--metrics-listen`` it also serves Prometheus metrics (:mod:`xvm.daemon.metrics`) on
``http://HOST:PORT/metrics``; with ``--migration-listen`` it accepts live migrations
(:mod:`xvm.migration.live`) on ``xvm+tls://ADDR:PORT``.

Ready when the socket accepts connections; under systemd (``Type=notify``) it then
sends ``READY=1`` to ``$NOTIFY_SOCKET`` and starts the autostart domains.  SIGTERM or
SIGINT stops the service after applying every running domain's ``on_host_stop``
policy (:mod:`xvm.daemon.policy`); SIGKILL leaves every domain running.
"""
import argparse
import logging
import os
import signal
import socket
import sys
import threading

from ..errors import XvmError

DEFAULT_SOCKET = "/run/xvm/xvmd.sock"


def sd_notify(state):
    """Send ``state`` to systemd's notify socket, if there is one."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(state.encode(), path)
    return True


def main(argv=None):
    from ..host.paths import default_state_dir

    parser = argparse.ArgumentParser(prog="xvmd", description="the xvm host service")
    parser.add_argument("--state-dir", default=None, help="default: $XVM_STATE_DIR, /var/lib/xvm as root")
    parser.add_argument("--socket", default=None, help=f"default: {DEFAULT_SOCKET} as root, else <state>/xvmd.sock")
    parser.add_argument("--group", default=None, help="members of this group may use the socket")
    parser.add_argument("--in-process", action="store_true", help="run VMMs inside xvmd (debugging)")
    parser.add_argument("--no-autostart", action="store_true", help="do not start the autostart domains")
    parser.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (default: not served)")
    parser.add_argument("--migration-listen", default=None, metavar="ADDR:PORT",
                        help="accept live migrations of domains into this host on ADDR:PORT (TLS 1.3, "
                             "client certificates required)")
    parser.add_argument("--tls-dir", default=None, metavar="DIR",
                        help="the migration certificates: ca-cert.pem, server-cert.pem, server-key.pem "
                             "(default: $XVM_TLS_DIR, /etc/pki/xvm)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="xvmd[%(process)d] %(levelname)s: %(message)s")
    state_dir = os.path.abspath(args.state_dir or default_state_dir())
    sock = args.socket or (DEFAULT_SOCKET if os.geteuid() == 0 else os.path.join(state_dir, "xvmd.sock"))
    from .policy import apply_host_stop_policies, start_autostart_domains
    from .server import Daemon

    metrics = None
    try:
        listen = None
        if args.metrics_listen is not None:
            from .metrics import parse_listen
            listen = parse_listen(args.metrics_listen)
        daemon = Daemon(state_dir, sock, group=args.group, in_process=args.in_process)
        if listen is not None:
            from .metrics import MetricsServer
            try:
                metrics = MetricsServer(daemon.host, listen)
            except BaseException:
                daemon.close()
                raise
            logging.info("metrics on http://%s:%d/metrics", *metrics.address)
        if args.migration_listen is not None:
            try:
                migrations = daemon.host.listen_migrations(args.migration_listen, tls_dir=args.tls_dir)
            except BaseException:
                daemon.close()
                raise
            logging.info("accepting migrations on %s", migrations.uri)
    except XvmError as e:
        print(f"xvmd: error: {e}", file=sys.stderr)
        return 1
    stop = lambda *_: daemon.stop()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.info("serving %s on %s", state_dir, sock)
    thread = threading.Thread(target=daemon.serve_forever, name="xvmd-accept", daemon=True)
    thread.start()
    sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {sock}")
    if not args.no_autostart:
        start_autostart_domains(daemon.host)
    while thread.is_alive():
        thread.join(0.5)
    sd_notify("STOPPING=1\nSTATUS=applying the domains' host-stop policies")
    apply_host_stop_policies(daemon.host)
    if metrics is not None:
        metrics.close()
    daemon.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
