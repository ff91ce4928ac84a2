"""The held-out set: simulated samples rendered once, their truth and every detector's score maps
cached on disk, so comparing post-processing settings re-renders and re-infers nothing; and the
seed bookkeeping that keeps a test set apart from everything training and selection saw.

A set is fixed by the head (:func:`render_identity`: camera, optics, RoI grid, tiling), the first
seed, the share of scratched samples and its seeds (by default ``n`` consecutive ones; a
must-fail set skips the seeds whose sample holds no scratch the reject rule counts,
:func:`must_fail_seeds`). Per sample it keeps:

* ``truth/SEED.npz``: per RoI the labelled scratches (visible in that RoI's mask) as centre-line
  points on the score-map grid, their ids and lengths (mm), and per scratch its peak signal
  (:func:`scratch_peak_dn`). Truth cached before the peaks were recorded stays readable: the
  peaks are then worked out again from the sample's seed (generating a sample costs
  milliseconds; only rendering is slow);
* ``scores/KEY/SEED.npz``: per RoI the detector's score map, quantised to 8 bits over its own
  range (the thresholds are swept in steps of 0.05: 1/255 of the range is far below that),
  compressed, and per RoI the runtime's refusal (an ERROR, e.g. frames unlike the training
  frames; empty when it scored the RoI). ``KEY`` names the detector and what it was computed
  with: a network by its file's SHA-256 and the calibration's, a baseline by its name and
  :data:`BASELINE_VERSION`.

A detector missing for a sample is computed when the set is scored, which renders that sample
once for all missing detectors. Every file is written whole or not at all (a temporary name,
then a rename), one sample at a time, so a run that is stopped (Ctrl-C, a lost session, a
reboot) loses at most the sample in progress and the same command continues where it stopped.
Choice: the frames themselves are not cached. A full-size RoI is 131 MB (about 40 MB
compressed), so 150 samples of 10 RoIs would be 60 GB; rendering is about a third of the time a
network takes on the same RoI, so caching the maps saves most of the time at 1 % of the space.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.config import HeadConfig
from edge.errors import UserError
from edge.sim import OpticsRenderer, generate_sample

BASELINE_VERSION = 1  # bump when a baseline's maths changes: its cached maps are stale
DEFAULT_CACHE = Path(os.environ.get("GLASS_INSPECT_CACHE",
                                    Path.home() / ".cache" / "glass-inspect")) / "heldout"


@dataclass
class RoiTruth:
    lines: dict[int, np.ndarray]  # scratch id -> (n, 2) centre-line points (row, col), map grid
    lengths: dict[int, float]  # scratch id -> its whole length, mm


@dataclass
class SampleTruth:
    seed: int
    rois: list[RoiTruth]
    # scratch id -> its peak signal, DN above the haze (scratch_peak_dn); None: not recorded
    peaks: dict[int, float] | None = None

    @property
    def labelled(self) -> dict[int, float]:
        return {i: r.lengths[i] for r in self.rois for i in r.lines}


def scratch_peak_dn(d, cfg: HeadConfig) -> float:
    """A scratch's peak signal above the haze in its brightest state, in DN of the green
    channel at the head's exposure: the largest of the simulator's own per-vertex, per-state
    peaks (:func:`edge.sim.optics.line_response`: the drawn brightness times the angular
    response of each LED state and the envelope along the length), scaled from the reference
    exposure to the head's. Choice: the flat field (1); the head's LED balance and fall-off move
    it by their +-10-25 % where the scratch lies, which is the head's, not the scratch's.
    ``intensity_dn`` alone would overstate a scratch whose normal falls between two states (its
    brightest state then sees a few tenths of it)."""
    from edge.sim.optics import REFERENCE_EXPOSURE_MS, line_response

    amp, _ = line_response(d, np.asarray(cfg.illumination.angles_deg, np.float64))
    return float(amp.max()) * cfg.camera.exposure_ms / REFERENCE_EXPOSURE_MS


def sample_peaks(sample, cfg: HeadConfig) -> dict[int, float]:
    return {i: scratch_peak_dn(d, cfg) for i, d in enumerate(sample.objects)
            if d.kind == "scratch"}


def _points_in_roi(points_mm: np.ndarray, origin, mm_per_px, shape) -> np.ndarray:
    """Centre-line points -> (row, col) at half resolution, those inside the map."""
    col = (points_mm[:, 0] - origin[0]) / mm_per_px[0] / 2.0
    row = (points_mm[:, 1] - origin[1]) / mm_per_px[1] / 2.0
    rc = np.stack([row, col], axis=1)
    inside = (rc[:, 0] >= 0) & (rc[:, 0] < shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < shape[1])
    return rc[inside]


def roi_truth(sample, origin, mmpp, mask: np.ndarray) -> RoiTruth:
    """The sample's scratches visible in this RoI (a centre-line point within 1 map pixel of its
    mask, at half resolution)."""
    h2, w2 = mask.shape
    lines, lengths = {}, {}
    for i, d in enumerate(sample.objects):
        if d.kind != "scratch":
            continue
        pts = _points_in_roi(d.points, origin, mmpp, (h2, w2))
        if not len(pts):
            continue
        ij = np.clip(np.round(pts).astype(int), 0, [h2 - 1, w2 - 1])
        near = np.zeros_like(mask)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near[np.clip(ij[:, 0] + dy, 0, h2 - 1), np.clip(ij[:, 1] + dx, 0, w2 - 1)] = True
        if (near & mask).any():
            lines[i], lengths[i] = pts, float(d.length_mm)
    return RoiTruth(lines, lengths)


def _save_truth(path: Path, t: SampleTruth) -> None:
    arrays, meta = {}, {"seed": t.seed, "rois": []}
    for k, r in enumerate(t.rois):
        meta["rois"].append({str(i): r.lengths[i] for i in r.lines})
        for i, pts in r.lines.items():
            arrays[f"r{k}_{i}"] = pts.astype(np.float32)
    if t.peaks is not None:
        meta["peaks"] = {str(i): v for i, v in t.peaks.items()}
    arrays["meta"] = np.array(json.dumps(meta))
    _atomic_savez(path, arrays)


def _load_truth(path: Path) -> SampleTruth:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        rois = []
        for k, lens in enumerate(meta["rois"]):
            ids = {int(i): float(v) for i, v in lens.items()}
            rois.append(RoiTruth({i: z[f"r{k}_{i}"].astype(np.float64) for i in ids}, ids))
    peaks = meta.get("peaks")  # absent in truth cached before peaks were recorded
    return SampleTruth(int(meta["seed"]), rois,
                       None if peaks is None else {int(i): float(v) for i, v in peaks.items()})


def _atomic_savez(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def quantise(score: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(score.min()), float(score.max())
    if hi <= lo:
        return np.zeros(score.shape, np.uint8), lo, lo
    q = np.round((score - lo) * (255.0 / (hi - lo)))
    return q.astype(np.uint8), lo, hi


def dequantise(q: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.full(q.shape, lo, np.float32)
    return (lo + q.astype(np.float32) * ((hi - lo) / 255.0)).astype(np.float32)


class Refused(Exception):
    """The runtime refused a RoI (its verdict would be ERROR): the reason."""


@dataclass
class Detector:
    """One thing that scores RoIs: its cache key and ``score(frames, roi_index, origin_mm)``,
    which raises :class:`Refused` where the runtime would answer ERROR. A network also carries
    its file's SHA-256 and its metadata (what it was trained on)."""

    name: str
    key: str
    score: Callable[[np.ndarray, int, tuple[float, float]], np.ndarray]
    sha256: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def is_network(self) -> bool:
        return self.sha256 is not None


