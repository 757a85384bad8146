"""Stores of accepted events until the service acknowledges them.

``SqliteSpool`` keeps them on disk (SQLite in WAL mode), so a killed kernel loses nothing;
``MemoryStore`` is the ``spool=False`` variant. Both hold *segments*: runs of consecutive
events of one bucket, as the sender drained them from the queue (one SQLite row per segment,
its ``(key, value, epoch)`` tuples in one ``marshal`` blob: about 0.1 µs an event, which is what
keeps the spool's cost far below a microsecond; a spool written by a newer marshal format is
refused, not misread). ``take`` leases the next events of the oldest segment; ``ack`` forgets
them, ``release`` hands them out again.

Rows are keyed by a namespace: a one-way fingerprint of the API base and the access key. The
key itself is never written. Several processes may share one spool file: a segment is leased
to one sender while its request is under way, one bucket has one batch in flight at a time
(so each bucket's order holds), and a killed process's lease is freed once it is gone.

The spool is its owner's alone: its folder is made ``0700`` and its files ``0600``, whatever
the umask. Each open ``SqliteSpool`` has a row in the ``senders`` table (its process, its
namespace's API base, a heartbeat), removed when it closes: :func:`spool_status` tells from
it whether a live process sends what waits. :func:`spool_status` and :func:`drop_spooled` need
no access key.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import shlex
import sqlite3
import stat
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ._errors import SpoolError

SCHEMA_VERSION = 2
SPOOL_FILE = "spool.sqlite3"
#: events per segment at most: a take decodes one segment
SEGMENT_EVENTS = 2000
#: how long a transaction may wait for another connection's write lock (but a put's)
BUSY_TIMEOUT = 10.0
#: how long a put waits at most, for another thread's transaction and another connection's
#: write lock: it runs in log() spilling, or in the sender holding the lock log() may wait for
PUT_WAIT = 0.002
#: a transaction that waited this long to begin waits for another connection, not for a
#: moment of this process's (another thread's, or the GIL's)
HELD_ELSEWHERE = 0.05
#: how long opening the spool waits in all for another connection: a process setting up a
#: new spool holds it a moment; one that holds its write lock longer (an SQLite client, a
#: transaction left open) makes the Streamer go on without the spool rather than wait for it
OPEN_WAIT = 2.0
#: the spool holds everything logged to it: its folder and files are for their owner only
FOLDER_MODE = 0o700
FILE_MODE = 0o600
#: the files SQLite keeps beside the database in WAL mode
SIDE_FILES = ("-wal", "-shm")
#: how long closing the spool waits at most to remove its row from the senders table
CLOSE_WAIT = 1.0
#: how often an open spool refreshes its heartbeat in the senders table, at most
HEARTBEAT = 5.0
#: hex characters of a namespace's fingerprint that name its account to a user
SHORT = 8

Event = tuple[str, Any, float]  # key, value, epoch


@dataclass
class Segment:
    """Consecutive events of one bucket."""

    bucket_key: str
    bucket_name: str
    events: list[Event] = field(repr=False)


@dataclass
class Batch:
    """Events leased for one request; `parts` say where they came from: (segment id, index of
    its first event in the segment, how many, the segment's length)."""

    bucket_key: str
    bucket_name: str
    parts: list[tuple[int, int, int, int]]
    events: list[Event] = field(repr=False)

    def __len__(self) -> int:
        return len(self.events)


class SpoolBusy(SpoolError):
    """The spool is held by another thread or connection (SQLITE_BUSY, a lock not free in
    time): nothing was done; try again later (no reason to leave the spool)."""


class SpoolHeldHere(SpoolBusy):
    """(SpoolBusy) Another thread of this process is using the spool (the sender's take or
    ack: a moment), not another connection (another process, which may hold it long)."""


class Store(Protocol):
    path: str  # "" for memory

    def put(self, segments: Sequence[Segment]) -> int:
        """Add segments in order; returns how many old events were dropped to stay bounded.
        Never waits long (it runs in log() spilling, or in the sender under the lock log()
        may wait for): a store held by another thread or process raises SpoolBusy, having
        added nothing."""

    def take(self, limit: int, skip: Collection[str] = (), after: Batch | None = None,
             least: int = 1) -> Batch | None:
        """Lease up to `limit` next events of one bucket: the oldest segment's bucket among
        those not in `skip` and with no batch in flight, from as many of its segments as it
        takes. With `after` (a batch this sender holds, still unanswered): the events right
        after it, if they are of its bucket, nobody holds them and there are at least
        `least` of them; the batch to send next."""

    def ack(self, batch: Batch, keep: Batch | None = None) -> None:
        """Forget `batch`'s events; `keep`, a batch taken after it, stays leased."""

    def release(self, batch: Batch) -> None: ...

    def pending(self) -> int:
        """Events of this namespace held, in flight or not."""

    def last_id(self) -> int:
        """The highest segment id held: a flush waits for every segment up to it."""

    def has_pending_upto(self, upto: int, skip: Collection[str] = ()) -> bool:
        """Whether any segment of this namespace with id <= upto is still held (outside
        `skip`): events recovered from earlier processes count, so a flush waits for them."""

    def mark_denied(self) -> None:
        """The service refused this namespace's access key: let a fixed key adopt the rows."""

    def checkpoint(self) -> None:
        """Housekeeping the sender does now and then, off the log() path."""

    def fork_locks(self) -> list[threading.Lock]:
        """The locks a fork must not split."""
        ...

    def close(self) -> None: ...


def split(segment: Segment) -> list[Segment]:
    """Cut a long run into segments of at most SEGMENT_EVENTS events."""
    events = segment.events
    if len(events) <= SEGMENT_EVENTS:
        return [segment]
    return [Segment(segment.bucket_key, segment.bucket_name, events[i:i + SEGMENT_EVENTS])
            for i in range(0, len(events), SEGMENT_EVENTS)]


def fingerprint(api_base: str, access_key: str) -> str:
    """A one-way name for (API base, access key); the key cannot be recovered from it."""
    h = hashlib.blake2b(digest_size=12, person=b"isstreamer-ns")
    h.update(api_base.encode() + b"\0" + access_key.encode())
    return h.hexdigest()


class MemoryStore:
    """Events held in memory, at most `capacity`; past it the oldest are dropped."""

    path = ""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._segments: dict[int, tuple[Segment, int]] = {}  # id -> (segment, done)
        self._leased: set[int] = set()
        self._count = 0
        self._next = 1
        self._lock = threading.Lock()  # the caller may put while the sender takes

    def put(self, segments: Sequence[Segment]) -> int:
        with self._lock:
            for segment in segments:
                for part in split(segment):
                    self._segments[self._next] = (part, 0)
                    self._next += 1
                    self._count += len(part.events)
            dropped = 0
            while self._count > self.capacity:
                oldest = next((i for i in self._segments if i not in self._leased), None)
                if oldest is None:  # all held by batches under way: over capacity a moment
                    break
                segment, done = self._segments[oldest]
                cut = min(len(segment.events) - done, self._count - self.capacity)
                self._count -= cut
                dropped += cut
                if done + cut == len(segment.events):
                    del self._segments[oldest]
                else:
                    self._segments[oldest] = (segment, done + cut)
            return dropped

    def take(self, limit: int, skip: Collection[str] = (), after: Batch | None = None,
             least: int = 1) -> Batch | None:
        with self._lock:
            if after is not None:
                return self._take_after(after, limit, least)
            if self._leased:  # one batch in flight (a single sender)
                return None
            batch: Batch | None = None
            for seg_id, (segment, done) in self._segments.items():
                if batch is None:
                    if segment.bucket_key in skip:
                        continue
                    batch = Batch(segment.bucket_key, segment.bucket_name, [], [])
                elif segment.bucket_key != batch.bucket_key:
                    continue
                events = segment.events[done:done + limit - len(batch.events)]
                batch.parts.append((seg_id, done, len(events), len(segment.events)))
                batch.events.extend(events)
                self._leased.add(seg_id)
                if len(batch.events) >= limit:
                    break
            return batch

    def _take_after(self, after: Batch, limit: int, least: int) -> Batch | None:
        last, start, n, _ = after.parts[-1]
        batch = Batch(after.bucket_key, after.bucket_name, [], [])
        for seg_id, (segment, done) in self._segments.items():
            if seg_id < last:
                continue
            if seg_id == last:
                done = start + n
            elif segment.bucket_key != after.bucket_key or seg_id in self._leased:
                break
            events = segment.events[done:done + limit - len(batch.events)]
            if events:
                batch.parts.append((seg_id, done, len(events), len(segment.events)))
                batch.events.extend(events)
            if len(batch.events) >= limit:
                break
        if len(batch.events) < max(1, least):
            return None
        self._leased.update(seg_id for seg_id, *_ in batch.parts)
        return batch

    def ack(self, batch: Batch, keep: Batch | None = None) -> None:
        with self._lock:
            for seg_id, start, n, _ in batch.parts:
                self._leased.discard(seg_id)
                segment, _ = self._segments[seg_id]
                if start + n >= len(segment.events):
                    del self._segments[seg_id]
                else:
                    self._segments[seg_id] = (segment, start + n)
            self._count -= len(batch)
            if keep is not None:
                self._leased.update(seg_id for seg_id, *_ in keep.parts)

    def release(self, batch: Batch) -> None:
        with self._lock:
            self._leased.difference_update(seg_id for seg_id, *_ in batch.parts)

    def pending(self) -> int:
        return self._count

    def last_id(self) -> int:
        return self._next - 1

    def has_pending_upto(self, upto: int, skip: Collection[str] = ()) -> bool:
        with self._lock:
            return any(i <= upto and s.bucket_key not in skip
                       for i, (s, _) in self._segments.items())

    def mark_denied(self) -> None:
        pass  # nothing outlives this process

    def checkpoint(self) -> None:
        pass

    def fork_locks(self) -> list[threading.Lock]:
        """The lock a fork must not split: the child gets new ones."""
        return [self._lock]

    def close(self) -> None:
        pass


# A segment's events live in a table of their own: leasing and acknowledging rewrite the small
# `segments` row only, not the blob (format 1 kept them in one row: 2.4x the disk writes).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS segments(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ns TEXT NOT NULL,
        bucket_key TEXT NOT NULL,
        bucket_name TEXT NOT NULL,
        count INTEGER NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        lease REAL NOT NULL DEFAULT 0,
        holder INTEGER NOT NULL DEFAULT 0)""",
    "CREATE TABLE IF NOT EXISTS segment_events(id INTEGER PRIMARY KEY, events BLOB NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS segment_gone AFTER DELETE ON segments
        BEGIN DELETE FROM segment_events WHERE id = old.id; END""",
    "CREATE INDEX IF NOT EXISTS segments_ns ON segments(ns, id)",
    "CREATE INDEX IF NOT EXISTS segments_leased ON segments(ns, bucket_key) WHERE lease > 0",
    "CREATE TABLE IF NOT EXISTS denied(ns TEXT PRIMARY KEY, api_base TEXT NOT NULL, "
    "at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta VALUES ('marshal_version', {marshal})",
    # One row per open SqliteSpool: who may be sending a namespace's events now.
    "CREATE TABLE IF NOT EXISTS senders(id INTEGER PRIMARY KEY, holder INTEGER NOT NULL, "
    "ns TEXT NOT NULL, pid INTEGER NOT NULL, api_base TEXT NOT NULL, started REAL NOT NULL, "
    "heartbeat REAL NOT NULL)",
    # The API base of each namespace with events, kept after its sender is gone.
    "CREATE TABLE IF NOT EXISTS accounts(ns TEXT PRIMARY KEY, api_base TEXT NOT NULL)",
)
_FROM_FORMAT_1 = (
    "DROP INDEX IF EXISTS segments_ns",
    "DROP INDEX IF EXISTS segments_leased",
    "ALTER TABLE segments RENAME TO segments_format_1",
    *_SCHEMA[:3],
    "INSERT INTO segments(id, ns, bucket_key, bucket_name, count, done, lease, holder) "
    "SELECT id, ns, bucket_key, bucket_name, count, done, lease, holder FROM segments_format_1",
    "INSERT INTO segment_events(id, events) SELECT id, events FROM segments_format_1",
    # ids keep growing from the old high-water mark (flush markers wait on "ids up to")
    "DELETE FROM sqlite_sequence WHERE name='segments'",
    "INSERT INTO sqlite_sequence(name, seq) SELECT 'segments', seq FROM sqlite_sequence "
    "WHERE name='segments_format_1'",
    "DROP TABLE segments_format_1",
)


