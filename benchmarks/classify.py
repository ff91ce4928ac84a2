"""Throughput of `glass-inspect classify`: windows per second on single dark-field images.

A folder of simulated 2048 x 2048 single dark-field frames (``edge.sim.darkfield``, 12-bit TIFF)
goes through :func:`edge.darkfield.classify.classify_paths` as the command runs it (read, cut 225
windows of 256 px every 128 px, batches through the engine, regions); the anchor, timed in the same
run, is the engine alone on the same number of windows already cut (``infer_windows_per_s``), so
``ratio`` = classify / engine-alone says what the reading, cutting and merging cost on top of
the network.

``--bayer``: the frames are RAW GRBG mosaics, and classify balances their colour sites first
(:mod:`edge.darkfield.mosaic`), which the ratio then includes.

The network is ``--model`` (default: the shipped ``attention_fusion.onnx``); without one, an
untrained classifier of ``--width`` is exported first (needs torch): throughput does not
depend on the weights.

    python benchmarks/classify.py [--model FILE.onnx] [--images 4] [--threads 2] [--batch 8]
                                  [--bayer]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from edge import config
from edge.darkfield import Classifier, classify_paths
from edge.sim.darkfield import DarkfieldConfig, render_darkfield


def untrained_model(folder: Path, width: float) -> Path:
    import torch

    from export.onnx import export_onnx
    from model.attention import AttentionFusionNet, FusionSpec
    from model.train import CHECKPOINT_FORMAT

    torch.manual_seed(0)
    net = AttentionFusionNet(FusionSpec(width=width, in_channels=1, whiten=True)).eval()
    spec = net.spec.to_dict()
    ckpt = {"format": CHECKPOINT_FORMAT, "network": "fusion", "spec": spec, "settings": {},
            "model": net.state_dict(), "optimizer": {}, "epoch": 0, "history": [],
            "head_digest": "", "head_source": "", "pipeline": {}, "parameters": 0,
            "torch_version": str(torch.__version__)}
    torch.save(ckpt, folder / "untrained.pt")
    return export_onnx(folder / "untrained.pt", folder / "untrained.onnx").path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a single-frame window classifier (default: the shipped one)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--bayer", action="store_true", help="Bayer mosaics instead of grey frames")
    ap.add_argument("--width", type=float, default=0.25,
                    help="width of the untrained stand-in, when no model is there")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = Path(args.model) if args.model else config.shipped("attention_fusion.onnx")
        stand_in = not model.is_file()
        if stand_in:
            model = untrained_model(folder, args.width)
        images = folder / "images"
        images.mkdir()
        for k in range(args.images):
            # the held-out test frames (seeds 92.., model.windows.image_split): never trained on
            frame = render_darkfield(92 + k, DarkfieldConfig(shape=(2048, 2048), bit_depth=12,
                                                             bayer=args.bayer))
            tifffile.imwrite(images / f"frame{k}.tif", frame.image)
        with Classifier.open(model, batch=args.batch, threads=args.threads) as clf:
            # 12-bit data in 16-bit words, as a camera writes it: the depth must be said
            list(classify_paths([images / "frame0.tif"], clf, bit_depth=12,
                                bayer=args.bayer))  # warm (and the balance kernel compiled)
            t = time.perf_counter()
            results = list(classify_paths([images], clf, bit_depth=12, bayer=args.bayer))
            classify_s = time.perf_counter() - t
            windows = sum(r.windows for r in results)
            batch = np.random.default_rng(0).random((args.batch, 1, 256, 256), np.float32)
            t = time.perf_counter()
            for _ in range(0, windows, args.batch):
                clf.engine.infer(batch)
            infer_s = time.perf_counter() - t
    print(json.dumps({
        "model": "untrained stand-in" if stand_in else model.name,
        "images": len(results), "bayer": args.bayer, "windows": windows,
        "threads": args.threads,
        "batch": args.batch,
        "classify_windows_per_s": round(windows / classify_s, 1),
        "infer_windows_per_s": round(windows / infer_s, 1),
        "ratio": round(infer_s / classify_s, 3),
        "verdicts": [r.verdict.value for r in results],  # every frame has scratches
    }))


if __name__ == "__main__":
    main()
