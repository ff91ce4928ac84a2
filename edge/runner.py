"""A run of the head: N samples one after the other, each verdict beside its ground truth.

What ``glass-inspect run`` does, as a library function the command only calls. Where the glass
comes from depends on the head: a simulated head places its own (random samples from a seed,
or recorded ones to replay), a real head inspects whatever the operator put on the stage and
calls ``between(k)`` before every sample after the first, so the operator can change it.
The ground truth, where the head knows it, is judged against the verdict
(:func:`edge.truth.agreement`): ``agrees``, ``MISSED`` or ``FALSE ALARM``.
A head that stays down (too many LED watchdog trips, a failed self-test of its ring) would
answer every later sample with the same ERROR: the run stops there and says why.
With ``[review]`` in the head file, the samples its rules keep are written for review in the
background (:mod:`edge.review`); the run ends when the last of them is written.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge import review
from edge.assembly import Assembly
from edge.overlay import overlay_writer
from edge.truth import Sample, agreement
from edge.verdict import Status, Verdict


@dataclass
class Inspected:
    verdict: Verdict
    truth: Sample | None = None
    said: str | None = None  # the ground truth in words, judged ("1 scratch (3.2 mm) -> agrees")
    agrees: bool | None = None  # None: no truth known, or an ERROR verdict


@dataclass
class RunSummary:
    results: list[Inspected] = field(default_factory=list)
    stopped: str | None = None  # why the run ended before its last sample (the head is down)

    @property
    def counts(self) -> Counter:
        return Counter(r.verdict.status.value for r in self.results)

    @property
    def errors(self) -> int:
        return self.counts[Status.ERROR.value]

    def line(self) -> str:
        n, c = len(self.results), self.counts
        mean = sum(r.verdict.timings_s.get("sample", 0.0) for r in self.results) / max(1, n)
        optics = sum(r.verdict.timings_s.get("acquisition", 0.0)
                     for r in self.results) / max(1, n)
        text = f"{n} sample{'s' if n != 1 else ''}: {c['PASS']} PASS, {c['FAIL']} FAIL, " \
               f"{c['ERROR']} ERROR"
        judged = [r.agrees for r in self.results if r.agrees is not None]
        if judged:
            text += f"; verdict agrees with the ground truth on {sum(judged)} of {len(judged)}"
        text += f"; {mean:.1f} s per sample, of which the stage and camera need {optics:.1f} s"
        return text + (f"; stopped early: {self.stopped}" if self.stopped else "")


def sample_id(k: int, started: float | None = None) -> str:
    """The id of the ``k``-th sample of a run on a real head: when the run started, and k."""
    return time.strftime("S%Y%m%d-%H%M%S", time.localtime(started)) + f"-{k + 1}"


def run_head(asm: Assembly, samples: int, *, seed: int = 0, overlay_dir: str | Path | None = None,
             between: Callable[[int], None] | None = None,
             status: Callable[[str, str], None] | None = None,
             roi_done: Callable[[], None] | None = None,
             on_result: Callable[[Inspected], None] | None = None,
             abort: threading.Event | None = None) -> RunSummary:
    """Inspect ``samples`` samples on the head of ``asm``.

    ``status(sample_id, what)`` hears what the head is doing, ``roi_done()`` each RoI through
    the pipeline, ``on_result`` each sample's result as it comes. An ``abort`` set between
    samples ends the run early."""
    summary = RunSummary()
    started = time.time()
    keeper = review.for_head(asm, seed=seed)  # None without [review] in the head file
    try:
        for k in range(samples):
            if abort is not None and abort.is_set():
                break
            if asm.glass is not None:
                sid, truth = asm.glass.next(k, seed)
            else:
                if k and between is not None:
                    between(k)
                sid, truth = sample_id(k, started), None
            on_roi = overlay_writer(Path(overlay_dir) / sid, asm.cfg) if overlay_dir else None
            if keeper is not None:  # the RoIs' frames and scores, by reference, for review
                on_roi = keeper.collector(on_roi)
            v = asm.head.inspect(
                sid, abort, progress=(lambda done, total: roi_done()) if roi_done else None,
                on_roi=on_roi, truth=truth,
                status=(lambda text, s=sid: status(s, text)) if status else None)
            if keeper is not None:  # queues the sample when it is kept; never waits
                keeper.finish(on_roi, v, asm.head, truth)
            r = Inspected(v, truth)
            if truth is not None:
                flagged = None if v.status is Status.ERROR else v.status is Status.FAIL
                r.said, r.agrees = agreement(flagged, truth, asm.cfg.reject_rule.min_length_mm)
            summary.results.append(r)
            if on_result is not None:
                on_result(r)
            down = getattr(asm.head, "down", None)
            if down is not None and k + 1 < samples:
                summary.stopped = f"the head is down: {down}"
                break
    finally:
        if keeper is not None:  # the writer finishes what it has queued
            keeper.close()
    return summary
