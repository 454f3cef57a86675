"""Actions: JSON round trips, every validation failure by name.  decode_action on any JSON is
a fuzz target: tests/fuzz/test_fuzz_protocol.py."""
import dataclasses
import json

import pytest

from xvm.vmm import actions
from xvm.vmm.actions import (
    HOST_ACTIONS, VMM_ACTIONS, Action, ConsoleAttach, ConsoleInput, Create, Define,
    DomainRequest, LookupDomain, Pause, Rename, SetAutostart, action, decode_action,
)
from xvm.vmm.protocol import BadAction, ProtocolError


@action
class AllTypes(Action):
    """Every supported field type, for these tests."""

    count: int
    ratio: float
    name: str
    flag: bool
    blob: bytes
    table: dict
    tags: list[str]
    maybe: int | None = None


def through_json(act, allowed=None):
    return decode_action(json.loads(json.dumps(act.to_json())), allowed)


def test_the_action_sets():
    assert [a.__name__ for a in VMM_ACTIONS] == [
        "Boot", "Pause", "Resume", "PowerButton", "Reset", "Destroy", "Info", "Stats", "Ping",
        "ConsoleAttach", "ConsoleInput", "Quit", "Wait", "Snapshot", "Restore",
        "SetScheduler", "PinVcpu", "PinEmulator", "VcpuInfos", "SchedInfo", "MigrateSend", "MigrateReceive",
        "MigrateStatus", "MigrateAbort"]
    assert [a.__name__ for a in HOST_ACTIONS] == [
        "ListDomains", "LookupDomain", "Define", "Create", "Undefine", "Rename", "DomainRequest",
        "Capabilities", "SetAutostart", "UpdateConfig", "RestoreDomain", "ListNetworks", "DefineNetwork",
        "NetworkRequest", "ListPools", "CreatePool", "PoolRequest", "VolumeRequest", "CloneDomain", "DomainDisks"]


EXAMPLES = [
    *(cls() for cls in VMM_ACTIONS + HOST_ACTIONS if not actions._ACTIONS[cls.__name__]._required),
    ConsoleAttach(history=False),
    ConsoleInput(data=b"root\n\x00\xff"),
    LookupDomain(key="web"),
    Define(config={"name": "web", "memory": 256, "disks": [{"path": "/a"}]}),
    Create(config={"name": "t"}),
    actions.Undefine(domain="web"),
    Rename(domain="web", new_name="www"),
    DomainRequest(domain="web", action=ConsoleInput(data=b"x")),
    SetAutostart(domain="web", on=True),
    actions.SetScheduler(weight=512, cap=None),
    actions.PinVcpu(vcpu=1, cpus=[0, 1]),
    actions.PinEmulator(cpus=[1]),
    actions.UpdateConfig(domain="web", config={"name": "web"}),
    AllTypes(count=3, ratio=0.5, name="n", flag=False, blob=b"\x01", table={"a": [1]},
             tags=["x", "y"], maybe=7),
]


@pytest.mark.parametrize("act", EXAMPLES, ids=lambda a: type(a).__name__)
def test_round_trip(act):
    assert through_json(act) == act


def test_to_json_shape():
    assert Pause().to_json() == {"type": "Pause"}
    assert ConsoleAttach().to_json() == {"type": "ConsoleAttach", "history": True}
    assert ConsoleInput(data=b"hi").to_json() == {"type": "ConsoleInput", "data": "aGk="}
    assert DomainRequest(domain="d", action=Pause()).to_json() == {
        "type": "DomainRequest", "domain": "d", "action": {"type": "Pause"}}


def test_actions_are_frozen_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ConsoleAttach().history = False
    with pytest.raises(TypeError):
        LookupDomain("web")


def test_float_accepts_an_int_and_optional_accepts_null():
    got = decode_action({"type": "AllTypes", "count": 1, "ratio": 2, "name": "", "flag": True,
                         "blob": "", "table": {}, "tags": [], "maybe": None})
    assert got.ratio == 2.0 and isinstance(got.ratio, float) and got.maybe is None