#: adopt_bucket's value for every bucket: what `spool send` with the fixed key adopts
ADOPT_ALL = "\0every bucket"


def default_spool_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("isstreamer_jupyter", appauthor=False))


def spool_folder(directory: str | os.PathLike[str] | None) -> Path:
    """The spool's folder: `directory`, or the user data folder when none is given."""
    return Path(directory) if directory else default_spool_dir()


def _private_folder(folder: Path) -> None:
    """Make `folder` (its parents as usual) for its owner only; one already there is left as
    it is: :func:`modes_problem` says what is wrong with it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder, FOLDER_MODE)
    except FileExistsError:
        return
    os.chmod(folder, FOLDER_MODE)  # (mkdir's mode is cut by the umask; chmod's is not)


def _private_file(path: Path) -> bool:
    """Create `path` empty for its owner only, as SQLite would make it (SQLite then takes an
    empty file for a new database, and gives its side files the same mode). False if it was
    there already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)  # (the umask cut open()'s mode; fchmod's it does not)
    finally:
        os.close(fd)
    return True


def _open_to_others(path: Path) -> int:
    """The group and other permission bits of `path`; 0 if it is not there."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o077
    except OSError:
        return 0


def modes_problem(directory: str | os.PathLike[str] | None) -> str:
    """What other users may do with the spool in `directory` (its folder or files open to
    them), and the exact ``chmod`` that fixes it; "" when it is private."""
    folder = Path(os.path.abspath(spool_folder(directory)))  # (the fix works from anywhere)
    database = folder / SPOOL_FILE
    said = []
    if loose := _open_to_others(folder):
        said.append(f"its folder is {stat.S_IMODE(os.stat(folder).st_mode):o}")
    files = [database.with_name(database.name + side) for side in ("", *SIDE_FILES)]
    loose_files = [path for path in files if _open_to_others(path)]
    said += [f"{path.name} is {stat.S_IMODE(os.stat(path).st_mode):o}" for path in loose_files]
    if not said:
        return ""
    fixes = [f"chmod {FOLDER_MODE:o} {shlex.quote(str(folder))}"] if loose else []
    if loose_files:
        fixes.append(f"chmod {FILE_MODE:o} {shlex.quote(str(folder))}/{SPOOL_FILE}*")
    return (f"the spool {database} is open to other users ({', '.join(said)}), and it holds "
            f"everything logged to it. Fix: {' && '.join(fixes)}")


#: the spools whose modes this process has said are open to others (said once each)
_said_open: set[str] = set()


#: this run of this process, beside its PID in a lease's holder: a restarted kernel given the
#: PID of one killed before it (common in containers) tells that one's leases from its own
_RUN = (int.from_bytes(os.urandom(4), "big") >> 2 | 1) << 32


def _holder() -> int:
    return _RUN | os.getpid()  # (after a fork the child has its own PID)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _sender_alive(holder: int, pid: int) -> bool:
    """Whether the process of a senders row still runs: a row with our PID and another run's
    holder was left by a process that had our PID before us."""
    return holder == _holder() if pid == os.getpid() else _alive(pid)


def _marks(n: int) -> str:
    return ",".join("?" * n)


class SqliteSpool:
    """The durable store: one SQLite file (WAL) that several processes may share."""

    def __init__(self, directory: str | os.PathLike[str] | None, *, api_base: str,
                 access_key: str, adopt_bucket: str = "", max_bytes: int = 256 * 1024 * 1024,
                 lease_seconds: float = 60.0) -> None:
        folder = spool_folder(directory)
        self.path = str(folder / SPOOL_FILE)
        self.ns = fingerprint(api_base, access_key)
        self.api_base = api_base
        self.max_bytes = max_bytes
        self.lease_seconds = lease_seconds
        self._lock = threading.Lock()
        #: since when the lock's holder waits for the database's write lock (0: it does not)
        self._awaiting_db = 0.0
        self._freed_at = 0.0
        self._unchecked = 0  # bytes put since the size was last checked
        self._cache: dict[int, list[Event]] = {}  # segments being sent, decoded
        self._checkpointer: sqlite3.Connection | None = None
        self._last_id = 0  # the highest segment id seen (see last_id)
        #: events lost to damaged segments (unreadable rows are removed, not retried forever)
        self.damaged = 0
        self._sender_id = 0  # this object's row in the senders table
        self._beat_at = 0.0
        try:
            _private_folder(folder)
            created = _private_file(Path(self.path))
            self._db = self._connect()
            try:
                self._open_within(adopt_bucket, time.monotonic() + OPEN_WAIT)
            except BaseException:  # (held, damaged...: the connection is not left open)
                self._db.close()
                raise
            if created:  # (SQLite made them as the database is; this holds whatever it did)
                for side in SIDE_FILES:
                    with contextlib.suppress(FileNotFoundError):
                        os.chmod(self.path + side, FILE_MODE)
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"the spool {self.path} cannot be used: {exc}") from None
        except OSError as exc:
            why = ("it is a file, not a folder" if folder.exists() and not folder.is_dir()
                   else exc.strerror)
            raise SpoolError(f"the spool folder {folder} cannot be used: {why}") from None
        problem = modes_problem(folder)
        #: what to say once about this spool being open to other users, with the chmod that
        #: fixes it; "" when it is private, or this process has said it already
        self.warning = problem if problem and self.path not in _said_open else ""
        if problem:
            _said_open.add(self.path)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)

    def _open_within(self, adopt_bucket: str, deadline: float) -> None:
        """Set the spool up and count what it holds for us, waiting for other connections
        until `deadline` at most; past it, SpoolBusy saying who holds it and what to do."""
        db = self._db
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            try:
                db.execute(f"PRAGMA busy_timeout={max(0, int(left * 1000))}")
                self._open(adopt_bucket)
                #: events of this namespace found at start (left by an earlier process)
                self.recovered = self.pending()
                break
            except (sqlite3.OperationalError, SpoolBusy) as exc:
                # (processes opening a new spool at once: SQLite may answer "locked" at
                # once, its busy wait aside, while another one sets it up)
                locked = isinstance(exc, SpoolBusy) or "locked" in str(exc)
                if not locked:
                    raise
                with contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                attempt += 1
                pause = min(0.05 * attempt, deadline - time.monotonic())
                if pause <= 0:
                    raise SpoolBusy(
                        f"the spool {self.path} is held by another process (an SQLite client "
                        f"or a program keeping a transaction open on it has its write lock) "
                        f"and was not free within {OPEN_WAIT:g} s: end that transaction or "
                        f"close that program, then start a new Streamer to use the spool; or "
                        f"set spool_dir to another folder") from None
                time.sleep(pause)
        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")

    def _open(self, adopt_bucket: str) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise SpoolError(
                f"the spool {self.path} was written by a newer isstreamer_jupyter (format "
                f"{version}, this one reads {SCHEMA_VERSION}): upgrade, or set spool_dir to "
                f"another folder"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # survives a killed process, not a power cut
        db.execute("PRAGMA wal_autocheckpoint=0")  # the sender checkpoints, never log()
        with self._transaction():
            if db.execute("PRAGMA user_version").fetchone()[0] == 1:  # (read under the lock)
                for statement in _FROM_FORMAT_1:
                    db.execute(statement)
            for statement in _SCHEMA:
                db.execute(statement.format(marshal=marshal.version))
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            written = db.execute("SELECT value FROM meta WHERE name='marshal_version'").fetchone()
            if written[0] > marshal.version:
                raise SpoolError(
                    f"the spool {self.path} was written by a newer Python (marshal format "
                    f"{written[0]}, this one reads {marshal.version}): set spool_dir to another "
                    f"folder, or use that Python")
            if adopt_bucket:  # what a refused key left for this bucket goes to the fixed key
                db.execute(
                    "UPDATE segments SET ns=? WHERE (bucket_key=? OR ?) AND ns IN "
                    "(SELECT ns FROM denied WHERE api_base=? AND ns != ?)",
                    (self.ns, adopt_bucket, adopt_bucket == ADOPT_ALL, self.api_base, self.ns))
            db.execute("DELETE FROM denied WHERE ns=?", (self.ns,))
            self._last_id = db.execute("SELECT COALESCE(MAX(id), 0) FROM segments").fetchone()[0]
            self._register(db)

    def _register(self, db: sqlite3.Connection) -> None:
        """Add this spool's row to the senders table, and forget the rows of processes gone
        (and the API base of namespaces nobody has events of, nor sends)."""
        stale = [(row_id,) for row_id, holder, pid in db.execute(
            "SELECT id, holder, pid FROM senders").fetchall() if not _sender_alive(holder, pid)]
        db.executemany("DELETE FROM senders WHERE id=?", stale)
        now = time.time()
        self._sender_id = db.execute(
            "INSERT INTO senders(holder, ns, pid, api_base, started, heartbeat) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (_holder(), self.ns, os.getpid(), self.api_base, now, now)).lastrowid
        self._beat_at = time.monotonic()
        db.execute("INSERT OR REPLACE INTO accounts(ns, api_base) VALUES (?, ?)",
                   (self.ns, self.api_base))
        db.execute("DELETE FROM accounts WHERE ns NOT IN (SELECT ns FROM segments) "
                   "AND ns NOT IN (SELECT ns FROM senders)")

    def _failed(self, exc: sqlite3.Error) -> SpoolError:
        """The SpoolError for a SQLite error: SpoolBusy if another connection held the
        database (a moment: the sender tries again later, and keeps the spool)."""
        code = getattr(exc, "sqlite_errorcode", None)  # (Python 3.11+)
        if code is not None:
            busy = code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        else:
            busy = isinstance(exc, sqlite3.OperationalError) and "is locked" in str(exc)
        return (SpoolBusy if busy else SpoolError)(f"the spool {self.path} failed: {exc}")

    @contextlib.contextmanager
    def _transaction(self, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        """One locked, immediate transaction; SQLite errors become SpoolError. With `wait`,
        at most that long in all is spent waiting, for this object's lock (another thread's
        transaction) and for another connection's write lock; then SpoolBusy."""
        deadline = time.monotonic() + (wait or 0.0)
        if not self._lock.acquire(timeout=-1 if wait is None else wait):
            since = self._awaiting_db
            if since and time.monotonic() - since > HELD_ELSEWHERE:  # (the thread holding
                # it waits for another connection: not a moment of this process's)
                raise SpoolBusy(f"the spool {self.path} is held by another connection")
            raise SpoolHeldHere(f"the spool {self.path} is busy (another thread is writing)")
        db = self._db
        try:
            if wait is not None:  # (what is left of it: the database's own wait)
                left = max(0, int((deadline - time.monotonic()) * 1000))
                db.execute(f"PRAGMA busy_timeout={left}")
            self._awaiting_db = time.monotonic()
            try:
                db.execute("BEGIN IMMEDIATE")
            finally:
                self._awaiting_db = 0.0
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):  # (a closed connection: nothing to undo)
                if db.in_transaction:
                    db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._failed(exc) from None
            raise
        finally:
            try:
                if wait is not None:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            finally:
                self._lock.release()

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._transaction() as db:
            return db.execute(sql, args).fetchall()

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        """One read-only statement (its own consistent snapshot: no write lock taken)."""
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._failed(exc) from None

    def put(self, segments: Sequence[Segment], *, wait: float = PUT_WAIT) -> int:
        rows = [(part.bucket_key, part.bucket_name, marshal.dumps(part.events),
                 len(part.events)) for segment in segments for part in split(segment)]
        if not rows:
            return 0
        with self._transaction(wait) as db:
            ns = self.ns  # (read under the lock: rekey() may be replacing it)
            seg_id = 0
            for bucket_key, bucket_name, blob, count in rows:
                seg_id = db.execute("INSERT INTO segments(ns, bucket_key, bucket_name, count) "
                                    "VALUES (?, ?, ?, ?)",
                                    (ns, bucket_key, bucket_name, count)).lastrowid
                db.execute("INSERT INTO segment_events(id, events) VALUES (?, ?)", (seg_id, blob))
            self._last_id = max(self._last_id, seg_id)  # (under the lock)
            self._unchecked += sum(len(row[2]) for row in rows)
            if self._unchecked < min(1 << 20, self.max_bytes // 16):
                return 0
            self._unchecked = 0
            return self._trim(db)

    def _trim(self, db: sqlite3.Connection) -> int:
        """Past ``max_bytes`` of this namespace's waiting events (as stored), drop its oldest
        segments until under it. Another key's events sharing the file are neither dropped
        here nor counted: its backlog never costs this key its events. Checked after every
        MiB (or 1/16 of ``max_bytes``) written, so it may pass the bound by that much."""
        size = db.execute("SELECT COALESCE(SUM(length(e.events)), 0) FROM segments s "
                          "JOIN segment_events e ON e.id = s.id WHERE s.ns=?",
                          (self.ns,)).fetchone()[0]
        dropped = 0
        while size > self.max_bytes:
            oldest = db.execute(
                "SELECT s.id, s.count - s.done, length(e.events) FROM segments s "
                "JOIN segment_events e ON e.id = s.id WHERE s.ns=? AND s.lease=0 "
                "ORDER BY s.id LIMIT 1", (self.ns,)).fetchone()
            if oldest is None:
                break
            db.execute("DELETE FROM segments WHERE id=?", (oldest[0],))
            dropped += oldest[1]
            size -= oldest[2]
        return dropped

    def _free_dead_leases(self, db: sqlite3.Connection, now: float) -> None:
        """A process killed mid-request leaves its batch leased: free it once that process
        is gone (checked at most every few seconds)."""
        if now - self._freed_at < 5.0:
            return
        self._freed_at = now
        holders = db.execute("SELECT DISTINCT holder FROM segments WHERE ns=? AND lease>0 "
                             "AND holder!=?", (self.ns, _holder())).fetchall()
        for (holder,) in holders:
            pid = holder & 0xFFFFFFFF  # (an older spool's holder is the PID alone)
            if pid == os.getpid() or not _alive(pid):  # (our PID, not our run: reused)
                db.execute("UPDATE segments SET lease=0 WHERE ns=? AND holder=?",
                           (self.ns, holder))

    def take(self, limit: int, skip: Collection[str] = (), after: Batch | None = None,
             least: int = 1) -> Batch | None:
        now = time.time()
        if after is not None:
            return self._take_after(after, limit, max(1, least), now)
        with self._transaction() as db:
            self._free_dead_leases(db, now)
            busy = {k for (k,) in db.execute(
                "SELECT DISTINCT bucket_key FROM segments WHERE ns=? AND lease>0 AND lease>=?",
                (self.ns, now))}
            avoid = [*skip, *busy]
            head = db.execute(
                "SELECT bucket_key, bucket_name FROM segments WHERE ns=? AND lease<?"
                f" AND bucket_key NOT IN ({_marks(len(avoid))}) ORDER BY id LIMIT 1",
                (self.ns, now, *avoid)).fetchone()
            if head is None:
                return None
            batch = Batch(head[0], head[1], [], [])
            rows = db.execute(
                "SELECT id, done, count FROM segments WHERE ns=? AND bucket_key=? AND lease<? "
                "ORDER BY id", (self.ns, head[0], now))
            for seg_id, done, count in rows.fetchall():
                stop = self._add(db, batch, seg_id, done, count, limit)
                if stop:
                    break
            if not batch.parts:
                return None
            self._lease(db, batch, now)
        return batch

    def _lease(self, db: sqlite3.Connection, batch: Batch, now: float) -> None:
        ids = [seg_id for seg_id, *_ in batch.parts]
        db.execute(f"UPDATE segments SET lease=?, holder=? WHERE id IN ({_marks(len(ids))})",
                   (now + self.lease_seconds, _holder(), *ids))

    def _take_after(self, after: Batch, limit: int, least: int, now: float) -> Batch | None:
        last, start, n, count = after.parts[-1]
        begin = start + n
        cached = self._cache.get(last)
        if cached is not None and begin + limit <= count:
            # All in the segment `after` ends in, which this sender holds (and acking `after`
            # keeps held): nothing to ask the database.
            return Batch(after.bucket_key, after.bucket_name, [(last, begin, limit, count)],
                         cached[begin:begin + limit])
        batch = Batch(after.bucket_key, after.bucket_name, [], [])
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, bucket_key, done, count, lease FROM segments WHERE ns=? AND id>=? "
                "ORDER BY id LIMIT 64", (self.ns, last)).fetchall()
            for seg_id, bucket_key, done, count, lease in rows:
                if seg_id == last:  # (held by `after`: the events after its part)
                    done = start + n
                    if done >= count:
                        continue
                elif bucket_key != after.bucket_key or lease >= now:
                    break
                if self._add(db, batch, seg_id, done, count, limit) is not False:
                    break  # (full, or a damaged segment: stop there, keep the order)
            if len(batch.events) < least:
                return None
            self._lease(db, batch, now)
        return batch

    def _add(self, db: sqlite3.Connection, batch: Batch, seg_id: int, done: int, count: int,
             limit: int) -> bool | None:
        """Add a segment's events from `done` on to `batch`, up to `limit` in all. True: the
        batch is full or ends inside this segment; False: it may go on with the next segment;
        None: the segment was damaged (and dropped)."""
        decoded = self._decoded(db, seg_id, count - done)
        if decoded is None:
            return None
        events = decoded[done:done + limit - len(batch.events)]
        batch.parts.append((seg_id, done, len(events), count))
        batch.events.extend(events)
        return len(batch.events) >= limit or done + len(events) < count

    def _decoded(self, db: sqlite3.Connection, seg_id: int, left: int) -> list[Event] | None:
        """A segment's events, decoded once while they are being sent; a damaged segment is
        removed (its `left` events counted in `damaged`) and None returned."""
        events = self._cache.get(seg_id)
        if events is None:
            row = db.execute("SELECT events FROM segment_events WHERE id=?",
                             (seg_id,)).fetchone()
            try:
                if row is None:
                    raise EOFError("no events")
                events = marshal.loads(row[0])
                if type(events) is not list:
                    raise TypeError("not a list of events")
            except (ValueError, EOFError, TypeError):
                db.execute("DELETE FROM segments WHERE id=?", (seg_id,))
                self.damaged += left
                return None
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[seg_id] = events
        return events

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database (the sender calls this now and then),
        on a connection of its own, so a caller spilling into the spool never waits for it."""
        if self._checkpointer is None:
            self._checkpointer = self._connect()
        try:
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise self._failed(exc) from None
        if time.monotonic() - self._beat_at >= HEARTBEAT:
            self.heartbeat()

    def heartbeat(self) -> None:
        """Say in the senders table that this spool's process is still at work (put its row
        back if another process took it for a dead one's). Never waits: a spool held this
        moment skips this beat."""
        self._beat_at = time.monotonic()
        with contextlib.suppress(SpoolBusy), self._transaction(wait=0.0) as db:
            now = time.time()
            if not db.execute("UPDATE senders SET heartbeat=? WHERE id=?",
                              (now, self._sender_id)).rowcount:
                self._sender_id = db.execute(
                    "INSERT INTO senders(holder, ns, pid, api_base, started, heartbeat) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (_holder(), self.ns, os.getpid(), self.api_base, now, now)).lastrowid

    def ack(self, batch: Batch, keep: Batch | None = None) -> None:
        held = {seg_id for seg_id, *_ in keep.parts} if keep is not None else set()
        lease = time.time() + self.lease_seconds
        with self._transaction() as db:
            for seg_id, start, n, count in batch.parts:
                if start + n >= count:
                    db.execute("DELETE FROM segments WHERE id=?", (seg_id,))
                    self._cache.pop(seg_id, None)
                else:  # (a segment `keep` goes on with stays leased: no one else takes it)
                    db.execute("UPDATE segments SET done=?, lease=? WHERE id=?",
                               (start + n, lease if seg_id in held else 0, seg_id))

    def release(self, batch: Batch) -> None:
        ids = [seg_id for seg_id, *_ in batch.parts]
        self._query(f"UPDATE segments SET lease=0 WHERE id IN ({_marks(len(ids))})", ids)

    def pending(self) -> int:
        return self._read("SELECT COALESCE(SUM(count - done), 0) FROM segments WHERE ns=?",
                           (self.ns,))[0][0]

    def last_id(self) -> int:
        """The highest id in the file (other processes' rows too) if it can be read at once,
        else the highest seen (at open, written or read since): never a wait nor a failure,
        so a flush marker drained by log() spilling neither blocks nor is lost."""
        if self._lock.acquire(blocking=False):
            try:
                row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM segments").fetchone()
                self._last_id = max(self._last_id, row[0])
            except sqlite3.Error:
                pass  # (the highest seen serves: a flush waits at least for what we wrote)
            finally:
                self._lock.release()
        return self._last_id

    def has_pending_upto(self, upto: int, skip: Collection[str] = ()) -> bool:
        return bool(self._read(
            f"SELECT 1 FROM segments WHERE ns=? AND id<=? AND bucket_key NOT IN "
            f"({_marks(len(skip))}) LIMIT 1", (self.ns, upto, *skip)))

    def mark_denied(self) -> None:
        self._query("INSERT OR REPLACE INTO denied(ns, api_base, at) VALUES (?, ?, ?)",
                    (self.ns, self.api_base, time.time()))

    def rekey(self, api_base: str, access_key: str) -> None:
        """The access key was fixed: this namespace's segments belong to the new key."""
        new = fingerprint(api_base, access_key)
        with self._transaction() as db:
            db.execute("UPDATE segments SET ns=? WHERE ns=?", (new, self.ns))
            db.execute("DELETE FROM denied WHERE ns=?", (self.ns,))
            db.execute("UPDATE senders SET ns=? WHERE id=?", (new, self._sender_id))
            db.execute("INSERT OR REPLACE INTO accounts(ns, api_base) VALUES (?, ?)",
                       (new, api_base))
            self.ns = new  # (under the lock: a put() waiting for it writes to the new one)

    def reopen(self) -> None:
        """After fork: a connection of our own (the parent's leases stay its own). The
        inherited connection is kept, never used or closed: closing it could undo the
        parent's locks."""
        self._inherited = (self._db, self._checkpointer)
        try:
            self._db = self._connect()
        except sqlite3.Error as exc:
            raise SpoolError(f"the spool {self.path} cannot be reopened: {exc}") from None
        self._lock = threading.Lock()
        self._freed_at = 0.0
        self._cache = {}
        self._checkpointer = None
        with self._transaction() as db:  # (the parent's row is the parent's)
            self._register(db)

    def fork_locks(self) -> list[threading.Lock]:
        """The lock a fork must not split: the child gets new ones."""
        return [self._lock]

    def close(self) -> None:
        with self._lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
            with contextlib.suppress(sqlite3.Error):  # (left: stale once this process ends)
                self._db.execute(f"PRAGMA busy_timeout={int(CLOSE_WAIT * 1000)}")
                self._db.execute("DELETE FROM senders WHERE id=?", (self._sender_id,))
            self._db.close()


# ---------------------------------------------------------------- inspection, without a key
@dataclass(frozen=True)
class SpoolSender:
    """An open SqliteSpool, as the senders table has it."""

    ns: str
    pid: int
    api_base: str
    started: float
    heartbeat: float
    #: its process still runs (a killed one leaves its row, which the next open removes)
    live: bool

    @property
    def account(self) -> str:
        """The account's short fingerprint: what a user is shown, never the key."""
        return self.ns[:SHORT]


@dataclass(frozen=True)
class WaitingBucket:
    """What waits in the spool for one account (namespace) and bucket."""

    ns: str
    #: the API base the events go to; "" when the spool does not say (an older version's)
    api_base: str
    bucket_key: str
    bucket_name: str
    events: int
    #: the events' size as stored
    bytes: int
    #: the earliest and latest event epoch; None when no event of it could be read
    oldest: float | None
    newest: float | None
    #: the PIDs of live processes that send this account's events
    senders: tuple[int, ...]
    #: the service refused this account's access key
    refused: bool

    @property
    def account(self) -> str:
        """The account's short fingerprint: what a user is shown, never the key."""
        return self.ns[:SHORT]


@dataclass(frozen=True)
class SpoolStatus:
    """What waits in a spool, by account and bucket, read without any access key."""

    #: the database's path
    path: str
    #: whether there is a database there at all
    exists: bool
    buckets: tuple[WaitingBucket, ...]
    #: every row of the senders table, live or not
    senders: tuple[SpoolSender, ...]
    #: what :func:`modes_problem` says ("" when the spool is private)
    warning: str

    @property
    def events(self) -> int:
        return sum(bucket.events for bucket in self.buckets)


@dataclass(frozen=True)
class Dropped:
    """What :func:`drop_spooled` did."""

    #: events discarded
    events: int
    #: events left because a live process is sending them this moment
    held: int
    #: the PIDs of those processes
    holders: tuple[int, ...]


def _connect_existing(path: Path) -> sqlite3.Connection | None:
    """A connection to the database at `path` if there is one (never creating it)."""
    if not path.is_file():
        return None
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True,
                               timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.OperationalError:  # (removed meanwhile, or not ours to open)
        if not path.exists():
            return None
        raise


def _tables(db: sqlite3.Connection, path: Path) -> set[str]:
    """The tables of a spool this version reads (a newer format is refused)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SpoolError(f"the spool {path} was written by a newer isstreamer_jupyter (format "
                         f"{version}, this one reads {SCHEMA_VERSION}): upgrade to read it")
    return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _epochs(blob: bytes | None, done: int) -> tuple[float, float] | None:
    """The earliest and latest epoch of a segment's events from `done` on."""
    try:
        epochs = [event[2] for event in marshal.loads(blob)[done:]]  # type: ignore[arg-type]
        return (min(epochs), max(epochs)) if epochs else None
    except (ValueError, EOFError, TypeError, IndexError, KeyError):  # (damaged: no epochs)
        return None


def spool_status(directory: str | os.PathLike[str] | None = None) -> SpoolStatus:
    """What waits in the spool in `directory` (the default spool's folder when None), for
    each account and bucket. Needs no access key; reads only, and creates nothing.
    Raises SpoolError if the spool cannot be read."""
    folder = Path(os.path.abspath(spool_folder(directory)))  # (said to a user: from anywhere)
    path = folder / SPOOL_FILE
    warning = modes_problem(folder)
    try:
        db = _connect_existing(path)
        if db is None:
            return SpoolStatus(str(path), False, (), (), warning)
        try:
            db.execute("BEGIN")  # (one snapshot for every query)
            return SpoolStatus(str(path), True, *_read_status(db, path), warning)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SpoolError(f"the spool {path} cannot be read: {exc}") from None


def _read_status(db: sqlite3.Connection, path: Path
                 ) -> tuple[tuple[WaitingBucket, ...], tuple[SpoolSender, ...]]:
    tables = _tables(db, path)
    if "segments" not in tables:  # (an empty file: a spool not set up yet)
        return (), ()
    senders = tuple(SpoolSender(ns, pid, api_base, started, heartbeat,
                                _sender_alive(holder, pid))
                    for holder, ns, pid, api_base, started, heartbeat in db.execute(
                        "SELECT holder, ns, pid, api_base, started, heartbeat FROM senders "
                        "ORDER BY id")) if "senders" in tables else ()
    api_bases: dict[str, str] = {}
    refused: set[str] = set()
    if "denied" in tables:
        for ns, api_base in db.execute("SELECT ns, api_base FROM denied"):
            api_bases[ns] = api_base
            refused.add(ns)
    if "accounts" in tables:
        api_bases.update(db.execute("SELECT ns, api_base FROM accounts"))
    for sender in senders:
        api_bases.setdefault(sender.ns, sender.api_base)
    rows = db.execute(
        "SELECT s.ns, s.bucket_key, s.bucket_name, s.count - s.done, s.done, e.events FROM "
        "segments s LEFT JOIN segment_events e ON e.id = s.id ORDER BY s.id"
        if "segment_events" in tables else  # (format 1: the events in the segment's row)
        "SELECT ns, bucket_key, bucket_name, count - done, done, events FROM segments "
        "ORDER BY id")
    found: dict[tuple[str, str], list[Any]] = {}  # -> [name, events, bytes, oldest, newest]
    for ns, bucket_key, bucket_name, left, done, blob in rows:
        entry = found.setdefault((ns, bucket_key), [bucket_name, 0, 0, None, None])
        entry[0] = bucket_name  # (the latest name it was logged under)
        entry[1] += left
        entry[2] += len(blob or b"")
        if (epochs := _epochs(blob, done)) is not None:
            entry[3] = epochs[0] if entry[3] is None else min(entry[3], epochs[0])
            entry[4] = epochs[1] if entry[4] is None else max(entry[4], epochs[1])
    buckets = tuple(
        WaitingBucket(ns, api_bases.get(ns, ""), bucket_key, name, events, size, oldest,
                      newest, tuple(sorted({s.pid for s in senders if s.ns == ns and s.live})),
                      ns in refused)
        for (ns, bucket_key), (name, events, size, oldest, newest) in found.items()
        if events > 0)
    return buckets, senders


def drop_spooled(directory: str | os.PathLike[str] | None = None, *,
                 namespaces: Iterable[str] | None = None, bucket_key: str = "") -> Dropped:
    """Discard what waits in the spool in `directory` (the default spool's folder when None):
    the events of the namespaces given (every one's when None), of one bucket if
    `bucket_key`. A batch a live process is sending this moment is left (the service may have
    it already); a dead process's is discarded. Needs no access key."""
    folder = spool_folder(directory)
    path = folder / SPOOL_FILE
    chosen = None if namespaces is None else list(namespaces)
    try:
        db = _connect_existing(path)
        if db is None:
            return Dropped(0, 0, ())
        try:
            db.execute("BEGIN IMMEDIATE")
            if "segments" not in _tables(db, path):
                db.execute("ROLLBACK")
                return Dropped(0, 0, ())
            where, args = "1", []
            if chosen is not None:
                where += f" AND ns IN ({_marks(len(chosen))})"
                args += chosen
            if bucket_key:
                where += " AND bucket_key=?"
                args.append(bucket_key)
            now = time.time()
            dropped, held, holders, gone = 0, 0, set(), []
            for seg_id, left, lease, holder in db.execute(
                    f"SELECT id, count - done, lease, holder FROM segments WHERE {where}",
                    args).fetchall():
                pid = holder & 0xFFFFFFFF  # (an older spool's holder is the PID alone)
                if lease >= now and _sender_alive(holder, pid):
                    held += left
                    holders.add(pid)
                else:
                    dropped += left
                    gone.append((seg_id,))
            db.executemany("DELETE FROM segments WHERE id=?", gone)
            db.execute("COMMIT")
            return Dropped(dropped, held, tuple(sorted(holders)))
        finally:
            db.close()  # (an open transaction is rolled back)
    except sqlite3.Error as exc:
        raise SpoolError(f"the spool {path} cannot be changed: {exc}") from None
