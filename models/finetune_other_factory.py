"""Writes ``models/finetune_other_factory.json``, issue 31 item 5's table: the shipped network
and the one fine-tuned on 30 labelled samples of the other factory's head, on 150 fresh samples
of that head and on the default head.

Run from the repository root after the runs ``docs/training.md`` ("The loop on a head the
network never saw") lists, with the fine-tuned model at ``FINETUNED`` and the other head's
evaluation record at ``OTHER_JSON``::

    python models/finetune_other_factory.py FINETUNED.onnx OTHER_JSON [FIRST_JSON]

The default head's counts are read from the score-map cache of the validation blocks the
``evaluate --sweep`` run filled (810000-, 50 must fail; 820000-, 30 clean: issue 30's
validation blocks, so they serve no choice here: nothing was chosen on them for this
network), each network at the head file's own post-processing (the shipped network's validated
setting). ``FIRST_JSON``: an earlier test of the same network on other blocks of the other
head, kept in the record as it came out (it was superseded, not hidden).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

KEYS = ("samples", "samples_must_fail", "samples_clean", "sample_fn_rate", "sample_fn_rate_ci",
        "sample_fp_rate", "sample_fp_rate_ci", "sample_error_rate", "samples_error",
        "image_fn_rate", "image_fp_rate", "image_fp_rate_ci", "scratch_recall",
        "recall_1mm_12dn", "recall_by_peak_dn")


def pick(row: dict) -> dict:
    return {k: row[k] for k in KEYS if k in row}


def default_head(finetuned: str) -> dict:
    from edge.cli_common import load_head
    from model.evaluate import count, detectors, model_files, sample_sets

    cfg = load_head(argparse.Namespace(head=None))
    paths, _ = model_files(["shipped:scratch_hybrid.onnx", finetuned])
    cache = Path(os.environ.get("GLASS_INSPECT_CACHE", "~/.cache/glass-inspect")).expanduser()
    sets, blocks, _ = sample_sets(cfg, 0, 810_000, 0.0, 50, 30, 820_000, cache / "heldout",
                                  role="validation")
    out = {}
    for d in detectors(paths, cfg, (), 2):
        scored = [s for hs in sets for s in hs.scored(d.key)]
        out[d.name] = pick(count(scored, cfg, cfg.pipeline).summary())
    out["blocks"] = [b.to_dict() for b in blocks]
    return out


def main() -> int:
    finetuned, other_json, *rest = sys.argv[1:]
    other = json.loads(Path(other_json).read_text())
    dets = other["detectors"]
    name = Path(finetuned).stem
    default = default_head(finetuned)
    doc = {
        "what": "issue 31 item 5: the shipped six-state network and the network fine-tuned on 30 "
                "labelled samples of a head it never saw (edge/heads/other_factory.toml: other "
                "scratch profile and widths, water spots and fingerprints, 1.6 x gain, 2 x read "
                "noise), on 150 fresh samples of that head and on the default head",
        "before": {"network": "shipped:scratch_hybrid.onnx (with its envelope, as shipped)",
                   **pick(dets["scratch_hybrid"])},
        "after": {"network": f"{name} (fine-tuned; envelope of its training RoIs and the 30 "
                             "recorded samples)", **pick(dets[name])},
        "default_before": {"network": "shipped:scratch_hybrid.onnx",
                           **default["scratch_hybrid"]},
        "default_after": {"network": name, **default[name]},
        "seeds": {"finetune_samples": "3100000-3100029 (other head, scratch share 0.5; "
                                      "labelled with the simulator's truth: label --from-truth)",
                  "finetune_simulated": "the shipped recipe's sampler, seed 31, on the other "
                                        "head (default glass), half of each batch",
                  "other_head_test": other.get("seeds", {}).get("test"),
                  "default_head": default["blocks"]},
        "post_processing": {
            "other_head": {name: dets[name].get("post_processing"),
                           "from": dets[name].get("post_processing_from"),
                           "scratch_hybrid": dets["scratch_hybrid"].get("post_processing")},
            "default_head": "the head file's own (t_high 0.6, DBSCAN eps 12 / min 2, downscale "
                            "8: the shipped network's validated setting) for both networks"},
        "other_head_record": f"docs/evaluation/{Path(other_json).name}",
        "other_head_validation": "docs/evaluation/other-factory-sweep-validation.json",
    }
    if rest:
        first = json.loads(Path(rest[0]).read_text())
        doc["first_test"] = {"network": name, "superseded": True,
                             "post_processing": first["detectors"][name].get("post_processing"),
                             "seeds": first.get("seeds", {}).get("test"),
                             **pick(first["detectors"][name])}
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for k in ("before", "after", "default_before", "default_after", "first_test"):
        if k in doc:
            r = doc[k]
            print(f"{k}: FN {r.get('sample_fn_rate')} FP {r.get('sample_fp_rate')} ERROR "
                  f"{r.get('sample_error_rate')} of {r.get('samples')}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
