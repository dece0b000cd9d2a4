"""Operational signals: the Prometheus metrics of this server process.

One registry per process (``REGISTRY``), served at ``/metrics`` (api/metrics_endpoint, admins
only), and by a `layerfleet worker` on a port of its own (:func:`serve_on_port`). Each server or
worker process counts what it does itself: in a scale-out deployment
every process is scraped on its own and Prometheus sums them (``sum by (…)``). The metrics are
figures of the whole process: they never name an organization, a printer or a user.

What an operator graphs to know the farm is watched:

* ``layerfleet_watching_pictures_received_total``: webcam pictures agents handed to the
  watching pipeline; ``…_frames_queued_total`` of them were due for scoring (at most one per
  printer per interval) and waited for the detector; ``…_frames_scored_total`` were scored and
  applied; ``…_frames_dropped_total`` were due but not scored because the queue was full (the
  pipeline is behind: the fleet page says so too); ``…_frames_failed_total{stage}`` were taken
  but failed (``stage``: ``detector``, ``picture``, ``apply``).
* ``layerfleet_watching_scoring_lag_seconds``: from a picture's arrival to its score being
  applied (a histogram); ``…_oldest_unscored_frame_age_seconds``: age of the oldest frame waiting
  or being scored now (0 when none waits); ``…_queue_depth`` and ``…_queue_capacity``.
* ``layerfleet_agents_connected``: printer agents holding a websocket to this process.
* ``layerfleet_job_queue_backlog{queue}``: background jobs waiting (``queue``: ``in-process``, or
  ``redis`` for the queue every process shares, so each process reports the same figure);
  ``layerfleet_jobs_running``: jobs this process runs now.
* ``layerfleet_notification_deliveries_total{channel, outcome}``: notifications sent, by channel
  (``email``, ``apprise``, ``mqtt``, ``webhook``, …) and outcome: ``delivered``, ``failed`` (an
  attempt failed and will be retried) or ``abandoned`` (given up). Count them with
  :func:`count_notification_delivery`.
* the standard ``process_*`` (CPU seconds, resident memory, open files) and ``python_*`` metrics.
"""

from __future__ import annotations

import weakref
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "AGENTS_CONNECTED",
    "CONTENT_TYPE",
    "FRAMES_DROPPED",
    "FRAMES_FAILED",
    "FRAMES_QUEUED",
    "FRAMES_SCORED",
    "JOBS_RUNNING",
    "JOB_QUEUE_BACKLOG",
    "NOTIFICATION_DELIVERIES",
    "PICTURES_RECEIVED",
    "REGISTRY",
    "SCORING_LAG",
    "SECOND_OPINIONS",
    "WATCHING_QUEUE_CAPACITY",
    "WATCHING_QUEUE_DEPTH",
    "WaitingFrames",
    "count_notification_delivery",
    "exposition",
    "track_waiting_frames",
]

# Our own registry, not prometheus_client's global one: /metrics shows what we chose, and a
# library that registers its own metrics globally cannot change it.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

CONTENT_TYPE = CONTENT_TYPE_LATEST

PICTURES_RECEIVED = Counter(
    "layerfleet_watching_pictures_received", "Webcam pictures agents handed to the watching pipeline",
    registry=REGISTRY)
FRAMES_QUEUED = Counter(
    "layerfleet_watching_frames_queued", "Pictures due for scoring that were queued for the detector",
    registry=REGISTRY)
FRAMES_SCORED = Counter(
    "layerfleet_watching_frames_scored", "Frames scored by the detector and applied to their print",
    registry=REGISTRY)
FRAMES_DROPPED = Counter(
    "layerfleet_watching_frames_dropped", "Frames due for scoring that were not scored because the queue was full",
    registry=REGISTRY)
FRAMES_FAILED = Counter(
    "layerfleet_watching_frames_failed", "Queued frames that were not scored because of an error",
    ["stage"], registry=REGISTRY)
SECOND_OPINIONS = Counter(
    "layerfleet_detection_second_opinions",
    "Frames the detector's second network scored because the first found them suspicious", registry=REGISTRY)
SCORING_LAG = Histogram(
    "layerfleet_watching_scoring_lag_seconds", "Seconds from a picture's arrival to its score being applied",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300), registry=REGISTRY)
WATCHING_QUEUE_DEPTH = Gauge(
    "layerfleet_watching_queue_depth", "Frames waiting for the detector", registry=REGISTRY)
WATCHING_QUEUE_CAPACITY = Gauge(
    "layerfleet_watching_queue_capacity", "Frames that may wait for the detector before new ones are dropped",
    registry=REGISTRY)
OLDEST_UNSCORED_AGE = Gauge(
    "layerfleet_watching_oldest_unscored_frame_age_seconds",
    "Age of the oldest frame waiting for its score (0 when none waits)", registry=REGISTRY)

AGENTS_CONNECTED = Gauge(
    "layerfleet_agents_connected", "Printer agents connected to this process over the websocket",
    registry=REGISTRY)

JOB_QUEUE_BACKLOG = Gauge(
    "layerfleet_job_queue_backlog", "Background jobs waiting to run", ["queue"], registry=REGISTRY)
JOBS_RUNNING = Gauge(
    "layerfleet_jobs_running", "Background jobs this process runs now", registry=REGISTRY)

NOTIFICATION_DELIVERIES = Counter(
    "layerfleet_notification_deliveries", "Notification delivery attempts by channel and outcome",
    ["channel", "outcome"], registry=REGISTRY)
NOTIFICATION_OUTCOMES = ("delivered", "failed", "abandoned")


def count_notification_delivery(channel: str, outcome: str) -> None:
    """Count one delivery attempt of a notification on ``channel`` (``email``, ``apprise``, …)."""
    if outcome not in NOTIFICATION_OUTCOMES:
        raise ValueError(f"outcome must be one of {NOTIFICATION_OUTCOMES}, not {outcome!r}")
    NOTIFICATION_DELIVERIES.labels(channel=channel, outcome=outcome).inc()


class WaitingFrames(Protocol):
    def oldest_waiting_seconds(self) -> float:
        """Age of the oldest frame not scored yet; 0 when none waits."""
        ...


# Weak: a pipeline that is gone (a test's app) stops counting without having to unregister.
_waiting: weakref.WeakSet[WaitingFrames] = weakref.WeakSet()


def track_waiting_frames(source: WaitingFrames) -> None:
    """Make ``source``'s oldest waiting frame part of the process's oldest-frame gauge."""
    _waiting.add(source)


def _oldest_waiting_seconds() -> float:
    return max((source.oldest_waiting_seconds() for source in list(_waiting)), default=0.0)


OLDEST_UNSCORED_AGE.set_function(_oldest_waiting_seconds)


def exposition() -> bytes:
    """The registry in Prometheus's text format."""
    return generate_latest(REGISTRY)


def serve_on_port(port: int, host: str = "127.0.0.1") -> None:
    """Serve this process's metrics over plain HTTP (a worker has no web server of its own).
    Nothing in them names an organization, printer or user; bind it where only Prometheus reaches."""
    start_http_server(port, addr=host, registry=REGISTRY)
