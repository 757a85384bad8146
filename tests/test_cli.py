"""``python -m isstreamer_jupyter demo | serve | upload`` as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from isstreamer_jupyter import Streamer

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("IS_")}


def test_demo_is_the_main_job_and_needs_no_account(tmp_path):
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "demo", "--points", "5"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=CLEAN_ENV)
    assert done.returncode == 0, done.stderr
    assert "logged 16 events" in done.stdout
    assert "recorded locally to build/demo_recording.csv" in done.stdout
    # (the demo chose offline, not a keyword argument of the user's)
    assert ("isstreamer_jupyter: offline mode is on (demo without --online), so recording "
            "locally to build/demo_recording.csv") in done.stdout
    rows = [r for r in (tmp_path / "build/demo_recording.csv").read_text().splitlines()
            if not r.startswith("#")]
    assert len(rows) == 16


def run_into_a_closed_pipe(cwd, *command: str, env: dict[str, str] = CLEAN_ENV):
    """The command with its stdout a pipe whose reader already went away (`... | head -1`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "isstreamer_jupyter", *command],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                              cwd=cwd, env=env)
    finally:
        os.close(write_end)


def test_demo_into_a_closed_pipe_records_all_and_exits_as_a_shell_would(tmp_path):
    """`demo | head -1`: the reader went away before the first line. The recording is still
    whole, and the command ends as a shell's SIGPIPE would (141), with no traceback."""
    done = run_into_a_closed_pipe(tmp_path, "demo", "--points", "5")
    assert done.returncode == 141
    assert done.stderr == ""  # (no traceback, nor an at-exit close waiting on nothing)
    rows = [r for r in (tmp_path / "build/demo_recording.csv").read_text().splitlines()
            if not r.startswith("#")]
    assert len(rows) == 16


@pytest.mark.parametrize("output,why", [("afile/x.csv", "a file of that name is there"),
                                         ("afile/sub/x.csv", "Not a directory"),
                                         ("/proc/nope/x.csv", "No such file or directory")])
def test_demo_output_in_a_folder_that_cannot_be_made_is_one_line(tmp_path, output, why):
    (tmp_path / "afile").write_text("a regular file\n")
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "demo", "--points", "5",
                           "--output", output], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=CLEAN_ENV)
    assert done.returncode == 2
    folder = str(Path(output).parent)
    assert done.stderr.splitlines() == [
        f"demo: --output {output}: cannot make its folder {folder!r} ({why}). Fix: give "
        "--output a file in a folder that exists or can be made"]


def test_serve_runs_the_receiver_until_interrupted(tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "isstreamer_jupyter", "serve", "--port", "0",
                               "--rate-limit", "5"], stdout=subprocess.PIPE, text=True,
                              env=CLEAN_ENV, cwd=tmp_path)
    try:
        line = server.stdout.readline()
        assert line.startswith("receiver listening on http://127.0.0.1:")
        api = line.split()[3]
        answer = requests.post(f"{api}/events", json={"key": "t", "value": 1},
                               headers={"X-IS-AccessKey": "k", "X-IS-BucketKey": "b"},
                               timeout=5)
        assert answer.status_code == 204
        assert answer.headers["X-RateLimit-Limit"] == "5"
    finally:
        server.send_signal(signal.SIGINT)
        summary, _ = server.communicate(timeout=10)
    assert server.returncode == 0
    assert "receiver stopped: 1 events in 1 buckets from 1 requests" in summary


KEY = "ist_cli_test_secret_key_4242"


