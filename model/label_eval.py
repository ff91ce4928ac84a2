"""The weak-scratch paper's Table II on a user's own labelled dark-field frames:
``glass-inspect evaluate-windows --images DIR --labels DIR [MODEL ...]``.

* **What runs is what is measured.** Every image is read as ``classify`` reads it
  (:func:`edge.darkfield.reading.read_image`, with ``--bit-depth`` and ``--bayer`` as there) and
  judged by the runtime's :class:`edge.darkfield.classify.Classifier`, which prepares it
  (:mod:`edge.darkfield.frame_prep`: colour sites, exposure, noise), scores the windows of the
  runtime's grid and gives the verdict with the model's threshold and region threshold. An
  image ``classify`` refuses (ERROR: unreadable, too dark, noise far off) has no windows to
  score: it is listed with why (``refused``) and left out of every rate.
* **Window truth** from the label (:mod:`edge.darkfield.labels`) rasterised by the simulator's
  rule, then the rule of simulated windows (:func:`model.windows.label_of`): a window is a
  scratch window when at least :data:`model.windows.WINDOW_MIN_PIXELS` (4) of its pixels are
  scratch, else background. Choice: a simulated window whose scratch is too faint to see is left
  out (``FAINT``, its visibility measured from the light the simulator drew); a label does not
  say how bright its scratch is, and a person saw every scratch they drew, so every labelled
  scratch counts as visible and there is no faint class.
* **Image truth:** clean when its label says clean; scratched when a window of it is a scratch
  window. An image whose labelled scratches reach 4 px in no window (a dot) is neither: it is
  left out of the image rates and counted (``tiny_scratch_images``).
* **Metrics** (:func:`model.window_eval.window_metrics`): precision, recall, F1 and accuracy of
  the windows of all judged images, with 95 % Wilson intervals (F1: a bootstrap over windows),
  and ``by_frame_ci``, intervals from resampling whole images (2,000 resamples, seed 0): windows
  of one image share its scratch and its texture, so the image is the unit a user's next image
  is drawn from. Image level (:func:`model.window_eval.image_metrics`): the share of scratched
  images that FAIL (``detection_rate``) and of clean images that FAIL (``false_alarm_rate``,
  the clean false FAIL rate), with Wilson intervals.

Every label is read and checked against its image before any image is classified: a folder with
bad labels stops with each problem listed, not after minutes of inference.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.cli_common import UsageError
from edge.darkfield.labels import Label, LabelError, read_label
from edge.darkfield.windows import DEFAULT_BATCH, DEFAULT_MODEL, WINDOW, window_origins
from model.window_eval import (
    CURVE_THRESHOLDS,
    describe,
    image_metrics,
    pr_curve,
    save_report,
    window_metrics,
)
from model.windows import WINDOW_MIN_PIXELS, label_of

MAX_PROBLEMS = 12  # label problems listed in one message
# evaluate-windows options that describe simulated frames, with their defaults (model.cli);
# given with --images DIR they would be silently ignored, so they are refused
SIMULATION_ONLY = {"baseline": None, "windows": None, "val_windows": 512, "on": "test",
                   "noise_scale": 1.0, "no_noise_match": False, "lit_groups": None,
                   "haze": None, "camera": "area", "split": [80, 12, 20], "frame_px": 2048,
                   "cache": None}


def image_shape(path: Path) -> tuple[int, int] | None:
    """(H, W) from the file's header, None when it cannot be read (``classify`` then refuses
    the image and says why)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:  # noqa: BLE001 - Pillow raises many kinds; tifffile may still read it
        pass
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            return int(page.imagelength), int(page.imagewidth)
    except Exception:  # noqa: BLE001
        return None


