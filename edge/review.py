"""Samples the head keeps for people to review: which ones, in what form, within what budget,
and never in the way of a verdict.

**Which** (:func:`why_kept`, the head file's ``[review]``, :class:`edge.config.Review`): every
FAIL and every ERROR; every PASS whose peak score came within ``margin`` of ``t_high`` (the
threshold in force: the calibration's tuned one where it has one); and a random ``keep_share``
of the rest. Choice: "within the margin" is ``peak >= t_high - margin``, so a PASS that peaked
*above* ``t_high`` (a scratch shorter than the reject rule: reported, not failed) is kept too:
it is the other way a PASS can be borderline. The random draw is made only for samples no other
rule keeps, from a generator seeded once per keeper, so a seeded run keeps the same samples.

**What** (``docs/recorded_samples.md``, "Kept for review"): a recorded sample written by
:class:`edge.recording.SampleWriter` (the RAW frames, the manifest, a simulated head's
``truth.json``), plus ``scores_NN.png`` per RoI (the score map at half resolution as 8-bit
grey, ``score = -1 + 2 * v / 255``: every network's range, sigmoid or tanh, in steps of 0.008,
viewable in any image tool; :func:`read_scores`) and ``verdict.json`` (the verdict as the line
got it, with a ``review`` block: why it was kept, its peak score, the thresholds, the model's
SHA-256 and the head digest). An ERROR before the first RoI has no frames: its folder holds
``verdict.json`` alone. The RoI that made a sample ERROR (frames unlike training, a fault the
pipeline found) is kept with its frames and no score map
(:func:`edge.inspection.inspect_sample` hands refused RoIs on): what a person needs to see.

**Never in the way**: the pipeline hands each RoI's frames and score map to
:class:`Collector` as references (the head allocates a fresh frame array per RoI, a replayed
recording's are memory-mapped), so nothing is copied on the verdict's path; at the verdict,
:meth:`Keeper.finish` decides and puts the sample on a bounded queue without waiting. A
background thread writes it; when the queue is full the sample is dropped, counted and logged.
Memory cost: while ``[review]`` is on, a sample's RAW frames stay referenced until its verdict
instead of being released RoI by RoI: 6 x H x W x 2 bytes per RoI, 1.31 GB for the default head
(10 RoIs of 3504 x 3120 px) plus its float32 score maps (109 MB), and up to ``queue_size`` + 1
kept samples more while the writer works (the one being written and those queued).

**Budget**: the kept folders' bytes stay under ``budget_gb``; before a sample is written the
oldest kept samples go until it fits (oldest by when they were kept). A sample someone has
labelled (``labels.json``) is never deleted: when only labelled ones are left the new sample is
dropped and counted. A write that fails (a full disk, ``ENOSPC``; a read-only folder) is logged
and counted, its partial folder removed; the verdict was delivered before it began.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import random
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from edge.config import HeadConfig, Review
from edge.recording import SampleWriter
from edge.truth import Sample
from edge.verdict import RoiResult, Status, Verdict

log = logging.getLogger(__name__)

VERDICT = "verdict.json"
LABELS = "labels.json"  # edge.labels_sample's file: a labelled sample is never evicted
SCORES = "scores_{:02d}.png"
STAGING = ".incoming"  # samples being written; whatever is left here at start is removed
GB = 1e9
_SLACK_BYTES = 64 * 1024  # manifest, verdict, TIFF headers: what a sample adds to its arrays

FAIL, ERROR, NEAR, RANDOM = "FAIL", "ERROR", "near threshold", "random share"


def why_kept(status: Status, peak: float | None, t_high: float, margin: float,
             keep_share: float, draw: Callable[[], float]) -> str | None:
    """Why a sample with this verdict and peak score is kept (one of :data:`FAIL`,
    :data:`ERROR`, :data:`NEAR`, :data:`RANDOM`), or None. ``draw()`` gives a uniform number in
    [0, 1); it is called only for samples no other rule keeps."""
    if status is Status.FAIL:
        return FAIL
    if status is Status.ERROR:
        return ERROR
    if peak is not None and peak >= t_high - margin:
        return NEAR
    if keep_share > 0 and draw() < keep_share:
        return RANDOM
    return None


def encode_scores(score: np.ndarray) -> np.ndarray:
    """A score map as 8-bit grey: [-1, 1] onto 0..255 (:func:`decode_scores` inverts it)."""
    return np.clip(np.rint((np.asarray(score, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def decode_scores(grey: np.ndarray) -> np.ndarray:
    return grey.astype(np.float32) / 127.5 - 1.0


def read_scores(sample_dir: str | Path, index: int) -> np.ndarray | None:
    """RoI ``index``'s kept score map (H/2 x W/2 float32), or None when it was not kept."""
    path = Path(sample_dir) / SCORES.format(index)
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return decode_scores(np.asarray(im))


