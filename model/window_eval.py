"""The weak-scratch paper's evaluation of window classifiers (Table II, Table III, section III.E)
on simulated single dark-field frames (:mod:`edge.sim.darkfield`, :mod:`model.windows`).

Frames are split by seed as the paper splits its 112 images (:func:`model.windows.image_split`:
80 train, 12 validation, 20 test): training draws windows from the training frames only, the
trainer validates on :func:`heldout_set` of the validation frames, the baselines tune their
thresholds on that same validation set, and only this module touches the test frames.

**Windows** (Tables II and III): the fixed set :func:`heldout_set` over the test frames (1024
windows, near the paper's 1461; the paper's three sampling modes, so about half of them hold a
scratch). A network (ONNX, through :func:`edge.engine.open_engine` on ONNX Runtime, batched)
calls a window positive when ``sigmoid(logit) >= 0.5`` (``logit >= 0``), the runtime's default
(:data:`edge.darkfield.windows.DEFAULT_THRESHOLD`); a baseline (:mod:`model.window_baselines`) by
its rule, tuned on the validation windows. Per detector: precision, recall, F1, accuracy and the
window count, with the confusion counts. Precision, recall and accuracy are binomial
proportions and get 95 % Wilson intervals (:func:`model.evaluate.wilson`); F1 is not a
proportion of anything, so its interval is a percentile bootstrap over the windows (2000
resamples, seeded: the same file gives the same interval). Those intervals treat windows as
independent, which they are not: the Gaussian draw puts many windows on one scratch (in the test
set, 56 of the 70 scratch windows at visibility 5-8 come from three frames). ``by_frame_ci``
therefore also gives precision, recall and F1 intervals from resampling whole frames.

**Whole images** (section III.E: the sliding window over 2048 x 2048 frames): the first
``images`` test seeds are rendered twice, as drawn (every frame has scratches: the simulator's
``scratch_share`` is 1.0, as the paper's images are all defective) and scratch-free (the same
configuration with ``scratch_share=0``: the same haze, vignetting and mottle, which are drawn
before the scratches, but other dust, because the scene's random stream then goes on
differently). Every window of the runtime's grid (256 px every 128 px, the last flush:
:func:`model.windows.image_windows`, the grid of :mod:`edge.darkfield.classify`) is classified; an
image is flagged as the runtime fails it: when any window is positive, or, for a model that carries
a region threshold (:mod:`edge.darkfield.classify`), when any window reaches that. Truth per image:
it has a scratch when any grid window is a scratch window by the labelling rule (4 mask pixels,
visible: :mod:`model.windows`), so a scratch too short to label counts as none, as it does for the
windows; an image whose only scratches are too faint to see is left out of the rates and counted
(``faint_only_images``). Reported: detection rate (flagged scratched images / scratched images)
and false-alarm rate (flagged clean images / clean images), with Wilson intervals, and the grid
windows' own metrics. For a network also each image's highest window probability
(``max_probability``, drawn then scratch-free per seed) and the two rates if an image were
flagged only when that reaches a higher threshold (``by_threshold``): one window of 225 decides
an image, so the image-level false-alarm rate is far above the window-level one.

**Faint windows** (:data:`model.windows.FAINT`, a groove whose light is below the Rose
criterion) are left out of every precision, recall and F1 and reported beside them:
``faint_windows`` and how many of them a detector flagged (``faint_flagged``). Recall is also
given by the scratch's visibility (``recall_by_visibility``: matched signal-to-noise bands from
5), the detection curve of a detector against how much light its scratch gives. For a network,
``missed_scratches`` names the scratches its missed windows lie on (:func:`misses_by_scratch`):
the Gaussian draw puts many windows on one scratch, so a few faint scratches can carry most of
the misses, and this says which and how faint.

**The visibility limit** (``visibility_limit``, ``--visibility-limit``; default
:data:`VISIBILITY_LIMIT`, 8): the owner's measure of simulated frames (issue 29, item 4).
Training labels a scratch window visible from the Rose criterion (5), the ideal observer's
limit; a human inspector's efficiency against that observer is well under one half, so a person
sees a scratch from about 8. Scratch windows of visibility 5-8 are therefore scored neither way
(faint, as those below 5), those of 8 and more as scratches, on the window sets and the whole
images alike; background windows are not touched. Each detector's result also gives its window
figures at the Rose criterion (``at_rose_limit``), the measure of earlier reports, beside them.
``recall_by_visibility`` keeps every band from 5, so the 5-8 band still shows what a detector
finds there.

**Textures** (``texture``, ``--texture FAMILY``): frames with a background texture of
:mod:`edge.sim.darkfield_texture`, such as ``heldout``, the family no training draws (a
stand-in for an unseen camera); their own window sets, prepared as ``classify`` prepares a
frame, and the frames ``classify`` would refuse listed (``frames_refused``).

**The curve**: for a network also ``curve``, precision, recall and F1 at window probabilities
0.05-0.95 and at its operating point (:func:`pr_curve`), and ``glass-inspect evaluate-windows
--plot`` draws them (:mod:`model.window_plot`). Two networks are compared by their curves: one
that only weighs its examples differently can reach a better F1 at its own operating point by
sliding along the same curve, trading recall for precision.

**Development frames** (``on="development"``): 100 more frames, seeds 300-399
(:data:`model.windows.DEVELOPMENT_SEEDS`), none a training, validation or test frame, with
4,096 windows. Twelve validation frames are too few to tell two classifiers apart (a few
scratches carry most of their misses), and the test frames must not choose; these do, by the
curves.

**Bayer mosaics and other bit depths** (``bayer=True``, ``--bayer``; ``bit_depth=8``,
``--bit-depth 8``): every frame rendered as a RAW GRBG mosaic or at that depth (window sets
of their own: a mosaic's origins on even pixels, visibility from each site's own light) and
prepared as ``glass-inspect classify`` prepares an image (:mod:`edge.darkfield.frame_prep`: a
mosaic's sites balanced, the noise matched when off, on the whole frame) before any detector,
network or baseline, sees it. The simulated camera's noise figures stand in for the model's own (the
shipped model was trained with them).

**Other light, another camera** (``lit_groups``, ``--lit-groups 0,1,2,3``; ``haze``,
``--haze 0.03,0.06``; ``camera="line"``): frames under a part of the ring, a dimmer or brighter
haze, or from a line-scan camera. Their windows are scored on every frame; a network's result
also lists the frames ``classify`` would refuse as too dark to judge (``frames_refused``,
:mod:`edge.darkfield.exposure`), leaves them out of the image rates and gives the rates they would
have had apart (``refused_if_judged``).

**Noise**: ``classify`` matches a frame's noise to the model's camera when it is off
(:mod:`edge.darkfield.noise`); every simulated 12-bit grey frame lies within that check's tolerance,
so its windows go to the networks as they are.

Choice: the held-out window sets spread over every frame of their split (``per_image`` =
``ceil(count / frames)``), so that no test frame is left out and none dominates.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.darkfield import noise
from edge.darkfield.frame_prep import FramePrep, PrepError
from edge.darkfield.noise import REFERENCE_FULL_SCALE, Sensor
from edge.sim.darkfield import FRAME_PX, DarkfieldConfig, DarkfieldRenderer, frames_at
from model.evaluate import wilson
from model.windows import (
    DEVELOPMENT_SEEDS,
    DEVELOPMENT_WINDOWS,
    FAINT,
    HELDOUT_WINDOWS,
    ROSE_SNR,
    WindowSet,
    check_limit,
    heldout_windows,
    image_split,
    image_windows,
    relabel,
    scale,
    train_seeds,
)

log = logging.getLogger("glass-inspect.window-eval")

VALIDATION_WINDOWS = 512
HELDOUT_SEED = 0  # the fixed sets' draw: every run, model and baseline sees the same windows
BOOTSTRAP = 2000
# window probabilities at which whole-image rates are also reported (an image flagged when
# its most probable window reaches one): the trade-off between detection and false alarms
IMAGE_THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)
# matched signal-to-noise bands of scratch windows for recall (model.windows.ROSE_SNR first)
VISIBILITY_BANDS = (5.0, 8.0, 12.0, 20.0, 50.0)
# window probabilities of each network's precision-recall curve (``curve``), with its own
# operating point added
CURVE_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
DEFAULT_BATCH = 16
# scratch windows below this visibility are scored neither way (module docstring: the owner's
# measure, issue 29 item 4); the Rose criterion's figures are given beside
VISIBILITY_LIMIT = 8.0
MISSED_SCRATCHES = 10  # scratches listed by misses_by_scratch in the results
DEFAULT_CACHE = Path(os.environ.get("GLASS_INSPECT_CACHE",
                                    Path.home() / ".cache" / "glass-inspect")) / "darkfield"


class WindowEvalError(ValueError):
    """A model or setting the evaluation cannot use; the message says which and why."""


def frame_config(frame_px: int = FRAME_PX, bayer: bool = False, bit_depth: int = 12,
                 noise_scale: float = 1.0, lit_groups: Sequence[int] | None = None,
                 camera: str = "area", haze: tuple[float, float] | None = None,
                 texture: str = "none") -> DarkfieldConfig:
    """The evaluated frames (:func:`edge.sim.darkfield.frames_at`): grey or a GRBG mosaic, at
    ``bit_depth``, from a camera whose noise is ``noise_scale`` times the one the classifier
    was trained with (read noise times it, conversion gain times its square: every level's
    sigma scaled alike); under the LED groups ``lit_groups`` of the ring only (None: all, as
    the classifier was trained), taken by an ``area`` or a ``line``-scan camera, with a haze
    at the optical centre drawn from ``haze`` (shares of full scale; None: the trained 10-30
    %), with a background ``texture`` of :mod:`edge.sim.darkfield_texture` (``"heldout"``: the
    family no training draws, a stand-in for an unseen camera)."""
    if not (math.isfinite(noise_scale) and 0.25 <= noise_scale <= 4.0):
        raise WindowEvalError(f"noise_scale must be within 0.25-4, got {noise_scale}")
    cfg = frames_at(frame_px)
    try:
        return replace(cfg, bayer=bool(bayer), bit_depth=bit_depth,
                       read_noise_dn=cfg.read_noise_dn * noise_scale,
                       conversion_gain=cfg.conversion_gain * noise_scale ** 2,
                       lit_groups=None if lit_groups is None else tuple(lit_groups),
                       camera=camera, haze=cfg.haze if haze is None else tuple(haze),
                       texture=texture)
    except ValueError as exc:  # the simulator's own check: groups off the ring, a camera kind
        raise WindowEvalError(str(exc)) from None


def heldout_set(image_seeds: Sequence[int], frame_px: int = FRAME_PX,
                count: int = HELDOUT_WINDOWS, cache: str | os.PathLike | None = None,
                config: DarkfieldConfig | None = None) -> WindowSet:
    """The fixed window set of held-out frames (validation or test seeds), rendered once and
    cached (:func:`model.windows.heldout_windows`); every frame gives about the same share.
    ``config``: other frames than the classifier's own (:func:`frame_config`; a set of their
    own)."""
    seeds = list(image_seeds)
    return heldout_windows(Path(cache) if cache else DEFAULT_CACHE, seeds,
                           config or frames_at(frame_px), count=count,
                           seed=HELDOUT_SEED, per_image=max(1, math.ceil(count / len(seeds))))


def camera_sensor(cfg: DarkfieldConfig | None = None) -> Sensor:
    """The simulated camera's noise model as :mod:`edge.darkfield.noise` takes it (fractions of full
    scale; its figures are at 12 bits at any depth); by default the camera the shipped
    classifier was trained with, which is what its spec says."""
    cfg = cfg or DarkfieldConfig()
    fs = REFERENCE_FULL_SCALE
    return Sensor(cfg.dark_offset_dn / fs, cfg.read_noise_dn / fs, cfg.conversion_gain / fs)


def prepared_frame(raw: np.ndarray, cfg: DarkfieldConfig, noise_match: bool = True,
                   limits: noise.NoiseLimits = noise.CAMERA_MODEL) -> np.ndarray:
    """A simulated RAW frame as ``glass-inspect classify`` hands it to the network: scaled to
    [0, 1], a mosaic's colour sites balanced, its noise matched when off
    (:mod:`edge.darkfield.frame_prep`, for a network of the simulated camera); ``noise_match=False``
    leaves the noise as it is (to measure what the match does). The model's camera is the one
    it was trained with, whatever camera rendered the frame. A frame whose noise is beyond the
    noise check's limits, which ``classify`` refuses (:func:`frames_refused` lists it), is
    matched all the same, to score what the classifier would say of it if it judged it.
    ``limits``: the model's own noise limits (:func:`edge.darkfield.noise.limits_of`: a model
    fine-tuned on grainy frames takes frames of its as-is range as they come)."""
    pixels = scale(raw, cfg.bit_depth)[0]
    try:
        # no haze floor: a frame classify would refuse as too dark is still measured, and
        # listed apart (frames_refused)
        return FramePrep(camera_sensor(), noise_match, haze_floor=0.0,
                         noise_limits=limits)(pixels, cfg.bayer).pixels
    except PrepError as exc:
        refused = exc
    # noise out of the check's limits (a textured frame's grain reads as noise): classify
    # refuses it, frames_refused lists it; scored as if judged, its noise matched whatever it is
    try:
        balanced = FramePrep(camera_sensor(), False)(pixels, cfg.bayer).pixels
    except PrepError as exc:
        raise WindowEvalError(f"a simulated frame {exc}") from None
    ratio = noise.noise_ratio(balanced, camera_sensor())
    lo, hi = limits.limits
    if not math.isfinite(ratio) or lo <= ratio <= hi:
        raise WindowEvalError(f"a simulated frame {refused}") from None
    return noise.match(balanced, ratio, camera_sensor()) if noise_match else balanced


def frames_refused(seeds: Sequence[int], cfg: DarkfieldConfig, haze_floor: float,
                   limits: noise.NoiseLimits = noise.CAMERA_MODEL) -> list[dict]:
    """The frames of ``seeds`` that ``glass-inspect classify`` would refuse (ERROR): prepared
    as it prepares them (:mod:`edge.darkfield.frame_prep`, the model's floor ``haze_floor``), each
    with why. A classifier's windows are scored on every frame; this says on which ``classify``
    would give no verdict (a part of the ring lights a frame with that share of the haze, which
    can fall under the floor of :mod:`edge.darkfield.exposure`)."""
    prep = FramePrep(camera_sensor(), True, haze_floor=haze_floor, noise_limits=limits)
    renderer, out = DarkfieldRenderer(cfg), []
    for seed in seeds:
        try:
            prep(scale(renderer.render(seed).image, cfg.bit_depth)[0], cfg.bayer)
        except PrepError as exc:
            out.append({"frame": int(seed), "why": str(exc)})
    return out


def needs_prep(cfg: DarkfieldConfig) -> bool:
    """Whether frames of ``cfg`` need :func:`prepared_frame` (a mosaic, another bit depth than
    the 12 bits the classifier was trained on, or another camera); the classifier's own 12-bit
    grey frames lie within the noise check's tolerance and go as they are; a textured frame's
    noise and levels are the texture's, so it is prepared too."""
    return (cfg.bayer or cfg.bit_depth != 12 or camera_sensor(cfg) != camera_sensor()
            or cfg.texture != "none")


class PreparedWindows:
    """A window set whose frames ``classify`` would prepare (:func:`needs_prep`), as the runtime
    sees its windows: each cut from its frame after the whole frame was prepared
    (:func:`prepared_frame`), so the levels near a window's edge are the frame's, not the
    window's. The frames are rendered again, one at a time; a set's windows come frame by
    frame."""

    def __init__(self, ws: WindowSet, cfg: DarkfieldConfig, noise_match: bool = True,
                 limits: noise.NoiseLimits = noise.CAMERA_MODEL):
        self.ws, self.cfg, self.noise_match, self.limits = ws, cfg, noise_match, limits
        self._renderer = DarkfieldRenderer(cfg)
        self._seed: int | None = None
        self._frame: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ws)

    def images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Windows ``start:stop`` as the classifier's input, (n, 1, W, W) float32."""
        index = range(len(self.ws))[start:stop]
        side = self.ws.raw.shape[-1]
        out = np.empty((len(index), 1, side, side), np.float32)
        for k, i in enumerate(index):
            seed = int(self.ws.image_seeds[i])
            if seed != self._seed:
                self._seed, self._frame = seed, prepared_frame(
                    self._renderer.render(seed).image, self.cfg, self.noise_match, self.limits)
            r, c = (int(v) for v in self.ws.origins[i])
            out[k, 0] = self._frame[r:r + side, c:c + side]
        return out


