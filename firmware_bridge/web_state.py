"""What the serving head shows of itself to its web page: a small state the inspection service
publishes into and the page reads as snapshots.

The service's thread calls :meth:`WebState.inspecting`, :meth:`WebState.progress`,
:meth:`WebState.verdict` and :meth:`WebState.problem` (:mod:`firmware_bridge.inspection`);
the web page's thread calls :meth:`WebState.snapshot`. Choices, so that the page never slows
the verdict:

* a publish is a few assignments under one lock and never raises (a page is a by-product);
  nothing is rendered, read from disk or copied at length on the service's side: a verdict is
  kept as its record (:meth:`edge.verdict.Verdict.to_dict`, already made for the journal);
* the snapshot is a copy taken under the lock, so the page renders outside it;
* the last ``keep`` verdicts only (default 20), and the shift's times as running sums.

"The shift" is the serve process's life: counts start at zero when ``serve`` starts.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger("glass-inspect.web")

READY, BUSY, ERROR = "ready", "busy", "error"


@dataclass(frozen=True)
class Shown:
    """One verdict as the page shows it."""

    verdict_id: int
    record: dict  # Verdict.to_dict(): status, reason, defects (mm), rois...
    seconds: float  # from the start of the inspection to the verdict
    at: float  # time.time() of the verdict

    @property
    def sample_id(self) -> str:
        return self.record["sample_id"]

    @property
    def status(self) -> str:
        return self.record["status"]


@dataclass(frozen=True)
class Snapshot:
    state: str  # ready, busy or error
    sample_id: str | None  # the sample being inspected
    roi: int | None  # the RoI being taken (0-based), while busy
    rois: int | None  # RoIs of that sample
    busy_s: float | None  # how long it has been inspected
    problem: str | None  # why the state is error
    verdicts: tuple[Shown, ...]  # newest first
    counts: dict[str, int]  # PASS, FAIL, ERROR
    mean_s: float | None  # mean time per sample this shift
    last_s: float | None
    since: float  # time.time() when serving began
    version: int  # changes with every publish

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def yield_share(self) -> float | None:
        """PASS among the samples judged (PASS + FAIL); an ERROR says nothing of the glass."""
        judged = self.counts["PASS"] + self.counts["FAIL"]
        return self.counts["PASS"] / judged if judged else None

    def find(self, sample_id: str) -> Shown | None:
        return next((v for v in self.verdicts if v.sample_id == sample_id), None)


@dataclass
class WebState:
    keep: int = 20
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _verdicts: deque = field(init=False)
    _counts: dict = field(default_factory=lambda: {"PASS": 0, "FAIL": 0, "ERROR": 0})
    _sample: str | None = None
    _done: int = 0
    _total: int | None = None
    _started: float = 0.0
    _problem: str | None = None
    _seconds: float = 0.0
    _last_s: float | None = None
    _since: float = field(default_factory=time.time)
    _version: int = 0

    def __post_init__(self) -> None:
        self._verdicts = deque(maxlen=max(1, self.keep))

    # -- published by the service's thread ---------------------------------------------------
    def inspecting(self, sample_id: str) -> None:
        with self._lock:
            self._sample, self._done, self._total = sample_id, 0, None
            self._started = time.monotonic()
            self._version += 1

    def progress(self, sample_id: str, done: int, total: int) -> None:
        with self._lock:
            if sample_id == self._sample:
                self._done, self._total = done, total
                self._version += 1

    def verdict(self, verdict_id: int, record: dict, seconds: float) -> None:
        """A verdict was given (``record``: the verdict's dict, shared, never changed here)."""
        try:
            status = record["status"]
            with self._lock:
                self._verdicts.appendleft(Shown(verdict_id, record, seconds, time.time()))
                self._counts[status] = self._counts.get(status, 0) + 1
                self._seconds += seconds
                self._last_s = seconds
                if record["sample_id"] == self._sample:
                    self._sample, self._total = None, None
                self._version += 1
        except Exception:  # the page is a by-product: it never costs a verdict
            log.exception("web page: cannot show verdict %s", verdict_id)

    def problem(self, reason: str | None) -> None:
        """The head is in trouble (a stuck inspection, a journal that cannot be written), or
        no longer (None)."""
        with self._lock:
            if reason != self._problem:
                self._problem = reason
                self._version += 1

    # -- read by the page's thread -----------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._lock:
            n = sum(self._counts.values())
            busy = self._sample is not None
            state = ERROR if self._problem else BUSY if busy else READY
            return Snapshot(
                state=state, sample_id=self._sample,
                roi=min(self._done, self._total - 1) if busy and self._total else None,
                rois=self._total if busy else None,
                busy_s=time.monotonic() - self._started if busy else None,
                problem=self._problem, verdicts=tuple(self._verdicts),
                counts=copy.copy(self._counts), mean_s=self._seconds / n if n else None,
                last_s=self._last_s, since=self._since, version=self._version)
