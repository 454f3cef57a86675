"""TestHost: run a command where /dev/kvm is hardware-assisted.

On a host with vmx/svm the command simply runs here (``mode="direct"``). Otherwise (PVM hosts)
it runs inside the TCG test host (``mode="tcg"``): QEMU in software emulation, ``-cpu max``
(emulated AMD-V), Debian's generic kernel with kvm_amd, the host's root shared read-only over
virtio-9p under a tmpfs overlay, and one writable 9p share -- the results directory, mounted at
the same path as on the host. ``cwd`` and ``$XVM_CACHE`` under /tmp or /run (the machine's own
there) get read-only shares of their own, also under a tmpfs overlay at the same path. The job
runs in ``cwd`` with a clean environment; its exit status comes back in
``<results>/.xvm-testhost/status`` (and as a marker line on the serial console). Every run has a
timeout and is retried once on a hang (ENVIRONMENT.md: rare TCG hangs): the boot or the whole
run taking too long, the kernel's own lockup messages, or -- with ``stall_timeout`` -- neither
console output nor a heartbeat event (:mod:`.progress`) for that long.
"""
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import cache, initramfs, progress
from .errors import (QemuMissingError, TestHostCancelled, TestHostConfigError, TestHostCrashed, TestHostError,
                     TestHostTimeout)

QEMU = "qemu-system-x86_64"
CTL_DIR = ".xvm-testhost"
TAIL_LINES = 60
# Top-level directories the test host mounts its own file systems on (the host's are hidden).
GUEST_PRIVATE = ("tmp", "run", "proc", "sys", "dev")
# ... of which a directory the job needs is shared into the machine at the same path.
GUEST_SHAREABLE = ("tmp", "run")
# Kernel messages of the test host itself (a printk line, at the start of a console line) that
# mean the TCG machine has hung: no need to wait for the timeout.
HANG_SIGN = re.compile(rb"(?m)^\[ *\d+\.\d+\] (watchdog: BUG: soft lockup|rcu: INFO: \w+ (self-)?detected stall)")
# Variables passed from the caller's environment into the job (besides PATH, HOME, LANG).
PASSED_ENV = ("PYENV_VERSION", "PYTEST_ADDOPTS", "TZ")


