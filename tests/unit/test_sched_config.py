"""xvm.sched without privileges: Sched and pin validation, the weight/cap mappings (v1 and v2
file formats) and virsh's text layouts."""
import os

import pytest

from xvm.errors import ConfigError
from xvm.sched import (
    Sched,
    VcpuInfo,
    cfs_bandwidth,
    cpu_max_value,
    cpu_weight_for_weight,
    format_cpuset,
    format_schedinfo,
    format_vcpuinfo,
    host_cpus,
    parse_cpuset,
    sched_params,
    shares_for_weight,
    validate_cpuset,
    validate_pins,
)

CPUS = sorted(host_cpus())
ABSENT = max(CPUS) + 1


def test_sched_defaults_and_round_trip():
    assert Sched() == Sched(weight=256, cap=0)
    sched = Sched(weight=512, cap=150)
    assert sched.to_dict() == {"weight": 512, "cap": 150}
    assert Sched.from_dict(sched.to_dict()) == sched
    assert sched.replace(cap=0) == Sched(512, 0)
    with pytest.raises(AttributeError):
        sched.weight = 1


@pytest.mark.parametrize("kwargs, named", [
    ({"weight": 0}, "0"), ({"weight": 70000}, "70000"), ({"weight": 256.0}, "256.0"),
    ({"weight": True}, "True"), ({"weight": "256"}, "'256'"), ({"cap": -1}, "-1"),
    ({"cap": 65536}, "65536"), ({"cap": 1.5}, "1.5"),
])
def test_sched_rejects_bad_values_naming_them(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        Sched(**kwargs)


def test_sched_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="credit"):
        Sched.from_dict({"weight": 1, "credit": 3})
    with pytest.raises(ConfigError):
        Sched.from_dict([256, 0])


