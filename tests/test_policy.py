"""The sender's pacing and retry policy on its own: no sender, no I/O, a fake clock.

Each test tells the policy what a request's answer was and asks what it does next, as the
sender does.
"""

from __future__ import annotations

import random

import pytest

from isstreamer_jupyter._config import Settings
from isstreamer_jupyter._sender import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    CAP_PROBE_INTERVAL,
    REMEDIES,
    RESET_WAIT_CAP,
    Policy,
)
from isstreamer_jupyter._stats import State
from isstreamer_jupyter.testing import Answer, FakeClock, Outcome, RateBudget, answer

KEY = "ist_policy_test_secret_key_0123456789"
OK = answer(204)


def make(rps: float = 0.0, seed: int = 7, redact=str):
    clock = FakeClock()
    policy = Policy(Settings(max_requests_per_second=rps), clock, rng=random.Random(seed),
                    redact=redact)
    return policy, clock


def request(policy: Policy, clock: FakeClock, got: Answer, took: float = 0.0) -> float:
    """One request as the sender makes it: asked now, answered `took` s later. Returns the
    wait before the next, for a failure the policy retries; else 0."""
    policy.asked(clock.now)
    clock.advance(took)
    policy.answered(got, took)
    if got.outcome in (Outcome.RETRY, Outcome.RATE_LIMITED):
        return policy.retry(got)
    return 0.0


# ---------------------------------------------------------------- Retry-After and backoff
@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_is_at_least_honoured(status):
    policy, clock = make()
    delay = request(policy, clock, answer(status, retry_after=7))
    assert delay >= 7
    assert policy.held(clock.now) == pytest.approx(delay)
    clock.advance(6.9)
    assert policy.held(clock.now) > 0 and policy.holding()
    clock.advance(delay - 6.9)
    assert policy.held(clock.now) == 0 and not policy.holding()


def test_a_retry_after_of_0_is_no_storm():
    """A Retry-After of 0 once made a retry storm: the backoff still spaces the retries."""
    policy, clock = make()
    delays = [request(policy, clock, answer(429, retry_after=0)) for _ in range(5)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt)
        assert 0.1 * ceiling <= delay <= ceiling
    assert policy.held(clock.now) == pytest.approx(delays[-1])


def test_backoff_grows_with_full_jitter_and_is_capped():
    policy, clock = make()
    for attempt in range(1, 40):
        delay = request(policy, clock, answer(503))
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt)
        assert 0.1 * ceiling <= delay <= ceiling
        assert policy.attempt == attempt
    assert ceiling == BACKOFF_CAP


def test_the_jitter_comes_from_the_random_generator_given():
    first, clock1 = make(seed=3)
    again, clock2 = make(seed=3)
    other, clock3 = make(seed=4)
    run = [request(first, clock1, answer(503)) for _ in range(6)]
    assert run == [request(again, clock2, answer(503)) for _ in range(6)]
    assert run != [request(other, clock3, answer(503)) for _ in range(6)]


def test_the_hold_runs_from_the_answer_not_from_the_request():
    """A request that timed out took longer than the first backoffs: its retry went out at
    once when the hold ran from the request's start."""
    policy, clock = make()
    delay = request(policy, clock, answer(503), took=10.0)
    assert policy.hold_until == pytest.approx(clock.now + delay)


def test_an_accepted_answer_resets_the_attempts_and_ends_the_hold():
    policy, clock = make()
    for _ in range(4):
        request(policy, clock, answer(503))
    assert policy.attempt == 4
    policy.asked(clock.now)
    assert policy.answered(OK, 0.0) is True  # it ended a hold: delivery resumed
    assert policy.attempt == 0 and policy.held(clock.now) == 0
    first = request(policy, clock, answer(503))
    assert first <= BACKOFF_BASE * 2  # the first attempt's ceiling again
    clock.advance(first)
    assert policy.answered(OK, 0.0) is True
    assert policy.answered(OK, 0.0) is False  # no hold to end


def test_a_429_without_retry_after_waits_for_the_window_s_reset():
    policy, clock = make()
    budget = RateBudget(limit=30, remaining=0, reset=clock.wall() + 8)
    delay = request(policy, clock, answer(429, budget=budget))
    assert delay >= 8
    assert policy.hold_state is State.RATE_LIMITED and policy.hold_by_service


