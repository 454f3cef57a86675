"""xvm.storage directory pools: reflink where the filesystem has it (a real XFS on a loop
device), the full-copy fallback with progress elsewhere (ext4 or tmpfs here) -- a callback, or a
tqdm bar when interactive or asked for and nothing otherwise --, and copies that fail halfway (a
full tmpfs, a progress callback that raises) leaving nothing behind."""
import errno
import io
import logging
import os
import shutil
import subprocess
import sys

import pytest

from xvm import progress as xvm_progress
from xvm.errors import ConfigError
from xvm.storage import Pool, Pools, StorageExistsError, StorageHostError
from xvm.storage.backend.copy import copy_file
from xvm.storage.backend.dir import SNAPSHOT_DIR
from xvm.store import Store

MiB = 1 << 20


@pytest.fixture
def pools(tmp_path):
    with Store(tmp_path / "domains.db") as store:
        yield Pools(store)


def leftovers(directory):
    """Every file under ``directory`` that is neither a volume nor a snapshot xvm recorded."""
    found = []
    for root, _, files in os.walk(directory):
        found += [os.path.join(root, f) for f in files if f.startswith(".xvm-tmp")]
    return found


def fill(path, length, offset=0):
    data = os.urandom(length)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return data


@pytest.fixture
def mounted(tmp_path):
    """``mounted(fstype, size, *options)`` -> a directory with that filesystem mounted on it."""
    mounts = []

    def mount(fstype, size, *options):
        target = tmp_path / f"mnt-{len(mounts)}"
        target.mkdir()
        if fstype == "tmpfs":
            command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)]
        else:
            image = tmp_path / f"fs-{len(mounts)}.img"
            with open(image, "wb") as f:
                f.truncate(size)
            mkfs = shutil.which(f"mkfs.{fstype}")
            if mkfs is None:
                pytest.skip(f"mkfs.{fstype} is not installed (apt-get install xfsprogs)")
            subprocess.run([mkfs, "-q", *options, str(image)], check=True, capture_output=True)
            command = ["mount", "-o", "loop", str(image), str(target)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a {fstype} here: {done.stderr.strip()}")
        mounts.append(target)
        return target

    yield mount
    for target in reversed(mounts):
        subprocess.run(["umount", str(target)], check=True)


def test_reflink_where_the_filesystem_shares_extents(pools, mounted, capfd):
    root = mounted("xfs", 512 * MiB, "-m", "reflink=1")
    pool = pools.create_pool(Pool("x", type="dir", path=str(root / "pool")))
    golden = pool.create_volume("golden", 128 * MiB)
    data = fill(golden.path, 64 * MiB)
    calls = []
    free = os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
    snapshot = golden.snapshot("s", progress=lambda *a: calls.append(a))
    clones = [golden.clone("s", f"c{i}", progress=lambda *a: calls.append(a)) for i in range(4)]
    used = free - os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
    assert snapshot.method == "reflink" and [c.method for c in clones] == ["reflink"] * 4
    assert calls == []  # no copy, so no progress
    assert golden.clone("s", "asked", progress=True).method == "reflink"
    assert capfd.readouterr().err == ""  # nor a bar, even when asked for one
    assert used < 4 * MiB, f"five reflinks of 64 MiB used {used} bytes"
    for clone in clones:
        with open(clone.path, "rb") as f:
            assert f.read(64 * MiB) == data
    fill(clones[0].path, MiB)
    with open(golden.path, "rb") as f:
        assert f.read(64 * MiB) == data
    assert golden.rollback("s") == "reflink"


def test_full_copy_with_progress_where_there_is_no_reflink(pools, tmp_path, caplog):
    # tmp_path is on ext4 here, which has no FICLONE
    pool = pools.create_pool(Pool("d", type="dir", path=str(tmp_path / "pool")))
    golden = pool.create_volume("golden", 256 * MiB)
    data = fill(golden.path, 9 * MiB, offset=100 * MiB)
    calls = []
    with caplog.at_level(logging.INFO, logger="xvm.storage.pools"):
        snapshot = golden.snapshot("s", progress=lambda done, total: calls.append((done, total)))
    if snapshot.method == "reflink":
        pytest.skip(f"{tmp_path} has reflinks: the fallback cannot be seen here")
    assert snapshot.method == "copy"
    assert "no reflinks, made a full copy" in caplog.text
    assert calls[0] == (0, 256 * MiB) and calls[-1] == (256 * MiB, 256 * MiB)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls) and len(calls) >= 3
    copy = os.path.join(pool.config.path, SNAPSHOT_DIR, "golden", "s")
    assert os.stat(copy).st_blocks * 512 < 16 * MiB  # the holes stayed holes
    clone = golden.clone("s", "c", progress=lambda done, total: calls.append((done, total)))
    assert clone.method == "copy" and clone.size == 256 * MiB
    with open(clone.path, "rb") as f:
        f.seek(100 * MiB)
        assert f.read(9 * MiB) == data
    assert leftovers(pool.config.path) == []


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def copying_pool(pools, tmp_path, monkeypatch):
    """A directory pool on ext4 (no reflinks) with a 64 MiB volume "golden" holding 8 MiB of data
    and its snapshot "s" -- made silently --, XVM_PROGRESS unset."""
    monkeypatch.delenv(xvm_progress.PROGRESS_ENV, raising=False)
    pool = pools.create_pool(Pool("d", type="dir", path=str(tmp_path / "pool")))
    golden = pool.create_volume("golden", 64 * MiB)
    fill(golden.path, 8 * MiB, offset=4 * MiB)
    if golden.snapshot("s", progress=False).method == "reflink":
        pytest.skip(f"{tmp_path} has reflinks: there is no copy to show")
    return golden