# -- metrics --------------------------------------------------------------------------------
def _rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def _f1(tp, fp, fn):
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)


def window_metrics(positive: np.ndarray, labels: np.ndarray, bootstrap: int = BOOTSTRAP,
                   seed: int = 0, frames: np.ndarray | None = None) -> dict:
    """Precision, recall, F1, accuracy (with intervals) and counts of window decisions;
    ``frames`` (each window's frame) adds intervals by resampling whole frames."""
    pred = np.asarray(positive).astype(bool)
    truth = np.asarray(labels).astype(bool)
    if pred.shape != truth.shape or pred.ndim != 1:
        raise ValueError(f"decisions and labels must be two vectors of one length, got "
                         f"{pred.shape} and {truth.shape}")
    n = len(truth)
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    tn = n - tp - fp - fn
    f1 = _f1(tp, fp, fn)
    out = {
        "precision": _rate(tp, tp + fp), "recall": _rate(tp, tp + fn),
        "f1": None if np.isnan(f1) else round(float(f1), 4),
        "accuracy": _rate(tp + tn, n), "windows": n,
        "scratch_windows": tp + fn, "background_windows": fp + tn,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision_ci": wilson(tp, tp + fp), "recall_ci": wilson(tp, tp + fn),
        "accuracy_ci": wilson(tp + tn, n), "f1_ci": None,
    }
    if bootstrap and n and not np.isnan(f1):
        # resample windows with replacement; counts per resample from the 4 confusion codes
        code = 2 * pred.astype(np.int64) + truth.astype(np.int64)  # 3 tp, 2 fp, 1 fn, 0 tn
        rng = np.random.default_rng(seed)
        counts = np.zeros((bootstrap, 4), np.int64)
        for start in range(0, bootstrap, 250):  # 250 x n indexes at a time: bounded memory
            idx = rng.integers(0, n, (min(250, bootstrap - start), n))
            c = code[idx]
            counts[start:start + len(idx)] = np.stack([(c == k).sum(axis=1) for k in range(4)],
                                                      axis=1)
        boot = _f1(counts[:, 3], counts[:, 2], counts[:, 1])
        boot = boot[~np.isnan(boot)]
        if boot.size:
            lo, hi = np.percentile(boot, [2.5, 97.5])
            out["f1_ci"] = [round(float(lo), 4), round(float(hi), 4)]
    if bootstrap and n and frames is not None:
        out["by_frame_ci"] = _frame_bootstrap(pred, truth, np.asarray(frames), bootstrap, seed)
    return out


