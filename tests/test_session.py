"""The magics' Session without IPython: making, adopting and closing the session streamer.

Every streamer talks over real HTTP to a loopback receiver. Every sentence a Session returns
is checked for the access key.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from isstreamer_jupyter import ConfigError, Streamer
from isstreamer_jupyter._config import DEFAULT_BUCKET_NAME, derive_bucket_key
from isstreamer_jupyter._magics.session import Session, SessionError
from isstreamer_jupyter.receiver import Faults, Receiver

SECRET = "ik_S3SSION_access_key_4b7e2d90"


class Said:
    """Keeps every sentence the session returned, to check them for the access key."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, text: str) -> str:
        self.texts.append(text)
        return text


@pytest.fixture
def said() -> Iterator[Said]:
    keeper = Said()
    yield keeper
    assert not [t for t in keeper.texts if SECRET in t], keeper.texts


@pytest.fixture
def settings(no_settings: None, tmp_path: Path, receiver: Receiver) -> dict[str, Any]:
    """The keyword arguments of the streamers the session makes; a test may change them."""
    return {"access_key": SECRET, "api_base": receiver.api_base,
            "max_requests_per_second": 0, "flush_interval": 0.02, "progress": False,
            "spool_dir": str(tmp_path / "spool")}


@pytest.fixture
def session(settings: dict[str, Any]) -> Iterator[Session]:
    s = Session(lambda: dict(settings))
    yield s
    s.close(5)


@pytest.fixture
def user_streamer(settings: dict[str, Any]) -> Iterator[Any]:
    """A factory of the user's own streamers; each is closed at teardown."""
    made: list[Streamer] = []

    def make(bucket_name: str) -> Streamer:
        streamer = Streamer(bucket_name=bucket_name, **settings)
        made.append(streamer)
        return streamer

    yield make
    for streamer in made:
        streamer.close(5)


def test_the_session_imports_no_ipython(tmp_path: Path) -> None:
    code = ("import sys\n"
            "from isstreamer_jupyter._magics.session import Session\n"
            "s = Session(lambda: {'offline': True})\n"
            "s.streamer.log('k', 1)\n"
            "print(s.close_by_user(5))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipywidgets',"
            " 'traitlets')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={"HOME": str(tmp_path), "PATH": ""},
                         check=True).stdout
    assert out.splitlines()[-2:] == ["closed the session streamer; everything was delivered", "[]"]


# --------------------------------------------------------------------------- making
def test_the_streamer_is_made_on_first_use_from_the_settings(
        session: Session, settings: dict[str, Any], receiver: Receiver) -> None:
    settings["bucket_name"] = "Made"
    assert session.current is None
    streamer = session.streamer
    assert session.current is streamer and session.streamer is streamer
    assert session.adopted == "" and streamer.BucketName == "Made"
    streamer.log("temp", 1)
    assert session.flush(5) == "delivered (1 events sent so far)"
    assert [e["value"] for e in receiver.events(derive_bucket_key("Made"))] == [1]


def test_a_bad_setting_is_the_cores_error_naming_where_it_was_set(
        session: Session, settings: dict[str, Any]) -> None:
    settings.update(batch_size=0, given_as={"batch_size": "%config IsStreamMagics.batch_size"})
    with pytest.raises(ConfigError, match=r"batch_size = 0 from %config IsStreamMagics"):
        session.streamer  # noqa: B018
    assert session.current is None


def test_a_made_streamer_closed_elsewhere_is_made_again(session: Session) -> None:
    first = session.streamer
    first.close(5)
    second = session.streamer
    assert second is not first and not second.IsClosed and session.current is second


# --------------------------------------------------------------------------- adopting
def test_adopting_closes_the_made_streamer_and_keeps_the_users(
        session: Session, user_streamer: Any, said: Said) -> None:
    made = session.streamer
    made.log("temp", 1)
    mine = user_streamer("Mine")
    assert said(session.adopt("mine", {"mine": mine})) == "now using mine (bucket 'Mine')"
    assert made.IsClosed and session.streamer is mine and session.adopted == "mine"
    assert session.adopt("mine", {"mine": mine}) == ""  # already the session streamer
    assert said(session.close()) == "" and session.current is None
    assert not mine.IsClosed  # the user's: the session lets go of it, and no more


@pytest.mark.parametrize(("namespace", "message"), [
    ({}, "--use mine: there is no variable 'mine'; make one first: mine = Streamer(...)"),
    ({"mine": 3}, "--use mine: mine is an int, not an isstreamer_jupyter Streamer"),
    (None, "--use mine: mine is closed; make a new Streamer"),
])
def test_a_refused_adoption_keeps_the_session_streamer(
        session: Session, user_streamer: Any, namespace: dict[str, Any] | None,
        message: str) -> None:
    if namespace is None:
        closed = user_streamer("Closed")
        closed.close(5)
        namespace = {"mine": closed}
    made = session.streamer
    with pytest.raises(SessionError) as refused:
        session.adopt("mine", namespace)
    assert str(refused.value) == message
    assert session.current is made and session.adopted == "" and not made.IsClosed