def labelled_images(images: Path, labels: Path | None = None) -> list[tuple[Path, Label]]:
    """Every image of the folder ``images`` (as ``classify`` lists a folder) with its label,
    each checked against its image; one :class:`LabelError` listing every problem."""
    from edge.darkfield.reading import collect_inputs

    if not images.is_dir():
        raise UsageError(f"--images {images}: no such folder; expected the folder of labelled "
                         "images")
    if labels is not None and not labels.is_dir():
        raise UsageError(f"--labels {labels}: no such folder; expected the folder of label "
                         "files (docs/labels_darkfield.md)")
    items = collect_inputs([images])
    if len(items) == 1 and items[0].problem:
        raise UsageError(items[0].problem)
    stems: dict[str, Path] = {}
    problems, out = [], []
    for item in items:
        path = item.path
        if path.stem in stems:
            problems.append(f"{path} and {stems[path.stem]} share the name {path.stem!r}, so "
                            "one label would serve both; expected one image per name")
            continue
        stems[path.stem] = path
        try:
            label = read_label(path, labels)
            shape = image_shape(path)
            if shape is not None:
                label.check_image(path, shape)
        except LabelError as exc:
            problems.append(str(exc))
            continue
        out.append((path, label))
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise LabelError(f"{len(problems)} of {len(items)} images have label problems:\n  "
                         + "\n  ".join(problems[:MAX_PROBLEMS])
                         + (f"\n  ... and {more} more" if more > 0 else ""))
    return out


def window_truth(mask: np.ndarray) -> np.ndarray:
    """Rows x columns of the runtime's grid over ``mask`` (H x W bool): 1 scratch window, 0
    background, by the rule of simulated windows (module docstring)."""
    h, w = mask.shape
    return np.array([[label_of(mask[y:y + WINDOW, x:x + WINDOW])[0] for x in window_origins(w)]
                     for y in window_origins(h)], np.int64)


