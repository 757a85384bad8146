"""Nothing lost: the disk spool, recovery after SIGKILL, exit, fork, sharing, and its errors."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import trustme

from isstreamer_jupyter import IsStreamerWarning, Streamer
from isstreamer_jupyter._sender import Marker
from isstreamer_jupyter.receiver import Faults

KEY = "ist_spool_test_secret_key_xyz"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("IS_ACCESS_KEY", "IS_OFFLINE", "IS_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def settings(rx, spool_dir, **kw):
    options = {"bucket_name": "Spool", "bucket_key": "spool_test", "access_key": KEY,
               "api_base": rx.api_base, "spool_dir": str(spool_dir),
               "max_requests_per_second": 0, "timeout": 2, "flush_interval": 0.1,
               "spool_interval": 0.05}
    options.update(kw)
    return options


def run_child(code: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def values(events):
    return [e["value"] for e in events]


def quiet_close(s, timeout=1.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.close(timeout=timeout)


def test_sigkill_mid_stream_then_the_next_process_delivers(make_receiver, env):
    rx = make_receiver(faults=Faults(latency=0.3))  # slow: most events are still pending
    opts = settings(rx, env / "spool", batch_size=20)
    child = run_child(f"""
        import time
        from isstreamer_jupyter import Streamer
        s = Streamer(**{opts!r})
        for i in range(400):
            s.log("n", i)
        print("logged", flush=True)
        i = 400
        while True:  # keep streaming until killed
            s.log("n", i)
            i += 1
            time.sleep(0.001)
    """)
    assert child.stdout.readline().strip() == "logged"
    time.sleep(0.5)  # well over spool_interval: the first 400 are on disk
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    rx.set_faults(latency=0)
    s = Streamer(**opts)
    assert s.recovered > 0
    assert s.flush(timeout=30)
    got = values(rx.events("spool_test"))
    assert set(range(400)) <= set(got)  # every event logged before the kill
    dupes = sorted(v for v, n in Counter(got).items() if n > 1)
    # at-least-once: only the batch in flight at the kill may arrive twice (the receiver stored
    # it after its client died; nothing told the next process), with the one before it if the
    # kill came between that one's answer and its removal from the spool (done once the next
    # request is out)
    if dupes:
        assert len(dupes) <= 2 * 20 and dupes == list(range(dupes[0], dupes[0] + len(dupes)))
    assert sorted(set(got)) == list(range(max(got) + 1))  # no gaps
    quiet_close(s)


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("slow", ["bucket", "events"])
def test_events_logged_while_an_answer_is_slow_reach_the_spool_before_it(make_receiver, env,
                                                                        monkeypatch, slow,
                                                                        scheme):
    """The sender moved log()'s queue to the spool only between requests: while a slow
    request (the bucket's creation, or a batch's) waited for its answer, up to `timeout`
    seconds of events lived in memory alone, and a kill lost them all. (Over HTTPS too: a
    first try watched the socket, which TLS's own records make look answered at once.)"""
    tls = None
    if scheme == "https":
        ca = trustme.CA()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(tls)
        ca.cert_pem.write_to_path(str(env / "ca.pem"))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(env / "ca.pem"))  # (the child's too)
    rx = make_receiver(tls=tls)
    opts = settings(rx, env / "spool", batch_size=5, timeout=30)
    if slow == "events":  # (the bucket exists: a batch's request is the slow one)
        first = Streamer(**opts)
        first.log("n", -1)
        assert first.flush(timeout=10)
        quiet_close(first)
    rx.set_faults(latency=20)
    child = run_child(f"""
        import time
        from isstreamer_jupyter import Streamer
        s = Streamer(**{opts!r})
        for i in range(5):
            s.log("n", i)
        time.sleep(0.5)  # (the request is out, its answer 20 s away)
        for i in range(5, 20):
            s.log("n", i)
        print("logged", flush=True)
        time.sleep(60)
    """)
    assert child.stdout.readline().strip() == "logged"
    time.sleep(0.5)  # (well over spool_interval, far under the answer's 20 s)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    rx.set_faults(latency=0)
    s = Streamer(**opts)
    assert s.flush(timeout=30)
    assert set(values(rx.events("spool_test"))) >= set(range(20))
    quiet_close(s)


def test_exit_flushes_then_leaves_the_rest_in_the_spool(make_receiver, env):
    rx = make_receiver()
    opts = settings(rx, env / "spool", exit_timeout=0.5)
    rx.outage(3600)
    child = run_child(f"""
        from isstreamer_jupyter import Streamer
        s = Streamer(**{opts!r})
        for i in range(30):
            s.log("n", i)
    """)  # no close(): the interpreter exits
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0
    # said once, as a plain line (it was a warning pointing at _streamer.py's at-exit code,
    # then the same fact again as a line)
    assert err.count("30 events") == 1 and "Warning" not in err and "_streamer.py" not in err
    assert err.startswith("isstreamer_jupyter: at exit: 30 events not delivered: none "
                          "acknowledged for 0.5 s (backing off after "), err
    assert err.count("\n") == 1, err
    assert "they wait in the spool" in err and "spool send" in err, err
    assert KEY not in out + err
    rx.clear()  # the outage ends
    s = Streamer(**opts)
    assert s.recovered == 30 and s.stats().recovered == 30
    assert s.flush(timeout=10)
    assert values(rx.events("spool_test")) == list(range(30))
    quiet_close(s)


def test_exit_with_the_service_up_delivers_without_close(make_receiver, env):
    rx = make_receiver()
    child = run_child(f"""
        from isstreamer_jupyter import Streamer
        s = Streamer(**{settings(rx, env / "spool", flush_interval=30)!r})
        for i in range(7):
            s.log("n", i)
    """)
    child.communicate(timeout=30)
    assert values(rx.events("spool_test")) == list(range(7))