def network_detector(name: str, path: str | Path, cfg: HeadConfig, threads: int = 0,
                     calibration=None) -> Detector:
    """An ONNX network through the runtime's own tiling, engine and stitching. What the runtime
    reports as a failure of the RoI (:class:`edge.pipeline.PipelineError`, e.g. frames unlike
    the training frames) is a refusal, as the runtime's verdict would be ERROR."""
    from edge.engine import open_engine
    from edge.pipeline import PipelineError, process_roi

    engine = open_engine(path, "onnxruntime", threads, max(cfg.engine.batch_sizes))
    cal = calibration.sha256[:12] if calibration is not None else "raw"
    key = f"net-{engine.sha256[:16]}-{cal}"

    def score(frames, index, origin):
        try:
            r = process_roi(frames, calibration, engine, cfg, index, origin, keep_score=True)
        except PipelineError as exc:
            raise Refused(str(exc)) from None
        why = getattr(r, "error", None)  # a result that carries its own refusal
        if why:
            raise Refused(str(why))
        return r.score

    return Detector(name, key, score, engine.sha256, dict(engine.metadata))


def baseline_detector(name: str) -> Detector:
    from model.baselines import BASELINES

    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; the baselines are {sorted(BASELINES)}")
    scorer = BASELINES[name]()
    return Detector(name, f"base-{name}-v{BASELINE_VERSION}",
                    lambda frames, index, origin: scorer(frames))


