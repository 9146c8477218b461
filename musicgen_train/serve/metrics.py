"""Prometheus metrics of the service, in a registry of its own (one per app, so tests can build
several apps in one process)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Generations take from a fraction of a second (tiny models) to minutes (large ones on CPU).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


log = logging.getLogger(__name__)


def nan_on_error(read: Callable[[], float]) -> Callable[[], float]:
    """A gauge's reading, NaN when it fails: with the job database down, /metrics must still
    answer (a failed scrape hides every other figure; readiness says what is wrong)."""

    def value() -> float:
        try:
            return float(read())
        except Exception as err:  # any backend's error: the database is unreachable or broken
            log.debug("metrics: a gauge could not be read: %s", err)
            return math.nan

    return value


class ServiceMetrics:
    def __init__(
        self,
        queue_depth: Callable[[], float],
        ready: Callable[[], float] = lambda: 1.0,
        models_loaded: Callable[[], float] = lambda: 0.0,
    ):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "musicgen_http_requests",
            "HTTP requests by route and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "musicgen_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
        )
        self.generation_seconds = Histogram(
            "musicgen_generation_duration_seconds",
            "Wall time of one generate call (one batch of jobs)",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.active = Gauge(
            "musicgen_active_generations",
            "Jobs being generated right now",
            registry=self.registry,
        )
        self.queue = Gauge(
            "musicgen_queue_depth", "Jobs waiting in the queue", registry=self.registry
        )
        self.queue.set_function(nan_on_error(queue_depth))
        # What /health/ready says, for an alert that does not probe: 0 while the models load,
        # after a load error, or while a dead generation process is replaced.
        self.ready = Gauge(
            "musicgen_ready", "1 when models are loaded and the worker runs", registry=self.registry
        )
        self.ready.set_function(nan_on_error(ready))
        self.models_loaded = Gauge(
            "musicgen_models_loaded", "Served models loaded so far", registry=self.registry
        )
        self.models_loaded.set_function(nan_on_error(models_loaded))
        self.audio_seconds = Counter(
            "musicgen_audio_generated_seconds",
            "Seconds of audio generated",
            ["model"],
            registry=self.registry,
        )
        self.jobs = Counter(
            "musicgen_jobs_finished",
            "Finished jobs by final status",
            ["model", "status"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "musicgen_batch_size",
            "Jobs per generate call",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )

        self.generator_restarts = Counter(
            "musicgen_generator_restarts",
            "Generation processes started again after one died",
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