def test_queue_overflow_spills_to_the_spool_not_dropped(make_receiver, env):
    rx = make_receiver()
    rx.outage(3600)
    s = Streamer(**settings(rx, env / "spool", max_queue=50))
    for i in range(2000):
        s.log("n", i)
    time.sleep(0.3)
    stats = s.stats()
    assert stats.dropped == 0 and stats.spooled == 2000
    rx.clear()
    s._sender.resume()
    assert s.flush(timeout=30)
    assert values(rx.events("spool_test")) == list(range(2000))
    quiet_close(s)


def test_full_spool_drops_oldest_and_reports(make_receiver, env):
    rx = make_receiver()
    rx.outage(3600)
    s = Streamer(**settings(rx, env / "spool", spool_max_bytes=1_000_000))  # (the least)
    for i in range(10_000):  # (some 2.4 MB as stored)
        s.log("padding", "x" * 200 + str(i))
        if i % 500 == 499:
            time.sleep(0.08)  # let the sender write a segment
    time.sleep(0.3)
    stats = s.stats()
    assert stats.dropped > 0
    assert 0 < stats.dropped < 10_000  # the oldest only
    assert any("spool is full" in line for line in s.messages())
    assert os.path.getsize(stats.spool_path) < 8 * 1024 * 1024
    quiet_close(s)


def test_two_processes_share_one_spool_without_duplicates(make_receiver, env):
    rx = make_receiver(faults=Faults(latency=0.02))
    opts = settings(rx, env / "spool", batch_size=10)
    code = """
        import sys
        from isstreamer_jupyter import Streamer
        s = Streamer(**{opts!r})
        for i in range(300):
            s.log("n", "{tag}-%d" % i)
        assert s.flush(timeout=60)
        s.close()
    """
    children = [run_child(code.format(opts=opts, tag=tag)) for tag in "ab"]
    for child in children:
        _, err = child.communicate(timeout=90)
        assert child.returncode == 0, err
    got = values(rx.events("spool_test"))
    assert len(got) == 600 and len(set(got)) == 600
    for tag in "ab":
        mine = [v for v in got if v.startswith(tag)]
        assert mine == [f"{tag}-{i}" for i in range(300)]