def test_cpuset_syntax():
    assert parse_cpuset("0-2,5") == {0, 1, 2, 5}
    assert parse_cpuset("0-3,^1") == {0, 2, 3}
    assert parse_cpuset("7") == {7}
    assert format_cpuset({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    for bad in ("", "a", "3-1", "1,,2", "-1"):
        with pytest.raises(ConfigError):
            parse_cpuset(bad)


def test_validate_cpuset_accepts_sets_lists_and_strings():
    first = CPUS[0]
    assert validate_cpuset({first}) == {first}
    assert validate_cpuset([first, first]) == {first}
    assert validate_cpuset(f"{first}") == {first}
    assert validate_cpuset(format_cpuset(CPUS)) == set(CPUS)
    assert validate_cpuset(range(first, first + 1)) == {first}


@pytest.mark.parametrize("cpus, pattern", [
    (set(), "empty"), ([], "empty"), ("0,^0", "empty"), ({ABSENT}, str(ABSENT)),
    (f"0-{ABSENT}", str(ABSENT)), ({"0"}, "integer"), (0, "0"), (None, "None"),
])
def test_validate_cpuset_rejects(cpus, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_cpuset(cpus)


def test_host_cpus_match_the_kernel():
    with open("/sys/devices/system/cpu/online") as f:
        assert host_cpus() == parse_cpuset(f.read().strip())
    assert set(os.sched_getaffinity(0)) <= host_cpus()


def test_validate_pins():
    first = CPUS[0]
    assert validate_pins({1: {first}, 0: f"{first}"}, 2) == {0: {first}, 1: {first}}
    assert list(validate_pins({1: [first], 0: [first]}, 2)) == [0, 1]
    with pytest.raises(ConfigError, match="vCPU 2 is out of range"):
        validate_pins({2: {first}}, 2)
    with pytest.raises(ConfigError, match="vCPU -1"):
        validate_pins({-1: {first}}, 2)
    with pytest.raises(ConfigError, match=r"vcpu_pins\[0\].*empty"):
        validate_pins({0: set()}, 1)
    with pytest.raises(ConfigError, match=str(ABSENT)):
        validate_pins({0: {ABSENT}}, 1)
    with pytest.raises(ConfigError):
        validate_pins({0: {first}}, 0)


def test_weight_to_v1_shares():
    assert shares_for_weight(256) == 1024  # Xen's default is the kernel's default
    assert shares_for_weight(1) == 4 and shares_for_weight(65535) == 262140  # within v1's 2..262144
    assert shares_for_weight(768) == 3 * shares_for_weight(256)
    with pytest.raises(ConfigError):
        shares_for_weight(0)


def test_weight_to_v2_cpu_weight():
    assert cpu_weight_for_weight(256) == 100  # the kernel's default cpu.weight
    assert cpu_weight_for_weight(512) == 200 and cpu_weight_for_weight(1024) == 400
    assert cpu_weight_for_weight(1) == 1  # never 0 (the kernel refuses it)
    assert cpu_weight_for_weight(25600) == 10000 and cpu_weight_for_weight(65535) == 10000
    values = [cpu_weight_for_weight(w) for w in range(1, 65536, 97)]
    assert values == sorted(values) and all(1 <= v <= 10000 for v in values)


def test_cap_to_cfs_bandwidth():
    assert cfs_bandwidth(0) == (100_000, -1)
    assert cfs_bandwidth(30) == (30_000, 9_000)  # Xen's 30 ms accounting period
    assert cfs_bandwidth(100) == (30_000, 30_000)
    assert cfs_bandwidth(150) == (30_000, 45_000)  # a multi-vCPU domain: more than one period
    assert cfs_bandwidth(4) == (30_000, 1_200)
    assert cfs_bandwidth(3) == (100_000, 3_000)  # the kernel's 1 ms minimum quota
    assert cfs_bandwidth(1) == (100_000, 1_000)
    for cap in range(1, 1000):
        period, quota = cfs_bandwidth(cap)
        assert quota * 100 == cap * period and quota >= 1000 and 1000 <= period <= 1_000_000


def test_v2_cpu_max_format():
    assert cpu_max_value(0) == "max 100000"
    assert cpu_max_value(30) == "9000 30000"
    assert cpu_max_value(2) == "2000 100000"


def test_sched_params_in_libvirt_names():
    assert sched_params(Sched(512, 30)) == {
        "cpu_shares": 2048, "vcpu_period": 100000, "vcpu_quota": -1, "emulator_period": 100000,
        "emulator_quota": -1, "global_period": 30000, "global_quota": 9000}
    assert sched_params(Sched(512, 0), version=2)["cpu_shares"] == 200


def test_format_schedinfo():
    assert format_schedinfo(Sched()) == (
        "Scheduler      : credit\n"
        "weight         : 256\n"
        "cap            : 0\n"
        "cpu_shares     : 1024\n"
        "vcpu_period    : 100000\n"
        "vcpu_quota     : -1\n"
        "emulator_period: 100000\n"
        "emulator_quota : -1\n"
        "global_period  : 100000\n"
        "global_quota   : -1\n"
    )


def test_format_vcpuinfo():
    infos = [VcpuInfo(0, "running", 9_230_000_000, 0, frozenset({0})),
             VcpuInfo(1, "blocked", 0, 2, frozenset({1, 2, 3}))]
    assert format_vcpuinfo(infos, host_cpu_count=4) == (
        "VCPU:           0\n"
        "CPU:            0\n"
        "State:          running\n"
        "CPU time:       9.2s\n"
        "CPU Affinity:   y---\n"
        "\n"
        "VCPU:           1\n"
        "CPU:            2\n"
        "State:          blocked\n"
        "CPU Affinity:   -yyy\n"
    )
    assert format_vcpuinfo(infos[:1]).endswith("CPU Affinity:   " + "y" + "-" * max(CPUS) + "\n")


def test_vcpuinfo_round_trip():
    info = VcpuInfo(3, "running", 12, 1, frozenset({0, 1}))
    assert VcpuInfo.from_dict(info.to_dict()) == info
    assert info.to_dict()["affinity"] == [0, 1]
