"""Offline recording with no account, and uploading recordings later (ours and ISStreamer's)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from isstreamer_jupyter import ConfigError, State, Streamer
from isstreamer_jupyter._offline import _head, upload
from isstreamer_jupyter._spool import fingerprint
from isstreamer_jupyter.receiver import Faults

KEY = "ist_offline_test_secret_key_777"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("IS_ACCESS_KEY", "IS_API_ACCESS_KEY", "IS_OFFLINE", "IS_API_BASE", "IS_MAX_RPS",
                 "IS_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_no_access_key_records_locally_and_says_so_once(env, capsys):
    s = Streamer(bucket_name="Bench", offline_file="run1")
    for i in range(3):
        s.log("t", i)
    assert s.Offline and s.stats().state is State.OFFLINE
    assert "no access key" in s.stats().reason
    assert s.close()
    out = capsys.readouterr().out
    assert out.count("recording locally to run1.csv") == 1
    assert sum("recording locally to run1.csv" in m for m in s.messages()) == 1  # (the panel's)
    lines = (env / "run1.csv").read_text().splitlines()
    assert lines[0].startswith("# bucket: Bench_")
    assert [line.split(",")[1:] for line in lines[1:]] == [["t", "0"], ["t", "1"], ["t", "2"]]


def test_recordings_are_appended_never_truncated(env):
    for run in range(2):
        with Streamer(bucket_name="B", offline=True, offline_file="rec.csv") as s:
            s.log("run", run)
    rows = [r for r in (env / "rec.csv").read_text().splitlines() if not r.startswith("#")]
    assert [r.split(",")[2] for r in rows] == ["0", "1"]


def test_offline_buffer_size_reads_what_was_asked_and_rows_go_out_in_big_appends(env,
                                                                                 monkeypatch):
    """Recording offline appends at least 500 rows at a time, but BufferSize said 500 too,
    whatever was passed: it reads what was asked, and a later assignment is kept."""
    from isstreamer_jupyter._transport import CsvTransport

    appends = []
    real = CsvTransport.post_events
    monkeypatch.setattr(CsvTransport, "post_events",
                        lambda self, bucket, events, *a, **k: appends.append(len(events))
                        or real(self, bucket, events, *a, **k))
    for use_async in (True, False):
        s = Streamer(bucket_name="B", offline=True, offline_file="big", buffer_size=20,
                     use_async=use_async)
        assert s.BufferSize == 20
        s.BufferSize = 30
        assert s.BufferSize == 30
        appends.clear()
        for i in range(1200):
            s.log("x", i)
        assert s.close()
        assert sum(appends) == 1200 and max(appends) >= 500, appends


def test_an_offline_file_that_cannot_be_written_is_refused_at_once_naming_the_fix(
        env, monkeypatch):
    (env / "adir").mkdir()
    (env / "bdir.csv").mkdir()
    for name, words in (
            ("nodir/rec.csv", "the folder nodir does not exist; expected a file in a folder "
                              "that does"),
            ("adir", "adir is a folder; expected a file name, such as adir/isstreamer_out.csv"),
            ("bdir", "bdir.csv is a folder; expected a file name")):
        with pytest.raises(ConfigError, match=re.escape(
                f"offline_file = '{name}' from keyword argument: {words}") + ".*Fix: change it, "
                "or leave it out for the default"):
            Streamer(bucket_name="B", offline=True, offline_file=name)
    monkeypatch.setenv("IS_OFFLINE_FILE", "nodir/rec")  # (its source is named, and its fix)
    with pytest.raises(ConfigError, match=r"'nodir/rec' from environment variable "
                                          r"IS_OFFLINE_FILE: the folder nodir .*Fix: change "
                                          r"IS_OFFLINE_FILE, or unset it"):
        Streamer(bucket_name="B", offline=True)
    assert not (env / "nodir").exists() and not (env / "adir.csv").exists()


def test_an_offline_file_that_stops_being_writable_keeps_the_events_and_says_why(env):
    (env / "out").mkdir()
    s = Streamer(bucket_name="B", offline=True, offline_file="out/rec.csv", flush_timeout=1)
    (env / "out").rmdir()  # the folder goes away: nothing can be written now
    s.log("t", 1)
    with pytest.warns(UserWarning, match="cannot write the offline file out/rec.csv") as said:
        assert not s.flush()
    assert "they stay queued and will be written" in str(said[0].message)
    stats = s.stats()
    assert stats.state is State.BACKING_OFF and stats.queued == 1 and stats.sent == 0
    assert "No such file or directory" in stats.reason and "internal error" not in stats.reason
    assert "give offline_file (IS_OFFLINE_FILE) a file in a writable folder" in stats.remedy
    (env / "out").mkdir()
    assert s.close(timeout=30)  # written once it can be: nothing lost
    assert (env / "out" / "rec.csv").read_text().splitlines()[1].endswith(",t,1")
    assert s.stats().sent == 1


def test_a_write_that_fails_part_way_leaves_no_part_and_is_written_once_later(env,
                                                                             monkeypatch):
    """The disk filled up mid-batch: the part written stayed, and the batch, kept and written
    again, was there once and a half (a row cut short joined to the next '# bucket:' line)."""
    import errno

    from isstreamer_jupyter import _transport

    real, failed = os.write, []

    def full_once(fd, data):
        if not failed:  # (half of it goes down, then the disk is full)
            failed.append(real(fd, bytes(data[:len(data) // 2])))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(_transport.os, "write", full_once)
    s = Streamer(bucket_name="B", offline=True, offline_file="rec.csv", flush_timeout=30)
    for i in range(3):
        s.log("t", i)
    assert s.close()
    assert failed and "No space left on device" in s.stats().last_error
    lines = (env / "rec.csv").read_text().splitlines()
    assert [line.split(",")[1:] for line in lines[1:]] == [["t", "0"], ["t", "1"], ["t", "2"]]
    assert len(lines) == 4 and lines[0].startswith("# bucket: B_")


def test_debug_level_3_says_what_was_written_where_not_http(env):
    """Offline, debug_level 3 said 'HTTP - accepted' of each append."""
    with Streamer(bucket_name="B", offline=True, offline_file="rec.csv", debug_level=3) as s:
        s.log("t", 1)
    said = [m for m in s.messages(logging.DEBUG) if "to bucket" in m]
    assert len(said) == 1 and re.fullmatch(r"\S+ DEBUG 1 event to bucket B_\w+: done after "
                                           r"[0-9.]+ ms: appended to rec\.csv", said[0]), said
    assert not any("HTTP" in m for m in s.messages(logging.DEBUG))


def write(path, text):
    path.write_text(text)
    return path


def test_upload_our_format_to_the_recorded_buckets(env, make_receiver):
    rx = make_receiver()
    with Streamer(bucket_name="First", offline=True, offline_file="ours.csv") as s:
        s.log("a", 1)
        s.log("b", "text")
        s.set_bucket("Second")
        s.log("c", 2.5)
        s.log("d", True)
    summary = upload(env / "ours.csv", access_key=KEY, api_base=rx.api_base,
                     max_requests_per_second=0, progress=False)
    assert summary.ok and summary.sent == 4 and not summary.bad_rows
    first, second = s.stats().buckets[0][1], s.stats().buckets[1][1]
    assert rx.buckets[first] == "First" and rx.buckets[second] == "Second"
    assert [(e["key"], e["value"]) for e in rx.events(first)] == [("a", 1), ("b", "text")]
    assert [(e["key"], e["value"]) for e in rx.events(second)] == [("c", 2.5), ("d", True)]


def test_upload_isstreamer_format_keeps_timestamps_and_reports_bad_rows(env, make_receiver):
    rx = make_receiver()
    recording = write(env / "isstreamer_out.csv.csv", (
        "1795000000.25,temperature,21.5\n"
        "1795000001.5,status,warming up\n"
        "not-a-time,temperature,3\n"
        "1795000002,only_two_columns\n"
        "1795000003,temperature,nan\n"
        "1795000004,temperature,22\n"))
    summary = upload(recording, bucket_name="Old run", access_key=KEY, api_base=rx.api_base,
                     max_requests_per_second=0, progress=False)
    assert summary.sent == 4
    assert [n for n, _ in summary.bad_rows] == [3, 4]
    assert "line 3:" in str(summary) and "3 columns" in summary.bad_rows[1][1]
    got = rx.events()
    assert [(e["epoch"], e["key"], e["value"]) for e in got] == [
        (1795000000.25, "temperature", 21.5), (1795000001.5, "status", "warming up"),
        (1795000003.0, "temperature", "nan"),  # text, as logged: CSV cannot tell
        (1795000004.0, "temperature", 22)]
    assert set(rx.buckets.values()) == {"Old run"}


def test_a_batch_waiting_on_the_service_is_said_while_it_waits(env, make_receiver, monkeypatch):
    """An upload to a service that does not acknowledge used to stand still without a word for
    its whole timeout (600 s): now it says why it waits, then stops at the timeout."""
    from isstreamer_jupyter import FlushTimeout, IsStreamerWarning, _offline

    monkeypatch.setattr(_offline, "WAIT_NOTE_AFTER", 0.4)
    monkeypatch.setattr(_offline, "WAIT_NOTE_EVERY", 0.8)
    rx = make_receiver()
    rx.outage(60)
    recording = write(env / "rec.csv", "1795000000,a,1\n1795000001,a,2\n")
    with pytest.warns(IsStreamerWarning) as said:
        summary = upload(recording, bucket_name="W", access_key=KEY, api_base=rx.api_base,
                         timeout=3.0,
                         max_requests_per_second=0, progress=False)
    notes = [str(w.message) for w in said if "has waited" in str(w.message)]
    assert 2 <= len(notes) <= 3, notes
    assert "for the service (network error: " in notes[0]
    assert "the same upload goes on where it stopped" in notes[0]
    assert KEY not in " ".join(notes)
    assert summary.stopped_by is FlushTimeout and summary.sent == 0
    rx.outage(0)
    again = upload(recording, bucket_name="W", access_key=KEY, api_base=rx.api_base,
                   progress=False)
    assert again.ok and [e["value"] for e in rx.events()] == [1, 2]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_a_timeout_that_is_not_a_positive_number_is_refused(env, timeout):
    recording = write(env / "rec.csv", "1795000000,a,1\n")
    with pytest.raises(ConfigError, match=r"timeout = .*more than 0"):
        upload(recording, access_key=KEY, api_base="http://127.0.0.1:9/api", timeout=timeout,
               progress=False)


def test_interrupted_upload_resumes_and_sends_nothing_twice(env, make_receiver):
    rx = make_receiver(faults=Faults(latency=0.05))
    recording = write(env / "long.csv", "".join(
        f"{1795000000 + i},n,{i}\n" for i in range(300)))
    child_env = dict(os.environ, IS_ACCESS_KEY=KEY, IS_API_BASE=rx.api_base, IS_MAX_RPS="0")
    cmd = [sys.executable, "-m", "isstreamer_jupyter", "upload", str(recording),
           "--bucket-name", "Long", "--quiet"]
    child = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    rx.wait_for(50, timeout=30)
    time.sleep(0.02)  # kill it mid-request
    child.kill()
    child.wait(timeout=10)
    partial = len(rx.events())
    assert 50 <= partial < 300
    rx.set_faults(latency=0)
    done = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "were sent by an earlier run" in done.stdout
    got = [e["value"] for e in rx.events()]
    assert sorted(set(got)) == list(range(300))  # all of them
    # resumed where it was: at most the one batch whose answer the kill cut off comes twice
    # (at-least-once: the service has no idempotency key), not the 50+ sent before
    assert len(got) - 300 <= 10
    assert KEY not in done.stdout + done.stderr


def test_ctrl_c_stops_an_upload_in_one_line_and_sends_nothing_more(env, make_receiver):
    """Ctrl-C printed a traceback, and the upload's way out sent the interrupted batch once
    more without saving that it had: a rerun stored it a third time."""
    rx = make_receiver(faults=Faults(latency=0.3))
    recording = write(env / "long.csv", "".join(
        f"{1795000000 + i},n,{i}\n" for i in range(300)))
    child_env = dict(os.environ, IS_ACCESS_KEY=KEY, IS_API_BASE=rx.api_base, IS_MAX_RPS="0")
    cmd = [sys.executable, "-m", "isstreamer_jupyter", "upload", str(recording),
           "--bucket-name", "Long", "--quiet", "--batch-size", "10"]
    child = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    rx.wait_for(30, timeout=30)
    time.sleep(0.1)  # (in the middle of a request)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130
    assert err.splitlines()[-1] == ("upload: interrupted: run the same command again: it goes on "
                                    "where it stopped"), err
    assert "Traceback" not in err
    time.sleep(0.5)  # (the interrupted request's answer)
    rx.set_faults(latency=0)
    done = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = [e["value"] for e in rx.events()]
    assert sorted(set(got)) == list(range(300))
    assert max(got.count(v) for v in set(got)) <= 2  # (the batch in flight, at most)
    assert len(got) - 300 <= 10


def test_a_row_the_service_refuses_is_reported_and_the_upload_goes_on(env, make_receiver):
    """The account takes keys of at most 100 characters: that row is refused alone (the
    batch is split down to it), counted, and the rest of the file goes out, once."""
    rx = make_receiver(max_key_length=100)
    long_key = "k" * 150
    recording = write(env / "refused.csv", "".join(
        f"{1795000000 + i},{long_key if i == 7 else 'n'},{i}\n" for i in range(30)))
    opts = {"access_key": KEY, "api_base": rx.api_base, "max_requests_per_second": 0,
            "bucket_name": "Refused", "progress": False, "batch_size": 10}
    summary = upload(recording, **opts)
    assert summary.ok and summary.sent == 29 and summary.refused == 1
    assert "1 refused by the service" in str(summary)
    assert [e["value"] for e in rx.events()] == [i for i in range(30) if i != 7]
    again = upload(recording, **opts)  # nothing twice, not even the refused row
    assert again.ok and again.sent == 0 and again.already_sent == 29
    assert again.refused_earlier == 1 and again.not_sent == 1  # still said: not delivered
    assert "1 refused by the service in an earlier run" in str(again)
    assert len(rx.events()) == 29


def test_upload_without_a_key_is_a_clear_error(env):
    recording = write(env / "r.csv", "1795000000,a,1\n")
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "upload", str(recording)],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("IS_")})
    assert done.returncode == 2
    assert "upload needs an access key" in done.stderr


def test_streamer_upload_uses_its_key_and_bucket(env, make_receiver):
    rx = make_receiver()
    recording = write(env / "plain.csv", "1795000000,a,1\n1795000001,b,2\n")
    s = Streamer(bucket_name="Target", access_key=KEY, api_base=rx.api_base,
                 max_requests_per_second=0, spool=False)
    summary = s.upload(recording, progress=False)
    assert summary.ok and summary.sent == 2
    assert [e["value"] for e in rx.events(s.BucketKey)] == [1, 2]
    assert s.upload(recording, progress=False).already_sent == 2  # nothing twice
    assert len(rx.events()) == 2
    s.close()


def test_two_streamers_on_one_file_and_multi_line_values(env, make_receiver):
    rx = make_receiver()
    a = Streamer(bucket_name="A", offline=True, offline_file="shared.csv")
    b = Streamer(bucket_name="B", offline=True, offline_file="shared.csv")
    a.log("note", "line one\nline two, with a comma")
    a.flush()
    b.log("n", 2)
    b.flush()
    a.log("n", 1)
    a.close()
    b.close()
    summary = upload(env / "shared.csv", access_key=KEY, api_base=rx.api_base,
                     max_requests_per_second=0, progress=False)
    assert summary.ok and summary.sent == 3 and not summary.bad_rows
    assert [e["value"] for e in rx.events(a.BucketKey)] == ["line one\nline two, with a comma", 1]
    assert [e["value"] for e in rx.events(b.BucketKey)] == [2]


def test_a_recording_put_in_the_place_of_an_uploaded_one_is_sent_whole(env, make_receiver):
    """The uploaded recording is deleted (its .upload.json stays) and a longer session is
    recorded to the same file: all of it is sent, not only what lies past the old length."""
    rx = make_receiver()
    opts = {"access_key": KEY, "api_base": rx.api_base, "max_requests_per_second": 0,
            "bucket_name": "Daily", "progress": False}
    recording = write(env / "isstreamer_out.csv",
                      "".join(f"{1795000000 + i},monday,{i}\n" for i in range(5)))
    assert upload(recording, **opts).sent == 5
    recording.unlink()
    write(recording, "".join(f"{1795100000 + i},tuesday,{i}\n" for i in range(10)))
    summary = upload(recording, **opts)
    assert (summary.already_sent, summary.sent) == (0, 10)
    assert [e["value"] for e in rx.events() if e["key"] == "tuesday"] == list(range(10))
    with open(recording, "a") as fh:  # a recording that grows keeps its progress
        fh.write("1795100010,tuesday,10\n")
    summary = upload(recording, **opts)
    assert (summary.already_sent, summary.sent) == (10, 1)


@pytest.mark.parametrize("name", ['Lab,"North', "Lab\nNorth"])
def test_a_bucket_name_with_a_quote_or_a_line_break_loses_no_later_row(env, name):
    """The '# bucket:' line holds the name as it is: a quote after a comma used to open a
    quoted field that swallowed every later row, and a line break split the line."""
    from isstreamer_jupyter._config import derive_bucket_key
    from isstreamer_jupyter._offline import read_rows

    with Streamer(bucket_name=name, offline=True, offline_file="rec.csv") as a:
        a.log("t", 1)
    with Streamer(bucket_name="South", offline=True, offline_file="rec.csv") as b:
        for i in range(3):
            b.log("t", 10 + i)
    rows = list(read_rows(env / "rec.csv"))
    assert [r.value for r in rows] == [1, 10, 11, 12]
    assert rows[0].bucket_key == derive_bucket_key(name)


def test_a_field_over_the_csv_limit_is_a_bad_row_not_a_traceback(env):
    from isstreamer_jupyter._offline import read_rows

    recording = write(env / "odd.csv", '1795000000,a,1\n1795000001,b,"' + "x" * 200_000
                      + '"\n1795000002,c,3\n')
    rows = list(read_rows(recording, "B"))
    assert [r.key for r in rows if not isinstance(r, tuple)] == ["a", "c"]
    assert [why for r in rows if isinstance(r, tuple) for why in r[1:]] == [
        "not a CSV row: field larger than field limit (131072)"]


@pytest.mark.parametrize("text", ["2024_06", "1_000", " 7 ", "\u0661\u0662", "1e5_0", "02134",
                                  "007", "-01", "00.5", "01e3"])
def test_text_that_python_would_read_as_a_number_stays_text(text):
    """The recorder writes numbers as repr() does: other spellings Python's int()/float()
    accept were logged as text, and are uploaded as text (a zip code keeps its zero)."""
    from isstreamer_jupyter._offline import parse_value

    assert parse_value(text) == text
    assert parse_value("-12") == -12 and parse_value("1e-05") == 1e-05
    assert [parse_value(t) for t in ("0", "-0", "0.5", ".5", "10", "1e5", "0.0")] == [
        0, 0, 0.5, 0.5, 10, 1e5, 0.0]


def test_progress_is_kept_per_destination_and_never_holds_the_key(env, make_receiver):
    """A trial upload to one receiver leaves the real upload to do: progress is per
    (API base, access key), named by the spool's one-way fingerprint."""
    trial, real = make_receiver(), make_receiver()
    other_key = "ist_offline_test_other_secret_888"
    recording = write(env / "rec.csv", "".join(f"{1795000000 + i},n,{i}\n" for i in range(15)))
    opts = {"bucket_name": "Dest", "max_requests_per_second": 0, "progress": False}
    assert upload(recording, access_key=KEY, api_base=trial.api_base, **opts).sent == 15
    summary = upload(recording, access_key=other_key, api_base=real.api_base, **opts)
    assert (summary.sent, summary.already_sent) == (15, 0)
    assert [e["value"] for e in real.events()] == list(range(15))
    # the same API base with another key is another destination (another account)
    assert upload(recording, access_key=other_key, api_base=trial.api_base, **opts).sent == 15
    # and each destination still remembers its own progress: nothing twice
    again = upload(recording, access_key=KEY, api_base=trial.api_base, **opts)
    assert (again.sent, again.already_sent) == (0, 15)
    assert len(trial.events()) == 30 and len(real.events()) == 15
    text = (env / "rec.csv.upload.json").read_text()
    assert KEY not in text and other_key not in text
    assert set(json.loads(text)["destinations"]) == {
        fingerprint(trial.api_base, KEY), fingerprint(real.api_base, other_key),
        fingerprint(trial.api_base, other_key)}


