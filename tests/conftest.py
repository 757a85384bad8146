"""Shared fixtures. The receiver fixtures come first; other fixtures are appended below."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from isstreamer_jupyter._config import SETTINGS
from isstreamer_jupyter.receiver import Receiver


@pytest.fixture
def make_receiver() -> Iterator[Callable[..., Receiver]]:
    """A factory: ``make_receiver(**Receiver kwargs)`` returns a started receiver; all the
    receivers it made are stopped at teardown."""
    made: list[Receiver] = []

    def factory(*args: Any, **kwargs: Any) -> Receiver:
        rx = Receiver(*args, **kwargs)
        made.append(rx)
        return rx.start()

    yield factory
    for rx in made:
        rx.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A started loopback receiver with default settings, stopped after the test."""
    rx = Receiver().start()
    yield rx
    rx.stop()


@pytest.fixture
def no_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No setting from the environment or an ini file reaches a Streamer the test makes: the
    IS_* variables are unset, and the working and home folders are the test's own."""
    for setting in SETTINGS:
        for name in setting.env:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
