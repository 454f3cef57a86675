"""Plain-data state of the PCI host bridge and of an MSI-X capability, for snapshots.

A device function's own configuration space travels in its device's state
(:class:`~xvm.devices.virtio.pci.VirtioPciState`); the bridge keeps the
CONFIG_ADDRESS latch and its own function 00:00.0.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class MsixVectorState:
    address: int
    data: int
    masked: bool
    pending: bool


@dataclass(frozen=True)
class MsixState:
    enabled: bool
    function_masked: bool
    vectors: tuple  # of MsixVectorState

    def save(self):
        return {"enabled": self.enabled, "function_masked": self.function_masked,
                "vectors": [[v.address, v.data, v.masked, v.pending] for v in self.vectors]}

    @classmethod
    def restore(cls, data):
        if isinstance(data, (list, tuple)):  # the older (enabled, masked, vectors) form
            data = {"enabled": data[0], "function_masked": data[1], "vectors": data[2]}
        return cls(bool(data["enabled"]), bool(data["function_masked"]),
                   tuple(MsixVectorState(a, d, bool(m), bool(p)) for a, d, m, p in data["vectors"]))


@dataclass(frozen=True)
class PciHostState:
    config_address: int  # the CONFIG_ADDRESS latch at 0xCF8
    bridge_config: bytes  # function 00:00.0's configuration space

    def save(self):
        return {"config_address": self.config_address, "bridge_config": self.bridge_config.hex()}

    @classmethod
    def restore(cls, data):
        return cls(data["config_address"], bytes.fromhex(data["bridge_config"]))