def test_an_older_progress_file_names_no_destination_so_its_rows_are_sent(env, make_receiver):
    """The older form recorded only how far the file went, not where: it may be a trial
    run's, so its rows are sent (a note says so) rather than silently skipped."""
    rx = make_receiver()
    recording = write(env / "rec.csv", "".join(f"{1795000000 + i},n,{i}\n" for i in range(4)))
    size = recording.stat().st_size
    (env / "rec.csv.upload.json").write_text(json.dumps(
        {"Old": {"line": 4, "size": size, "head": _head(recording, size)}}))
    opts = {"bucket_name": "Old", "access_key": KEY, "api_base": rx.api_base,
            "max_requests_per_second": 0, "progress": False}
    summary = upload(recording, **opts)
    assert (summary.sent, summary.already_sent) == (4, 0)
    assert "older form" in str(summary) and "sent again" in str(summary)
    again = upload(recording, **opts)  # the file now has the new form: no note, nothing twice
    assert (again.sent, again.already_sent, again.note) == (0, 4, "")
    assert len(rx.events()) == 4


def test_a_bad_bucket_line_makes_bad_rows_unless_a_bucket_is_given(env):
    """The rows under a '# bucket:' line the service would refuse cannot go to it (nor to
    the bucket before it); a bucket given for the whole upload replaces the file's lines."""
    from isstreamer_jupyter._offline import read_rows

    recording = write(env / "rec.csv", "# bucket: Good_1 Good\n1795000000,a,1\n"
                      f"# bucket: {'k' * 251} Long\n1795000001,a,2\n")
    rows = list(read_rows(recording))
    assert rows[0].bucket_key == "Good_1"
    assert rows[1] == (4, "the bucket of line 3 cannot be used: bucket key is 251 characters; "
                          "the limit is 250: shorten it")
    assert [r.value for r in read_rows(recording, "Given")] == [1, 2]