def _frame_bootstrap(pred: np.ndarray, truth: np.ndarray, frames: np.ndarray, bootstrap: int,
                     seed: int) -> dict:
    """95 % percentile intervals of precision, recall and F1 over resamples of whole frames.

    Windows of one frame are not independent: the Gaussian draw puts many windows on one
    scratch, so one faint scratch can hold a tenth of a set's scratch windows. Resampling
    frames (with replacement, as many as there are) lets such a scratch be in or out as a whole;
    the window-level intervals above assume it cannot."""
    if frames.shape != pred.shape:
        raise ValueError(f"frames must give one frame per window, got {frames.shape} for "
                         f"{pred.shape} windows")
    ids, group = np.unique(frames, return_inverse=True)
    per = np.zeros((len(ids), 3), np.int64)  # tp, fp, fn per frame
    np.add.at(per, group, np.stack([pred & truth, pred & ~truth, ~pred & truth], 1))
    rng = np.random.default_rng([seed, 0xF7])
    tp, fp, fn = per[rng.integers(0, len(ids), (bootstrap, len(ids)))].sum(axis=1).T
    out = {"frames": len(ids)}
    for name, num, den in [("precision", tp, tp + fp), ("recall", tp, tp + fn),
                           ("f1", 2 * tp, 2 * tp + fp + fn)]:
        v = num[den > 0] / den[den > 0]
        out[name] = ([round(float(x), 4) for x in np.percentile(v, [2.5, 97.5])]
                     if v.size else None)
    return out


