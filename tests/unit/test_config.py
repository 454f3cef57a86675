"""DomainConfig: every value is checked on construction and on replace(), a bad value is named;
what the host must provide (files) is checked by preflight(); to_dict()/from_dict() round-trip exactly."""
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import uuid

import pytest

import xvm

from xvm.config import CMDLINE_MAX, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB, DomainConfig, preflight
from xvm.errors import ConfigError
from xvm.machine import layout


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\x7fELF")
    return path


@pytest.fixture
def make(kernel):
    def make(**changes):
        args = dict(name="web", memory_mib=64, kernel=str(kernel))
        args.update(changes)
        return DomainConfig(**args)

    return make


def test_minimal_config_defaults(make, kernel):
    cfg = make()
    assert (cfg.name, cfg.memory_mib, cfg.vcpus, cfg.initrd, cfg.cmdline) == ("web", 64, 1, None, "")
    assert cfg.kernel == str(kernel)
    assert cfg.memory_bytes == 64 << 20
    assert cfg.disks == () and cfg.nics == ()


# --- name -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "7", "web-01", "A.b_c+d", "x" * 64, "0" + "-" * 63])
def test_valid_names(make, name):
    assert make(name=name).name == name


@pytest.mark.parametrize(
    "name",
    ["", "-web", ".hidden", "_x", "+x", "x" * 65, "a b", "a/b", "web\n", "caf\u00e9", "a:b", None, 5, b"web"],
)
def test_invalid_names(make, name):
    with pytest.raises(ConfigError, match=r"domain name .* is invalid"):
        make(name=name)


# --- uuid -----------------------------------------------------------------------------

UUID = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")


def test_uuid_defaults_to_a_fresh_random_uuid(make):
    a, b = make().uuid, make().uuid
    assert isinstance(a, uuid.UUID) and a.version == 4
    assert a != b


@pytest.mark.parametrize(
    "value",
    [
        UUID,
        str(UUID),
        str(UUID).upper(),
        "{" + str(UUID) + "}",
        "urn:uuid:" + str(UUID),
        UUID.hex,
    ],
)
def test_uuid_forms_are_parsed(make, value):
    assert make(uuid=value).uuid == UUID


@pytest.mark.parametrize("value", ["", "not-a-uuid", str(UUID)[:-1], str(UUID) + "0", 12345, b"\x00" * 16])
def test_invalid_uuid(make, value):
    with pytest.raises(ConfigError, match=r"uuid .* is not a UUID"):
        make(uuid=value)


# --- vcpus and memory -----------------------------------------------------------------


@pytest.mark.parametrize("vcpus", [1, 2, MAX_VCPUS])
def test_valid_vcpus(make, vcpus):
    assert make(vcpus=vcpus).vcpus == vcpus


@pytest.mark.parametrize("vcpus", [0, -1, MAX_VCPUS + 1, True, False, 1.0, 2.5, "2", None])
def test_invalid_vcpus(make, vcpus):
    with pytest.raises(ConfigError, match=rf"vcpus must be an integer from 1 to 255, not {vcpus!r}"):
        make(vcpus=vcpus)


@pytest.mark.parametrize("mib", [MIN_MEMORY_MIB, 64, 4096])
def test_valid_memory(make, mib):
    assert make(memory_mib=mib).memory_bytes == mib * 1024 * 1024


@pytest.mark.parametrize("mib", [MIN_MEMORY_MIB - 1, 0, -64, True, 64.0, "64", None])
def test_invalid_memory(make, mib):
    with pytest.raises(ConfigError, match=rf"memory_mib must be an integer of at least 16, not {mib!r}"):
        make(memory_mib=mib)


