"""Network, Nic and MAC configuration: validation without privileges."""
import uuid

import pytest

import xvm
from xvm.net import derive_mac, effective_macs, normalize_mac


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "k.elf"
    path.write_bytes(b"\x7fELF" + bytes(60))
    return path


def test_derived_mac_is_stable_local_unicast():
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    a, b = derive_mac(u, 0), derive_mac(u, 1)
    assert a == derive_mac(u, 0) and a != b
    assert a.startswith("52:54:00:")
    first = int(a[:2], 16)
    assert first & 2 and not first & 1  # locally administered, unicast
    assert derive_mac(uuid.uuid4(), 0) != a


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "00:00:00:00:00:00", "52:54:00:12:34",
                                 "zz:54:00:12:34:56", 5, "525400123456"])
def test_bad_mac(mac):
    with pytest.raises(xvm.ConfigError, match="MAC"):
        xvm.Nic(network="lan", mac=mac)


def test_mac_normalized():
    assert normalize_mac("52-54-00-AB-CD-EF") == "52:54:00:ab:cd:ef"
    assert xvm.Nic(network="lan", mac="52:54:00:AB:CD:EF").mac == "52:54:00:ab:cd:ef"


def test_nic_needs_network_or_bridge():
    with pytest.raises(xvm.ConfigError, match="exactly one"):
        xvm.Nic()
    with pytest.raises(xvm.ConfigError, match="exactly one"):
        xvm.Nic(network="lan", bridge="br0")
    with pytest.raises(xvm.ConfigError, match="interface name"):
        xvm.Nic(bridge="a-very-long-bridge-name")
    with pytest.raises(xvm.ConfigError, match="mtu"):
        xvm.Nic(network="lan", mtu=10)
    assert xvm.Nic(network=xvm.Network("lan")).network == "lan"


def test_network_validation():
    net = xvm.Network("lan", address="10.0.0.1/24")
    assert net.bridge == "xvmbr-lan" and net.address == "10.0.0.1/24"
    assert xvm.Network("a-rather-long-network-name").bridge == "xvmbr-a-rather-"
    for bad in ("10.0.0.1", "10.0.0.300/24", "nonsense"):
        with pytest.raises(xvm.ConfigError, match="address"):
            xvm.Network("lan", address=bad)
    with pytest.raises(xvm.ConfigError, match="network name"):
        xvm.Network("bad name")
    with pytest.raises(xvm.ConfigError, match="bridge"):
        xvm.Network("lan", bridge="x" * 16)


def test_domain_config_nics(kernel):
    cfg = xvm.DomainConfig(name="d", memory_mib=32, kernel=kernel,
                           nics=[xvm.Nic(network="lan"), xvm.Nic(network="lan")])
    macs = effective_macs(cfg.nics, cfg.uuid)
    assert len(set(macs)) == 2 and macs[0] == derive_mac(cfg.uuid, 0)
    assert isinstance(cfg.nics, tuple)


def test_domain_config_duplicate_mac(kernel):
    with pytest.raises(xvm.ConfigError, match="used by two NICs"):
        xvm.DomainConfig(name="d", memory_mib=32, kernel=kernel,
                         nics=[xvm.Nic(network="a", mac="52:54:00:00:00:01"),
                               xvm.Nic(bridge="br0", mac="52:54:00:00:00:01")])
    with pytest.raises(xvm.ConfigError, match="xvm.Nic"):
        xvm.DomainConfig(name="d", memory_mib=32, kernel=kernel, nics=["lan"])


def test_nic_queues():
    assert xvm.Nic(network="lan").queues == 1
    nic = xvm.Nic(network="lan", queues=4)
    assert nic.to_dict()["queues"] == 4 and xvm.Nic.from_dict(nic.to_dict()) == nic
    assert "queues" not in xvm.Nic(network="lan").to_dict()  # one pair: the dict as before
    for bad in (0, 17, -1, 2.0, True, "2", None):
        with pytest.raises(xvm.net.NetworkConfigError, match="queues"):
            xvm.Nic(network="lan", queues=bad)
