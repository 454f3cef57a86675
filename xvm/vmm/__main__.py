"""``python3 -m xvm.vmm --init-fd N``: the process that runs one domain.

The host that starts it (the embedded session host or xvmd) sends one *init*
message on the socketpair end ``N``: the domain's configuration, the state
directory, whether the domain is persistent, and the descriptors the host opened
for it (``/dev/kvm``, the domain's lock, each disk image with its lock, each TAP).
The VMM opens nothing that needs a privilege.  It serves its control socket
``<state>/run/<uuid>.sock`` and answers ``{"ready": pid}``; the host attaches to the
console and answers ``{"boot": true}``; the VMM boots the domain and answers with
the boot's info (or with the error that stopped the boot).  It exits once the domain has stopped for
good — powered off, destroyed or crashed — after recording that in the store, or
on SIGTERM (the domain is destroyed) — removing its socket and pid file.
"""
import argparse
import logging
import os
import signal
import sys
import threading

from . import protocol as P


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m xvm.vmm")
    parser.add_argument("--init-fd", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s xvm-vmm[%(process)d] %(levelname)s %(name)s: %(message)s")
    import socket

    init = socket.socket(fileno=args.init_fd)
    try:
        message, fds = P.recv_message(init, timeout=30)
    except Exception as e:
        print(f"xvm-vmm: no init message from the host: {e}", file=sys.stderr)
        return 2
    from .process import run_domain

    return run_domain(init, message, fds)


if __name__ == "__main__":
    sys.exit(main())