def test_fork_child_gets_its_own_sender_and_never_resends(make_receiver, env):
    rx = make_receiver()
    s = Streamer(**settings(rx, env / "spool", flush_interval=5))
    for i in range(5):
        s.log("parent", i)
    pid = os.fork()
    if pid == 0:  # the child: log its own, flush, leave without running the parent's atexit
        code = 1
        try:
            s.log("child", 99)
            code = 0 if s.flush(timeout=10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s.flush(timeout=10)
    got = [(e["key"], e["value"]) for e in rx.events("spool_test")]
    assert sorted(got) == sorted([("parent", i) for i in range(5)] + [("child", 99)])
    quiet_close(s)


def test_corrupt_spool_is_reported_and_the_streamer_goes_on(make_receiver, env, capsys):
    rx = make_receiver()
    spool = env / "spool"
    spool.mkdir()
    (spool / "spool.sqlite3").write_bytes(b"this is not a database" * 100)
    s = Streamer(**settings(rx, spool))
    with pytest.warns(UserWarning, match="spool .* cannot be used.*without a spool"):
        s.log("n", 1)
    assert s.flush(timeout=5)
    assert values(rx.events("spool_test")) == [1]
    assert s.stats().spool_path == ""
    quiet_close(s)


def test_unwritable_spool_folder_is_reported(make_receiver, env):
    rx = make_receiver()
    blocker = env / "not_a_folder"
    blocker.write_text("a file where the spool folder should be")
    s = Streamer(**settings(rx, blocker / "spool"))
    with pytest.warns(UserWarning, match="spool folder .* cannot be used"):
        s.log("n", 1)
    assert s.flush(timeout=5)
    quiet_close(s)


def test_spool_from_a_newer_version_is_refused_not_misread(make_receiver, env):
    rx = make_receiver()
    spool = env / "spool"
    spool.mkdir()
    db = sqlite3.connect(spool / "spool.sqlite3")
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    s = Streamer(**settings(rx, spool))
    with pytest.warns(UserWarning, match="written by a newer isstreamer_jupyter"):
        s.log("n", 1)
    quiet_close(s)
    db = sqlite3.connect(spool / "spool.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 99  # left untouched


def test_the_spool_never_holds_the_access_key(make_receiver, env):
    rx = make_receiver()
    rx.outage(3600)
    s = Streamer(**settings(rx, env / "spool"))
    s.log("n", 1)
    quiet_close(s, timeout=0.3)
    for path in (env / "spool").iterdir():
        assert KEY.encode() not in path.read_bytes()


def test_a_failing_spool_write_loses_nothing(make_receiver, env, monkeypatch):
    from isstreamer_jupyter import SpoolError
    from isstreamer_jupyter._spool import SqliteSpool

    rx = make_receiver()
    s = Streamer(**settings(rx, env / "spool"))

    def disk_full(self, segments):
        raise SpoolError("the spool failed: database or disk is full")

    monkeypatch.setattr(SqliteSpool, "put", disk_full)
    for i in range(20):
        s.log("n", i)
    with pytest.warns(UserWarning, match="going on without the spool"):
        assert s.flush(timeout=10)
        s.log("n", 20)
    assert values(rx.events("spool_test")) == list(range(20))
    assert s.stats().spool_path == ""
    quiet_close(s)


def test_a_damaged_segment_is_dropped_and_the_rest_delivered(make_receiver, env):
    rx = make_receiver()
    rx.outage(3600)
    opts = settings(rx, env / "spool")
    s = Streamer(**opts)
    for i in range(10):
        s.log("n", i)
    time.sleep(0.3)
    quiet_close(s, timeout=0.2)
    db = sqlite3.connect(env / "spool" / "spool.sqlite3")
    db.execute("UPDATE segment_events SET events=X'00ff00' WHERE id=(SELECT MIN(id) FROM "
               "segments)")
    db.commit()
    db.close()
    rx.clear()
    s = Streamer(**opts)
    s.log("n", 99)
    with pytest.warns(IsStreamerWarning, match=r"10 events were lost since the last flush \(10"):
        assert not s.flush(timeout=10)  # delivered, but the loss is reported
    assert values(rx.events("spool_test")) == [99]
    assert s.stats().dropped == 10 and "damaged" in "\n".join(s.messages())
    assert s.flush(timeout=1)  # (said once)
    quiet_close(s)


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_the_next_batch_is_taken_while_one_is_out_and_stays_held(env, kind):
    """take(after=...) continues a batch still unanswered (within its segment, then across
    segments of its bucket, never past another bucket's); ack(keep=...) keeps it held, so
    nothing else takes those events meanwhile."""
    from isstreamer_jupyter._spool import MemoryStore, Segment, SqliteSpool

    def store():
        if kind == "memory":
            return MemoryStore(10_000)
        return SqliteSpool(env / "spool", api_base="http://x/api", access_key=KEY)

    a = store()
    a.put([Segment("b1", "one", [("k", i, 1.0) for i in range(20)])])
    a.put([Segment("b1", "one", [("k", i, 1.0) for i in range(20, 25)]),
           Segment("b2", "two", [("k", i, 1.0) for i in range(100, 103)])])
    first = a.take(8)
    second = a.take(8, after=first)
    assert [e[1] for e in second.events] == list(range(8, 16))
    assert a.take(100, after=second, least=100) is None  # not enough for a full batch
    a.ack(first, keep=second)
    if kind == "sqlite":  # another sender on the same spool: b1 is held, b2 is free
        other = store()
        taken = other.take(8)
        assert taken.bucket_key == "b2"
        other.release(taken)
    third = a.take(8, after=second)  # the rest of the first segment, then the second one
    assert [e[1] for e in third.events] == list(range(16, 24))
    a.ack(second, keep=third)
    fourth = a.take(8, after=third)
    assert [e[1] for e in fourth.events] == [24]  # stops before b2's segment
    a.ack(third, keep=fourth)
    assert a.take(8, after=fourth) is None
    a.ack(fourth)
    assert a.pending() == 3
    rest = a.take(8)
    assert (rest.bucket_key, [e[1] for e in rest.events]) == ("b2", [100, 101, 102])
    a.ack(rest)
    assert a.pending() == 0


def test_a_spool_of_the_first_format_is_upgraded_and_delivered(make_receiver, env):
    """Format 1 kept each segment's events in its row; opening it moves them to their own
    table, and what it held is sent."""
    import marshal

    from isstreamer_jupyter._spool import fingerprint

    rx = make_receiver()
    opts = settings(rx, env / "spool")
    (env / "spool").mkdir()
    db = sqlite3.connect(env / "spool" / "spool.sqlite3")
    db.executescript(f"""
        CREATE TABLE segments(id INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT NOT NULL,
            bucket_key TEXT NOT NULL, bucket_name TEXT NOT NULL, events BLOB NOT NULL,
            count INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0,
            lease REAL NOT NULL DEFAULT 0, holder INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX segments_ns ON segments(ns, id);
        CREATE INDEX segments_leased ON segments(ns, bucket_key) WHERE lease > 0;
        CREATE TABLE denied(ns TEXT PRIMARY KEY, api_base TEXT NOT NULL, at REAL NOT NULL);
        CREATE TABLE meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('marshal_version', {marshal.version});
        PRAGMA user_version=1;
    """)
    ns = fingerprint(rx.api_base, KEY)
    now = time.time()
    for first in (0, 5):
        events = [("n", i, now) for i in range(first, first + 5)]
        db.execute("INSERT INTO segments(ns, bucket_key, bucket_name, events, count, done) "
                   "VALUES (?, 'spool_test', 'Spool', ?, 5, ?)",
                   (ns, marshal.dumps(events), 2 if first == 0 else 0))  # 0, 1 were sent
    db.execute("UPDATE sqlite_sequence SET seq=100")  # (later segments were sent and gone)
    db.commit()
    db.close()
    os.chmod(env / "spool", 0o700)  # (as that version's spool, but private: no note of it)
    os.chmod(env / "spool" / "spool.sqlite3", 0o600)
    from isstreamer_jupyter._spool import spool_status  # (it reads format 1 as it is)

    (waiting,) = spool_status(env / "spool").buckets
    assert (waiting.ns, waiting.api_base, waiting.bucket_key, waiting.events, waiting.oldest,
            waiting.newest) == (ns, "", "spool_test", 8, now, now)
    s = Streamer(**opts)
    assert s.stats().recovered == 8
    s.log("n", 10)
    assert s.flush(timeout=10)
    assert values(rx.events("spool_test")) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    quiet_close(s)
    db = sqlite3.connect(env / "spool" / "spool.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(*) FROM segment_events").fetchone()[0] == 0
    assert db.execute("SELECT seq FROM sqlite_sequence WHERE name='segments'").fetchone()[0] > 100
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")} >= {
        "segments_ns", "segments_leased"}


def test_a_put_waiting_while_the_key_is_replaced_writes_under_the_new_key(tmp_path, monkeypatch):
    """The sender thread puts events while the user replaces a refused key: the put that
    waited for rekey() writes them under the new key, not under the old one, where nothing
    would send them (and nothing adopts them: rekey() clears the old key's refusal)."""
    import threading

    import isstreamer_jupyter._spool as spool_module
    from isstreamer_jupyter._spool import Segment, SqliteSpool

    api = "http://127.0.0.1:9/api"
    spool = SqliteSpool(tmp_path, api_base=api, access_key=KEY)
    spool.put([Segment("b", "B", [("k", 1, 1.7e9)])])
    spool.mark_denied()
    encoding, go_on = threading.Event(), threading.Event()
    real = spool_module.marshal

    class SlowMarshal:  # put() encodes before it takes the lock: hold it there
        version = real.version
        loads = staticmethod(real.loads)

        @staticmethod
        def dumps(obj):
            encoding.set()
            go_on.wait(5)
            return real.dumps(obj)

    monkeypatch.setattr(spool_module, "marshal", SlowMarshal)
    putter = threading.Thread(target=spool.put,
                              args=([Segment("b", "B", [("k", 2, 1.7e9), ("k", 3, 1.7e9)])],))
    putter.start()
    assert encoding.wait(5)
    spool.rekey(api, "ist_the_new_key_0123456789")
    go_on.set()
    putter.join(5)
    monkeypatch.setattr(spool_module, "marshal", real)
    assert spool.pending() == 3
    spool.close()


def test_another_keys_backlog_does_not_make_this_key_drop_its_events(tmp_path):
    """Two access keys share the spool file; the other's backlog alone is past this key's
    max_bytes. This key keeps its events (its own bound counts its own events), and past
    its bound it drops only its oldest."""
    from isstreamer_jupyter._spool import Segment, SqliteSpool

    api = "http://127.0.0.1:9/api"

    def segment(tag, n=2000):
        return [Segment("b", "B", [("k", f"{'y' * 200}{tag}-{j}", 1.7e9 + j) for j in range(n)])]

    other = SqliteSpool(tmp_path, api_base=api, access_key="ist_another_key_0123456789")
    for i in range(10):  # about 4 MB waiting under the other key
        other.put(segment(f"o{i}"))
    other.close()
    mine = SqliteSpool(tmp_path, api_base=api, access_key=KEY, max_bytes=2 << 20)
    dropped = sum(mine.put(segment(f"m{i}")) for i in range(4))  # about 1.6 MB: under
    assert dropped == 0 and mine.pending() == 8000
    dropped = sum(mine.put(segment(f"n{i}")) for i in range(8))  # past 2 MiB: the oldest go
    kept = mine.pending()
    assert dropped > 0 and kept == 12 * 2000 - dropped and kept >= 4000  # its bound's worth
    batch = mine.take(10**6)
    assert batch is not None and len(batch.events) == kept
    assert batch.events[-1][1].endswith("n7-1999")  # the newest kept, the oldest dropped
    assert not any(e[1].endswith("m0-0") for e in batch.events)
    mine.release(batch)
    mine.close()
    again = SqliteSpool(tmp_path, api_base=api, access_key="ist_another_key_0123456789")
    assert again.pending() == 10 * 2000  # never dropped by this key's trimming
    again.close()


def test_a_closed_spool_fails_as_a_spool_error(tmp_path):
    """A write racing the sender's close (log() spilling past max_queue in another thread)
    meets the spool's own error, which callers handle, not sqlite3's."""
    from isstreamer_jupyter._errors import SpoolError
    from isstreamer_jupyter._spool import Segment, SqliteSpool

    spool = SqliteSpool(tmp_path, api_base="http://127.0.0.1:9/api", access_key=KEY)
    spool.close()
    with pytest.raises(SpoolError, match="failed"):
        spool.put([Segment("b", "B", [("k", 1, 1.7e9)])])


@pytest.mark.parametrize("fails", ["put", "put after the marker", "last_id"])
def test_a_drain_failing_midway_puts_back_what_it_took(make_receiver, env, monkeypatch, fails):
    """The sender takes a whole chunk from the queue (events, a flush marker, more events)
    and fails before storing all of it (a bug, an I/O error): what was not stored goes back
    to the head of the queue, in order, and is delivered at the next try; both flushes
    resolve (before, the chunk was lost: the events silently, the flush ran out its time)."""
    from isstreamer_jupyter._spool import SqliteSpool

    rx = make_receiver()
    s = Streamer(**settings(rx, env / "spool", spool_interval=0.5, flush_interval=0.5))
    assert s.flush(timeout=10)  # the bucket exists; the sender waits 0.5 s between rounds
    name = "last_id" if fails == "last_id" else "put"
    real = getattr(SqliteSpool, name)
    calls = []

    def fails_once(self, *args, **kwargs):
        calls.append(name)
        if len(calls) == (2 if fails == "put after the marker" else 1):
            raise RuntimeError("disk I/O error")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SqliteSpool, name, fails_once)
    for i in range(5):
        s.log("n", i)
    first = Marker()
    s._queue.append(first)  # (what flush() queues: drained with the events around it)
    for i in range(5, 10):
        s.log("n", i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the internal error is said)
        assert s.flush(timeout=10)
    assert first.done.is_set() and first.error is None
    assert values(rx.events("spool_test")) == list(range(10))
    assert s.stats().dropped == 0 and len(calls) > 1
    quiet_close(s)