@pytest.mark.parametrize("progress_text", [
    '{"format": 2, "destinations": {',  # cut short
    '{"format": 2, "destinations": {"DEST": {"Dest": {"line": null, "refused": 0, '
    '"size": 1, "head": ""}}}}',
    '{"format": 2, "destinations": {"DEST": []}}',
], ids=["truncated", "null line", "list"])
def test_a_damaged_progress_file_is_said_and_its_rows_sent_again(env, make_receiver,
                                                                 progress_text):
    rx = make_receiver()
    recording = write(env / "rec.csv", "1795000000,n,1\n1795000001,n,2\n")
    progress_text = progress_text.replace("DEST", fingerprint(rx.api_base, KEY))
    (env / "rec.csv.upload.json").write_text(progress_text)
    summary = upload(recording, access_key=KEY, api_base=rx.api_base, bucket_name="Dest",
                     max_requests_per_second=0, progress=False)
    assert summary.ok and summary.sent == 2 and "damaged" in summary.note
    assert [e["value"] for e in rx.events()] == [1, 2]
    again = upload(recording, access_key=KEY, api_base=rx.api_base, bucket_name="Dest",
                   max_requests_per_second=0, progress=False)
    assert (again.sent, again.already_sent, again.note) == (0, 2, "")  # (written whole again)


