"""The i8042 keyboard controller, as far as a VMM needs it: the CPU reset line.

Writing command 0xFE (pulse output line 0) to port 0x64 resets the machine;
the self-test and configuration-byte commands answer like a controller with
no keyboard attached, so guests probe it quietly.
"""
import collections
import threading

DATA_PORT = 0x60
COMMAND_PORT = 0x64

CMD_READ_CONFIG = 0x20
CMD_WRITE_CONFIG = 0x60
CMD_SELF_TEST = 0xAA
CMD_PULSE_RESET = 0xFE
SELF_TEST_OK = 0x55
STATUS_OUTPUT_FULL = 0x01
STATUS_SYSTEM_FLAG = 0x04  # set after a successful self-test, as firmware leaves it
STATUS_UNLOCKED = 0x10  # keyboard not inhibited (no "keylock")


class I8042:
    """Registered at 0x60 with size 5 (ports 0x60-0x64)."""

    def __init__(self, on_reset):
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self._output = collections.deque(maxlen=16)
        self._config = 0x00
        self._pending_command = None

    def save(self):
        from .persist import I8042State
        with self._lock:
            return I8042State(self._config, bytes(self._output).hex(), self._pending_command)

    def restore(self, state):
        with self._lock:
            self._config = state.config
            self._output = collections.deque(bytes.fromhex(state.output), maxlen=16)
            self._pending_command = state.pending_command

    def read(self, offset, size):
        with self._lock:
            if offset == 0:
                return self._output.popleft() if self._output else 0
            if offset == COMMAND_PORT - DATA_PORT:
                return STATUS_UNLOCKED | STATUS_SYSTEM_FLAG | (STATUS_OUTPUT_FULL if self._output else 0)
            return 0xFF

    def write(self, offset, size, value):
        value &= 0xFF
        reset = False
        with self._lock:
            if offset == COMMAND_PORT - DATA_PORT:
                if value == CMD_PULSE_RESET:
                    reset = True
                elif value == CMD_READ_CONFIG:
                    self._output.append(self._config)
                elif value == CMD_WRITE_CONFIG:
                    self._pending_command = value
                elif value == CMD_SELF_TEST:
                    self._output.append(SELF_TEST_OK)
            elif offset == 0 and self._pending_command == CMD_WRITE_CONFIG:
                self._config = value
                self._pending_command = None
        if reset:
            self._on_reset()
