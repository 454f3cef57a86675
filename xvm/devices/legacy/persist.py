"""Plain-data state of the legacy devices (COM1, i8042), for snapshots."""
from dataclasses import dataclass

from ...persist import PlainState


@dataclass(frozen=True)
class SerialState(PlainState):
    """The 16550A's registers and the input the guest has not read yet (hex)."""

    ier: int
    lcr: int
    mcr: int
    scr: int
    dll: int
    dlm: int
    fcr: int
    thre_pending: bool
    rx: str = ""


@dataclass(frozen=True)
class I8042State(PlainState):
    config: int
    output: str = ""  # bytes queued for the guest, hex
    pending_command: int | None = None
