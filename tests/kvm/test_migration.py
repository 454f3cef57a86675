"""Live migration between two hosts (two state directories on loopback) on the real /dev/kvm
(issue 13): pre-copy over TLS 1.3, VMM to VMM; abort, timeout and a killed destination
leave the source running; bad certificates and bad streams are refused clearly."""
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import xvm
from xvm.devices.net import Tap
from xvm import DomainState, MigrationError
from xvm.errors import NotFoundError
from xvm.host.local import LocalHost
from xvm.migration import stream as S
from xvm.migration.tls import client_context, make_test_ca

COUNT = re.compile(rb"count (\d+)")
STEP = 1 << 24


@pytest.fixture(scope="module")
def tls_dir():
    path = tempfile.mkdtemp(prefix="xvm-tls-", dir="/tmp")
    make_test_ca(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Pair:
    """Two embedded hosts of their own state directories, each listening for migrations."""

    def __init__(self, tls_dir, insecure=False):
        self.dirs = [tempfile.mkdtemp(prefix=f"xvm-{n}-", dir="/tmp") for n in "ab"]
        self.hosts = [LocalHost(d) for d in self.dirs]
        self.listeners = [h.listen_migrations("127.0.0.1:0", tls_dir=tls_dir, insecure=insecure)
                          for h in self.hosts]

    def close(self, destroyer):
        for h in self.hosts:
            destroyer(h)
            h.close()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pair(tls_dir, destroyer):
    p = Pair(tls_dir)
    yield p
    p.close(destroyer)


def log(dom):
    """The domain's console output so far, as text."""
    data = dom.console.log()
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def counts(dom, since=0):
    """Whole-line counts from character ``since`` of the console log on (a line torn by the
    switchover reads as no multiple of the step)."""
    return [n for n in (int(m) for m in COUNT.findall(log(dom)[since:].encode())) if n % STEP == 0]


def wait_for(predicate, timeout=20, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def running_on(host, name):
    try:
        return host.lookup(name).state is DomainState.RUNNING
    except NotFoundError:
        return False


def busy_config(guest, name="busy"):
    return xvm.DomainConfig(name=name, kernel=guest("busy"), cmdline="shift=24", memory_mib=64)


def dirty_config(guest, name="dirty", mib=64):
    return xvm.DomainConfig(name=name, kernel=guest("dirty"), cmdline=f"mib={mib} shift=2",
                            memory_mib=mib + 32)


def test_counter_guest_migrates_back_and_forth_20_times(pair, guest, tls_dir):
    a, b = pair.hosts
    dom = a.create(busy_config(guest))
    wait_for(lambda: counts(dom), what="the first count")
    # a watcher of its own (other host objects on the same state directories) samples both
    # hosts all along: the domain must never run on both
    watchers = [LocalHost(d) for d in pair.dirs]
    both, samples, stop = [], [0], threading.Event()

    def watch():
        # reading one host then the other is not one moment: a sample counts as "running on
        # both" only if the first host runs before and after the second one is seen running
        first, second = watchers
        while not stop.is_set():
            if running_on(first, "busy") and running_on(second, "busy") and running_on(first, "busy"):
                both.append(time.monotonic())
            samples[0] += 1
            first, second = second, first

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        current, last_id, src, dst = dom, dom.id, 0, 1
        marks = {}  # handle -> how much of its console log came before it left (a handle mirrors every boot)
        for hop in range(20):
            stats = current.migrate(pair.listeners[dst].uri, tls_dir=tls_dir)
            assert isinstance(stats, xvm.MigrationStats)
            assert stats.iterations >= 1 and stats.pages_sent > 0 and 0 < stats.downtime_ms < stats.total_ms
            assert stats.zero_bytes > 0 and stats.bytes_sent < stats.memory_bytes  # zero pages skipped
            # the span QEMU calls its downtime (pause to the state sent) lies within the full one,
            # and each side's steps of the switchover are told
            assert 0 < stats.downtime_sent_ms < stats.downtime_ms
            steps = stats.switchover_ms
            assert {"pause", "save_state", "send", "ready", "running"} <= set(steps["source"])
            assert {"receive_parse", "load_state", "commit", "resume"} <= set(steps["destination"])
            assert sum(steps["source"].values()) == pytest.approx(stats.downtime_ms, abs=0.1)
            with pytest.raises(NotFoundError):  # a transient domain: gone from the source
                pair.hosts[src].lookup("busy")
            moved = pair.hosts[dst].lookup("busy")
            assert moved.state is DomainState.RUNNING
            assert moved.id is not None and moved.id != last_id and moved.id == stats.destination_id
            # the console continues: the counter goes on from the source's last count, never back
            last = wait_for(lambda: current.console._is_closed() and max(counts(current)),
                            what="the source's console to close")
            marks[id(current)] = len(log(current))
            since = marks.get(id(moved), 0)
            seen = wait_for(lambda: counts(moved, since), what=f"a count after hop {hop}")
            assert seen == sorted(seen)
            assert last < seen[0] <= last + 4 * STEP, f"hop {hop}: the count went from {last} to {seen[0]}"
            assert "busy ready" not in log(moved)[since:]  # never booted again from its kernel
            current, last_id, src, dst = moved, moved.id, dst, src
    finally:
        stop.set()
        thread.join()
        for w in watchers:
            w.close()
    assert samples[0] > 20 and not both, f"the domain ran on both hosts at once ({len(both)} samples)"


def test_dirtying_guest_converges_and_its_memory_survives(pair, guest, tls_dir):
    a, b = pair.hosts
    dom = a.create(dirty_config(guest, mib=16))
    dom.console.expect(r"dirty: pass \d+", 20)
    # The link is capped well below the guest's dirty rate (as QEMU's auto-converge test does):
    # on a quiet, fast host an uncapped link outruns the guest, which then converges unslowed.
    stats = dom.migrate(pair.listeners[1].uri, tls_dir=tls_dir, downtime_ms=20, bandwidth=32, timeout_s=60)
    assert stats.throttle_pct > 0 and stats.auto_converged, stats  # it had to be slowed to converge
    assert stats.iterations > 1 and stats.pages_sent > 4096, stats  # more than one pass of its 16 MiB
    moved = b.lookup("dirty")
    passes = lambda: [int(m) for m in re.findall(r"dirty: pass (\d+)", log(moved))]  # noqa: E731
    first = wait_for(passes, what="a pass on the destination")[-1]
    wait_for(lambda: passes()[-1] >= first + 8, what="more passes on the destination")
    # every pass checks that every page holds the previous pass's value
    assert "FAIL" not in log(moved)
    assert moved.state is DomainState.RUNNING


def _start_slow_migration(pair, guest, tls_dir, **options):
    """A dirtying guest migrating at 16 MiB/s in a thread: ``(domain, thread, outcome)``."""
    a = pair.hosts[0]
    dom = a.create(dirty_config(guest, mib=32))
    dom.console.expect(r"dirty: pass \d+", 20)
    outcome = {}

    def run():
        try:
            outcome["stats"] = dom.migrate(pair.listeners[1].uri, tls_dir=tls_dir, bandwidth=16, **options)
        except BaseException as e:  # noqa: BLE001 (the test looks at it)
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return dom, thread, outcome


def _assert_source_runs_and_destination_clean(pair, dom):
    a, b = pair.hosts
    assert dom.state is DomainState.RUNNING
    before = log(dom).count("dirty: pass")
    try:
        wait_for(lambda: log(dom).count("dirty: pass") > before + 4, timeout=60, what="the source to go on")
    except AssertionError:
        from xvm.vmm.actions import Info, MigrateStatus
        raise AssertionError(f"the source did not go on: {dom._host._act(dom, Info())}, "
                             f"{dom._host._act(dom, MigrateStatus())}; its console ends {log(dom)[-300:]!r}") from None
    assert "FAIL" not in log(dom)
    wait_for(lambda: not b.domains(), timeout=15, what="the destination to forget the domain")
    assert not [f for f in os.listdir(b.state_dir.run_dir) if f.endswith(".pid")]  # no VMM left


def _destination_vmm_pid(pair):
    b = pair.hosts[1]

    def pid():
        for f in os.listdir(b.state_dir.run_dir):
            if f.endswith(".pid"):
                with open(os.path.join(b.state_dir.run_dir, f)) as fh:
                    text = fh.read().strip()
                return int(text) if text else None  # made, not yet written
        return None

    return wait_for(pid, what="the receiving VMM")


def test_killing_the_destination_vmm_midway_leaves_the_source_running(pair, guest, tls_dir):
    dom, thread, outcome = _start_slow_migration(pair, guest, tls_dir)
    pid = _destination_vmm_pid(pair)
    wait_for(lambda: _sent(dom) > 8 << 20, what="8 MiB sent")
    os.kill(pid, signal.SIGKILL)
    thread.join(30)
    assert isinstance(outcome.get("error"), MigrationError), outcome
    assert outcome["error"].what in ("peer", "protocol")
    _assert_source_runs_and_destination_clean(pair, dom)
    # and it can migrate afterwards, for real
    stats = dom.migrate(pair.listeners[1].uri, tls_dir=tls_dir, timeout_s=60)
    assert pair.hosts[1].lookup("dirty").state is DomainState.RUNNING and stats.iterations >= 1


def _sent(dom):
    """Bytes the source VMM has sent so far (its MigrateStatus)."""
    from xvm.vmm.actions import MigrateStatus

    status = dom._host._act(dom, MigrateStatus())
    return status["bytes_sent"] if status else 0


def test_the_destination_builds_the_machine_while_the_pages_arrive(pair, guest, tls_dir):
    """The switchover only loads the state: while the pages still come (the domain still
    shut off there), the destination VMM has built the machine -- its KVM VM exists."""
    from xvm.vmm.actions import MigrateStatus

    dom, thread, outcome = _start_slow_migration(pair, guest, tls_dir)
    try:
        pid = _destination_vmm_pid(pair)
        wait_for(lambda: _sent(dom) > 4 << 20, what="4 MiB sent")
        incoming = pair.hosts[1].lookup("dirty")
        status = incoming._host._act(incoming, MigrateStatus())
        assert status["state"] == "incoming" and incoming.state is DomainState.SHUTOFF
        assert status["machine_built"] is True
        fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert "anon_inode:kvm-vm" in fds
    finally:
        dom.abort_migration()
        thread.join(30)
    assert outcome["error"].what == "aborted", outcome
    _assert_source_runs_and_destination_clean(pair, dom)


@pytest.mark.skipif(os.environ.get("XVM_FORKSERVER", "1") in ("0", "no", "false"),
                    reason="XVM_FORKSERVER=0: VMMs start without a fork server")
def test_a_listening_host_keeps_its_fork_server_up(tls_dir):
    """An incoming migration's VMM is forked, not started from scratch (a Python start and
    xvm's imports, ~0.5 s of the migration's total time): a host that listens for migrations
    has its fork server up before any migration comes."""
    from xvm.vmm import zygote

    state = tempfile.mkdtemp(prefix="xvm-listen-", dir="/tmp")
    host = LocalHost(state)
    try:
        path = zygote.socket_path(host.state_dir.run_dir)
        assert not os.path.exists(path)  # nothing started a VMM here yet
        with host.listen_migrations("127.0.0.1:0", tls_dir=tls_dir):
            wait_for(lambda: os.path.exists(path), timeout=15, what="the fork server")
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
    finally:
        host.close()
        shutil.rmtree(state, ignore_errors=True)


def test_abort_and_timeout_leave_the_source_running(pair, guest, tls_dir):
    dom, thread, outcome = _start_slow_migration(pair, guest, tls_dir)
    wait_for(lambda: _sent(dom) > 4 << 20, what="4 MiB sent")
    assert dom.abort_migration() is True
    thread.join(30)
    assert isinstance(outcome.get("error"), MigrationError) and outcome["error"].what == "aborted", outcome
    _assert_source_runs_and_destination_clean(pair, dom)
    t = time.monotonic()
    with pytest.raises(MigrationError) as info:
        dom.migrate(pair.listeners[1].uri, tls_dir=tls_dir, bandwidth=16, timeout_s=1)
    assert info.value.what == "timeout" and "within 1 s" in str(info.value)
    assert time.monotonic() - t < 10
    _assert_source_runs_and_destination_clean(pair, dom)


def test_tls_refusals_leave_the_source_running(pair, guest, tls_dir, destroyer):
    a, b = pair.hosts
    dom = a.create(busy_config(guest))
    wait_for(lambda: counts(dom), what="the first count")
    uri = pair.listeners[1].uri
    # plain TCP needs insecure=True
    with pytest.raises(MigrationError, match="insecure=True") as info:
        dom.migrate(uri.replace("xvm+tls", "xvm+tcp"))
    assert info.value.what == "uri"
    # a client certificate of another CA: the destination refuses the handshake
    other = tempfile.mkdtemp(prefix="xvm-tls-other-", dir="/tmp")
    try:
        make_test_ca(other)
        with pytest.raises(MigrationError) as info:
            dom.migrate(uri, tls_dir=other)
        assert info.value.what in ("tls", "peer")
        # no certificates at all
        with pytest.raises(MigrationError, match="lacks ca-cert.pem") as info:
            dom.migrate(uri, tls_dir=os.path.join(other, "missing"))
        # plaintext to the TLS listener
        with pytest.raises(MigrationError) as info:
            dom.migrate(uri.replace("xvm+tls", "xvm+tcp"), insecure=True)
        assert info.value.what in ("peer", "protocol")
        # TLS to a plaintext listener
        plain = b.listen_migrations("127.0.0.1:0", insecure=True)
        try:
            with pytest.raises(MigrationError, match="TLS handshake") as info:
                dom.migrate(plain.uri.replace("xvm+tcp", "xvm+tls"), tls_dir=tls_dir)
        finally:
            plain.close()
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert dom.state is DomainState.RUNNING and not b.domains()
    last = max(counts(dom))
    wait_for(lambda: max(counts(dom)) > last, what="the source to go on counting")


def _control(listener, tls_dir):
    host, port = listener.address
    return S.Channel.connect(host, port, client_context(tls_dir), what="the test listener")


def test_a_bad_stream_is_refused_clearly(pair, tls_dir):
    listener = pair.listeners[1]
    # an unknown protocol version
    ch = _control(listener, tls_dir)
    try:
        ch._send(S.HELLO.pack(S.MAGIC, 99, 0, S.NO_TOKEN))
        with pytest.raises(MigrationError, match="unsupported migration protocol version 99.0"):
            ch.recv_hello()
    finally:
        ch.close()
    # an unknown message where the prepare is due
    ch = _control(listener, tls_dir)
    try:
        ch.send_hello()
        ch.recv_hello()
        ch.send(77, b"garbage")
        answer = ch.recv_json(S.CONTROL)
        assert answer["ok"] is False and "unknown message type 77" in answer["error"]["message"]
    finally:
        ch.close()
    # garbage instead of a HELLO, inside TLS
    ch = _control(listener, tls_dir)
    try:
        ch._send(b"GET / HTTP/1.0\r\n\r\n" + bytes(30))
        with pytest.raises(MigrationError):
            ch.recv_hello()
    finally:
        ch.close()
    # a prepare with a broken configuration
    ch = _control(listener, tls_dir)
    try:
        ch.send_hello()
        ch.recv_hello()
        ch.send_json(S.CONTROL, {"op": "prepare", "config": {"name": 5}})
        answer = ch.recv_json(S.CONTROL)
        assert answer["ok"] is False and answer["error"]["message"]
    finally:
        ch.close()
    assert not pair.hosts[1].domains()


def test_uri_errors():
    for uri, text in (("http://x:1", "scheme"), ("xvm+tls://host", "HOST:PORT"), ("xvm+tls://h:1/path", "HOST:PORT"),
                      (5, "string")):
        with pytest.raises(MigrationError, match=text):
            S.parse_uri(uri)
    assert S.parse_uri("xvm+tls://127.0.0.1:4000") == ("127.0.0.1", 4000, True)
    assert S.parse_uri("xvm+tcp://[::1]:4000", insecure=True) == ("::1", 4000, False)


def test_xvmd_migration_listen_and_a_remote_source(pair, guest, tls_dir, xvmd_starter, destroyer):
    """``xvmd --migration-listen`` receives; a domain of xvmd (a RemoteHost) migrates away."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    state = tempfile.mkdtemp(prefix="xvmd-mig-", dir="/tmp")
    proc = xvmd_starter(state, os.path.join(state, "xvmd.sock"), "--migration-listen", f"127.0.0.1:{port}",
                        "--tls-dir", tls_dir)
    try:
        with xvm.connect(f"xvm+unix://{state}/xvmd.sock") as remote:
            dom = pair.hosts[0].create(busy_config(guest))
            wait_for(lambda: counts(dom), what="the first count")
            dom.migrate(f"xvm+tls://127.0.0.1:{port}", tls_dir=tls_dir)
            there = remote.lookup("busy")
            assert there.state is DomainState.RUNNING
            stats = there.migrate(pair.listeners[1].uri, tls_dir=tls_dir)
            assert stats.destination_id == pair.hosts[1].lookup("busy").id
            with pytest.raises(NotFoundError):
                remote.lookup("busy")
            back = pair.hosts[1].lookup("busy")
            seen = wait_for(lambda: counts(back), what="a count on the third host")
            assert seen[0] > max(counts(dom))
    finally:
        proc.terminate()
        proc.wait(10)
        with xvm.connect(state_dir=state) as h:
            destroyer(h)
        shutil.rmtree(state, ignore_errors=True)


def test_cli_migrate(pair, guest, tls_dir):
    import subprocess
    import sys

    dom = pair.hosts[0].create(busy_config(guest))
    wait_for(lambda: counts(dom), what="the first count")
    env = dict(os.environ, XVM_STATE_DIR=pair.dirs[0], PYTHONPATH=os.getcwd())
    env.pop("XVM_URI", None)
    cli = [sys.executable, "-m", "xvm.cli", "migrate", "busy"]
    refused = subprocess.run(cli + [pair.listeners[1].uri.replace("xvm+tls", "xvm+tcp")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "insecure=True" in refused.stderr
    done = subprocess.run(cli + [pair.listeners[1].uri, "--tls-dir", tls_dir, "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["destination_id"] == pair.hosts[1].lookup("busy").id and stats["iterations"] >= 1
    text = subprocess.run(cli[:-1] + ["busy", pair.listeners[0].uri, "--tls-dir", tls_dir],
                          env=dict(env, XVM_STATE_DIR=pair.dirs[1]), capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "Domain 'busy' migrated to" in text.stdout, text.stderr
    assert pair.hosts[0].lookup("busy").state is DomainState.RUNNING


@contextlib.contextmanager
def _fake_source(pair, config, tls_dir):
    """A source of our own making, talking to the second host's listener: the control
    connection prepared for ``config`` and the data connection greeted; yields that
    connection.  Afterwards the migration is called off and the destination must forget the
    domain."""
    ch = _control(pair.listeners[1], tls_dir)
    try:
        ch.send_hello()
        ch.recv_hello()
        ch.send_json(S.CONTROL, {"op": "prepare", "config": config.to_dict(), "after_id": 1})
        answer = ch.recv_json(S.CONTROL)
        assert answer["ok"], answer
        assert pair.hosts[1].lookup(config.name).state is DomainState.SHUTOFF  # receiving, not running
        data = S.Channel.connect("127.0.0.1", answer["port"], client_context(tls_dir), what="the test VMM")
        try:
            data.send_hello(bytes.fromhex(answer["token"]))
            data.recv_hello()
            yield data
        finally:
            data.close()
        ch.send_json(S.CONTROL, {"op": "finish", "ok": False})
        assert ch.recv_json(S.CONTROL)["ok"] is True
    finally:
        ch.close()
    wait_for(lambda: not pair.hosts[1].domains(), what="the destination to forget the domain")


def test_a_corrupted_data_stream_is_refused_and_the_destination_cleaned_up(pair, guest, tls_dir):
    """A source (here a fake one) that sends pages outside the guest's RAM, or garbage, gets an
    ERROR naming it; the receiving VMM ends and the destination forgets the domain."""
    config = busy_config(guest)
    for bad in ("outside", "garbage"):
        with _fake_source(pair, config, tls_dir) as data:
            data.send_cpuid([])
            if bad == "outside":
                data.send_pages(config.memory_bytes + (64 << 20), memoryview(bytes(4096)))
                expected = "outside the guest's RAM"
            else:
                data.send(S.COMMIT)  # out of turn: no state was sent
                expected = "COMMIT where PAGES or ZERO or ROUND or STATE was due"
            with pytest.raises(MigrationError, match=expected):
                data.recv_header()


def test_a_destination_lacking_a_cpu_feature_refuses_before_any_page(pair, guest, tls_dir):
    """The guest's CPUID comes first on the data connection and is checked at once: a
    destination lacking a feature the guest saw refuses before the source sent any page, let
    alone paused (here a fake source claims every feature bit of CPUID leaf 1 and 7)."""
    with _fake_source(pair, busy_config(guest), tls_dir) as data:
        every = 0xFFFF_FFFF
        data.send_cpuid([(1, 0, 0, 0, 0, every, every), (7, 0, 1, 0, every, every, every)])
        with pytest.raises(MigrationError, match="lacks CPU features the guest saw"):
            data.recv_header()


# --- disks and NICs ------------------------------------------------------------------------------

SOAK = re.compile(r"blk: soak round (\d+) ok")


def soak_rounds(dom, since=0):
    return [int(n) for n in SOAK.findall(log(dom)[since:])]


def soak_config(guest, image, name="soak"):
    """blk.c soak: reads one disk chunk after another into one buffer that only the device
    writes, checking it each time."""
    return xvm.DomainConfig(name=name, kernel=guest("blk"), memory_mib=64,
                            cmdline="mode=soak chunk=256 chunks=64 checks=2 ballast_kib=512 every=8", disks=[xvm.Disk(image)])


def _disk_image(path, mib=8):
    with open(path, "wb") as f:
        f.truncate(mib << 20)
    return str(path)


def _disk_is_locked(image):
    from xvm.devices.block import DiskBusyError
    try:
        xvm.Disk(image).check()
    except DiskBusyError:
        return True
    return False


def _migrate_soak(pair, dom, dst, tls_dir, marks):
    """Migrate the soaking guest to host ``dst``: the destination's guest goes on reading
    rounds and every check of what the device wrote holds.  ``marks``: how much of each
    handle's console log came before it left (a handle mirrors every run)."""
    name, since = dom.name, marks.get(id(dom), 0)
    before = max(soak_rounds(dom, since))
    # 1 MiB/s: the first pass sends the buffer, then the guest's 512 KiB ballast for half a
    # second while many rounds (a chunk each) go by, so the buffer sent is stale by then
    stats = dom.migrate(pair.listeners[dst].uri, tls_dir=tls_dir, bandwidth=1)
    try:
        moved = pair.hosts[dst].lookup(name)
    except NotFoundError:  # it failed and powered off at once: its console says why
        with open(os.path.join(pair.dirs[dst], "log", f"{name}.log"), errors="replace") as f:
            raise AssertionError(f"the guest ended on the destination: {f.read()[-300:]}") from None
    wait_for(lambda: dom.console._is_closed(), what="the source's console to close")
    marks[id(dom)] = len(log(dom))
    since = marks.get(id(moved), 0)
    wait_for(lambda: len(soak_rounds(moved, since)) >= 3 or "FAIL" in log(moved)[since:], timeout=30,
             what="three rounds on the destination")
    assert "FAIL" not in log(moved)[since:], log(moved)[since:][-400:]
    rounds = soak_rounds(moved, since)
    assert rounds[0] >= before and rounds == list(range(rounds[0], rounds[0] + 8 * len(rounds), 8))
    return moved, stats


def test_device_writes_during_migration_reach_the_destination(pair, guest, tls_dir, tmp_path):
    """The guest's buffer is written only by virtio-blk reads (preadv into guest RAM, not in
    KVM's dirty log): without the device's own dirty tracking the destination finds another
    round's data there (or a stale used ring and the request never completes)."""
    a, b = pair.hosts
    image = _disk_image(tmp_path / "soak.img")
    dom = a.create(soak_config(guest, image))
    wait_for(lambda: len(soak_rounds(dom)) >= 3, what="the first rounds")
    marks = {}
    moved, _ = _migrate_soak(pair, dom, 1, tls_dir, marks)
    _migrate_soak(pair, moved, 0, tls_dir, marks)


def test_a_disk_changes_hands_at_the_switchover_back_and_forth(pair, guest, tls_dir, tmp_path):
    """A shared disk's lock goes with the guest: the destination takes it at the switchover
    (the source let go, paused and flushed), never both at once; an aborted migration leaves
    it with the source."""
    a, b = pair.hosts
    image = _disk_image(tmp_path / "shared.img")
    dom = a.create(soak_config(guest, image, name="shared"))
    wait_for(lambda: len(soak_rounds(dom)) >= 2, what="the first rounds")
    current, src, dst, marks = dom, 0, 1, {}
    for hop in range(4):
        assert _disk_is_locked(image)
        current, _ = _migrate_soak(pair, current, dst, tls_dir, marks)
        assert current.state is DomainState.RUNNING and _disk_is_locked(image)
        with pytest.raises(NotFoundError):
            pair.hosts[src].lookup("shared")
        src, dst = dst, src
    current.destroy()
    assert not _disk_is_locked(image)  # the last holder let go


ETH_P_XVM = 0x88B5  # the net guest's EtherType (tests/guests/net.c)
GUEST_MAC = "52:54:00:00:13:13"
SEQ = re.compile(rb"hello from guest 13 seq (\d+)")


def _frames_seen(sock, count, timeout=10):
    """The sequence numbers of ``count`` frames of the guest seen on ``sock``'s bridge."""
    seqs, deadline = [], time.monotonic() + timeout
    while len(seqs) < count:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            frame = sock.recv(2048)
        except socket.timeout:
            raise AssertionError(f"saw {len(seqs)} of {count} frames of the guest") from None
        m = SEQ.search(frame)
        if m and frame[6:12] == bytes.fromhex(GUEST_MAC.replace(":", "")):
            seqs.append(int(m.group(1)))
    return seqs


@pytest.mark.skipif(not Tap.can_create(), reason="needs CAP_NET_ADMIN")
def test_a_nic_reattaches_to_the_network_of_the_same_name(pair, guest, tls_dir):
    """The destination's network of the same name (here its own bridge: one machine, two
    hosts) gets a new TAP for the guest, which goes on sending and receiving through it."""
    suffix = os.getpid() % 100000
    name = f"mig{suffix}"
    nets = [h.create_network(xvm.Network(name, bridge=f"xvmm{side}{suffix}"))
            for h, side in zip(pair.hosts, "ab")]
    socks = []
    try:
        for net in nets:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_XVM))
            sock.bind((net.bridge, 0))
            socks.append(sock)
        dom = pair.hosts[0].create(xvm.DomainConfig(
            name="nic", memory_mib=64, kernel=guest("net"), cmdline="id=13 count=100000 ms=0",
            nics=[xvm.Nic(network=name, mac=GUEST_MAC)]))
        before = _frames_seen(socks[0], 2)
        dom.migrate(pair.listeners[1].uri, tls_dir=tls_dir)
        moved = pair.hosts[1].lookup("nic")
        assert os.listdir(f"/sys/class/net/{nets[1].bridge}/brif"), "no TAP on the destination's bridge"
        wait_for(lambda: not os.listdir(f"/sys/class/net/{nets[0].bridge}/brif"),
                 what="the source's TAP to go")
        after = _frames_seen(socks[1], 2)  # sent through the new TAP, the sequence goes on
        assert after[0] > before[-1], (before, after)
        bridge_mac = bytes.fromhex(open(f"/sys/class/net/{nets[1].bridge}/address").read()
                                   .strip().replace(":", ""))
        frame = (bytes.fromhex(GUEST_MAC.replace(":", "")) + bridge_mac + ETH_P_XVM.to_bytes(2, "big")
                 + b"hello from the destination\0").ljust(60, b"\0")
        socks[1].send(frame)
        wait_for(lambda: "hello from the destination" in log(moved), what="the guest to receive a frame")
        moved.destroy()
    finally:
        for sock in socks:
            sock.close()
        for h in pair.hosts:
            for d in h.domains():
                if d.state is not DomainState.SHUTOFF:
                    d.destroy()
        for net in nets:
            net.destroy()


