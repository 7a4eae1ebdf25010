"""The rate limiter: one token bucket per model, shared by every run of a process and across processes.

Arrival times are taken by the stand-in when each request reaches it, so
they show what the provider would see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from statecraft import Engine, RunStatus
from statecraft.agents.limits import RateLimit, Reservation, reserve, settle
from statecraft.store.db import Database
from tests.agents.claude_machines import CONTRACT, SONNET, TASK, agent, machine
from tests.support.fake_anthropic import FakeAnthropic, json_message, usage

REPO = Path(__file__).resolve().parents[2]
FOUR_PER_SECOND = RateLimit(requests_per_minute=240)  # burst: one second's worth, 4


def _busiest(times: list[float], window_s: float) -> int:
    """The most arrivals within any span shorter than ``window_s``."""
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t - start < window_s) for i, start in enumerate(times))


def _payload(event: Any) -> dict[str, Any]:
    return json.loads(event.payload_json or "{}")  # type: ignore[no-any-return]


def test_twelve_runs_started_at_once_do_not_send_more_than_the_limit_allows(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(*[json_message(CONTRACT, model=SONNET) for _ in range(12)])
    m = machine(agent(fake_anthropic, rate_limit=FOUR_PER_SECOND))
    go = threading.Barrier(12)
    runs: list[Any] = []

    def start() -> None:
        go.wait()
        runs.append(engine.start(m, TASK))

    threads = [threading.Thread(target=start) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert [r.status for r in runs] == [RunStatus.DONE] * 12
    arrivals = [r.at for r in fake_anthropic.requests]
    assert len(arrivals) == 12
    # 4 per second with a burst of 4: 4 at once, then one every 250 ms (one more
    # in a window allowed for scheduling jitter on a loaded machine).
    offsets = sorted(round(a - min(arrivals), 3) for a in arrivals)
    assert _busiest(arrivals, 0.25) <= 6 and _busiest(arrivals, 1.0) <= 9, offsets
    assert max(arrivals) - min(arrivals) >= 1.8, offsets
    # Each wait is audited on the call's event, in the run it delayed.
    waits = sorted(
        _payload(e)["rate_limit"]["waited_ms"]
        for r in runs for e in engine.events(r.run_id) if e.event_type == "agent.called"
    )
    # (up to 2,000 ms for the last; less by however long the reservations themselves were apart)
    assert waits[:4] == [0, 0, 0, 0] and waits[-1] >= 1400, waits
    assert all(_payload(e)["rate_limit"]["key"] == f"anthropic:{SONNET}"
               for r in runs for e in engine.events(r.run_id) if e.event_type == "agent.called")


_WORKER = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, sys.argv[3])
    from statecraft import Engine
    from statecraft.agents.limits import RateLimit
    from tests.agents.claude_machines import TASK, machine, agent

    class Fake:  # only base_url is read by the helpers
        base_url = sys.argv[2]

    m = machine(agent(Fake(), rate_limit=RateLimit(requests_per_minute=240)))
    with Engine(sys.argv[1]) as engine:
        threads = [threading.Thread(target=engine.start, args=(m, TASK)) for _ in range(6)]
        for t in threads: t.start()
        for t in threads: t.join(60)
""")


def test_processes_share_the_bucket_through_the_database(fake_anthropic: FakeAnthropic, db_path: Path) -> None:
    fake_anthropic.push(*[json_message(CONTRACT, model=SONNET) for _ in range(12)])
    Database(db_path).close()  # created once, so the two processes do not race to create it
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(db_path), fake_anthropic.base_url, str(REPO)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err

    arrivals = [r.at for r in fake_anthropic.requests]
    assert len(arrivals) == 12
    offsets = sorted(round(a - min(arrivals), 3) for a in arrivals)
    assert _busiest(arrivals, 0.25) <= 6 and _busiest(arrivals, 1.0) <= 9, offsets
    assert max(arrivals) - min(arrivals) >= 1.8, offsets