def run_upload(api_base: str, recording, *args: str, key: str = KEY, bucket: str | None = "CLI"):
    """The upload command as a user runs it, in the recording's folder (HOME too: no ini of
    the user's is read); `bucket=None`: the buckets the file names."""
    env = dict(CLEAN_ENV, IS_ACCESS_KEY=key, IS_API_BASE=api_base, IS_MAX_RPS="0",
               HOME=str(recording.parent))
    named = ["--bucket-name", bucket] if bucket is not None else []
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "upload", str(recording),
                           *named, "--quiet", *args],
                          capture_output=True, text=True, timeout=120, env=env,
                          cwd=recording.parent)
    assert key not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_upload_exits_0_only_when_every_row_is_delivered(tmp_path, make_receiver):
    rx = make_receiver()
    good = tmp_path / "good.csv"
    good.write_text("1795000000,a,1\n1795000001,a,2\n")
    done = run_upload(rx.api_base, good)
    assert done.returncode == 0, done.stdout + done.stderr
    again = run_upload(rx.api_base, good)  # delivered by an earlier run: still everything
    assert again.returncode == 0 and "(2 events were sent by an earlier run)" in again.stdout
    assert [e["value"] for e in rx.events()] == [1, 2]


def test_upload_of_bad_rows_exits_3(tmp_path, make_receiver):
    rx = make_receiver()
    junk = tmp_path / "junk.csv"
    junk.write_text("junk\n1,2\n")
    done = run_upload(rx.api_base, junk)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "uploaded 0 events" in done.stdout and "2 rows skipped" in done.stdout
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("1795000000,a,1\nnot-a-time,a,2\n1795000002,a,3\n")
    done = run_upload(rx.api_base, mixed)
    assert done.returncode == 3 and "line 2:" in done.stdout
    assert [e["value"] for e in rx.events()] == [1, 3]  # the good rows did go


def test_upload_with_rows_the_service_refuses_exits_3(tmp_path, make_receiver):
    rx = make_receiver(max_key_length=100)
    recording = tmp_path / "refused.csv"
    recording.write_text(f"1795000000,{'k' * 150},1\n1795000001,a,2\n")
    done = run_upload(rx.api_base, recording)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "1 refused by the service" in done.stdout
    assert [e["value"] for e in rx.events()] == [2]
    again = run_upload(rx.api_base, recording)  # the refused row is still not delivered
    assert again.returncode == 3, again.stdout + again.stderr
    assert "(1 event was sent by an earlier run)" in again.stdout
    assert "1 refused by the service in an earlier run" in again.stdout
    assert [e["value"] for e in rx.events()] == [2]  # nothing twice
    assert KEY not in (tmp_path / "refused.csv.upload.json").read_text()


def test_a_rerun_still_reports_the_bad_rows_and_exits_3(tmp_path, make_receiver):
    """Bad rows are read from the file again on each run, so each run names them."""
    rx = make_receiver()
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("1795000000,a,1\nnot-a-time,a,2\n")
    assert run_upload(rx.api_base, mixed).returncode == 3
    again = run_upload(rx.api_base, mixed)
    assert again.returncode == 3 and "line 2:" in again.stdout
    assert [e["value"] for e in rx.events()] == [1]


def test_upload_of_a_file_whose_last_line_has_no_end_exits_1_not_3(tmp_path, make_receiver):
    """A last line without its line end exited 3 ('not sent, however often it runs'): it may
    still be being written (and read as a whole row, 2 of 21.5), so it waits: exit 1, saying to
    run it again once the recording is finished, or to end the line; then it is sent."""
    rx = make_receiver()
    part = tmp_path / "part.csv"
    part.write_text("# bucket: B2_x B2\n1795874000.0,temp,1\n1795874001.0,temp,2")
    done = run_upload(rx.api_base, part, bucket=None)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("upload: line 3, the last, has no line end: it may still be being written, so it is "
            "not sent yet. Fix: run the same command again once the recording is finished (a "
            "file that is complete: end that line).") in done.stderr
    assert [e["value"] for e in rx.events()] == [1]
    with part.open("a") as fh:
        fh.write("1.5\n")
    done = run_upload(rx.api_base, part, bucket=None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [e["value"] for e in rx.events()] == [1, 21.5]


def test_upload_help_states_the_exit_codes():
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "upload", "--help"],
                          capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
    assert done.returncode == 0
    codes = done.stdout.split("exit codes:")[1]
    assert [line.split()[0] for line in codes.splitlines() if line[:3].strip()] == [
        "0", "1", "2", "3", "130"]


