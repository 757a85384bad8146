"""``python -m isstreamer_jupyter spool status | send | drop`` as a user runs them, after
scripts that an outage or a SIGKILL ended, against a real receiver on 127.0.0.1."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from isstreamer_jupyter._spool import fingerprint, spool_status
from isstreamer_jupyter.receiver import Receiver

KEY = "sekrit-KEY-123abc"
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("IS_")}
BUCKET = "left_behind"
EVENTS = 40
FIRST_EPOCH = 1_700_000_000


@pytest.fixture
def rx(make_receiver) -> Receiver:
    """A receiver that takes only KEY."""
    return make_receiver(access_keys=[KEY])


def user_env(tmp_path, rx: Receiver, **more: str) -> dict[str, str]:
    """A user's settings: the key, the receiver and the spool folder from the environment;
    short waits; HOME and the working folder the test's (no ini of the user's is read)."""
    env = dict(CLEAN_ENV, IS_ACCESS_KEY=KEY, IS_API_BASE=rx.api_base,
               IS_SPOOL_DIR=str(tmp_path / "spool"), IS_MAX_RPS="0", IS_TIMEOUT="1",
               IS_FLUSH_TIMEOUT="1", IS_EXIT_TIMEOUT="1", HOME=str(tmp_path))
    return {**env, **more}


def spool(tmp_path, env: dict[str, str], *args: str, stdin=None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    """One spool command, as a user runs it; the key never appears in what it says."""
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "spool", *args],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=tmp_path, stdin=subprocess.DEVNULL if stdin is None else stdin)
    assert KEY not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def run_script_in_an_outage(tmp_path, rx: Receiver) -> None:
    """A script that logs EVENTS events while the service is down, then closes and exits:
    they stay in the spool."""
    rx.outage(3600)
    script = textwrap.dedent(f"""
        from isstreamer_jupyter import Streamer
        s = Streamer(bucket_name="Left behind", bucket_key={BUCKET!r})
        for i in range({EVENTS}):
            s.log("n", i, epoch={FIRST_EPOCH} + i)
        s.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=user_env(tmp_path, rx), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stdout + done.stderr
    assert rx.events() == []
    assert spool_status(tmp_path / "spool").events == EVENTS


def row_of(status_output: str) -> list[str]:
    """The table row of BUCKET."""
    (row,) = [line for line in status_output.splitlines() if BUCKET in line]
    return row.split()


def test_status_lists_what_an_outage_ended_script_left(tmp_path, rx):
    run_script_in_an_outage(tmp_path, rx)
    path = tmp_path / "spool" / "spool.sqlite3"
    account = fingerprint(rx.api_base, KEY)[:8]
    done = spool(tmp_path, user_env(tmp_path, rx), "status")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # (a private spool: nothing to note)
    lines = done.stdout.splitlines()
    assert lines[0] == f"spool {path}"
    assert lines[1].split() == ["account", "API", "base", "bucket", "events", "oldest",
                                "newest", "bytes", "sent", "by"]
    first, last = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(FIRST_EPOCH + i))
                   for i in (0, EVENTS - 1))
    row = row_of(done.stdout)
    assert row[:6] == [f"{account}*", rx.api_base, BUCKET, "(Left", "behind)", str(EVENTS)]
    assert " ".join(row[6:10]) == f"{first} {last}"
    assert int(row[10].replace(",", "")) > 0 and row[11:] == ["no", "one"]
    assert f"{EVENTS} events wait (1 bucket, 1 account)" in done.stdout
    assert "* the account of the configured access key (environment variable IS_ACCESS_KEY)" \
        in done.stdout
    assert (f"no live process sends what waits for {account}: `python -m isstreamer_jupyter "
            f"spool send`") in done.stdout
    # With no settings but the folder: the same, no account marked as the configured one.
    plain = spool(tmp_path, dict(CLEAN_ENV, HOME=str(tmp_path)), "status", "--spool-dir",
                  str(tmp_path / "spool"))
    assert plain.returncode == 0 and row_of(plain.stdout)[0] == account
    assert "configured access key" not in plain.stdout


