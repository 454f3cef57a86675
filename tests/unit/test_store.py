"""xvm.store: the SQLite domain store of a state directory.

Every test runs on a real SQLite file in a temporary directory, several with real concurrent
processes (forked, so they start in a millisecond). The kill test SIGKILLs a writer at random
moments ``XVM_STORE_KILLS`` times (default 300) and checks after every kill that the store is
intact and every record loads as written.
"""
import hashlib
import json
import multiprocessing
import os
import pickle
import random
import signal
import sqlite3
import struct
import threading
import time
import traceback
import uuid as uuid_module

import pytest

from xvm.errors import ConfigError, HostError, NotFoundError, StateError
from xvm.store import APPLICATION_ID, SCHEMA_VERSION, DomainRecord, Store, StoreError

KILLS = int(os.environ.get("XVM_STORE_KILLS", "300"))
KILL_AFTER_MAX = 0.030  # seconds a writer runs before SIGKILL, at most


def new_uuid():
    return str(uuid_module.uuid4())


@pytest.fixture
def path(tmp_path):
    return tmp_path / "domains.db"


@pytest.fixture
def store(path):
    with Store(path) as s:
        yield s


# -- domains ----------------------------------------------------------------------------------

def test_add_and_look_up_a_domain(store):
    uuid = new_uuid()
    before = time.time()
    record = store.add_domain(uuid, "web", {"memory_mib": 256, "disks": [{"path": "/a"}]})
    assert record == DomainRecord(uuid, "web", {"memory_mib": 256, "disks": [{"path": "/a"}]},
                                  persistent=True, autostart=False, state="shutoff", reason=None,
                                  defined_at=record.defined_at, updated_at=record.defined_at)
    assert before <= record.defined_at <= time.time()
    assert store.domain("web") == record
    assert store.domain(uuid) == record
    assert store.domain(uuid.upper()) == record
    assert store.domain(uuid_module.UUID(uuid)) == record
    assert store.domain("db") is None
    assert store.domain(new_uuid()) is None


def test_transient_domain(store):
    record = store.add_domain(new_uuid(), "tmp", {}, persistent=False)
    assert record.persistent is False
    assert store.set_persistent(record.uuid, True).persistent is True
    assert store.domain("tmp").persistent is True


def test_domains_are_ordered_by_name(store):
    for name in ("c", "a", "b"):
        store.add_domain(new_uuid(), name, {"n": name})
    assert [r.name for r in store.domains()] == ["a", "b", "c"]
    assert [r.config for r in store.domains()] == [{"n": "a"}, {"n": "b"}, {"n": "c"}]


def test_records_survive_reopen(path):
    uuid = new_uuid()
    with Store(path) as s:
        s.add_domain(uuid, "web", {"x": [1, 2.5, None, "é"]})
        s.set_autostart(uuid, True)
        s.set_state(uuid, "crashed", "VMM killed by signal 9")
    with Store(path) as s:
        record = s.domain("web")
    assert (record.uuid, record.config, record.autostart) == (uuid, {"x": [1, 2.5, None, "é"]}, True)
    assert (record.state, record.reason) == ("crashed", "VMM killed by signal 9")


def test_taken_name_or_uuid_names_the_other_domain(store):
    uuid = new_uuid()
    store.add_domain(uuid, "web", {})
    with pytest.raises(ConfigError, match=f"a domain named 'web' already exists \\(uuid {uuid}\\)"):
        store.add_domain(new_uuid(), "web", {})
    with pytest.raises(ConfigError, match=f"domain 'web' already has uuid {uuid}"):
        store.add_domain(uuid, "db", {})
    assert [r.name for r in store.domains()] == ["web"]


def test_update_config(store):
    record = store.add_domain(new_uuid(), "web", {"memory_mib": 256})
    updated = store.update_config(record.uuid, {"memory_mib": 512})
    assert updated.config == {"memory_mib": 512}
    assert updated.defined_at == record.defined_at
    assert updated.updated_at >= record.updated_at
    assert store.domain("web").config == {"memory_mib": 512}


def test_rename(store):
    web = store.add_domain(new_uuid(), "web", {})
    db = store.add_domain(new_uuid(), "db", {})
    assert store.rename(web.uuid, "www").name == "www"
    assert store.domain("web") is None
    assert store.domain("www").uuid == web.uuid
    with pytest.raises(ConfigError, match=f"a domain named 'db' already exists \\(uuid {db.uuid}\\)"):
        store.rename(web.uuid, "db")
    assert store.rename(web.uuid, "www").name == "www"  # its own name: a no-op
    assert sorted(r.name for r in store.domains()) == ["db", "www"]


