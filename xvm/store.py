"""The domain store of one state directory: SQLite in WAL mode, one transaction per change.

A :class:`Store` keeps one :class:`DomainRecord` per defined (or running transient) domain, the
per-boot domain id counter, and named JSON objects of later kinds (networks, pools). Several
processes use one store at once (a host, xvmd, VMM processes allocating ids): every change is one
``BEGIN IMMEDIATE`` transaction, and a writer waits up to :data:`BUSY_TIMEOUT` seconds for another.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``, so a change that returned is on disk
even after a power loss, and a SIGKILL at any moment leaves the last committed state. NORMAL would
be as safe against SIGKILL but may roll the last changes back on power loss, which could hand out a
domain id twice; changes are rare (define, rename, boot), so the fsync per commit is cheap.

The file is created 0600 (SQLite gives its -wal and -shm files the same mode); an existing file
keeps its mode. The store is thread-safe (one connection behind a lock); in a forked child an
inherited Store leaves the parent's connection alone and opens its own on first use.
"""
import errno
import json
import os
import sqlite3
import threading
import time
import uuid as uuid_module
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

from .config import NAME_PATTERN
from .errors import ConfigError, HostError, NotFoundError, StateError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x78766D73  # "xvms", in the SQLite header: marks the file as an xvm store
BUSY_TIMEOUT = 10.0  # seconds a change waits for another process's transaction
FILE_MODE = 0o600
STATES = ("shutoff", "crashed", "running", "paused")  # running/paused: recorded by the VMM

_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE domains (
        uuid TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL UNIQUE,
        config TEXT NOT NULL,
        persistent INTEGER NOT NULL,
        autostart INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'shutoff',
        reason TEXT,
        defined_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)",
    """CREATE TABLE objects (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    )""",
)
_DOMAIN_COLUMNS = "uuid, name, config, persistent, autostart, state, reason, defined_at, updated_at"

# Connections inherited over fork() belong to the parent: closing one in the child could disturb
# the parent's locks, so the child keeps them here, unused, for its life.
_ABANDONED = []
_STORES = weakref.WeakSet()


def _after_fork_in_child():
    for store in list(_STORES):
        store._lock = threading.RLock()  # another thread of the parent may have held it
        if store._conn is not None:
            _ABANDONED.append(store._conn)
            store._conn = _INHERITED


_INHERITED = object()  # a Store's connection slot in a forked child until it reconnects
os.register_at_fork(after_in_child=_after_fork_in_child)


class StoreError(HostError):
    """The store file is corrupt, from a newer xvm, not an xvm store, or cannot be used."""

    def __init__(self, path, detail, errno=None):
        super().__init__(f"domain store {path}: {detail}", errno)
        self.path = str(path)
        self.detail = detail

    def __reduce__(self):
        return (type(self), (self.path, self.detail, self.errno))


@dataclass(frozen=True)
class DomainRecord:
    """One stored domain; ``state``/``reason`` are its last known state while no VMM runs it."""

    uuid: str
    name: str
    config: dict
    persistent: bool
    autostart: bool
    state: str
    reason: str | None
    defined_at: float
    updated_at: float


