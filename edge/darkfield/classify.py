"""Single dark-field images classified window by window (the weak-scratch paper's sliding window).

The attention fusion classifier (``model.attention``, exported by ``export.onnx`` with input
``frames`` ``N x 1 x 256 x 256`` float32 in [0, 1] and output ``logit`` ``N``) says of one
256 x 256 window whether it holds a scratch. This module runs it over whole images, through the
engine interface (:mod:`edge.engine`), without torch. Choices:

* **Noise.** The network works in the noise units of its camera model, and a frame a few per
  cent noisier floods it with false windows (an 8-bit file's quantisation is such noise).
  Each frame's noise is measured against the model's camera and, when off by more than 3.5 %
  from the training frames', matched to them; far off (outside 0.5-2 times) the image is an
  ERROR (:mod:`edge.darkfield.noise`). The ratio goes into the results.
* **Positive window:** ``sigmoid(logit) >= threshold``, default 0.5. The export shifts a
  classifier's logit so that 0.5 is the operating point its validation chose (best F1 on the
  validation windows; ``operating_point`` in the model's metadata, :mod:`export.onnx`), so the
  default is that point on every engine; ``--threshold`` moves it (higher: fewer false alarms).
* **Region threshold** (ours, the glass paper's T_high in spirit): one window of an image's 225
  decides its verdict, so a window-level false-alarm rate of a few per cent flags nearly every
  clean image. A region therefore counts only when its most probable window reaches the region
  threshold; the others are reported as weak and do not fail the image. The threshold is
  ``--region-threshold``, else the model's own (``region_threshold`` in its metadata, chosen on
  the validation images and written by ``glass-inspect export onnx --region-threshold``), else
  the window threshold (every region counts, the paper's rule). A TensorRT engine reads the
  metadata its sidecar copied from the ONNX model at build time (engines built before that have
  none: give the threshold on the command line, the model card says which).
* **Frames unlike the training frames** (issue 29: real frames with grain in their haze gave
  every window a probability of 0.82 or more): a model that carries the envelope of its
  training frames (``frame_envelope`` metadata, :mod:`edge.darkfield.frame_envelope`) has every
  prepared frame measured against it before any window is judged, and the share of positive
  windows after; outside it the image is ERROR with the line that names the statistic, never
  PASS or FAIL. A frame whose noise is out of the match's reach (an ERROR already) is measured
  as it is, so its line says first that it is unlike the training frames and then what the
  noise check advises. A model without an envelope is judged as before (logged once).
* **Verdict:** FAIL when any region remains, PASS when none; ERROR for an image that could not be
  classified (unreadable, wrong depth, too small, too dark, overexposed or flat to judge:
  :mod:`edge.darkfield.exposure`; unlike the training frames; the engine failed, a non-finite
  logit): never PASS for an image the network did not see whole or cannot judge.
* **Details per image** (a Bayer mosaic's gains, a matched noise, a file's notes) are logged
  with ``extra={"per_image": True}``, so that the command line can keep them off the terminal
  for a folder of hundreds of images and print a summary instead (:mod:`edge.darkfield.cli`).

Reading files is :mod:`edge.darkfield.reading`, the window grid :mod:`edge.darkfield.windows`,
regions and their contours :mod:`edge.darkfield.regions`, the overlay
:mod:`edge.darkfield.overlay`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge.darkfield import exposure
from edge.darkfield import frame_envelope as fe
from edge.darkfield.frame_prep import FramePrep, PrepError
from edge.darkfield.overlay import write_overlay
from edge.darkfield.reading import (
    ClassifyError,
    Frame,
    Input,
    _fail,
    _first_line,
    collect_inputs,
    read_image,
)
from edge.darkfield.regions import Region, merge_windows
from edge.darkfield.windows import (
    DEFAULT_BATCH,
    DEFAULT_MODEL,
    DEFAULT_THRESHOLD,
    STRIDE,
    WINDOW,
    window_origins,
)
from edge.engine.base import Engine, EngineError, open_engine
from edge.verdict import Status

log = logging.getLogger(__name__)
PER_IMAGE = {"per_image": True}  # logging extra of the details of one image (module docstring)


class ModelError(RuntimeError):
    """The classifier model is missing or is not a single-frame window classifier."""


class UnlikeTraining(ClassifyError):
    """A frame outside the model's frame envelope: ``statistic`` names the one furthest out,
    ``statistics`` holds what was measured."""

    def __init__(self, message: str, statistic: str, statistics: dict[str, float]):
        super().__init__(message)
        self.statistic, self.statistics = statistic, statistics


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Without overflow for any logit."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


@dataclass
class ImageResult:
    """What one image gave; ``error`` set (and the verdict ERROR) when it could not be
    classified."""

    path: Path
    verdict: Status
    seconds: float = 0.0
    error: str = ""
    frame: Frame | None = None
    ys: list[int] = field(default_factory=list)
    xs: list[int] = field(default_factory=list)
    probability: np.ndarray | None = None  # rows ys x columns xs
    threshold: float = DEFAULT_THRESHOLD
    regions: list[Region] = field(default_factory=list)
    mm_per_px: tuple[float, float] | None = None
    overlay: Path | None = None
    region_threshold: float | None = None  # None: the window threshold
    weak_regions: int = 0  # regions of positive windows none of which reached region_threshold
    site_gains: np.ndarray | None = None  # a Bayer mosaic's 2 x 2 site gains (mosaic)
    noise_ratio: float | None = None  # the frame's noise over the model's camera (noise)
    noise_matched: bool = False  # whether the frame's noise was matched to the model's
    haze: float | None = None  # its median above black, of full scale (exposure)
    # the frame envelope's statistics (frame_envelope), and the one outside it furthest, if any
    statistics: dict[str, float] | None = None
    unlike: str | None = None

    @property
    def windows(self) -> int:
        return 0 if self.probability is None else int(self.probability.size)

    @property
    def positive(self) -> np.ndarray:
        if self.probability is None:
            return np.zeros((0, 0), bool)
        return self.probability >= self.threshold

    @property
    def positives(self) -> int:
        return int(self.positive.sum())

    def summary(self) -> str:
        if self.verdict is Status.ERROR:
            return f"{self.path}: ERROR: {self.error}"
        n = len(self.regions)
        weak = (f", {self.weak_regions} weak region{'s' * (self.weak_regions != 1)} below p "
                f"{self.region_threshold:g} ignored" if self.weak_regions else "")
        noisy = (f", its noise matched ({self.noise_ratio:.2f} times the model camera's)"
                 if self.noise_matched else "")
        return (f"{self.path}: {self.verdict.value}, {n} region{'s' * (n != 1)} "
                f"({self.positives} of {self.windows} windows positive{weak}){noisy}, "
                f"{self.seconds:.2f} s")

    def region_lines(self) -> list[str]:
        lines = []
        for k, g in enumerate(self.regions, 1):
            x0, y0, x1, y1 = g.box_px
            text = (f"  region {k}: {g.windows} window{'s' * (g.windows != 1)}, p max "
                    f"{g.max_probability:.3f}, x {x0}-{x1} y {y0}-{y1} px")
            mm = g.box_mm(self.mm_per_px)
            if mm is not None:
                text += f" (x {mm[0]:.2f}-{mm[2]:.2f} y {mm[1]:.2f}-{mm[3]:.2f} mm)"
            lines.append(text)
        return lines

    def to_dict(self) -> dict:
        f = self.frame
        entry = {
            "path": str(self.path), "verdict": self.verdict.value,
            "seconds": round(self.seconds, 4), "error": self.error or None,
            "size_px": None if f is None else list(f.size),
            "bit_depth": None if f is None else f.bit_depth,
            "image": None if f is None else f.kind,
            "notes": [] if f is None else list(f.notes),
            "windows": self.windows if self.probability is not None else None,
            "positives": self.positives if self.probability is not None else None,
            "threshold": self.threshold,
            "region_threshold": self.region_threshold,
            "weak_regions": self.weak_regions,
            "site_gains": (None if self.site_gains is None
                           else [[round(float(g), 4) for g in row] for row in self.site_gains]),
            "noise_ratio": None if self.noise_ratio is None else round(self.noise_ratio, 4),
            "noise_matched": self.noise_matched,
            "haze": None if self.haze is None else round(self.haze, 4),
            "frame_statistics": (None if self.statistics is None else
                                 {k: _round(v) for k, v in self.statistics.items()}),
            "unlike_training": self.unlike,
            "positive_windows": [],
            "regions": [g.to_dict(self.mm_per_px) for g in self.regions],
            "overlay": None if self.overlay is None else str(self.overlay),
        }
        if self.probability is not None:
            entry["positive_windows"] = [
                {"x": self.xs[c], "y": self.ys[r],
                 "probability": round(float(self.probability[r, c]), 6)}
                for r, c in zip(*np.nonzero(self.positive), strict=True)]
        return entry


def _round(v: float) -> float | None:
    return float(f"{v:.5g}") if np.isfinite(v) else None


def _model_region_threshold(engine: Engine) -> tuple[float | None, str]:
    """The region threshold the model file carries (``region_threshold`` in an ONNX model's
    metadata, :mod:`export.onnx`) and where it came from; (None, ...) when it has none."""
    meta = engine.metadata
    text = meta.get("region_threshold")
    if text in (None, "", "null"):
        return None, ("none in the model" if meta else
                      "none (the engine carries no metadata: rebuild it, or give "
                      "--region-threshold)")
    try:
        value = float(text)
    except ValueError:
        raise ModelError(f"{engine.path.name}: its region_threshold {text!r} is not a "
                         "number") from None
    if not 0.0 <= value <= 1.0:
        raise ModelError(f"{engine.path.name}: its region_threshold {value} is outside [0, 1]")
    return value, "the model's"


def resolve_model(spec: str | Path) -> Path:
    """``shipped:NAME`` (a file in ``edge/models``, as a head file names its artifact) or a path;
    a missing file says how to make one."""
    from edge import config

    text = str(spec)
    path = config.model_path(text)
    if not path.is_file():
        what = (f"the shipped classifier {text} ({path}) is not there: none is shipped yet"
                if text.startswith(config.SHIPPED) else f"model {path} does not exist")
        raise ModelError(
            f"{what}. Make one: 'glass-inspect train --network fusion --data darkfield --out "
            "runs/fusion' (the attention fusion network on single-frame dark-field windows), "
            "'glass-inspect export onnx runs/fusion/best.pt --out FILE.onnx', and pass --model "
            "FILE.onnx (or copy it to edge/models/attention_fusion.onnx)")
    return path


class Classifier:
    """A window classifier on an engine: logits of every window of an image, then regions."""

    def __init__(self, engine: Engine, threshold: float = DEFAULT_THRESHOLD,
                 batch: int = DEFAULT_BATCH, region_threshold: float | None = None,
                 frame_envelope: bool = True):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        self.region_threshold_source = "given"
        if region_threshold is None:
            region_threshold, self.region_threshold_source = _model_region_threshold(engine)
        if region_threshold is not None and not threshold <= region_threshold <= 1.0:
            raise ValueError(f"the region threshold must be within [threshold {threshold:g}, 1], "
                             f"got {region_threshold:g}")
        self.region_threshold = region_threshold
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        spec_in, spec_out = engine.input, engine.output
        shape = spec_in.shape
        ok_in = (len(shape) == 4 and shape[1] == 1
                 and all(d in (None, WINDOW) for d in shape[2:]))
        if not ok_in or len(spec_out.shape) != 1:
            raise ModelError(
                f"{engine.path.name} takes {spec_in.describe()} and gives "
                f"{spec_out.describe()}; expected the single-frame window classifier: input "
                f"N x 1 x {WINDOW} x {WINDOW}, one logit per window (N)")
        self.engine = engine
        self.threshold = threshold
        try:
            self.prep = FramePrep.for_model(engine.metadata, f"the model {engine.path.name}")
        except PrepError as exc:
            raise ModelError(str(exc)) from None
        # False: frames are not checked (the envelope's own fit measures the training frames)
        self.envelope = self._envelope(engine) if frame_envelope else None
        self.batch = min(batch, engine.max_batch)
        self._buf = np.empty((self.batch, 1, WINDOW, WINDOW), spec_in.dtype)

    def _envelope(self, engine: Engine) -> fe.Envelope | None:
        name = engine.path.name
        try:
            envelope = fe.of_metadata(engine.metadata)
        except fe.FrameEnvelopeError as exc:
            raise ModelError(f"{name}: its {fe.METADATA_KEY} metadata {exc}; expected the one "
                             "'glass-inspect export frame-envelope' writes (run it again on the "
                             "model)") from None
        if envelope is None:
            log.info("%s carries no frame envelope (%s metadata): frames are judged without "
                     "checking that they are like its training frames", name, fe.METADATA_KEY)
        elif self.prep.sensor is None or not self.prep.noise_units:
            raise ModelError(f"{name} carries a frame envelope but does not say the camera "
                             "model it whitens its windows by (spec metadata), which the "
                             "envelope's statistics are measured in")
        return envelope

    @classmethod
    def open(cls, model: str | Path = DEFAULT_MODEL, threshold: float = DEFAULT_THRESHOLD,
             batch: int = DEFAULT_BATCH, threads: int = 0, backend: str = "auto",
             region_threshold: float | None = None, frame_envelope: bool = True
             ) -> Classifier:
        engine = open_engine(resolve_model(model), backend, threads=threads, max_batch=batch)
        try:
            return cls(engine, threshold, batch, region_threshold, frame_envelope)
        except Exception:
            engine.close()
            raise

    @property
    def identity(self) -> dict:
        return self.engine.identity

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def logits(self, pixels: np.ndarray) -> tuple[list[int], list[int], np.ndarray]:
        """Window origins (rows, columns) and the logit of every window, rows x columns."""
        h, w = pixels.shape
        ys, xs = window_origins(h), window_origins(w)
        origins = [(y, x) for y in ys for x in xs]
        logits = np.empty(len(origins), np.float32)
        buf = self._buf
        for start in range(0, len(origins), self.batch):
            chunk = origins[start:start + self.batch]
            for k, (y, x) in enumerate(chunk):
                buf[k, 0] = pixels[y:y + WINDOW, x:x + WINDOW]
            # the engine's output buffer is reused by its next call: copy out now
            logits[start:start + len(chunk)] = self.engine.infer(buf[:len(chunk)])
        return ys, xs, logits.reshape(len(ys), len(xs))

    def classify(self, frame: Frame, mm_per_px: tuple[float, float] | None = None
                 ) -> ImageResult:
        t0 = time.perf_counter()
        bayer = frame.kind == "bayer mosaic"
        try:
            prep = self.prep(frame.pixels, bayer)
        except PrepError as exc:
            self._unprepared(frame, bayer, exc)
            raise _fail(frame.path, str(exc)) from None
        if bayer:
            log.info("%s: Bayer colour sites balanced, gains %s (row by row, brightest 1)",
                     frame.path, " ".join(f"{g:.3f}" for g in prep.site_gains.ravel()),
                     extra=PER_IMAGE)
            frame = replace(frame, kind="bayer mosaic, colour sites balanced")
        if prep.noise_matched:
            log.info("%s: noise %.2f times the classifier's camera model: matched to its "
                     "training frames'", frame.path, prep.noise_ratio, extra=PER_IMAGE)
        stats = None
        if self.envelope is not None:
            stats = fe.measure(prep.pixels, self.prep.sensor)
            self._check(frame.path, stats)
        if prep.haze is not None and prep.haze > exposure.BRIGHT_HAZE:
            log.warning("%s: haze %.0f %% of full scale, brighter than %.0f %%: the classifier "
                        "fails about three times as many clean parts in such light (model card); "
                        "check the region threshold on clean parts", frame.path,
                        100 * prep.haze, 100 * exposure.BRIGHT_HAZE)
        frame = replace(frame, pixels=prep.pixels)
        ys, xs, logits = self.logits(frame.pixels)
        if not np.all(np.isfinite(logits)):
            raise _fail(frame.path, f"the model gave {int(np.sum(~np.isfinite(logits)))} "
                                    "non-finite logits; expected finite numbers (a broken "
                                    "model or engine)")
        prob = sigmoid(logits)
        if stats is not None:
            stats["window_share"] = fe.window_share(prob)
            if prob.size >= fe.MIN_SHARE_WINDOWS:  # else not judged (NaN)
                self._check(frame.path, stats, fe.AFTER_INFERENCE)
        positive = prob >= self.threshold
        found = merge_windows(positive, prob, ys, xs)
        top = self.threshold if self.region_threshold is None else self.region_threshold
        regions = [g for g in found if g.max_probability >= top]
        return ImageResult(frame.path, Status.FAIL if regions else Status.PASS,
                           time.perf_counter() - t0, frame=frame, ys=ys, xs=xs,
                           probability=prob, threshold=self.threshold, regions=regions,
                           mm_per_px=mm_per_px, region_threshold=self.region_threshold,
                           weak_regions=len(found) - len(regions),
                           site_gains=prep.site_gains, noise_ratio=prep.noise_ratio,
                           haze=prep.haze, statistics=stats,
                           noise_matched=prep.noise_matched)

    def _check(self, path: Path, stats: dict[str, float],
               names: tuple[str, ...] = fe.BEFORE_INFERENCE, also: str = "") -> None:
        """UnlikeTraining when ``stats`` of ``names`` lie outside the envelope; ``also`` ends
        its line."""
        found = fe.outside(stats, self.envelope, names)
        if found:
            raise UnlikeTraining(f"{path}: {fe.check(stats, self.envelope, names)}{also}",
                                 found[0], stats)

    def _unprepared(self, frame: Frame, bayer: bool, exc: PrepError) -> None:
        """A grey frame whose noise is out of the match's reach, measured as it is:
        UnlikeTraining with the envelope's line first and the noise check's after, when it lies
        outside the envelope. Nothing for a frame the exposure check refused (flat, saturated,
        too dark: its own advice is the point) or a mosaic that could not be balanced."""
        if self.envelope is None or bayer:
            return
        sensor = self.prep.sensor
        try:
            exposure.check(frame.pixels, sensor.black, self.prep.haze_floor)
        except exposure.ExposureError:
            return
        self._check(frame.path, fe.measure(frame.pixels, sensor), also=f"; it also {exc}")


def classify_inputs(items: Sequence[Input], classifier: Classifier, *,
                    bit_depth: int | None = None, bayer: bool = False,
                    mm_per_px: tuple[float, float] | None = None,
                    overlay_dir: str | Path | None = None) -> Iterator[ImageResult]:
    """One result per item, in order; an image that fails gives an ERROR result and the rest
    go on."""
    names: set[str] = set()
    for item in items:
        t0 = time.perf_counter()
        if item.problem:
            yield ImageResult(item.path, Status.ERROR, error=item.problem,
                              threshold=classifier.threshold)
            continue
        try:
            frame = read_image(item.path, bit_depth, bayer)
            for note in frame.notes:
                log.info("%s: %s", item.path, note, extra=PER_IMAGE)
            result = classifier.classify(frame, mm_per_px)
            if overlay_dir is not None:
                result.overlay = write_overlay(_overlay_path(Path(overlay_dir), item.path, names),
                                               result)
        except UnlikeTraining as exc:
            result = ImageResult(item.path, Status.ERROR, error=str(exc),
                                 threshold=classifier.threshold, frame=frame,
                                 statistics=exc.statistics, unlike=exc.statistic)
        except ClassifyError as exc:
            result = ImageResult(item.path, Status.ERROR, error=str(exc),
                                 threshold=classifier.threshold)
        except EngineError as exc:
            result = ImageResult(item.path, Status.ERROR, threshold=classifier.threshold,
                                 error=f"{item.path}: the engine failed ({exc})")
        except OSError as exc:  # the overlay folder: full, read-only, ...
            result = ImageResult(item.path, Status.ERROR, threshold=classifier.threshold,
                                 error=f"{item.path}: overlay not written "
                                       f"({exc.strerror or _first_line(exc)}: "
                                       f"{exc.filename or overlay_dir})")
        result.seconds = time.perf_counter() - t0
        yield result


def _overlay_path(folder: Path, image: Path, taken: set[str]) -> Path:
    name, k = f"{image.stem}.png", 1
    while name in taken:  # same stem from two folders or two formats
        k += 1
        name = f"{image.stem}_{k}.png"
    taken.add(name)
    return folder / name


def classify_paths(paths: Iterable[str | Path], classifier: Classifier,
                   on_result: Callable[[ImageResult], None] | None = None,
                   **options) -> list[ImageResult]:
    """Files and folders to results (see :func:`classify_inputs` for ``options``)."""
    results = []
    for r in classify_inputs(collect_inputs(paths), classifier, **options):
        results.append(r)
        if on_result is not None:
            on_result(r)
    return results


def report(results: Sequence[ImageResult], classifier: Classifier | None = None,
           mm_per_px: tuple[float, float] | None = None) -> dict:
    """The JSON document: settings, counts, one entry per image."""
    counts = {s.value: sum(r.verdict is s for r in results) for s in Status}
    return {
        "format": "glass-inspect-classify", "version": 1,
        "model": None if classifier is None else classifier.identity,
        "threshold": None if classifier is None else classifier.threshold,
        "region_threshold": None if classifier is None else classifier.region_threshold,
        "window": WINDOW, "stride": STRIDE,
        "mm_per_px": None if mm_per_px is None else list(mm_per_px),
        "counts": counts,
        "images": [r.to_dict() for r in results],
    }


def write_json(path: str | Path, results: Sequence[ImageResult],
               classifier: Classifier | None = None,
               mm_per_px: tuple[float, float] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report(results, classifier, mm_per_px), indent=1) + "\n")
    return path
