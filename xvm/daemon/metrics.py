"""xvmd's Prometheus metrics (``xvmd --metrics-listen 127.0.0.1:9177``; prometheus-client).

Read at scrape time from the host xvmd serves, one family per fact:

    xvm_domains                                   domains known to the host
    xvm_domain_state{domain,uuid,state}           1 for the domain's state, 0 for the others
    xvm_domain_vcpus{domain}, xvm_domain_memory_bytes{domain}
    xvm_domain_boots{domain}                      boots of the current VMM (resets included)
    xvm_domain_vcpu_seconds_total{domain,vcpu}    CPU time of each vCPU thread (schedstat)
    xvm_<kind>_<counter>_total{domain,device}     every device counter of ``dom.stats()``:
        xvm_blk_read_bytes_total, xvm_blk_write_total (from ``write_count``),
        xvm_net_rx_packets_total, ... (``_count`` dropped: the family is the event)

Names follow the devices' metrics (named after events), so a new device counter is a
new family without a change here.  Nothing is served unless the address is given.
"""
import logging

from ..display import device_counters, vcpu_seconds
from ..errors import ConfigError, HostError, XvmError
from ..vmm.lifecycle import DomainState

log = logging.getLogger(__name__)

PREFIX = "xvm"


def parse_listen(value):
    """``"HOST:PORT"`` (``[::1]:PORT`` for IPv6) -> (host, port); ConfigError otherwise."""
    host, sep, port = str(value).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics-listen wants HOST:PORT (e.g. 127.0.0.1:9177), not {value!r}")
    return host, int(port)


def _client():
    try:
        import prometheus_client  # noqa: F401
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        raise ConfigError("metrics need prometheus-client: pip install 'xvm[jupyter]' "
                          "(or pip install prometheus-client)") from None
    return CounterMetricFamily, GaugeMetricFamily


def metric_name(kind, counter):
    """``("blk", "read_count")`` -> ``"xvm_blk_read"`` (the client adds ``_total``)."""
    counter = counter.removesuffix("_count").removesuffix("_total")
    safe = "".join(c if c.isalnum() else "_" for c in f"{kind}_{counter}")
    return f"{PREFIX}_{safe}"


class HostCollector:
    """A prometheus-client collector over a host's domains (``host.domains()``)."""

    def __init__(self, host):
        self.host = host
        self._families = _client()

    def describe(self):
        return []  # computed at scrape time: no fixed set

    def collect(self):
        counter_cls, gauge_cls = self._families
        state = gauge_cls(f"{PREFIX}_domain_state", "1 for the state the domain is in",
                          labels=["domain", "uuid", "state"])
        vcpus = gauge_cls(f"{PREFIX}_domain_vcpus", "vCPUs in the domain's config", labels=["domain"])
        memory = gauge_cls(f"{PREFIX}_domain_memory_bytes", "guest RAM in the domain's config",
                           labels=["domain"])
        boots = gauge_cls(f"{PREFIX}_domain_boots", "boots of the current VMM (guest resets included)",
                          labels=["domain"])
        cpu = counter_cls(f"{PREFIX}_domain_vcpu_seconds", "CPU time of each vCPU thread",
                          labels=["domain", "vcpu"])
        devices = {}
        domains = self.host.domains()
        for dom in domains:
            try:
                info = dom.info()
                stats = dom.stats() if info.get("pid") else {}
            except XvmError as e:  # it went away meanwhile
                log.debug("metrics: skipping domain %s: %s", dom.uuid, e)
                continue
            name = info["name"]
            for s in DomainState:
                state.add_metric([name, info["uuid"], s.value], 1.0 if info["state"] == s.value else 0.0)
            vcpus.add_metric([name], info.get("vcpus") or 0)
            memory.add_metric([name], (info.get("memory_mib") or 0) << 20)
            boots.add_metric([name], info.get("boot_count") or 0)
            for index, seconds in enumerate(vcpu_seconds(info)):
                cpu.add_metric([name, str(index)], seconds)
            for kind, ident, counters in device_counters(stats):
                for counter, value in counters.items():
                    family_name = metric_name(kind, counter)
                    family = devices.get(family_name)
                    if family is None:
                        family = devices[family_name] = counter_cls(
                            family_name, f"virtio-{kind} {counter}", labels=["domain", "device"])
                    family.add_metric([name, ident], value)
        yield gauge_cls(f"{PREFIX}_domains", "domains known to the host", value=len(domains))
        yield from (state, vcpus, memory, boots, cpu)
        yield from devices.values()


class MetricsServer:
    """The HTTP endpoint (``/metrics``) on ``(host, port)``; :meth:`close` stops it."""

    def __init__(self, host, address):
        _client()
        from prometheus_client import CollectorRegistry, start_http_server

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HostCollector(host))
        addr, port = address
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            raise HostError(f"cannot serve metrics on {addr}:{port}: {e.strerror}", e.errno) from None
        self.address = self._server.server_address[:2]

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
