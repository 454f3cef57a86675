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


def test_host_close_destroys_running_domains(guest):
    host = xvm.connect()
    dom = host.define(xvm.DomainConfig(name="h", memory_mib=64, kernel=guest("busy")))
    dom.start()
    host.close()
    assert dom.state is xvm.DomainState.SHUTOFF