def evaluate_labels(models: dict[str, str | Path], images: str | Path,
                    labels: str | Path | None = None, *, bit_depth: int | None = None,
                    bayer: bool = False, threads: int = 0, batch: int = DEFAULT_BATCH,
                    progress: bool = True) -> dict[str, dict]:
    """``{name: metrics}`` for every model (a path or ``shipped:NAME``) on the labelled images
    of the folder ``images`` (labels in ``labels``, else beside the images); see the module
    docstring."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from edge.darkfield.classify import Classifier, ModelError
    from edge.engine.base import EngineError

    images = Path(images)
    labels = None if labels is None else Path(labels)
    pairs = labelled_images(images, labels)
    clfs: dict[str, Classifier] = {}
    try:
        for name, spec in models.items():
            try:
                clfs[name] = Classifier.open(spec, batch=batch, threads=threads)
            except (ModelError, EngineError, ValueError) as exc:
                raise UsageError(str(exc)) from None
        t0 = time.perf_counter()
        bar = tqdm(pairs, desc="labelled images", unit="image", disable=not progress,
                   leave=False)
        with logging_redirect_tqdm():
            rows = _judge(bar, clfs, bit_depth, bayer)
        seconds = time.perf_counter() - t0
        return {name: _metrics(rows[name], clf, images, labels, len(pairs), seconds)
                for name, clf in clfs.items()}
    finally:
        for clf in clfs.values():
            clf.close()


def _judge(pairs, clfs: dict, bit_depth: int | None, bayer: bool) -> dict[str, list[dict]]:
    """Per model, one row per image: its window truth and probabilities and its verdict, or
    why ``classify`` refuses it."""
    from edge.darkfield.reading import ClassifyError, read_image
    from edge.engine.base import EngineError

    rows: dict[str, list[dict]] = {name: [] for name in clfs}
    for k, (path, label) in enumerate(pairs):
        try:
            frame = read_image(path, bit_depth, bayer)
        except ClassifyError as exc:
            for name in clfs:
                rows[name].append({"image": path.name, "error": str(exc)})
            continue
        truth = window_truth(label.mask(frame.pixels.shape))
        kind = ("clean" if label.clean else "scratched" if (truth == 1).any()
                else "tiny scratch")
        for name, clf in clfs.items():
            try:
                r = clf.classify(frame)
            except ClassifyError as exc:
                rows[name].append({"image": path.name, "error": str(exc)})
                continue
            except EngineError as exc:  # as classify reports it: that image ERROR
                rows[name].append({"image": path.name,
                                   "error": f"{path}: the engine failed ({exc})"})
                continue
            rows[name].append({"image": path.name, "index": k, "label": kind,
                               "truth": truth.ravel(), "probability": r.probability.ravel(),
                               "verdict": r.verdict.value})
    return rows


def _metrics(rows: list[dict], clf, images: Path, labels: Path | None, n_images: int,
             seconds: float) -> dict:
    judged = [r for r in rows if "error" not in r]
    refused = [{"image": r["image"], "why": r["error"]} for r in rows if "error" in r]
    truth = np.concatenate([r["truth"] for r in judged]) if judged else np.zeros(0, np.int64)
    prob = np.concatenate([r["probability"] for r in judged]) if judged else np.zeros(0)
    frames = np.concatenate([np.full(r["truth"].size, r["index"]) for r in judged]) if judged \
        else np.zeros(0, np.int64)
    pos = prob >= clf.threshold
    counted = [r for r in judged if r["label"] != "tiny scratch"]
    out = {**window_metrics(pos, truth, frames=frames),
           "images": {**image_metrics([r["verdict"] == "FAIL" for r in counted],
                                      [r["label"] == "scratched" for r in counted]),
                      "tiny_scratch_images": len(judged) - len(counted)},
           "refused": refused,
           "model": str(clf.engine.path), "sha256": clf.identity.get("sha256"),
           "threshold": clf.threshold, "region_threshold": clf.region_threshold,
           "curve": pr_curve(prob, truth, (*CURVE_THRESHOLDS, clf.threshold)),
           "per_image": [{"image": r["image"], "label": r["label"], "verdict": r["verdict"],
                          "windows": int(r["truth"].size),
                          "scratch_windows": int((r["truth"] == 1).sum()),
                          "positive_windows": int((r["probability"] >= clf.threshold).sum())}
                         for r in judged],
           "infer_s": round(seconds, 1),
           "set": {"images": str(images), "labels": str(labels or images),
                   "image_count": n_images, "judged": len(judged), "refused": len(refused),
                   "window": WINDOW, "window_rule": f"scratch window: at least "
                                                    f"{WINDOW_MIN_PIXELS} labelled scratch px",
                   "bootstrap_seed": 0}}
    return out


def describe_labels(results: dict[str, dict]) -> str:
    """Table II (as ``evaluate-windows`` prints it for simulated frames) and, per model, its
    image counts and the images it refused."""
    lines = [describe(results), ""]
    for name, r in results.items():
        im, s = r["images"], r["set"]
        lines.append(f"{name}: {s['judged']} of {s['image_count']} images judged "
                     f"({im['with_scratch']} scratched, {im['clean']} clean"
                     + (f", {im['tiny_scratch_images']} with scratches too small for a window"
                        if im["tiny_scratch_images"] else "")
                     + f"); {im['detected']} scratched and {im['false_alarms']} clean FAIL")
        for ref in r["refused"][:3]:
            lines.append(f"  refused (ERROR, left out): {ref['why']}")
        if len(r["refused"]) > 3:
            lines.append(f"  ... and {len(r['refused']) - 3} more refused")
    return "\n".join(lines)


def cmd_evaluate_labels(args: argparse.Namespace) -> int:
    """``evaluate-windows --images DIR [--labels DIR]`` (:mod:`model.cli` dispatches here)."""
    given = [f"--{k.replace('_', '-')}" for k, default in SIMULATION_ONLY.items()
             if getattr(args, k) != default]
    if given:
        raise UsageError(f"{', '.join(given)} describe simulated frames; with --images DIR "
                         "the frames are the labelled images: leave them out")
    specs: Sequence[str] = args.models or [DEFAULT_MODEL]
    models: dict[str, str] = {}
    for spec in specs:
        stem = Path(spec.split(":", 1)[-1]).stem
        models[spec if stem in models else stem] = spec
    results = evaluate_labels(models, args.images, args.labels, bit_depth=args.bit_depth,
                              bayer=args.bayer, threads=args.threads, batch=args.batch,
                              progress=not args.quiet)
    print(describe_labels(results))
    save_report(results, args.json, args.plot)
    return 0