def test_remove_domain(store):
    record = store.add_domain(new_uuid(), "web", {})
    store.remove_domain(record.uuid)
    assert store.domain("web") is None
    with pytest.raises(NotFoundError, match=record.uuid):
        store.remove_domain(record.uuid)
    store.add_domain(new_uuid(), "web", {})  # the name is free again


def test_missing_domain_is_not_found(store):
    uuid = new_uuid()
    for change in (lambda: store.update_config(uuid, {}), lambda: store.rename(uuid, "x"),
                   lambda: store.set_autostart(uuid, True), lambda: store.set_persistent(uuid, False),
                   lambda: store.set_state(uuid, "shutoff")):
        with pytest.raises(NotFoundError, match=f"no domain with uuid {uuid}"):
            change()


def test_set_state(store):
    uuid = store.add_domain(new_uuid(), "web", {}).uuid
    assert (store.set_state(uuid, "crashed", "triple fault").reason) == "triple fault"
    record = store.set_state(uuid, "shutoff")
    assert (record.state, record.reason) == ("shutoff", None)
    assert store.set_state(uuid, "running").state == "running"
    with pytest.raises(ConfigError, match="'asleep' is not one of shutoff, crashed, running, paused"):
        store.set_state(uuid, "asleep")
    with pytest.raises(ConfigError, match="reason"):
        store.set_state(uuid, "crashed", 9)


@pytest.mark.parametrize("call, message", [
    (lambda s: s.add_domain(new_uuid(), "web", "memory=256"), "config must be a dict, not str"),
    (lambda s: s.add_domain(new_uuid(), "web", [1]), "config must be a dict, not list"),
    (lambda s: s.add_domain(new_uuid(), "web", {"f": open}), "not JSON data"),
    (lambda s: s.add_domain(new_uuid(), "web", {"x": float("nan")}), "not JSON data"),
    (lambda s: s.add_domain(new_uuid(), 7, {}), "name must be a string, not int"),
    (lambda s: s.add_domain(new_uuid(), "", {}), "name '' is invalid"),
    (lambda s: s.add_domain(new_uuid(), "a/b", {}), "name 'a/b' is invalid"),
    (lambda s: s.add_domain("not-a-uuid", "web", {}), "'not-a-uuid' is not a UUID"),
    (lambda s: s.add_domain(12, "web", {}), "uuid must be a string, not int"),
    (lambda s: s.add_domain(new_uuid(), "web", {}, persistent="yes"), "persistent must be True or False"),
    (lambda s: s.domain(3), "not int"),
    (lambda s: s.put_object("network", "default", "x"), "must be a dict, not str"),
    (lambda s: s.put_object("", "default", {}), "object kind must be a non-empty string"),
    (lambda s: s.object("network", None), "object name must be a non-empty string"),
])
def test_bad_input_is_a_config_error(store, call, message):
    with pytest.raises(ConfigError, match=message):
        call(store)
    assert store.domains() == []
    assert store.objects("network") == {}


def test_bad_input_to_changes_is_a_config_error(store):
    uuid = store.add_domain(new_uuid(), "web", {"a": 1}).uuid
    with pytest.raises(ConfigError, match="config must be a dict"):
        store.update_config(uuid, None)
    with pytest.raises(ConfigError, match="name must be a string"):
        store.rename(uuid, b"www")
    with pytest.raises(ConfigError, match="autostart must be True or False"):
        store.set_autostart(uuid, 1)
    assert store.domain(uuid) == store.domains()[0]
    assert (store.domain(uuid).name, store.domain(uuid).config) == ("web", {"a": 1})


def test_closed_store_is_a_state_error(path):
    s = Store(path)
    s.close()
    s.close()
    with pytest.raises(StateError, match="closed"):
        s.domains()


# -- named objects ----------------------------------------------------------------------------