def test_the_wait_for_a_window_s_reset_is_capped():
    """The reset is the service's wall clock: a client clock an hour behind waited an
    hour."""
    policy, clock = make()
    budget = RateBudget(limit=30, remaining=0, reset=clock.wall() + 3600)
    assert request(policy, clock, answer(429, budget=budget)) == RESET_WAIT_CAP
    policy.resume()
    request(policy, clock, answer(204, budget=budget))
    assert policy.pace(clock.now) == pytest.approx(RESET_WAIT_CAP)


def test_the_hold_keeps_why_with_the_access_key_masked():
    policy, clock = make(redact=lambda text: text.replace(KEY, "ist_****"))
    failed = Answer(Outcome.RETRY, None, detail=f"internal error: key {KEY}")
    request(policy, clock, failed)
    assert policy.hold_why == ("internal error: key ist_****", REMEDIES[Outcome.RETRY])
    told = Answer(Outcome.RETRY, 503, detail="the service answered 503", remedy="wait")
    request(policy, clock, told)
    assert policy.hold_why == ("the service answered 503", "wait")
    assert KEY not in repr(policy.state(clock.now, backlog=True, bucket_key="b"))


# ---------------------------------------------------------------- halts
def test_the_cap_is_asked_again_every_probe_interval():
    policy, clock = make()
    policy.halt_cap(answer(402), clock.now)
    start = clock.now
    assert policy.blocked() and policy.holding()
    assert policy.halted(start)
    assert policy.halted(start + CAP_PROBE_INTERVAL - 0.001)
    assert not policy.halted(start + CAP_PROBE_INTERVAL)
    assert not policy.blocked()  # the probe goes out
    policy.halt_cap(answer(402), start + CAP_PROBE_INTERVAL)  # still capped: wait again
    assert policy.halted(start + 2 * CAP_PROBE_INTERVAL - 0.001)
    assert not policy.halted(start + 2 * CAP_PROBE_INTERVAL)


def test_a_refused_key_halts_until_the_user_resumes():
    policy, clock = make()
    policy.halt_key(answer(401))
    assert policy.key_refused() and policy.halted(clock.now + 10 * CAP_PROBE_INTERVAL)
    state, reason, remedy, until, stop = policy.state(clock.now, backlog=True, bucket_key="b")
    assert (state, stop, until) == (State.STOPPED, "access denied", None)
    assert remedy == REMEDIES[Outcome.ACCESS_DENIED] and "401" in reason
    assert policy.pace_wait() == 0  # a stop: nothing to pace
    policy.resume()
    assert not policy.key_refused() and not policy.halted(clock.now)


def test_a_stopped_bucket_stops_only_that_bucket():
    policy, clock = make()
    policy.stop_bucket("gone", answer(400))
    assert policy.state(clock.now, backlog=True, bucket_key="gone")[0] is State.STOPPED
    assert policy.state(clock.now, backlog=True, bucket_key="other")[0] is State.CONNECTING
    assert not policy.blocked() and set(policy.stopped) == {"gone"}


def test_resume_ends_a_hold_and_its_attempts():
    policy, clock = make()
    request(policy, clock, answer(503))
    request(policy, clock, answer(503))
    policy.resume()
    assert policy.attempt == 0 and policy.held(clock.now) == 0 and not policy.holding()


# ---------------------------------------------------------------- splits
def test_a_refused_batch_is_split_in_halves_until_the_service_takes_a_part():
    policy, _ = make()
    assert policy.limit(500) == 500
    policy.split(500)
    assert policy.limit(500) == 250 and not policy.split_took
    policy.split(250)  # the first half is refused too
    assert policy.limit(500) == 125
    policy.took(125)
    assert policy.split_took and policy.limit(500) == 125
    policy.took(125)  # all of the refused half's events went out: back to whole batches
    assert policy.split_limit is None and policy.limit(500) == 500


def test_a_split_ends_at_one_event():
    policy, _ = make()
    policy.split(3)
    assert policy.limit(10) == 1
    policy.split(1)
    assert policy.limit(10) == 1


def test_a_new_split_forgets_whether_the_last_one_took_part():
    policy, _ = make()
    policy.split(4)
    policy.took(2)
    policy.took(2)
    assert policy.split_took and policy.split_limit is None
    policy.split(4)
    assert not policy.split_took


# ---------------------------------------------------------------- pace and the service's wait
def test_the_pace_spaces_requests():
    policy, clock = make(rps=2)
    assert policy.pace(clock.now) == 0
    policy.asked(clock.now)
    policy.answered(OK, 0.0)
    assert policy.pace(clock.now) == pytest.approx(0.5)
    assert policy.pace_wait() == pytest.approx(0.5) and policy.holding()
    clock.advance(0.2)
    assert policy.pace(clock.now) == pytest.approx(0.3)
    clock.advance(0.3)
    assert policy.pace(clock.now) == 0 and not policy.holding()