def test_an_upload_that_sends_nothing_leaves_a_damaged_progress_file_to_be_said_again(
        env, make_receiver):
    """The progress is checked before sending (it can be written); an upload stopped before
    its first batch (a wrong key) must not replace a damaged file with a clean start, or the
    rerun would send all the rows again without saying they may now be there twice."""
    rx = make_receiver(access_keys=[KEY])
    recording = write(env / "rec.csv", "1795000000,n,1\n1795000001,n,2\n")
    progress = env / "rec.csv.upload.json"
    progress.write_text('{"line": 40}')
    opts = {"api_base": rx.api_base, "bucket_name": "Dest", "max_requests_per_second": 0,
            "progress": False}
    refused = upload(recording, access_key="wrong-key", **opts)
    assert not refused.ok and refused.sent == 0 and "damaged" in refused.note
    assert progress.read_text() == '{"line": 40}'  # (as it was: only checked)
    assert not (env / "rec.csv.upload.json.tmp").exists()
    rerun = upload(recording, access_key=KEY, **opts)
    assert rerun.ok and rerun.sent == 2 and "damaged" in rerun.note
    assert "some may now be there twice" in str(rerun)
    assert [e["value"] for e in rx.events()] == [1, 2]


@pytest.mark.parametrize(("partial", "rest", "whole"), [
    (b"1795000001,temp,2", b"1.5", 21.5),  # (a whole row, as it reads: it is not, yet)
    (b"1795000001,temp,", b"21.5", 21.5), (b"1795000001,te", b"mp,21.5", 21.5),
    (b'1795000001,note,"tw', b'o\nlines"', "two\nlines"),
    (b"1795000001,n,caf\xc3", b"\xa9", "caf\u00e9")])
