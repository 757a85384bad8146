"""When the sender may send, and what it does after each answer.

The pace, backoff with jitter, holds, halts and splits, and the time spent between requests
by cause. No I/O and no threads: the sender asks the policy what to do and when, and tells it
each answer. The sender's lock guards what ``stats()`` reads of it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .._config import Settings
from .._stats import State
from .._transport import Answer, Outcome, RateBudget
from .base import Clock

BACKOFF_BASE = 0.2
#: the longest wait between retries: delivery resumes within this after an outage. AWS SDKs
#: cap at 20 s too; with full jitter a long outage means one probe every ~11 s.
BACKOFF_CAP = 20.0
#: the longest wait for a rate-limit window's reset. X-RateLimit-Reset is the service's wall
#: clock, so a client clock an hour behind would wait an hour; windows are 10 s.
RESET_WAIT_CAP = 60.0
#: after a 402 the sender asks again this often, so a monthly reset lets events go out
CAP_PROBE_INTERVAL = 600.0

REMEDIES = {
    Outcome.ACCESS_DENIED: (
        "check the access key (IS_ACCESS_KEY or access_key=...); set streamer.AccessKey to the "
        "right key to resume: the held events are kept and will be sent"),
    Outcome.CAP_REACHED: (
        "the month's data points are used up: upgrade the plan or wait for the monthly reset; "
        "events are kept and sent once the service takes them again"),
    Outcome.BUCKET_REMOVED: (
        "pick a new bucket with streamer.set_bucket(bucket_name=...) (a new name means a new "
        "key); the deleted bucket's events are kept"),
    Outcome.RETRY: "nothing to do: events are kept and retried with backoff",
    Outcome.RATE_LIMITED: (
        "nothing to do: events are kept; lower max_requests_per_second if this repeats"),
    Outcome.INVALID: ("check api_base (IS_API_BASE) and the bucket key; if they are right, "
                      "please report this with the message"),
    Outcome.TOO_LARGE: "nothing to do: the batch is split",
}

#: what stats() shows: (state, reason, remedy, until, stop code)
StateView = tuple[State, str, str, float | None, str]


class Policy:
    """The sender's pacing and retry rules, and what they hold now.

    ``now`` is the clock's monotonic time as the sender read it for the round; what others
    ask between rounds reads the clock itself.
    """

    def __init__(self, settings: Settings, clock: Clock, *, rng: random.Random | None = None,
                 redact: Callable[[str], str] = str) -> None:
        self.settings = settings  # the sender replaces it when the user changes a setting
        self.clock = clock
        self.random = rng if rng is not None else random.Random()
        self.redact = redact  # the reasons it keeps never hold the access key
        self.budget: RateBudget | None = None  # the service's rate-limit window, last seen
        #: the account-wide stop: access denied, cap reached
        self.halt: Answer | None = None
        self.probe_at = 0.0  # when a cap's halt asks again
        #: buckets delivery stopped for, by key: removed, or refused at creation
        self.stopped: dict[str, Answer] = {}
        self.hold_until = 0.0  # no request before it
        self.hold_state = State.BACKING_OFF
        #: whether the service set the hold: Retry-After, a 429
        self.hold_by_service = False
        #: why the last request failed, and the fix: the state's reason until one is accepted
        self.hold_why = ("", "")
        self.attempt = 0  # failed requests in a row
        #: the batch size while a refused batch is split, the events of it left to send, and
        #: whether the service took any of them
        self.split_limit: int | None = None
        self.split_left = 0
        self.split_took = False
        self.last_request_at = -1e9
        self.ever_ok = False  # any request accepted yet
        #: seconds spent, by cause. Sending is inside requests. Between them, service is the
        #: service's Retry-After or rate window, backoff ours after a failure, pace our own.
        self.timing = {"sending": 0.0, "service": 0.0, "backoff": 0.0, "pace": 0.0}
        self.gap = ""  # what the time before the next request is spent on
        self.last_answer_at: float | None = None

    # ---------------------------------------------------------------- asked
    def blocked(self) -> bool:
        """Whether delivery is stopped for the whole account: access key, cap."""
        return self.halt is not None

    def key_refused(self) -> bool:
        """Whether delivery is stopped because the service refused the access key."""
        halt = self.halt  # read once: the sender thread may clear it meanwhile
        return halt is not None and halt.outcome is Outcome.ACCESS_DENIED

    def halted(self, now: float) -> bool:
        """Whether delivery stays stopped for the account now. A cap's stop ends once its
        probe is due: the monthly cap may have reset."""
        halt = self.halt
        if halt is None:
            return False
        if halt.outcome is Outcome.CAP_REACHED and now >= self.probe_at:
            self.halt = None
            return False
        return True

    def held(self, now: float) -> float:
        """Seconds left of a retry's hold; 0 when there is none."""
        return self.hold_until - now if now < self.hold_until else 0.0

    def pace(self, now: float) -> float:
        """Seconds before the next request may go: our pace, and a spent rate window."""
        delay = 0.0
        rps = self.settings.max_requests_per_second
        if rps > 0:
            delay = self.last_request_at + 1.0 / rps - now
        budget = self.budget
        if budget is not None and budget.remaining <= 0:  # at most the cap after the answer
            delay = max(delay, min(self.last_request_at + RESET_WAIT_CAP - now,
                                   budget.reset - self.clock.wall() + 0.05))
        return max(0.0, delay)

    def pace_gap(self) -> None:
        """A ready batch waits for the pace: the gap is the service's when its window is
        spent, else ours."""
        spent = self.budget is not None and self.budget.remaining <= 0
        self.gap = self.gap or ("service" if spent else "pace")

    def limit(self, batch_size: int) -> int:
        """The most events the next request takes."""
        return self.split_limit or batch_size

    def pace_wait(self) -> float:
        """The wait the request pace alone asks now: at most 1/max_requests_per_second. 0
        when there is none, or when something else holds: a backoff, the rate limit, a
        stop."""
        now = self.clock.monotonic()
        rps = self.settings.max_requests_per_second
        budget = self.budget
        if (rps <= 0 or self.halt is not None or now < self.hold_until
                or (budget is not None and budget.remaining <= 0)):
            return 0.0
        return max(0.0, self.last_request_at + 1.0 / rps - now)

    def service_wait(self) -> float:
        """Seconds left of a wait the service asked for: Retry-After, a 429, a spent rate
        window. 0 when there is none. Waiting at the service's pace is no stall."""
        now = self.clock.monotonic()
        if now < self.hold_until:
            return self.hold_until - now if self.hold_by_service else 0.0
        budget = self.budget
        if budget is not None and budget.remaining <= 0:
            return self.pace(now)
        return 0.0

    def holding(self) -> bool:
        """Whether a request now would be too soon: a retry waits its backoff, the rate limit
        or the pace says wait, or delivery is stopped for the account."""
        now = self.clock.monotonic()
        return self.halt is not None or now < self.hold_until or self.pace(now) > 0

    def state(self, now: float, *, backlog: bool, bucket_key: str) -> StateView:
        """Where delivery stands for `bucket_key`; `backlog`: events wait."""
        halt = self.halt or self.stopped.get(bucket_key)
        if halt is not None:
            return (State.STOPPED, self.redact(halt.detail), REMEDIES[halt.outcome], None,
                    halt.outcome.value)
        holding = now < self.hold_until
        if holding or (self.attempt and backlog):
            # a failed request is retried: the state keeps its reason until one is accepted,
            # also while the retry is out
            until = self.clock.wall() + (self.hold_until - now) if holding else None
            return self.hold_state, *self.hold_why, until, ""
        budget = self.budget
        wait = self.pace(now) if budget is not None and budget.remaining <= 0 else 0.0
        if wait > 0 and backlog:
            return (State.RATE_LIMITED, f"the service's rate limit ({budget.limit} requests a "
                    f"window) is spent until the window resets", REMEDIES[Outcome.RATE_LIMITED],
                    self.clock.wall() + wait, "")
        if not self.ever_ok:
            return State.CONNECTING, "", "", None, ""
        return State.ONLINE, "", "", None, ""

    def backoff(self) -> float:
        """Exponential backoff with full jitter, capped."""
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(self.attempt, 16))
        return self.random.uniform(0.1 * ceiling, ceiling)

    # ---------------------------------------------------------------- told
    def asked(self, now: float) -> None:
        """A request goes out: the gap before it is put down to its cause."""
        self.last_request_at = now
        if self.gap and self.last_answer_at is not None:
            self.timing[self.gap] += max(0.0, now - self.last_answer_at)
        self.gap = ""

    def answered(self, answer: Answer, took: float) -> bool:
        """The request took `took` seconds and got `answer`. True when an accepted answer
        ended a hold: delivery resumed."""
        self.last_answer_at = self.clock.monotonic()
        self.timing["sending"] += took
        if answer.budget is not None:
            self.budget = answer.budget
        if answer.outcome is not Outcome.ACCEPTED:
            return False
        self.attempt = 0
        self.ever_ok = True
        resumed = bool(self.hold_until)
        self.hold_until = 0.0
        return resumed

    def retry(self, answer: Answer) -> float:
        """A request failed and is tried again: hold until then, and return the wait. It is
        at least what the service asks: a Retry-After of 0 made a storm."""
        outcome = answer.outcome
        self.attempt += 1
        delay = self.backoff()
        if answer.retry_after is not None:
            delay = max(delay, answer.retry_after)
        if outcome is Outcome.RATE_LIMITED and answer.retry_after is None and answer.budget:
            delay = max(delay, min(RESET_WAIT_CAP, answer.budget.reset - self.clock.wall()))
        # from the answer, not from the request's start: a request that timed out took
        # longer than the first backoffs, and its retry went out at once
        self.hold_until = self.clock.monotonic() + delay
        self.hold_state = (State.RATE_LIMITED if outcome is Outcome.RATE_LIMITED
                           else State.BACKING_OFF)
        self.hold_by_service = outcome is Outcome.RATE_LIMITED or (
            answer.retry_after is not None and answer.retry_after >= delay)
        self.gap = "service" if self.hold_by_service else "backoff"
        self.hold_why = (self.redact(answer.detail), answer.remedy or REMEDIES[outcome])
        return delay

    def split(self, size: int) -> None:
        """The service refused a batch of `size` events, more than one: send it in halves
        to find the part it takes."""
        if self.split_limit is None:
            self.split_took = False
        self.split_limit = max(1, size // 2)
        self.split_left = size

    def took(self, size: int) -> None:
        """The service accepted a batch of `size` events."""
        if self.split_limit is not None:
            self.split_took = True
            self.split_left -= size
            if self.split_left <= 0:
                self.split_limit = None

    def halt_key(self, answer: Answer) -> None:
        """The service refused the access key: stop until the user sets another."""
        self.halt = answer

    def halt_cap(self, answer: Answer, now: float) -> None:
        """The month's cap is reached: stop, and ask again every CAP_PROBE_INTERVAL."""
        self.probe_at = now + CAP_PROBE_INTERVAL
        self.halt = answer

    def stop_bucket(self, bucket_key: str, answer: Answer) -> None:
        """The service removed the bucket, or would not create it: stop sending to it."""
        self.stopped[bucket_key] = answer

    def resume(self) -> None:
        """The user fixed what stopped delivery: a new key, a new bucket. Try at once."""
        self.halt = None
        self.hold_until = 0.0
        self.attempt = 0
