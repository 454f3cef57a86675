"""Actions: the lifecycle operations as plain, frozen, JSON-able data.

Each action is a frozen, keyword-only dataclass registered with :func:`action`.
``Pause().to_json()`` is ``{"type": "Pause"}``; :func:`decode_action` turns
such a dict (from a request) back into the action, checking every field.
Field types are limited to what JSON carries: ``int`` (never a bool),
``float`` (an int is accepted), ``str``, ``bool``, ``bytes`` (a base64 string
in JSON), ``dict`` (a JSON object), ``list[str]``, ``list[int]`` and ``X | None``.

:data:`VMM_ACTIONS` are served by one domain's VMM, :data:`HOST_ACTIONS` by
xvmd; :class:`DomainRequest` carries one VMM action through xvmd to a domain.
"""
import dataclasses
import math
import os
import types
import typing

from .protocol import BadAction, BadPayload, b64, json_type, unb64

_ACTIONS = {}


def _short(name, limit=64):
    text = repr(name)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- field types --------------------------------------------------------------------------------

class _Mismatch(Exception):
    """A value does not fit a field type; ``str()`` says what was expected."""


class _Scalar:
    def __init__(self, python_type, name):
        self.python_type = python_type
        self.name = name

    def check(self, value):
        if isinstance(value, bool) and self.python_type is not bool:
            raise _Mismatch
        if self.python_type is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, self.python_type):
            raise _Mismatch
        if self.python_type is float and not math.isfinite(value):
            raise _Mismatch
        return value

    from_json = check

    def to_json(self, value):
        return value


class _Bytes:
    name = "bytes (a base64 string)"

    def check(self, value):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise _Mismatch
        return bytes(value)

    def from_json(self, value):
        if not isinstance(value, str):
            raise _Mismatch
        try:
            return unb64(value)
        except BadPayload as exc:
            raise _Mismatch(f"is {exc}") from None

    def to_json(self, value):
        return b64(value)


class _Dict:
    name = "an object"

    def check(self, value):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _Mismatch
        return value

    from_json = check

    def to_json(self, value):
        return value


class _StrList:
    name = "a list of strings"

    def check(self, value):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _Mismatch
        return list(value)

    from_json = check

    def to_json(self, value):
        return list(value)


class _IntList:
    name = "a list of ints"

    def check(self, value):
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise _Mismatch
        return list(value)

    from_json = check

    def to_json(self, value):
        return list(value)


class _Optional:
    def __init__(self, inner):
        self.inner = inner
        self.name = f"{inner.name} or null"

    def check(self, value):
        return None if value is None else self.inner.check(value)

    def from_json(self, value):
        return None if value is None else self.inner.from_json(value)

    def to_json(self, value):
        return None if value is None else self.inner.to_json(value)


_SCALARS = {int: _Scalar(int, "an int"), float: _Scalar(float, "a number"),
            str: _Scalar(str, "a string"), bool: _Scalar(bool, "a bool"),
            bytes: _Bytes(), dict: _Dict()}


def _field_type(annotation):
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation == list[str]:
        return _StrList()
    if annotation == list[int]:
        return _IntList()
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        return _Optional(_field_type(inner))
    raise TypeError(f"unsupported action field type {annotation!r}")


# --- the registry -------------------------------------------------------------------------------

class Action:
    """Base of every action; subclasses are declared with :func:`action`."""

    _fields = {}  # name -> field type, set by @action

    def __post_init__(self):
        for name, kind in self._fields.items():
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind.check(value))
            except _Mismatch:
                raise BadAction(f"{type(self).__name__}.{name} must be {kind.name}, not "
                                f"{type(value).__name__}") from None

    def to_json(self):
        """``{"type": ClassName, **fields}``, with bytes as base64."""
        return {"type": type(self).__name__,
                **{name: kind.to_json(getattr(self, name)) for name, kind in self._fields.items()}}