def test_a_last_line_without_its_end_waits_for_the_next_run(
        env, make_receiver, partial, rest, whole):
    """A recording being written may end mid-row (its value, a column, a quoted value or a
    character still to come): that row is not sent, nor marked as done, nor counted as a row
    that will never be sent (the upload exited 3, 'not sent, however often it runs'); the next
    run sends it whole."""
    rx = make_receiver()
    recording = env / "rec.csv"
    recording.write_bytes(b"1795000000,temp,1\n" + partial)
    opts = {"access_key": KEY, "api_base": rx.api_base, "bucket_name": "Dest",
            "max_requests_per_second": 0, "progress": False}
    first = upload(recording, **opts)
    assert (first.sent, first.bad_rows, first.not_sent, first.unfinished) == (1, [], 0, 2)
    assert "line 2 not sent yet: the last line has no line end" in str(first)
    with recording.open("ab") as fh:  # (the recorder ends the line, and writes one more)
        fh.write(rest + b"\n1795000002,temp,22\n")
    second = upload(recording, **opts)
    assert (second.sent, second.already_sent, second.bad_rows, second.unfinished) == (
        2, 1, [], 0)
    assert [e["value"] for e in rx.events()] == [1, whole, 22]


def test_a_file_without_buckets_remembers_which_fallback_it_went_to(env, make_receiver):
    """An ISStreamer recording (no '# bucket:' lines) uploaded from one streamer's bucket,
    then another's: the second is not skipped as already sent."""
    rx = make_receiver()
    recording = write(env / "iss.csv", "1795000000,n,1\n1795000001,n,2\n")
    for name in ("Alpha", "Beta"):
        with Streamer(name, access_key=KEY, api_base=rx.api_base, spool=False,
                      max_requests_per_second=0) as s:
            assert s.upload(recording, progress=False).sent == 2
    assert len(rx.events()) == 4 and len(rx.buckets) == 2