def render_identity(cfg: HeadConfig) -> str:
    """SHA-256 of what the frames, the truth and a network's maps depend on: the camera, the
    LED groups' angles, the RoI grid, the simulated sensor and optics, and the tiling. Not the
    whole head file: its stage port, limits, post-processing or reject rule change no map."""
    d = cfg.model_dump(mode="json")
    keep = {"camera": d["camera"], "angles": [s["angle_deg"] for s in d["illumination"]["states"]],
            "roi_grid": d["stage"]["roi_grid"], "simulation": d["simulation"],
            "tiles": [d["pipeline"]["tile_size"], d["pipeline"]["tile_overlap"]]}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


@dataclass
class Cost:
    """What filling a set took, for the samples computed in this run (cached ones cost
    nothing): seconds rendering, and per detector key seconds scoring; wall-clock seconds and
    the process's CPU seconds (all its threads), which other work on the same cores inflates
    far less than the wall clock."""

    samples: int = 0
    render_s: float = 0.0
    render_cpu_s: float = 0.0
    score_s: dict[str, float] = field(default_factory=dict)
    score_cpu_s: dict[str, float] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)  # per key: samples it scored


@dataclass
class ScoredSample:
    truth: SampleTruth
    maps: list[np.ndarray]
    refused: list[str]  # per RoI: the runtime's reason for an ERROR, "" where it scored


def progress_bar(rois: int, samples: int, enabled: bool = True):
    """A bar over ``rois`` RoIs with the time left; written to a file (a run in the
    background) it is redrawn every 30 s in plain characters, not every RoI."""
    tty = sys.stderr.isatty()
    return tqdm(total=rois, unit="RoI", disable=not enabled,
                desc=f"rendering and scoring {samples} samples",
                mininterval=0.1 if tty else 30.0, ascii=not tty)


