"""The ``xvm`` command line (virsh-like verbs).

    xvm capabilities                    what this host's KVM can do
    xvm image build [--flavour cloud]   build (or find cached) a bootable Linux guest image

Results go to stdout, progress and diagnostics to stderr. An :class:`~xvm.errors.XvmError`
prints ``xvm: <message>`` and exits with status 1, without a traceback.

Adding a verb: write ``_cmd_<verb>(args) -> int`` and one :class:`Verb` line in :data:`VERBS`
(``configure`` adds its options); a verb with sub-verbs (``image build``) is a :class:`Group`.
"""
import argparse
import dataclasses
import sys
from dataclasses import dataclass

from .errors import XvmError

PROG = "xvm"


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


# --- verbs -------------------------------------------------------------------------------------


def _cmd_capabilities(args):
    import xvm

    with xvm.connect() as host:
        caps = host.capabilities()
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

    def progress(message):
        print(message, file=sys.stderr, flush=True)

    image = build_image(args.flavour, progress=None if args.quiet else progress, extra_modules=args.modules,
                        download=not args.no_download, vmlinux=not args.no_vmlinux)
    print(f"kernel: {image.kernel}")
    print(f"initrd: {image.initrd}")
    print(f"vmlinux: {image.vmlinux if image.vmlinux is not None else '-'}")
    print(f"release: {image.release}")
    print(f"modules: {' '.join(image.modules)}")
    return 0


VERBS = (
    Verb("capabilities", "show what this host's KVM can do (hvm, pv, vCPUs, KVM capabilities)",
         _cmd_capabilities),
    Group("image", "guest images", (
        Verb("build", "build a bootable Linux guest image (Debian kernel + busybox initramfs)",
             _cmd_image_build, _configure_image_build),
    )),
)


# --- plumbing ----------------------------------------------------------------------------------


def build_parser(verbs=VERBS):
    parser = argparse.ArgumentParser(prog=PROG, description="xvm: virtual machines on Linux KVM")
    _add(parser, verbs, "verb")
    return parser


def _add(parser, verbs, dest):
    sub = parser.add_subparsers(dest=dest, metavar="VERB", required=True)
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
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