def test_status_says_whether_a_live_process_sends_them_then_what_a_kill_left(tmp_path, rx):
    rx.outage(3600)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from isstreamer_jupyter import Streamer
        s = Streamer(bucket_name="Left behind", bucket_key={BUCKET!r})
        for i in range({EVENTS}):
            s.log("n", i)
        print("logged", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=user_env(tmp_path, rx, IS_SPOOL_INTERVAL="0.05"), cwd=tmp_path)
    try:
        assert child.stdout.readline().strip() == "logged"
        while spool_status(tmp_path / "spool").events < EVENTS:  # (on disk within 0.05 s)
            assert child.poll() is None
            time.sleep(0.05)
        live = spool(tmp_path, user_env(tmp_path, rx), "status")
        assert live.returncode == 0
        assert row_of(live.stdout)[-2:] == ["pid", str(child.pid)]
        assert "no live process sends" not in live.stdout
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    left = spool(tmp_path, user_env(tmp_path, rx), "status")
    assert left.returncode == 0
    assert row_of(left.stdout)[5] == str(EVENTS) and row_of(left.stdout)[-2:] == ["no", "one"]
    assert "no live process sends what waits" in left.stdout


def test_status_of_an_empty_or_missing_spool_says_nothing_waits(tmp_path, rx):
    done = spool(tmp_path, user_env(tmp_path, rx), "status")
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        f"nothing waits in the spool {tmp_path / 'spool' / 'spool.sqlite3'} (there is no spool "
        f"there yet)"]
    assert not (tmp_path / "spool").exists()  # (status creates nothing)


def test_status_of_a_spool_open_to_others_notes_the_chmod(tmp_path, rx):
    run_script_in_an_outage(tmp_path, rx)
    os.chmod(tmp_path / "spool", 0o755)
    done = spool(tmp_path, user_env(tmp_path, rx), "status")
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        f"note: the spool {tmp_path / 'spool' / 'spool.sqlite3'} is open to other users (its "
        f"folder is 755), and it holds everything logged to it. Fix: chmod 700 "
        f"{tmp_path / 'spool'}"]


def test_drop_with_yes_empties_it(tmp_path, rx):
    run_script_in_an_outage(tmp_path, rx)
    done = spool(tmp_path, user_env(tmp_path, rx), "drop", "--yes")
    assert done.returncode == 0, done.stderr
    account = fingerprint(rx.api_base, KEY)[:8]
    assert done.stdout.splitlines() == [
        f"dropped {EVENTS} events waiting for account {account} (the access key from "
        f"environment variable IS_ACCESS_KEY, API base {rx.api_base}) from the spool "
        f"{tmp_path / 'spool' / 'spool.sqlite3'}"]
    after = spool(tmp_path, user_env(tmp_path, rx), "status")
    assert after.stdout.startswith("nothing waits in the spool")
    again = spool(tmp_path, user_env(tmp_path, rx), "drop", "--yes")
    assert again.returncode == 0 and "nothing to drop" in again.stdout


def test_drop_of_one_bucket_leaves_the_others(tmp_path, rx):
    run_script_in_an_outage(tmp_path, rx)
    done = spool(tmp_path, user_env(tmp_path, rx), "drop", "--bucket", "another", "--yes")
    assert done.returncode == 0 and "nothing to drop" in done.stdout
    assert f"({EVENTS} events wait for other accounts or buckets" in done.stdout
    assert spool_status(tmp_path / "spool").events == EVENTS
    done = spool(tmp_path, user_env(tmp_path, rx), "drop", "--bucket", BUCKET, "--yes")
    assert done.returncode == 0 and f"dropped {EVENTS} events" in done.stdout
    assert spool_status(tmp_path / "spool").events == 0