class HeldOutSet:
    """Samples from ``seed`` on head ``cfg``, drawn with ``scratch_share``, cached under ``root``:
    ``n`` consecutive seeds, or the given ``seeds`` (which then start at ``seed``)."""

    def __init__(self, cfg: HeadConfig, n: int, seed: int, scratch_share: float,
                 root: str | Path | None = None, calibration=None,
                 seeds: Sequence[int] | None = None):
        self.cfg, self.seed, self.share = cfg, seed, scratch_share
        self.seeds = list(range(seed, seed + n)) if seeds is None else [int(s) for s in seeds]
        if self.seeds and self.seeds[0] != seed:
            raise ValueError(f"the seeds of a set start at its first seed {seed}, "
                             f"not {self.seeds[0]}")
        self.n = len(self.seeds)
        self.calibration = calibration
        ident = json.dumps({"head": render_identity(cfg), "seed": seed, "share": scratch_share})
        self.id = hashlib.sha256(ident.encode()).hexdigest()[:16]
        self.dir = Path(root or DEFAULT_CACHE) / self.id

    def _truth_path(self, s: int) -> Path:
        return self.dir / "truth" / f"{s}.npz"

    def _score_path(self, key: str, s: int) -> Path:
        return self.dir / "scores" / key / f"{s}.npz"

    def _todo(self, detectors: list[Detector]) -> list[int]:
        return [s for s in self.seeds if not self._truth_path(s).exists()
                or any(not self._score_path(d.key, s).exists() for d in detectors)]

    def missing(self, detectors: list[Detector]) -> int:
        """How many samples still need rendering for these detectors."""
        return len(self._todo(detectors))

    def fill(self, detectors: list[Detector], progress: bool = True, bar=None) -> Cost:
        """Render each sample that lacks a detector's maps (or its truth) once, and cache; what
        it took. The progress bar (:func:`progress_bar`, or ``bar`` when several sets share
        one) counts RoIs and estimates the time left from this run's pace."""
        cfg = self.cfg
        grid = cfg.stage.roi_grid
        todo = self._todo(detectors)
        cost = Cost(score_s={d.key: 0.0 for d in detectors})
        if not todo:
            return cost
        optics = OpticsRenderer(cfg)
        exposures = (self.calibration.led_exposure_scale
                     if self.calibration is not None else None)
        own = bar is None
        if own:
            bar = progress_bar(len(todo) * grid.count, len(todo), progress)
        for s in todo:
            sample = generate_sample(s, grid.extent_mm, self.share,
                                     glass=getattr(cfg.simulation, "glass", "default"))
            need = [d for d in detectors if not self._score_path(d.key, s).exists()]
            maps: dict[str, list] = {d.key: [] for d in need}
            refused: dict[str, list[str]] = {d.key: [] for d in need}
            rois = []
            for roi in range(grid.count):
                origin = grid.roi_origin_mm(roi)
                t, tc = time.perf_counter(), time.process_time()
                r = optics.render(sample, origin, noise_seed=(sample.seed << 8) + roi,
                                  exposure_factors=exposures)
                h2, w2 = r.frames.shape[1] // 2, r.frames.shape[2] // 2
                mask = r.mask.reshape(h2, 2, w2, 2).any(axis=(1, 3))
                rois.append(roi_truth(sample, origin, cfg.mm_per_px, mask))
                cost.render_s += time.perf_counter() - t
                cost.render_cpu_s += time.process_time() - tc
                for d in need:
                    t, tc = time.perf_counter(), time.process_time()
                    try:
                        m, why = d.score(r.frames, roi, origin), ""
                    except Refused as exc:
                        m, why = np.zeros((h2, w2), np.float32), str(exc) or "refused"
                    cost.score_s[d.key] += time.perf_counter() - t
                    cost.score_cpu_s[d.key] = (cost.score_cpu_s.get(d.key, 0.0)
                                               + time.process_time() - tc)
                    maps[d.key].append(quantise(m))
                    refused[d.key].append(why)
                bar.update()
            for d in need:
                cost.scored[d.key] = cost.scored.get(d.key, 0) + 1
                q = maps[d.key]
                _atomic_savez(self._score_path(d.key, s),
                              {"q": np.stack([m for m, _, _ in q]),
                               "range": np.array([[lo, hi] for _, lo, hi in q], np.float64),
                               "refused": np.array(refused[d.key])})
            if not self._truth_path(s).exists():
                _save_truth(self._truth_path(s),
                            SampleTruth(sample.seed, rois, sample_peaks(sample, cfg)))
            cost.samples += 1
        if own:
            bar.close()
        return cost

    def _peaks(self, truth: SampleTruth) -> dict[int, float]:
        if truth.peaks is not None:
            return truth.peaks
        sample = generate_sample(truth.seed, self.cfg.stage.roi_grid.extent_mm, self.share,
                                 glass=getattr(self.cfg.simulation, "glass", "default"))
        return sample_peaks(sample, self.cfg)

    def samples(self, key: str) -> Iterator[tuple[SampleTruth, list[np.ndarray]]]:
        """Per sample its truth and the detector's score maps, one per RoI."""
        for s in self.scored(key):
            yield s.truth, s.maps

    def scored(self, key: str) -> Iterator[ScoredSample]:
        """Per sample its truth (with the scratches' peaks), the detector's score maps and its
        refusals, one per RoI (maps cached before refusals were recorded: none)."""
        for s in self.seeds:
            truth = _load_truth(self._truth_path(s))
            truth.peaks = self._peaks(truth)
            with np.load(self._score_path(key, s)) as z:
                q, rng = z["q"], z["range"]
                refused = [str(v) for v in z["refused"]] if "refused" in z else [""] * len(q)
            yield ScoredSample(truth, [dequantise(q[i], *rng[i]) for i in range(len(q))],
                               refused)


# -- which seeds served what -------------------------------------------------------------------

# the training sampler's tries per patch (model.data.PatchSampler's max_tries): a patch index
# may draw its window from any of that many keys
PATCH_TRIES = 50
VALIDATION_SEED_OFFSET = 1_000_003  # model.train's: the training-time validation patches