@dataclass
class KeptRoi:
    index: int
    origin_mm: tuple[float, float]
    frames: np.ndarray  # the pipeline's own array, not a copy
    score: np.ndarray | None
    done_at: float  # time.time() when the pipeline finished it: the fallback timestamp


class Collector:
    """One sample's RoIs by reference, as the pipeline finishes them: the head's ``on_roi``.
    ``then`` is another ``on_roi`` (the overlay writer) called after it."""

    def __init__(self, then: Callable[[RoiResult, np.ndarray], None] | None = None) -> None:
        self.rois: list[KeptRoi] = []
        self.peak: float | None = None
        self.then = then

    def __call__(self, r: RoiResult, frames: np.ndarray) -> None:
        score = r.score if isinstance(r.score, np.ndarray) else None
        if score is not None and score.size:
            # here, in the pipeline worker, while the next RoI is acquired: not at the verdict
            top = float(np.max(score))
            self.peak = top if self.peak is None else max(self.peak, top)
        self.rois.append(KeptRoi(r.index, r.origin_mm, frames, score, time.time()))
        if self.then is not None:
            self.then(r, frames)


@dataclass
class Pending:
    """A sample to write: everything by reference, gathered at the verdict."""

    verdict: Verdict
    why: str
    peak: float | None
    rois: list[KeptRoi]
    truth: Sample | None = None
    timestamps: dict[int, list[float]] = field(default_factory=dict)
    calibration_id: str | None = None
    exposures_ms: tuple[float, ...] | None = None
    review: dict = field(default_factory=dict)  # the verdict.json "review" block

    @property
    def sample_id(self) -> str:
        return self.verdict.sample_id

    @property
    def size_bytes(self) -> int:
        """What it will take on disk, near enough to keep the budget before writing."""
        return _SLACK_BYTES + sum(r.frames.nbytes + (r.score.size if r.score is not None else 0)
                                  for r in self.rois)


@dataclass
class ReviewStats:
    kept: int = 0
    bytes_written: int = 0
    dropped_queue_full: int = 0  # the writer was behind: dropped at the verdict
    dropped_budget: int = 0  # larger than the budget, or only labelled samples left to delete
    disk_errors: int = 0  # ENOSPC and other OSErrors while writing
    failed: int = 0  # anything else that kept a write from finishing
    evicted: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"kept {self.kept} sample(s), {self.bytes_written / 1e6:.1f} MB; dropped "
                f"{self.dropped_queue_full} (writer behind) and {self.dropped_budget} (budget); "
                f"{self.disk_errors} disk error(s), {self.failed} other failure(s); evicted "
                f"{self.evicted}")