def test_an_adopted_streamer_closed_by_its_user_is_refused(
        session: Session, user_streamer: Any) -> None:
    mine = user_streamer("Mine")
    session.adopt("mine", {"mine": mine})
    mine.close(5)
    with pytest.raises(SessionError, match=r"^your streamer mine is closed: `%isstream --use` "
                                           r"another, or `%isstream --close`"):
        session.streamer  # noqa: B018
    assert session.close_by_user(5).startswith("closed mine")
    assert session.streamer is not mine


# --------------------------------------------------------------------------- settings
def test_settings_apply_in_place_or_close_the_made_streamer(
        session: Session, settings: dict[str, Any], said: Said) -> None:
    streamer = session.streamer
    assert session.apply("debug_level", 1) == "" and streamer.DebugLevel == 1
    assert session.apply("batch_size", 7) == "" and streamer.BufferSize == 7
    assert session.apply("flush_interval", 0.02) == ""  # the value it has: nothing changes
    assert session.current is streamer
    settings["flush_interval"] = 0.5
    assert said(session.apply("flush_interval", 0.5)) == (
        "flush_interval changed: closed the session streamer; the next %isstream starts one "
        "with the new setting")
    assert streamer.IsClosed and session.current is None
    assert session.streamer.settings.flush_interval == 0.5


def test_an_adopted_streamer_keeps_its_own_settings(session: Session,
                                                    user_streamer: Any) -> None:
    mine = user_streamer("Mine")
    session.adopt("mine", {"mine": mine})
    assert session.apply("flush_interval", 0.5) == (
        "flush_interval applies to streamers the magics make; your streamer mine keeps its "
        "own settings")
    assert session.current is mine and mine.settings.flush_interval == 0.02


def test_apply_bucket_moves_the_open_streamer(session: Session, receiver: Receiver) -> None:
    session.apply_bucket("Run 7", None)  # no streamer yet: nothing to move
    assert session.current is None
    streamer = session.streamer
    session.apply_bucket("Run 7", None)
    assert (streamer.BucketName, streamer.BucketKey) == ("Run 7", derive_bucket_key("Run 7"))
    session.apply_bucket(None, "k7")
    assert (streamer.BucketName, streamer.BucketKey) == ("Run 7", "k7")
    streamer.log("temp", 1)
    session.flush(5)
    assert [e["value"] for e in receiver.events("k7")] == [1]


# --------------------------------------------------------------------------- closing
def test_close_by_user_says_what_it_closed(session: Session, user_streamer: Any,
                                           said: Said) -> None:
    assert said(session.close_by_user(5)) == "no session streamer to close"
    made = session.streamer
    made.log("temp", 1)
    assert said(session.close_by_user(5)) == (
        "closed the session streamer; everything was delivered")
    assert made.IsClosed and session.current is None
    mine = user_streamer("Mine")
    session.adopt("mine", {"mine": mine})
    assert said(session.close_by_user(None)) == (
        f"closed mine; everything was delivered. The next %isstream makes a streamer of its "
        f"own (its bucket: --bucket, %config, else {DEFAULT_BUCKET_NAME!r}); %isstream --use "
        f"NAME takes one of yours")
    assert mine.IsClosed and session.current is None and session.adopted == ""


def test_close_says_what_is_left_and_where(session: Session, settings: dict[str, Any],
                                           make_receiver: Any, said: Said) -> None:
    down = make_receiver(faults=Faults(p_5xx=1.0))  # every request: 503
    settings.update(api_base=down.api_base, spool=False)
    session.streamer.log("temp", 1)
    left = said(session.close(0.3))
    assert left.startswith("; close: 1 event still waiting after 0.3 s ("), left
    assert "); they are lost as it closes (spool = False from keyword argument" in left, left
    assert said(session.shutdown()) == ""  # nothing held: nothing to say


def test_shutdown_says_what_is_left(session: Session, settings: dict[str, Any],
                                    make_receiver: Any, said: Said) -> None:
    down = make_receiver(faults=Faults(p_5xx=1.0))
    settings.update(api_base=down.api_base, exit_timeout=0.3)
    session.streamer.log("temp", 1)
    out = said(session.shutdown())
    assert out.startswith("closed the session streamer; close: 1 event still waiting after "
                          "0.3 s ("), out
    assert "they wait in the spool" in out and "spool send" in out, out


def test_flush_says_what_still_waits(session: Session, settings: dict[str, Any],
                                     make_receiver: Any, said: Said) -> None:
    down = make_receiver(faults=Faults(p_5xx=1.0))
    settings.update(api_base=down.api_base)
    session.streamer.log("temp", 1)
    out = said(session.flush(0.3))
    assert out.startswith("flush: 1 event still waiting after 0.3 s ("), out
    assert "they stay queued and will be sent" in out, out
    session.close(0)


def test_redact_hides_the_access_key(session: Session) -> None:
    session.streamer  # noqa: B018
    assert SECRET not in session.redact(f"key {SECRET}")