def test_a_byte_order_mark_is_not_part_of_the_first_row(env, make_receiver):
    rx = make_receiver()
    recording = env / "bom.csv"
    recording.write_bytes("\ufeff1795000000,n,1\n1795000001,n,2\n".encode())
    summary = upload(recording, access_key=KEY, api_base=rx.api_base, bucket_name="Dest",
                     max_requests_per_second=0, progress=False)
    assert (summary.sent, summary.bad_rows) == (2, [])


def test_a_damaged_entry_of_another_destination_leaves_this_ones_progress_alone(
        env, make_receiver):
    rx = make_receiver()
    recording = write(env / "rec.csv", "1795000000,n,1\n1795000001,n,2\n")
    opts = {"access_key": KEY, "api_base": rx.api_base, "bucket_name": "Dest",
            "max_requests_per_second": 0, "progress": False}
    assert upload(recording, **opts).sent == 2
    progress = env / "rec.csv.upload.json"
    state = json.loads(progress.read_text())
    state["destinations"]["another"] = {"Dest": {"line": None}}  # (damaged: not ours)
    progress.write_text(json.dumps(state))
    again = upload(recording, **opts)
    assert (again.sent, again.already_sent, again.note) == (0, 2, "")
    assert len(rx.events()) == 2


def test_a_recording_ends_every_line_alike_with_lf(env, make_receiver):
    """The '# bucket:' lines ended in LF and the rows in CRLF (csv.writer's default). A value's
    own line breaks are kept, quoted, and upload gives them back."""
    with Streamer(bucket_name="First", offline=True, offline_file="rec.csv") as s:
        s.log("a", 1)
        s.set_bucket("Second")
        s.log("b", 2)
    data = (env / "rec.csv").read_bytes()
    assert b"\r" not in data
    assert data.count(b"\n") == 4 and data.endswith(b"\n")  # 2 bucket lines, 2 rows
    breaks = ["two\nlines", "old\rmac", "dos\r\nend", "end\r"]
    with Streamer(bucket_name="Third", offline=True, offline_file="rec.csv") as s:
        for value in breaks:
            s.log("note", value)
    rx = make_receiver()
    summary = upload(env / "rec.csv", access_key=KEY, api_base=rx.api_base,
                     max_requests_per_second=0, progress=False)
    assert (summary.sent, summary.bad_rows) == (6, [])
    assert [e["value"] for e in rx.events()][2:] == breaks