class SeedError(UserError, ValueError):
    """Seeds that cannot make the set asked for."""


class SeedOverlapError(SeedError):
    """A test range that shares a sample seed with what training or a choice saw."""


@dataclass(frozen=True)
class Seeds:
    """Sample seeds that served one ``role`` (training, validation, test), and how they were
    drawn. Either a block (``first`` .. ``last``, inclusive) or a set drawn at random
    (``drawn``: how; ``seeds``: which)."""

    role: str
    what: str
    first: int | None = None
    last: int | None = None
    seeds: frozenset = frozenset()
    drawn: str = ""
    count: int | None = None
    scratch_share: float | None = None
    extra: dict = field(default_factory=dict)

    def contains(self, s: int) -> bool:
        if self.first is not None:
            return self.first <= s <= self.last
        return s in self.seeds

    def span(self) -> str:
        if self.first is not None:
            return f"{self.first}-{self.last}"
        return f"{self.count} seeds drawn at random ({self.drawn})"

    def to_dict(self) -> dict:
        out: dict = {"what": self.what}
        if self.first is not None:
            out.update(first=self.first, last=self.last)
        else:
            out.update(drawn=self.drawn)
        if self.count is not None:
            out["count"] = self.count
        if self.scratch_share is not None:
            out["scratch_share"] = self.scratch_share
        return {**out, **self.extra}


# Blocks that served a choice before this record was kept, and so can never be a test range:
# every shipped network's post-processing sweep, and the first held-out set, on whose first 45
# samples candidates were compared and hard negatives judged (issue 30). A test range that has
# been looked at and then led to any change joins this list (docs/evaluation/README.md).
SPENT = (
    Seeds("validation", "the post-processing sweeps of the shipped networks "
          "(docs/evaluation/sweep-validation-30*.json)", 800_000, 800_029, scratch_share=0.4),
    Seeds("validation", "the first held-out set (models/evaluation.json before issue 30): "
          "candidates were compared on its first 45 samples", 900_000, 900_149,
          scratch_share=0.4),
    Seeds("validation", "must-fail block of the long-line development (issue 30): the shipped "
          "and the long-line networks were compared on it", 810_000, 810_199, scratch_share=1.0),
    Seeds("validation", "clean block of the long-line development (issue 30)", 820_000, 820_199,
          scratch_share=0.0),
)


def _drawn_seed(seed: int, index: int) -> int:
    """The sample seed of training window ``index`` of a run seeded ``seed``: the first draw of
    ``default_rng([seed, index])``, exactly as :class:`model.data.SimulatedPatches` draws it."""
    return int(np.random.default_rng([seed, index]).integers(2**31))


def _drawn_seeds(seed: int, n: int, cache: Path | None) -> frozenset:
    path = cache / f"drawn-{seed}-{n}.npy" if cache is not None else None
    if path is not None and path.exists():
        try:
            return frozenset(int(v) for v in np.load(path))
        except (OSError, ValueError):
            pass
    out = np.array([_drawn_seed(seed, i) for i in range(n)], np.int64)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part.npy")
        np.save(tmp, out)
        tmp.replace(path)
    return frozenset(int(v) for v in out)


