"""What the server drives: anything that turns a sample id into a Verdict.

The server does not know the head. It calls ``inspect(sample_id, abort, progress)`` in a worker
thread; the inspector reports ``progress(done_rois, total_rois)`` as it goes, checks ``abort``
(a ``threading.Event`` the server sets on ABORT or on a timeout) between steps and then returns
an ERROR verdict, and may raise: the server turns any exception into an ERROR verdict.

:class:`ScriptedInspector` stands in for the head in tests and line-sim demos. It is not a
constant: each sample id gets a verdict derived from its SHA-256 (mostly PASS, some FAIL with
1-3 scratches placed in the RoIs of the default 5 x 2 grid and decided by
``edge.verdict.decide``, so overlapping ones merge as on the head; a few ERROR partway through,
as a camera timeout would), takes a set time per RoI, reports progress and honours the abort.
The same sample id always gets the same verdict, so a test can check what arrived.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from edge.verdict import Defect, RoiResult, Status, Verdict, decide, error

Progress = Callable[[int, int], None]

# The default head's grid: 5 x 2 RoIs of 40 x 35 mm overlapping by 2 mm.
_COLUMNS, _ROWS, _ROI_MM, _OVERLAP_MM = 5, 2, (40.0, 35.0), 2.0


@runtime_checkable
class Inspector(Protocol):
    def inspect(self, sample_id: str, abort: threading.Event, progress: Progress) -> Verdict:
        """Inspect one sample; ERROR (never PASS) when it could not be completed."""
        ...


def _origin(index: int) -> tuple[float, float]:
    col, row = index % _COLUMNS, index // _COLUMNS
    return (col * (_ROI_MM[0] - _OVERLAP_MM), row * (_ROI_MM[1] - _OVERLAP_MM))


class HeadInspector:
    """The head of an :class:`edge.assembly.Assembly` as the server's inspector: the line has
    put glass ``sample_id`` on the stage (a simulated head places its own, seeded by the id, or
    the recording of that id), and the head inspects it. With ``[review]`` in the head file
    the samples its rules keep are written in the background (:mod:`edge.review`)."""

    def __init__(self, assembly) -> None:
        from edge.review import for_head  # the image stack: not for the line side alone

        self.assembly = assembly
        self.engine = assembly.engine.identity
        self.review = for_head(assembly)  # None without [review] in the head file

    def darken(self) -> None:
        """Every LED group dark now (on SIGTERM, before the inspection notices its abort)."""
        self.assembly.ring.all_dark()

    def health(self) -> dict:
        """What the heartbeat shows of the head: its LED watchdog (trips, ok / self-test due /
        down)."""
        out = {"led_watchdog": self.assembly.head.watchdog_health()}
        if self.review is not None:
            out["review"] = self.review.stats.to_dict()
        return out

    def inspect(self, sample_id: str, abort: threading.Event, progress: Progress) -> Verdict:
        truth = self.assembly.load_glass(sample_id)
        kept = self.review.collector() if self.review is not None else None
        v = self.assembly.head.inspect(sample_id, abort, progress, on_roi=kept, truth=truth)
        if self.review is not None:  # queues the sample when it is kept; never waits
            self.review.finish(kept, v, self.assembly.head, truth)
        return v

    def close(self) -> None:
        """Let the review writer finish the samples it has queued."""
        if self.review is not None:
            self.review.close()


class ScriptedInspector:
    """A deterministic stand-in for the head (see the module docstring).

    ``script`` overrides the rule for given sample ids: a Status (PASS, FAIL with one scratch,
    ERROR), a ready Verdict, or an exception instance to raise. ``ignore_abort`` makes it carry
    on after an abort, as a stuck head would (to test the server's bounded wait).
    """

    def __init__(self, roi_time_s: float = 0.0, rois: int = _COLUMNS * _ROWS,
                 script: Mapping[str, Status | Verdict | BaseException] | None = None,
                 fail_share: float = 0.3, error_share: float = 0.05,
                 ignore_abort: bool = False) -> None:
        if roi_time_s < 0 or rois < 1:
            raise ValueError(f"need roi_time_s >= 0 and rois >= 1, got {roi_time_s}, {rois}")
        self.roi_time_s = roi_time_s
        self.rois = rois
        self.script = dict(script or {})
        self.fail_share = fail_share
        self.error_share = error_share
        self.ignore_abort = ignore_abort
        self.engine = {"backend": "scripted", "model": "none"}

    def _plan(self, sample_id: str) -> tuple[Status, random.Random]:
        digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
        rng = random.Random(digest)
        u = rng.random()
        scripted = self.script.get(sample_id)
        if isinstance(scripted, Status):
            return scripted, rng
        if u < self.error_share:
            return Status.ERROR, rng
        return (Status.FAIL if u < self.error_share + self.fail_share else Status.PASS), rng

    def _defect(self, rng: random.Random, roi: int) -> Defect:
        ox, oy = _origin(roi)
        x0 = ox + rng.uniform(3.0, _ROI_MM[0] - 18.0)
        y0 = oy + rng.uniform(3.0, _ROI_MM[1] - 18.0)
        length = rng.uniform(0.8, 14.0)
        angle = rng.uniform(0.0, math.pi)
        x1, y1 = x0 + length * abs(math.cos(angle)), y0 + length * math.sin(angle)
        return Defect((round(x0, 3), round(y0, 3), round(x1, 3), round(y1, 3)),
                      round(length, 3), round(rng.uniform(0.76, 0.99), 4), (roi,))

    def inspect(self, sample_id: str, abort: threading.Event, progress: Progress) -> Verdict:
        scripted = self.script.get(sample_id)
        if isinstance(scripted, BaseException):
            raise scripted
        status, rng = self._plan(sample_id)
        fail_at = rng.randrange(self.rois) if status is Status.ERROR else -1
        scratched: dict[int, list[Defect]] = {}
        if status is Status.FAIL:
            for _ in range(1 if isinstance(scripted, Status) else rng.randint(1, 3)):
                roi = rng.randrange(self.rois)
                scratched.setdefault(roi, []).append(self._defect(rng, roi))
        results: list[RoiResult] = []
        progress(0, self.rois)
        for k in range(self.rois):
            if self.ignore_abort:
                time.sleep(self.roi_time_s)
            elif abort.wait(self.roi_time_s) if self.roi_time_s else abort.is_set():
                return error(sample_id, f"aborted after {k} of {self.rois} RoIs", results,
                             self.engine)
            if k == fail_at:
                return error(sample_id, f"camera timeout in RoI {k} (scripted)", results,
                             self.engine)
            results.append(RoiResult(k, _origin(k), scratched.get(k, []),
                                     {"roi": self.roi_time_s}, 1, False))
            progress(k + 1, self.rois)
        if isinstance(scripted, Verdict):
            return scripted
        return decide(sample_id, results, self.rois, self.engine, None,
                      {"total": self.roi_time_s * self.rois})