def write_kept(item: Pending, staging: Path, cfg: HeadConfig) -> Path:
    """Write ``item`` as a folder under ``staging``; returns the folder. Raises on failure."""
    folder = staging / item.sample_id
    if item.rois:
        shape = item.rois[0].frames.shape[1:]
        w = SampleWriter(staging, item.sample_id, cfg, item.calibration_id, shape=shape,
                         exposures_ms=item.exposures_ms)
        if item.truth is not None:
            w.set_truth(item.truth)
        for r in sorted(item.rois, key=lambda r: r.index):
            stamps = item.timestamps.get(r.index) or [r.done_at] * len(r.frames)
            w.add_roi(r.index, r.origin_mm, np.asarray(r.frames), stamps)
            if r.score is not None:
                Image.fromarray(encode_scores(r.score)).save(folder / SCORES.format(r.index))
        w.close()
    else:
        folder.mkdir(parents=True, exist_ok=True)
    record = item.verdict.to_dict()
    record["review"] = item.review
    with (folder / VERDICT).open("w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return folder


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


_STOP = object()


class Keeper:
    """Keeps samples for review under the head file's ``[review]`` (module docstring).

    Per sample: ``c = keeper.collector(on_roi)`` is the head's ``on_roi``; after the verdict,
    ``keeper.finish(c, verdict, head, truth)``, which never raises and never waits. ``close()``
    lets the writer finish what is queued. ``write`` replaces :func:`write_kept` (tests)."""

    def __init__(self, review: Review, cfg: HeadConfig, t_high: float, *,
                 seed: int | None = None, queue_size: int = 1,
                 write: Callable[[Pending, Path, HeadConfig], Path] = write_kept) -> None:
        self.cfg, self.review = cfg, review
        self.dir = cfg.resolve(review.dir)
        self.budget_bytes = int(review.budget_gb * GB)
        self.t_high = t_high
        self.rng = random.Random(seed)
        self.stats = ReviewStats()
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._kept: deque[tuple[Path, int]] = deque()  # oldest first
        self._used = 0
        self._scan()
        self._thread = threading.Thread(target=self._run, name="review-writer", daemon=True)
        self._thread.start()

    # -- on the verdict's path --------------------------------------------------------------
    def collector(self, then: Callable[[RoiResult, np.ndarray], None] | None = None
                  ) -> Collector:
        return Collector(then)

    def finish(self, collected: Collector, verdict: Verdict, head: object = None,
               truth: Sample | None = None) -> str | None:
        """Queue the sample when a rule keeps it; why it is kept, or None (not kept, or
        dropped because the writer is behind). ``head`` (an :class:`edge.head.Head`) gives the
        frames' timestamps, exposures and calibration. Never raises, never blocks."""
        try:
            r = self.review
            why = why_kept(verdict.status, collected.peak, self.t_high, r.margin, r.keep_share,
                           self.rng.random)
            if why is None:
                return None
            item = self._pending(collected, verdict, why, head, truth)
            self._queue.put_nowait(item)
            return why
        except queue.Full:
            self.stats.dropped_queue_full += 1
            log.warning("review: %s (%s) not kept: the writer is still busy with earlier "
                        "samples (%d dropped so far)", verdict.sample_id, why,
                        self.stats.dropped_queue_full)
        except Exception:  # keeping is a by-product: it never costs a verdict
            self.stats.failed += 1
            log.exception("review: %s not kept", verdict.sample_id)
        finally:
            collected.rois = []  # a sample not kept lets its frames go now
        return None

    def _pending(self, c: Collector, v: Verdict, why: str, head: object,
                 truth: Sample | None) -> Pending:
        last = getattr(head, "last", None)
        cal = getattr(head, "calibration", None)
        exposures = getattr(head, "exposures_ms", None)
        detail = {FAIL: v.reason, ERROR: v.reason,
                  NEAR: f"PASS with peak score {c.peak:.3f}, T_high {self.t_high:g} - margin "
                        f"{self.review.margin:g}" if c.peak is not None else "",
                  RANDOM: f"random share {self.review.keep_share:g} of the rest"}[why]
        engine = v.engine or {}
        block = {"why": why, "detail": detail,
                 "peak_score": None if c.peak is None else round(c.peak, 4),
                 "t_high": self.t_high, "margin": self.review.margin,
                 "keep_share": self.review.keep_share,
                 "model_sha256": engine.get("model_sha256") or engine.get("sha256"),
                 "head_config_sha256": self.cfg.digest(),
                 "kept_utc": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                 "score_maps": SCORES.replace("{:02d}", "NN") + ": uint8, score = -1 + 2 v / 255"}
        return Pending(v, why, c.peak, c.rois, truth,
                       dict(last.timestamps) if last is not None else {},
                       cal.identity.get("sha256") if cal is not None else None,
                       tuple(exposures) if exposures is not None else None, block)

    # -- the writer thread ------------------------------------------------------------------
    def _scan(self) -> None:
        """What is already kept (oldest first) and its bytes; a staging folder left by a
        stopped writer is removed."""
        shutil.rmtree(self.dir / STAGING, ignore_errors=True)
        try:
            found = [p for p in self.dir.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and (p / VERDICT).is_file()]
        except OSError:
            return  # no folder yet (made at the first write), or unreadable: said then
        found.sort(key=lambda p: (p / VERDICT).stat().st_mtime)
        for p in found:
            size = _folder_bytes(p)
            self._kept.append((p, size))
            self._used += size

    def _make_room(self, need: int, sample_id: str) -> bool:
        if need > self.budget_bytes:
            self.stats.dropped_budget += 1
            log.error("review: %s not kept: it needs %.1f MB, more than the whole budget of "
                      "%g GB", sample_id, need / 1e6, self.review.budget_gb)
            return False
        labelled: list[tuple[Path, int]] = []
        while self._used + need > self.budget_bytes and self._kept:
            path, size = self._kept.popleft()
            if (path / LABELS).is_file():
                labelled.append((path, size))
                continue
            shutil.rmtree(path, ignore_errors=True)
            self._used -= size
            self.stats.evicted += 1
            log.info("review: budget reached: removed the oldest kept sample %s", path.name)
        self._kept.extendleft(reversed(labelled))
        if self._used + need > self.budget_bytes:
            self.stats.dropped_budget += 1
            log.error("review: %s not kept: the %g GB budget is full of labelled samples; "
                      "move them elsewhere", sample_id, self.review.budget_gb)
            return False
        return True

    def _final(self, sample_id: str) -> Path:
        """The sample's folder: its id, or ``ID~2``, ``ID~3``... when the line sent it before."""
        path, k = self.dir / sample_id, 1
        while path.exists():
            k += 1
            path = self.dir / f"{sample_id}~{k}"
        return path

    def _keep(self, item: Pending) -> None:
        if not self._make_room(item.size_bytes, item.sample_id):
            return
        staging = self.dir / STAGING
        try:
            staging.mkdir(parents=True, exist_ok=True)
            folder = self._write(item, staging, self.cfg)
            final = self._final(item.sample_id)
            folder.rename(final)
        except OSError as exc:
            self.stats.disk_errors += 1
            what = ("the disk is full" if exc.errno == errno.ENOSPC else f"cannot write: {exc}")
            log.error("review: %s not kept: %s (%s); verdicts are not affected",
                      item.sample_id, what, self.dir)
        except Exception as exc:
            self.stats.failed += 1
            log.error("review: %s not kept: %s: %s", item.sample_id, type(exc).__name__, exc)
        else:
            size = _folder_bytes(final)
            self._kept.append((final, size))
            self._used += size
            self.stats.kept += 1
            self.stats.bytes_written += size
            log.debug("review: kept %s (%s, %.1f MB)", final.name, item.why, size / 1e6)
            return
        shutil.rmtree(staging / item.sample_id, ignore_errors=True)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._keep(item)
            except Exception:  # the thread must outlive any one sample
                self.stats.failed += 1
                log.exception("review: %s not kept", item.sample_id)
            finally:
                del item  # the frames go now, not when the next sample arrives

    @property
    def used_bytes(self) -> int:
        return self._used

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float | None = 60.0) -> None:
        """Let the writer finish the queued samples (at most ``timeout_s``), then stop it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):  # still full at the deadline: said below
            self._queue.put(_STOP, timeout=timeout_s)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._thread.join(left)
        if self._thread.is_alive():
            log.warning("review: the writer did not finish within %g s; the samples it was "
                        "writing are lost (their partial folder goes at the next start)",
                        timeout_s)
        log.info("review: %s, in %s", self.stats.line(), self.dir)


def for_head(asm, seed: int | None = None, **options) -> Keeper | None:
    """The keeper of an :class:`edge.assembly.Assembly`'s head file, or None without
    ``[review]``. ``t_high`` is the one in force: the calibration's tuned one where it has
    one."""
    cfg = asm.cfg
    if cfg.review is None:
        return None
    pipeline = cfg.pipeline
    if asm.calibration is not None:
        pipeline = asm.calibration.pipeline_for(cfg)
    keeper = Keeper(cfg.review, cfg, pipeline.t_high, seed=seed, **options)
    log.info("review: keeping FAIL, ERROR, PASS peaking at %g or more and %g of the rest in %s "
             "(%.2f of %g GB used)", pipeline.t_high - cfg.review.margin, cfg.review.keep_share,
             keeper.dir, keeper.used_bytes / GB, cfg.review.budget_gb)
    return keeper
