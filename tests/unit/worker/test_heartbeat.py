"""worker.heartbeat: the one heartbeat thread of chunks, index builds and training attempts, without servers."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from worker.heartbeat import Heartbeat, interval_for


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_it_beats_every_interval_until_stopped_and_not_after():
    beats = []
    heartbeat = Heartbeat(lambda: beats.append(time.monotonic()), 0.02, label="job j").start()
    wait_for(lambda: len(beats) >= 3)
    heartbeat.stop()
    heartbeat.join(2)
    assert not heartbeat.running
    count = len(beats)
    time.sleep(0.1)
    assert len(beats) == count
    assert all(b - a >= 0.015 for a, b in zip(beats, beats[1:]))  # at the interval, not in a busy loop


def test_the_first_beat_comes_one_interval_after_the_start():
    beats = []
    heartbeat = Heartbeat(lambda: beats.append(1), 30.0, label="job j").start()
    heartbeat.stop()  # wakes the thread at once: it ends without a beat
    heartbeat.join(2)
    assert beats == [] and not heartbeat.running


def test_as_a_context_manager_it_beats_for_the_length_of_the_block():
    beats = []
    with Heartbeat(lambda: beats.append(1), 0.01, label="job j") as heartbeat:
        assert heartbeat.running
        wait_for(lambda: len(beats) >= 2)
    heartbeat.join(2)
    assert not heartbeat.running


def test_it_stops_when_the_block_raises():
    with pytest.raises(RuntimeError), Heartbeat(lambda: None, 0.01, label="job j") as heartbeat:
        raise RuntimeError("the work failed")
    heartbeat.join(2)
    assert not heartbeat.running


def test_a_failing_beat_is_a_warning_naming_the_work_and_the_next_beat_tries_again(caplog):
    calls = []

    def beat():
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("database unreachable")

    with caplog.at_level(logging.WARNING, logger="worker.heartbeat"), \
            Heartbeat(beat, 0.01, label="index job 1234") as heartbeat:
        wait_for(lambda: len(calls) >= 4)
    heartbeat.join(2)
    failures = [r for r in caplog.records if r.name == "worker.heartbeat"]
    assert len(failures) == 2
    assert all(r.levelno == logging.WARNING and "index job 1234: heartbeat failed" in r.getMessage()
               for r in failures)


def test_its_thread_is_a_daemon_named_for_the_work():
    seen = {}

    def beat():
        seen["thread"] = threading.current_thread()

    with Heartbeat(beat, 0.01, label="job j", name="imgq-index-heartbeat"):
        wait_for(lambda: "thread" in seen)
    assert seen["thread"].daemon and seen["thread"].name == "imgq-index-heartbeat"


@pytest.mark.parametrize("timeout, at_most, expected", [
    (120, 10.0, 10.0), (20, 10.0, 5.0), (0.4, 10.0, 0.2), (120, 5.0, 5.0), (8, 5.0, 2.0),
])
def test_four_beats_fit_in_the_heartbeat_timeout_within_bounds(timeout, at_most, expected):
    assert interval_for(timeout, at_most=at_most) == expected


def test_an_interval_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="positive"):
        Heartbeat(lambda: None, 0, label="job j")


def test_its_beats_carry_the_log_context_of_the_work_that_made_it():
    from shared.core.logs import bind, current_context

    seen = []

    def beat():
        seen.append(current_context().get("job_id"))

    def work():
        bind(job_id="job-7")
        with Heartbeat(beat, 0.01, label="job job-7"):
            wait_for(lambda: seen)

    thread = threading.Thread(target=work)  # a fresh context, as a Celery task's
    thread.start()
    thread.join(5)
    assert seen and seen[0] == "job-7"