def drop_on_a_terminal(tmp_path, env, answer: str) -> tuple[int, str]:
    """`spool drop` with its input a terminal, answered `answer`."""
    leader, follower = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-m", "isstreamer_jupyter", "spool", "drop"],
                                 stdin=follower, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        os.write(leader, answer.encode() + b"\n")
        out, err = child.communicate(timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    assert KEY not in out + err
    return child.returncode, out + err


@pytest.mark.parametrize("answer", ["", "n", "no", "yes please"])
def test_drop_drops_nothing_unless_the_answer_is_yes(tmp_path, rx, answer):
    run_script_in_an_outage(tmp_path, rx)
    code, said = drop_on_a_terminal(tmp_path, user_env(tmp_path, rx), answer)
    assert code == 1, said
    assert f"drop {EVENTS} events waiting for account" in said and "[y/N]" in said
    assert "spool drop: nothing dropped" in said
    assert spool_status(tmp_path / "spool").events == EVENTS


@pytest.mark.parametrize("answer", ["y", "YES"])
def test_drop_asks_on_a_terminal_and_drops_on_yes(tmp_path, rx, answer):
    run_script_in_an_outage(tmp_path, rx)
    code, said = drop_on_a_terminal(tmp_path, user_env(tmp_path, rx), answer)
    assert code == 0, said
    assert f"dropped {EVENTS} events" in said
    assert spool_status(tmp_path / "spool").events == 0


def test_drop_with_no_terminal_and_no_yes_refuses_with_the_fix(tmp_path, rx):
    run_script_in_an_outage(tmp_path, rx)
    done = spool(tmp_path, user_env(tmp_path, rx), "drop")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"spool drop: it asks before dropping {EVENTS} events, but its input is not a "
        f"terminal. Fix: run it again with --yes to drop them without asking"]
    assert spool_status(tmp_path / "spool").events == EVENTS


def test_drop_with_no_key_needs_an_account_or_all(tmp_path, rx):
    """With no key configured it cannot tell whose events to drop: it says the three ways
    to choose; --account (as status shows it) and --all work without a key."""
    run_script_in_an_outage(tmp_path, rx)
    no_key = dict(CLEAN_ENV, HOME=str(tmp_path), IS_SPOOL_DIR=str(tmp_path / "spool"))
    done = spool(tmp_path, no_key, "drop", "--yes")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "spool drop: no access key is configured, so it does not know whose events to drop. "
        "Fix: set IS_ACCESS_KEY (or access_key under [isstreamer.client_config] in "
        "isstreamer.ini) to drop that account's, give --account FINGERPRINT (`spool status` "
        "lists them), or --all to drop every account's"]
    unknown = spool(tmp_path, no_key, "drop", "--account", "00000000", "--yes")
    assert unknown.returncode == 2 and "no events wait for an account of that fingerprint" \
        in unknown.stderr
    account = fingerprint(rx.api_base, KEY)[:8]
    done = spool(tmp_path, no_key, "drop", "--account", account, "--yes")
    assert done.returncode == 0
    assert done.stdout.startswith(f"dropped {EVENTS} events waiting for account {account} ")
    run_script_in_an_outage(tmp_path, rx)
    done = spool(tmp_path, no_key, "drop", "--all", "--yes")
    assert done.returncode == 0
    assert done.stdout.startswith(f"dropped {EVENTS} events waiting for every account ")


@pytest.mark.parametrize("args,says", [
    ([], "the following arguments are required"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["send", "--timeout", "0"], "argument --timeout: expected a number of seconds above 0"),
    (["send", "--timeout", "soon"], "argument --timeout: expected a number of seconds"),
    (["drop", "--all", "--account", "abc"], "not allowed with argument"),
    (["status", "--api-base", "nope"], "spool status: api_base = 'nope' from --api-base: "
                                       "expected a URL starting with http:// or https://"),
    (["drop", "--api-base", "ftp://x"], "spool drop: api_base = 'ftp://x' from --api-base"),
    (["send", "--api-base", "nope"], "spool send: api_base = 'nope' from --api-base"),
])
def test_a_usage_error_exits_2_in_a_line_saying_it(tmp_path, rx, args, says):
    done = spool(tmp_path, user_env(tmp_path, rx), *args)
    assert done.returncode == 2
    assert says in done.stderr


def test_send_with_no_access_key_exits_2_naming_where_to_set_it(tmp_path, rx):
    run_script_in_an_outage(tmp_path, rx)
    no_key = dict(CLEAN_ENV, HOME=str(tmp_path), IS_SPOOL_DIR=str(tmp_path / "spool"))
    done = spool(tmp_path, no_key, "send")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("spool send: ") and line.count("spool send:") == 1
    assert "IS_ACCESS_KEY" in line
    assert spool_status(tmp_path / "spool").events == EVENTS