def test_objects(store):
    assert store.object("network", "default") is None
    store.put_object("network", "default", {"bridge": "xvmbr0"})
    store.put_object("network", "isolated", {"bridge": "xvmbr1"})
    store.put_object("pool", "default", {"path": "/var/lib/xvm/images"})
    store.put_object("network", "default", {"bridge": "xvmbr9"})  # replaces
    assert store.object("network", "default") == {"bridge": "xvmbr9"}
    assert store.objects("network") == {"default": {"bridge": "xvmbr9"}, "isolated": {"bridge": "xvmbr1"}}
    assert store.objects("pool") == {"default": {"path": "/var/lib/xvm/images"}}
    store.remove_object("network", "default")
    assert store.objects("network") == {"isolated": {"bridge": "xvmbr1"}}
    with pytest.raises(NotFoundError, match="no network named 'default'"):
        store.remove_object("network", "default")
    assert store.objects("volume") == {}


# -- domain ids -------------------------------------------------------------------------------

def test_domain_ids_are_never_reused_across_reopen(path):
    with Store(path) as s:
        assert [s.next_domain_id() for _ in range(3)] == [1, 2, 3]
    with Store(path) as s:
        assert s.next_domain_id() == 4


def _allocate_ids(path, count, barrier, out):
    barrier.wait(timeout=120)  # all workers begin together, however slowly each was forked
    ids = []
    try:
        with Store(path) as s:
            for _ in range(count):
                ids.append(s.next_domain_id())
                time.sleep(0.001)  # a writer in a burst keeps the lock: SQLite's busy waits sleep
    except Exception:
        out.put(traceback.format_exc())  # the test fails at once, with the worker's reason
        return
    out.put(ids)


def _open_fresh(path, barrier, out):
    barrier.wait(timeout=120)
    try:
        Store(path).close()
    except Exception:
        out.put(traceback.format_exc())
        return
    out.put(None)


def test_a_new_store_opened_by_many_processes_at_once_is_an_xvm_store_to_each(tmp_path):
    # Each opener reads the file's identity while another may be creating the store.  Read in two
    # statements, the identity could span the creator's commit: an application id of 0 from
    # before, tables from after — a foreign database (seen in CI; 34 of 800 openers here).
    ctx = multiprocessing.get_context("fork")
    openers, rounds = 4, 60
    for n in range(rounds):
        path = tmp_path / f"domains-{n}.db"
        barrier, out = ctx.Barrier(openers), ctx.Queue()
        procs = [ctx.Process(target=_open_fresh, args=(path, barrier, out)) for _ in range(openers)]
        for p in procs:
            p.start()
        try:
            errors = [e for e in (out.get(timeout=120) for _ in procs) if e]
        finally:
            for p in procs:
                p.join(timeout=30)
        assert not errors, f"round {n}: {errors[0]}"
        with Store(path) as s:
            assert s.next_domain_id() == 1


def test_domain_ids_are_unique_across_processes_allocating_at_once(tmp_path):
    # The store does not exist yet: the processes also race to create it.  Every attempt must
    # hand out unique ids; on a loaded machine one worker may finish before the others run, and
    # that attempt proves nothing about racing, so there are up to three.
    workers, count = 4, 150
    ctx = multiprocessing.get_context("fork")
    interleaved = 0
    for attempt in range(3):
        path = tmp_path / f"domains-{attempt}.db"
        barrier, out = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=_allocate_ids, args=(path, count, barrier, out)) for _ in range(workers)]
        for p in procs:
            p.start()
        try:
            results = [out.get(timeout=120) for _ in procs]
        finally:
            for p in procs:
                p.join(timeout=30)
        failures = [r for r in results if isinstance(r, str)]
        assert not failures, failures[0]
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        ids = [i for result in results for i in result]
        assert len(set(ids)) == len(ids)
        assert sorted(ids) == list(range(1, workers * count + 1))
        assert all(result == sorted(result) for result in results)
        interleaved = sum(1 for result in results if result != list(range(result[0], result[0] + count)))
        if interleaved:
            break
    assert interleaved > 0, "the workers never ran concurrently; the test proved nothing"


