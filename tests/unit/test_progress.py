"""xvm.progress: bars when interactive or asked for, silence otherwise; copy_file's bar."""
import io
import os

import pytest

from xvm import progress
from xvm.errors import HostError

MiB = 1 << 20


class Tty(io.StringIO):
    def isatty(self):
        return True


def sparse(path, size, data_at=()):
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in data_at:
            f.seek(offset)
            f.write(os.urandom(MiB))
    return str(path)


def test_silent_when_not_interactive(monkeypatch, capfd):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    assert not progress.wanted()  # pytest's stderr is not a terminal, no Jupyter kernel
    b = progress.bar(total=10, desc="nothing")
    assert isinstance(b, progress.SilentBar)
    with b:
        b.update(10)
    assert b.n == 10
    assert capfd.readouterr().err == ""


def test_a_terminal_gets_a_text_bar(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    out = Tty()
    assert progress.wanted(out)
    with progress.bar(total=4, desc="steps", file=out) as b:
        for _ in range(4):
            b.update(1)
    assert "steps: 100%" in out.getvalue() and "4/4" in out.getvalue()


@pytest.mark.parametrize("value, shown", [("1", True), ("yes", True), ("0", False), ("off", False)])
def test_xvm_progress_overrides(monkeypatch, value, shown):
    monkeypatch.setenv(progress.PROGRESS_ENV, value)
    assert progress.wanted(Tty()) is shown
    assert progress.wanted(io.StringIO()) is shown


def test_copy_file_is_a_long_operation_with_a_byte_bar(monkeypatch, tmp_path, capfd):
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    src = sparse(tmp_path / "src.img", 64 * MiB, data_at=(0, 40 * MiB, 63 * MiB))
    dst = str(tmp_path / "dst.img")
    copied = progress.copy_file(src, dst, desc="copy src.img", chunk=256 * 1024, mininterval=0, miniters=1)
    err = capfd.readouterr().err
    assert "copy src.img: 100%" in err and "64.0M/64.0M" in err
    assert err.count("\r") > 3  # redrawn as it went, not only at the end
    assert copied == 3 * MiB
    with open(src, "rb") as a, open(dst, "rb") as b:
        assert a.read() == b.read()
    assert os.stat(dst).st_blocks * 512 < 8 * MiB  # the holes stayed holes


def test_copy_file_silent_when_not_interactive(monkeypatch, tmp_path, capfd):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    src = sparse(tmp_path / "a", 8 * MiB, data_at=(MiB,))
    progress.copy_file(src, str(tmp_path / "b"))
    assert capfd.readouterr().err == ""


def test_copy_file_errors_name_the_path(tmp_path):
    with pytest.raises(HostError, match="cannot open .*missing"):
        progress.copy_file(str(tmp_path / "missing"), str(tmp_path / "x"))


def test_messages_adapts_a_progress_callback(monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    out = Tty()
    with progress.messages("image", file=out) as say:
        say("resolving 3 modules")
        say("writing initramfs (3 modules)")
    assert say.bar.n == 2 and say.last == "writing initramfs (3 modules)"
    assert "image: 2step" in out.getvalue() and "writing initramfs" in out.getvalue()


def test_image_build_progress_through_the_messages_bar(monkeypatch, capfd):
    from xvm.images import ImageSourceMissing, build_image

    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    try:
        with progress.messages("image") as bar:
            build_image("cloud", progress=bar, download=False)
    except ImageSourceMissing as e:
        pytest.skip(f"no cached kernel package: {e}")
    err = capfd.readouterr().err
    assert bar.bar.n >= 1 and "image: " in err and bar.last[-40:] in err
    monkeypatch.delenv(progress.PROGRESS_ENV)
    with progress.messages("image") as bar:
        build_image("cloud", progress=bar, download=False)
    assert bar.bar.n >= 1 and capfd.readouterr().err == ""  # not interactive: silent