@pytest.mark.parametrize("mib", [MAX_MEMORY_MIB + 1, 10 ** 46])
def test_memory_beyond_what_x86_64_addresses_is_refused(make, mib):
    # Once accepted (the domain XML's <memory unit='TiB'>999...</memory>), and the VMM died
    # of an OverflowError creating its RAM.
    with pytest.raises(ConfigError, match=rf"memory_mib must be at most {MAX_MEMORY_MIB} .*, not {mib}$"):
        make(memory_mib=mib)
    assert make(memory_mib=MAX_MEMORY_MIB).memory_mib == MAX_MEMORY_MIB


# --- kernel and initrd ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["kernel", "initrd"])
def test_boot_file_paths_are_made_absolute(make, kernel, monkeypatch, field):
    monkeypatch.chdir(kernel.parent)
    cfg = make(**{field: "vmlinux"})
    assert getattr(cfg, field) == str(kernel)
    assert os.path.isabs(getattr(cfg, field))


@pytest.mark.parametrize("field", ["kernel", "initrd"])
def test_boot_file_accepts_path_objects(make, kernel, field):
    assert getattr(make(**{field: pathlib.Path(kernel)}), field) == str(kernel)


@pytest.mark.parametrize("field", ["kernel", "initrd"])
def test_missing_boot_file(make, tmp_path, field):
    missing = tmp_path / "nope"
    cfg = make(**{field: str(missing)})  # plain data: nothing looked at yet
    with pytest.raises(ConfigError, match=f"^{field} {missing} does not exist$"):
        preflight(cfg)


@pytest.mark.parametrize("field", ["kernel", "initrd"])
def test_boot_file_that_is_a_directory(make, tmp_path, field):
    cfg = make(**{field: str(tmp_path)})
    with pytest.raises(ConfigError, match=f"^{field} {tmp_path} is not a regular file$"):
        preflight(cfg)


def test_preflight_passes_a_good_config(make, kernel, tmp_path):
    image = tmp_path / "disk0.img"
    image.write_bytes(bytes(4096))
    assert preflight(make(initrd=str(kernel), disks=[xvm.Disk(image)])) is None


def test_construction_touches_nothing_on_the_host(kernel, monkeypatch):
    """No stat, open or access of any path while a config (with disks and NICs) is built."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"host I/O during construction: {args!r}")

    for name in ("stat", "lstat", "open", "access"):
        monkeypatch.setattr(os, name, refuse)
    monkeypatch.setattr(os.path, "realpath", refuse)
    monkeypatch.setattr("builtins.open", refuse)
    cfg = DomainConfig(name="web", memory_mib=64, kernel="/nonexistent/vmlinux", initrd="/nonexistent/initrd",
                       disks=[xvm.Disk("/nonexistent/a.img"), xvm.Disk("/nonexistent/b.img", readonly=True)],
                       nics=[xvm.Nic(network="lan"), xvm.Nic(bridge="br0", mac="52:54:00:00:00:01")])
    assert DomainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("field", ["kernel", "initrd"])
@pytest.mark.parametrize("value", [42, b"/boot/vmlinuz", ["vmlinux"]])
def test_boot_file_that_is_not_a_path(make, field, value):
    with pytest.raises(ConfigError, match=f"^{field} must be a path, not {type(value).__name__}$"):
        make(**{field: value})


def test_kernel_is_required_even_as_none(make):
    with pytest.raises(ConfigError, match="kernel must be a path, not NoneType"):
        make(kernel=None)


def _config_error_as_nobody(**args):
    """Preflight a DomainConfig in a child process without root's privileges; the error message or ''."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, validate, report, exit without running pytest's cleanup
        message = b"unexpected"
        try:
            os.setgid(65534)
            os.setuid(65534)
            preflight(DomainConfig(**args))
            message = b""
        except ConfigError as e:
            message = str(e).encode()
        finally:
            os.write(write_end, message)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.mark.parametrize("field", ["kernel", "initrd"])
