"""Time the pipeline on one full-size RoI with the shipped network on ONNX Runtime.

Prints one JSON object: ``stages_s`` (per stage, from the run with the best total), ``total_s``,
``tiles``, and the anchor measured in the same run: ``anchor_infer_s``, the same tiles through a
bare ONNX Runtime session (no pipeline around it), and ``overhead_ratio`` = total / anchor, the
cost of everything that is not the network. Frames: a simulated sample with a scratch, the
default head (3504 x 3120 px, 16 tiles of 512 at half resolution).

    python benchmarks/pipeline.py [--repeat N] [--threads T] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnxruntime as ort

from edge import config
from edge.engine import open_engine
from edge.pipeline import prepare_tiles, process_roi
from edge.sim import OpticsRenderer, generate_sample

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=str(ROOT / "edge" / "models" / "scratch_unet.onnx"))
    args = ap.parse_args()

    cfg = config.load()
    sample = generate_sample(1, cfg.stage.roi_grid.extent_mm, scratch_share=1.0)
    optics = OpticsRenderer(cfg)
    frames = optics.render(sample, cfg.stage.roi_grid.roi_origin_mm(0), noise_seed=0).frames
    batch = max(cfg.engine.batch_sizes)
    engine = open_engine(args.model, threads=args.threads, max_batch=batch)

    best = None
    for _ in range(args.repeat + 1):  # the first run warms JIT caches and ONNX Runtime
        t = time.perf_counter()
        r = process_roi(frames, None, engine, cfg)
        total = time.perf_counter() - t
        if best is None or total < best[0]:
            best = (total, r)

    _, tiles = prepare_tiles(frames, None, cfg)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    anchor = None
    for _ in range(args.repeat + 1):
        t = time.perf_counter()
        for i in range(0, len(tiles), batch):
            session.run(["scores"], {"frames": tiles[i:i + batch]})
        s = time.perf_counter() - t
        anchor = s if anchor is None else min(anchor, s)

    total, r = best
    print(json.dumps({
        "stages_s": {k: round(v, 4) for k, v in r.timings_s.items()},
        "total_s": round(total, 3), "tiles": r.tiles, "defects": len(r.defects),
        "anchor_infer_s": round(anchor, 3), "overhead_ratio": round(total / anchor, 3),
        "frame_px": list(frames.shape[1:]), "threads": args.threads,
        "model": Path(args.model).name,
    }))


if __name__ == "__main__":
    main()
