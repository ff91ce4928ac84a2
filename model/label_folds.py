"""K-fold cross-validation by image for ``glass-inspect train --network fusion --images DIR
--labels DIR --folds K``: what a classifier fine-tuned on a user's labelled dark-field frames
can be expected to do on new images, printed before the network trained on all of them exists.

Each fold trains the run's settings (its ``init``, simulated share and every other setting) on
the other folds' images into ``OUT/fold-k`` (the fold's images and labels linked into
``OUT/fold-k/images`` and ``OUT/fold-k/labels``), exports its best checkpoint to ONNX
(:func:`export.onnx.export_onnx`, into the fold's folder) and judges the fold's own images
through the runtime exactly as ``evaluate-windows --images`` does (:mod:`model.label_eval`:
read and prepared as ``classify`` does, windows of the runtime's grid, the verdict with the
model's thresholds). Every image is thus judged once, by the one network that did not train on
it; the rows of all folds are pooled into Table II with intervals (Wilson per window, images
resampled for ``by_frame_ci``) and the image rates, among them the clean-image false FAIL rate.
An image ``classify`` refuses is listed (``refused``) and left out of every rate, as there.

Choices:

* **Folds by image**, never by window: the windows of one image share its scratch and its
  texture, and a fold that trained on some of them would flatter the rest.
* **Stratified**: scratched and clean images are shuffled apart (``default_rng(seed)``) and
  dealt in turn, so each fold holds its share of both.
* **What the numbers are**: an estimate for the network trained on all images, from K networks
  each trained on (K-1)/K of them; the usual slight pessimism of cross-validation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.errors import UserError
from model.metrics import rate_line

log = logging.getLogger("glass-inspect.train")


class FoldError(UserError, ValueError):
    """Folds that cannot be made from the images given."""


def assign_folds(pairs: Sequence[tuple[Path, object]], k: int, seed: int
                 ) -> list[list[int]]:
    """Indices of ``pairs`` (image, label) dealt into ``k`` folds, scratched and clean images
    apart (module docstring); :class:`FoldError` when a fold would train on no image."""
    if k < 2:
        raise FoldError(f"cross-validation needs at least 2 folds, got {k}")
    if len(pairs) < k:
        raise FoldError(f"{k} folds of {len(pairs)} labelled images: every fold needs an image "
                        "to judge and others to train on; label more images or use fewer folds")
    rng = np.random.default_rng(seed)
    scratched = [i for i, (_, lab) in enumerate(pairs) if not lab.clean]
    clean = [i for i, (_, lab) in enumerate(pairs) if lab.clean]
    order = [*rng.permutation(scratched).tolist(), *rng.permutation(clean).tolist()]
    folds: list[list[int]] = [[] for _ in range(k)]
    for n, i in enumerate(order):
        folds[n % k].append(int(i))
    return [sorted(f) for f in folds]


def _link_folder(pairs: Sequence[tuple[Path, object]], folder: Path) -> tuple[Path, Path]:
    """``folder/images`` and ``folder/labels`` holding links to these images and labels."""
    images, labels = folder / "images", folder / "labels"
    for d in (images, labels):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
    for path, label in pairs:
        os.symlink(path.resolve(), images / path.name)
        os.symlink(Path(label.source).resolve(), labels / Path(label.source).name)
    return images, labels


def cross_validate(settings, cfg, out: str | Path, k: int, progress: bool = True,
                   threads: int = 0) -> dict:
    """Train and judge ``k`` folds of ``settings.images`` under ``out`` -> the record (also
    ``out/folds.json``): per fold its images and counts, and ``pooled``, the metrics of every
    image judged by the network that did not train on it."""
    from edge.darkfield.classify import Classifier
    from export.onnx import export_onnx
    from model.label_eval import _judge, _metrics, labelled_images
    from model.train import Trainer

    out = Path(out)
    images, labels = Path(settings.images), Path(settings.labels)
    pairs = labelled_images(images, labels)
    folds = assign_folds(pairs, k, settings.seed)
    bit_depth = settings.images_bit_depth or None
    rows, per_fold, clfs = [], [], []
    try:
        for i, held in enumerate(folds, 1):
            run = out / f"fold-{i}"
            train = [pairs[j] for f in folds if f is not held for j in f]
            fold_images, fold_labels = _link_folder(train, run / "train")
            log.info("fold %d/%d: training on %d images, judging %d", i, k, len(train),
                     len(held))
            best = Trainer(dataclasses.replace(settings, images=str(fold_images),
                                               labels=str(fold_labels)), cfg, run,
                           progress=progress).run()
            onnx = export_onnx(best, run / "fold.onnx").path
            clf = Classifier.open(onnx, threads=threads)
            clfs.append(clf)
            judged = _judge([pairs[j] for j in held], {"fold": clf}, bit_depth, False)["fold"]
            for r, j in zip(judged, held, strict=True):
                if "error" not in r:
                    r["index"] = j  # images resampled across folds: one index per image
                r["fold"] = i
            rows += judged
            per_fold.append({"fold": i, "held_out": [pairs[j][0].name for j in held],
                             "trained_on": len(train), "checkpoint": str(best),
                             "model": str(onnx),
                             "refused": sum("error" in r for r in judged)})
        thresholds = {(c.threshold, c.region_threshold) for c in clfs}
        pooled = _metrics(rows, clfs[-1], images, labels, len(pairs), 0.0)
    finally:
        for c in clfs:
            c.close()
    for key in ("model", "sha256", "infer_s"):
        pooled.pop(key, None)
    for r, row in zip(pooled["per_image"], [r for r in rows if "error" not in r], strict=True):
        r["fold"] = row["fold"]
    record = {"folds": k, "images": len(pairs), "sim_share": settings.sim_share,
              "init": settings.init, "seed": settings.seed,
              "thresholds": sorted([list(t) for t in thresholds], key=str),
              "per_fold": per_fold, "pooled": pooled}
    out.mkdir(parents=True, exist_ok=True)
    (out / "folds.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def describe(record: dict) -> str:
    """Table II of the pooled folds, and the image rates with their intervals."""
    from model.label_eval import describe_labels

    p = record["pooled"]
    im = p["images"]

    def rate(what: str, k: int, n: int, key: str) -> str:
        return rate_line(what, k, n, im[key], im[key + "_ci"], "no such image among them")

    return "\n".join([
        f"cross-validated over {record['folds']} folds by image ({record['images']} labelled "
        f"images, simulated share {record['sim_share']:g}): what to expect on new images",
        describe_labels({"cross-validated": p}),
        rate("clean images FAIL (false FAIL)", im["false_alarms"], im["clean"],
             "false_alarm_rate"),
        rate("scratched images FAIL (detected)", im["detected"], im["with_scratch"],
             "detection_rate"),
        f"  details: {Path(record['per_fold'][0]['checkpoint']).parent.parent / 'folds.json'}"])
