"""Pre-copy live migration inside the VMMs: :class:`Outgoing` (the source VMM) streams
guest RAM and the machine state to :class:`Incoming` (the destination VMM) on the data
connection of :mod:`.stream`.

The source first sends the guest's CPUID, which the destination checks at once (a host
lacking a feature refuses before any page).  It turns on KVM's dirty logging, sends all of
memory (zero ranges as ranges),
then, pass after pass, the pages dirtied meanwhile, until what is left would go within
the downtime limit at the rate measured on the last pass -- and, within it, down to a few
milliseconds' worth while the passes shrink it (:meth:`Outgoing._should_stop`).
Then, on the VMM's control thread, it pauses the machine (devices drain in-flight I/O),
sends the last pages and the machine state (:meth:`~xvm.machine.Machine.save_state`,
disks flushed), and waits for READY; it sends COMMIT and, on RUNNING, the source domain
ends.  The destination VMM built its machine around the memory that receives the pages
before the source connected -- VM, devices, the vCPUs made with their CPUID, cgroups,
its vCPU threads started, parked -- so that the switchover there only loads the state and
lets the threads go on COMMIT.  Each side times the steps of its switchover
(:class:`Phases`); the destination's come back in RUNNING, and both end up in the
migration's stats with the downtime (pause to RUNNING) and ``downtime_sent_ms`` (pause to
the state sent: the span QEMU reports as its downtime).  A guest dirtying
memory faster than the link is throttled by parking its vCPUs part of every 50 ms
(auto-converge: 20 % first, 10 % more every pass that does not shrink, up to 99 %).

Until COMMIT is sent any failure — abort, timeout, a dead or refusing destination —
resumes the source as it was (dirty logging off, throttle lifted); the destination VMM
then gives up on its own and exits.  Disks are shared (the same image on both hosts) and
their locks change hands at the switchover: the source, paused and flushed, lets go of
them before it sends the state; the destination takes them before READY (and lets go
again if no COMMIT follows); a source resuming after a failed switchover takes them back
first — never do two machines run on one disk.

KVM's dirty log sees only the vCPUs' writes; what the VMM's devices write into guest
RAM (virtio buffers — a block read's preadv, a received frame — and the used rings) is
recorded while a migration runs where every chain completes (``Queue.add_used``, see
``GuestMemory.track_device_writes``) and sent with the vCPUs' dirty pages in every pass
and in the final one (the devices are drained by then).
"""
import json
import logging
import math
import mmap
import os
import socket
import threading
import time

from ..kvm.memory import PAGE_SIZE, GuestMemory
from ..machine import state as _machine_state  # noqa: F401  (imported now, not during the downtime)
from . import snapshot as _snapshot  # noqa: F401  (likewise)
from . import stream as S
from .stream import MigrationError

log = logging.getLogger(__name__)

CHUNK_PAGES = 256  # at most 1 MiB of pages per PAGES frame
ACCEPT_TIMEOUT = 30.0  # the destination VMM waits this long for the source VMM
IDLE_TIMEOUT = 30.0  # a connection silent for this long is dead
THROTTLE_INITIAL, THROTTLE_STEP, THROTTLE_MAX = 20, 10, 99
THROTTLE_PERIOD = 0.05  # seconds: the vCPUs are parked throttle_pct % of each
HANDSHAKE_TIMEOUT = 10.0
DISK_HANDOVER_WAIT = 2.0  # the destination waits this long for the disks the source let go of
RELOCK_WAIT = 10.0  # an aborted switchover's source waits this long for the destination to let go of the disks


MADV_POPULATE_READ = 22  # Linux 5.14: fault a range's pages in at once (older kernels: EINVAL, skipped)
ZERO_PAGE = bytes(PAGE_SIZE)
AIM_MS = 5.0  # passes go on while they shrink, until the last one would take this long (see _should_stop)
MAX_PASSES = 30