def training_seeds(name: str, metadata: dict, cache: str | Path | None = None) -> list[Seeds]:
    """The glass-sample seeds a network's training and its training-time validation drew, from
    the ``settings`` its export wrote into the model's metadata (:mod:`export.onnx`); an empty
    list when they are unknown or are not glass samples (said in the return's ``what``).

    Simulated six-state patches draw each window's sample from the seed
    ``default_rng([seed, index]).integers(2**31)``: with a window pool, ``index`` is below the
    pool; without one, below (epochs x steps x batch) x the sampler's tries; validation patches
    use ``seed + VALIDATION_SEED_OFFSET`` and indexes below val_patches x tries. Both bounds
    include every index the run may have drawn (a patch found at its first try uses fewer)."""
    try:
        s = json.loads(metadata.get("settings") or "null")
    except ValueError:
        s = None
    if not isinstance(s, dict) or "seed" not in s:
        return [Seeds("training", f"{name}: unknown (the model carries no training settings)",
                      count=0)]
    if s.get("samples"):
        return [Seeds("training", f"{name}: {len(s['samples'])} recorded samples, no simulated "
                      "glass samples", count=0)]
    if s.get("data", "sixstate") != "sixstate":
        return [Seeds("training", f"{name}: single dark-field frames of another simulator "
                      f"({s.get('data')}), no glass samples", count=0)]
    seed = int(s["seed"])
    root = Path(cache or DEFAULT_CACHE) / "seeds"  # beside the sets, whose folders are hex ids
    pool = int(s.get("window_pool") or 0) if s.get("window_cache") else 0
    if pool:
        n, how = pool, f"default_rng([{seed}, i]).integers(2**31), i < {pool} (the window pool)"
    else:
        n = int(s["epochs"]) * int(s["steps_per_epoch"]) * int(s["batch_size"]) * PATCH_TRIES
        how = f"default_rng([{seed}, i]).integers(2**31), i < {n} (every window key of the run)"
    vseed = seed + VALIDATION_SEED_OFFSET
    nv = int(s.get("val_patches", 16)) * PATCH_TRIES
    return [
        Seeds("training", f"{name}: training patches", seeds=_drawn_seeds(seed, n, root),
              drawn=how, count=n),
        Seeds("validation", f"{name}: training-time validation patches",
              seeds=_drawn_seeds(vseed, nv, root),
              drawn=f"default_rng([{vseed}, i]).integers(2**31), i < {nv}", count=nv),
    ]


def sweep_seeds(doc: dict, source: str) -> list[Seeds]:
    """The validation blocks a sweep file (written by ``evaluate --sweep``) records: one block,
    or a list (a must-fail and a clean block)."""
    s = doc.get("seeds") if isinstance(doc, dict) else None
    out = []
    for b in s if isinstance(s, list) else [s]:
        if isinstance(b, dict) and "first" in b and "last" in b:
            out.append(Seeds("validation", f"the post-processing sweep ({source})",
                             int(b["first"]), int(b["last"]),
                             scratch_share=b.get("scratch_share")))
    return out


def check_test_seeds(test: Sequence[Seeds], known: Sequence[Seeds]) -> None:
    """Refuse (:class:`SeedOverlapError`) test blocks whose sample seeds meet any ``known``
    training or validation seeds, or each other: a test range is one no choice was made on.
    (A sweep checks its validation block against training seeds the same way.)"""
    for t in test:
        seeds = range(t.first, t.last + 1) if t.first is not None else sorted(t.seeds)
        for k in [*known, *(o for o in test if o is not t)]:
            if k.count == 0:
                continue
            if k.first is not None and t.first is not None:
                hit = [max(t.first, k.first)] if t.first <= k.last and k.first <= t.last else []
            else:
                hit = [s for s in seeds if k.contains(s)][:1]
            if hit:
                served = ("the other test block" if k.role == "test" and k in test
                          else k.role)
                raise SeedOverlapError(
                    f"{t.role} seeds {t.span()} ({t.what}) include seed {hit[0]}, which served "
                    f"{served} ({k.what}: {k.span()}); choose another --seed, a block that no "
                    f"training and no choice has seen (docs/evaluation/README.md lists the "
                    f"ranges in use)")


def must_fail_seeds(first: int, n: int, cfg: HeadConfig, limit: int = 100_000) -> list[int]:
    """The first ``n`` seeds from ``first`` on whose sample, drawn with every sample scratched
    (scratch share 1), holds a scratch the head's reject rule counts (its whole length at least
    ``min_length_mm``). Choice: the truth decides, before anything is rendered or scored, so
    skipping the others selects on nothing a detector did; about 3 in 10 single-scratch samples
    hold only scratches shorter than 0.5 mm (lengths are log-uniform 0.05-70 mm)."""
    rule, extent = cfg.reject_rule, cfg.stage.roi_grid.extent_mm
    out: list[int] = []
    s = first
    while len(out) < n:
        if s - first >= limit:
            raise SeedError(f"only {len(out)} of {n} must-fail samples in {limit} seeds from "
                             f"{first}: is the reject rule ({rule.min_length_mm} mm) longer than "
                             "the simulator's scratches?")
        drawn = generate_sample(s, extent, 1.0, glass=getattr(cfg.simulation, "glass", "default"))
        if any(rule.rejects(d.length_mm) for d in drawn.scratches):
            out.append(s)
        s += 1
    return out
