"""Progress bars for long work: a notebook bar in Jupyter, a text bar on a terminal,
nothing otherwise.

    with xvm.progress.bar(total=size, desc="copy disk.img", unit="B") as bar:
        for chunk in ...:
            bar.update(len(chunk))

:func:`bar` is tqdm's ``tqdm.auto`` bar (``pip install 'xvm[jupyter]'``) when the caller is
interactive -- inside a Jupyter kernel, or stderr is a terminal -- and a silent object with
the same methods otherwise.  ``XVM_PROGRESS=1`` asks for bars anyway (e.g. in a log),
``XVM_PROGRESS=0`` for none.  Without tqdm installed there are no bars.

:func:`messages` adapts a bar to the ``progress=`` callbacks that take short messages
(:func:`xvm.images.build_image`); :func:`byte_reporter` to the ``progress(done, total)``
byte callbacks (volume copies: ``vol.clone(..., progress=...)``); :func:`copy_file` copies a
file (sparse-aware) with a byte bar.
"""
import contextlib
import os
import sys

from .errors import ConfigError, HostError

PROGRESS_ENV = "XVM_PROGRESS"
COPY_CHUNK = 4 << 20


def in_notebook():
    """True inside a Jupyter kernel (IPython's kernel app is configured)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def wanted(file=None):
    """Whether progress bars should be shown (see the module docstring)."""
    forced = os.environ.get(PROGRESS_ENV)
    if forced is not None and forced.strip() != "":
        return forced.strip().lower() not in ("0", "no", "false", "off")
    if in_notebook():
        return True
    stream = file if file is not None else sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


class SilentBar:
    """What :func:`bar` returns when no bar is wanted: the tqdm methods, doing nothing."""

    def __init__(self, total=None, desc=None, unit="it"):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0

    def update(self, n=1):
        self.n += n

    def set_description_str(self, desc=None, refresh=True):
        self.desc = desc

    def set_postfix_str(self, s="", refresh=True):
        pass

    def refresh(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bar(total=None, desc=None, unit="it", *, file=None, force=None, **options):
    """A progress bar of ``total`` ``unit`` (None: unknown total); ``unit="B"`` scales
    to kB/MB.  ``force`` True/False overrides :func:`wanted`; ``options`` go to tqdm."""
    show = wanted(file) if force is None else force
    if not show:
        return SilentBar(total, desc, unit)
    try:
        if in_notebook() and file is None:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
    except ImportError:
        return SilentBar(total, desc, unit)
    if unit == "B":
        options.setdefault("unit_scale", True)
        options.setdefault("unit_divisor", 1024)
    return tqdm(total=total, desc=desc, unit=unit, file=file, dynamic_ncols=True, leave=True, **options)


class messages:
    """A ``progress(message)`` callback shown as a bar that counts steps and shows the
    latest message: ``build_image(progress=xvm.progress.messages("image"))``.  Close it
    (or use ``with``) when the work is done."""

    def __init__(self, desc, total=None, **options):
        self.bar = bar(total=total, desc=desc, unit="step", **options)
        self.last = None

    def __call__(self, message):
        self.last = str(message)
        shown = self.last if len(self.last) <= 80 else "\u2026" + self.last[-79:]  # paths end usefully
        self.bar.set_postfix_str(shown, refresh=False)
        self.bar.update(1)

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class bytes_bar:
    """A ``progress(done_bytes, total_bytes)`` callback shown as a byte bar.  The bar is made
    at the first call, so work that never reports (a reflink, a ZFS clone) shows none."""

    def __init__(self, desc, *, force=None, **options):
        self.desc, self.force, self.options = desc, force, options
        self.bar = None

    def __call__(self, done, total):
        if self.bar is None:
            self.bar = bar(total=total, desc=self.desc, unit="B", force=self.force, **self.options)
        elif total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def byte_reporter(progress, desc):
    """The byte callback for an API's ``progress=`` argument, for the time of a ``with``:
    ``None`` (the default) a bar shown as :func:`wanted` says, ``True`` a bar even when not
    interactive, ``False`` nothing, or the caller's own ``progress(done, total)`` callable."""
    check_progress(progress)
    if progress is False:
        yield None
    elif callable(progress):
        yield progress
    elif progress is None or progress is True:
        reporter = bytes_bar(desc, force=True if progress else None)
        try:
            yield reporter
        finally:
            reporter.close()


def check_progress(progress):
    """ConfigError unless ``progress`` is what :func:`byte_reporter` takes."""
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise ConfigError(f"progress must be None, True, False or a callable(done, total), "
                          f"not {progress!r}")


def copy_file(src, dst, *, desc=None, chunk=COPY_CHUNK, **options):
    """Copy ``src`` to ``dst`` (created or truncated), keeping holes: only the data
    extents (``SEEK_DATA``/``SEEK_HOLE``) are read and written; the bar counts bytes of
    the source's size.  Returns the number of data bytes copied; HostError on failure."""
    try:
        fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise HostError(f"cannot open {src}: {e.strerror}", e.errno) from None
    try:
        size = os.fstat(fin).st_size
        try:
            fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise HostError(f"cannot create {dst}: {e.strerror}", e.errno) from None
        copied = 0
        try:
            with bar(total=size, desc=desc or f"copy {os.path.basename(src)}", unit="B", **options) as b:
                for start, end in _extents(fin, size):
                    b.update(start - b.n)  # a hole counts as done
                    pos = start
                    while pos < end:
                        data = os.pread(fin, min(chunk, end - pos), pos)
                        if not data:
                            break
                        os.pwrite(fout, data, pos)
                        pos += len(data)
                        copied += len(data)
                        b.update(len(data))
                b.update(size - b.n)
            os.ftruncate(fout, size)
        except OSError as e:
            raise HostError(f"cannot copy {src} to {dst}: {e.strerror}", e.errno) from None
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    return copied


def _extents(fd, size):
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left (or no SEEK_DATA: copy everything)
            if pos == 0 and not _has_seek_data(fd):
                yield 0, size
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def _has_seek_data(fd):
    try:
        os.lseek(fd, 0, os.SEEK_HOLE)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def file_growth(fd, total, report, interval=0.2):
    """While the ``with`` block runs (another process writing the file ``fd``), call
    ``report(written, total)`` every ``interval`` seconds, ``written`` being the bytes the
    file holds (allocated: a sparse file's holes do not count); ``report(total, total)``
    when the block ends without an error.  ``report`` None: nothing is watched."""
    if report is None:
        yield
        return
    import threading

    done = threading.Event()

    def watch():
        while not done.wait(interval):
            try:
                written = os.fstat(fd).st_blocks * 512
            except OSError:
                return
            report(min(written, total), total)

    thread = threading.Thread(target=watch, name="xvm-progress-file", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    report(total, total)
