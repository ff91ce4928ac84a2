"""The envelope of the window classifier's training frames, for its metadata.

``glass-inspect export frame-envelope MODEL.onnx`` renders frames the attention fusion
classifier was trained on, prepares each as ``classify`` prepares an image
(:class:`edge.darkfield.frame_prep.FramePrep` of the model), measures it with the runtime's
statistics (:func:`edge.darkfield.frame_envelope.measure`), runs the model over its windows for
the share of positive ones, and writes per statistic the trained range into the model's
``frame_envelope`` metadata, which ``classify`` checks every frame against
(:mod:`edge.darkfield.frame_envelope`). Only the metadata changes; the graph is checked byte
for byte (:func:`export.onnx.set_metadata`).

Choices:

* **Which frames.** The training frames of the model's ``settings`` metadata
  (:func:`model.windows.train_seeds`: seeds ``0 .. train_images - 1`` and ``extra_train_images``
  more from :data:`model.windows.EXTRA_TRAIN_SEED`, those rendered with ``extra_peak_dn`` and
  ``extra_chain_share`` when set, as :mod:`model.train` renders them), at ``frame_px``. A
  modest number of them, ``frames`` (default :data:`DEFAULT_FRAMES`), evenly spread over that
  list, so that both kinds of frame are in in their proportion: a frame costs about 5 s under
  load (rendering, 225 windows of inference).
* **Whole frames and their tiles.** Every statistic but the window share is measured on each
  whole frame and on each of its :data:`TILE_PX` px tiles (non-overlapping): the network never
  sees more than a 256 px window, so a 512 px crop of a training frame is a frame of its world,
  and users classify frames of that size (issue 29's were 512 px). A small frame's statistics
  scatter more (a dust speck is more of its pixels, a 32 px band rests on 16 x 16 blocks); the
  tiles bring that scatter into the range. The window share is measured on the whole frames
  only (:data:`edge.darkfield.frame_envelope.MIN_SHARE_WINDOWS`).
* **Range.** Per statistic the :data:`LOW_PERCENTILE` and :data:`HIGH_PERCENTILE` percentiles,
  widened on each side by :data:`MARGIN` times their span, and by at least :data:`FLOOR` for
  the statistic's kind, (absolute, relative to the end):

  - band powers 40 %: the match of a frame's noise (:mod:`edge.darkfield.noise`) leaves up to
    3.5 % (7 % in power) alone, and reaches 8 px blocks only in part (simulated 512 px frames
    saved at 8 bits read up to 1.48 at 8 px, 12-bit ones 1.30; the training frames and tiles up
    to 1.23). Grain of 3-10 px at 1 % of the haze reads 30 or more at 8 px;
  - noise slope 0.1: an 8-bit file's quantisation noise is the same at every level, so after
    the match its dim half reads about 0.9 of its bright half (simulated 8-bit frames: 0.90-0.93);
  - haze: up to the high end plus 30 % (what :mod:`export.envelope_fit` allows a head's
    exposure), down to the model's haze floor (:func:`edge.darkfield.exposure.haze_floor`),
    not the training frames' low end: the floor is where the classifier's verdicts were
    measured to hold (frames of 4-8 % haze failed clean parts no more often than the trained
    ones), and below it the exposure check refuses a frame with its own advice;
  - haze spread 30 %;
  - outliers: from 0 (a clean frame has none) to 2.5 times the high end: bright dust is
    heavy-tailed, one cluster of specks is thousands per megapixel of a 512 px frame (300 of
    them went up to 8,400; the training tiles' 99.9th percentile was 3,800);
  - window share: from 0 to the high end plus 0.25 (issue 29's grainy frames: 1.0).
* **A user's own frames** (``--images DIR``, for a classifier fine-tuned on them with ``train
  --images``): they are frames of its world now. Each is read as ``classify`` reads it, prepared
  as :mod:`model.label_windows` trained on it (noise above the camera model's limits taken as
  it comes, the rest matched), and measured like a training frame (whole and tiles,
  :func:`measure_images`); the ranges are then
  fitted over the training frames and these together. Their noise, which the camera model's
  limits (:data:`edge.darkfield.noise.LIMITS`) may refuse (grain reads as noise), sets the
  model's own limits, written as ``noise_limits`` metadata (:func:`noise_limits`). Without
  ``--images`` a model's earlier ``noise_limits`` are replaced by the camera model's, so a
  refit never keeps limits its frames do not bear out.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FRAMES = 32
TILE_PX = 512
LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9
MARGIN = 0.5  # of the span, on each side
# the least a range is widened on each side, per kind: (absolute, relative to the end); the
# larger of the two and MARGIN x span applies; kinds in ZERO_BASED start at 0
FLOOR = {"power": (0.0, 0.4), "noise_slope": (0.1, 0.0), "haze": (0.0, 0.3),
         "haze_spread": (0.0, 0.3), "outliers": (0.0, 1.5), "window_share": (0.25, 0.0)}
ZERO_BASED = ("outliers", "window_share")
NOISE_MARGIN = 1.25  # a user's frames' noise ratios, widened by this factor each way


def kind(name: str) -> str:
    if name.startswith("power_"):
        return "power"
    return "outliers" if name.endswith("_outliers") else name


class FitError(ValueError):
    """A model the envelope cannot be fitted for; the message says why."""


@dataclass(frozen=True)
class TrainingFrames:
    """The frames a classifier was trained on, from its ``settings`` metadata."""

    seeds: tuple[int, ...]
    extra_from: int  # seeds[extra_from:] are the extra frames
    frame_px: int
    extra_changes: dict  # DarkfieldConfig fields the extra frames were rendered with

    @classmethod
    def of_metadata(cls, metadata: dict, name: str = "the model") -> TrainingFrames:
        from model.windows import train_seeds

        try:
            s = json.loads(metadata.get("settings") or "null")
        except ValueError:
            s = None
        if not isinstance(s, dict) or s.get("data") != "darkfield":
            raise FitError(f"{name} does not record training on single dark-field frames "
                           "(settings metadata with data 'darkfield'); expected a window "
                           "classifier exported by 'glass-inspect export onnx'")
        try:
            n, extra = int(s.get("train_images", 80)), int(s.get("extra_train_images", 0))
            px = int(s.get("frame_px", 2048))
            changes = {}
            if s.get("extra_peak_dn") is not None:
                changes["scratch_peak_dn"] = tuple(float(v) for v in s["extra_peak_dn"])
            if s.get("extra_chain_share") is not None:
                changes["chain_share"] = float(s["extra_chain_share"])
        except (TypeError, ValueError) as exc:
            raise FitError(f"{name}: its settings metadata cannot be read ({exc})") from None
        return cls(train_seeds(n, extra), n, px, changes)

    def pick(self, count: int) -> list[int]:
        """``count`` of the seeds, evenly spread over the list (all when there are fewer)."""
        import numpy as np

        if count < 1:
            raise FitError(f"the envelope needs at least one frame, got {count}")
        if count >= len(self.seeds):
            return list(self.seeds)
        at = np.unique(np.round(np.linspace(0, len(self.seeds) - 1, count)).astype(int))
        return [self.seeds[i] for i in at]

    def renderers(self):
        """(renderer of the paper's frames, renderer of the extra frames)."""
        from dataclasses import replace

        from edge.sim.darkfield import DarkfieldRenderer, frames_at

        cfg = frames_at(self.frame_px)
        return DarkfieldRenderer(cfg), DarkfieldRenderer(replace(cfg, **self.extra_changes))

    def render(self, seed: int, renderers) -> tuple:
        """(raw frame, bit depth) of training frame ``seed``."""
        r = renderers[1] if self.seeds.index(seed) >= self.extra_from else renderers[0]
        return r.render(seed).image, r.config.bit_depth


def tiles(pixels, side: int = TILE_PX):
    """The whole ``side`` px tiles of a frame, row by row."""
    h, w = pixels.shape
    for y in range(0, h - side + 1, side):
        for x in range(0, w - side + 1, side):
            yield pixels[y:y + side, x:x + side]


def measure_frames(classifier, frames: TrainingFrames, seeds: Sequence[int],
                   progress: Callable[[int, int], None] | None = None
                   ) -> tuple[list[dict], list[dict]]:
    """(statistics of every whole frame, of every tile); the whole frames' hold the window
    share too. ``classifier``: an :class:`edge.darkfield.classify.Classifier` of the model."""
    import numpy as np

    from edge.darkfield import frame_envelope as fe
    from edge.darkfield.classify import sigmoid
    from edge.darkfield.frame_prep import PrepError

    renderers = frames.renderers()
    sensor = classifier.prep.sensor
    whole, parts = [], []
    for done, seed in enumerate(seeds, 1):
        raw, bits = frames.render(seed, renderers)
        try:
            px = classifier.prep(raw.astype(np.float32) / np.float32(2 ** bits - 1)).pixels
        except PrepError as exc:
            raise FitError(f"training frame {seed} {exc}") from None
        stats = fe.measure(px, sensor)
        stats["window_share"] = fe.window_share(sigmoid(classifier.logits(px)[2]))
        stats["seed"] = seed
        whole.append(stats)
        parts.extend(fe.measure(t, sensor) for t in tiles(px))
        if progress is not None:
            progress(done, len(seeds))
    return whole, parts


def measure_images(classifier, folder: str | Path, bit_depth: int | None = None,
                   bayer: bool = False, progress: Callable[[int, int], None] | None = None
                   ) -> tuple[list[dict], list[dict], list[float]]:
    """(statistics of every whole image of ``folder``, of every tile, each image's noise ratio)
    for a user's own frames (module docstring); FitError naming an image that cannot be read
    or judged at all."""
    import math

    from edge.darkfield import frame_envelope as fe
    from edge.darkfield.classify import sigmoid
    from edge.darkfield.frame_prep import FramePrep, PrepError
    from edge.darkfield.noise import LIMITS, NoiseLimits
    from edge.darkfield.reading import ClassifyError, collect_inputs, read_image

    items = collect_inputs([Path(folder)])
    problems = [i.problem for i in items if i.problem]
    if problems or not items:
        raise FitError(f"--images {folder}: " + ("; ".join(problems[:3]) or "no images"))
    base = classifier.prep
    # as training prepared them (model.label_windows): noise above the camera model's limits
    # (grain) taken as it comes, the rest matched
    prep = FramePrep(base.sensor, True, base.model_name, base.haze_floor,
                     NoiseLimits((LIMITS[0], math.inf), (LIMITS[1], math.inf)))
    whole, parts, ratios = [], [], []
    for done, item in enumerate(items, 1):
        try:
            p = prep(read_image(item.path, bit_depth, bayer).pixels, bayer)
        except ClassifyError as exc:  # its message names the file
            raise FitError(str(exc)) from None
        except PrepError as exc:
            raise FitError(f"{item.path} {exc}") from None
        stats = fe.measure(p.pixels, base.sensor)
        stats["window_share"] = fe.window_share(sigmoid(classifier.logits(p.pixels)[2]))
        stats["image"] = item.path.name
        whole.append(stats)
        parts.extend(fe.measure(t, base.sensor) for t in tiles(p.pixels))
        ratios.append(float(p.noise_ratio))
        if progress is not None:
            progress(done, len(items))
    return whole, parts, ratios


def noise_limits(ratios: Sequence[float]):
    """The model's :class:`edge.darkfield.noise.NoiseLimits` for a user's frames of these noise
    ratios (module docstring): the camera model's when none lies above its limits; else those
    above, widened by :data:`NOISE_MARGIN` each way, are taken as they come (as training on
    them took them, :mod:`model.label_windows`) and the upper limit covers them."""
    from edge.darkfield.noise import CAMERA_MODEL, LIMITS, NoiseLimits

    above = [r for r in ratios if r > LIMITS[1]]
    if not above:
        return CAMERA_MODEL
    hi = _r(max(above) * NOISE_MARGIN)
    return NoiseLimits((LIMITS[0], hi), (_r(max(LIMITS[1], min(above) / NOISE_MARGIN)), hi))


def widen(name: str, lo: float, hi: float) -> tuple[float, float]:
    """The trained range ``[lo, hi]`` widened as the module docstring says."""
    absolute, relative = FLOOR[kind(name)]
    span = hi - lo
    down = max(MARGIN * span, absolute, relative * abs(lo))
    up = max(MARGIN * span, absolute, relative * abs(hi))
    if kind(name) in ZERO_BASED:
        top = hi + up
        return 0.0, (min(top, 1.0) if name == "window_share" else top)
    return max(lo - down, 0.0), hi + up


def _r(v: float) -> float:
    return float(f"{v:.4g}")


def ranges(whole: Sequence[dict], parts: Sequence[dict], haze_floor: float
           ) -> tuple[dict, dict]:
    """(widened ranges, percentile ranges) per statistic, the haze's from ``haze_floor``;
    a statistic that could not be measured on a training frame makes the fit fail."""
    import numpy as np

    from edge.darkfield.frame_envelope import AFTER_INFERENCE, STATISTICS

    widened, trained = {}, {}
    for name in STATISTICS:
        rows = whole if name in AFTER_INFERENCE else [*whole, *parts]
        # a user's frame too small for the window share (MIN_SHARE_WINDOWS) has none to give
        rows = [d for d in rows if "image" not in d or np.isfinite(d[name])]
        v = np.array([d[name] for d in rows], np.float64)
        if not np.isfinite(v).all():
            bad = int((~np.isfinite(v)).sum())
            raise FitError(f"{name} could not be measured on {bad} of {v.size} training frames "
                           "and tiles")
        lo, hi = (float(x) for x in np.percentile(v, [LOW_PERCENTILE, HIGH_PERCENTILE]))
        trained[name] = (_r(lo), _r(hi))
        wlo, whi = widen(name, lo, hi)
        if name == "haze":
            wlo = haze_floor
        widened[name] = (_r(wlo), _r(whi))
    return widened, trained


@dataclass(frozen=True)
class Fit:
    ranges: dict
    trained: dict
    seeds: tuple[int, ...]
    tiles: int
    frame_px: int
    images: tuple[str, ...] = ()  # a user's own frames fitted too (--images)
    noise_limits: object = None  # edge.darkfield.noise.NoiseLimits; None: the camera model's

    def noise_json(self) -> str:
        """``noise_limits`` metadata (:func:`edge.darkfield.noise.limits_of`)."""
        from edge.darkfield.noise import CAMERA_MODEL

        n = self.noise_limits or CAMERA_MODEL
        return json.dumps({"limits": list(n.limits), "as_is": list(n.as_is),
                           "images": list(self.images),
                           "producer": "glass-inspect export frame-envelope"})

    def to_json(self) -> str:
        from edge.darkfield.frame_envelope import Envelope

        return Envelope(self.ranges).to_json(
            trained={k: list(v) for k, v in self.trained.items()},
            measured={"frames": len(self.seeds), "frame_seeds": list(self.seeds),
                      "frame_px": self.frame_px, "tiles": self.tiles, "tile_px": TILE_PX,
                      "images": list(self.images),
                      "percentiles": [LOW_PERCENTILE, HIGH_PERCENTILE], "margin": MARGIN,
                      "floor": {k: list(v) for k, v in FLOOR.items()},
                      "producer": "glass-inspect export frame-envelope"})


def fit(model: str | Path, frames: int = DEFAULT_FRAMES, threads: int = 0,
        progress: Callable[[int, int], None] | None = None, images: str | Path | None = None,
        bit_depth: int | None = None, bayer: bool = False) -> Fit:
    """The envelope of ``frames`` of ``model``'s training frames, and of the user's frames in
    the folder ``images`` when given (module docstring)."""
    from edge.darkfield.classify import Classifier
    from edge.darkfield.exposure import haze_floor

    # the model's own envelope, if any, is neither read nor applied: it is being replaced
    with Classifier.open(model, threads=threads, frame_envelope=False) as classifier:
        if classifier.prep.sensor is None or not classifier.prep.noise_units:
            raise FitError(f"{Path(model).name} does not say its camera model or does not "
                           "whiten its windows (spec metadata); the statistics are in its "
                           "camera's noise units")
        tf = TrainingFrames.of_metadata(classifier.engine.metadata, Path(model).name)
        seeds = tf.pick(frames)
        whole, parts = measure_frames(classifier, tf, seeds, progress)
        own, ratios = [], []
        if images is not None:
            own, own_parts, ratios = measure_images(classifier, images, bit_depth, bayer)
            whole, parts = [*whole, *own], [*parts, *own_parts]
        floor = haze_floor(classifier.engine.metadata)
    widened, trained = ranges(whole, parts, floor)
    return Fit(widened, trained, tuple(seeds), len(parts), tf.frame_px,
               tuple(d["image"] for d in own), noise_limits(ratios) if ratios else None)


def describe(f: Fit) -> list[str]:
    from edge.darkfield.frame_envelope import STATISTICS

    return [f"{STATISTICS[n][0]}: trained {f.trained[n][0]:.4g} to {f.trained[n][1]:.4g}, "
            f"envelope {lo:.4g} to {hi:.4g}{STATISTICS[n][1]}" for n, (lo, hi) in f.ranges.items()]


# -- the command ----------------------------------------------------------------------------------
def cmd_export_frame_envelope(args: argparse.Namespace) -> int:
    from edge.cli_common import UsageError, require

    require("onnx", "writing a model's metadata", "train")
    from edge.darkfield.classify import ModelError
    from edge.darkfield.frame_envelope import METADATA_KEY
    from edge.darkfield.noise import LIMITS_KEY
    from edge.engine.base import EngineError
    from edge.hashing import sha256_file
    from export.onnx import ExportError, set_metadata

    model = Path(args.model)
    if not model.is_file():
        raise UsageError(f"export frame-envelope: {model} does not exist")

    def tick(done: int, total: int) -> None:
        if not args.quiet:
            print(f"  {done} / {total} training frames measured", flush=True)

    try:
        f = fit(model, args.frames, args.threads, tick, args.images, args.bit_depth or None,
                args.bayer)
    except (FitError, ModelError, EngineError, ValueError) as exc:
        raise UsageError(f"export frame-envelope: {exc}") from None
    before = sha256_file(model)
    try:
        out = set_metadata(model, {METADATA_KEY: f.to_json(), LIMITS_KEY: f.noise_json()},
                           args.out)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    print("\n".join(describe(f)))
    if f.images:
        n = f.noise_limits
        print(f"with {len(f.images)} of your own frames ({args.images}); noise "
              f"{n.limits[0]:g}-{n.limits[1]:g} x the camera model accepted, "
              f"{n.as_is[0]:g}-{n.as_is[1]:g} taken as it comes")
    print(f"wrote the envelope of {len(f.seeds)} training frames ({f.tiles} tiles of {TILE_PX} "
          f"px) into {out}; SHA-256 {before[:12]} -> {sha256_file(out)[:12]} (weights "
          "unchanged: engines built from the old file name the old hash)")
    return 0


def add_command(esub: argparse._SubParsersAction) -> None:
    """``export frame-envelope``, for :mod:`export.cli` to register (imports nothing heavy)."""
    c = esub.add_parser(
        "frame-envelope",
        help="measure the window classifier's training frames into its ONNX metadata",
        description="Render frames the single-image window classifier was trained on (its "
                    "settings metadata), prepare each as 'classify' does, measure the "
                    "runtime's per-frame statistics (background power at 2-8 px over white "
                    "noise, noise in the bright haze over the dim, haze level and spread, dark "
                    "and bright outliers, share of positive windows) on each frame and its "
                    f"{TILE_PX} px tiles, and write the widened range of each into the model's "
                    "'frame_envelope' metadata. 'classify' then gives ERROR for a frame "
                    "outside it. Only the metadata changes (the graph is checked byte for "
                    "byte); the file's SHA-256 does.")
    c.add_argument("model", metavar="MODEL.onnx")
    c.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help=f"training frames to measure, evenly spread over the model's list "
                        f"(default: {DEFAULT_FRAMES}; about 5 s each)")
    c.add_argument("--images", metavar="DIR",
                   help="also your own frames the model was fine-tuned on (train --images): "
                        "their statistics join the envelope and their noise sets the model's "
                        "noise limits")
    c.add_argument("--bit-depth", type=int, choices=(8, 12, 16), default=0,
                   help="with --images: as classify --bit-depth (default: as stored)")
    c.add_argument("--bayer", action="store_true",
                   help="with --images: RAW Bayer mosaics, as classify --bayer")
    c.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all)")
    c.add_argument("--out", metavar="FILE.onnx", help="(default: MODEL, in place)")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.set_defaults(func=cmd_export_frame_envelope)