GRABBER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
print("spinning", flush=True)
while True:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
    except BlockingIOError:
        pass
print("locked", flush=True)
sys.stdin.readline()
"""


def test_a_disk_taken_by_another_user_at_the_switchover_stays_with_the_source(pair, guest, tls_dir, tmp_path):
    """Someone else grabs the image the moment the source lets go of it: the destination
    cannot lock it and gives up, the source takes it back before it resumes (it waits for
    the lock), and the guest goes on reading right data on the source."""
    a, b = pair.hosts
    image = _disk_image(tmp_path / "grab.img")
    dom = a.create(soak_config(guest, image, name="grab"))
    wait_for(lambda: len(soak_rounds(dom)) >= 2, what="the first rounds")
    errors, done = [], threading.Event()

    def migrate():
        try:
            dom.migrate(pair.listeners[1].uri, tls_dir=tls_dir)
        except MigrationError as e:
            errors.append(e)
        finally:
            done.set()

    # The third user is a process of its own, spinning on the lock on the other CPU: no GIL
    # shared with the migration's threads here slows it, so it takes the moment the source
    # lets go (before the destination, which first receives and parses the state).
    grabber = subprocess.Popen([sys.executable, "-c", GRABBER, str(image)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert grabber.stdout.readline() == "spinning\n"
        thread = threading.Thread(target=migrate)
        thread.start()
        ready, _, _ = select.select([grabber.stdout], [], [], 60)
        assert ready and grabber.stdout.readline() == "locked\n", (
            f"the disk was never free for the other user (the migration: {errors or 'succeeded' if done.is_set() else 'running'})")
        assert not done.wait(0.5)  # the source waits for the disk before it resumes
        wait_for(lambda: _gone(b, "grab"), timeout=20, what="the destination to give up")
        grabber.stdin.write("release\n")
        grabber.stdin.flush()
        assert grabber.wait(10) == 0
        thread.join(30)
    finally:
        if grabber.poll() is None:
            grabber.kill()
            grabber.wait()
    assert errors and "cannot lock the disks" in str(errors[0]), errors
    assert dom.state is DomainState.RUNNING and _disk_is_locked(image)
    since = len(log(dom))
    wait_for(lambda: len(soak_rounds(dom, since)) >= 3 or "FAIL" in log(dom)[since:], what="more rounds")
    assert "FAIL" not in log(dom)


def _gone(host, name):
    try:
        host.lookup(name)
        return False
    except NotFoundError:
        return True