def test_send_delivers_what_an_outage_left_once_the_service_is_back(tmp_path, rx):
    run_script_in_an_outage(tmp_path, rx)
    rx.outage(0)
    done = spool(tmp_path, user_env(tmp_path, rx), "send", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"spool send: {EVENTS} events delivered")
    assert [e["value"] for e in rx.events(BUCKET)] == list(range(EVENTS))  # (each once)
    assert [e["epoch"] for e in rx.events(BUCKET)] == [FIRST_EPOCH + i for i in range(EVENTS)]
    after = spool(tmp_path, user_env(tmp_path, rx), "status")
    assert after.stdout.startswith("nothing waits in the spool")


def test_send_with_the_service_still_down_exits_1_saying_why_and_what_waits(tmp_path, rx):
    run_script_in_an_outage(tmp_path, rx)
    done = spool(tmp_path, user_env(tmp_path, rx), "send", "--quiet")
    assert done.returncode == 1, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert re.search(rf"spool send: .*{EVENTS} events", said), said
    assert "connection reset" in said, said  # (what the receiver's outage does)
    assert "spool send` again" in said  # (the fix)
    assert str(tmp_path / "spool" / "spool.sqlite3") in said  # (where they wait)
    assert rx.events() == []
    assert spool_status(tmp_path / "spool").events == EVENTS


def test_send_interrupted_exits_130_and_leaves_the_rest_for_the_next_send(tmp_path, rx):
    run_script_in_an_outage(tmp_path, rx)
    env = user_env(tmp_path, rx, IS_FLUSH_TIMEOUT="600")  # (it would wait long)
    sending = subprocess.Popen([sys.executable, "-m", "isstreamer_jupyter", "spool", "send",
                                "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=tmp_path)
    tried = rx.stats()["requests"]
    try:
        while rx.stats()["requests"] == tried:  # (until it is sending, and so waiting)
            assert sending.poll() is None
            time.sleep(0.05)
    finally:
        sending.send_signal(signal.SIGINT)
        out, err = sending.communicate(timeout=30)
    assert KEY not in out + err and "Traceback" not in err, err
    assert sending.returncode == 130, (out, err)
    assert out.startswith(f"spool send: {EVENTS} events not delivered: the wait was "
                          f"interrupted"), (out, err)
    assert "spool send` again" in out
    rx.outage(0)
    done = spool(tmp_path, env, "send", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [e["value"] for e in rx.events(BUCKET)] == list(range(EVENTS))


def help_of(*command: str) -> str:
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", *command, "--help"],
                          capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


def test_the_spool_commands_are_in_the_help_and_say_their_exit_codes():
    assert "spool show, send or drop the events earlier runs left in the spool" in help_of()
    assert "status what waits, by account and bucket" in help_of("spool")
    for command in ("status", "send", "drop"):
        said = help_of("spool", command)
        assert said.startswith(f"usage: python -m isstreamer_jupyter spool {command} ")
        assert "--spool-dir DIR the spool's folder (default: the spool_dir setting" in said
    send = help_of("spool", "send")
    assert "exit codes: 0 every event that waited for the access key and API base is " \
           "delivered 1 some still wait" in send
    assert "never from the command line" in send
    drop = help_of("spool", "drop")
    assert "exit codes: 0 the events are dropped" in drop and "--yes drop without asking" in drop


def test_send_with_the_fixed_key_sends_what_a_refused_key_left(tmp_path, rx):
    """The refusal's report says: fix the access key, then `spool send`. It sent nothing:
    the refused key's events stayed under that key."""
    wrong = "ist_a_WRONG_key_456"
    script = textwrap.dedent(f"""
        from isstreamer_jupyter import Streamer
        s = Streamer(bucket_name="Left behind", bucket_key={BUCKET!r})
        for i in range({EVENTS}):
            s.log("n", i)
        s.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=user_env(tmp_path, rx, IS_ACCESS_KEY=wrong),
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fix the access key, then send them with `python -m isstreamer_jupyter spool " \
           "send`" in done.stderr, done.stderr
    assert wrong not in done.stdout + done.stderr
    sent = spool(tmp_path, user_env(tmp_path, rx), "send", "--quiet")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert [e["value"] for e in rx.events(BUCKET)] == list(range(EVENTS))