def action(cls):
    """Class decorator: make *cls*, an :class:`Action` subclass, a frozen dataclass; register it."""
    if not (isinstance(cls, type) and issubclass(cls, Action)):
        raise TypeError(f"{cls!r} is not an Action subclass")
    if cls.__name__ in _ACTIONS:
        raise ValueError(f"an action named {cls.__name__!r} is already registered")
    cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    hints = typing.get_type_hints(cls)
    cls._fields = {f.name: _field_type(hints[f.name]) for f in dataclasses.fields(cls)}
    cls._required = frozenset(
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    _ACTIONS[cls.__name__] = cls
    return cls


def decode_action(obj, allowed=None):
    """A decoded JSON value -> the :class:`Action` it describes; :class:`BadAction` otherwise.

    *allowed* (action classes or names) limits which actions are accepted.
    """
    if not isinstance(obj, dict):
        raise BadAction(f"an action must be a JSON object, not {json_type(obj)}")
    if "type" not in obj:
        raise BadAction("an action needs a 'type'")
    name = obj["type"]
    if not isinstance(name, str):
        raise BadAction(f"an action's 'type' must be a string, not {json_type(name)}")
    cls = _ACTIONS.get(name)
    if cls is None:
        raise BadAction(f"unknown action {_short(name)}")
    if allowed is not None:
        names = [a if isinstance(a, str) else a.__name__ for a in allowed]
        if name not in names:
            raise BadAction(f"action {name!r} is not accepted here (accepted: "
                            f"{', '.join(names)})")
    fields = cls._fields
    unknown = [key for key in obj if key != "type" and key not in fields]
    if unknown:
        raise BadAction(f"{name}: unknown field{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(_short(key) for key in sorted(unknown)[:5])}")
    missing = sorted(cls._required - obj.keys())
    if missing:
        raise BadAction(f"{name}: missing field{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing))}")
    values = {}
    for key, value in obj.items():
        if key == "type":
            continue
        kind = fields[key]
        try:
            values[key] = kind.from_json(value)
        except _Mismatch as exc:
            detail = str(exc) or f"must be {kind.name}, not {json_type(value)}"
            raise BadAction(f"{name}.{key} {detail}") from None
    return cls(**values)


# --- the domain (VMM) actions -------------------------------------------------------------------

@action
class Boot(Action):
    """Start the guest (from shutoff or crashed)."""


@action
class Pause(Action):
    """Stop running the vCPUs; the guest keeps its state."""


@action
class Resume(Action):
    """Run the vCPUs of a paused guest again."""


@action
class PowerButton(Action):
    """Press the ACPI power button: ask the guest to shut down."""


@action
class Reset(Action):
    """Reset the machine (the guest reboots)."""


@action
class Destroy(Action):
    """Stop the guest at once (pulling the plug)."""


@action
class Info(Action):
    """The domain's state, id, name and configuration."""


@action
class Stats(Action):
    """The domain's counters (vCPU exits, device metrics)."""


@action
class Ping(Action):
    """Check that the VMM answers; does nothing."""


CONSOLE_OFFSET_MAX = (1 << 63) - 1  # a byte position: no console ever holds more


@action
class ConsoleAttach(Action):
    """Subscribe this connection to console output (events), the buffered history first if
    asked.  ``offset``: the history from that position on (the client has the bytes before
    it; :meth:`xvm.console.Console.subscribe`); without one, all that is retained.  Sent
    without ``offset`` when it is None, as servers that predate it expect."""

    history: bool = True
    offset: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.offset is not None:
            if not 0 <= self.offset <= CONSOLE_OFFSET_MAX:
                raise BadAction(f"ConsoleAttach.offset must be a byte position from 0 to 2**63-1, "
                                f"not {_short(self.offset)}")
            if not self.history:
                raise BadAction("ConsoleAttach: an offset asks for the history from there on; "
                                "history=false asks for none")

    def to_json(self):
        wire = super().to_json()
        if self.offset is None:
            del wire["offset"]
        return wire


@action
class ConsoleInput(Action):
    """Bytes typed on the guest's console."""

    data: bytes


@action
class Quit(Action):
    """Ask the VMM process to exit once the machine is stopped."""


@action
class Wait(Action):
    """Block until the domain is in one of ``states`` (state names); the reply is the state,
    or None after ``timeout`` seconds (None: no limit).  Served by the connection, never
    by the control thread."""

    states: list[str]
    timeout: float | None = None


@action
class DebugSyscall(Action):
    """Test only: the VMM makes the system call ``name`` (the seccomp tests).  Served only
    by a VMM whose environment has ``XVM_TEST_HOOKS=1`` (:mod:`~xvm.vmm.jail`)."""

    name: str


@action
class DebugOpen(Action):
    """Test only: the VMM tries to open ``path`` for reading and says how it went (the
    confinement tests).  Served only with ``XVM_TEST_HOOKS=1``, like :class:`DebugSyscall`."""

    path: str


@action
class Snapshot(Action):
    """Save the domain (paused, disks flushed) to the snapshot file ``path``; it ends shut off.

    ``fd``: the file to write, opened by the host (:class:`~xvm.migration.snapshot.SaveFile`,
    renamed to ``path`` by the host once the VMM is done), so that a confined VMM needs no
    access to its directory.  On a socket it travels as the request's descriptor
    (:func:`split_fd`, :func:`join_fd`) and never as a number."""

    path: str
    fd: int | None = None


@action
class Restore(Action):
    """Start the guest from the snapshot file ``path`` instead of its kernel: it continues
    where it was saved.  ``fd``: the file, opened (read-only) by the host; as for
    :class:`Snapshot`, a descriptor on the wire."""

    path: str
    fd: int | None = None


@action
class MigrateSend(Action):
    """Live-migrate the running domain to the destination VMM at ``host:port`` (prepared by
    the destination host, which gave ``token``, hex): the passes run on a thread of their
    own; MigrateStatus follows them, MigrateAbort stops them (:mod:`xvm.migration.precopy`).
    ``bandwidth`` in MiB/s (None: no limit).  ``fd``: the TCP connection to it, made by the
    host (a confined VMM opens no network sockets); ``tls``: the client's certificates as
    PEM texts (:func:`xvm.migration.tls.read_material`), None for plain TCP."""

    host: str
    port: int
    token: str
    tls: dict | None = None
    downtime_ms: float = 300.0
    bandwidth: float | None = None
    timeout_s: float | None = None
    fd: int | None = None


@action
class MigrateReceive(Action):
    """Boot by receiving a live migration: accept, on the listening socket ``fd`` the host
    made, the source VMM showing ``token`` (hex).  The domain stays shut off until the
    machine state has arrived and the source commits; the id it then gets is above
    ``after_id``.  ``tls``: the server's certificates as PEM texts, None for plain TCP."""

    token: str
    tls: dict | None = None
    after_id: int | None = None
    fd: int | None = None


@action
class MigrateStatus(Action):
    """The progress of this VMM's migration (a dict with "state"), or None if there is none."""


@action
class MigrateAbort(Action):
    """Abort this VMM's migration, outgoing or incoming: the source keeps running."""


@action
class MigrateSwitchover(Action):
    """Internal (never accepted from a socket): the source's last, paused pass."""


@action
class MigrateIncoming(Action):
    """Internal: the state has arrived; load it into the machine (built now if it was not
    already), start it on COMMIT."""


@action
class MigrateIncomingFailed(Action):
    """Internal: the incoming migration failed; the VMM ends."""

    reason: str


TEST_HOOKS = os.environ.get("XVM_TEST_HOOKS") == "1"


@action
class SetScheduler(Action):
    """Change the running domain's credit weight and/or cap at once, without a pause
    (None keeps the current value)."""

    weight: int | None = None
    cap: int | None = None


@action
class PinVcpu(Action):
    """Give vCPU ``vcpu``'s thread the hard affinity ``cpus`` (host CPU numbers)."""

    vcpu: int
    cpus: list[int]


@action
class PinEmulator(Action):
    """Give the VMM's other threads (device workers, control) the hard affinity ``cpus``."""

    cpus: list[int]


@action
class VcpuInfos(Action):
    """One :class:`~xvm.sched.VcpuInfo` dict per vCPU, from the kernel's per-thread accounting."""


@action
class SchedInfo(Action):
    """The domain's live scheduler settings, its cgroup and what the kernel holds there."""


VMM_ACTIONS = (Boot, Pause, Resume, PowerButton, Reset, Destroy, Info, Stats, Ping,
               ConsoleAttach, ConsoleInput, Quit, Wait, Snapshot, Restore, SetScheduler, PinVcpu,
               PinEmulator, VcpuInfos, SchedInfo, MigrateSend, MigrateReceive, MigrateStatus,
               MigrateAbort) + ((DebugSyscall, DebugOpen) if TEST_HOOKS else ())


# --- the host (xvmd) actions --------------------------------------------------------------------

@action
class ListDomains(Action):
    """Every domain the host knows: defined ones and running transient ones."""


@action
class LookupDomain(Action):
    """One domain by name, UUID or id."""

    key: str


@action
class Define(Action):
    """Store a domain configuration (persistent domain)."""

    config: dict


@action
class Create(Action):
    """Start a transient domain from a configuration (``start=False``: only record it,
    for a client that attaches to the console before it sends the Boot)."""

    config: dict
    start: bool = True


@action
class Undefine(Action):
    """Forget a stored domain."""

    domain: str


@action
class Rename(Action):
    """Rename a stored domain."""

    domain: str
    new_name: str


@action
class DomainRequest(Action):
    """Forward one VMM action to a domain's VMM; ``action`` is that action's JSON form.

    An :class:`Action` may be given instead of the dict; either way it is
    checked against :data:`VMM_ACTIONS` and kept in its canonical JSON form.
    """

    domain: str
    action: dict

    def __post_init__(self):
        if isinstance(self.action, Action):
            object.__setattr__(self, "action", self.action.to_json())
        super().__post_init__()
        try:
            inner = decode_action(self.action, allowed=VMM_ACTIONS)
        except BadAction as exc:
            raise BadAction(f"DomainRequest.action: {exc}") from None
        object.__setattr__(self, "action", inner.to_json())

    @property
    def vmm_action(self):
        """The forwarded action, decoded."""
        return decode_action(self.action, allowed=VMM_ACTIONS)


@action
class Capabilities(Action):
    """What the host offers: protocol version, KVM features, limits."""


@action
class SetAutostart(Action):
    """Start (or not) the domain when the host service starts."""

    domain: str
    on: bool


@action
class UpdateConfig(Action):
    """Replace a stored (persistent) domain's configuration; it takes effect at its next boot."""

    domain: str
    config: dict


@action
class RestoreDomain(Action):
    """``host.restore(path)`` through xvmd: the client opens the snapshot file with its own
    permissions and sends the descriptor with the request (xvmd opens no path for a
    client); ``path`` names it in messages."""

    path: str
    fd: int | None = None
    config: dict | None = None  # a DomainConfig's dict: other host resources (host.restore(config=))


# Networks and storage through xvmd: one action per object kind to list, look up or make one,
# and one "request" carrying an operation on a named object (the names below are the whole set).

@action
class ListNetworks(Action):
    """Every network of the host: ``{"config", "active", "created"}`` each."""


@action
class DefineNetwork(Action):
    """Store a network (an :class:`xvm.Network` as a dict); ``start``: and start it."""

    config: dict
    start: bool = False


NETWORK_OPS = ("lookup", "start", "destroy", "undefine", "ports")


@action
class NetworkRequest(Action):
    """One operation (:data:`NETWORK_OPS`) on the network ``network``."""

    network: str
    op: str

    def __post_init__(self):
        super().__post_init__()
        if self.op not in NETWORK_OPS:
            raise BadAction(f"NetworkRequest.op: {_short(self.op)} is not one of {', '.join(NETWORK_OPS)}")


@action
class ListPools(Action):
    """Every storage pool's configuration."""


@action
class CreatePool(Action):
    """Define a storage pool (an :class:`xvm.Pool` as a dict) and make its directory or dataset."""

    config: dict


# op -> the names of its arguments (all given, nothing else)
POOL_OPS = {"lookup": (), "available": (), "volumes": (), "create_volume": ("name", "size_bytes", "format"),
            "destroy": ("delete_volumes",)}
VOLUME_OPS = {"info": (), "resize": ("size", "shrink"), "delete": (), "dependents": (), "snapshots": (),
              "snapshot": ("name",), "delete_snapshot": ("name",), "rollback": ("name",),
              "clone": ("snapshot", "new_name")}


def _check_op(what, op, args, ops):
    if op not in ops:
        raise BadAction(f"{what}.op: {_short(op)} is not one of {', '.join(ops)}")
    if set(args) != set(ops[op]):
        raise BadAction(f"{what} {op}: arguments are {', '.join(ops[op]) or 'none'}, not "
                        f"{_short(sorted(args))}")


@action
class PoolRequest(Action):
    """One operation (:data:`POOL_OPS`) on the pool ``pool``, with its arguments."""

    pool: str
    op: str
    args: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        _check_op("PoolRequest", self.op, self.args, POOL_OPS)


@action
class VolumeRequest(Action):
    """One operation (:data:`VOLUME_OPS`) on the volume ``volume`` ("POOL/VOLUME")."""

    volume: str
    op: str
    args: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        _check_op("VolumeRequest", self.op, self.args, VOLUME_OPS)


@action
class CloneDomain(Action):
    """``host.clone_domain(source, new_name, snapshot)``: a new domain on clones of the disks."""

    source: str
    new_name: str
    snapshot: str = "golden"


@action
class DomainDisks(Action):
    """Snapshot (``op="snapshot"``) or roll back (``op="rollback"``) every disk of a shut-off domain."""

    domain: str
    op: str
    name: str

    def __post_init__(self):
        super().__post_init__()
        if self.op not in ("snapshot", "rollback"):
            raise BadAction(f"DomainDisks.op: {_short(self.op)} is not snapshot or rollback")


HOST_ACTIONS = (ListDomains, LookupDomain, Define, Create, Undefine, Rename, DomainRequest,
                Capabilities, SetAutostart, UpdateConfig, RestoreDomain, ListNetworks, DefineNetwork,
                NetworkRequest, ListPools, CreatePool, PoolRequest, VolumeRequest, CloneDomain, DomainDisks)


# --- descriptors -------------------------------------------------------------------------------
# Actions that carry one open file.  In this process ``fd`` is the descriptor itself; on a
# socket the request carries it (SCM_RIGHTS) and its JSON has no ``fd``: a number in JSON
# would name one of the *receiver's* descriptors (its /dev/kvm, its store), so it is refused.
FD_ACTIONS = (Snapshot, Restore, RestoreDomain, MigrateSend, MigrateReceive)


def split_fd(action):
    """``(action as sent, fds)``: a descriptor action without its ``fd`` number, and the
    descriptor to attach; any other action as it is, with none."""
    fd = action.fd if isinstance(action, FD_ACTIONS) else None
    if fd is None:
        return action, []
    return dataclasses.replace(action, fd=None), [fd]


def join_fd(action, fds):
    """The received ``action`` with the descriptors ``fds`` that came with it: a descriptor
    action takes exactly one (its ``fd``); any other action takes none.  BadPayload
    otherwise (the caller still owns, and closes, ``fds``)."""
    name = type(action).__name__
    if isinstance(action, FD_ACTIONS):
        if action.fd is not None:
            raise BadPayload(f"{name}: 'fd' is never sent as a number; attach the file's descriptor")
        if len(fds) != 1:
            raise BadPayload(f"{name} needs the file's descriptor attached to the request "
                             f"(SCM_RIGHTS), not {len(fds)}")
        return dataclasses.replace(action, fd=fds[0])
    if fds:
        raise BadPayload(f"{name} takes no descriptor; {len(fds)} came with the request")
    return action