def test_upload_with_a_refused_key_says_so_in_one_line_with_the_fix(tmp_path, make_receiver):
    rx = make_receiver(access_keys=["the-right-key"])
    recording = tmp_path / "rec.csv"
    recording.write_text("1795000000,a,1\n")
    done = run_upload(rx.api_base, recording)  # (run_upload: the key is never shown)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [  # (no warning pointing into the package)
        "upload stopped: the service refused the access key (401). Fix: set IS_ACCESS_KEY (or "
        "access_key under [isstreamer.client_config] in isstreamer.ini) to the right access "
        "key, then run the same command again: it goes on where it stopped."]
    assert "uploaded 0 events" in done.stdout and "stopped" not in done.stdout
    fixed = run_upload(rx.api_base, recording, key="the-right-key")
    assert fixed.returncode == 0 and [e["value"] for e in rx.events()] == [1]


def test_upload_into_a_closed_pipe_still_says_its_verdict_and_exit_code(tmp_path,
                                                                         make_receiver):
    """`upload ... | true`: the report's reader went away. The verdict on stderr and the exit
    code are still the upload's (1: a refused key), not a shell's 141 with nothing said."""
    rx = make_receiver(access_keys=["the-right-key"])
    recording = tmp_path / "r.csv"
    recording.write_text("1795000000,a,1\n")
    env = dict(CLEAN_ENV, IS_ACCESS_KEY="wrong", IS_API_BASE=rx.api_base, IS_MAX_RPS="0",
               HOME=str(tmp_path))
    done = run_into_a_closed_pipe(tmp_path, "upload", str(recording), "--bucket-name", "CLI",
                                  "--quiet", env=env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("upload stopped: the service refused the access key (401). "
                                  "Fix: set IS_ACCESS_KEY")


def test_serve_with_stdout_closed_exits_as_a_shell_would(tmp_path):
    done = run_into_a_closed_pipe(tmp_path, "serve", "--port", "0")
    assert (done.returncode, done.stderr) == (141, "")


def test_serve_whose_reader_went_away_exits_as_a_shell_would_on_ctrl_c(tmp_path):
    """`serve | head -1`, then Ctrl-C: the closing summary meets a closed pipe."""
    server = subprocess.Popen([sys.executable, "-m", "isstreamer_jupyter", "serve", "--port",
                               "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=CLEAN_ENV, cwd=tmp_path)
    try:
        assert server.stdout.readline().startswith("receiver listening on")
        server.stdout.close()  # (head -1 is done)
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=10)
    assert (server.returncode, stderr) == (141, "")


@pytest.mark.parametrize("flag,value,says", [
    ("--port", "99999", "argument --port: must be from 0 to 65535, got 99999"),
    ("--port", "-1", "argument --port: must be from 0 to 65535, got -1"),
    ("--max-body", "0", "argument --max-body: must be at least 1, got 0"),
    ("--monthly-cap", "-1", "argument --monthly-cap: must be at least 0, got -1"),
    ("--access-key", "", "argument --access-key: must not be empty or blank space (no client "
                         "sends such a key), got ''"),
    ("--access-key", " ", "argument --access-key: must not be empty or blank space (no client "
                          "sends such a key), got ' '"),
])
def test_serve_refuses_an_option_out_of_range_as_argparse_would(tmp_path, flag, value, says):
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "serve", flag, value],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=CLEAN_ENV)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == f"python -m isstreamer_jupyter serve: error: {says}"


def help_text(*command: str) -> str:
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", *command, "--help"],
                          capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_top_level_help_reads_well():
    top = " ".join(help_text().split())
    assert "``" not in top
    assert "a demo that needs no account" in top and "the upload of offline recordings" in top