def test_unreadable_boot_file(kernel, field):
    if os.geteuid() == 0:
        where = tempfile.mkdtemp()
        os.chmod(where, 0o755)  # nobody may look up the file but not read it
        check = _config_error_as_nobody
    else:
        where = tempfile.mkdtemp()
        check = None
    try:
        shut = os.path.join(where, "locked")
        open_ = os.path.join(where, "open")
        for path, mode in ((shut, 0o600), (open_, 0o644)):
            with open(path, "wb") as f:
                f.write(b"\x7fELF")
            os.chmod(path, mode)
        if field == "kernel":
            args = dict(name="web", memory_mib=64, kernel=shut)
        else:
            args = dict(name="web", memory_mib=64, kernel=open_, initrd=shut)
        if check is not None:
            assert check(**args) == f"{field} {shut} is not readable"
            args[field] = open_
            assert check(**args) == ""  # the same config with a readable file passes
        else:
            os.chmod(shut, 0)
            cfg = DomainConfig(**args)
            with pytest.raises(ConfigError, match=f"^{field} {shut} is not readable$"):
                preflight(cfg)
    finally:
        shutil.rmtree(where)


# --- cmdline ---------------------------------------------------------------------------


def test_cmdline_limit_is_what_the_loaders_accept():
    # A config that validates must never be refused at boot for its command line.
    assert CMDLINE_MAX == layout.BOOT_CMDLINE_MAX - 1


def test_longest_cmdline(make):
    assert len(make(cmdline="x" * CMDLINE_MAX).cmdline) == CMDLINE_MAX


@pytest.mark.parametrize(
    "cmdline",
    ["x" * (CMDLINE_MAX + 1), "\u00e9" * (CMDLINE_MAX // 2 + 1), "console=ttyS0\0init=/bin/sh"],
    ids=["too-long", "too-many-utf8-bytes", "nul"],
)
def test_invalid_cmdline(make, cmdline):
    with pytest.raises(ConfigError, match="cmdline must be at most 4095 bytes with no NUL character"):
        make(cmdline=cmdline)


@pytest.mark.parametrize("cmdline", [b"console=ttyS0", None, 1])
def test_cmdline_must_be_a_string(make, cmdline):
    with pytest.raises(ConfigError, match=f"cmdline must be a string, not {type(cmdline).__name__}"):
        make(cmdline=cmdline)


# --- disable_cpu_features --------------------------------------------------------------


def test_no_cpu_features_disabled_by_default(make):
    assert make().disable_cpu_features == ()


@pytest.mark.parametrize(
    "value,expected",
    [("xsave", ("xsave",)), (["xsave", "x2apic"], ("xsave", "x2apic")), (iter(["pcid"]), ("pcid",))],
    ids=["one-string", "list", "iterator"],
)
def test_cpu_features_are_normalised_to_a_tuple(make, value, expected):
    assert make(disable_cpu_features=value).disable_cpu_features == expected


@pytest.mark.parametrize("value", ["avx512", ["xsave", "sse9"], ["XSAVE"], [5]])
def test_unknown_cpu_feature_is_named(make, value):
    with pytest.raises(ConfigError, match=r"unknown CPU feature\(s\) .*; known: .*xsave"):
        make(disable_cpu_features=value)


def test_unknown_cpu_feature_message_lists_only_the_unknown(make):
    with pytest.raises(ConfigError) as info:
        make(disable_cpu_features=["xsave", "sse9", "avx512"])
    assert str(info.value).startswith("unknown CPU feature(s) 'sse9', 'avx512'; known: ")


@pytest.mark.parametrize("value", [None, 3])
def test_non_iterable_cpu_features_is_a_config_error(make, value):
    with pytest.raises(ConfigError, match="disable_cpu_features"):
        make(disable_cpu_features=value)


# --- immutability and replace() ---------------------------------------------------------


@pytest.mark.parametrize("field,value", [("name", "db"), ("vcpus", 0), ("memory_mib", 1), ("uuid", None)])
def test_config_is_immutable(make, field, value):
    cfg = make()
    before = cfg.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, field, value)
    assert cfg.to_dict() == before


def test_sequences_are_frozen_into_tuples(make, tmp_path):
    image = tmp_path / "disk0.img"
    image.write_bytes(bytes(4096))
    disks = [xvm.Disk(image)]
    cfg = make(disks=disks, disable_cpu_features=["xsave"])
    disks.append(xvm.Disk(image))
    assert cfg.disks == (xvm.Disk(image),) and cfg.disable_cpu_features == ("xsave",)


def test_disks_must_be_disk_objects_and_distinct(make, tmp_path):
    image = tmp_path / "disk0.img"
    image.write_bytes(bytes(4096))
    with pytest.raises(ConfigError, match="xvm.Disk objects, not str"):
        make(disks=[str(image)])
    with pytest.raises(ConfigError, match="more than once"):
        make(disks=[xvm.Disk(image), xvm.Disk(image, readonly=True)])


def test_keyword_only(kernel):
    with pytest.raises(TypeError):
        DomainConfig("web", 64, str(kernel))


def test_replace_returns_a_changed_copy(make):
    cfg = make(vcpus=2)
    bigger = cfg.replace(memory_mib=128)
    assert (bigger.memory_mib, bigger.vcpus, bigger.uuid, bigger.name) == (128, 2, cfg.uuid, "web")
    assert cfg.memory_mib == 64


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"vcpus": 0}, "vcpus must be"),
        ({"vcpus": True}, "vcpus must be"),
        ({"memory_mib": 8}, "memory_mib must be"),
        ({"name": "bad name"}, "domain name"),
        ({"uuid": "xyz"}, "is not a UUID"),
        ({"kernel": 42}, "kernel must be a path"),
        ({"initrd": b"/boot/initrd"}, "initrd must be a path"),
        ({"cmdline": "a\0b"}, "no NUL"),
        ({"disable_cpu_features": ["sse9"]}, "unknown CPU feature"),
    ],
)
def test_replace_revalidates(make, changes, message):
    cfg = make()
    with pytest.raises(ConfigError, match=message):
        cfg.replace(**changes)


