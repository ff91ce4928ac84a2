"""Peak memory (RSS) of INT8 Q/DQ quantization on recorded samples, each step in a child process.

  anchor    the tiles held at once (``quantization_batches``, batch 1, the default head) and one
            float pass of the model over them: what any quantizer needs that keeps its tiles
  qdq       the command itself: ``glass-inspect export qdq MODEL --samples DIR --tiles N``,
            which streams the tiles (one RoI's tiles alive at a time) into the quantizer
  streamed  ``quantize_qdq`` over a generator of the same tiles: the quantizer's own footprint

A child's peak is its ``ru_maxrss`` as ``wait4`` returns it. Prints one JSON object: the peaks
in GiB, ``qdq_over_anchor`` (the ratio), the seconds of each child and whether the command
succeeded. Make samples with ``glass-inspect simulate --samples 2 --out DIR --scratch-share 1``
(a full RoI gives 16 tiles of 512 px).

    python benchmarks/qdq_memory.py --samples DIR [--tiles 64] [--method entropy]
        [--steps anchor,qdq,streamed] [--impl OTHER_quantize.py]

``--impl`` measures another ``export/quantize.py`` (an older one, say) in ``qdq`` and
``streamed``, put in place of the package's module in the child.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "edge" / "models" / "scratch_unet.onnx"
STEPS = ("anchor", "qdq", "streamed")


def _use_impl(path: str | None) -> None:
    if not path:
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location("export.quantize", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["export.quantize"] = mod
    spec.loader.exec_module(mod)


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    if args.child == "anchor":
        import onnxruntime as ort

        from edge import config
        from edge.inspection import load_calibration
        from export.quantization_data import quantization_batches

        cfg = config.load()
        batches = quantization_batches(args.samples, cfg, 1, load_calibration(cfg), args.tiles)
        sess = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for b in batches:
            sess.run(None, {name: b})
        return 0
    _use_impl(args.impl)
    if args.child == "qdq":
        from edge.cli import main

        return main(["export", "qdq", str(args.model), "--samples", *args.samples, "--tiles",
                     str(args.tiles), "--method", args.method, "--out", args.out])
    from edge import config
    from edge.inspection import load_calibration
    from export.quantization_data import calibration_tiles
    from export.quantize import quantize_qdq

    cfg = config.load()
    tiles = calibration_tiles(args.samples, cfg, load_calibration(cfg), args.tiles)
    quantize_qdq(args.model, args.out, (t[None] for t in tiles), args.method)
    return 0


def run_child(step: str, args: argparse.Namespace, tmp: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--samples",
           *args.samples, "--tiles", str(args.tiles), "--method", args.method, "--model",
           str(args.model), "--out", str(tmp / f"{step}.qdq.onnx")]
    if args.impl:
        cmd += ["--impl", args.impl]
    log = tmp / f"{step}.log"
    t = time.perf_counter()
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    r = {"peak_gib": round(usage.ru_maxrss * 1024 / 2**30, 3),  # ru_maxrss: KiB on Linux
         "s": round(time.perf_counter() - t, 1), "rc": proc.returncode}
    if proc.returncode != 0:
        r["log_tail"] = log.read_text(errors="replace")[-2000:]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", nargs="+", required=True, metavar="SAMPLE_DIR")
    ap.add_argument("--tiles", type=int, default=64)
    ap.add_argument("--method", choices=("entropy", "minmax", "percentile"), default="entropy")
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated, of " +
                    ", ".join(STEPS))
    ap.add_argument("--impl", help="a quantize.py to use instead of export/quantize.py")
    ap.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.exit(child(args))

    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        ap.error(f"unknown steps {sorted(unknown)}")
    res: dict = {"tiles": args.tiles, "method": args.method, "model": Path(args.model).name,
                 "impl": args.impl or "export/quantize.py"}
    with tempfile.TemporaryDirectory() as tmp:
        for step in steps:
            r = run_child(step, args, Path(tmp))
            res.update({f"{step}_{k}": v for k, v in r.items()})
    if "anchor_peak_gib" in res and "qdq_peak_gib" in res:
        res["qdq_over_anchor"] = round(res["qdq_peak_gib"] / res["anchor_peak_gib"], 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