def test_domain_request_decodes_its_action():
    req = decode_action({"type": "DomainRequest", "domain": "web",
                         "action": {"type": "ConsoleAttach"}})
    assert req.action == {"type": "ConsoleAttach", "history": True}
    assert req.vmm_action == ConsoleAttach()


def test_allowed_takes_classes_or_names():
    assert decode_action({"type": "Pause"}, allowed=VMM_ACTIONS) == Pause()
    assert decode_action({"type": "Pause"}, allowed=["Pause"]) == Pause()


VALID = {"type": "AllTypes", "count": 1, "ratio": 1.5, "name": "n", "flag": True, "blob": "AA==",
         "table": {}, "tags": []}


@pytest.mark.parametrize("obj, allowed, text", [
    ([], None, "an action must be a JSON object, not array"),
    (None, None, "an action must be a JSON object, not null"),
    ({}, None, "an action needs a 'type'"),
    ({"type": 5}, None, "an action's 'type' must be a string, not int"),
    ({"type": "Reboot"}, None, "unknown action 'Reboot'"),
    ({"type": "x" * 1000}, None, "unknown action '" + "x" * 60 + "..."),
    ({"type": "ListDomains"}, VMM_ACTIONS,
     "action 'ListDomains' is not accepted here (accepted: Boot, Pause, Resume, PowerButton, "
     "Reset, Destroy, Info, Stats, Ping, ConsoleAttach, ConsoleInput, Quit, Wait, Snapshot, Restore, "
     "SetScheduler, PinVcpu, PinEmulator, VcpuInfos, SchedInfo, MigrateSend, MigrateReceive, "
     "MigrateStatus, MigrateAbort)"),
    ({"type": "Pause"}, HOST_ACTIONS,
     "action 'Pause' is not accepted here (accepted: ListDomains, LookupDomain, Define, Create, "
     "Undefine, Rename, DomainRequest, Capabilities, SetAutostart, UpdateConfig, RestoreDomain, ListNetworks, "
     "DefineNetwork, NetworkRequest, ListPools, CreatePool, PoolRequest, VolumeRequest, CloneDomain, "
     "DomainDisks)"),
    ({"type": "PoolRequest", "pool": "p", "op": "rm"}, HOST_ACTIONS,
     "PoolRequest.op: 'rm' is not one of lookup, available, volumes, create_volume, destroy"),
    ({"type": "PoolRequest", "pool": "p", "op": "destroy", "args": {}}, HOST_ACTIONS,
     "PoolRequest destroy: arguments are delete_volumes, not []"),
    ({"type": "VolumeRequest", "volume": "p/v", "op": "clone", "args": {"snapshot": "s", "x": 1}}, HOST_ACTIONS,
     "VolumeRequest clone: arguments are snapshot, new_name, not ['snapshot', 'x']"),
    ({"type": "NetworkRequest", "network": "n", "op": "__class__"}, HOST_ACTIONS,
     "NetworkRequest.op: '__class__' is not one of lookup, start, destroy, undefine, ports"),
    ({"type": "DomainDisks", "domain": "d", "op": "delete", "name": "s"}, HOST_ACTIONS,
     "DomainDisks.op: 'delete' is not snapshot or rollback"),
    ({"type": "Boot", "force": True}, None, "Boot: unknown field 'force'"),
    ({"type": "Boot", "b": 1, "a": 2}, None, "Boot: unknown fields 'a', 'b'"),
    ({"type": "Rename"}, None, "Rename: missing fields 'domain', 'new_name'"),
    ({"type": "Rename", "domain": "a"}, None, "Rename: missing field 'new_name'"),
    ({"type": "LookupDomain", "key": 3}, None, "LookupDomain.key must be a string, not int"),
    ({"type": "SetAutostart", "domain": "a", "on": 1}, None,
     "SetAutostart.on must be a bool, not int"),
    ({"type": "ConsoleAttach", "history": "yes"}, None,
     "ConsoleAttach.history must be a bool, not string"),
    ({"type": "ConsoleAttach", "history": False, "offset": 0}, None,
     "ConsoleAttach: an offset asks for the history from there on; history=false asks for none"),
    ({"type": "ConsoleInput", "data": [104]}, None,
     "ConsoleInput.data must be bytes (a base64 string), not array"),
    ({"type": "ConsoleInput", "data": "abc"}, None,
     "ConsoleInput.data is not valid base64: 'abc' (Incorrect padding)"),
    ({"type": "Define", "config": []}, None, "Define.config must be an object, not array"),
    ({**VALID, "count": True}, None, "AllTypes.count must be an int, not bool"),
    ({**VALID, "count": 1.0}, None, "AllTypes.count must be an int, not float"),
    ({**VALID, "ratio": False}, None, "AllTypes.ratio must be a number, not bool"),
    ({**VALID, "tags": ["a", 1]}, None, "AllTypes.tags must be a list of strings, not array"),
    ({**VALID, "tags": "ab"}, None, "AllTypes.tags must be a list of strings, not string"),
    ({**VALID, "maybe": "1"}, None, "AllTypes.maybe must be an int or null, not string"),
    ({"type": "DomainRequest", "domain": "d", "action": {"type": "Create", "config": {}}}, None,
     "DomainRequest.action: action 'Create' is not accepted here (accepted: Boot, Pause, Resume, "
     "PowerButton, Reset, Destroy, Info, Stats, Ping, ConsoleAttach, ConsoleInput, Quit, Wait, Snapshot, Restore, "
     "SetScheduler, PinVcpu, PinEmulator, VcpuInfos, SchedInfo, MigrateSend, MigrateReceive, "
     "MigrateStatus, MigrateAbort)"),
    ({"type": "PinVcpu", "vcpu": 0, "cpus": [0, True]}, None, "PinVcpu.cpus must be a list of ints, not array"),
    ({"type": "PinVcpu", "vcpu": 0, "cpus": "0-1"}, None, "PinVcpu.cpus must be a list of ints, not string"),
    ({"type": "SetScheduler", "weight": "512"}, None, "SetScheduler.weight must be an int or null, not string"),
    ({"type": "DomainRequest", "domain": "d", "action": {"type": "ConsoleInput"}}, None,
     "DomainRequest.action: ConsoleInput: missing field 'data'"),
    ({"type": "DomainRequest", "domain": "d", "action": "Pause"}, None,
     "DomainRequest.action must be an object, not string"),
])
def test_bad_actions(obj, allowed, text):
    with pytest.raises(BadAction) as info:
        decode_action(obj, allowed)
    assert str(info.value) == text
    assert isinstance(info.value, ProtocolError)


def test_constructing_a_bad_action_in_python_fails_the_same_way():
    with pytest.raises(BadAction, match="^ConsoleInput.data must be bytes .*, not str$"):
        ConsoleInput(data="text")
    with pytest.raises(BadAction, match="^AllTypes.ratio must be a number, not float$"):
        AllTypes(count=1, ratio=float("inf"), name="", flag=True, blob=b"", table={}, tags=[])
    with pytest.raises(BadAction, match="^DomainRequest.action: unknown action 'Nope'$"):
        DomainRequest(domain="d", action={"type": "Nope"})


def test_the_decorator_checks_its_class():
    with pytest.raises(TypeError, match="is not an Action subclass"):
        action(type("Loose", (), {}))
    with pytest.raises(ValueError, match="an action named 'Pause' is already registered"):
        action(type("Pause", (Action,), {}))
    with pytest.raises(TypeError, match="unsupported action field type"):
        action(type("WithSet", (Action,), {"__annotations__": {"s": set}}))