def nonzero_page_runs(mapping, start, end):
    """``(start, end)`` byte offsets of the maximal runs of pages in ``[start, end)`` (page
    aligned) holding a non-zero byte.  Page by page: a zero page costs one 4 KiB compare, a
    data page usually its first bytes -- cheaper than comparing larger chunks first, which
    copies data pages several times over (guest RAM in use is mostly data)."""
    zero, runs, run_start = ZERO_PAGE, [], None
    for page in range(start, end, PAGE_SIZE):
        if mapping[page:page + PAGE_SIZE] == zero:
            if run_start is not None:
                runs.append((run_start, page))
                run_start = None
        elif run_start is None:
            run_start = page
    if run_start is not None:
        runs.append((run_start, end))
    return runs


def _populate(region, start, length):
    """Map ``region``'s pages in ``[start, start + length)`` into this process at once
    (the VMM has not touched most of what the guest wrote: a fault per page otherwise)."""
    try:
        region.mapping.madvise(MADV_POPULATE_READ, start, length)
    except (OSError, ValueError):
        pass


def dirty_runs(bitmap, base_page=0):
    """``(first page, count)`` runs of set bits in a KVM dirty bitmap (bit i = page i)."""
    runs = []
    value = int.from_bytes(bitmap, "little")
    page = 0
    while value:
        low = (value & -value).bit_length() - 1  # skip the zeros
        value >>= low
        page += low
        ones = (~value & (value + 1)).bit_length() - 1  # length of the run of ones
        runs.append((base_page + page, ones))
        value >>= ones
        page += ones
    return runs