def pr_curve(probability: np.ndarray, labels: np.ndarray,
             thresholds: Sequence[float] = CURVE_THRESHOLDS) -> list[dict]:
    """Precision, recall and F1 of ``probability >= t`` for each threshold ``t``: the curve a
    network's operating point is one point of. Fine-tunings that differ only in how they weigh
    examples can move along one curve without moving it; their F1 at their own operating
    points does not tell the two apart, the curve does."""
    p = np.asarray(probability, np.float64)
    truth = np.asarray(labels).astype(bool)
    if p.shape != truth.shape or p.ndim != 1:
        raise ValueError(f"probabilities and labels must be two vectors of one length, got "
                         f"{p.shape} and {truth.shape}")
    out = []
    for t in sorted(set(float(t) for t in thresholds)):
        pos = p >= t
        tp = int((pos & truth).sum())
        fp = int((pos & ~truth).sum())
        fn = int((~pos & truth).sum())
        f1 = _f1(tp, fp, fn)
        out.append({"threshold": round(t, 4), "precision": _rate(tp, tp + fp),
                    "recall": _rate(tp, tp + fn),
                    "f1": None if np.isnan(f1) else round(float(f1), 4),
                    "tp": tp, "fp": fp, "fn": fn})
    return out


def image_metrics(flagged: np.ndarray, has_scratch: np.ndarray) -> dict:
    flagged = np.asarray(flagged, bool)
    truth = np.asarray(has_scratch, bool)
    pos, neg = int(truth.sum()), int((~truth).sum())
    det, fa = int((flagged & truth).sum()), int((flagged & ~truth).sum())
    return {"images": len(truth), "with_scratch": pos, "clean": neg, "detected": det,
            "false_alarms": fa, "detection_rate": _rate(det, pos),
            "detection_rate_ci": wilson(det, pos), "false_alarm_rate": _rate(fa, neg),
            "false_alarm_rate_ci": wilson(fa, neg)}


