"""A test host run in a process of its own: :class:`JobProcess`.

The outer pytest session (tests/hvm/conftest.py) runs the inner session this way, so that while
the TCG machine runs beside the other tests nothing of it lives in the pytest process: not the
QEMU pipes, the console reader thread or the files of the results share (the tests that count
their process's open descriptors and threads see none of them).

The child is ``python3 -m xvm.testhost.job SPEC`` (SPEC: a JSON file, see :class:`JobProcess`).
It runs :meth:`TestHost.prepare` and :meth:`TestHost.run` and writes ``job-result.json`` in the
results directory: the :class:`~xvm.testhost.host.Result`, or the error (its class, message and
attributes), which :meth:`JobProcess.wait` returns or raises as the same class.  SIGTERM cancels
the run (:meth:`TestHost.cancel`: QEMU is killed and the error is :class:`TestHostCancelled`).
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from . import errors
from .errors import TestHostError

RESULT_FILE = "job-result.json"
CANCEL_WAIT = 30.0  # seconds the child has to stop its machine after SIGTERM before SIGKILL


class JobProcess:
    """``TestHost(**host).run(command, timeout=..., cwd=..., env=..., results_dir=...)`` in a child
    process.  ``stream``: a file with a descriptor the child writes the console to (or None);
    ``nice``: added to the child's niceness (19: the machine uses only the CPU time that other
    work leaves)."""

    def __init__(self, command, *, timeout, cwd, env, results_dir, host=None, stream=None, nice=0):
        self.results_dir = Path(results_dir)
        self.spec = {"command": list(command), "timeout": timeout, "cwd": str(cwd), "env": dict(env or {}),
                     "results_dir": str(self.results_dir), "host": dict(host or {}), "stream": stream is not None,
                     "nice": int(nice)}
        self.stream = stream
        self.proc = None

    def start(self):
        spec_file = self.results_dir / "job-spec.json"
        spec_file.write_text(json.dumps(self.spec))
        (self.results_dir / RESULT_FILE).unlink(missing_ok=True)
        with open(self.results_dir / "job.log", "wb") as log:
            out = self.stream if self.stream is not None else log
            self.proc = subprocess.Popen([sys.executable, "-m", "xvm.testhost.job", str(spec_file)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=log, start_new_session=True)
        return self

    def wait(self):
        """The run's Result; raises the run's TestHostError (or one saying the child failed)."""
        self.proc.wait()
        path = self.results_dir / RESULT_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            log = _tail_of(self.results_dir / "job.log")
            raise TestHostError(f"the test host job process ended with status {self.proc.returncode} and no "
                                f"result{': ' + log if log else ''}") from None
        if "error" in data:
            raise _error_from(data["error"])
        from .host import Result
        return Result(**data["result"])

    def cancel(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(CANCEL_WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def _error_from(data):
    cls = getattr(errors, data.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, TestHostError)):
        cls = TestHostError
    error = cls.__new__(cls)
    Exception.__init__(error, data.get("message", "unknown error"))
    for key, value in (data.get("attrs") or {}).items():
        setattr(error, key, value)
    return error


def _tail_of(path, lines=20):
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _main(spec_file):
    from .host import TestHost

    spec = json.loads(Path(spec_file).read_text())
    if spec.get("nice"):
        os.nice(spec["nice"])  # before QEMU starts: it inherits this
    results_dir = Path(spec["results_dir"])
    host = TestHost(stream=sys.stdout if spec["stream"] else None, **spec["host"])
    signal.signal(signal.SIGTERM, lambda *_: host.cancel())
    try:
        host.prepare()  # NotPreparedError names scripts/setup-testhost.sh
        result = host.run(spec["command"], timeout=spec["timeout"], cwd=spec["cwd"], env=spec["env"],
                          results_dir=results_dir)
        out = {"result": {field: getattr(result, field) for field in result.__dataclass_fields__}}
        out["result"]["console"] = ""  # in the results directory (console-N.log); not carried twice
    except TestHostError as e:
        attrs = {k: v for k, v in vars(e).items() if isinstance(v, (str, int, float, bool, type(None)))}
        out = {"error": {"type": type(e).__name__, "message": str(e), "attrs": attrs}}
    except Exception as e:  # whatever stops the run, the outer session reports it
        out = {"error": {"type": "TestHostError", "message": f"could not start: {type(e).__name__}: {e}"}}
    tmp = results_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(results_dir / RESULT_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
