"""Stream data from Python and Jupyter notebooks to Initial State.

``from isstreamer_jupyter import Streamer`` is a drop-in for ``from ISStreamer.Streamer import
Streamer``. In IPython, ``%load_ext isstreamer_jupyter`` adds the ``%isstream`` magics.
Importing this package imports neither IPython nor ipywidgets.
"""

from __future__ import annotations

from typing import Any

from ._errors import (
    AccessDenied,
    BucketRemoved,
    CapReached,
    ConfigError,
    DeliveryError,
    EventsLost,
    FlushTimeout,
    IsStreamerError,
    IsStreamerWarning,
    RefusedValue,
    SpoolError,
    StreamerClosed,
)
from ._report import RunEnd
from ._stats import SignalStat, State, Stats
from ._streamer import Streamer
from ._version import __version__

__all__ = [
    "AccessDenied",
    "BucketRemoved",
    "CapReached",
    "ConfigError",
    "DeliveryError",
    "EventsLost",
    "FlushTimeout",
    "IsStreamerError",
    "IsStreamerWarning",
    "RefusedValue",
    "RunEnd",
    "SignalStat",
    "SpoolError",
    "State",
    "Stats",
    "Streamer",
    "StreamerClosed",
    "__version__",
    "load_ipython_extension",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext isstreamer_jupyter``: register the ``%isstream`` magics."""
    from ._magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext isstreamer_jupyter``: close the session's streamer, stop its panels."""
    from ._magics import unload

    unload(ipython)