class Store:
    """The domain store of one state directory: SQLite, WAL, one transaction per change."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._lock = threading.RLock()
        self._conn = None
        self._conn = self._open()
        _STORES.add(self)

    # -- opening ------------------------------------------------------------------------------

    def _open(self):
        # Create the file with its mode if it is missing, but never open and close an existing
        # one: closing any descriptor of a database drops every POSIX lock this process holds
        # on it, those of another Store's connection included — then a VMM closing its own
        # connection believes it is the last one and deletes the write-ahead log under us.
        if os.path.isdir(self.path):
            raise StoreError(self.path, f"cannot open: {os.strerror(errno.EISDIR)}", errno.EISDIR)
        if not os.path.exists(self.path):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            except FileExistsError:
                fd = -1
            except OSError as e:
                raise StoreError(self.path, f"cannot open: {e.strerror}", e.errno) from None
            if fd >= 0:
                os.close(fd)
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:
            raise self._error(e) from None
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn):
        with self._sqlite_errors():
            if self._check_identity(conn):
                self._check_version(conn)  # before anything writes to a newer xvm's file
            conn.execute("PRAGMA synchronous=FULL")
            self._enable_wal(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not self._check_identity(conn):
                    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                    conn.execute("INSERT INTO counters (name, value) VALUES ('domain_id', 0)")
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            self._check_version(conn)

    def _check_identity(self, conn):
        """True if the file is an xvm store, False if it is an empty database; else StoreError."""
        # One statement, so one read snapshot: read apart, another process creating the store
        # could commit between the two and leave a new store looking like a foreign database.
        try:
            application_id, tables = conn.execute(
                "SELECT (SELECT application_id FROM pragma_application_id),"
                " (SELECT count(*) FROM sqlite_master)").fetchone()
        except sqlite3.DatabaseError as e:
            if _code(e) in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise StoreError(self.path, f"is not an xvm store ({e})") from None
            raise
        if application_id == APPLICATION_ID:
            return True
        if application_id == 0 and tables == 0:
            return False
        raise StoreError(self.path, f"is an SQLite database but not an xvm store "
                                    f"(application_id {application_id:#x})")

    def _enable_wal(self, conn):
        # Switching to WAL needs a moment alone with the file; another process opening the store
        # at the same time may hold it, and this pragma does not always wait on the busy handler.
        deadline = time.monotonic() + BUSY_TIMEOUT
        while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower()
            except sqlite3.OperationalError as e:
                if _code(e) != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
            if mode != "wal":
                raise StoreError(self.path, f"cannot use write-ahead logging (journal mode {mode})")

    def _check_version(self, conn):
        try:
            rows = conn.execute("SELECT version FROM schema_version").fetchall()
        except sqlite3.OperationalError as e:
            raise StoreError(self.path, f"is corrupt: no schema version ({e})") from None
        if len(rows) != 1 or not isinstance(rows[0][0], int) or rows[0][0] < 1:
            raise StoreError(self.path, f"is corrupt: schema version {rows!r}")
        version = rows[0][0]
        if version > SCHEMA_VERSION:
            raise StoreError(self.path, f"was written by a newer xvm (schema version {version}; "
                                        f"this xvm reads up to {SCHEMA_VERSION})")

    # -- plumbing -----------------------------------------------------------------------------

    def close(self):
        with self._lock:
            if self._conn not in (None, _INHERITED):
                self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Store({self.path!r})"

    def _connection(self):
        """The connection; call with the lock held."""
        if self._conn is _INHERITED:
            self._conn = None
            self._conn = self._open()
        if self._conn is None:
            raise StateError(f"domain store {self.path} is closed", state="closed")
        return self._conn

    def _error(self, e):
        if _code(e) == sqlite3.SQLITE_BUSY:
            return StoreError(self.path, f"locked by another process for more than {BUSY_TIMEOUT:g}s")
        if _code(e) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return StoreError(self.path, f"is corrupt ({e})")
        return StoreError(self.path, str(e))

    @contextmanager
    def _sqlite_errors(self):
        try:
            yield
        except sqlite3.Error as e:
            raise self._error(e) from None

    @contextmanager
    def _write(self):
        """One change: a BEGIN IMMEDIATE transaction, committed if the block returns."""
        with self._lock, self._sqlite_errors():
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def _read(self, sql, params=()):
        with self._lock, self._sqlite_errors():
            return self._connection().execute(sql, params).fetchall()

    def _record(self, row):
        uuid, name, config, persistent, autostart, state, reason, defined_at, updated_at = row
        return DomainRecord(uuid, name, self._load(config, f"domain {name!r}"), bool(persistent),
                            bool(autostart), state, reason, defined_at, updated_at)

    def _load(self, text, what):
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as e:
            raise StoreError(self.path, f"is corrupt: {what} does not parse ({e})") from None
        if not isinstance(data, dict):
            raise StoreError(self.path, f"is corrupt: {what} is a {type(data).__name__}, not a dict")
        return data

    def _get(self, conn, uuid):
        row = conn.execute(f"SELECT {_DOMAIN_COLUMNS} FROM domains WHERE uuid = ?", (uuid,)).fetchone()
        if row is None:
            raise NotFoundError(f"no domain with uuid {uuid} in {self.path}")
        return row

    def _change(self, uuid, **columns):
        uuid = _uuid(uuid)
        assignments = ", ".join(f"{column} = ?" for column in columns)
        with self._write() as conn:
            self._get(conn, uuid)
            conn.execute(f"UPDATE domains SET {assignments}, updated_at = ? WHERE uuid = ?",
                         (*columns.values(), time.time(), uuid))
            return self._record(self._get(conn, uuid))

    # -- domains ------------------------------------------------------------------------------

    def add_domain(self, uuid, name, config, *, persistent=True):
        """Store a new domain; ConfigError if its name or uuid is taken, naming the other domain."""
        uuid, name, text = _uuid(uuid), _name(name), _dumps(config, "domain config")
        now = time.time()
        with self._write() as conn:
            other = conn.execute("SELECT name FROM domains WHERE uuid = ?", (uuid,)).fetchone()
            if other is not None:
                raise ConfigError(f"domain {other[0]!r} already has uuid {uuid}")
            other = conn.execute("SELECT uuid FROM domains WHERE name = ?", (name,)).fetchone()
            if other is not None:
                raise ConfigError(f"a domain named {name!r} already exists (uuid {other[0]})")
            conn.execute(f"INSERT INTO domains ({_DOMAIN_COLUMNS}) VALUES (?, ?, ?, ?, 0, 'shutoff', "
                         "NULL, ?, ?)", (uuid, name, text, int(_bool(persistent, "persistent")), now, now))
            return self._record(self._get(conn, uuid))

    def define_domain(self, uuid, name, config):
        """Store a persistent domain, or redefine one, with libvirt's rules: a domain that has
        this uuid and name gets the new configuration (and becomes persistent if it was
        transient); the uuid of a domain with another name, or the name of a domain with
        another uuid, is a ConfigError naming the other domain.  Returns (record, is_new)."""
        uuid, name, text = _uuid(uuid), _name(name), _dumps(config, "domain config")
        with self._write() as conn:
            other = conn.execute("SELECT name FROM domains WHERE uuid = ?", (uuid,)).fetchone()
            if other is not None and other[0] != name:
                raise ConfigError(f"domain {other[0]!r} is already defined with uuid {uuid}")
            if other is None:
                other = conn.execute("SELECT uuid FROM domains WHERE name = ?", (name,)).fetchone()
                if other is not None:
                    raise ConfigError(f"domain {name!r} already exists with uuid {other[0]}")
                now = time.time()
                conn.execute(f"INSERT INTO domains ({_DOMAIN_COLUMNS}) VALUES (?, ?, ?, 1, 0, 'shutoff', "
                             "NULL, ?, ?)", (uuid, name, text, now, now))
                return self._record(self._get(conn, uuid)), True
            conn.execute("UPDATE domains SET config = ?, persistent = 1, updated_at = ? WHERE uuid = ?",
                         (text, time.time(), uuid))
            return self._record(self._get(conn, uuid)), False

    def domain(self, key):
        """The record of the domain named ``key``, or whose uuid is ``key``; None if none."""
        if isinstance(key, uuid_module.UUID):
            key = str(key)
        if not isinstance(key, str):
            raise ConfigError(f"a domain is looked up by name or uuid, not {type(key).__name__}")
        try:
            by_uuid = str(uuid_module.UUID(key))
        except ValueError:
            by_uuid = None
        rows = []
        if by_uuid is not None:
            rows = self._read(f"SELECT {_DOMAIN_COLUMNS} FROM domains WHERE uuid = ?", (by_uuid,))
        if not rows:
            rows = self._read(f"SELECT {_DOMAIN_COLUMNS} FROM domains WHERE name = ?", (key,))
        return self._record(rows[0]) if rows else None

    def domains(self):
        """Every stored domain, ordered by name."""
        return [self._record(row)
                for row in self._read(f"SELECT {_DOMAIN_COLUMNS} FROM domains ORDER BY name")]

    def update_config(self, uuid, config):
        return self._change(uuid, config=_dumps(config, "domain config"))

    def rename(self, uuid, new_name):
        """Rename a domain; ConfigError if another domain has ``new_name``."""
        uuid, new_name = _uuid(uuid), _name(new_name)
        with self._write() as conn:
            self._get(conn, uuid)
            other = conn.execute("SELECT uuid FROM domains WHERE name = ?", (new_name,)).fetchone()
            if other is not None and other[0] != uuid:
                raise ConfigError(f"a domain named {new_name!r} already exists (uuid {other[0]})")
            conn.execute("UPDATE domains SET name = ?, updated_at = ? WHERE uuid = ?",
                         (new_name, time.time(), uuid))
            return self._record(self._get(conn, uuid))

    def remove_domain(self, uuid):
        """Forget a domain; NotFoundError if it is not stored."""
        uuid = _uuid(uuid)
        with self._write() as conn:
            self._get(conn, uuid)
            conn.execute("DELETE FROM domains WHERE uuid = ?", (uuid,))

    def set_autostart(self, uuid, on):
        return self._change(uuid, autostart=int(_bool(on, "autostart")))

    def set_persistent(self, uuid, on):
        return self._change(uuid, persistent=int(_bool(on, "persistent")))

    def set_state(self, uuid, state, reason=None):
        """Record the last known state: "shutoff" or "crashed" + reason when no VMM runs it;
        "running" or "paused", written by its VMM, so a VMM that died without saying so
        is noticed (the host then records "crashed")."""
        if state not in STATES:
            raise ConfigError(f"stored state {state!r} is not one of {', '.join(STATES)}")
        if reason is not None and not isinstance(reason, str):
            raise ConfigError(f"state reason must be a string or None, not {type(reason).__name__}")
        return self._change(uuid, state=state, reason=reason)

    # -- per-boot domain ids ------------------------------------------------------------------

    def next_domain_id(self):
        """A new domain id (1, 2, 3...): never handed out before by this state directory."""
        with self._write() as conn:
            (last,) = conn.execute("SELECT value FROM counters WHERE name = 'domain_id'").fetchone()
            conn.execute("UPDATE counters SET value = ? WHERE name = 'domain_id'", (last + 1,))
            return last + 1

    # -- named objects of other kinds ---------------------------------------------------------

    def put_object(self, kind, name, data):
        """Create or replace the ``kind`` object ``name`` (a JSON-able dict)."""
        kind, name = _key(kind, "object kind"), _key(name, "object name")
        text = _dumps(data, f"{kind} {name!r}")
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO objects (kind, name, data) VALUES (?, ?, ?)",
                         (kind, name, text))

    def object(self, kind, name):
        kind, name = _key(kind, "object kind"), _key(name, "object name")
        rows = self._read("SELECT data FROM objects WHERE kind = ? AND name = ?", (kind, name))
        return self._load(rows[0][0], f"{kind} {name!r}") if rows else None

    def objects(self, kind):
        """{name: data} of every ``kind`` object, in name order."""
        kind = _key(kind, "object kind")
        rows = self._read("SELECT name, data FROM objects WHERE kind = ? ORDER BY name", (kind,))
        return {name: self._load(data, f"{kind} {name!r}") for name, data in rows}

    def remove_object(self, kind, name):
        """Forget the ``kind`` object ``name``; NotFoundError if it is not stored."""
        kind, name = _key(kind, "object kind"), _key(name, "object name")
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM objects WHERE kind = ? AND name = ?", (kind, name))
            if cursor.rowcount == 0:
                raise NotFoundError(f"no {kind} named {name!r} in {self.path}")


def _code(e):
    """The primary SQLite result code of an sqlite3 error (SQLITE_BUSY for SQLITE_BUSY_RECOVERY)."""
    return (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF


def _uuid(value):
    if isinstance(value, uuid_module.UUID):
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(f"uuid must be a string, not {type(value).__name__}")
    try:
        return str(uuid_module.UUID(value))
    except ValueError:
        raise ConfigError(f"uuid {value!r} is not a UUID") from None


def _name(value):
    if not isinstance(value, str):
        raise ConfigError(f"domain name must be a string, not {type(value).__name__}")
    if not NAME_PATTERN.fullmatch(value):
        raise ConfigError(f"domain name {value!r} is invalid: use 1-64 letters, digits, '_', '.', "
                          "'+' or '-', starting with a letter or digit")
    return value


def _key(value, what):
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, not {value!r}")
    return value


def _bool(value, what):
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be True or False, not {value!r}")
    return value


def _dumps(data, what):
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a dict, not {type(data).__name__}")
    try:
        return json.dumps(data, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what} is not JSON data: {e}") from None