class Outgoing:
    """The source side, in the source VMM: ``start()`` the passes on a thread of their own;
    the VMM's control thread runs :meth:`switchover` when asked (``MigrateSwitchover``)."""

    def __init__(self, vmm, action):
        self.vmm = vmm
        self.action = action
        self.machine = getattr(vmm.machine, "machine", vmm.machine)
        self.status = {"state": "connecting", "iterations": 0, "bytes_sent": 0, "pages_sent": 0,
                       "zero_bytes": 0, "memory_bytes": self.machine.memory.size, "remaining_bytes":
                       self.machine.memory.size, "rate_bytes_per_s": 0.0, "throttle_pct": 0,
                       "downtime_ms": None, "downtime_sent_ms": None, "switchover_ms": None,
                       "started_at": time.time(), "error": None}
        self._aborted = None  # the reason, once abort() was called
        if action.fd is None:
            raise MigrationError("MigrateSend needs the connection the host made", what="connect")
        self._sock = socket.socket(fileno=os.dup(action.fd))  # the host closes its own
        self._channel = None
        self._thread = None
        self._deadline = None if action.timeout_s is None else time.monotonic() + action.timeout_s
        self._limit = S.RateLimit(action.bandwidth * (1 << 20) if action.bandwidth else None)
        self.collected = False  # the host has read the final status (the VMM may exit)
        self._final_runs = []  # the dirty runs of the pass that decided to stop
        self._previous_dirty = None
        self._previous_expected = None
        self._throttler = None
        self._throttle_lock = threading.Lock()
        self._unthrottled = threading.Event()
        self._dirty_on = False
        self._disks_released = False  # at the switchover, until the destination runs the guest
        self._t0 = time.monotonic()

    # -- control ---------------------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="xvm-migrate-send", daemon=True)
        self._thread.start()

    def abort(self, reason="the migration was aborted"):
        if self.status["state"] in ("completed", "failed", "unknown"):
            return False
        self._aborted = reason
        if self._channel is not None:
            self._channel.shutdown()
        return True

    @property
    def finished(self):
        return self.status["state"] in ("completed", "failed", "unknown")

    def _check(self):
        if self._aborted:
            raise MigrationError(self._aborted, what="aborted")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise MigrationError(f"the migration did not finish within {self.action.timeout_s:g} s "
                                 f"(guest dirtying {self.status['remaining_bytes'] >> 20} MiB per pass)",
                                 what="timeout")

    # -- the passes ------------------------------------------------------------------------------
    def _run(self):
        a = self.action
        try:
            context = None
            if a.tls is not None:
                from .tls import context_from_material
                context = context_from_material(a.tls, "client")
            self._channel = S.Channel.over(self._sock, (a.host, a.port), context, timeout=HANDSHAKE_TIMEOUT,
                                           what="the destination VMM")
            self._sock = None  # the channel's now
            if self._aborted:
                self._channel.shutdown()
            self._channel.send_hello(bytes.fromhex(a.token))
            self._channel.recv_hello()
            self._channel.settimeout(IDLE_TIMEOUT)
            vcpus = self.machine.vm.vcpus
            self._channel.send_cpuid(vcpus[0].cpuid_entries() if vcpus else [])  # checked now, not paused
            self.machine.memory.track_device_writes(True)  # what KVM's log does not see
            self.machine.vm.set_dirty_logging(True)
            self._dirty_on = True
            self._collect_dirty()  # start every bitmap empty
            self.status["state"] = "active"
            self._first_pass()
            while True:
                self._check()
                runs, dirty = self._collect_dirty()
                rate = max(self.status["rate_bytes_per_s"], 1.0)
                self.status["remaining_bytes"] = dirty * PAGE_SIZE
                if self._should_stop(dirty * PAGE_SIZE / rate * 1000):
                    self._final_runs = runs
                    break
                self._converge(dirty)
                self._send_pass(runs)
            self.status["state"] = "switchover"
            self.vmm.handle(_switchover_action())
        except MigrationError as e:
            self._fail(MigrationError(self._aborted, what="aborted") if self._aborted else e)
        except Exception as e:  # a bug: still leave the source running
            log.exception("migration failed")
            self._fail(MigrationError(f"the migration failed: {type(e).__name__}: {e}", what="state"))
        finally:
            if self._sock is not None:  # never wrapped in a channel
                self._sock.close()
                self._sock = None

    def _first_pass(self):
        start = time.monotonic()
        sent = self._channel.bytes_sent
        for region in self.machine.memory.regions:
            offset = 0
            for ext_start, ext_end in region.data_extents():
                _populate(region, ext_start, ext_end - ext_start)
                for run_start, run_end in nonzero_page_runs(region.mapping, ext_start, ext_end):
                    self._zero(region.gpa + offset, run_start - offset)
                    self._send_range(region, run_start, run_end - run_start)
                    offset = run_end
            self._zero(region.gpa + offset, region.size - offset)
        self._end_pass(start, sent)

    def _zero(self, gpa, length):
        if length > 0:
            self._channel.send_zero(gpa, length)
            self.status["zero_bytes"] += length

    def _send_range(self, region, offset, length):
        chunk = CHUNK_PAGES * PAGE_SIZE
        view = memoryview(region.mapping)
        try:
            for at in range(offset, offset + length, chunk):
                self._check()
                n = min(chunk, offset + length - at)
                self._limit.take(n)
                self._channel.send_pages(region.gpa + at, view[at:at + n])
                self.status["pages_sent"] += n // PAGE_SIZE
                self.status["bytes_sent"] = self._channel.bytes_sent
        finally:
            view.release()

    def _collect_dirty(self):
        """``([(region, first page, count)], pages)`` dirtied since the last call: by the
        vCPUs (KVM's dirty log) or by the devices (``memory.device_dirty``)."""
        vm, runs, total = self.machine.vm, [], 0
        memory = self.machine.memory
        by_gpa = {region.gpa: region for region in memory.regions}
        device = memory.device_dirty.take() if memory.device_dirty is not None else set()
        for slot, (gpa, size, _) in vm.slots.items():
            region = by_gpa.get(gpa)
            bitmap = vm.get_dirty_log(slot)
            first, pages = gpa // PAGE_SIZE, size // PAGE_SIZE
            mine = [p - first for p in device if first <= p < first + pages]
            if mine:
                value = int.from_bytes(bitmap, "little")
                for p in mine:
                    value |= 1 << p
                bitmap = value.to_bytes(len(bitmap), "little")
            for page, count in dirty_runs(bitmap):
                runs.append((region, page, count))
                total += count
        return runs, total

    def _send_pass(self, runs):
        start, sent = time.monotonic(), self._channel.bytes_sent
        for region, page, count in runs:
            self._send_range(region, page * PAGE_SIZE, count * PAGE_SIZE)
        self._end_pass(start, sent)

    def _end_pass(self, start, sent):
        self.status["iterations"] += 1
        self._channel.send(S.ROUND, S.ROUND_NUMBER.pack(self.status["iterations"]))
        elapsed = time.monotonic() - start
        amount = self._channel.bytes_sent - sent
        if amount >= 1 << 20 and elapsed > 0:  # a pass too small says nothing of the link
            self.status["rate_bytes_per_s"] = amount / elapsed
        elif not self.status["rate_bytes_per_s"] and elapsed > 0:
            self.status["rate_bytes_per_s"] = max(amount, 1) / elapsed
        self.status["bytes_sent"] = self._channel.bytes_sent

    def _should_stop(self, expected_ms):
        """Whether to pause now, with ``expected_ms`` of pages left to send.  Within the
        downtime limit, passes go on until what is left would take :data:`AIM_MS` (a downtime
        the limit allows is not one to aim for: a few short passes more cost far less than
        pausing the guest).  A pass that did not halve what is left ends them once that fits
        in a quarter of the limit; above, the passes go on, the guest throttled a step more
        each time (:meth:`_converge`).  At most :data:`MAX_PASSES` within the limit."""
        previous, self._previous_expected = self._previous_expected, expected_ms
        if expected_ms > self.action.downtime_ms:
            return False
        shrinking = previous is None or expected_ms * 2 < previous
        return (expected_ms <= AIM_MS or self.status["iterations"] >= MAX_PASSES
                or (not shrinking and expected_ms <= self.action.downtime_ms / 4))

    def _converge(self, dirty):
        """Auto-converge: from the third pass on, a pass that did not leave at most half of the
        previous one's dirty pages slows the guest a step more (:meth:`_throttle_loop`)."""
        previous, self._previous_dirty = self._previous_dirty, dirty
        if self.status["iterations"] < 2 or previous is None or dirty * 2 < previous:
            return
        throttle = self.status["throttle_pct"]
        self.status["throttle_pct"] = THROTTLE_INITIAL if throttle == 0 else min(throttle + THROTTLE_STEP,
                                                                                THROTTLE_MAX)
        if self._throttler is None:
            self._throttler = threading.Thread(target=self._throttle_loop, name="xvm-migrate-throttle",
                                               daemon=True)
            self._throttler.start()

    def _throttle_loop(self):
        """Keep the vCPUs parked ``throttle_pct`` % of every THROTTLE_PERIOD (as QEMU's
        cpu-throttle does); the VMM's own threads, the sender among them, run on."""
        vcpus = self.machine.vcpus
        while not self._unthrottled.is_set():
            share = self.status["throttle_pct"] / 100
            if self._unthrottled.wait(THROTTLE_PERIOD * (1 - share)):
                return
            with self._throttle_lock:
                if self._unthrottled.is_set() or self.vmm.state.value != "running":
                    continue
                vcpus.pause()
                try:
                    self._unthrottled.wait(THROTTLE_PERIOD * share)
                finally:
                    vcpus.resume()

    def stop_throttle(self):
        """End the throttling; returns once the vCPUs run freely again."""
        self._unthrottled.set()
        with self._throttle_lock:
            pass
        if self._throttler is not None and self._throttler is not threading.current_thread():
            self._throttler.join(5)

    # -- the end ---------------------------------------------------------------------------------
    def switchover(self):
        """On the VMM's control thread: pause, send the rest and the state, hand over.
        Returns normally once the destination runs the guest (the caller tears down);
        raises MigrationError with the source running again (or, what="unknown", paused)."""
        self.stop_throttle()
        was_running = self.vmm.state.value == "running"
        ph = Phases()
        if was_running:
            self.machine.pause()
        ph.mark("pause")
        committed = self._disks_released = False
        try:
            self._check()
            runs, dirty = self._collect_dirty()
            runs = self._merge(self._final_runs, runs)
            ph.mark("bitmap")
            self._send_pass(runs)
            ph.mark("last_pages")
            self.status["iterations"] -= 1  # the paused pass is not an iteration
            state = self.machine.save_state()  # disks flushed
            ph.mark("save_state")
            self.machine.release_disks()  # the destination locks them before it runs the guest
            self._disks_released = True
            ph.mark("release_disks")
            payload = json.dumps({"machine": state.save(), "running": was_running}, separators=(",", ":"))
            ph.mark("encode")
            self._channel.send(S.STATE, payload.encode())
            ph.mark("send")
            sent_ns = ph.total_ns()
            self.status["bytes_sent"] = self._channel.bytes_sent
            self._channel.expect(S.READY)
            ph.mark("ready")
            self._check()
            self._channel.send(S.COMMIT)
            ph.mark("commit")
            committed = True
            destination = self._recv_running()
            ph.mark("running")
        except MigrationError as e:
            if not committed:
                self._resume(was_running)
                raise
            self.status["state"] = "unknown"
            raise MigrationError(f"the destination did not confirm it runs the guest after the commit "
                                 f"({e}); the source stays paused: check the destination, then resume or "
                                 f"destroy it", what="unknown") from None
        except BaseException:
            if not committed:
                self._resume(was_running)
            raise
        self.status["downtime_ms"] = ph.total_ns() / 1e6
        self.status["downtime_sent_ms"] = sent_ns / 1e6
        self.status["switchover_ms"] = {"source": ph.as_ms(), "destination": destination}
        self.status["total_ms"] = (time.monotonic() - self._t0) * 1000
        self.status["remaining_bytes"] = 0
        self._channel.close()

    def _recv_running(self):
        """Wait for RUNNING; returns the destination's step times it carries ({} if none)."""
        _, length = self._channel.recv_header((S.RUNNING,))
        if not length:
            return {}
        try:
            steps = json.loads(self._channel.recv_small(S.RUNNING, length))
        except (ValueError, RecursionError):
            return {}
        if not isinstance(steps, dict):
            return {}
        return {str(k): float(v) for k, v in steps.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}

    def completed(self):
        """Called once the source's copy is torn down and its state recorded: only then may
        the host learn the end (it may migrate the domain back here at once)."""
        self.status["state"] = "completed"

    @staticmethod
    def _merge(first, second):
        pages = {}
        for region, page, count in list(first) + list(second):
            marks = pages.setdefault(id(region), (region, set()))[1]
            marks.update(range(page, page + count))
        runs = []
        for region, marks in pages.values():
            for page in sorted(marks):
                if runs and runs[-1][0] is region and runs[-1][1] + runs[-1][2] == page:
                    runs[-1] = (region, runs[-1][1], runs[-1][2] + 1)
                else:
                    runs.append((region, page, 1))
        return runs

    def _resume(self, was_running):
        self._stop_tracking()
        if self._disks_released:
            from ..errors import XvmError
            try:  # the destination lets go when it sees no COMMIT
                self.machine.take_disks(wait=RELOCK_WAIT)
            except XvmError as e:
                self.status["state"] = "unknown"
                raise MigrationError(f"the switchover failed and the disks cannot be locked again ({e}); "
                                     f"the source stays paused", what="unknown") from None
            self._disks_released = False
        if was_running:
            self.machine.resume()

    def _stop_tracking(self):
        self.machine.memory.track_device_writes(False)
        if self._dirty_on and self.machine.vm is not None:
            try:
                self.machine.vm.set_dirty_logging(False)
            except Exception as e:
                log.warning("cannot turn dirty logging off: %s", e)
            self._dirty_on = False
        self.stop_throttle()

    def _fail(self, error):
        if self.status["state"] == "unknown":
            self.status["error"] = _encode(error)
            return
        try:
            if self.vmm.machine is not None and getattr(self.vmm.machine, "machine", None) is self.machine:
                self._stop_tracking()
        except Exception:
            log.exception("cleaning up after a failed migration")
        if self._channel is not None:
            self._channel.send_error(error)
            self._channel.close()
        self.status["error"] = _encode(error)
        self.status["state"] = "failed"


