"""The in-memory rate limit storage starts no thread per request (limits' own restarts a 10 ms
timer thread from whichever request finds the last one done) and still limits exactly."""

from __future__ import annotations

import threading

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from musicgen_train.serve.auth import limit_storage


def test_memory_limits_use_one_long_lived_sweeper_and_stay_exact(monkeypatch):
    started = []
    original = threading.Thread.start

    def counting_start(self):
        started.append(self.name)
        original(self)

    storage = limit_storage("memory://")
    assert isinstance(storage, MemoryStorage) and storage.timer.name == "rate-limit-expiry"
    assert storage.timer.daemon and storage.timer.is_alive()
    limiter = MovingWindowRateLimiter(storage)
    rate = parse("5/minute")
    monkeypatch.setattr(threading.Thread, "start", counting_start)
    results = [limiter.hit(rate, "requests", f"client-{i % 2}") for i in range(14)]
    assert started == []  # no timer thread per hit
    # each of the two clients gets exactly 5 of its 7 requests
    assert results == [True] * 10 + [False] * 4
    assert limiter.test(rate, "requests", "client-3")