# -- detectors --------------------------------------------------------------------------------
@dataclass
class _Model:
    name: str
    path: Path
    classifier: object  # edge.darkfield.classify.Classifier

    def positive(self, windows: np.ndarray) -> np.ndarray:
        """Windows (N, 1, W, W) float32 -> positive (N,) bool, batch by batch."""
        # sigmoid(logit) >= threshold, as the runtime decides (logit >= 0 at 0.5)
        return self.probability(windows) >= self.classifier.threshold

    def probability(self, windows: np.ndarray) -> np.ndarray:
        """Windows (N, 1, W, W) float32 -> scratch probability (N,), batch by batch."""
        clf = self.classifier
        logits = np.empty(len(windows), np.float32)
        for start in range(0, len(windows), clf.batch):
            chunk = np.ascontiguousarray(windows[start:start + clf.batch], np.float32)
            # the engine's output buffer is reused by its next call: copy out now
            logits[start:start + len(chunk)] = clf.engine.infer(chunk)
        if not np.all(np.isfinite(logits)):
            raise WindowEvalError(f"{self.path}: the model gave non-finite logits")
        return _sigmoid(logits)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def _check_split(path: Path, metadata: dict, test_seeds: Sequence[int],
                 validation_ok: bool = False) -> None:
    """Refuse a model whose own training (or, unless ``validation_ok``, validation) frames are
    among the frames it is evaluated on."""
    try:
        settings = json.loads(metadata.get("settings", "{}"))
    except ValueError:
        return
    if not isinstance(settings, dict) or settings.get("data") != "darkfield":
        return
    n_train = int(settings.get("train_images", 80))
    used = image_split(0, n_train, int(settings.get("val_images", 12)))
    trained = train_seeds(n_train, int(settings.get("extra_train_images", 0)))
    overlap = sorted(set(test_seeds) & (set(trained) | (set() if validation_ok else
                                                         set(used.validation))))
    if overlap:
        raise WindowEvalError(
            f"{path}: was trained or validated on frames {overlap[:5]}"
            f"{' ...' if len(overlap) > 5 else ''}, which this evaluation tests on; choose a "
            "--split whose test seeds come after the model's training and validation frames")


def open_models(models: dict[str, str | Path], test_seeds: Sequence[int], threads: int = 0,
                batch: int = DEFAULT_BATCH, validation_ok: bool = False) -> list[_Model]:
    from edge.darkfield import Classifier, ModelError
    from edge.engine.base import EngineError, open_engine

    out = []
    try:
        for name, path in models.items():
            path = Path(path)
            if not path.is_file():
                raise WindowEvalError(f"{path}: no such model file")
            try:
                engine = open_engine(path, "onnxruntime", threads=threads, max_batch=batch)
            except EngineError as exc:
                raise WindowEvalError(str(exc)) from None
            try:
                clf = Classifier(engine, batch=batch)  # checks N x 1 x 256 x 256 -> N logits
                _check_split(path, engine.metadata, test_seeds, validation_ok)
            except (ModelError, WindowEvalError) as exc:
                engine.close()
                raise WindowEvalError(str(exc)) from None
            out.append(_Model(name, path, clf))
    except BaseException:
        for m in out:
            m.classifier.close()
        raise
    return out


