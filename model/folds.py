"""K-fold cross-validation by sample for ``glass-inspect train --recorded ... --folds K``: how
well a network fine-tuned on labelled recorded samples does on samples it did not see, before
the network trained on all of them is exported.

Each fold trains the run's settings on the other folds' samples (into ``OUT/fold-k``), exports
its best checkpoint to ONNX (:func:`export.onnx.export_onnx`, at the head's tile size, into the
fold's folder) and scores the fold's own samples through the runtime, exactly as ``evaluate
--recorded`` does (:mod:`model.recorded_eval`), with the post-processing the checkpoint was
validated with (its ``pipeline``). Every sample is thus scored once, by the one network that
did not train on it; the counts of all folds are pooled (:func:`model.evaluate.count`) into
cross-validated rates with Wilson intervals.

Choices:

* **Folds by sample**, never by RoI or patch: the RoIs of one glass share its scratches,
  contaminants and noise, and a fold that saw one RoI of a sample would flatter the rest.
* **Stratified**: scratched and clean samples are shuffled apart (``default_rng(seed)``) and
  dealt in turn, so each fold holds its share of both (a fold of clean samples alone would
  have no miss rate to add).
* **What the numbers are**: an estimate for the network trained on all samples, from K
  networks each trained on (K-1)/K of them; the usual slight pessimism of cross-validation.
  The simulated share and every other setting are the run's own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.labels_sample import read_labels
from model.metrics import rate_line

log = logging.getLogger("glass-inspect.train")


class FoldError(UserError, ValueError):
    """Folds that cannot be made from the samples given."""


def assign_folds(dirs: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """The samples dealt into ``k`` folds, scratched and clean ones separately (module
    docstring). Refused (:class:`FoldError`) when a fold's training would hold fewer than 2
    samples (one is held out for the trainer's validation)."""
    if k < 2:
        raise FoldError(f"cross-validation needs at least 2 folds, got {k}")
    if len(dirs) - -(-len(dirs) // k) < 2:
        raise FoldError(f"{k} folds of {len(dirs)} labelled samples leave fewer than 2 to "
                        "train each fold on: label more samples or use fewer folds")
    rng = np.random.default_rng(seed)
    scratched = [d for d in sorted(dirs) if not read_labels(d).clean]
    clean = [d for d in sorted(dirs) if d not in scratched]
    order = [*rng.permutation(scratched), *rng.permutation(clean)] if dirs else []
    folds: list[list[str]] = [[] for _ in range(k)]
    for n, d in enumerate(order):
        folds[n % k].append(str(d))
    return folds


def _pipeline(cfg, ckpt: dict):
    """The post-processing the checkpoint was validated with, on the head's pipeline model."""
    return type(cfg.pipeline).model_validate(ckpt["pipeline"])


def cross_validate(settings, cfg, out: str | Path, k: int, progress: bool = True,
                   threads: int = 0) -> dict:
    """Train and evaluate ``k`` folds of ``settings.recorded`` under ``out`` -> the record
    (also ``out/folds.json``): per fold its samples and summary, and ``pooled``, the summary of
    every sample scored by the network that did not train on it."""
    from export.onnx import export_onnx
    from model.evaluate import count
    from model.heldout import network_detector
    from model.recorded_eval import RecordedSet
    from model.train import Trainer, load_checkpoint

    out = Path(out)
    folds = assign_folds(list(settings.recorded), k, settings.seed)
    pooled, rows = [], []
    for i, held in enumerate(folds, 1):
        train = [d for f in folds if f is not held for d in f]
        run = out / f"fold-{i}"
        log.info("fold %d/%d: training on %d samples, scoring %d", i, k, len(train), len(held))
        best = Trainer(dataclasses.replace(settings, recorded=train), cfg, run,
                       progress=progress).run()
        ckpt = load_checkpoint(best)
        onnx = export_onnx(best, run / "fold.onnx", tile=cfg.pipeline.tile_size).path
        det = network_detector(f"fold-{i}", onnx, cfg, threads)
        scored = list(RecordedSet(held, cfg).scored(det, progress))
        pipeline = _pipeline(cfg, ckpt)
        rows.append({"fold": i, "held_out": [Path(d).name for d in held],
                     "trained_on": len(train), "checkpoint": str(best),
                     **{key: v for key, v in count(scored, cfg, pipeline).summary().items()
                        if key.startswith("sample")}})
        pooled.append((scored, pipeline))
    # each fold counted at its own checkpoint's post-processing, then the counts added
    total = count(pooled[0][0], cfg, pooled[0][1])
    for scored, pipeline in pooled[1:]:
        total = _add(total, count(scored, cfg, pipeline))
    record = {"folds": k, "samples": len(settings.recorded), "sim_share": settings.sim_share,
              "seed": settings.seed, "per_fold": rows, "pooled": total.summary()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "folds.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _add(a, b):
    """Two :class:`model.evaluate.Counts` of disjoint samples as one."""
    out = dataclasses.replace(a)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "min_length_mm":
            continue
        if isinstance(x, dict):  # bin -> (found, of)
            setattr(out, f.name, {key: tuple(int(p + q) for p, q in zip(
                x.get(key, (0, 0)), y.get(key, (0, 0)), strict=True)) for key in {*x, *y}})
        elif isinstance(x, list):
            setattr(out, f.name, [p + q for p, q in zip(x, y, strict=True)])
        else:
            setattr(out, f.name, x + y)
    return out


def describe(record: dict) -> str:
    """The cross-validated sample rates, with their intervals."""
    p = record["pooled"]

    def rate(what: str, k: int, n: int, key: str) -> str:
        return rate_line(what, k, n, p[key], p[key + "_ci"], "no such sample among them")

    return "\n".join([
        f"cross-validated over {record['folds']} folds by sample ({record['samples']} labelled "
        f"samples, simulated share {record['sim_share']:g}):",
        rate("sample FN (must-fail samples passed)", p["samples_missed"],
             p["samples_must_fail"], "sample_fn_rate"),
        rate("sample FP (clean samples failed)", p["samples_false_fail"], p["samples_clean"],
             "sample_fp_rate"),
        f"  samples refused (ERROR): {p['samples_error']}"])