def test_a_spent_window_waits_for_its_reset():
    policy, clock = make()
    spent = answer(204, budget=RateBudget(limit=30, remaining=0, reset=clock.wall() + 5))
    request(policy, clock, spent)
    assert policy.pace(clock.now) == pytest.approx(5.05)  # and a little after the reset
    assert policy.pace_wait() == 0  # the pace alone does not ask it
    state, reason, _, until, _ = policy.state(clock.now, backlog=True, bucket_key="b")
    assert state is State.RATE_LIMITED and "30 requests a window" in reason
    assert until == pytest.approx(clock.wall() + 5.05)
    assert policy.state(clock.now, backlog=False, bucket_key="b")[0] is State.ONLINE


def test_the_service_wait_counts_only_what_the_service_asked():
    """The end-of-run wait does not stall while the service asks it to wait."""
    policy, clock = make()
    assert policy.service_wait() == 0
    delay = request(policy, clock, answer(429, retry_after=30))
    assert policy.service_wait() == pytest.approx(delay)
    clock.advance(10)
    assert policy.service_wait() == pytest.approx(delay - 10)
    clock.advance(delay)
    assert policy.service_wait() == 0
    request(policy, clock, answer(503))  # our own backoff: not the service's wait
    assert policy.held(clock.now) > 0 and policy.service_wait() == 0
    policy.resume()
    spent = answer(204, budget=RateBudget(limit=30, remaining=0, reset=clock.wall() + 4))
    request(policy, clock, spent)
    assert policy.service_wait() == pytest.approx(4.05)


def test_a_503_retry_after_is_the_service_s_wait_only_when_it_is_the_longer():
    policy, clock = make()
    delay = request(policy, clock, answer(503, retry_after=BACKOFF_CAP + 1))
    assert delay == BACKOFF_CAP + 1 and policy.hold_by_service
    assert policy.hold_state is State.BACKING_OFF
    policy.resume()
    for _ in range(10):  # the backoff's ceiling, 20 s, is over the service's 0.01
        delay = request(policy, clock, answer(503, retry_after=0.01))
    assert delay > 0.01 and not policy.hold_by_service and policy.service_wait() == 0


# ---------------------------------------------------------------- the time, by cause
def test_the_time_between_requests_is_put_down_to_its_cause():
    policy, clock = make(rps=2)
    request(policy, clock, OK, took=0.1)
    policy.pace_gap()  # a ready batch waits for the pace
    clock.advance(0.4)
    service = request(policy, clock, answer(429, retry_after=7), took=0.1)
    clock.advance(service)
    backoff = request(policy, clock, answer(503), took=0.1)
    clock.advance(backoff)
    request(policy, clock, OK, took=0.1)
    timing = policy.timing
    assert timing["sending"] == pytest.approx(0.4)
    assert timing["pace"] == pytest.approx(0.4)
    assert timing["service"] == pytest.approx(service)
    assert timing["backoff"] == pytest.approx(backoff)


def test_a_spent_window_s_gap_is_the_service_s():
    policy, clock = make(rps=2)
    request(policy, clock, answer(204, budget=RateBudget(30, 0, clock.wall() + 3)))
    policy.pace_gap()
    policy.pace_gap()  # asked again in the next round: still one gap
    clock.advance(3)
    request(policy, clock, OK)
    assert policy.timing["service"] == pytest.approx(3) and policy.timing["pace"] == 0


# ---------------------------------------------------------------- the state
def test_the_state_through_a_failure_and_back():
    policy, clock = make()
    assert policy.state(clock.now, backlog=True, bucket_key="b")[0] is State.CONNECTING
    delay = request(policy, clock, answer(503))
    state, reason, remedy, until, stop = policy.state(clock.now, backlog=True, bucket_key="b")
    assert (state, reason, remedy, stop) == (State.BACKING_OFF, "the service answered 503",
                                             REMEDIES[Outcome.RETRY], "")
    assert until == pytest.approx(clock.wall() + delay)
    clock.advance(delay)  # the retry is out: still backing off, with no countdown
    assert policy.state(clock.now, backlog=True, bucket_key="b")[:4] == (
        State.BACKING_OFF, "the service answered 503", REMEDIES[Outcome.RETRY], None)
    request(policy, clock, OK)
    assert policy.state(clock.now, backlog=True, bucket_key="b")[0] is State.ONLINE
