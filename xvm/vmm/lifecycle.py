"""Domain states and the one table that says which action is legal in which state."""
import enum

from . import actions as A


class DomainState(enum.Enum):
    SHUTOFF = "shutoff"
    RUNNING = "running"
    PAUSED = "paused"
    CRASHED = "crashed"


S = DomainState
ANY = frozenset(DomainState)
LIVE = frozenset({S.RUNNING, S.PAUSED})  # a machine with vCPU threads exists

# action type: (states it is legal in, state after it; None = unchanged)
TRANSITIONS = {
    A.Boot: ({S.SHUTOFF, S.CRASHED}, S.RUNNING),
    A.Pause: ({S.RUNNING}, S.PAUSED),
    A.Resume: ({S.PAUSED}, S.RUNNING),
    A.PowerButton: ({S.RUNNING}, None),
    A.Reset: ({S.RUNNING}, S.RUNNING),
    A.Destroy: ({S.RUNNING, S.PAUSED, S.CRASHED}, S.SHUTOFF),
    A.ConsoleInput: ({S.RUNNING, S.PAUSED}, None),
    A.Quit: ({S.SHUTOFF, S.CRASHED}, None),
    A.Info: (ANY, None),
    A.Stats: (ANY, None),
    A.Ping: (ANY, None),
    A.ConsoleAttach: (ANY, None),
    A.Wait: (ANY, None),
    A.DebugSyscall: (ANY, None),  # test only (XVM_TEST_HOOKS=1)
    A.DebugOpen: (ANY, None),  # test only
    A.Snapshot: ({S.RUNNING, S.PAUSED}, S.SHUTOFF),
    A.Restore: ({S.SHUTOFF, S.CRASHED}, S.RUNNING),
    A.SetScheduler: (LIVE, None),
    A.PinVcpu: (LIVE, None),
    A.PinEmulator: (LIVE, None),
    A.VcpuInfos: (LIVE, None),
    A.SchedInfo: (LIVE, None),
    A.MigrateSend: (LIVE, None),
    A.MigrateReceive: ({S.SHUTOFF, S.CRASHED}, None),
    A.MigrateStatus: (ANY, None),
    A.MigrateAbort: (ANY, None),
    A.MigrateSwitchover: (LIVE, None),  # ends shutoff: the handler records it before saying so
    A.MigrateIncoming: ({S.SHUTOFF, S.CRASHED}, None),
    A.MigrateIncomingFailed: (ANY, None),
}

# What the action is called in messages ("cannot pause domain 'x': it is shutoff").
VERBS = {
    A.Boot: "start", A.Pause: "pause", A.Resume: "resume", A.PowerButton: "shutdown",
    A.Reset: "reboot", A.Destroy: "destroy", A.ConsoleInput: "write to the console of",
    A.Quit: "quit the VMM of", A.Snapshot: "save", A.Restore: "restore",
    A.Quit: "quit the VMM of", A.SetScheduler: "change the scheduler of", A.PinVcpu: "pin a vCPU of",
    A.PinEmulator: "pin the emulator threads of", A.VcpuInfos: "read the vCPUs of",
    A.SchedInfo: "read the scheduler of", A.MigrateSend: "migrate",
    A.MigrateReceive: "receive a migration of", A.MigrateSwitchover: "migrate",
}


def check(action, state, name):
    """The state after ``action`` (None: unchanged); StateError if it is illegal now."""
    from ..errors import StateError

    legal, after = TRANSITIONS[type(action)]
    if state not in legal:
        verb = VERBS.get(type(action), type(action).__name__)
        allowed = ", ".join(sorted(s.value for s in legal))
        raise StateError(f"cannot {verb} domain {name!r}: it is {state.value} (allowed when {allowed})",
                         state=state, operation=verb)
    return after