def test_a_wait_longer_than_max_wait_fails_the_attempt_without_sending(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET))
    limit = RateLimit(requests_per_minute=60, max_wait=timedelta(0), key="test:max-wait")
    m = machine(agent(fake_anthropic, rate_limit=limit))

    first, second = engine.start(m, TASK), engine.start(m, TASK)

    assert first.status is RunStatus.DONE
    assert (second.status, second.error_code) == (RunStatus.FAILED, "rate_limit_wait_exceeded")
    assert len(fake_anthropic.requests) == 1  # the second was never sent
    assert not [e for e in engine.events(second.run_id) if e.event_type == "agent.called"]


def test_tokens_per_minute_are_settled_with_what_the_answer_used(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    # 6,000 tokens a minute = 100 a second. The first call really uses 5,900
    # tokens, far more than estimated: the next caller waits for that debt.
    fake_anthropic.push(
        json_message(CONTRACT, model=SONNET, usage_block=usage(5000, 900)),
        json_message(CONTRACT, model=SONNET, usage_block=usage(100, 10)),
    )
    limit = RateLimit(tokens_per_minute=6000, key="test:tpm")
    m = machine(agent(fake_anthropic, rate_limit=limit))

    first, second = engine.start(m, TASK), engine.start(m, TASK)

    [call1] = [e for e in engine.events(first.run_id) if e.event_type == "agent.called"]
    [call2] = [e for e in engine.events(second.run_id) if e.event_type == "agent.called"]
    estimate = _payload(call2)["input_tokens_estimated"]
    assert _payload(call1)["rate_limit"]["waited_ms"] == 0
    # Left after the first: 6,000 - 5,900 = 100 (plus a little refill); the second needs `estimate`.
    assert _payload(call2)["rate_limit"]["waited_ms"] >= (estimate - 100) * 10 - 300
    assert second.status is RunStatus.DONE


def test_without_a_database_the_bucket_is_the_processes() -> None:
    limit = RateLimit(requests_per_minute=120, burst=2, key="test:local")
    t0 = 10**15

    waits = [reserve(limit, limit.key or "", 0, None, now_us=t0).wait_us for _ in range(4)]

    assert waits == [0, 0, 500_000, 1_000_000]  # 2 a second, a burst of 2


def test_an_unused_estimate_is_given_back(db_path: Path) -> None:
    limit = RateLimit(tokens_per_minute=600, key="test:refund")
    with Database(db_path) as db:
        first = reserve(limit, "k", 600, db, now_us=10**15)
        settle(limit, first, 0, db)  # nothing was processed (an error answer)
        again = reserve(limit, "k", 600, db)

    assert first.wait_us == 0 and again.wait_us < 1_000_000


@pytest.mark.parametrize("bad", [
    {}, {"requests_per_minute": 0}, {"tokens_per_minute": -1}, {"requests_per_minute": 1, "burst": 0},
    {"requests_per_minute": 1, "max_wait": timedelta(seconds=-1)}, {"requests_per_minute": 1, "key": " "},
])
def test_a_bad_limit_is_refused_when_declared(bad: dict[str, Any]) -> None:
    from statecraft import DefinitionError

    with pytest.raises(DefinitionError):
        RateLimit(**bad)


def test_a_reservation_reports_its_wait_in_whole_milliseconds() -> None:
    assert Reservation("k", 250_999, 0).waited_ms == 250


def test_an_attempt_abandoned_while_waiting_for_its_slot_sends_nothing(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    import time

    fake_anthropic.push(json_message(CONTRACT, model=SONNET), json_message(CONTRACT, model=SONNET))
    limit = RateLimit(requests_per_minute=60, burst=1, key="test:abandoned")  # the second slot is 1 s away
    m = machine(agent(fake_anthropic, rate_limit=limit), timeout=timedelta(milliseconds=300))

    first = engine.start(m, TASK)
    second = engine.start(m, TASK)  # abandoned at 300 ms, its thread still asleep
    time.sleep(1.2)  # past the slot: the abandoned thread wakes up

    assert first.status is RunStatus.DONE and second.error_code == "timeout"
    assert len(fake_anthropic.requests) == 1  # the abandoned attempt did not send its request
