import pytest

import xvm


def test_capabilities_describe_this_host(host):
    caps = host.capabilities()
    assert caps.kvm_api_version == 12
    assert caps.virtualization in ("vmx", "svm", "pvm")
    assert caps.hvm == (caps.virtualization in ("vmx", "svm"))
    assert caps.pv == (caps.virtualization == "pvm")
    assert caps.max_vcpus >= 1 and caps.memory_slots >= 1
    assert caps.missing_capabilities == ()
    assert caps.kvm_capabilities["KVM_CAP_IRQCHIP"] == 1


def test_host_close_leaves_running_domains_running(guest, state_dir):
    host = xvm.connect()
    dom = host.define(xvm.DomainConfig(name="h", memory_mib=64, kernel=guest("busy")))
    dom.start()
    host.close()
    with pytest.raises(xvm.StateError, match="closed"):  # the handle went with its host
        dom.state
    with xvm.connect() as again:
        dom = again.lookup("h")
        assert dom.state is xvm.DomainState.RUNNING
        dom.destroy()


def test_in_process_host_close_destroys_its_domains(guest, state_dir):
    host = xvm.connect(in_process=True)
    dom = host.define(xvm.DomainConfig(name="h", memory_mib=64, kernel=guest("busy")))
    dom.start()
    host.close()
    with xvm.connect() as again:
        assert again.lookup("h").state is xvm.DomainState.SHUTOFF