def test_domain_ids_are_unique_across_threads(store):
    results = [[] for _ in range(4)]

    def allocate(out):
        for _ in range(100):
            out.append(store.next_domain_id())
            if len(out) % 10 == 0:
                store.add_domain(new_uuid(), f"t{threading.get_ident()}-{len(out)}", {"n": len(out)})

    threads = [threading.Thread(target=allocate, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in results for i in out]
    assert sorted(ids) == list(range(1, 401))
    assert len(store.domains()) == 40


def test_a_forked_child_uses_its_own_connection(store):
    assert store.next_domain_id() == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            ids = [store.next_domain_id(), store.next_domain_id()]
            store.add_domain(new_uuid(), "child", {})
            store.close()
            os.write(write, json.dumps(ids).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child_ids = json.loads(f.read() or "null")
    os.waitpid(pid, 0)
    assert child_ids == [2, 3]
    assert store.next_domain_id() == 4
    assert store.domain("child") is not None


def test_a_forked_child_is_not_blocked_by_a_parent_thread_mid_change(store):
    held, release = threading.Event(), threading.Event()

    def hold_the_lock():
        with store._lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
        signal.alarm(5)  # a deadlock kills the child with SIGALRM
        try:
            os._exit(0 if store.next_domain_id() == 1 else 3)
        finally:
            traceback.print_exc()
            os._exit(1)
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status:#x}"
    assert store.next_domain_id() == 2


# -- refusing what is not a store of this xvm -------------------------------------------------

def test_a_newer_schema_is_refused_without_touching_the_file(path):
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"{path}: was written by a newer xvm "
                                         f"\\(schema version {SCHEMA_VERSION + 1}"):
        Store(path)
    assert path.read_bytes() == before


def test_a_garbage_file_is_refused(path):
    garbage = random.Random(1).randbytes(8192)
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match=f"{path}: is not an xvm store") as info:
        Store(path)
    assert isinstance(info.value, HostError)
    assert path.read_bytes() == garbage


def test_another_sqlite_database_is_refused(path):
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    db.close()
    with pytest.raises(StoreError, match="is an SQLite database but not an xvm store"):
        Store(path)


def test_an_empty_file_becomes_a_store(path):
    path.write_bytes(b"")
    with Store(path) as s:
        s.add_domain(new_uuid(), "web", {})
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_corrupt_record_is_a_store_error(store, path):
    store.add_domain(new_uuid(), "web", {})
    with sqlite3.connect(path) as db:
        db.execute("UPDATE domains SET config = '{\"torn'")
    db.close()
    with pytest.raises(StoreError, match=f"{path}: is corrupt: domain 'web' does not parse"):
        store.domains()


def test_an_unopenable_path_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match=f"{tmp_path / 'missing'}/domains.db: cannot open") as info:
        Store(tmp_path / "missing" / "domains.db")
    assert info.value.errno is not None
    with pytest.raises(StoreError, match="cannot open"):
        Store(tmp_path)


def test_store_error_pickles():
    e = pickle.loads(pickle.dumps(StoreError("/x/domains.db", "is corrupt", 5)))
    assert (str(e), e.path, e.errno) == ("domain store /x/domains.db: is corrupt", "/x/domains.db", 5)


def test_files_are_private(path):
    old = os.umask(0o022)
    try:
        with Store(path) as s:
            s.add_domain(new_uuid(), "web", {})
            modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
    finally:
        os.umask(old)
    assert modes == {"domains.db": 0o600, "domains.db-wal": 0o600, "domains.db-shm": 0o600}


def test_every_change_is_durable_in_wal_mode(store, path):
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with store._lock:
        conn = store._connection()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_a_writer_waits_for_another_process_transaction(store, path):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            os.write(write, b"locked")
            time.sleep(0.3)
            other.execute("COMMIT")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 6) == b"locked"
    began = time.monotonic()
    assert store.next_domain_id() == 1
    waited = time.monotonic() - began
    os.waitpid(pid, 0)
    os.close(read)
    assert waited >= 0.2


# -- SIGKILL at random moments ----------------------------------------------------------------

def _checked(data):
    """``data`` plus a checksum of itself, so a torn or mixed-up record is visible."""
    return {**data, "sha256": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()}


def _verify(data):
    data = dict(data)
    assert "sha256" in data, f"a record without its checksum: {data}"
    digest = data.pop("sha256")
    assert hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest() == digest, data
    return data


