"""Boot an unmodified Debian Linux guest, run a command on its console, shut it down.

Needs hardware-assisted KVM (vmx/svm). On PVM hosts (where ``xvm capabilities`` says
``hvm: no``), run it inside the HVM test host:

    python3 -m xvm.testhost run --timeout 600 -- python3 examples/linux_guest.py

The image (Debian's cloud kernel + a busybox initramfs) is built once and cached; see
``xvm image build``.
"""
import os
import sys
import time

import xvm
from xvm.images import PROMPT, build_image

# Inside the TCG test host, TCG does not carry XSETBV through to nested guests faithfully
# (ENVIRONMENT.md): hide XSAVE from the guest there.
CPU_QUIRKS = ("xsave",) if os.environ.get("XVM_TESTHOST_INNER") else ()


def main():
    started = time.monotonic()
    image = build_image(progress=lambda message: print(f"image: {message}", file=sys.stderr))
    print(f"image: {image.release} in {time.monotonic() - started:.1f} s")

    with xvm.connect() as host:
        dom = host.define(xvm.DomainConfig(
            name="linux", memory_mib=256, vcpus=2, kernel=image.kernel, initrd=image.initrd,
            cmdline="console=ttyS0 quiet", disable_cpu_features=CPU_QUIRKS,
        ))
        started = time.monotonic()
        dom.start()
        cpus = dom.console.expect(r"xvm-image: cpus=(\d+)", timeout=300).group(1)
        dom.console.expect(PROMPT, timeout=60)
        print(f"booted to the shell prompt in {time.monotonic() - started:.1f} s ({cpus} CPUs)")

        dom.console.write("uname -a\n")
        uname = dom.console.expect(r"(Linux [^\r\n]*)\r?\n", timeout=60).group(1)
        dom.console.expect(PROMPT, timeout=60)
        print(uname)

        started = time.monotonic()
        dom.shutdown(timeout=60)  # ACPI power button -> acpid in the guest -> poweroff
        print(f"shut down in {time.monotonic() - started:.1f} s: {dom.state.value}")


if __name__ == "__main__":
    main()