@pytest.mark.parametrize("bucket_line_end", ["\n", "\r\n"])
def test_upload_reads_recordings_with_crlf_rows(env, make_receiver, bucket_line_end):
    """Recordings made before rows ended in LF, and ISStreamer's (csv.writer's CRLF), upload as
    before, a value's own line break kept."""
    rx = make_receiver()
    recording = env / "old.csv"
    recording.write_bytes((f"# bucket: old_key Old run{bucket_line_end}"
                           '1795000000.25,a,1\r\n1795000001.5,note,"two\r\nlines"\r\n'
                           "1795000002,b,x\r\n").encode())
    summary = upload(recording, access_key=KEY, api_base=rx.api_base,
                     max_requests_per_second=0, progress=False)
    assert (summary.sent, summary.bad_rows) == (3, [])
    assert rx.buckets == {"old_key": "Old run"}
    assert [(e["epoch"], e["key"], e["value"]) for e in rx.events()] == [
        (1795000000.25, "a", 1), (1795000001.5, "note", "two\r\nlines"), (1795000002.0, "b", "x")]


@pytest.mark.parametrize(("last", "reason"), [
    (b"\xff\xfe", "not UTF-8 text (byte 0xff)"),  # (no line end, and not one column of three)
    (b"1795000002,temp,21 \xb0C", "not UTF-8 text (byte 0xb0)"),  # (no line end)
    (b"\xff\xfe\n", "not UTF-8 text (byte 0xff)"),
    (b"1795000002,temp,\xb0,C\n", "not UTF-8 text (byte 0xb0)"),  # (4 columns)
    # a last line cut short inside a character (é is c3 a9) may still be being written
    (b"1795000002,temp,caf\xc3", "the last line has no line end"),
])
def test_a_line_that_is_not_utf8_is_said_so_by_its_number(env, last, reason):
    """A last line that is not UTF-8, or one without three columns, was reported as 'expected 3
    columns … found 1' or as perhaps still being written, where other such lines were said not
    to be UTF-8."""
    from isstreamer_jupyter._offline import Row, read_rows

    recording = env / "rec.csv"
    recording.write_bytes(b"1795000000,temp,1\n1795000001,temp,2\n" + last)
    rows = list(read_rows(recording, "B"))
    assert [r.line for r in rows if isinstance(r, Row)] == [1, 2]
    assert [(n, why[:len(reason)]) for n, why in rows[2:]] == [(3, reason)]


def test_the_lock_file_is_removed_without_letting_two_uploads_run(env, monkeypatch):
    """An upload removes its lock file at the end, while it still holds it. One that opened
    the file just before, and locks it just after, holds a file no longer at its path: it must
    open the path anew, or a third upload would lock a new file and run beside it."""
    from isstreamer_jupyter import _offline

    progress = env / "rec.csv.upload.json"
    lock = env / "rec.csv.upload.json.lock"
    first = _offline._one_at_a_time(progress)
    first.__enter__()
    assert lock.exists()
    flock, calls = _offline.fcntl.flock, []

    def first_ends_in_between(fh, how):  # (the second has opened the file; the first ends)
        calls.append(how)
        if len(calls) == 1:
            first.__exit__(None, None, None)
            assert not lock.exists()
        flock(fh, how)

    monkeypatch.setattr(_offline.fcntl, "flock", first_ends_in_between)
    with _offline._one_at_a_time(progress):
        assert lock.exists() and len(calls) == 2  # (locked the old file, then the new one)
        monkeypatch.setattr(_offline.fcntl, "flock", flock)
        with pytest.raises(ConfigError, match=r"another upload of rec\.csv is running"), \
                _offline._one_at_a_time(progress):
            pass
    assert not lock.exists()
