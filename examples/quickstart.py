#!/usr/bin/env python3
"""Define, start, script and stop a small guest — the xvm lifecycle in one page.

    python3 examples/quickstart.py

Uses the `busy` and `irq` test guests (built with gcc on first use), which run
natively on hardware-assisted and on PVM hosts alike.  Each running domain is a VMM
process of its own; the domains are stored in the state directory ($XVM_STATE_DIR,
else ~/.local/state/xvm, or /var/lib/xvm as root), so any other process — or
`xvm list --all` — sees them.
"""
import importlib.util
import pathlib

import xvm

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_guest(name):
    spec = importlib.util.spec_from_file_location("guests", ROOT / "tests" / "guests" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(name)


def main():
    with xvm.connect() as host:
        caps = host.capabilities()
        print(f"KVM API {caps.kvm_api_version}, virtualization {caps.virtualization}, up to {caps.max_vcpus} vCPUs")

        try:
            counter = host.lookup("counter")  # defined by an earlier run: it is stored
        except xvm.NotFoundError:
            counter = host.define(xvm.DomainConfig(name="counter", memory_mib=64, vcpus=2,
                                                   kernel=test_guest("busy"), cmdline="shift=26"))
        counter.start()
        print(f"{counter.name} ({counter.uuid}) is {counter.state.value} with id {counter.id}")
        print("guest says:", counter.console.expect(r"count \d+\n").group(0).strip())
        counter.pause()
        print(f"paused: {counter.state.value}; resuming")
        counter.resume()
        print("guest says:", counter.console.expect(r"count \d+\n").group(0).strip())
        counter.reboot()
        print(f"rebooted: new id {counter.id}; its VMM is process {counter.info()['pid']}")
        counter.destroy()
        counter.undefine()

        # A transient domain: forgotten once it stops; the with-block destroys it if need be.
        with host.create(xvm.DomainConfig(name="echo", memory_mib=64, kernel=test_guest("irq"))) as echo:
            echo.console.expect("echo ready")  # the guest has routed and enabled its UART interrupt
            echo.console.write("hello from the host\n")
            print("guest answered:", echo.console.expect(r"echo: (.*)").group(1).strip())
            echo.console.write("quit\n")
            print("echo guest is", echo.wait(timeout=10).value)


if __name__ == "__main__":
    main()
