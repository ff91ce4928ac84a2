"""Networks and baselines on labelled recorded samples (``glass-inspect evaluate --recorded``),
counted exactly as on simulated ones (:func:`model.evaluate.count`: the reject rule, sample,
image and scratch levels, Wilson intervals, recall by length).

What changes from the simulated path (:mod:`model.heldout`) is where frames and truth come
from; nothing after them:

* **frames**: each RoI's RAW frames are read from the recorded sample (``roi_NN.tif``, its
  SHA-256 checked) and handed to the same :class:`model.heldout.Detector` that scores a
  rendered RoI (a network through the runtime's tiling, engine and stitching, a refusal where
  the runtime would answer ERROR; a baseline on the raw frames). The score map is quantised to
  8 bits and back, as the simulated set caches it, so the same frames give the same counts;
* **truth**: from ``labels.json`` (:func:`model.recorded_labels.sample_truth`: the labelled
  polylines rasterised per RoI by the simulator's rule, then the simulated set's own
  :func:`model.heldout.roi_truth`); a sample labelled clean has none. Labels carry no
  brightness: recall by peak signal is empty.

Choices: a sample without ``labels.json`` is refused, naming it, unless ``--skip-unlabelled``
leaves it out (listed in the record). A sample recorded by a head of another geometry than
``--head`` is refused (its RoIs would be placed and merged wrongly). Score maps are not cached:
recorded sets are a few dozen samples, and a fine-tuned network is new each time. There are no
seeds to check: which samples served training is the user's to keep apart (``train --folds``
evaluates each sample only with networks that did not train on it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edge.cli_common import UsageError
from edge.config import SHIPPED
from edge.labels_sample import read_labels
from edge.recording import RecordedSample, open_sample
from model.recorded_labels import check_geometry, labelled_samples, sample_truth

PROTOCOL = "labelled recorded samples"


class RecordedSet:
    """Labelled recorded samples of the head ``cfg``, in the order given (folders of samples
    sorted), each with its labels and truth."""

    def __init__(self, paths: Sequence[str | Path], cfg, skip_unlabelled: bool = False):
        self.cfg = cfg
        dirs, self.skipped = labelled_samples(paths, skip_unlabelled)
        if not dirs:
            raise UsageError(f"no labelled recorded sample among {', '.join(map(str, paths))}")
        self.samples: list[RecordedSample] = []
        self.labels = []
        for d in dirs:
            rec = open_sample(d)
            check_geometry(rec, cfg)
            self.samples.append(rec)
            self.labels.append(read_labels(d))
        self.truths = [sample_truth(rec, lab, k)
                       for k, (rec, lab) in enumerate(zip(self.samples, self.labels,
                                                          strict=True))]

    def __len__(self) -> int:
        return len(self.samples)

    def scored(self, detector, progress: bool = False, bar=None) -> Iterator:
        """Per sample (:class:`model.heldout.ScoredSample`) its truth, the detector's score
        maps of its RoIs (index order) and the runtime's refusals."""
        from model.heldout import Refused, ScoredSample, dequantise, progress_bar, quantise

        own = bar is None
        if own:
            bar = progress_bar(len(self) * self.cfg.stage.roi_grid.count, len(self), progress)
            bar.set_description(f"scoring {len(self)} recorded samples")
        for rec, truth in zip(self.samples, self.truths, strict=True):
            maps, refused = [], []
            for r in sorted(rec.manifest.rois, key=lambda r: r.index):
                frames = np.array(rec.frames(r.index))  # verified, and a writable copy
                try:
                    m, why = detector.score(frames, r.index, tuple(r.origin_mm)), ""
                except Refused as exc:
                    h2, w2 = frames.shape[1] // 2, frames.shape[2] // 2
                    m, why = np.zeros((h2, w2), np.float32), str(exc) or "refused"
                maps.append(dequantise(*quantise(m)))  # as the simulated set caches maps
                refused.append(why)
                bar.update()
            yield ScoredSample(truth, maps, refused)
        if own:
            bar.close()

    def describe_samples(self) -> list[dict]:
        from model.evaluate import portable

        return [{"sample_id": rec.sample_id, "dir": portable(rec.dir), "clean": lab.clean,
                 "scratches": len(lab.scratches), "labelled_by": lab.labelled_by}
                for rec, lab in zip(self.samples, self.labels, strict=True)]


