"""The ``%isstream`` magics: a thin IPython front end over a session and a parser.

- :mod:`.magics`: :class:`IsStreamMagics`, its ``%config`` settings, ``load`` and ``unload``.
- :mod:`.parse`: reading the ``%isstream`` line, the ``%%isstream`` options and values.
- :mod:`.session`: :class:`Session`, which owns the session streamer. It imports no IPython.

The IPython side is imported on first use, so importing the session imports no IPython.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .session import Session, SessionError

if TYPE_CHECKING:
    from .magics import CELL_SECONDS, NOTE, SETTING_TRAITS, IsStreamMagics, load, unload
    from .parse import assigned_names, parse_value, split_line

__all__ = [
    "CELL_SECONDS",
    "NOTE",
    "SETTING_TRAITS",
    "IsStreamMagics",
    "Session",
    "SessionError",
    "assigned_names",
    "load",
    "parse_value",
    "split_line",
    "unload",
]

_HOME = {
    "CELL_SECONDS": "magics", "NOTE": "magics", "SETTING_TRAITS": "magics",
    "IsStreamMagics": "magics", "load": "magics", "unload": "magics",
    "assigned_names": "parse", "parse_value": "parse", "split_line": "parse",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next lookup is a plain one
    return value
