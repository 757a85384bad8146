"""Stores of accepted events until the service acknowledges them.

``SqliteSpool`` keeps them on disk (SQLite in WAL mode), so a killed kernel loses nothing;
``MemoryStore`` is the ``spool=False`` variant. Both hand out batches of one bucket's oldest
events (``take``), then forget them on ``ack`` or hand them out again after ``release``.

Rows are keyed by a namespace: a one-way fingerprint of the API base and the access key. The
key itself is never written. Several processes may share one spool file: a batch is leased to
one sender while its request is under way, so no two processes send the same row.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ._errors import SpoolError

SCHEMA_VERSION = 1
SPOOL_FILE = "spool.sqlite3"

Row = tuple[str, str, str]  # bucket key, bucket name, event JSON fragment


@dataclass
class Batch:
    bucket_key: str
    bucket_name: str
    ids: list[int]
    fragments: list[str] = field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)


class Store(Protocol):
    path: str  # "" for memory

    def put(self, rows: Sequence[Row]) -> int:
        """Add rows in order; returns how many old rows were dropped to stay within bounds."""

    def take(self, limit: int, max_bytes: int, skip: Collection[str] = ()) -> Batch | None:
        """Lease the oldest events of the bucket whose oldest event is oldest (not in `skip`)."""

    def ack(self, batch: Batch) -> None: ...

    def release(self, batch: Batch) -> None: ...

    def pending(self) -> int:
        """Events of this namespace held, in flight or not."""

    def last_id(self) -> int:
        """The highest id held: a flush waits for every row up to it."""

    def has_pending_upto(self, upto: int, skip: Collection[str] = ()) -> bool:
        """Whether any row of this namespace with id <= upto is still held (outside `skip`):
        rows recovered from earlier processes count, so a flush after recovery waits for them."""

    def mark_denied(self) -> None:
        """The service refused this namespace's access key: let a fixed key adopt the rows."""

    def close(self) -> None: ...


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def encoded_size(body: str) -> int:
    return len(body) if body.isascii() else len(body.encode())


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
        self._buckets: dict[str, tuple[str, deque[tuple[int, str]]]] = {}
        self._count = 0
        self._next = 1
        self._leased: dict[int, Batch] = {}
        self._lock = threading.Lock()  # the caller may put while the sender takes

    def put(self, rows: Sequence[Row]) -> int:
        with self._lock:
            return self._put(rows)

    def _put(self, rows: Sequence[Row]) -> int:
        for bucket_key, bucket_name, body in rows:
            entry = self._buckets.get(bucket_key)
            if entry is None:
                entry = self._buckets[bucket_key] = (bucket_name, deque())
            entry[1].append((self._next, body))
            self._next += 1
        self._count += len(rows)
        dropped = 0
        while self._count > self.capacity:
            _, rows_of = min((v for v in self._buckets.values() if v[1]), key=lambda v: v[1][0][0])
            dropped_n = min(len(rows_of), self._count - self.capacity)
            for _ in range(dropped_n):
                rows_of.popleft()
            self._count -= dropped_n
            dropped += dropped_n
        return dropped

    def take(self, limit: int, max_bytes: int, skip: Collection[str] = ()) -> Batch | None:
        with self._lock:
            return self._take(limit, max_bytes, skip)

    def _take(self, limit: int, max_bytes: int, skip: Collection[str]) -> Batch | None:
        heads = [(rows[0][0], key) for key, (_, rows) in self._buckets.items()
                 if rows and key not in skip]
        if not heads:
            return None
        _, key = min(heads)
        name, rows = self._buckets[key]
        batch = Batch(key, name, [], [])
        size = 2
        while rows and len(batch.ids) < limit:
            row_id, body = rows[0]
            size += encoded_size(body) + 1
            if batch.ids and size > max_bytes:
                break
            rows.popleft()
            batch.ids.append(row_id)
            batch.fragments.append(body)
        self._leased[batch.ids[0]] = batch
        return batch

    def ack(self, batch: Batch) -> None:
        with self._lock:
            self._leased.pop(batch.ids[0], None)
            self._count -= len(batch)

    def release(self, batch: Batch) -> None:
        with self._lock:
            self._leased.pop(batch.ids[0], None)
            rows = self._buckets[batch.bucket_key][1]
            rows.extendleft(reversed(list(zip(batch.ids, batch.fragments, strict=True))))

    def pending(self) -> int:
        return self._count

    def last_id(self) -> int:
        return self._next - 1

    def has_pending_upto(self, upto: int, skip: Collection[str] = ()) -> bool:
        if any(b.ids[0] <= upto and b.bucket_key not in skip for b in self._leased.values()):
            return True
        return any(rows and rows[0][0] <= upto
                   for key, (_, rows) in self._buckets.items() if key not in skip)

    def mark_denied(self) -> None:
        pass  # nothing outlives this process

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ns TEXT NOT NULL,
    bucket_key TEXT NOT NULL,
    bucket_name TEXT NOT NULL,
    body TEXT NOT NULL,
    lease REAL NOT NULL DEFAULT 0,
    holder INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_ns ON events(ns, id);