@pytest.mark.parametrize("changes", [{"kernel": "/nonexistent/vmlinux"}, {"initrd": "/nonexistent/initrd"}])
def test_replace_to_a_missing_file_fails_at_preflight(make, changes):
    cfg = make().replace(**changes)
    with pytest.raises(ConfigError, match="does not exist"):
        preflight(cfg)


def test_disk_given_twice_through_a_symlink_fails_at_preflight(make, tmp_path):
    image = tmp_path / "disk0.img"
    image.write_bytes(bytes(4096))
    (tmp_path / "link.img").symlink_to(image)
    cfg = make(disks=[xvm.Disk(image, readonly=True), xvm.Disk(tmp_path / "link.img", readonly=True)])
    with pytest.raises(ConfigError, match="more than once"):
        preflight(cfg)


def test_replace_resolves_a_new_relative_kernel(make, kernel, monkeypatch):
    monkeypatch.chdir(kernel.parent)
    assert make().replace(kernel="vmlinux").kernel == str(kernel)


def test_to_dict(make):
    cfg = make(uuid=UUID, cmdline="quiet")
    d = cfg.to_dict()
    assert d["uuid"] == str(UUID)
    assert d["name"] == "web" and d["memory_mib"] == 64 and d["cmdline"] == "quiet"
    assert DomainConfig.from_dict(d) == cfg  # round trips


def full_config(make, tmp_path):
    return make(uuid=UUID, vcpus=2, initrd=str(tmp_path / "initrd"), cmdline="console=ttyS0 quiet",
                disable_cpu_features=["xsave", "pcid"], virtio_transport="pci",
                disks=[xvm.Disk(tmp_path / "a.img", serial="s-a", cache="writethrough"),
                       xvm.Disk(tmp_path / "b.img", readonly=True)],
                nics=[xvm.Nic(network="lan"), xvm.Nic(bridge="br0", mac="52:54:00:AB:CD:EF", mtu=9000)])


