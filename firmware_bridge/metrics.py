"""What a serving head exposes to Prometheus (``serve --metrics HOST:PORT``; docs/metrics.md).

Two kinds of numbers:

* **observed per verdict**: the inspection service (:mod:`firmware_bridge.inspection`) calls
  :meth:`Metrics.observe` after each verdict is journaled and handed to the link, with the
  verdict and the seconds the line waited for it. Per-RoI stage times and the engine's time
  come from the verdict's RoI results (``RoiResult.timings_s``, what the pipeline measured),
  the stage moves and camera frames from the sample's ``timings_s``; nothing new is timed on
  the inspection's path.
* **collected at scrape time**: the LED watchdog (the inspector's ``health()``, the same
  report the heartbeat writes), the journal's backlog (verdicts the line has not
  acknowledged) and the free space of the journal's filesystem.

Choices:

* A registry of its own, not prometheus-client's global one: two services in one process (the
  tests) do not collide, and nothing that merely imports a library adds metrics.
* The engine's time is the ``infer`` stage of each RoI (all its tiles, in batches); the
  ``glass_inspect_roi_stage_seconds`` histogram holds the other stages, so summing both gives
  the pipeline time without counting inference twice.
* Off unless asked; the HTTP server binds 127.0.0.1 unless told otherwise. It runs in
  prometheus-client's own daemon thread, so a slow scraper never touches the verdict loop.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("glass-inspect.bridge")

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "exposition", "parse_listen", "serve_metrics"]

STATUSES = ("PASS", "FAIL", "ERROR")
# The head takes 10 RoIs in a few seconds; a stuck one times out after 300 s.
SAMPLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)
ROI_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
ENGINE_KEY = "infer"  # edge.pipeline's name for the engine's share of a RoI
ACQUISITION_KEYS = ("moves", "frames")  # edge.head: the stage's moves, the camera's frames


def parse_listen(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (on ``default_host``) -> (host, port); ValueError saying why.
    Port 0 asks for any free port."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535 or (sep and not host):
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9464) or PORT, got {text!r}")
    return host, int(port)


class Metrics:
    """The head's metrics in a registry of their own; :meth:`observe` each verdict."""

    def __init__(self, journal=None, inspector=None, service=None) -> None:
        self.journal, self.inspector, self.service = journal, inspector, service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.verdicts = Counter("glass_inspect_verdicts", "Verdicts given, by status",
                                ["status"], registry=r)
        for s in STATUSES:
            self.verdicts.labels(s)  # present at 0 from the start: rate() needs a first value
        self.inspection = Histogram(
            "glass_inspect_inspection_seconds",
            "From the start of an inspection to its journaled verdict", buckets=SAMPLE_BUCKETS,
            registry=r)
        self.stages = Histogram(
            "glass_inspect_roi_stage_seconds",
            "Pipeline stage time per RoI, as the head reports it (inference excluded)",
            ["stage"], buckets=ROI_BUCKETS, registry=r)
        self.engine = Histogram(
            "glass_inspect_engine_seconds", "The engine's inference time per RoI (all tiles)",
            buckets=ROI_BUCKETS, registry=r)
        self.acquisition = Histogram(
            "glass_inspect_acquisition_seconds",
            "Per sample: the stage's moves and the camera's frames", ["part"],
            buckets=SAMPLE_BUCKETS, registry=r)
        r.register(_AtScrape(self))

    def observe(self, verdict, seconds: float | None = None) -> None:
        """Count one verdict (an :class:`edge.verdict.Verdict`) the line waited ``seconds``
        for."""
        self.verdicts.labels(verdict.status.value).inc()
        if seconds is not None:
            self.inspection.observe(max(0.0, seconds))
        for roi in verdict.rois:
            for stage, t in roi.timings_s.items():
                if stage == ENGINE_KEY:
                    self.engine.observe(t)
                else:
                    self.stages.labels(stage).observe(t)
        for part in ACQUISITION_KEYS:
            t = verdict.timings_s.get(part)
            if t is not None:
                self.acquisition.labels(part).observe(t)

    def listener(self, entry, verdict, seconds: float) -> None:
        """The inspection service's verdict listener (``InspectionService.listeners``)."""
        self.observe(verdict, seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _AtScrape:
    """Gauges read when Prometheus asks: the LED watchdog, the backlog, the free space."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self):
        return []  # collected fresh each time; nothing to check at registration

    def collect(self):
        m = self.m
        report = getattr(m.inspector, "health", None)
        leds = None
        if report is not None:
            try:
                leds = report().get("led_watchdog")
            except Exception as exc:  # a scrape must never disturb the head
                log.warning("metrics: cannot read the inspector's health: %s", exc)
        if isinstance(leds, dict):
            yield CounterMetricFamily("glass_inspect_led_watchdog_trips",
                                      "LED watchdog trips since the head started",
                                      value=float(leds.get("trips", 0)))
            yield GaugeMetricFamily("glass_inspect_led_watchdog_recent_trips",
                                    "LED watchdog trips within the head file's window",
                                    value=float(leds.get("recent", 0)))
            yield GaugeMetricFamily("glass_inspect_head_down",
                                    "1 when the head stays down (every verdict ERROR) until "
                                    "restarted", value=float(leds.get("state") == "down"))
        j = m.journal
        if j is not None:
            backlog = _backlog(j)
            if backlog is not None:
                yield GaugeMetricFamily("glass_inspect_journal_backlog",
                                        "Verdicts the line has not acknowledged yet",
                                        value=float(backlog))
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(j.path.resolve().parent).free
                yield GaugeMetricFamily("glass_inspect_journal_disk_free_bytes",
                                        "Free space on the verdict journal's filesystem",
                                        value=float(free))
        if m.service is not None:
            yield GaugeMetricFamily("glass_inspect_inspecting",
                                    "1 while an inspection runs (or a stopped one has not "
                                    "ended)", value=float(m.service.busy_job() is not None))


def _backlog(journal) -> int | None:
    # The journal belongs to the server loop's thread; list() copies its entries in one step
    # under the GIL, and a rotation swaps the dict for a new one rather than changing it.
    for _ in range(3):
        try:
            return sum(1 for e in list(journal.by_id.values()) if not e.acked)
        except RuntimeError:  # changed size while copied: try again
            continue
    return None


# -- the process's metrics, for the web page ---------------------------------------------------

_current: Metrics | None = None
_lock = threading.Lock()


def exposition() -> bytes:
    """The serving head's metrics in the Prometheus text format (what ``/metrics`` answers);
    those of an empty registry before ``serve`` started them."""
    with _lock:
        m = _current
    return m.exposition() if m is not None else generate_latest(CollectorRegistry())


class Served:
    """A running metrics endpoint; :meth:`close` stops it."""

    def __init__(self, metrics: Metrics, httpd, thread: threading.Thread | None) -> None:
        self.metrics, self.httpd, self.thread = metrics, httpd, thread

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2] if self.httpd is not None else ("", 0)

    def attach(self, service) -> None:
        """Count the verdicts of ``service`` (an InspectionService)."""
        self.metrics.service = service
        service.listeners.append(self.metrics.listener)

    def close(self) -> None:
        global _current
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        with _lock:
            if _current is self.metrics:
                _current = None


def serve_metrics(listen: str | None, journal, inspector,
                  say: Callable[[str], None] | None = None) -> Served:
    """Make the process's :class:`Metrics` current (for :func:`exposition`) and, when
    ``listen`` (HOST:PORT) is given, serve them over HTTP at ``/metrics``. OSError when the
    address cannot be bound."""
    from prometheus_client import start_http_server

    global _current
    metrics = Metrics(journal, inspector)
    httpd = thread = None
    if listen:
        host, port = parse_listen(listen)
        httpd, thread = start_http_server(port, host, registry=metrics.registry)
        host, port = httpd.server_address[:2]
        (say or log.info)(f"metrics: http://{host}:{port}/metrics")
    with _lock:
        _current = metrics
    return Served(metrics, httpd, thread)
