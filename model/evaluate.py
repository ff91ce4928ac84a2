"""Quality of networks and baselines on held-out simulated samples, as the glass paper's Table 1
counts, under a protocol that cannot flatter (docs/evaluation/README.md).

Each sample is rendered RoI by RoI on the full-size simulated head; every detector sees the same
frames (:mod:`model.heldout`, which caches the truth and every detector's score maps on disk): a
network exactly as the device runs it (the runtime's space-to-depth, tiles of the head's size on
ONNX Runtime, stitching; with a calibration, corrected as the runtime corrects), a baseline
(:mod:`model.baselines`) on the raw frames. Every score map then goes through the runtime's
post-processing (:func:`edge.postprocess.find_scratches`), its defect conversion
(:func:`edge.pipeline.to_defects`) and its verdict (:func:`edge.verdict.decide`), so
:func:`sweep` can try post-processing settings on the cached maps without rendering or
inferring again.

The test set (:func:`evaluate_report`): either ``must_fail`` samples drawn with every sample
scratched (from ``seed``, keeping those with a scratch the reject rule counts,
:func:`model.heldout.must_fail_seeds`) and ``clean`` samples drawn with none (from
``clean_seed``), two separate seed blocks; or, for a quick look, ``n_samples`` consecutive seeds
at ``scratch_share``. Before anything is rendered, the test blocks are checked against every
seed the protocol knows served training (each network's metadata), validation (the sweep whose
settings are used, the training-time validation patches) or an earlier choice
(:data:`model.heldout.SPENT`); any overlap is refused.

Counts (ground truth from the simulator), under the head's reject rule
(``[reject_rule] min_length_mm``, :class:`edge.config.RejectRule`), which the verdict applies too:

* a scratch of the sample is *labelled* when a point of its centre line lies within 2 px of its
  RoI's mask (it is visible there); it *must be caught* when it is labelled and its length is at
  least the rule's;
* **sample level**: a sample *must fail* when it holds a scratch that must be caught, is *clean*
  when it holds no labelled scratch, and otherwise (only scratches shorter than the rule) counts
  neither way. It is predicted FAIL exactly when the runtime's verdict is
  (:func:`edge.verdict.decide` over its RoIs' results: merged across RoIs, then the rule), and
  ERROR when the runtime refused any of its RoIs (e.g. frames unlike the training frames).
  An ERROR is neither PASS nor FAIL: on a must-fail sample it is no miss (the glass is not
  passed), on a clean sample it is a false refusal. FN rate = must-fail samples predicted PASS /
  must-fail samples; FP rate = clean samples predicted FAIL / clean samples; ERROR rate
  (``sample_error_rate``) = clean samples predicted ERROR / clean samples;
* **image level** (one RoI): the same per RoI (a RoI must be flagged when a scratch that must be
  caught is visible in it; it is flagged when it keeps a scratch the rule rejects); a refused
  RoI is neither (``images_error``);
* **scratch level**: a labelled scratch is *found* when a kept box (grown by ``MARGIN_MM``) holds
  a point of it, whatever its length; recall = found / labelled, also by length and by peak
  signal (``recall_by_peak_dn``: DN above the haze in the scratch's brightest state,
  :func:`model.heldout.scratch_peak_dn`), and for scratches of at least 1 mm and 12 DN
  together (``recall_1mm_12dn``). A kept box is *correct* when it holds a point of any
  scratch; precision = correct / kept. Boxes are counted per RoI (a scratch in the overlap of
  two RoIs counts in both).

Every rate comes with its 95 % Wilson score interval (``*_ci``): with 150 samples a rate of
2 % is known only to within about -1.3/+3.5 points; 0 misses in 200 bound the rate below 1.9 %.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.cli_common import UsageError
from edge.config import SHIPPED, HeadConfig, model_path, shipped
from model.metrics import covered

MARGIN_MM = 0.15
# a block for quick looks (the default of --seed): looked at freely, so never a test range
DEVELOPMENT_SEED = 910_000
HELD_OUT_SEED = DEVELOPMENT_SEED  # the old name
CLEAN_OFFSET = 100_000  # the clean block's first seed after the must-fail block's, by default
FORMAT = "glass-inspect-evaluation/2"

LENGTH_BINS = ((0.0, 0.5), (0.5, 1.0), (1.0, 5.0), (5.0, float("inf")))
LENGTH_BIN_NAMES = ("0-0.5", "0.5-1", "1-5", ">=5")
# DN above the haze in the brightest state; 8 DN is about 3.5 x the read noise of one pixel
PEAK_BINS = ((0.0, 6.0), (6.0, 12.0), (12.0, 24.0), (24.0, 48.0), (48.0, float("inf")))
PEAK_BIN_NAMES = ("<6", "6-12", "12-24", "24-48", ">=48")
RECALL_MIN_MM, RECALL_MIN_DN = 1.0, 12.0


def _bin(value: float, bins, names) -> str:
    for (lo, hi), name in zip(bins, names, strict=True):
        if lo <= value < hi:
            return name
    return "?"


def _length_bin(length: float) -> str:
    return _bin(length, LENGTH_BINS, LENGTH_BIN_NAMES)


def _peak_bin(peak: float) -> str:
    return _bin(peak, PEAK_BINS, PEAK_BIN_NAMES)


@dataclass
class Counts:
    images: int = 0
    image_pos: int = 0
    image_fn: int = 0
    image_fp: int = 0
    image_clean: int = 0
    image_error: int = 0
    samples: int = 0
    sample_pos: int = 0
    sample_fn: int = 0
    sample_fp: int = 0
    sample_clean: int = 0
    sample_error: int = 0
    sample_error_pos: int = 0  # must-fail samples answered ERROR: not missed
    sample_error_clean: int = 0  # clean samples answered ERROR: false refusals
    min_length_mm: float = 0.0
    labelled: int = 0
    found: int = 0
    kept: int = 0
    correct: int = 0
    infer_s: float = 0.0
    by_length: dict = field(default_factory=dict)
    by_peak: dict = field(default_factory=dict)
    strong: list = field(default_factory=lambda: [0, 0])  # found, of >= 1 mm and >= 12 DN

    def tally(self, level: str, must: bool, clean: bool, flagged: bool,
              refused: bool = False) -> None:
        """One image or sample (``level``): must it fail, is it clean, was it flagged, or
        refused (ERROR: neither flagged nor passed)."""
        for key, add in (("pos", must), ("clean", clean),
                         ("fn", must and not flagged and not refused),
                         ("fp", clean and flagged and not refused), ("error", refused)):
            name = f"{level}_{key}"
            setattr(self, name, getattr(self, name) + add)
        if level == "sample" and refused:
            self.sample_error_pos += must
            self.sample_error_clean += clean

    def summary(self) -> dict:
        def r(a, b):
            return round(a / b, 4) if b else None

        out = {
            "samples": self.samples, "samples_must_fail": self.sample_pos,
            "samples_clean": self.sample_clean, "samples_error": self.sample_error,
            "samples_missed": self.sample_fn, "samples_false_fail": self.sample_fp,
            "samples_error_must_fail": self.sample_error_pos,
            "samples_error_clean": self.sample_error_clean,
            "sample_fn_rate": r(self.sample_fn, self.sample_pos),
            "sample_fp_rate": r(self.sample_fp, self.sample_clean),
            "sample_error_rate": r(self.sample_error_clean, self.sample_clean),
            "images": self.images, "images_must_flag": self.image_pos,
            "images_clean": self.image_clean, "images_error": self.image_error,
            "image_fn_rate": r(self.image_fn, self.image_pos),
            "image_fp_rate": r(self.image_fp, self.image_clean),
            "scratches_labelled": self.labelled, "scratch_recall": r(self.found, self.labelled),
            "kept": self.kept, "scratch_precision": r(self.correct, self.kept),
            # every bin, an empty one with recall None: a bin left out would read as unknown
            "recall_by_length_mm": {k: r(*self.by_length.get(k, (0, 0)))
                                    for k in LENGTH_BIN_NAMES},
            "scratches_by_length_mm": {k: self.by_length.get(k, (0, 0))[1]
                                       for k in LENGTH_BIN_NAMES},
            "recall_by_peak_dn": {k: r(*self.by_peak.get(k, (0, 0))) for k in PEAK_BIN_NAMES},
            "scratches_by_peak_dn": {k: self.by_peak.get(k, (0, 0))[1] for k in PEAK_BIN_NAMES},
            "recall_1mm_12dn": r(*self.strong), "scratches_1mm_12dn": self.strong[1],
            "min_length_mm": self.min_length_mm,
        }
        for key, k, n in (("sample_fn_rate", self.sample_fn, self.sample_pos),
                          ("sample_fp_rate", self.sample_fp, self.sample_clean),
                          ("sample_error_rate", self.sample_error_clean, self.sample_clean),
                          ("image_fn_rate", self.image_fn, self.image_pos),
                          ("image_fp_rate", self.image_fp, self.image_clean),
                          ("scratch_recall", self.found, self.labelled),
                          ("recall_1mm_12dn", *self.strong),
                          ("scratch_precision", self.correct, self.kept)):
            out[key + "_ci"] = wilson(k, n)
        return out


def wilson(k: int, n: int, z: float = 1.959964) -> list[float] | None:
    """95 % Wilson score interval of the rate k / n ([low, high]); None when n is 0."""
    if n <= 0:
        return None
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [round(float(max(0.0, mid - half)), 4), round(float(min(1.0, mid + half)), 4)]


def score_boxes(result) -> np.ndarray:
    """A RoI result's kept boxes ``(K, 4)`` row0, col0, row1, col1 in half-resolution pixels."""
    # RAW pixel boxes (x0, y0, x1, y1) back to the score map's (row, col), 2 x 2 per pixel
    return np.array([[d.box_px[1] // 2, d.box_px[0] // 2, d.box_px[3] // 2, d.box_px[2] // 2]
                     for d in result.defects], np.int64).reshape(-1, 4)


def count(samples: Iterable, cfg: HeadConfig, pipeline=None, calibration=None) -> Counts:
    """The counts of one detector's maps (``samples``: per sample its truth, its score maps and
    optionally its RoIs' refusals, as :meth:`model.heldout.HeldOutSet.scored` gives them, or
    ``(truth, maps[, refused])`` tuples) under ``pipeline`` (default: the head's, or its
    calibration's thresholds) and the head's reject rule."""
    from edge.pipeline import to_defects
    from edge.postprocess import find_scratches
    from edge.verdict import RoiResult, Status, decide

    rule = cfg.reject_rule
    p = pipeline or (calibration.pipeline_for(cfg) if calibration is not None else cfg.pipeline)
    mapping = calibration.mapping(cfg) if calibration is not None else None
    grid = cfg.stage.roi_grid
    mmpp = cfg.mm_per_px
    margin_px = MARGIN_MM / (2.0 * float(np.mean(mmpp)))
    c = Counts(min_length_mm=rule.min_length_mm)
    for item in samples:
        if isinstance(item, tuple):
            truth, maps, refused = (*item, None) if len(item) == 2 else item
        else:
            truth, maps, refused = item.truth, item.maps, item.refused
        refused = list(refused) if refused is not None else [""] * len(maps)
        results = []
        found_ids: set[int] = set()
        for roi, (t, score, why) in enumerate(zip(truth.rois, maps, refused, strict=True)):
            must = any(rule.rejects(t.lengths[i]) for i in t.lines)
            clean = not t.lines
            c.images += 1
            if why:  # the runtime refused this RoI: no boxes, no verdict of its own
                c.tally("image", must, clean, False, refused=True)
                continue
            origin = grid.roi_origin_mm(roi)
            defects = to_defects(find_scratches(score, p), roi, origin, mmpp, mapping)
            result = RoiResult(roi, origin, defects, {}, 1, calibration is not None)
            results.append(result)
            boxes = score_boxes(result)
            flagged = any(rule.rejects(d.length_mm) for d in defects)
            c.tally("image", must, clean, flagged)
            c.kept += len(boxes)
            correct = np.zeros(len(boxes), bool)
            for i, pts in t.lines.items():
                hits = covered(pts, boxes, margin_px)
                correct |= hits
                if hits.any():
                    found_ids.add(i)
            c.correct += int(correct.sum())
        labelled = truth.labelled
        must = any(rule.rejects(v) for v in labelled.values())
        clean = not labelled
        # the runtime stops at the first refused RoI: the sample is ERROR, never PASS or FAIL
        status = (Status.ERROR if any(refused) else
                  decide(f"held-out-{truth.seed}", results, grid.count, {}, None, {},
                         rule.min_length_mm).status)
        c.samples += 1
        c.tally("sample", must, clean, status is Status.FAIL, refused=status is Status.ERROR)
        c.labelled += len(labelled)
        c.found += len(labelled.keys() & found_ids)
        peaks = getattr(truth, "peaks", None)
        for i, length in labelled.items():
            hit = i in found_ids
            b = _length_bin(length)
            f, n = c.by_length.get(b, (0, 0))
            c.by_length[b] = (f + hit, n + 1)
            if peaks is None or i not in peaks:
                continue
            b = _peak_bin(peaks[i])
            f, n = c.by_peak.get(b, (0, 0))
            c.by_peak[b] = (f + hit, n + 1)
            if length >= RECALL_MIN_MM and peaks[i] >= RECALL_MIN_DN:
                c.strong[0] += hit
                c.strong[1] += 1
    return c


def detectors(models: dict[str, str | Path], cfg: HeadConfig, baselines: Sequence[str] = (),
              threads: int = 0, calibration=None) -> list:
    from model.heldout import baseline_detector, network_detector

    out = [network_detector(name, path, cfg, threads, calibration)
           for name, path in models.items()]
    return out + [baseline_detector(b) for b in baselines]


def model_files(given: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """MODEL arguments -> per name (the file's stem; the whole argument where two stems meet)
    its file, and what the user gave: a path or ``shipped:NAME`` (a file shipped with the
    package, as the head file names it)."""
    models: dict[str, Path] = {}
    as_given: dict[str, str] = {}
    for text in given:
        p = model_path(text)
        if not p.is_file():
            where = "no such model file"
            if text.startswith(SHIPPED):
                names = ", ".join(sorted(f.name for f in shipped("").glob("*.onnx")))
                where = f"not among the shipped models ({names})"
            raise UsageError(f"{text}: {where}")
        name = p.stem if p.stem not in models else text
        models[name], as_given[name] = p, text
    return models, as_given


def portable(given: str | Path) -> str:
    """A file as a committed record may name it: ``shipped:NAME`` and relative paths as given;
    an absolute path relative to the working folder when inside it, else its name alone (a
    path of the machine it was made on means nothing elsewhere)."""
    text = str(given)
    if text.startswith(SHIPPED):
        return text
    p = Path(text).expanduser()
    if not p.is_absolute():
        return text
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.name


def command_line(args) -> str:
    """The command that makes this record, rebuilt from its arguments with no path of this
    machine (the cache's folder is left out: it changes no number). ``args``: the parsed
    arguments of ``glass-inspect evaluate`` (:mod:`model.cli`)."""
    words = ["glass-inspect", "evaluate", *args.models]
    if args.head:
        words += ["--head", portable(args.head)]
    for b in dict.fromkeys(args.baseline or []):
        words += ["--baseline", b]
    for flag, value in (("--must-fail", args.must_fail), ("--clean", args.clean),
                        ("--seed", args.seed), ("--clean-seed", args.clean_seed),
                        ("--samples", args.samples), ("--scratch-share", args.scratch_share),
                        ("--threads", args.threads or None)):
        if value is not None:
            words += [flag, str(value)]
    for flag, value in (("--settings-from", args.settings_from),
                        ("--calibration", args.calibration), ("--json", args.json)):
        if value:
            words += [flag, portable(value)]
    return " ".join(words)


def _dedup(seeds) -> list:
    out, seen = [], set()
    for s in seeds:
        key = (s.role, s.first, s.last) if s.first is not None else (s.role, s.what)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def comparison(results: dict[str, dict], networks: Sequence[str],
               baselines: Sequence[str]) -> dict:
    """Per network, whether each baseline is at least as good on both sample rates (no more
    missed must-fail samples and no more false FAILs, as shares); and one line that says so."""
    out: dict = {}
    lines = []
    for n in networks:
        a = results[n]
        row = {}
        for b in baselines:
            o = results[b]
            rates = (a["sample_fn_rate"], a["sample_fp_rate"], o["sample_fn_rate"],
                     o["sample_fp_rate"])
            if None in rates:
                row[b] = None  # a set without must-fail or without clean samples: no answer
                continue
            row[b] = bool(rates[2] <= rates[0] and rates[3] <= rates[1])
        out[n] = row
        better = [b for b, v in row.items() if v]
        unknown = [b for b, v in row.items() if v is None]
        if better:
            lines.append(f"{', '.join(better)} at least as good as {n} on both sample rates")
        elif unknown:
            lines.append(f"{n}: no comparison with {', '.join(unknown)} (a sample rate is "
                         "undefined)")
        elif row:
            lines.append(f"no baseline is at least as good as {n} on both sample rates")
    out["line"] = "; ".join(lines) if lines else "no network and baseline to compare"
    return out


def sample_sets(cfg: HeadConfig, n_samples: int, seed: int, scratch_share: float,
                must_fail: int | None, clean: int | None, clean_seed: int | None,
                cache: str | Path | None, calibration=None, role: str = "test"):
    """The samples a run scores -> ``(sets, blocks, mode)``: the :class:`model.heldout.HeldOutSet`
    s, the seed blocks they use (:class:`model.heldout.Seeds` of ``role``) and ``"mixed"`` or
    ``"must-fail and clean"``. ``must_fail`` / ``clean`` (either given): a must-fail block from
    ``seed`` (every sample scratched, those without a scratch the reject rule counts skipped)
    and a clean block from ``clean_seed`` (default ``seed + CLEAN_OFFSET``); else ``n_samples``
    consecutive seeds from ``seed`` at ``scratch_share``."""
    from model.heldout import HeldOutSet, Seeds, must_fail_seeds

    rule_mm = cfg.reject_rule.min_length_mm
    if must_fail is None and clean is None:
        sets = [HeldOutSet(cfg, n_samples, seed, scratch_share, cache, calibration)]
        blocks = [Seeds(role, f"{n_samples} samples drawn with scratch share {scratch_share:g}",
                        seed, seed + n_samples - 1, count=n_samples, scratch_share=scratch_share)]
        return sets, blocks, "mixed"
    must_fail, clean = must_fail or 0, clean or 0
    clean_seed = seed + CLEAN_OFFSET if clean_seed is None else clean_seed
    sets, blocks = [], []
    if must_fail:
        mf = must_fail_seeds(seed, must_fail, cfg)
        sets.append(HeldOutSet(cfg, len(mf), seed, 1.0, cache, calibration, seeds=mf))
        blocks.append(Seeds(
            role, f"must-fail samples: every sample scratched, kept when it holds a "
            f"scratch of at least {rule_mm:g} mm", seed, mf[-1], count=len(mf),
            scratch_share=1.0, extra={"skipped": mf[-1] - seed + 1 - len(mf)}))
    if clean:
        sets.append(HeldOutSet(cfg, clean, clean_seed, 0.0, cache, calibration))
        blocks.append(Seeds(role, "clean samples: no sample scratched", clean_seed,
                            clean_seed + clean - 1, count=clean, scratch_share=0.0))
    return sets, blocks, "must-fail and clean"


def evaluate_report(models: dict[str, str | Path], cfg: HeadConfig, n_samples: int = 50,
                    seed: int = DEVELOPMENT_SEED, scratch_share: float = 0.3, threads: int = 0,
                    progress: bool = True, calibration=None, baselines: Sequence[str] = (),
                    cache: str | Path | None = None, pipeline=None,
                    settings: dict[str, dict] | None = None, must_fail: int | None = None,
                    clean: int | None = None, clean_seed: int | None = None,
                    validation: Sequence = (), given: dict[str, str] | None = None,
                    settings_from: str | None = None) -> dict:
    """Every network and baseline on the same held-out samples -> the whole record (format
    :data:`FORMAT`): ``detectors`` (a summary per detector), ``models`` (as given, with their
    SHA-256), ``seeds`` (training, validation, test), ``comparison`` and ``cost``.

    The test set: ``must_fail`` and ``clean`` samples from two blocks (``seed``, and
    ``clean_seed``, default ``seed + CLEAN_OFFSET``) when either is given, else ``n_samples``
    consecutive seeds from ``seed`` at ``scratch_share``. Refused
    (:class:`model.heldout.SeedOverlapError`) before anything is rendered when a test seed
    served training or validation as far as known (``validation``: more validation
    :class:`model.heldout.Seeds`, such as the sweep's). With ``calibration`` (an
    :class:`edge.calibration.Calibration` of this head) the frames are taken and corrected as
    the runtime does. Score maps come from the cache when there (``cache``: its folder, default
    :data:`model.heldout.DEFAULT_CACHE`). ``settings``: per detector name, post-processing
    settings of its own (a sweep's best), which replace the head's for that detector."""
    from model.heldout import SPENT, check_test_seeds, progress_bar, training_seeds

    t0 = time.perf_counter()
    dets = detectors(models, cfg, baselines, threads, calibration)
    sets, test, mode = sample_sets(cfg, n_samples, seed, scratch_share, must_fail, clean,
                                   clean_seed, cache, calibration)
    known = _dedup([*SPENT, *validation,
                    *chain.from_iterable(training_seeds(d.name, d.metadata, cache)
                                         for d in dets if d.is_network)])
    check_test_seeds(test, [k for k in known if k.role in ("training", "validation")])
    missing = [hs.missing(dets) for hs in sets]
    bar = progress_bar(sum(missing) * cfg.stage.roi_grid.count, sum(missing), progress)
    costs = [hs.fill(dets, progress, bar) for hs in sets]
    bar.close()
    filled = time.perf_counter() - t0
    out = {}
    for d in dets:
        t = time.perf_counter()
        own = (settings or {}).get(d.name)
        p = pipeline
        if own:
            base = pipeline or cfg.pipeline
            p = base.model_copy(update={k: v for k, v in own.items() if k in SWEEP_KEYS})
        scored = chain.from_iterable(hs.scored(d.key) for hs in sets)
        out[d.name] = count(scored, cfg, p, calibration).summary()
        used = p or (calibration.pipeline_for(cfg) if calibration is not None else cfg.pipeline)
        out[d.name]["post_processing"] = {k: getattr(used, k) for k in SWEEP_KEYS}
        out[d.name]["post_processing_from"] = (settings_from if own else
                                               "the calibration" if calibration is not None
                                               else "the head file")
        out[d.name]["count_s"] = round(time.perf_counter() - t, 1)
    computed = sum(c.samples for c in costs)
    nets = [d.name for d in dets if d.is_network]
    given = given or {}
    return {
        "format": FORMAT,
        "protocol": mode,
        "models": {d.name: {"given_as": portable(given.get(d.name, models[d.name])),
                            "sha256": d.sha256} for d in dets if d.is_network},
        "baselines": [d.name for d in dets if not d.is_network],
        "head": {"render_identity": _render_identity(cfg), "reject_rule_min_length_mm":
                 cfg.reject_rule.min_length_mm},
        "calibration": calibration.sha256 if calibration is not None else None,
        "seeds": {role: [k.to_dict() for k in (test if role == "test" else known)
                         if k.role == role] for role in ("training", "validation", "test")},
        "detectors": out,
        "comparison": comparison(out, nets, [d.name for d in dets if not d.is_network]),
        "cost": {
            "samples_computed": computed,
            "render_s_per_sample": round(sum(c.render_s for c in costs) / computed, 2)
            if computed else None,
            "score_s_per_sample": {d.name: _per_sample(costs, d.key) for d in dets},
            "render_cpu_s_per_sample": round(sum(c.render_cpu_s for c in costs) / computed, 2)
            if computed else None,
            "score_cpu_s_per_sample": {d.name: _per_sample(costs, d.key, "score_cpu_s")
                                       for d in dets},
            "render_and_score_s": round(filled, 1),
            "threads": threads or None, "cpu_count": os.cpu_count(),
        },
        "cache_sets": [hs.id for hs in sets],
    }


def _per_sample(costs, key: str, what: str = "score_s") -> float | None:
    n = sum(c.scored.get(key, 0) for c in costs)
    return round(sum(getattr(c, what).get(key, 0.0) for c in costs) / n, 2) if n else None


def _render_identity(cfg: HeadConfig) -> str:
    from model.heldout import render_identity

    return render_identity(cfg)


def evaluate(models: dict[str, str | Path], cfg: HeadConfig, n_samples: int = 50,
             seed: int = DEVELOPMENT_SEED, scratch_share: float = 0.3, threads: int = 0,
             progress: bool = True, calibration=None, baselines: Sequence[str] = (),
             cache: str | Path | None = None, pipeline=None,
             settings: dict[str, dict] | None = None, **protocol) -> dict[str, dict]:
    """:func:`evaluate_report`'s summaries alone, per detector."""
    return evaluate_report(models, cfg, n_samples, seed, scratch_share, threads, progress,
                           calibration, baselines, cache, pipeline, settings,
                           **protocol)["detectors"]


SWEEP_KEYS = ("downscale", "dbscan_eps", "dbscan_min_samples", "t_low", "t_high")
# min_samples 2 and T_high 0.45 since the hybrid network: its best settings sat on the grid's edge
SWEEP = {"downscale": (2, 4, 8), "dbscan_eps": (12.0, 25.0),
         "dbscan_min_samples": (2, 4, 8, 16), "t_low": (0.15, 0.3), "t_high": (0.45, 0.6, 0.85)}


def sweep(models: dict[str, str | Path], cfg: HeadConfig, n_samples: int, seed: int,
          scratch_share: float, grid: dict | None = None, threads: int = 0,
          progress: bool = True, baselines: Sequence[str] = (),
          cache: str | Path | None = None, must_fail: int | None = None,
          clean: int | None = None, clean_seed: int | None = None) -> dict[str, list[dict]]:
    """Post-processing settings tried on cached maps (validation samples, not the held-out
    ones): per detector, one row per setting of ``grid`` (default :data:`SWEEP`; a key it
    leaves out stays the head's), with its rates. T_low above T_high is skipped. The samples
    are chosen as :func:`sample_sets` chooses them (a mixed block, or a must-fail and a clean
    block). Validation seeds that a network trained on are refused; the blocks are recorded by
    :func:`sweep_record`."""
    import itertools

    from edge.postprocess import PooledScore
    from model.heldout import check_test_seeds, training_seeds

    grid = grid or SWEEP
    dets = detectors(models, cfg, baselines, threads)
    trained = [k for d in dets if d.is_network for k in training_seeds(d.name, d.metadata, cache)
               if k.role == "training"]
    sets, blocks, _ = sample_sets(cfg, n_samples, seed, scratch_share, must_fail, clean,
                                  clean_seed, cache, role="validation")
    check_test_seeds(blocks, trained)
    for hs in sets:
        hs.fill(dets, progress)
    names = list(grid)
    points = [dict(zip(names, v, strict=True)) for v in itertools.product(*grid.values())]
    points = [q for q in points if q.get("t_low", cfg.pipeline.t_low)
              <= q.get("t_high", cfg.pipeline.t_high)]
    out: dict[str, list[dict]] = {}
    bar = tqdm(total=len(points) * len(dets), desc="post-processing sweep", unit="setting",
               disable=not progress)
    for d in dets:
        rows = []
        # read, unpacked and pooled once: one detector in memory at a time
        kept = [(s.truth, [PooledScore(m) for m in s.maps], s.refused)
                for hs in sets for s in hs.scored(d.key)]
        for q in points:
            p = cfg.pipeline.model_copy(update=q)
            s = count(kept, cfg, p).summary()
            rows.append({**q, **{k: s[k] for k in ("sample_fn_rate", "sample_fp_rate",
                                                   "image_fn_rate", "image_fp_rate",
                                                   "scratch_recall", "scratch_precision")}})
            bar.update()
        out[d.name] = rows
    bar.close()
    return out


def sweep_record(rows: dict[str, list[dict]], n_samples: int, seed: int,
                 scratch_share: float, blocks: Sequence | None = None) -> dict:
    """A sweep file: its validation blocks (``seeds``, which a later evaluation refuses as a
    test range: one block of ``n_samples`` from ``seed``, or ``blocks``, the
    :class:`model.heldout.Seeds` of a must-fail and clean sweep), every setting's rates and the
    best per detector."""
    if blocks:
        seeds = [{"first": b.first, "last": b.last, "samples": b.count,
                  "scratch_share": b.scratch_share, "what": b.what} for b in blocks]
    else:
        seeds = {"first": seed, "last": seed + n_samples - 1, "samples": n_samples,
                 "scratch_share": scratch_share}
    return {"seeds": seeds, "rows": rows,
            "best": {name: best_setting(r) for name, r in rows.items()}}


def best_setting(rows: list[dict], max_sample_fp: float = 0.05) -> dict:
    """The setting with the fewest missed samples among those within ``max_sample_fp`` sample
    false alarms (then fewer image false alarms, fewer image misses, higher scratch recall,
    higher scratch precision); when none is within it, the one with the fewest sample false
    alarms (then misses)."""
    def rate(r, k):
        return r[k] if r[k] is not None else 0.0

    ok = [r for r in rows if rate(r, "sample_fp_rate") <= max_sample_fp]
    if ok:
        return min(ok, key=lambda r: (rate(r, "sample_fn_rate"), rate(r, "image_fp_rate"),
                                      rate(r, "image_fn_rate"), -rate(r, "scratch_recall"),
                                      -rate(r, "scratch_precision")))
    return min(rows, key=lambda r: (rate(r, "sample_fp_rate"), rate(r, "sample_fn_rate")))


def describe(results: dict[str, dict], names: Sequence[str] | None = None) -> str:
    """A table of the summaries (``results``: per detector, or a whole record, whose
    comparison line then follows the table)."""
    record = results if "detectors" in results and "format" in results else None
    summaries = record["detectors"] if record else results
    rows = ["model | sample FN | sample FP | sample ERROR | image FN | image FP | scratch recall"
            f" | recall >={RECALL_MIN_MM:g} mm, >={RECALL_MIN_DN:g} DN | precision",
            "--- | --- | --- | --- | --- | --- | --- | --- | ---"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    for name in names or summaries:
        s = summaries[name]

        def frac(k, n, rate):
            return f"{k}/{n} ({pct(rate)})" if n else "-"

        fn = frac(s.get("samples_missed"), s["samples_must_fail"], s["sample_fn_rate"])
        fp = frac(s.get("samples_false_fail"), s["samples_clean"], s["sample_fp_rate"])
        rows.append(f"{name} | {fn} | {fp} | {s.get('samples_error', 0)} | "
                    f"{pct(s['image_fn_rate'])} | {pct(s['image_fp_rate'])} | "
                    f"{pct(s['scratch_recall'])} | {pct(s.get('recall_1mm_12dn'))} | "
                    f"{pct(s['scratch_precision'])}")
    if record:
        rows.append("")
        rows.append(record["comparison"]["line"])
    return "\n".join(rows)
