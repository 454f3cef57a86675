"""The host: the entry point for defining, finding and running domains."""
import itertools
import os
import threading
from dataclasses import dataclass, field

from .domain import Domain, DomainState
from .errors import ConfigError, NotFoundError, StateError
from .kvm.generated import kvm_h
from .kvm.system import Kvm
from .net import NetworkTable, effective_macs, plan_nics

# The KVM capabilities xvm relies on, by name.
REQUIRED_CAPS = (
    "KVM_CAP_IRQCHIP",
    "KVM_CAP_USER_MEMORY",
    "KVM_CAP_SET_TSS_ADDR",
    "KVM_CAP_PIT2",
    "KVM_CAP_IRQFD",
    "KVM_CAP_IOEVENTFD",
    "KVM_CAP_IRQ_ROUTING",
    "KVM_CAP_EXT_CPUID",
    "KVM_CAP_IMMEDIATE_EXIT",
)
REPORTED_CAPS = REQUIRED_CAPS + (
    "KVM_CAP_XSAVE",
    "KVM_CAP_XCRS",
    "KVM_CAP_SIGNAL_MSI",
    "KVM_CAP_READONLY_MEM",
    "KVM_CAP_TSC_CONTROL",
    "KVM_CAP_NR_MEMSLOTS",
    "KVM_CAP_MAX_VCPUS",
    "KVM_CAP_NR_VCPUS",
)
PVM_MODULE = "/sys/module/kvm_pvm"


@dataclass(frozen=True)
class Capabilities:
    """What this host's KVM can do (``/dev/xen/domcaps`` for xvm)."""

    kvm_api_version: int
    virtualization: str  # "vmx", "svm", "pvm" or "none"
    hvm: bool  # runs unmodified guests (hardware-assisted)
    pv: bool  # runs guests that follow the PVM contract
    max_vcpus: int
    recommended_vcpus: int
    memory_slots: int
    kvm_capabilities: dict = field(default_factory=dict)
    missing_capabilities: tuple = ()


def _virtualization():
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    for flag in ("vmx", "svm"):
        if flag in flags:
            return flag
    return "pvm" if os.path.isdir(PVM_MODULE) else "none"


class Host:
    """A connection to the local hypervisor; use ``xvm.connect()``."""

    def __init__(self, kvm_path="/dev/kvm"):
        self.kvm = Kvm(kvm_path)
        self._domains = {}  # name -> Domain
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._networks = NetworkTable(self)

    def capabilities(self):
        caps = {name: self.kvm.check_extension(getattr(kvm_h, name)) for name in REPORTED_CAPS}
        virt = _virtualization()
        return Capabilities(
            kvm_api_version=self.kvm.api_version,
            virtualization=virt,
            hvm=virt in ("vmx", "svm"),
            pv=virt == "pvm",
            max_vcpus=caps["KVM_CAP_MAX_VCPUS"] or caps["KVM_CAP_NR_VCPUS"] or 4,
            recommended_vcpus=caps["KVM_CAP_NR_VCPUS"] or 4,
            memory_slots=caps["KVM_CAP_NR_MEMSLOTS"] or 32,
            kvm_capabilities=caps,
            missing_capabilities=tuple(name for name in REQUIRED_CAPS if not caps[name]),
        )

    # -- domains -------------------------------------------------------------
    def define(self, config):
        """Make a domain known to the host (it starts shut off)."""
        with self._lock:
            if config.name in self._domains:
                raise ConfigError(f"a domain named {config.name!r} already exists")
            for other in self._domains.values():
                if other.uuid == config.uuid:
                    raise ConfigError(f"domain {other.name!r} already has uuid {config.uuid}")
            domain = Domain(self, config)
            self._domains[config.name] = domain
            return domain

    def create(self, config):
        """Define and start a domain in one step."""
        domain = self.define(config)
        try:
            return domain.start()
        except BaseException:
            domain.undefine()
            raise

    def domains(self):
        with self._lock:
            return list(self._domains.values())

    def lookup(self, name_or_uuid):
        """The domain with this name (or UUID); raises NotFoundError."""
        with self._lock:
            key = str(name_or_uuid)
            if key in self._domains:
                return self._domains[key]
            for domain in self._domains.values():
                if str(domain.uuid) == key:
                    return domain
        raise NotFoundError(f"no domain named {name_or_uuid!r}")

    # -- networks --------------------------------------------------------------
    def define_network(self, network):
        """Make an :class:`xvm.Network` known to the host (inactive); returns a HostNetwork."""
        return self._networks.define(network)

    def create_network(self, network):
        """Define a network and start it (its bridge is created now)."""
        net = self._networks.define(network)
        try:
            return net.start()
        except BaseException:
            self._networks.forget(net)
            raise

    def networks(self):
        return self._networks.list()

    def lookup_network(self, name):
        """The HostNetwork called ``name``; raises NotFoundError."""
        return self._networks.lookup(name)

    def _forget_network(self, net):
        self._networks.forget(net)

    def _running_domains(self):
        return [d for d in self.domains() if d.machine is not None]

    def _network_users(self, net):
        return {d.name for d in self._running_domains()
                if any(n.network == net.name or n.bridge == net.bridge for n in d.config.nics)}

    def _plan_nics(self, domain):
        """The domain's NICs resolved for a boot (networks active, bridges there,
        no MAC shared with another running domain)."""
        with self._lock:
            in_use = {}
            for other in self._running_domains():
                if other is not domain:
                    for mac in effective_macs(other.config.nics, other.config.uuid):
                        in_use[mac] = other.name
            return plan_nics(domain.config, self._networks, in_use)

    def _rename(self, domain, new_config):
        with self._lock:
            if new_config.name != domain.name and new_config.name in self._domains:
                raise ConfigError(f"a domain named {new_config.name!r} already exists")
            del self._domains[domain.name]
            self._domains[new_config.name] = domain

    def _forget(self, domain):
        with self._lock:
            self._domains.pop(domain.name, None)

    def _check_can_start(self, domain):
        caps_max = self.kvm.check_extension(kvm_h.KVM_CAP_MAX_VCPUS) or 4
        if domain.config.vcpus > caps_max:
            raise ConfigError(f"domain {domain.name!r} wants {domain.config.vcpus} vCPUs; this host allows {caps_max}")

    def _next_id(self):
        return next(self._ids)

    def close(self):
        """Destroy every running domain of this host and release /dev/kvm."""
        for domain in self.domains():
            if domain.state in (DomainState.RUNNING, DomainState.PAUSED):
                try:
                    domain.destroy()
                except StateError:
                    pass  # it powered off by itself meanwhile
        self._networks.close()
        self.kvm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect():
    """Open the local hypervisor; returns a :class:`Host`."""
    return Host()