def evaluate_recorded(models: dict[str, str | Path], cfg, paths: Sequence[str | Path],
                      baselines: Sequence[str] = (), threads: int = 0, progress: bool = True,
                      calibration=None, pipeline=None, skip_unlabelled: bool = False,
                      given: dict[str, str] | None = None, dets: list | None = None) -> dict:
    """Every network and baseline on the labelled recorded samples under ``paths`` -> a record
    in :data:`model.evaluate.FORMAT`'s shape (``protocol``: :data:`PROTOCOL`; ``samples`` and
    ``skipped`` instead of seeds). ``dets``: ready detectors instead of ``models`` and
    ``baselines``."""
    from model.evaluate import FORMAT, SWEEP_KEYS, comparison, count, detectors, portable

    t0 = time.perf_counter()
    rs = RecordedSet(paths, cfg, skip_unlabelled)
    dets = dets if dets is not None else detectors(models, cfg, baselines, threads, calibration)
    used = pipeline or (calibration.pipeline_for(cfg) if calibration is not None
                        else cfg.pipeline)
    out = {}
    for d in dets:
        t = time.perf_counter()
        out[d.name] = count(rs.scored(d, progress), cfg, pipeline, calibration).summary()
        out[d.name]["post_processing"] = {k: getattr(used, k) for k in SWEEP_KEYS}
        out[d.name]["score_and_count_s"] = round(time.perf_counter() - t, 1)
    nets = [d.name for d in dets if d.is_network]
    given = given or {}
    return {
        "format": FORMAT,
        "protocol": PROTOCOL,
        "models": {d.name: {"given_as": portable(given.get(d.name, models.get(d.name, d.name))),
                            "sha256": d.sha256} for d in dets if d.is_network},
        "baselines": [d.name for d in dets if not d.is_network],
        "head": {"name": cfg.name, "reject_rule_min_length_mm": cfg.reject_rule.min_length_mm},
        "calibration": calibration.sha256 if calibration is not None else None,
        "samples": rs.describe_samples(),
        "skipped": [portable(p) for p in rs.skipped],
        "detectors": out,
        "comparison": comparison(out, nets, [d.name for d in dets if not d.is_network]),
        "cost": {"seconds": round(time.perf_counter() - t0, 1), "threads": threads or None,
                 "cpu_count": os.cpu_count()},
    }


def split_models(recorded: list[str], models: list[str]) -> tuple[list[str], list[str]]:
    """``--recorded DIR... MODEL...``: what follows the folders there are models (files and
    ``shipped:NAME``; recorded samples are folders) -> (folders, models)."""
    dirs = [p for p in recorded if not (p.startswith(SHIPPED) or Path(p).is_file())]
    return dirs, [*models, *(p for p in recorded if p not in dirs)]


def cmd_evaluate_recorded(args: argparse.Namespace, cfg) -> int:
    """``glass-inspect evaluate --recorded``: the simulated test-set options do not apply."""
    from model.evaluate import describe, model_files

    clash = [flag for flag, v in (("--sweep", args.sweep), ("--must-fail", args.must_fail),
                                  ("--clean", args.clean), ("--seed", args.seed),
                                  ("--clean-seed", args.clean_seed),
                                  ("--samples", args.samples),
                                  ("--scratch-share", args.scratch_share),
                                  ("--settings-from", args.settings_from)) if v is not None]
    if clash:
        raise UsageError(f"--recorded evaluates labelled recorded samples: leave out "
                         f"{', '.join(clash)} (they draw simulated samples)")
    dirs, given_models = split_models(args.recorded, args.models)
    models, as_given = model_files(given_models)
    baselines = list(dict.fromkeys(args.baseline or []))
    if not models and not baselines:
        raise UsageError("name at least one MODEL.onnx (or shipped:NAME) or --baseline")
    calibration = None
    if args.calibration:
        from edge.inspection import load_calibration

        calibration = load_calibration(cfg, args.calibration)
    report = evaluate_recorded(models, cfg, dirs, baselines, args.threads, not args.quiet,
                               calibration, skip_unlabelled=args.skip_unlabelled,
                               given=as_given)
    for p in labelled_samples(dirs, True)[1] if args.skip_unlabelled else ():
        print(f"skipped (no labels.json): {p}")
    n = len(report["samples"])
    clean = sum(s["clean"] for s in report["samples"])
    print(f"{n} labelled recorded samples ({n - clean} with scratches, {clean} clean)")
    print(describe(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"details: {args.json}")
    return 0