CREATE INDEX IF NOT EXISTS events_leased ON events(ns, bucket_key) WHERE lease > 0;
CREATE TABLE IF NOT EXISTS denied(ns TEXT PRIMARY KEY, api_base TEXT NOT NULL, at REAL NOT NULL);
"""


def default_spool_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("isstreamer_jupyter", appauthor=False))


class SqliteSpool:
    """The durable store: one SQLite file (WAL) that several processes may share."""

    def __init__(self, directory: str | os.PathLike[str] | None, *, api_base: str,
                 access_key: str, adopt_bucket: str = "", max_bytes: int = 256 * 1024 * 1024,
                 lease_seconds: float = 60.0) -> None:
        folder = Path(directory) if directory else default_spool_dir()
        self.path = str(folder / SPOOL_FILE)
        self.ns = fingerprint(api_base, access_key)
        self.api_base = api_base
        self.max_bytes = max_bytes
        self.lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._freed_at = 0.0
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                       check_same_thread=False)
            self._open(adopt_bucket)
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"the spool {self.path} cannot be used: {exc}") from None
        except OSError as exc:
            raise SpoolError(f"the spool folder {folder} cannot be used: {exc.strerror}") from None
        #: events of this namespace found at start (left by an earlier process)
        self.recovered = self.pending()

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
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if adopt_bucket:  # rows a refused key left for this bucket go to the fixed key
                db.execute(
                    "UPDATE events SET ns=? WHERE bucket_key=? AND ns IN "
                    "(SELECT ns FROM denied WHERE api_base=? AND ns != ?)",
                    (self.ns, adopt_bucket, self.api_base, self.ns))
            db.execute("DELETE FROM denied WHERE ns=?", (self.ns,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _run(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"the spool {self.path} failed: {exc}") from None

    def put(self, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "INSERT INTO events(ns, bucket_key, bucket_name, body) VALUES (?, ?, ?, ?)",
                    [(self.ns, k, n, b) for k, n, b in rows])
                dropped = self._trim(db)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise SpoolError(f"the spool {self.path} failed: {exc}") from None
        return dropped

    def _trim(self, db: sqlite3.Connection) -> int:
        """Past ``max_bytes``, drop the oldest rows (of any namespace) until under it."""
        page_size = db.execute("PRAGMA page_size").fetchone()[0]

        def used() -> int:
            return (db.execute("PRAGMA page_count").fetchone()[0]
                    - db.execute("PRAGMA freelist_count").fetchone()[0]) * page_size

        dropped = 0
        size = used()
        while size > self.max_bytes:
            rows = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            if rows == 0:
                break
            share = min(0.5, (size - self.max_bytes) / size)
            cursor = db.execute("DELETE FROM events WHERE id IN "
                                "(SELECT id FROM events ORDER BY id LIMIT ?)",
                                (max(1, int(rows * share)),))
            dropped += cursor.rowcount
            size = used()
        return dropped

    def _free_dead_leases(self, db: sqlite3.Connection, now: float) -> None:
        """A process killed mid-request leaves its batch leased: free it at once if that
        process is gone (checked at most every few seconds)."""
        if now - self._freed_at < 5.0:
            return
        self._freed_at = now
        holders = db.execute("SELECT DISTINCT holder FROM events WHERE ns=? AND lease>=? "
                             "AND holder!=?", (self.ns, now, os.getpid())).fetchall()
        for (pid,) in holders:
            if not _alive(pid):
                db.execute("UPDATE events SET lease=0 WHERE ns=? AND holder=?", (self.ns, pid))

    def take(self, limit: int, max_bytes: int, skip: Collection[str] = ()) -> Batch | None:
        now = time.time()
        skip_sql = f" AND bucket_key NOT IN ({','.join('?' * len(skip))})" if skip else ""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                self._free_dead_leases(db, now)
                # one batch of a bucket in flight at a time, across processes: keeps the order
                busy = [k for (k,) in db.execute(
                    "SELECT DISTINCT bucket_key FROM events WHERE ns=? AND lease>0 AND lease>=?",
                    (self.ns, now))]
                if busy:
                    skip = {*skip, *busy}
                    skip_sql = f" AND bucket_key NOT IN ({','.join('?' * len(skip))})"
                head = db.execute(
                    "SELECT bucket_key, bucket_name FROM events WHERE ns=? AND lease<?"
                    + skip_sql + " ORDER BY id LIMIT 1", (self.ns, now, *skip)).fetchone()
                if head is None:
                    db.execute("COMMIT")
                    return None
                batch = Batch(head[0], head[1], [], [])
                size = 2
                for row_id, body in db.execute(
                        "SELECT id, body FROM events WHERE ns=? AND bucket_key=? AND lease<? "
                        "ORDER BY id LIMIT ?", (self.ns, head[0], now, limit)):
                    size += encoded_size(body) + 1
                    if batch.ids and size > max_bytes:
                        break
                    batch.ids.append(row_id)
                    batch.fragments.append(body)
                db.execute(
                    f"UPDATE events SET lease=?, holder=? "
                    f"WHERE id IN ({','.join('?' * len(batch.ids))})",
                    (now + self.lease_seconds, os.getpid(), *batch.ids))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise SpoolError(f"the spool {self.path} failed: {exc}") from None
        return batch

    def ack(self, batch: Batch) -> None:
        self._run(f"DELETE FROM events WHERE id IN ({','.join('?' * len(batch.ids))})",
                  batch.ids)

    def release(self, batch: Batch) -> None:
        self._run(f"UPDATE events SET lease=0 WHERE id IN ({','.join('?' * len(batch.ids))})",
                  batch.ids)

    def pending(self) -> int:
        return self._run("SELECT COUNT(*) FROM events WHERE ns=?", (self.ns,))[0][0]

    def last_id(self) -> int:
        return self._run("SELECT COALESCE(MAX(id), 0) FROM events")[0][0]

    def has_pending_upto(self, upto: int, skip: Collection[str] = ()) -> bool:
        skip_sql = f" AND bucket_key NOT IN ({','.join('?' * len(skip))})" if skip else ""
        return bool(self._run(
            "SELECT 1 FROM events WHERE ns=? AND id<=?" + skip_sql + " LIMIT 1",
            (self.ns, upto, *skip)))

    def mark_denied(self) -> None:
        self._run("INSERT OR REPLACE INTO denied(ns, api_base, at) VALUES (?, ?, ?)",
                  (self.ns, self.api_base, time.time()))

    def rekey(self, api_base: str, access_key: str) -> None:
        """The access key was fixed: this namespace's rows belong to the new key."""
        new = fingerprint(api_base, access_key)
        self._run("UPDATE events SET ns=? WHERE ns=?", (new, self.ns))
        self._run("DELETE FROM denied WHERE ns=?", (self.ns,))
        self.ns = new

    def reopen(self) -> None:
        """After fork: a connection of our own (leases keep the parent's batches its own)."""
        self._freed_at = 0.0
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                   check_same_thread=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()