# -- the evaluation -------------------------------------------------------------------------
def evaluate_windows(models: dict[str, str | Path], baselines: Sequence[str] = (), *,
                     split: tuple[int, int, int] = (80, 12, 20), frame_px: int = FRAME_PX,
                     test_windows: int | None = None,
                     val_windows: int = VALIDATION_WINDOWS, images: int | None = None,
                     cache: str | os.PathLike | None = None, threads: int = 0,
                     batch: int = DEFAULT_BATCH, progress: bool = True,
                     on: str = "test", bayer: bool = False, bit_depth: int = 12,
                     noise_scale: float = 1.0, noise_match: bool = True,
                     lit_groups: Sequence[int] | None = None, camera: str = "area",
                     haze: tuple[float, float] | None = None, texture: str = "none",
                     visibility_limit: float = VISIBILITY_LIMIT) -> dict:
    """``{name: metrics}`` for every model (keyed by the caller's names) and baseline; see the
    module docstring. ``images``: test frames for the image level (default: all test seeds;
    0 skips it); each is rendered with and without scratches. ``on="validation"`` runs it all
    on the validation frames instead (the trainer's validation windows), to choose settings
    such as an image threshold without looking at the test frames; ``on="development"`` on the
    100 development frames (:data:`model.windows.DEVELOPMENT_SEEDS`), to choose between
    classifiers. ``test_windows``: windows of the evaluated frames (default 1,024, and 4,096
    on the development frames; on validation frames ``val_windows`` instead). ``bayer``,
    ``bit_depth``: every frame rendered as a RAW GRBG mosaic, or at 8 or 16 bits, and prepared
    as ``classify`` prepares one (:class:`PreparedWindows`), for networks and baselines
    alike; ``noise_scale``: from a camera that much noisier (:func:`frame_config`);
    ``noise_match=False`` hands them over without matching their noise, to measure what the
    match does. ``lit_groups``, ``camera``, ``haze``: frames under a part of the ring only,
    from a line-scan camera, or under another haze (:func:`frame_config`); a network's result
    then also lists the frames ``classify`` would refuse (``frames_refused``,
    :func:`frames_refused`). ``texture``: frames with that background texture
    (:func:`frame_config`), prepared as ``classify`` prepares them. ``visibility_limit``: scratch
    windows below it are scored neither way (:func:`model.windows.relabel`), on windows and
    images alike; each detector's result also gives its window figures at the Rose criterion
    (``at_rose_limit``) when the limit is above it."""
    from model.window_baselines import make_baseline

    if not models and not baselines:
        raise WindowEvalError("name at least one model or baseline")
    clash = sorted(set(models) & set(baselines))
    if clash:
        raise WindowEvalError(f"a model and a baseline are both named {clash[0]!r}; results are "
                              "keyed by name: rename the model")
    try:
        n_train, n_val, n_test = split
        seeds = image_split(0, n_train, n_val, n_test)
        cfg = frame_config(frame_px, bayer, bit_depth, noise_scale, lit_groups, camera, haze,
                           texture)
        visibility_limit = check_limit(visibility_limit)
    except ValueError as exc:  # a split or frame size the simulator cannot make
        raise WindowEvalError(str(exc)) from None
    frames = {"test": seeds.test, "validation": seeds.validation,
              "development": DEVELOPMENT_SEEDS}.get(on)
    if frames is None:
        raise WindowEvalError(f"on must be 'test', 'validation' or 'development', got {on!r}")
    if test_windows is None:
        test_windows = DEVELOPMENT_WINDOWS if on == "development" else HELDOUT_WINDOWS
    images = len(frames) if images is None else images
    if not 0 <= images <= len(frames):
        raise WindowEvalError(f"images must be within 0..{len(frames)} (the {on} frames), got "
                              f"{images}")
    for name, value in (("test_windows", test_windows), ("val_windows", val_windows),
                        ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise WindowEvalError(f"{name} must be a positive integer, got {value!r}")
    t0 = time.perf_counter()
    nets = open_models(models, frames, threads, batch, validation_ok=on == "validation")
    try:
        if on == "validation":
            test_windows = val_windows  # the trainer's own validation set
        log.info("%s windows: %d from frames %d..%d", on, test_windows, frames[0], frames[-1])
        drawn = heldout_set(frames, frame_px, test_windows, cache, cfg)
        prepared: dict[noise.NoiseLimits, PreparedWindows] = {}

        def test_in(limits: noise.NoiseLimits = noise.CAMERA_MODEL):
            """The test windows as a model of these noise limits sees them."""
            if not needs_prep(cfg):
                return drawn
            if limits not in prepared:
                prepared[limits] = PreparedWindows(drawn, cfg, noise_match, limits)
            return prepared[limits]

        # scored at the limit; faint windows (below it) are reported on their own
        test = replace(drawn, labels=relabel(drawn.labels, drawn.visibility, visibility_limit))
        seen = test.labels != FAINT
        truth = test.labels[seen].astype(bool)
        frames_seen = test.image_seeds[seen]
        rose_seen = drawn.labels != FAINT

        def at_rose(pos: np.ndarray) -> dict:
            if visibility_limit == ROSE_SNR:
                return {}
            m = window_metrics(pos[rose_seen], drawn.labels[rose_seen].astype(bool),
                               frames=drawn.image_seeds[rose_seen])
            return {"at_rose_limit": {"visibility_limit": ROSE_SNR, **m,
                                      "faint_windows": int((~rose_seen).sum())}}

        set_info = {"frame_px": frame_px, "split": list(split), "on": on, "test_seeds":
                    [frames[0], frames[-1]], "window_file": str(test.path),
                    "windows_seed": HELDOUT_SEED,
                    "image": "Bayer mosaic, colour sites balanced" if bayer else "grey",
                    "bit_depth": bit_depth, "noise_scale": noise_scale,
                    "noise_match": noise_match, "lit_groups": list(cfg.lit),
                    "ring_groups": cfg.ring_groups, "camera": cfg.camera,
                    "haze": list(cfg.haze), "texture": cfg.texture,
                    "visibility_limit": visibility_limit}
        # light, a camera or a texture the classifier was not trained under: classify may
        # refuse some frames
        unlike_training = (cfg.lit_groups, cfg.camera, cfg.haze, cfg.texture) != (
            None, "area", frames_at(frame_px).haze, "none")
        # by haze floor and noise limits: each frame rendered once
        refusals: dict[tuple, list[dict]] = {}
        results: dict[str, dict] = {}
        decide = {}  # name -> windows -> positive
        # name -> (windows -> probability, threshold, region threshold), for the networks
        scores = {}
        own_limits: dict[str, noise.NoiseLimits] = {}  # a network's own, when not the camera's
        for m in nets:
            t = time.perf_counter()
            prob = _chunked(m.probability, test_in(m.classifier.prep.noise_limits))
            pos = prob >= m.classifier.threshold  # as m.positive decides
            results[m.name] = {**window_metrics(pos[seen], truth, frames=frames_seen),
                               **_faint(pos, test, drawn), **at_rose(pos),
                               "missed_scratches": misses_by_scratch(pos, test, cfg),
                               "model": str(m.path),
                               "sha256": m.classifier.identity.get("sha256"),
                               "threshold": m.classifier.threshold,
                               "curve": pr_curve(prob[seen], truth,
                                                 (*CURVE_THRESHOLDS, m.classifier.threshold)),
                               "infer_s": round(time.perf_counter() - t, 1), "set": set_info}
            if unlike_training:
                key = (m.classifier.prep.haze_floor, m.classifier.prep.noise_limits)
                if key not in refusals:
                    refusals[key] = frames_refused(frames, cfg, *key)
                results[m.name]["frames_refused"] = refusals[key]
            decide[m.name] = m.positive
            own_limits[m.name] = m.classifier.prep.noise_limits
            scores[m.name] = (m.probability, m.classifier.threshold,
                              m.classifier.region_threshold)
        if baselines:
            val = heldout_set(seeds.validation, frame_px, val_windows, cache, cfg)
            val_in = PreparedWindows(val, cfg, noise_match) if needs_prep(cfg) else val
            for name in dict.fromkeys(baselines):
                b = make_baseline(name)
                t = time.perf_counter()
                val_seen = val.labels != FAINT
                b.fit_scores(_chunked(b.scores, val_in)[val_seen], val.labels[val_seen])
                pos = b.decide(_chunked(b.scores, test_in()))
                results[name] = {**window_metrics(pos[seen], truth, frames=frames_seen),
                                 **_faint(pos, test, drawn), **at_rose(pos),
                                 "baseline": name,
                                 "params": b.params(), "tuned_on": {
                                     "validation_windows": len(val),
                                     "window_file": str(val.path)},
                                 "infer_s": round(time.perf_counter() - t, 1), "set": set_info}
                decide[name] = b.predict
        if images:
            refused = {name: {f["frame"] for f in r["frames_refused"]}
                       for name, r in results.items() if "frames_refused" in r}
            for name, rows in _image_level(decide, frames[:images], cfg, progress,
                                           scores, noise_match, refused,
                                           visibility_limit, own_limits).items():
                results[name]["images"] = rows
        log.info("evaluated %d detectors in %.0f s", len(results), time.perf_counter() - t0)
        return results
    finally:
        for m in nets:
            m.classifier.close()


def _faint(pos: np.ndarray, ws: WindowSet, drawn: WindowSet | None = None) -> dict:
    """How a detector treats the windows left out of the score (scratches too faint to see,
    or below the visibility limit of ``ws``'s labels), and its recall on the scratch windows by
    how visible their scratch is (every band from the Rose criterion, from ``drawn``'s labels:
    the set as labelled for training)."""
    faint = ws.labels == FAINT
    drawn = ws if drawn is None else drawn
    bands = []
    for lo, hi in zip(VISIBILITY_BANDS, (*VISIBILITY_BANDS[1:], math.inf), strict=True):
        sel = (drawn.labels == 1) & (drawn.visibility >= lo) & (drawn.visibility < hi)
        k, n = int(pos[sel].sum()), int(sel.sum())
        bands.append({"visibility": [lo, None if math.isinf(hi) else hi], "windows": n,
                      "detected": k, "recall": _rate(k, n)})
    return {"faint_windows": int(faint.sum()), "faint_flagged": int(pos[faint].sum()),
            "recall_by_visibility": bands}


def misses_by_scratch(pos: np.ndarray, ws: WindowSet, cfg: DarkfieldConfig,
                      top: int = MISSED_SCRATCHES) -> list[dict]:
    """The scratches a detector's missed windows lie on, most missed first (``top`` of them):
    frame, scratch id, whether a chain of points, peak DN, length, width, and how many of the
    windows on it were missed. Each frame with a miss is rendered again; a scratch window goes to
    the scratch with most centre-line points within 3 px of its mask pixels (one window can hold
    two; it counts for the one it holds most of)."""
    missed = (ws.labels == 1) & ~np.asarray(pos, bool)
    renderer = DarkfieldRenderer(cfg)
    side = ws.raw.shape[-1]
    rows: dict[tuple[int, int], dict] = {}
    for seed in np.unique(ws.image_seeds[missed]).tolist():
        frame = renderer.render(seed)
        for i in np.flatnonzero((ws.labels == 1) & (ws.image_seeds == seed)):
            y0, x0 = (int(v) for v in ws.origins[i])
            ys, xs = np.nonzero(frame.mask[y0:y0 + side, x0:x0 + side])
            near = [int(np.count_nonzero(np.min(
                (sc.points_px[None, :, 0] - (xs + x0)[:, None]) ** 2
                + (sc.points_px[None, :, 1] - (ys + y0)[:, None]) ** 2, axis=1) <= 9.0))
                if len(xs) else 0 for sc in frame.scratches]
            if not near or max(near) == 0:
                continue
            sc = frame.scratches[int(np.argmax(near))]
            row = rows.setdefault((seed, sc.id), {
                "frame": seed, "scratch": sc.id, "chain": sc.chain,
                "peak_dn": round(float(sc.peak_dn), 1), "length_px": round(float(sc.length_px)),
                "width_px": round(float(sc.width_px), 2), "windows": 0, "missed": 0})
            row["windows"] += 1
            row["missed"] += int(missed[i])
    ranked = sorted((r for r in rows.values() if r["missed"]),
                    key=lambda r: (-r["missed"], r["frame"], r["scratch"]))
    return ranked[:top]


def _chunked(fn, ws: WindowSet | PreparedWindows, size: int = 256) -> np.ndarray:
    """``fn`` over a window set a few hundred windows at a time (float32 windows of a whole
    set would take 256 kB each at once)."""
    return np.concatenate([fn(ws.images(s, s + size)) for s in range(0, len(ws), size)])


def _image_level(decide: dict, test_seeds: Sequence[int], cfg: DarkfieldConfig,
                 progress: bool, scores: dict | None = None, noise_match: bool = True,
                 refused: dict[str, set[int]] | None = None,
                 limit: float = ROSE_SNR,
                 limits: dict[str, noise.NoiseLimits] | None = None) -> dict[str, dict]:
    """Image-level rates; for a network (``scores``) also its highest window probability per
    image and the rates an image threshold on it would give (:data:`IMAGE_THRESHOLDS`).
    ``refused``: per detector, the seeds ``classify`` gives ERROR (:func:`frames_refused`);
    both renderings of such a frame are left out of its rates and counted, and the rates it
    would have had are given apart (``refused_if_judged``: the evidence for the refusal).
    ``limits``: per detector, its noise limits when not the camera model's (each frame is
    prepared once per distinct limits)."""
    scores = scores or {}
    limits = limits or {}
    refused = refused or {}
    top: dict[str, list[float]] = {name: [] for name in scores}
    renderers = [("as drawn", DarkfieldRenderer(cfg)),
                 ("scratch-free", DarkfieldRenderer(replace(cfg, scratch_share=0.0)))]
    flagged = {name: [] for name in decide}
    grid = {name: [] for name in decide}
    truth, grid_truth, image_seeds = [], [], []
    bar = tqdm(total=2 * len(test_seeds), desc="test images", unit="image",
               disable=not progress, leave=False)
    for seed in test_seeds:
        for _, renderer in renderers:
            frame = renderer.render(seed)
            # as classify sees it: the whole frame prepared, then cut
            by_limits = {}  # noise limits -> windows
            for lim in {limits.get(name, noise.CAMERA_MODEL) for name in decide}:
                pixels = (prepared_frame(frame.image, cfg, noise_match, lim)
                          if needs_prep(cfg) else None)
                _, by_limits[lim], labels = image_windows(frame, pixels=pixels, limit=limit)
            # scratched: a window of it is a visible scratch; None: its only scratches are
            # too faint to see (left out of the rates, counted)
            truth.append(True if (labels == 1).any() else None if (labels == FAINT).any()
                         else False)
            grid_truth.append(labels)
            image_seeds.append(seed)
            for name, fn in decide.items():
                wins = by_limits[limits.get(name, noise.CAMERA_MODEL)]
                if name in scores:  # one pass: probabilities, then the runtime's decision
                    prob, threshold, region = scores[name]
                    p = prob(wins)
                    top[name].append(float(p.max()))
                    pos = p >= threshold
                    # as classify decides: a region counts when a window reaches the region
                    # threshold (the window threshold when the model has none)
                    flagged[name].append(bool(p.max() >= (threshold if region is None
                                                          else region)))
                else:
                    pos = np.asarray(fn(wins), bool)
                    flagged[name].append(bool(pos.any()))
                grid[name].append(pos)
            del frame, wins, by_limits
            bar.update()
    bar.close()
    labels = np.concatenate(grid_truth)
    seen = labels != FAINT
    known = np.array([t is not None for t in truth])
    out = {}
    for name in decide:
        judged = ~np.isin(image_seeds, sorted(refused.get(name, ())))
        keep = known & judged
        row = image_metrics(np.array(flagged[name])[keep], np.array(truth)[keep].astype(bool))
        row["faint_only_images"] = int((~known & judged).sum())
        if not judged.all():
            row["refused_images"] = int((~judged).sum())
            # what the refusal spares: the same rule on the refused frames, as if judged
            spared = known & ~judged
            row["refused_if_judged"] = {
                k: v for k, v in image_metrics(np.array(flagged[name])[spared],
                                               np.array(truth)[spared].astype(bool)).items()
                if k in ("with_scratch", "clean", "detected", "false_alarms", "detection_rate",
                         "false_alarm_rate")}
        if name in top:
            best = np.array(top[name])[keep]
            has = np.array(truth)[keep].astype(bool)
            row["max_probability"] = [round(v, 6) for v in top[name]]
            row["by_threshold"] = [
                {"threshold": t, **{k: v for k, v in image_metrics(best >= t, has).items()
                                    if k in ("detection_rate", "false_alarm_rate",
                                             "detected", "false_alarms")}}
                for t in IMAGE_THRESHOLDS]
        row["test_seeds"] = list(test_seeds)
        row["clean_images"] = "the same seeds rendered with scratch_share 0"
        pos = np.concatenate(grid[name])
        row["grid_windows"] = {**window_metrics(pos[seen], labels[seen], bootstrap=0),
                               "faint_windows": int((~seen).sum()),
                               "faint_flagged": int(pos[~seen].sum())}
        out[name] = row
    return out


def describe(results: dict[str, dict]) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    def ci(v):
        return "" if not v else f" [{100 * v[0]:.1f}, {100 * v[1]:.1f}]"

    rows = ["detector | precision | recall | F1 | recall, F1 (frames resampled) | accuracy | "
            "windows | image detection | image false alarms",
            "--- | --- | --- | --- | --- | --- | --- | --- | ---"]
    notes = []
    for name, r in results.items():
        im = r.get("images") or {}
        frames = r.get("by_frame_ci") or {}
        missed = r.get("missed_scratches") or []
        refused = r.get("frames_refused")
        if refused:
            notes.append(f"{name}: classify would refuse {len(refused)} of the frames (ERROR; "
                         f"their windows are scored above, their images left out of the "
                         f"image rates): frame {refused[0]['frame']} {refused[0]['why']}")
        if missed:
            lost = sum(m["missed"] for m in missed[:3])
            notes.append(f"{name}: {lost} of its {r['fn']} missed windows lie on "
                         + "; ".join(f"frame {m['frame']} scratch {m['scratch']} "
                                     f"({m['peak_dn']:g} DN peak, {m['length_px']} px, "
                                     f"{'chain' if m['chain'] else 'continuous'}: "
                                     f"{m['missed']} of {m['windows']})" for m in missed[:3]))
        rows.append(f"{name} | {pct(r['precision'])}{ci(r['precision_ci'])} | "
                    f"{pct(r['recall'])}{ci(r['recall_ci'])} | {pct(r['f1'])}{ci(r['f1_ci'])} | "
                    f"{ci(frames.get('recall')).strip() or '-'}, "
                    f"{ci(frames.get('f1')).strip() or '-'} | "
                    f"{pct(r['accuracy'])} | {r['windows']} | "
                    f"{pct(im.get('detection_rate'))} | {pct(im.get('false_alarm_rate'))}")
    return "\n".join(rows + ([""] + notes if notes else []))


def save_report(results: dict, json_path: str | None, plot_path: str | None) -> None:
    """``evaluate-windows``' files: the whole record as JSON (``--json``) and the
    precision-recall curves (``--plot``), each announced on stdout."""
    if json_path:
        out = Path(json_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"details: {out}")
    if plot_path:
        from model.window_plot import plot_pr

        print(f"precision-recall curves: {plot_pr(results, plot_path)}")
