"""python3 -m xvm.testhost prepare | run [--timeout S] [--stall-timeout S] [--mode M] -- CMD..."""
import argparse
import sys
import time

from . import cache, initramfs
from .errors import TestHostError
from .host import TestHost, hardware_virtualization


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m xvm.testhost", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("prepare", help="build the test host's initramfs and extract kernels (cached)")
    run = sub.add_parser("run", help="run a command where /dev/kvm is hardware-assisted")
    run.add_argument("--timeout", type=float, default=1800.0, help="seconds per attempt (default 1800)")
    run.add_argument("--mode", choices=("auto", "tcg", "direct"), default="auto")
    run.add_argument("--retries", type=int, default=1, help="retries after a hang (default 1)")
    run.add_argument("--results-dir", help="writable share, same path inside (default: a temporary dir)")
    run.add_argument("--memory", default="4G")
    run.add_argument("--boot-timeout", type=float, default=90.0, help="seconds until the command starts (default 90)")
    run.add_argument("--stall-timeout", type=float, default=0.0,
                     help="a hang is this many seconds without console output or heartbeat event "
                          "(see xvm.testhost.progress; default 0: no such limit)")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        if args.verb == "prepare":
            return _prepare()
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run: no command given")
        host = TestHost(mode=args.mode, retries=args.retries, memory=args.memory, boot_timeout=args.boot_timeout,
                        stream=sys.stdout, stall_timeout=args.stall_timeout or None)
        result = host.run(command, timeout=args.timeout, results_dir=args.results_dir)
        boot = f", booted in {result.boot_time:.1f} s" if result.boot_time is not None else ""
        sys.stdout.write("" if result.console.endswith("\n") or not result.console else "\n")
        sys.stdout.flush()
        print(f"xvm.testhost: exit status {result.exit_status} ({result.mode}, {result.duration:.1f} s"
              f"{boot}, attempt {result.attempts})", file=sys.stderr)
        return result.exit_status
    except TestHostError as e:
        print(f"xvm.testhost: {e}", file=sys.stderr)
        return 125


def _prepare():
    start = time.monotonic()
    package, initrd = initramfs.testhost_initramfs()
    print(f"test host kernel:    {package.bzimage}")
    print(f"test host initramfs: {initrd}")
    vmlinux = cache.extract_vmlinux(package.bzimage, cache.build_dir() / f"vmlinux-{package.release}")
    print(f"test host vmlinux:   {vmlinux}")
    guest = cache.cloud_kernel(vmlinux=True)
    print(f"nested guest kernel: {guest.bzimage}")
    print(f"nested guest vmlinux: {guest.vmlinux}")
    print(f"nested initramfs:    {initramfs.nested_initramfs()}")
    print(f"hardware virtualization here: {'yes' if hardware_virtualization() else 'no (tests run in TCG)'}")
    print(f"prepared in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