def test_a_spool_another_connection_holds_neither_blocks_log_nor_is_left(
        make_receiver, env, monkeypatch, caplog):
    """Another process holds the spool's write lock (BEGIN IMMEDIATE) while log() spills past
    max_queue: log() does not wait for it (the lock is let go only once logging is over, so a
    log() waiting for it would wait out SQLite's timeout and fail), the events stay queued;
    the sender meets 'database is locked' as a moment's business and tries again, keeping the
    spool; once it is free everything is delivered, in order, nothing dropped."""
    from isstreamer_jupyter import _spool

    monkeypatch.setattr(_spool, "BUSY_TIMEOUT", 0.1, raising=False)  # (the sender meets it)
    rx = make_receiver()
    s = Streamer(**settings(rx, env / "spool", max_queue=100))
    assert s.flush(timeout=10)  # the bucket exists
    other = sqlite3.connect(env / "spool" / "spool.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with caplog.at_level(logging.INFO, "isstreamer_jupyter"):
        for i in range(190):  # (under 2 x max_queue: queued, none dropped)
            s.log("n", i)
        deadline = time.monotonic() + 10
        while "database is locked; trying again" not in caplog.text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    other.execute("COMMIT")
    other.close()
    assert s.flush(timeout=10)
    assert values(rx.events("spool_test")) == list(range(190))
    stats = s.stats()
    assert stats.spool_path and stats.dropped == 0
    assert "without the spool" not in "\n".join(s.messages())
    quiet_close(s)


def test_a_locked_spool_is_tried_again_not_left(make_receiver, env, monkeypatch):
    """SQLITE_BUSY while the sender takes a batch (a transaction of another process outlasting
    SQLite's timeout) is tried again: the spool is kept and its events go out (before, any
    spool error made the sender leave it for good, then drop events past max_queue)."""
    from isstreamer_jupyter._spool import SqliteSpool

    rx = make_receiver()
    rx.outage(3600)
    s = Streamer(**settings(rx, env / "spool"))
    for i in range(10):
        s.log("n", i)
    real = SqliteSpool._free_dead_leases  # (runs inside take's transaction)
    locked = []

    def locked_once(self, db, now):
        if not locked:
            locked.append(now)
            raise sqlite3.OperationalError("database is locked")
        return real(self, db, now)

    monkeypatch.setattr(SqliteSpool, "_free_dead_leases", locked_once)
    rx.clear()
    s._sender.resume()
    assert s.flush(timeout=10)
    assert locked and values(rx.events("spool_test")) == list(range(10))
    assert s.stats().spool_path
    quiet_close(s)


def test_log_outpacing_the_spool_keeps_the_queue_bounded(make_receiver, env, monkeypatch):
    """The service down, log() in a tight loop, each spool write slow (a busy disk: the
    sender holds its drain lock most of the time): the in-memory queue stays near max_queue
    (2x at most: there log() waits its turn to spill, the sender giving way after its
    segment), and everything is on disk, nothing dropped. Before, log() spilled only when it
    found the lock free at that instant, which it hardly ever did: the queue grew without
    bound (20x max_queue in the reviewer's run)."""
    from isstreamer_jupyter._spool import SEGMENT_EVENTS, SqliteSpool

    real = SqliteSpool.put

    def slow_put(self, segments, **kwargs):
        time.sleep(0.004)  # (off the GIL, as a write to a slow disk)
        return real(self, segments, **kwargs)

    monkeypatch.setattr(SqliteSpool, "put", slow_put)
    rx = make_receiver()
    rx.outage(3600)
    s = Streamer(**settings(rx, env / "spool", max_queue=5000))
    peak = 0
    for i in range(150_000):
        s.log("n", i)
        peak = max(peak, len(s._queue))
    assert peak <= 2 * 5000 + SEGMENT_EVENTS  # (before: about 100,000)
    while s._queue:  # (a drain gives way between segments when log() asked it to)
        s._sender.drain()
    stats = s.stats()
    assert stats.dropped == 0 and stats.spooled == 150_000
    quiet_close(s, timeout=0.2)


def test_log_drops_the_oldest_past_twice_max_queue_while_the_spool_is_held(make_receiver, env):
    """Another process holds the spool's write lock while log() goes on: past twice
    max_queue log() drops the oldest events (it cannot store them, and memory is bounded),
    counts them and says so: flush() returns False, once; the newest are delivered when the
    spool is free, in order."""
    from isstreamer_jupyter._spool import SEGMENT_EVENTS

    rx = make_receiver()
    s = Streamer(**settings(rx, env / "spool", max_queue=1000))
    assert s.flush(timeout=10)  # the bucket exists
    other = sqlite3.connect(env / "spool" / "spool.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    peak = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(10_000):
            s.log("n", i)
            peak = max(peak, len(s._queue))
    other.execute("COMMIT")
    other.close()
    assert peak <= 2 * 1000 + SEGMENT_EVENTS  # (a loaded machine may let a few more in)
    with pytest.warns(IsStreamerWarning, match=r"events were lost since the last flush"):
        assert not s.flush(timeout=10)
    got = values(rx.events("spool_test"))
    dropped = s.stats().dropped
    assert dropped > 0 and len(got) + dropped == 10_000
    assert got == list(range(dropped, 10_000))  # the oldest dropped, the rest in order
    assert any("is held by another process" in m for m in s.messages())
    assert s.flush(timeout=1)  # (said once)
    quiet_close(s)


def test_events_left_in_a_failed_spool_are_counted_and_said_not_reported_delivered(
        make_receiver, env, monkeypatch):
    """The spool fails (disk full) while 20 events wait in it, and the sender goes on in
    memory: those 20 are still counted in stats() and flush()/close() say where they wait and
    return False (before: True, as if delivered, and stats() forgot them); the next Streamer
    with the key sends them."""
    from isstreamer_jupyter import SpoolError
    from isstreamer_jupyter._spool import SqliteSpool

    rx = make_receiver()
    rx.outage(3600)
    opts = settings(rx, env / "spool")
    s = Streamer(**opts)
    for i in range(20):
        s.log("n", i)
    s._sender.drain()  # on disk
    real = SqliteSpool.put

    def disk_full(self, segments, **kwargs):
        raise SpoolError("the spool failed: database or disk is full")

    monkeypatch.setattr(SqliteSpool, "put", disk_full)
    s.log("n", 20)
    s._sender.drain()  # the sender leaves the spool
    monkeypatch.setattr(SqliteSpool, "put", real)
    rx.clear()
    s._sender.resume()
    with pytest.warns(IsStreamerWarning, match=r"20 events not delivered: they were in the "
                                               r"spool when it failed; they wait in the spool "
                                               r".*spool\.sqlite3"):
        assert not s.flush(timeout=10)
    assert values(rx.events("spool_test")) == [20]
    assert s.stats().queued == 20
    with pytest.warns(IsStreamerWarning, match="20 events not delivered: they were in the spool"):
        assert not s.close(timeout=1)
    assert any("20 events not delivered: they were in the spool" in m for m in s.messages())
    again = Streamer(**opts)
    assert again.flush(timeout=10)
    assert sorted(values(rx.events("spool_test"))) == list(range(21))
    quiet_close(again)


def test_a_lease_left_by_an_earlier_run_with_this_pid_is_freed(make_receiver, env):
    """A kernel killed mid-request leaves its batch leased; its restart often gets the same
    PID (in a container): the lease was taken for its own and held until it expired."""
    from isstreamer_jupyter._spool import Segment, SqliteSpool

    rx = make_receiver()
    opts = settings(rx, env / "spool", timeout=30)  # (a lease lasts timeout + 30 s)
    earlier = SqliteSpool(env / "spool", api_base=rx.api_base, access_key=KEY)
    earlier.put([Segment("spool_test", "Spool", [("n", i, time.time()) for i in range(5)])])
    earlier.close()
    db = sqlite3.connect(env / "spool" / "spool.sqlite3")
    db.execute("UPDATE segments SET lease=?, holder=?", (time.time() + 3600, os.getpid()))
    db.commit()
    db.close()
    s = Streamer(**opts)
    assert s.flush(timeout=10)
    assert values(rx.events("spool_test")) == list(range(5))
    quiet_close(s)


def test_threads_logging_at_once_lose_nothing_to_the_senders_own_moments(make_receiver, env):
    """Past twice max_queue log() spills itself; the spool's in-process lock, held a moment
    by the sender's take or ack, made it drop events, said as held by another process (a
    reviewer: 10,000 of 900,000 from three threads)."""
    rx = make_receiver()
    s = Streamer(**settings(rx, env / "spool", max_queue=2000, batch_size=500))

    def log_many(first):
        for i in range(first, first + 80_000):
            s.log("n", i)

    threads = [threading.Thread(target=log_many, args=(k * 80_000,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.stats().dropped == 0
    assert s.flush(timeout=120)
    assert len(rx.events("spool_test")) == 240_000
    quiet_close(s)


def _open_at_once(folder, barrier, said):  # (a process of the next test)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        barrier.wait()
        s = Streamer(bucket_name="r", access_key=KEY, api_base="http://127.0.0.1:9/api",
                     spool_dir=folder)
        s.log("k", 1)
        said.put([str(w.message) for w in caught if "spool" in str(w.message)])
        s.close(timeout=0.1)


def test_processes_opening_a_new_spool_at_once_all_keep_it(tmp_path):
    """One of several processes opening a spool that did not exist yet got 'database is
    locked' while another set it up, and went on without a spool for good: a trial lost 3,300
    events that way, said as 'will be sent' (3 rounds of 20 with four processes)."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    for round_ in range(20):
        barrier, said = spawn.Barrier(4), spawn.Queue()
        folder = tmp_path / f"spool{round_}"
        procs = [spawn.Process(target=_open_at_once, args=(folder, barrier, said))
                 for _ in range(4)]
        for p in procs:
            p.start()
        messages = [m for _ in procs for m in said.get(timeout=60)]
        for p in procs:
            p.join(30)
        assert not [m for m in messages if "cannot be used" in m], messages


@pytest.mark.parametrize("spool_exists", [True, False])
def test_a_spool_another_process_holds_does_not_block_the_constructor(make_receiver, env,
                                                                      spool_exists):
    """Another process (an SQLite client) holds the spool's write lock: Streamer() took 40 s
    (SQLite's 10 s wait, tried again and again). It waits 2 s at most, then goes on in memory
    saying the spool is held by another process and what to do; once the lock is let go, a
    new Streamer uses the spool. (The holder lets go after 8 s, so that the test never lasts
    as long as the old wait.)"""
    rx = make_receiver()
    spool = env / "spool"
    if spool_exists:
        quiet_close(Streamer(**settings(rx, spool)))
    else:
        spool.mkdir()
    other = sqlite3.connect(spool / "spool.sqlite3", isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    let_go = threading.Timer(8.0, lambda: (other.execute("COMMIT"), other.close()))
    let_go.start()
    try:
        started = time.monotonic()
        s = Streamer(**settings(rx, spool))
        assert time.monotonic() - started < 5
        with pytest.warns(IsStreamerWarning, match="held by another process .* end that "
                                                   "transaction .* without a spool"):
            s.log("n", 1)
        assert s.stats().spool_path == ""
        assert s.flush(timeout=5)
        assert values(rx.events("spool_test")) == [1]
        quiet_close(s)
    finally:
        let_go.join()
    s = Streamer(**settings(rx, spool))
    assert s.stats().spool_path
    quiet_close(s)


# ---------------------------------------------------------------- a private spool
def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def spool_files(folder) -> list:
    return [folder / name for name in ("spool.sqlite3", "spool.sqlite3-wal", "spool.sqlite3-shm")]


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_spool_is_its_owners_alone_whatever_the_umask(tmp_path):
    """Made under umask 000 (which would leave it 777 and 666): the folder is 700 and the
    database and its WAL files 600; nothing needs saying about it."""
    from isstreamer_jupyter._spool import Segment, SqliteSpool

    folder = tmp_path / "new" / "spool"
    with umask(0):
        spool = SqliteSpool(folder, api_base="http://127.0.0.1:9/api", access_key=KEY)
        spool.put([Segment("b", "B", [("n", 1, time.time())])])
        spool.checkpoint()
    try:
        assert mode(folder) == 0o700
        assert {path.name: mode(path) for path in spool_files(folder)} == {
            "spool.sqlite3": 0o600, "spool.sqlite3-wal": 0o600, "spool.sqlite3-shm": 0o600}
        assert spool.warning == ""
    finally:
        spool.close()


def as_nobody(*command: str) -> subprocess.CompletedProcess:
    """`command` run as the user nobody (we are root)."""
    if shutil.which("setpriv"):
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    else:
        argv = ["su", "-s", "/bin/sh", "nobody", "-c", shlex.join(command)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@pytest.fixture
def shared_folder():
    """A folder every user may enter and list (pytest's own are its owner's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="spool-shared-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_another_user_can_read_nothing_of_the_spool(shared_folder):
    from isstreamer_jupyter._spool import Segment, SqliteSpool

    assert as_nobody("ls", str(shared_folder)).returncode == 0  # (what is denied is the spool)
    folder = shared_folder / "spool"
    with umask(0o022):  # (the usual one: files 644 and folders 755 unless made otherwise)
        spool = SqliteSpool(folder, api_base="http://127.0.0.1:9/api", access_key=KEY)
        spool.put([Segment("b", "B", [("secret_reading", 42, time.time())])])
    try:
        listed = as_nobody("ls", str(folder))
        assert listed.returncode != 0 and "Permission denied" in listed.stderr
        for path in spool_files(folder):
            assert path.exists()
            read = as_nobody("cat", str(path))
            assert read.returncode != 0 and "Permission denied" in read.stderr
        # The files are private on their own: with the folder opened up, still unreadable.
        os.chmod(folder, 0o755)
        assert as_nobody("ls", str(folder)).returncode == 0
        for path in spool_files(folder):
            read = as_nobody("cat", str(path))
            assert read.returncode != 0 and "Permission denied" in read.stderr, path
        opened = as_nobody(sys.executable, "-c", "import sqlite3, sys; sqlite3.connect("
                           "sys.argv[1]).execute('SELECT * FROM segments')", str(spool_files(
                               folder)[0]))
        assert opened.returncode != 0 and "unable to open database file" in opened.stderr
    finally:
        spool.close()


def test_a_spool_open_to_others_is_said_once_with_the_chmod_that_fixes_it(tmp_path):
    """An earlier version left the spool 755 and 644: opening it says so once, with the
    exact command; run, that command makes it private."""
    from isstreamer_jupyter._spool import SqliteSpool, modes_problem, spool_status

    folder = tmp_path / "spool dir"  # (a space: the command quotes the path)
    SqliteSpool(folder, api_base="http://127.0.0.1:9/api", access_key=KEY).close()
    os.chmod(folder, 0o755)
    os.chmod(folder / "spool.sqlite3", 0o644)
    first = SqliteSpool(folder, api_base="http://127.0.0.1:9/api", access_key=KEY)
    again = SqliteSpool(folder, api_base="http://127.0.0.1:9/api", access_key=KEY)
    try:
        assert first.warning.startswith(f"the spool {folder / 'spool.sqlite3'} is open to other "
                                        f"users (its folder is 755, spool.sqlite3 is 644")
        command = first.warning.split("Fix: ", 1)[1]
        assert command == (f"chmod 700 {shlex.quote(str(folder))} && "
                           f"chmod 600 {shlex.quote(str(folder))}/spool.sqlite3*")
        assert again.warning == ""  # (said once)
        assert KEY not in first.warning
        subprocess.run(["sh", "-c", command], check=True)
    finally:
        first.close()
        again.close()
    assert mode(folder) == 0o700
    assert all(mode(path) == 0o600 for path in spool_files(folder) if path.exists())
    assert modes_problem(folder) == "" and spool_status(folder).warning == ""


# ---------------------------------------------------------------- who sends, what waits
def test_an_open_spool_is_in_the_senders_table_until_it_closes(tmp_path):
    from isstreamer_jupyter._spool import SqliteSpool, fingerprint, spool_status

    spool = SqliteSpool(tmp_path, api_base="http://127.0.0.1:9/api", access_key=KEY)
    (sender,) = spool_status(tmp_path).senders
    assert (sender.ns, sender.pid, sender.api_base, sender.live) == (
        fingerprint("http://127.0.0.1:9/api", KEY), os.getpid(), "http://127.0.0.1:9/api", True)
    assert sender.account == sender.ns[:8]
    assert sender.started <= sender.heartbeat
    spool.rekey("http://127.0.0.1:9/api", "ist_the_fixed_key_0123456789")
    assert [s.ns for s in spool_status(tmp_path).senders] == [
        fingerprint("http://127.0.0.1:9/api", "ist_the_fixed_key_0123456789")]
    spool.close()
    assert spool_status(tmp_path).senders == ()


def test_the_heartbeat_moves_on_and_puts_back_a_row_taken_away(tmp_path):
    from isstreamer_jupyter._spool import SqliteSpool, spool_status

    spool = SqliteSpool(tmp_path, api_base="http://127.0.0.1:9/api", access_key=KEY)
    try:
        (before,) = spool_status(tmp_path).senders
        time.sleep(0.01)  # (the clock moves on)
        spool.heartbeat()
        (after,) = spool_status(tmp_path).senders
        assert after.started == before.started and after.heartbeat > before.heartbeat
        db = sqlite3.connect(tmp_path / "spool.sqlite3")
        db.execute("DELETE FROM senders")  # (another container took it for a dead one's)
        db.commit()
        db.close()
        spool.heartbeat()
        assert [s.pid for s in spool_status(tmp_path).senders] == [os.getpid()]
    finally:
        spool.close()
    assert spool_status(tmp_path).senders == ()


def test_a_killed_process_s_row_is_stale_and_the_next_open_removes_it(tmp_path):
    from isstreamer_jupyter._spool import SqliteSpool, spool_status

    child = run_child(f"""
        import time
        from isstreamer_jupyter._spool import SqliteSpool, Segment
        spool = SqliteSpool({str(tmp_path)!r}, api_base="http://127.0.0.1:9/api",
                            access_key={KEY!r})
        spool.put([Segment("b", "B", [("n", i, 1.7e9 + i) for i in range(3)])])
        print("open", flush=True)
        time.sleep(600)
    """)
    try:
        assert child.stdout.readline().strip() == "open"
        (bucket,) = spool_status(tmp_path).buckets
        assert bucket.senders == (child.pid,)
    finally:
        child.kill()
        child.wait(timeout=10)
    status = spool_status(tmp_path)
    assert [(s.pid, s.live) for s in status.senders] == [(child.pid, False)]
    assert status.buckets[0].senders == ()
    SqliteSpool(tmp_path, api_base="http://127.0.0.1:9/api", access_key="ist_other_key_42").close()
    assert spool_status(tmp_path).senders == ()
    assert spool_status(tmp_path).events == 3  # (what it left stays)


def test_a_forked_child_has_a_row_of_its_own(tmp_path):
    from isstreamer_jupyter._spool import SqliteSpool, spool_status

    spool = SqliteSpool(tmp_path, api_base="http://127.0.0.1:9/api", access_key=KEY)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            spool.reopen()
            live = sorted(s.pid for s in spool_status(tmp_path).senders if s.live)
            os.write(write, repr(live).encode())
            spool.close()
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        seen = fh.read()
    os.waitpid(pid, 0)
    try:
        assert seen == repr(sorted([os.getpid(), pid]))
        assert [s.pid for s in spool_status(tmp_path).senders] == [os.getpid()]
    finally:
        spool.close()


def test_spool_status_counts_what_waits_by_account_and_bucket(tmp_path):
    """Events taken and acknowledged are not counted; a batch under way is; the oldest and
    newest epochs are of what waits. No key, only fingerprints."""
    from isstreamer_jupyter._spool import Segment, SqliteSpool, fingerprint, spool_status

    api = "http://127.0.0.1:9/api"
    mine = SqliteSpool(tmp_path, api_base=api, access_key=KEY)
    other = SqliteSpool(tmp_path, api_base="http://other:1/api", access_key="ist_other_key_42")
    try:
        mine.put([Segment("a", "A", [("n", i, 1_700_000_000.0 + i) for i in range(10)]),
                  Segment("b", "Bee", [("n", 0, 1_600_000_000.0)])])
        other.put([Segment("a", "A", [("n", 0, 1_650_000_000.0)])])
        batch = mine.take(4)
        mine.ack(batch)  # (0..3 delivered)
        mine.take(2)  # (4, 5 under way: still waiting)
        status = spool_status(tmp_path)
    finally:
        mine.close()
        other.close()
    assert status.exists and status.path == str(tmp_path / "spool.sqlite3")
    got = [(b.ns, b.api_base, b.bucket_key, b.bucket_name, b.events, b.oldest, b.newest)
           for b in status.buckets]
    assert got == [
        (fingerprint(api, KEY), api, "a", "A", 6, 1_700_000_004.0, 1_700_000_009.0),
        (fingerprint(api, KEY), api, "b", "Bee", 1, 1_600_000_000.0, 1_600_000_000.0),
        (fingerprint("http://other:1/api", "ist_other_key_42"), "http://other:1/api", "a", "A",
         1, 1_650_000_000.0, 1_650_000_000.0)]
    assert all(b.bytes > 0 and b.senders == (os.getpid(),) and not b.refused
               for b in status.buckets)
    assert status.events == 8
    assert KEY not in repr(status)


def test_spool_status_creates_nothing_where_there_is_no_spool(tmp_path):
    from isstreamer_jupyter._spool import Dropped, drop_spooled, spool_status

    status = spool_status(tmp_path / "none")
    assert (status.exists, status.buckets, status.events) == (False, (), 0)
    assert drop_spooled(tmp_path / "none") == Dropped(0, 0, ())
    assert not (tmp_path / "none").exists()


def test_spool_status_refuses_a_newer_format(tmp_path):
    from isstreamer_jupyter._errors import SpoolError
    from isstreamer_jupyter._spool import spool_status

    db = sqlite3.connect(tmp_path / "spool.sqlite3")
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(SpoolError, match=r"written by a newer isstreamer_jupyter .* upgrade"):
        spool_status(tmp_path)


def test_drop_spooled_leaves_the_batch_a_live_sender_holds(tmp_path):
    """The batch this process is sending stays (its answer may be on the way); the rest of
    the account's events go, and another account's stay. A dead process's lease is no hold."""
    from isstreamer_jupyter._spool import (
        Segment,
        SqliteSpool,
        drop_spooled,
        fingerprint,
        spool_status,
    )

    api = "http://127.0.0.1:9/api"
    mine = SqliteSpool(tmp_path, api_base=api, access_key=KEY)
    other = SqliteSpool(tmp_path, api_base=api, access_key="ist_other_key_42")
    try:
        mine.put([Segment("a", "A", [("n", i, 1.7e9) for i in range(5)]),
                  Segment("b", "B", [("n", i, 1.7e9) for i in range(3)])])
        other.put([Segment("a", "A", [("n", 0, 1.7e9)])])
        mine.take(5)  # (bucket a's five, under way)
        done = drop_spooled(tmp_path, namespaces=[fingerprint(api, KEY)])
        assert (done.events, done.held, done.holders) == (3, 5, (os.getpid(),))
        assert [(b.bucket_key, b.events) for b in spool_status(tmp_path).buckets] == [
            ("a", 5), ("a", 1)]
        db = sqlite3.connect(tmp_path / "spool.sqlite3")  # (its sender was killed)
        db.execute("UPDATE segments SET holder=? WHERE lease>0", (dead_pid(),))
        db.commit()
        db.close()
        done = drop_spooled(tmp_path, namespaces=[fingerprint(api, KEY)], bucket_key="a")
        assert (done.events, done.held) == (5, 0)
        assert [(b.ns, b.events) for b in spool_status(tmp_path).buckets] == [
            (fingerprint(api, "ist_other_key_42"), 1)]
        assert drop_spooled(tmp_path).events == 1  # (every account's)
        assert spool_status(tmp_path).events == 0
    finally:
        mine.close()
        other.close()


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