def test_demo_help_says_what_it_does_and_where_it_writes():
    """`demo --help` had no description."""
    demo = " ".join(help_text("demo").split())
    assert "simulated" in demo and "no account" in demo
    assert "build/demo_recording.csv, in the current folder" in demo
    assert ".csv is added to a name that does not end in .csv" in demo  # (not "as named")
    assert "upload" in demo and "--online" in demo


def test_serve_help_names_its_command_and_explains_every_option():
    serve = help_text("serve")
    assert serve.startswith("usage: python -m isstreamer_jupyter serve ")
    assert "IS_API_BASE" in serve and "http://127.0.0.1:8080/api" in serve
    entries: list[list[str]] = []  # an option's lines: its own, then those indented deeper
    for line in serve.split("options:")[1].splitlines():
        if line.startswith("  -"):
            entries.append([line])
        elif line.startswith("     ") and entries:
            entries[-1].append(line)
    said = {entry[0].split()[0].rstrip(","): " ".join(entry).split(maxsplit=2)[2:]
            for entry in entries}
    assert {"--p-5xx", "--p-reset-before", "--p-reset-after", "--p-429", "--retry-after",
            "--latency", "--seed", "--max-key-length", "--max-body"} <= set(said)
    assert [name for name, text in said.items() if not text] == []  # each option has help


def test_a_bucket_line_the_service_would_refuse_skips_its_rows_only(tmp_path, make_receiver):
    """A '# bucket:' line whose key the service refuses makes its rows bad rows (by line
    number); the rows under a later, good bucket line still go out."""
    rx = make_receiver()
    recording = tmp_path / "buckets.csv"
    recording.write_text("# bucket: a:b Bad name\n1795000000,a,1\n1795000001,a,2\n"
                         "# bucket: Good_1 Good\n1795000002,a,3\n")
    done = run_upload(rx.api_base, recording, bucket=None)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "2 rows skipped" in done.stdout
    assert "line 2: the bucket of line 1 cannot be used: bucket key 'a:b'" in done.stdout
    assert "line 3:" in done.stdout and "run the same command again" not in done.stderr
    assert [e["value"] for e in rx.events("Good_1")] == [3] and rx.buckets == {"Good_1": "Good"}
    again = run_upload(rx.api_base, recording, bucket=None)
    assert again.returncode == 3 and "2 rows skipped" in again.stdout
    assert len(rx.events()) == 1


def test_a_file_that_is_not_utf8_has_its_odd_rows_skipped_not_a_traceback(tmp_path,
                                                                          make_receiver):
    rx = make_receiver()
    recording = tmp_path / "latin1.csv"
    recording.write_bytes(b"# bucket: Lab_0 Lab\n1795000000,a,1\n1795000001,temp,21 \xb0C\n"
                          b"1795000002,a,3\n# bucket: Lab_1 Caf\xe9\n1795000003,a,4\n")
    done = run_upload(rx.api_base, recording, bucket=None)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "2 rows skipped" in done.stdout
    assert "line 3: not UTF-8 text (byte 0xb0): the file must be UTF-8 to send this" \
        in done.stdout
    assert "line 6: the bucket of line 5 cannot be used: not UTF-8 text (byte 0xe9)" \
        in done.stdout
    assert [e["value"] for e in rx.events()] == [1, 3] and rx.buckets == {"Lab_0": "Lab"}