class Phases:
    """How long each step of a switchover took: :meth:`mark` ends the step named."""

    def __init__(self):
        self._start = self._last = time.perf_counter_ns()
        self.spans = []

    def mark(self, name):
        now = time.perf_counter_ns()
        self.spans.append((name, now - self._last))
        self._last = now

    def total_ns(self):
        return self._last - self._start

    def as_ms(self):
        return {name: round(ns / 1e6, 3) for name, ns in self.spans}


def _encode(error):
    from ..vmm.protocol import encode_error
    return encode_error(error)


def _switchover_action():
    from ..vmm.actions import MigrateSwitchover
    return MigrateSwitchover()


class Incoming:
    """The destination side, in the destination VMM: listens on an ephemeral port of
    ``action.host`` (:attr:`port`), accepts the one source VMM that shows the token,
    receives RAM and the state into fresh memory -- around which the VMM has built the
    machine before the source connects (its vCPU threads parked) -- then has the control
    thread load the state (``MigrateIncoming``) and let the vCPUs go on COMMIT."""

    def __init__(self, vmm, action):
        from ..machine.layout import ram_ranges

        self.vmm = vmm
        self.action = action
        self.state = None
        self.running = True
        self.channel = None
        self._aborted = None
        if action.fd is None:
            raise MigrationError("MigrateReceive needs the listening socket the host made", what="destination")
        self.memory = GuestMemory.create(ram_ranges(vmm.config.memory_bytes))
        self._owns_memory = True  # until a machine is built around it (hand_over_memory)
        self._listener = socket.socket(fileno=os.dup(action.fd))  # the host closes its own
        self.port = self._listener.getsockname()[1]
        self.rounds = 0
        self.cpuid = None  # the guest's, from the CPUID frame
        # this host's (set by whoever builds the machine, before start()): the guest's CPUID
        # is checked against it as it arrives; else when the state is loaded
        self.supported_cpuid = None
        self.cpu_checked = False
        self.phases = Phases()  # of the switchover, from the STATE's arrival on

    def close(self):
        """Never started (:meth:`start`): let go of the listening socket."""
        self._listener.close()

    def start(self):
        threading.Thread(target=self._run, name="xvm-migrate-recv", daemon=True).start()

    def abort(self, reason="the migration was aborted"):
        self._aborted = reason
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.channel is not None:
            self.channel.shutdown()

    def _run(self):
        try:
            self._receive()
            if self._aborted:
                raise MigrationError(self._aborted, what="aborted")
            from ..vmm.actions import MigrateIncoming
            self.vmm.handle(MigrateIncoming())
        except BaseException as e:
            if not isinstance(e, MigrationError):
                log.exception("incoming migration failed")
            else:
                log.warning("incoming migration failed: %s", e)
            if self.channel is not None:
                self.channel.send_error(e)
                self.channel.close()
            self.release()
            from ..vmm.actions import MigrateIncomingFailed
            try:
                self.vmm.handle(MigrateIncomingFailed(reason=str(e)))
            except Exception:
                log.exception("ending the failed incoming migration")
        finally:
            self._listener.close()

    def hand_over_memory(self):
        """The machine being built takes the memory (it closes it); we go on writing the
        pages that arrive into it until the state has come."""
        self._owns_memory = False

    def release(self):
        if self.memory is not None and self._owns_memory:
            self.memory.close()
        self.memory = None

    def _receive(self):
        a = self.action
        self._listener.settimeout(ACCEPT_TIMEOUT)
        try:
            raw, address = self._listener.accept()
        except socket.timeout:
            raise MigrationError(f"no source VMM connected within {ACCEPT_TIMEOUT:g} s", what="timeout") from None
        except OSError as e:
            raise MigrationError(self._aborted or f"accepting the source VMM failed: {e.strerror}",
                                 what="aborted" if self._aborted else "peer") from None
        context = None
        if a.tls is not None:
            from .tls import context_from_material
            context = context_from_material(a.tls, "server")
        self.channel = S.Channel.accept(raw, address, context, timeout=HANDSHAKE_TIMEOUT,
                                        what="the source VMM")
        self.channel.recv_hello(bytes.fromhex(a.token))
        self.channel.send_hello()
        self.channel.settimeout(IDLE_TIMEOUT)
        ch = self.channel
        self.cpuid = ch.recv_cpuid()
        if self.supported_cpuid is not None:  # before any page: the source has not paused
            self.check_cpu(self.supported_cpuid)
        expect = (S.PAGES, S.ZERO, S.ROUND, S.STATE)
        while True:
            kind, length = ch.recv_header(expect)
            if kind == S.PAGES:
                if length <= S.ADDRESS.size or (length - S.ADDRESS.size) % PAGE_SIZE:
                    raise MigrationError(f"{ch.peer} sent a PAGES frame of {length} bytes", what="protocol")
                (gpa,) = S.ADDRESS.unpack(ch.recv_exact(S.ADDRESS.size))
                view = self._guest_view(gpa, length - S.ADDRESS.size)
                try:
                    ch.recv_exact_into(view)
                finally:
                    view.release()
            elif kind == S.ZERO:
                if length != S.RANGE.size:
                    raise MigrationError(f"{ch.peer} sent a ZERO frame of {length} bytes", what="protocol")
                gpa, size = S.RANGE.unpack(ch.recv_exact(length))
                self._zero(gpa, size)
            elif kind == S.ROUND:
                ch.recv_small(S.ROUND, length, least=S.ROUND_NUMBER.size)
                self.rounds += 1
            else:
                self.phases = Phases()
                self._take_state(ch.recv_json(S.STATE, length))
                self.phases.mark("receive_parse")
                return

    def _guest_view(self, gpa, length):
        from ..errors import GuestMemoryError
        if gpa % PAGE_SIZE:
            raise MigrationError(f"{self.channel.peer} sent pages at unaligned address {gpa:#x}", what="protocol")
        try:
            return self.memory.view(gpa, length)
        except GuestMemoryError:
            raise MigrationError(f"{self.channel.peer} sent pages at {gpa:#x}+{length:#x}, outside the "
                                 f"guest's RAM", what="protocol") from None

    def _zero(self, gpa, size):
        if size <= 0 or size % PAGE_SIZE:  # madvise would round a partial page up: zero more than sent
            raise MigrationError(f"{self.channel.peer} sent a zero range of {size:#x} bytes at {gpa:#x}, "
                                 f"not whole pages", what="protocol")
        view = self._guest_view(gpa, size)
        view.release()
        region = self.memory.region_of(gpa, size)
        region.mapping.madvise(mmap.MADV_REMOVE, gpa - region.gpa, size)

    def _take_state(self, data):
        from ..machine.state import MachineState

        try:
            self.state = MachineState.restore(data["machine"])
            self.running = bool(data.get("running", True))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError) as e:
            raise MigrationError(f"{self.channel.peer} sent a malformed machine state: {e}", what="state") from None
        misfit = self.state.misfit(self.vmm.config)
        if misfit is not None:
            raise MigrationError(f"the machine state does not fit the domain: {misfit}", what="state")

    def check_cpu(self, supported):
        """MigrationError if this host (``supported``: its CPUID) lacks a feature the guest saw."""
        from .snapshot import missing_cpu_features

        missing = missing_cpu_features(self.cpuid, supported)
        self.cpu_checked = True
        if missing:
            names = ", ".join(n or f"CPUID {leaf:#x} {reg} bit {bit}" for leaf, _, reg, bit, n in missing[:8])
            raise MigrationError(f"this host lacks CPU features the guest saw: {names}", what="state")

    def handshake(self, machine):
        """Called by the control thread once the state is loaded into the machine, whose
        vCPU threads wait parked (they run on COMMIT): lock the disks (the source let go of them before it sent the state), READY, then
        wait for the source's COMMIT; without it the disks are let go again for the source."""
        from ..errors import XvmError

        machine = getattr(machine, "machine", machine)
        try:
            machine.take_disks(wait=DISK_HANDOVER_WAIT)
            self.phases.mark("take_disks")
        except XvmError as e:
            raise MigrationError(f"the destination cannot lock the disks: {e}", what="destination") from None
        try:
            self.channel.send(S.READY)
            self.phases.mark("ready")
            self.channel.expect(S.COMMIT)
            self.phases.mark("commit")
        except BaseException:
            machine.release_disks()
            raise

    def confirm(self):
        self.phases.mark("resume")
        try:
            self.channel.send(S.RUNNING, json.dumps(self.phases.as_ms(), separators=(",", ":")).encode())
        except MigrationError as e:
            log.warning("could not confirm the migration to the source (it stays paused): %s", e)
        self.channel.close()
