"""A 16550A UART (the PC's COM1: ports 0x3f8-0x3ff, IRQ 4), both directions interrupt driven.

Output bytes go to ``sink(bytes)`` as the guest writes them; input given to
``receive(data)`` is queued and raised to the guest as received-data
interrupts.  ``set_irq(level)`` drives the interrupt line (level triggered).
"""
import collections
import threading

# Register offsets (DLAB=0 unless noted)
RBR_THR = 0  # receive buffer / transmit holding; DLL when DLAB=1
IER = 1  # interrupt enable; DLM when DLAB=1
IIR_FCR = 2  # interrupt identification (read) / FIFO control (write)
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDA = 0x01  # received data available
IER_THRE = 0x02  # transmit holding register empty
IER_RLS = 0x04  # receiver line status
IER_MSI = 0x08  # modem status

IIR_NONE = 0x01
IIR_MSI = 0x00
IIR_THRE = 0x02
IIR_RDA = 0x04
IIR_RLS = 0x06
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10

LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

RX_BUFFER_LIMIT = 1 << 20


class Serial8250:
    def __init__(self, sink, set_irq):
        self._sink = sink
        self._set_irq = set_irq
        self._lock = threading.Lock()
        self._rx = collections.deque()
        self._ier = 0
        self._lcr = 0x03  # 8N1
        self._mcr = MCR_OUT2
        self._scr = 0
        self._dll = 0x0C  # 9600 baud
        self._dlm = 0
        self._fcr = 0
        self._thre_pending = False
        self._irq_level = False
        self.dropped_input = 0
        self.tx_count = 0

    # -- host side --------------------------------------------------------
    def receive(self, data):
        """Queue input for the guest; returns how many bytes were accepted."""
        with self._lock:
            room = RX_BUFFER_LIMIT - len(self._rx)
            accepted = data[:room]
            self.dropped_input += len(data) - len(accepted)
            self._rx.extend(accepted)
            self._update_irq()
        return len(accepted)

    # -- state ------------------------------------------------------------
    def save(self):
        from .persist import SerialState
        with self._lock:
            return SerialState(self._ier, self._lcr, self._mcr, self._scr, self._dll, self._dlm,
                               self._fcr, self._thre_pending, bytes(self._rx).hex())

    def restore(self, state):
        """Load ``state`` in place and drive the interrupt line to match it."""
        with self._lock:
            self._ier, self._lcr, self._mcr, self._scr = state.ier, state.lcr, state.mcr, state.scr
            self._dll, self._dlm, self._fcr = state.dll, state.dlm, state.fcr
            self._thre_pending = state.thre_pending
            self._rx = collections.deque(bytes.fromhex(state.rx))
            self._irq_level = self._pending_interrupt() != IIR_NONE
            self._set_irq(self._irq_level)

    # -- guest side -------------------------------------------------------
    def read(self, offset, size):
        with self._lock:
            return self._read(offset)

    def write(self, offset, size, value):
        out = None
        with self._lock:
            out = self._write(offset, value & 0xFF)
        if out is not None:
            self._sink(out)

    def _read(self, offset):
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                return self._dll
            value = self._rx.popleft() if self._rx else 0
            self._update_irq()
            return value
        if offset == IER:
            return self._dlm if dlab else self._ier
        if offset == IIR_FCR:
            iir = self._pending_interrupt()
            if iir == IIR_THRE:
                self._thre_pending = False  # reading IIR clears a THRE interrupt
                self._update_irq()
            return iir | (IIR_FIFO_ENABLED if self._fcr & FCR_ENABLE else 0)
        if offset == LCR:
            return self._lcr
        if offset == MCR:
            return self._mcr
        if offset == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0)
        if offset == MSR:
            if self._mcr & MCR_LOOP:
                m = self._mcr
                return (
                    (MSR_CTS if m & MCR_RTS else 0) | (MSR_DSR if m & MCR_DTR else 0)
                    | (MSR_RI if m & MCR_OUT1 else 0) | (MSR_DCD if m & MCR_OUT2 else 0)
                )
            return MSR_DCD | MSR_DSR | MSR_CTS
        return self._scr  # SCR

    def _write(self, offset, value):
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                self._dll = value
                return None
            self.tx_count += 1
            self._thre_pending = True  # transmitted at once: the holding register is empty again
            self._update_irq()
            if self._mcr & MCR_LOOP:
                self._rx.append(value)
                self._update_irq()
                return None
            return bytes((value,))
        if offset == IER:
            if dlab:
                self._dlm = value
            else:
                enabling_thre = value & IER_THRE and not self._ier & IER_THRE
                self._ier = value & 0x0F
                if enabling_thre:
                    self._thre_pending = True
                self._update_irq()
        elif offset == IIR_FCR:
            self._fcr = value & 0xC9
            if value & FCR_CLEAR_RX:
                self._rx.clear()
            self._update_irq()
        elif offset == LCR:
            self._lcr = value
        elif offset == MCR:
            self._mcr = value & 0x1F
        elif offset == SCR:
            self._scr = value
        return None

    def _pending_interrupt(self):
        if self._ier & IER_RDA and self._rx:
            return IIR_RDA
        if self._ier & IER_THRE and self._thre_pending:
            return IIR_THRE
        return IIR_NONE

    def _update_irq(self):
        level = self._pending_interrupt() != IIR_NONE
        if level != self._irq_level:
            self._irq_level = level
            self._set_irq(level)