def test_a_recording_that_cannot_be_read_says_so_in_one_line(tmp_path):
    folder = tmp_path / "rec.csv"
    folder.mkdir()
    done = run_upload("http://127.0.0.1:9/api", folder)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"upload: {folder} cannot be read (Is a directory): give a recording (a CSV file) "
        "that you may read"]


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc")
def test_a_recording_whose_reading_fails_exits_2_in_one_line(tmp_path):
    """/proc/self/mem opens, and its first read fails (EIO): a real read error, as root too."""
    done = run_upload("http://127.0.0.1:9/api", Path("/proc/self/mem"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "upload: /proc/self/mem cannot be read (Input/output error): give a recording (a CSV "
        "file) that you may read"]


def test_a_file_that_is_no_text_is_said_so_in_one_line(tmp_path, make_receiver):
    """An image uploaded by mistake was read as 225 lines, each said to be no CSV row; a CSV
    saved as UTF-16 too. A NUL in a logged value (UTF-8 text) is no such file: it is sent."""
    picture = tmp_path / "plot.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 40)
    wide = tmp_path / "excel.csv"
    wide.write_text("1795000000,a,1\n", encoding="utf-16")
    for path, why in ((picture, "it holds binary data (NUL bytes, and bytes that are no UTF-8, "
                                "in its first 64 KiB). Give the CSV file that offline "
                                "recording wrote (offline_file)"),
                      (wide, "it is UTF-16 text; save it as UTF-8 (CSV UTF-8) and upload that")):
        done = run_upload("http://127.0.0.1:9/api", path)
        assert done.returncode == 2
        assert done.stderr.splitlines() == [f"upload: {path} is not a CSV recording: {why}"]
    rx = make_receiver()
    with Streamer(bucket_name="B", offline=True, offline_file=str(tmp_path / "nul.csv")) as s:
        s.log("k", "a\x00b")
        s.log("k", 2)
    done = run_upload(rx.api_base, tmp_path / "nul.csv", bucket=None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [e["value"] for e in rx.events()] == ["a\x00b", 2]


@pytest.mark.parametrize("size", ["0", "-3"])
def test_a_batch_size_below_1_is_refused_not_ignored(tmp_path, make_receiver, size):
    rx = make_receiver()
    recording = tmp_path / "rec.csv"
    recording.write_text("1795000000,a,1\n")
    done = run_upload(rx.api_base, recording, "--batch-size", size)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [  # (the option typed, not "keyword argument")
        f"upload: batch_size = {size} from --batch-size: expected a whole number at least 1. "
        f"Fix: change it, or leave it out for the default (10)"]
    assert rx.events() == []


INI_WITH_THE_WRONG_SECTION = "[client_config]\nbatch_size = 5\n"


def ini_note(folder) -> str:
    """The one line the CLI says for an isstreamer.ini in `folder` with a [client_config]
    section (no file:line into the package, no source line)."""
    return (f"note: {folder / 'isstreamer.ini'}: section [client_config] is not read, so its "
            f"settings are not used: rename it to [isstreamer.client_config] (ISStreamer's name)")


def test_an_ini_warning_is_one_plain_line_for_upload(tmp_path, make_receiver):
    rx = make_receiver()
    (tmp_path / "isstreamer.ini").write_text(INI_WITH_THE_WRONG_SECTION)
    recording = tmp_path / "rec.csv"
    recording.write_text("1795000000,a,1\n")
    done = run_upload(rx.api_base, recording)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.splitlines() == [ini_note(tmp_path)]


def test_an_ini_warning_is_one_plain_line_for_demo(tmp_path):
    (tmp_path / "isstreamer.ini").write_text(INI_WITH_THE_WRONG_SECTION)
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "demo", "--points", "2"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=dict(CLEAN_ENV, HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [ini_note(tmp_path)]


def test_a_pipe_is_refused_not_read_to_nothing(tmp_path):
    """An upload reads the recording twice (counting, then sending): a pipe would give its
    rows to the first read and nothing to the second ("uploaded 0 events", exit 0)."""
    fifo = tmp_path / "rec.csv"
    os.mkfifo(fifo)
    done = run_upload("http://127.0.0.1:9/api", fifo)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"upload: {fifo} is not a file (a pipe or a device can be read only once, and an upload "
        "reads the recording twice): copy it to a file first"]


def test_one_upload_of_a_file_at_a_time(tmp_path, make_receiver):
    """Two at once would send rows twice and write the progress over each other."""
    import fcntl

    rx = make_receiver()
    recording = tmp_path / "rec.csv"
    recording.write_text("1795000000,a,1\n")
    with (tmp_path / "rec.csv.upload.json.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # (an upload of it under way)
        done = run_upload(rx.api_base, recording)
    assert done.returncode == 2 and rx.events() == []
    assert done.stderr.splitlines() == [
        "upload: another upload of rec.csv is running: wait for it to end"]
    assert run_upload(rx.api_base, recording).returncode == 0  # (the lock is free again)
    assert [e["value"] for e in rx.events()] == [1]


def test_a_progress_file_that_cannot_be_written_stops_before_sending_in_one_line(
        tmp_path, make_receiver):
    """It sent, then said 'make its folder writable' (it was) and that a rerun 'goes on where
    it stopped' (it sent the same rows again, nothing having been recorded)."""
    rx = make_receiver()
    recording = tmp_path / "rec.csv"
    recording.write_text("1795000000,a,1\n")
    progress = tmp_path / "rec.csv.upload.json"
    progress.mkdir()  # (in the way of the progress file)
    done = run_upload(rx.api_base, recording)
    assert done.returncode == 2 and rx.events() == []
    assert done.stderr.splitlines() == [
        f"upload: the progress file {progress} cannot be written (it is a folder: move it out of "
        f"the way); nothing was sent"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.csv", "rec.csv.upload.json"]
    progress.rmdir()
    assert run_upload(rx.api_base, recording).returncode == 0
    assert [e["value"] for e in rx.events()] == [1]


def test_a_progress_file_that_can_no_longer_be_written_says_what_a_rerun_sends(
        tmp_path, make_receiver, monkeypatch, capsys):
    """Written before sending, then not after a batch (a full disk): that batch's delivery
    is not recorded, and a rerun sends it again."""
    import errno

    from isstreamer_jupyter import _offline
    from isstreamer_jupyter.__main__ import main

    rx = make_receiver()
    recording = tmp_path / "rec.csv"
    recording.write_text("1795000000,a,1\n1795000001,a,2\n1795000002,a,3\n1795000003,a,4\n")
    monkeypatch.chdir(tmp_path)
    for name, value in {"IS_ACCESS_KEY": KEY, "IS_API_BASE": rx.api_base, "IS_MAX_RPS": "0",
                        "HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    replace, writes = os.replace, []

    def full_disk(src, dst):
        writes.append(dst)
        if len(writes) == 3:  # (before sending, after the first batch, after the second)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        replace(src, dst)

    monkeypatch.setattr(_offline.os, "replace", full_disk)
    args = ["upload", "rec.csv", "--bucket-name", "CLI", "--batch-size", "2", "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "upload stopped: the progress file rec.csv.upload.json cannot be written (No space "
        "left on device: free some space), so the last 2 rows sent, up to line 4, are not "
        "recorded as done. Fix: once it can be written, run the same command again: it sends "
        "those rows again (the service will then have them twice), then the rest."]
    assert [e["value"] for e in rx.events()] == [1, 2, 3, 4]
    monkeypatch.setattr(_offline.os, "replace", replace)
    assert main(args) == 0
    assert [e["value"] for e in rx.events()] == [1, 2, 3, 4, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.csv", "rec.csv.upload.json"]


@pytest.mark.parametrize("content", [None, b"", b"1795000000,a,1\n", b"\xff\n", "folder"])
def test_an_upload_leaves_no_lock_file(tmp_path, make_receiver, content):
    """An empty '<file>.upload.json.lock' was left after every upload, even of an empty or
    unreadable file."""
    rx = make_receiver()
    recording = tmp_path / "rec.csv"
    if content == "folder":
        recording.mkdir()
    elif content is not None:
        recording.write_bytes(content)
    run_upload(rx.api_base, recording)
    assert not (tmp_path / "rec.csv.upload.json.lock").exists()


def test_timeout_bounds_an_upload_to_a_service_that_does_not_take_it(tmp_path, make_receiver):
    rx = make_receiver()
    rx.outage(120)
    recording = tmp_path / "rec.csv"
    recording.write_text("1795000000,a,1\n")
    done = run_upload(rx.api_base, recording, "--timeout", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert re.fullmatch(
        r"upload stopped: network error: connection reset\. Fix: check "
        r"the network and IS_API_BASE \(the events API it sends to\), then run the same command "
        r"again: it goes on where it stopped\.\n", done.stderr), done.stderr
    for bad in ("0", "-5", "nan"):
        refused = run_upload(rx.api_base, recording, "--timeout", bad)
        assert refused.returncode == 2 and refused.stderr.splitlines() == [
            f"upload: timeout = {float(bad)!r} from --timeout: expected the seconds a batch may "
            f"wait for the service, more than 0 (default 600)"], refused.stderr
    assert "--timeout SECONDS" in help_text("upload")


def test_an_isstreamer_recording_without_a_bucket_is_a_mistake_in_the_command(tmp_path,
                                                                               make_receiver):
    """Every row was reported as skipped, exit 3 ('not sent, however often it runs'), when
    the fix is one option; a header line was reported as a bad epoch."""
    rx = make_receiver()
    recording = tmp_path / "isstreamer_out.csv"
    recording.write_text("epoch,key,value\n1795000000,a,1\n1795000001,a,2\n")
    done = run_upload(rx.api_base, recording, bucket=None)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"upload: {recording} does not say which bucket its rows go to (an ISStreamer "
        f"recording does not): give one, with --bucket-name NAME on the command line or "
        f"bucket_name=... in Python"]
    assert rx.events() == []
    sent = run_upload(rx.api_base, recording, bucket="Old run")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "skipped" not in sent.stdout
    assert [e["value"] for e in rx.events()] == [1, 2]


def test_a_setting_error_in_demo_is_one_line(tmp_path):
    (tmp_path / "isstreamer.ini").write_text("[isstreamer.client_config]\ndebug_level = 9\n")
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "demo", "--points", "1"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=dict(CLEAN_ENV, HOME=str(tmp_path)))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("demo: "), done.stderr
    assert "debug_level" in done.stderr


def test_demo_online_without_an_access_key_names_the_option_in_one_line(tmp_path):
    """It said 'offline = False (keyword argument)' and 'leave offline out': the user typed
    --online, and there is no keyword to leave out on the command line."""
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "demo", "--online",
                           "--points", "1"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=dict(CLEAN_ENV, HOME=str(tmp_path)))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        "demo: offline = False (--online) but there is no access key, so nothing could be "
        "sent. Fix: set IS_ACCESS_KEY (or access_key under [isstreamer.client_config] in "
        "isstreamer.ini), or leave --online out to record locally"]



@pytest.mark.parametrize("points", ["0", "-1"])
def test_demo_refuses_fewer_than_one_point_in_one_line(tmp_path, points):
    """--points 0 and -1 were taken, and said 'logged 1 events' (the status alone)."""
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "demo", "--points",
                           points], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=dict(CLEAN_ENV, HOME=str(tmp_path)))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == (f"python -m isstreamer_jupyter demo: error: argument "
                                            f"--points: must be at least 1, got {points}")
    assert not (tmp_path / "build").exists()


@pytest.mark.parametrize("spool", [True, False])
def test_demo_online_that_delivers_nothing_says_so_and_exits_1(tmp_path, spool):
    """Against a service that is down it printed 'sent 0 events' and exited 0."""
    import socket

    with socket.socket() as free:  # (a port no one listens on)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    api_base = f"http://127.0.0.1:{port}/api"
    env = dict(CLEAN_ENV, HOME=str(tmp_path), IS_ACCESS_KEY=KEY, IS_API_BASE=api_base,
               IS_SPOOL_DIR=str(tmp_path / "spool"), IS_SPOOL=str(spool), IS_FLUSH_TIMEOUT="1")
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "demo", "--points", "1",
                           "--online"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sent 0 events to" in done.stdout
    where = (f"they wait in the spool {tmp_path / 'spool' / 'spool.sqlite3'}; send them "
             f"with `python -m isstreamer_jupyter spool send`, or the next Streamer with the "
             f"same access key and API base sends them" if spool else
             "they are lost as it closes (spool = False from environment variable IS_SPOOL "
             "keeps events in memory only)")
    last = done.stderr.splitlines()[-1]
    assert last.startswith("demo: 4 events not delivered: none acknowledged for 1 s ("), last
    assert last.endswith(
        f"); {where}. Fix: check that the service at {api_base} (environment variable "
        f"IS_API_BASE) answers, then run it again"), last
    assert KEY not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_demo_online_with_a_refused_key_says_the_key_s_fix_and_who_sends_them(tmp_path,
                                                                               make_receiver):
    """After a refused key its last line said the same key would send them, and blamed the
    service ('check that the service ... answers'), under the note saying otherwise."""
    rx = make_receiver(access_keys={"ist_the_right_key_123"})
    env = dict(CLEAN_ENV, HOME=str(tmp_path), IS_ACCESS_KEY=KEY, IS_API_BASE=rx.api_base,
               IS_SPOOL_DIR=str(tmp_path / "spool"), IS_FLUSH_TIMEOUT="2", IS_MAX_RPS="0")
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "demo", "--points", "1",
                           "--online"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("demo: the service refused the access key (401). Fix: check the "
                           "access key (IS_ACCESS_KEY"), last
    assert last.endswith(f"; 4 events not delivered; they wait in the spool "
                         f"{tmp_path / 'spool' / 'spool.sqlite3'}; fix the access key, then "
                         f"send them with `python -m isstreamer_jupyter spool send`; or the "
                         f"next Streamer on their bucket with the same API base and the right "
                         f"access key sends them"), last
    assert last.count("Fix:") == 1 and "service at" not in last, last
    assert KEY not in done.stdout + done.stderr


def test_timeout_is_the_uploads_bound_even_when_the_service_never_answers(tmp_path,
                                                                          make_receiver):
    """--timeout 3 against a service that takes 30 s ran for 13 s and more: the request that
    filled a batch waited out the HTTP timeout (10 s) before the upload's own wait began."""
    from isstreamer_jupyter.receiver import Faults

    rx = make_receiver(faults=Faults(latency=30))
    recording = tmp_path / "rec.csv"
    recording.write_text("".join(f"{1795000000 + i},a,{i}\n" for i in range(20)))
    started = time.monotonic()
    done = run_upload(rx.api_base, recording, "--timeout", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - started < 3 + 5  # (the bound, and a process's start and end)
    assert "retrying in" not in done.stderr


def test_an_upload_s_progress_files_are_its_owner_s_alone(tmp_path, make_receiver, monkeypatch):
    """Under umask 000 (which would leave them 666): the progress file, the .tmp it is
    written through and the lock are 600 whenever they are there, as the spool's files."""
    import stat

    from isstreamer_jupyter import _offline
    from isstreamer_jupyter.__main__ import main

    rx = make_receiver()
    recording = tmp_path / "rec.csv"
    recording.write_text("1795000000,a,1\n1795000001,a,2\n")
    monkeypatch.chdir(tmp_path)
    for name, value in {"IS_ACCESS_KEY": KEY, "IS_API_BASE": rx.api_base, "IS_MAX_RPS": "0",
                        "HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    replace, seen = os.replace, []

    def mode(path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    def noting_modes(src, dst):  # (each time the .tmp becomes the progress file)
        seen.append((mode(src), mode(tmp_path / "rec.csv.upload.json.lock")))
        replace(src, dst)

    monkeypatch.setattr(_offline.os, "replace", noting_modes)
    old = os.umask(0)
    try:
        assert main(["upload", "rec.csv", "--bucket-name", "CLI", "--batch-size", "1",
                     "--quiet"]) == 0
    finally:
        os.umask(old)
    assert seen == [(0o600, 0o600)] * 3  # (before sending, and after each of the two rows)
    assert mode(tmp_path / "rec.csv.upload.json") == 0o600