def _writer(path, seed, out):
    """Define, rename, update, undefine (and allocate ids, put objects) until killed."""
    rng = random.Random(seed)
    store = Store(path)
    names = [f"dom{i}" for i in range(12)]

    def config(uuid):
        return _checked({"uuid": uuid, "seed": seed,
                         "payload": rng.randbytes(rng.randrange(0, 6000)).hex()})  # up to 3 pages

    while True:
        records = store.domains()
        op = rng.random()
        try:
            if op < 0.3 or not records:
                uuid = new_uuid()
                store.add_domain(uuid, rng.choice(names), config(uuid), persistent=rng.random() < 0.8)
            elif op < 0.5:
                store.rename(rng.choice(records).uuid, rng.choice(names))
            elif op < 0.7:
                uuid = rng.choice(records).uuid
                store.update_config(uuid, config(uuid))
            elif op < 0.85:
                store.remove_domain(rng.choice(records).uuid)
            elif op < 0.92:
                os.write(out, struct.pack("<cQ", b"i", store.next_domain_id()))
                continue
            elif op < 0.97:
                name = rng.choice(names)
                store.put_object("network", name, _checked({"name": name, "payload": rng.randbytes(
                    rng.randrange(0, 3000)).hex()}))
            else:
                objects = store.objects("network")
                if objects:
                    store.remove_object("network", rng.choice(sorted(objects)))
        except ConfigError:  # a name taken: expected with a small pool of names
            pass
        os.write(out, struct.pack("<cQ", b"o", 0))


def _verify_store(path, seen_ids):
    with Store(path) as store:
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            names = [row[0] for row in db.execute("SELECT name FROM domains NOT INDEXED")]
        finally:
            db.close()
        assert len(names) == len(set(names)), f"duplicate names {sorted(names)}"
        records = store.domains()
        assert sorted(r.name for r in records) == sorted(names)
        for record in records:
            assert _verify(record.config)["uuid"] == record.uuid
            assert record.state == "shutoff" and record.defined_at <= record.updated_at
        for name, data in store.objects("network").items():
            assert _verify(data)["name"] == name
        # The counter survived every kill: a new id is above every id the writers were given.
        new = store.next_domain_id()
        assert new not in seen_ids and new > max(seen_ids, default=0)
        seen_ids.add(new)
        return len(records)


def test_sigkill_at_any_moment_leaves_the_store_intact(tmp_path):
    rng = random.Random(os.environ.get("XVM_STORE_SEED", time.time_ns()))
    ops, defined = 0, 0
    path = None
    kill = 0
    # On a loaded machine a writer may barely run in its window: go on (at most three times as
    # many kills) until the kills have cut into at least KILLS completed changes.
    while kill < KILLS or (ops < KILLS and kill < 3 * KILLS):
        kill += 1
        fresh = (kill - 1) % 25 == 0  # now and then a fresh file, killed early: while creating the schema
        if fresh:
            path = tmp_path / f"domains-{kill}.db"
            seen_ids = set()  # ids are unique per store
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                os.write(write, b"r")  # running: the kill's random moment counts from here
                _writer(path, rng.random(), write)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(1)
        os.close(write)
        os.read(read, 1)  # b"r" (or b"" if it died at once: the status check below says so)
        time.sleep(rng.uniform(0, KILL_AFTER_MAX / 10 if fresh else KILL_AFTER_MAX))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read, "rb") as f:
            reports = f.read()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"the writer stopped by itself (status {status:#x}) before kill {kill}; see its traceback")
        for at in range(0, len(reports) - len(reports) % 9, 9):
            kind, value = struct.unpack_from("<cQ", reports, at)
            if kind == b"i":
                assert value not in seen_ids, f"domain id {value} handed out twice"
                seen_ids.add(value)
            else:
                ops += 1
        defined += _verify_store(path, seen_ids)
    assert ops >= KILLS, f"only {ops} changes completed in {kill} runs: the writer barely ran"
    assert defined > 0


def test_a_second_store_in_one_process_keeps_the_first_ones_locks(tmp_path):
    """Opening another Store on the same file must not drop the first one's POSIX locks: if it
    did, another process closing its connection would delete the write-ahead log under the
    first, whose later writes would then be seen by nobody else."""
    import subprocess
    import sys

    path = str(tmp_path / "domains.db")
    first = Store(path)
    second = Store(path)
    code = "import sys; from xvm.store import Store; s = Store(sys.argv[1]); s.domains(); s.close()"
    subprocess.run([sys.executable, "-c", code, path], check=True)
    first.add_domain("6f4c0967-003f-4e50-8c2c-94785c76877d", "later", {"name": "later"}, persistent=False)
    read = "import sys; from xvm.store import Store; print([r.name for r in Store(sys.argv[1]).domains()])"
    out = subprocess.run([sys.executable, "-c", read, path], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "['later']"
    first.close()
    second.close()