def test_json_round_trip_is_exact(make, tmp_path):
    cfg = full_config(make, tmp_path)
    d = cfg.to_dict()
    assert d["disks"] == [
        {"path": str(tmp_path / "a.img"), "readonly": False, "serial": "s-a", "cache": "writethrough"},
        {"path": str(tmp_path / "b.img"), "readonly": True, "serial": None, "cache": "none"}]
    assert d["nics"] == [{"network": "lan", "mac": None, "bridge": None, "mtu": None},
                         {"network": None, "mac": "52:54:00:ab:cd:ef", "bridge": "br0", "mtu": 9000}]
    assert d["disable_cpu_features"] == ["xsave", "pcid"]
    text = json.dumps(d)
    again = DomainConfig.from_dict(json.loads(text))
    assert again == cfg and json.dumps(again.to_dict()) == text
    assert DomainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("change,message", [
    ({"colour": "blue"}, r"unknown field\(s\) 'colour'"),
    ({"memory_mib": "64"}, "memory_mib must be an integer"),
    ({"uuid": "nope"}, "is not a UUID"),
    ({"disks": "a.img"}, "'disks' must be a list"),
    ({"disks": [{"path": "/a.img", "size": 5}]}, r"unknown field\(s\) 'size'"),
    ({"disks": [{"readonly": True}]}, "exactly one of the fields 'path' and 'volume'"),
    ({"disks": [{"path": "/a.img", "cache": "bogus"}]}, "cache mode 'bogus'"),
    ({"disks": [{"path": "/a.img", "readonly": "yes"}]}, "readonly must be True or False"),
    ({"disks": ["/a.img"]}, "a disk must be a dict"),
    ({"nics": [{"network": "lan", "speed": 10}]}, r"unknown field\(s\) 'speed'"),
    ({"nics": [{"network": "lan", "mac": "01:00:5e:00:00:01"}]}, "multicast"),
    ({"nics": [{}]}, "exactly one"),
])
def test_from_dict_names_the_bad_field(make, tmp_path, change, message):
    d = full_config(make, tmp_path).to_dict()
    d.update(change)
    with pytest.raises(ConfigError, match=message):
        DomainConfig.from_dict(d)


@pytest.mark.parametrize("drop", ["name", "memory_mib", "kernel"])
def test_from_dict_needs_the_required_fields(make, drop):
    d = make().to_dict()
    del d[drop]
    with pytest.raises(ConfigError, match=rf"missing field\(s\) '{drop}'"):
        DomainConfig.from_dict(d)


@pytest.mark.parametrize("value", [None, [], "name=web"])
def test_from_dict_needs_a_dict(value):
    with pytest.raises(ConfigError, match="must be a dict"):
        DomainConfig.from_dict(value)


@pytest.mark.parametrize("field,value,message", [
    ("on_host_stop", "suspend", "on_host_stop must be one of 'shutdown', 'destroy', 'ignore', not 'suspend'"),
    ("shutdown_timeout", 0, "shutdown_timeout must be a number of seconds in (0, 3600], not 0"),
    ("shutdown_timeout", True, "shutdown_timeout must be a number of seconds in (0, 3600], not True"),
    ("shutdown_timeout", "60", "shutdown_timeout must be a number of seconds in (0, 3600], not '60'"),
])
def test_host_stop_policy_is_validated(field, value, message):
    with pytest.raises(ConfigError) as err:
        DomainConfig(name="p", memory_mib=64, kernel="/boot/vmlinuz", **{field: value})
    assert str(err.value) == message


def test_host_stop_policy_round_trips():
    cfg = DomainConfig(name="p", memory_mib=64, kernel="/boot/vmlinuz", on_host_stop="ignore",
                       shutdown_timeout=5)
    assert cfg.shutdown_timeout == 5.0 and DomainConfig.from_dict(cfg.to_dict()) == cfg
