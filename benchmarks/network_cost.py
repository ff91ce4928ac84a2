"""What a detector costs per full RoI: multiply-adds, CPU time on ONNX Runtime, and an estimate
for the Jetson modules the head ships on.

For each ONNX network given (default: the shipped one) it counts the multiply-adds of its
convolutions per full RoI (the runtime's tiling: tiles of the head's size with their overlap,
so the overlap is paid for), and times the runtime's pipeline on one full-size RoI (prepare,
infer, stitch, post-process) with ONNX Runtime on ``--threads`` CPU threads. The anchors, timed
in the same run: the physics baseline (``model.baselines.PhysicsScorer``) on the same frames,
and the pipeline's own ``prepare`` stage.

Jetson estimate at FP16 (TensorRT): multiply-adds / (dense FP16 rate x efficiency). Dense FP16
rates derived from NVIDIA's published INT8 figures (sparse INT8 TOPS / 2 for dense, / 2 again
for FP16): Orin Nano 8 GB 40 TOPS -> 10 TFLOPS (5 T multiply-adds/s); Orin NX 16 GB, GPU only
(the published 100 TOPS includes the two DLAs; the GPU is the Nano's at 918 instead of 625 MHz)
-> about 14.7 TFLOPS. Efficiency 25 %: a narrow network (tens of channels) keeps the tensor
cores far from full, and its activations are memory-bound. An estimate, not a measurement.

A network of few channels and many elementwise operations (the hybrid: its fixed physics
layers) is bound by memory traffic rather than multiply-adds, so a second estimate bounds it by
bytes: every tensor the graph produces, written once and read once at FP16 (2 + 2 bytes per
element, per tile), over the module's published memory bandwidth (Orin Nano 8 GB 68 GB/s,
Orin NX 16 GB 102.4 GB/s) at 60 % efficiency. The larger of the two estimates is the one to
believe (``*_fp16_ms_est``).

    python benchmarks/network_cost.py [MODEL.onnx ...] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

FP16_MACS_PER_S = {"orin_nano_8gb": 5.0e12, "orin_nx_16gb": 7.35e12}
EFFICIENCY = 0.25
MEMORY_BYTES_PER_S = {"orin_nano_8gb": 68e9, "orin_nx_16gb": 102.4e9}
MEMORY_EFFICIENCY = 0.6


def conv_macs(model_path: str | Path, tile: int) -> tuple[int, int, int]:
    """Multiply-adds of one ``24 x tile x tile`` tile through the network's Conv and
    ConvTranspose nodes, its parameter count, and the elements of every tensor its nodes
    produce (the activation traffic)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    # every tensor's shape as ONNX Runtime computes it on one tile: static shape inference
    # loses the sizes behind a computed Reshape (the hybrid's upsampling)
    probe = onnx.load(str(model_path))
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for o in node.output:
            if o and o not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=o))
                known.add(o)
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3  # the probe's extra outputs block fusions; ORT warns of each
    session = ort.InferenceSession(probe.SerializeToString(), quiet,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    x = np.zeros((1, 24, tile, tile), np.float32)
    shapes = {n: list(np.shape(v)) for n, v in zip(names, session.run(names, {"frames": x}),
                                                    strict=True)}
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    params = int(sum(w.size for w in weights.values()))
    macs = 0
    elements = sum(int(np.prod(shapes[o])) for node in model.graph.node for o in node.output
                   if o in shapes)
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        w = weights.get(node.input[1])
        if w is None:
            continue
        if node.op_type == "Conv":
            out = shapes.get(node.output[0])
            if not out:
                raise ValueError(f"no shape for {node.output[0]}: shape inference failed")
            # each output element: C_in/groups x kH x kW multiply-adds
            macs += int(np.prod(out)) * int(np.prod(w.shape[1:]))
        else:
            src = shapes.get(node.input[0])
            if not src:
                raise ValueError(f"no shape for {node.input[0]}: shape inference failed")
            # each input element feeds C_out/groups x kH x kW outputs
            macs += int(np.prod(src)) * int(np.prod(w.shape[1:]))
    return macs, params, elements


def main() -> None:
    from edge import config
    from edge.engine import open_engine
    from edge.kernels.space_to_depth import plan_tiles
    from edge.pipeline import process_roi
    from edge.sim import OpticsRenderer, generate_sample
    from model.baselines import PhysicsScorer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = config.load()
    models = args.models or [str(cfg.resolve(cfg.engine.artifact))]
    p = cfg.pipeline
    grid = plan_tiles(cfg.camera.height // 2, cfg.camera.width // 2, p.tile_size,
                      p.tile_overlap)
    g = cfg.stage.roi_grid
    sample = generate_sample(900_000, g.extent_mm, 1.0)
    frames = OpticsRenderer(cfg).render(sample, g.roi_origin_mm(0), 1).frames

    def best(fn) -> float:
        fn()  # warm: compile, allocate
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    physics = PhysicsScorer()
    anchor_physics = best(lambda: physics(frames))
    out = {"roi_px": [cfg.camera.width, cfg.camera.height], "tiles_per_roi": grid.count,
           "tile": p.tile_size, "threads": args.threads,
           "anchor_physics_ms_per_roi": round(anchor_physics * 1000, 1), "networks": []}
    for path in models:
        macs, params, elements = conv_macs(path, p.tile_size)
        per_roi = macs * grid.count
        traffic = elements * grid.count * 4  # FP16, written once and read once
        with open_engine(path, "onnxruntime", args.threads, max(cfg.engine.batch_sizes)) as e:
            stages: dict[str, float] = {}

            def run(e=e, stages=stages):
                r = process_roi(frames, None, e, cfg)
                stages.update(r.timings_s)

            total = best(run)
        entry = {
            "model": Path(path).name, "params": params,
            "gmacs_per_roi": round(per_roi / 1e9, 2),
            "activation_gb_per_roi": round(traffic / 1e9, 2),
            "cpu_ms_per_roi": round(total * 1000, 1),
            "stage_ms": {k: round(v * 1000, 1) for k, v in stages.items()},
            "ratio_to_physics": round(total / anchor_physics, 2),
            "ratio_to_prepare": round(total / max(stages.get("prepare", 1e-9), 1e-9), 1),
        }
        for name, rate in FP16_MACS_PER_S.items():
            compute = per_roi / (rate * EFFICIENCY)
            memory = traffic / (MEMORY_BYTES_PER_S[name] * MEMORY_EFFICIENCY)
            entry[f"{name}_fp16_compute_ms_est"] = round(compute * 1000, 1)
            entry[f"{name}_fp16_memory_ms_est"] = round(memory * 1000, 1)
            entry[f"{name}_fp16_ms_est"] = round(max(compute, memory) * 1000, 1)
        out["networks"].append(entry)
    out["efficiency_assumed"] = EFFICIENCY
    out["memory_efficiency_assumed"] = MEMORY_EFFICIENCY
    print(json.dumps(out))


if __name__ == "__main__":
    main()
