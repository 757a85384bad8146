"""The sender: the one background thread of a streamer, in a few rooms.

``log()`` appends ``(key, value, epoch)`` tuples to a deque; ``set_bucket`` queues a
``Bucket``, ``flush`` a ``Marker``. The rooms:

- :mod:`.loop`: the :class:`Sender` itself: its thread, rounds and requests, and stats();
- :mod:`.policy`: when to send and what to do after each answer, with no I/O;
- :mod:`.drain`: the queue into the store, log()'s spill, and failover to memory;
- :mod:`.pipeline`: the next batch taken while one is out, and the ack in its shadow;
- :mod:`.markers`: flush markers, done or failed by a stop;
- :mod:`.keeper`: the thread that keeps the queue going to the spool while a request is out;
- :mod:`.signals`: the panel's per-signal tracking;
- :mod:`.tally`: the counters stats() reads and what the sender says;
- :mod:`.base`: the small types they share.
"""

from .base import Bucket, Clock, Marker, Notify, bounded
from .drain import SPILL_WAIT, Drain
from .keeper import Keeper
from .loop import CHECKPOINT_BUSY_DELAY, CHECKPOINT_INTERVAL, Sender
from .markers import STOP_ERRORS, Markers
from .pipeline import Pipeline
from .policy import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    CAP_PROBE_INTERVAL,
    REMEDIES,
    RESET_WAIT_CAP,
    Policy,
)
from .signals import MAX_SIGNALS, SPARK_POINTS, Signals
from .tally import REFUSED_HERE, Tally

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "CAP_PROBE_INTERVAL",
    "CHECKPOINT_BUSY_DELAY",
    "CHECKPOINT_INTERVAL",
    "MAX_SIGNALS",
    "REFUSED_HERE",
    "REMEDIES",
    "RESET_WAIT_CAP",
    "SPARK_POINTS",
    "SPILL_WAIT",
    "STOP_ERRORS",
    "Bucket",
    "Clock",
    "Drain",
    "Keeper",
    "Marker",
    "Markers",
    "Notify",
    "Pipeline",
    "Policy",
    "Sender",
    "Signals",
    "Tally",
    "bounded",
]