def test_a_full_copy_shows_a_byte_bar_on_a_terminal(copying_pool, monkeypatch):
    terminal = Tty()
    monkeypatch.setattr(sys, "stderr", terminal)
    clone = copying_pool.clone("s", "c")
    assert clone.method == "copy"
    shown = terminal.getvalue()
    assert "clone d/golden@s to c: 100%" in shown, shown
    assert "64.0M/64.0M" in shown, shown
    assert copying_pool.rollback("s") == "copy"
    assert "rollback d/golden@s: 100%" in terminal.getvalue()


def test_a_full_copy_is_silent_when_not_interactive_unless_asked(copying_pool, capfd, monkeypatch):
    assert copying_pool.clone("s", "quiet").method == "copy"  # pytest's stderr is no terminal
    copying_pool.snapshot("t")
    copying_pool.delete_snapshot("t")
    assert capfd.readouterr().err == ""
    assert copying_pool.clone("s", "asked", progress=True).method == "copy"
    assert "clone d/golden@s to asked: 100%" in capfd.readouterr().err
    monkeypatch.setenv(xvm_progress.PROGRESS_ENV, "1")  # e.g. for a log
    copying_pool.clone("s", "logged")
    assert "clone d/golden@s to logged: 100%" in capfd.readouterr().err
    copying_pool.clone("s", "none", progress=False)
    assert capfd.readouterr().err == ""


def test_progress_takes_a_bar_choice_or_a_callable(copying_pool):
    with pytest.raises(ConfigError, match=r"progress must be None, True, False or a callable"):
        copying_pool.clone("s", "c", progress="yes")
    assert [v.name for v in copying_pool.pool.volumes()] == ["golden"]


def test_a_copy_that_runs_out_of_space_leaves_nothing(pools, mounted):
    root = mounted("tmpfs", 24 * MiB)
    pool = pools.create_pool(Pool("t", type="dir", path=str(root / "pool")))
    golden = pool.create_volume("golden", 16 * MiB)
    data = fill(golden.path, 10 * MiB)
    golden.snapshot("s")  # 20 MiB used of 24
    with pytest.raises(StorageHostError, match=r"clone t/golden@s to c: copying .* failed: No space "
                                               "left on device.*nothing was left behind") as e:
        golden.clone("s", "c")
    assert e.value.errno == errno.ENOSPC
    assert [v.name for v in pool.volumes()] == ["golden"]
    assert not os.path.exists(os.path.join(pool.config.path, "c"))
    assert leftovers(pool.config.path) == []
    with pytest.raises(StorageHostError, match="No space left on device"):
        golden.snapshot("t")
    assert [s.name for s in golden.snapshots()] == ["s"]
    assert leftovers(pool.config.path) == []
    with open(golden.path, "rb") as f:
        assert f.read(10 * MiB) == data


def test_an_interrupted_copy_leaves_nothing(pools, tmp_path):
    pool = pools.create_pool(Pool("d", type="dir", path=str(tmp_path / "pool")))
    golden = pool.create_volume("golden", 64 * MiB)
    fill(golden.path, 32 * MiB)

    def interrupt(done, total):
        if done > 8 * MiB:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        golden.snapshot("s", progress=interrupt)
    assert golden.snapshots() == []
    golden.snapshot("s", progress=None)
    with pytest.raises(KeyboardInterrupt):
        golden.clone("s", "c", progress=interrupt)
    assert [v.name for v in pool.volumes()] == ["golden"]
    assert not os.path.exists(os.path.join(pool.config.path, "c"))
    assert leftovers(pool.config.path) == []


def test_copy_file_refuses_an_existing_target_and_replaces_atomically(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    with pytest.raises(StorageExistsError, match="exists already"):
        copy_file(str(src), str(dst), operation="test", reflink=False)
    assert dst.read_bytes() == b"old"
    assert copy_file(str(src), str(dst), operation="test", replace=True, reflink=False) == "copy"
    assert dst.read_bytes() == b"new"
    assert oct(dst.stat().st_mode & 0o777) == "0o600"
    assert leftovers(tmp_path) == []


def test_a_pool_directory_that_is_a_file(pools, tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageExistsError, match="exists and is not a directory"):
        pools.create_pool(Pool("d", type="dir", path=str(tmp_path / "file")))
    assert pools.pools() == []


def test_an_existing_directory_is_kept_when_the_pool_is_destroyed(pools, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_bytes(b"not a volume")
    pool = pools.create_pool(Pool("d", type="dir", path=str(tmp_path / "mine")))
    pool.create_volume("v", MiB)
    assert [v.name for v in pool.volumes()] == ["v"]
    pool.destroy()
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
