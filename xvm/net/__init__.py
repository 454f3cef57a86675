"""Host networking: bridges as MAC-learning virtual switches, TAPs as their ports.

``xvm.Network`` describes a host network, ``host.define_network()`` /
``host.create_network()`` manage it; ``xvm.Nic`` puts a domain on one.  Each
NIC is a virtio-net device (``xvm.devices.net``) whose TAP is a bridge port
for as long as the domain runs.
"""
from .errors import NetworkConfigError, NetworkHostError
from .mac import derive_mac, normalize_mac
from .network import HostNetwork, Network, NetworkState, NetworkTable
from .nic import Nic, NicPlan, effective_macs, plan_nics, validate_nics

__all__ = ["Network", "HostNetwork", "NetworkState", "NetworkTable", "Nic", "NicPlan",
           "NetworkConfigError", "NetworkHostError", "derive_mac", "normalize_mac",
           "effective_macs", "plan_nics", "validate_nics"]