def hardware_virtualization() -> bool:
    """True when this machine has VT-x/AMD-V (vmx/svm in /proc/cpuinfo) and /dev/kvm."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return ("vmx" in flags or "svm" in flags) and os.path.exists("/dev/kvm")
    except OSError:
        pass
    return False


def qemu_path() -> str | None:
    return shutil.which(QEMU)


@dataclasses.dataclass(frozen=True)
class Result:
    exit_status: int
    output: str  # what the command wrote (console text between the begin and exit markers)
    console: str  # the whole serial console (in direct mode: the output)
    mode: str  # "tcg" or "direct"
    attempts: int
    duration: float  # seconds, the successful attempt, QEMU start to exit
    boot_time: float | None  # seconds from QEMU start until the command started (tcg only)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class TestHost:
    """Boots the TCG test host for each :meth:`run` (or runs directly on HVM hosts).

    ``stream``: a text file (e.g. sys.stderr) that receives the console as it arrives.
    ``mode``: "auto" (direct where hardware_virtualization(), else tcg), "tcg" or "direct".
    ``stall_timeout``: seconds without console output and without a heartbeat event (see
    :mod:`xvm.testhost.progress`) after which a running job counts as hung (None: no limit).
    """

    __test__ = False

    def __init__(self, *, mode="auto", memory="4G", smp=2, boot_timeout=90.0, retries=1,
                 stream=None, pvh=True, qemu_args=(), kernel_args="", stall_timeout=None):
        if mode not in ("auto", "tcg", "direct"):
            raise TestHostConfigError(f"mode must be auto, tcg or direct, not {mode!r}")
        if stall_timeout is not None and not stall_timeout > 0:
            raise TestHostConfigError(f"stall_timeout must be a positive number of seconds or None, "
                                      f"not {stall_timeout!r}")
        if mode == "auto":
            mode = "direct" if hardware_virtualization() else "tcg"
        self.mode = mode
        self.memory = memory
        self.smp = smp
        self.boot_timeout = boot_timeout
        self.retries = retries
        self.stream = stream
        self.pvh = pvh
        self.qemu_args = list(qemu_args)
        self.kernel_args = kernel_args
        self.stall_timeout = stall_timeout
        self._prepared = None
        self._cancelled = threading.Event()

    def cancel(self):
        """Stop a :meth:`run` in progress (from another thread): its machine is killed and
        ``run`` raises :class:`TestHostCancelled`; later runs are refused the same way."""
        self._cancelled.set()

    # --- setup ------------------------------------------------------------------------------

    def prepare(self):
        """Check QEMU and the cached kernels, build the initramfs (cached). Raises
        QemuMissingError or NotPreparedError (naming scripts/setup-testhost.sh)."""
        if self.mode == "direct":
            return None
        if self._prepared is None:
            qemu = qemu_path()
            if qemu is None:
                raise QemuMissingError()
            package, initrd = initramfs.testhost_initramfs()
            kernel = package.bzimage
            if self.pvh:
                kernel = cache.extract_vmlinux(package.bzimage, cache.build_dir() / f"vmlinux-{package.release}")
            self._prepared = (qemu, kernel, initrd)
        return self._prepared

    def qemu_command(self, results_dir: Path, shares=()) -> list[str]:
        """QEMU's argv. ``shares``: host directories shared read-only (under a tmpfs overlay) at
        the same path, mounted parents first together with the results share."""
        qemu, kernel, initrd = self.prepare()
        mounts = sorted([("xvmresults", "rw", Path(results_dir))]
                        + [(f"xvmshare{i}", "ro", Path(path)) for i, path in enumerate(shares)],
                        key=lambda m: len(m[2].parts))
        append = " ".join([
            "console=ttyS0", "quiet", "loglevel=4", "panic=-1", "mitigations=off",
            "random.trust_cpu=on", "8250.nr_uarts=1",
            f"xvm.results={results_dir}",
            *(f"xvm.{mode}={tag}:{path}" for tag, mode, path in mounts),
            self.kernel_args,
        ]).strip()
        devices = []
        for tag, mode, path in mounts:
            readonly = ",readonly=on" if mode == "ro" else ""
            devices += ["-fsdev", f"local,id={tag},path={_qemu_escape(path)},security_model=none{readonly}",
                        "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
        return [
            qemu, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(self.smp),
            "-m", str(self.memory), "-M", "pc", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot",
            "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            *devices,
            *self.qemu_args,
        ]

    # --- running ----------------------------------------------------------------------------

    def run(self, command, timeout=1800.0, *, cwd=None, env=None, results_dir=None) -> Result:
        """Run ``command`` (a shell string or an argv list) and return its Result.

        ``cwd`` defaults to the current directory; wherever it is (also under /tmp or /run, which
        are the test host's own), the job sees it at the same path. ``env`` adds variables.
        ``results_dir`` is the writable share, at the same path inside and out; by default a
        temporary directory that is removed afterwards.
        """
        cwd = Path(cwd or os.getcwd()).resolve()
        if self._cancelled.is_set():
            raise TestHostCancelled("cancelled before it started")
        if self.mode == "direct":
            return self._run_direct(command, timeout, cwd, env)
        shares = _shares([(cwd, "cwd"), (cache.cache_dir().resolve(), "XVM_CACHE")])
        self.prepare()
        own_dir = results_dir is None
        results = Path(tempfile.mkdtemp(prefix="xvm-testhost-") if own_dir else results_dir).resolve()
        _check_shareable(results, "results_dir")
        failed = False
        try:
            ctl = results / CTL_DIR
            ctl.mkdir(parents=True, exist_ok=True)
            job_env = self._job_env(cwd, env)
            job_env[progress.PROGRESS_ENV] = str(ctl / "progress")
            if self.stall_timeout is not None:
                job_env[progress.STALL_ENV] = f"{self.stall_timeout:g}"
            (ctl / "job.sh").write_text(_job_script(command, cwd, job_env))
            last = None
            for attempt in range(1, self.retries + 2):
                try:
                    return self._attempt(results, timeout, attempt, shares, command)
                except TestHostTimeout as e:
                    last = e
                    failed = True
                    self._say(f"xvm.testhost: attempt {attempt} hung ({e.reason}); "
                              + ("retrying" if attempt <= self.retries else "giving up")
                              + f"; console in {ctl}/console-{attempt}.log")
                except TestHostCrashed as e:
                    if e.kernel_fault is None:
                        raise  # the job's own doing (init, QEMU refusing): another attempt would do the same
                    last = e
                    failed = True
                    self._say(f"xvm.testhost: attempt {attempt}: the test host's kernel crashed ({e.kernel_fault}); "
                              + ("retrying" if attempt <= self.retries else "giving up")
                              + f"; console in {ctl}/console-{attempt}.log")
            raise last
        except TestHostError:
            failed = True
            raise
        finally:
            if own_dir and not failed:
                shutil.rmtree(results, ignore_errors=True)

    def _job_env(self, cwd, extra):
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "PYTHONUNBUFFERED": "1",
            "XVM_TESTHOST_INNER": "1",
            "XVM_CACHE": str(cache.cache_dir()),
        }
        python_dir = str(Path(sys.executable).parent)
        if python_dir not in env["PATH"].split(":"):
            env["PATH"] = python_dir + ":" + env["PATH"]
        pythonpath = [str(cwd)] + [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]
        env["PYTHONPATH"] = ":".join(pythonpath)
        for key, value in os.environ.items():
            if key in PASSED_ENV or (key.startswith("XVM_") and key not in env):
                env[key] = value
        env.update(extra or {})
        return env

    def _say(self, text):
        if self.stream is not None:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _attempt(self, results, timeout, attempt, shares=(), command=None) -> Result:
        ctl = results / CTL_DIR
        status_file = ctl / "status"
        status_file.unlink(missing_ok=True)
        progress_file = ctl / "progress"
        progress_file.unlink(missing_ok=True)
        heartbeat = progress.Progress(progress_file)
        argv = self.qemu_command(results, shares)
        console = _Console(self.stream, initramfs.BEGIN_MARKER)
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        reader = threading.Thread(target=console.pump, args=(proc.stdout,), daemon=True)
        reader.start()
        hung = None
        last_progress = None
        try:
            while True:
                try:
                    proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                elapsed = now - start
                if heartbeat.poll():
                    last_progress = now
                if self._cancelled.is_set():
                    hung = "cancelled"
                elif console.begun is None and elapsed > self.boot_timeout:
                    hung = f"the test host did not boot within {self.boot_timeout:.0f} s"
                elif console.hang_sign is not None:
                    hung = f"the test host's kernel reported a hang: {console.hang_sign}"
                elif elapsed > timeout:
                    hung = f"the test host run did not finish within {timeout:.0f} s"
                elif console.begun is not None and self.stall_timeout is not None \
                        and now - max(console.begun, console.last_output, last_progress or 0) > self.stall_timeout:
                    hung = f"no console output and no progress for {self.stall_timeout:g} s"
                if hung:
                    _kill(proc)
                    break
        except BaseException:
            _kill(proc)
            raise
        finally:
            reader.join(timeout=10)
        duration = time.monotonic() - start
        text = console.text()
        (ctl / f"console-{attempt}.log").write_text(text)
        heartbeat.poll()
        if progress_file.exists():
            progress_file.replace(ctl / f"progress-{attempt}.log")
        tail = _tail(text)
        boot_time = console.begun - start if console.begun is not None else None
        if hung == "cancelled":
            raise TestHostCancelled(f"attempt {attempt}: cancelled after {duration:.1f} s "
                                    f"(console in {ctl}/console-{attempt}.log)")
        if hung:
            running = None
            if console.begun is not None:
                if heartbeat.last is None and command is not None:
                    running = f"the command {_describe(command)}"
                    hung += f" while running {running}"
                else:
                    running = heartbeat.running
                    hung += " " + heartbeat.describe()
            error = TestHostTimeout(f"attempt {attempt}: {hung} (console in {ctl}/console-{attempt}.log)",
                                    tail, attempt)
            error.reason = hung
            error.running = running
            error.boot_time = boot_time
            error.duration = duration
            raise error
        if "xvm-testhost: FATAL" in text.split(initramfs.BEGIN_MARKER, 1)[0]:
            raise TestHostCrashed(f"the test host's init failed (QEMU exit {proc.returncode})", tail, attempt)
        status = None
        if status_file.exists():
            try:
                status = int(status_file.read_text().strip())
            except ValueError:
                status = None
        if status is None:
            marker = _find_exit_marker(text)
            if marker is not None:
                status = marker
        if status is None:
            error = TestHostCrashed(
                f"the test host stopped without reporting an exit status (QEMU exit {proc.returncode})",
                tail, attempt)
            fault = _KERNEL_FAULT.search(text) if console.begun is not None else None
            error.kernel_fault = fault.group(0).strip() if fault else None
            raise error
        return Result(exit_status=status, output=_between_markers(text), console=text, mode="tcg",
                      attempts=attempt, duration=duration, boot_time=boot_time)

    def _run_direct(self, command, timeout, cwd, env) -> Result:
        full_env = dict(os.environ)
        full_env.update(env or {})
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        console = _Console(self.stream, None)
        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        reader = threading.Thread(target=console.pump, args=(proc.stdout,), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            reader.join(timeout=10)
            raise TestHostTimeout(f"command did not finish within {timeout:.0f} s", _tail(console.text()))
        except BaseException:
            _kill(proc)
            raise
        reader.join(timeout=10)
        text = console.text()
        return Result(exit_status=proc.returncode, output=text, console=text, mode="direct",
                      attempts=1, duration=time.monotonic() - start, boot_time=None)


class _Console:
    """Collects a child's output, streams it, and notes when the begin marker went by."""

    def __init__(self, stream, begin_marker):
        self.stream = stream
        self.begin_marker = begin_marker.encode() if begin_marker else None
        self.begun = None
        self.last_output = 0.0  # time.monotonic() of the last chunk
        self.hang_sign = None
        self._data = bytearray()

    def pump(self, pipe):
        while True:
            chunk = pipe.read1(65536) if hasattr(pipe, "read1") else pipe.read(65536)
            if not chunk:
                break
            self._data += chunk
            self.last_output = time.monotonic()
            if self.begun is None and self.begin_marker is not None \
                    and self.begin_marker in self._data[-len(chunk) - 64:]:
                self.begun = time.monotonic()
            if self.begin_marker is not None and self.hang_sign is None:
                match = HANG_SIGN.search(self._data, max(0, len(self._data) - len(chunk) - 200))
                if match:
                    self.hang_sign = match.group(1).decode()
            if self.stream is not None:
                try:
                    self.stream.write(chunk.decode(errors="replace").replace("\r\n", "\n"))
                    self.stream.flush()
                except (OSError, ValueError):
                    self.stream = None

    def text(self) -> str:
        return bytes(self._data).decode(errors="replace").replace("\r\n", "\n").replace("\r", "")


def _check_shareable(path: Path, what):
    """Refuse a directory the test host cannot show; a share's path must also fit in one word
    of the kernel command line."""
    if path.parts[1:2] and path.parts[1] in GUEST_PRIVATE and path.parts[1] not in GUEST_SHAREABLE:
        raise TestHostConfigError(f"{what} {path} is not visible inside the test host: /{path.parts[1]} is "
                                  "the machine's own there (use another directory)")
    if any(c.isspace() for c in str(path)):
        raise TestHostConfigError(f"{what} must not contain white space: {path}")


def _shares(paths) -> list[Path]:
    """The directories among ``paths`` ((path, what) pairs) that the root share does not show
    -- they are under /tmp or /run -- without those inside another one."""
    wanted = []
    for path, what in paths:
        if path.parts[1:2] and path.parts[1] in GUEST_PRIVATE:
            _check_shareable(path, what)
        if path.parts[1:2] and path.parts[1] in GUEST_SHAREABLE:
            wanted.append(path)
    wanted.sort(key=lambda p: len(p.parts))
    shares = []
    for path in wanted:
        if not any(path == s or s in path.parents for s in shares):
            shares.append(path)
    return shares


def _qemu_escape(path) -> str:
    return str(path).replace(",", ",,")  # QEMU option values double their commas


def _describe(command) -> str:
    text = command if isinstance(command, str) else shlex.join(list(command))
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _job_script(command, cwd, env) -> str:
    lines = ["#!/bin/sh", f"cd {shlex.quote(str(cwd))} || exit 125"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    if isinstance(command, str):
        lines.append(command)
    else:
        lines.append("exec " + shlex.join(list(command)))
    return "\n".join(lines) + "\n"


# The test host's own kernel failing under emulation (seen once: "BUG: TASK stack guard page was
# hit" in nested SVM under TCG), as opposed to the job failing: such a run is retried like a hang.
_KERNEL_FAULT = re.compile(r"Kernel panic - not syncing[^\n]*|BUG: [^\n]*|Oops: [^\n]*|"
                           r"general protection fault[^\n]*")


def _libc_prctl():
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()  # resolved here: the child after fork() must not import or load anything
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    # QEMU must not outlive a killed test run.
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _kill(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _tail(text, lines=TAIL_LINES) -> str:
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])


def _find_exit_marker(text):
    for line in reversed(text.split("\n")):
        if line.startswith(initramfs.EXIT_MARKER + " "):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def _between_markers(text) -> str:
    begin = text.find(initramfs.BEGIN_MARKER)
    if begin < 0:
        return ""
    begin = text.find("\n", begin) + 1
    end = text.rfind("\n" + initramfs.EXIT_MARKER + " ")
    return text[begin:end + 1] if end >= begin else text[begin:]


__all__ = ["TestHost", "Result", "TestHostError", "hardware_virtualization", "qemu_path"]
