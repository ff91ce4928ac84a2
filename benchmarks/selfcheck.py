"""The per-sample hardware self-check (edge.selfcheck) on many simulated samples: how often does
it refuse a normal sample, how often does it catch each silent fault, and what does it cost?

Samples are random glass of the simulator (``generate_sample``, scratch share 0.4, seeds from
``--seed``), rendered RoI by RoI with the optics simulator and fed to one :class:`SelfCheck`
per head (so the camera-noise history builds up as on a head). The faults are made on the
rendered frames as :mod:`edge.sim.faults` makes them in the camera: a state with no group lit
(``dead_led_group``: the group of the 2nd state; ``ring_dark``: every state), the scene blurred
by a Gaussian of 4 px (``defocus``), frames from the 4th on scaled about the dark level by 2
(``gain_drift``) or by 0.5 from the 7th on (``gain_drift_half``), and the second RoI rendered
2 mm short of its place along the move (``lost_steps``). Each fault runs on the same samples.

Heads: ``bench`` (the fault benchmark's: 2 RoIs of 256 x 224 px, 15 ms exposures, 0.2 mm
overlap), ``small`` (the tests' small head: 2 RoIs of 1024 px, 2 mm overlap), ``default`` (the
default head: 10 full-size RoIs; slow to render, fewer samples).

Printed: one JSON object; per head ``samples``, ``false_error`` (normal samples refused) with
their reasons, per fault ``caught`` (of ``samples``) and ``right_reason`` (the reason names the
fault), ``ms_per_roi`` (the self-check's time per RoI) and ``anchor_ms_per_roi`` (the
pipeline's own first stage on the same RoI: dark/flat correction and space-to-depth into the
engine's tiles, ``edge.pipeline.prepare_tiles``), ``ratio`` of the two.

    python benchmarks/selfcheck.py [--samples N] [--default-samples N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from serve_rig import reduced_head

from edge import config
from edge.config import N_STATES
from edge.pipeline import prepare_tiles
from edge.selfcheck import SelfCheck, SelfCheckFailed
from edge.sim import OpticsRenderer
from edge.sim.sample import generate_sample

FAULTS = {
    "dead_led_group": r"an LED group gives no light .*LED group 1 ",
    "ring_dark": r"no light in any of the 6 LED states",
    "defocus": r"out of focus",
    "gain_drift": r"gain (changed during the sample|drifted)",
    "gain_drift_half": r"gain (changed during the sample|drifted)",
    "lost_steps": r"do not show the same glass where they overlap",
}


def small_head() -> config.HeadConfig:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import small_head_data

    return config.parse(small_head_data(), "small-head.toml")


def render(optics: OpticsRenderer, sample, index: int, seed: int, fault: str | None):
    grid = optics.cfg.stage.roi_grid
    ox, oy = grid.roi_origin_mm(index)
    if fault == "lost_steps" and index == 1:
        # the move from RoI 0 to RoI 1 ends 2 mm short along its direction
        (x0, y0), (x1, y1) = grid.roi_origin_mm(0), grid.roi_origin_mm(1)
        d = float(np.hypot(x1 - x0, y1 - y0))
        ox, oy = ox - 2.0 * (x1 - x0) / d, oy - 2.0 * (y1 - y0) / d
    scene = optics.scene(sample, (ox, oy))
    if fault == "defocus":
        scene.layers = np.stack([gaussian_filter(layer, 4.0, mode="constant")
                                 for layer in scene.layers])
        scene.occupied[:] = 1
    frames = []
    dark = optics.sim.dark_offset_dn
    rng = np.random.default_rng(seed)
    for k in range(N_STATES):
        n = index * N_STATES + k + 1  # the frame's number in the sample
        lit = [k]
        if fault == "ring_dark" or (fault == "dead_led_group" and k == 1):
            lit = []
        f = optics.expose(scene, lit, seed * 100 + n)
        g = {"gain_drift": 2.0 if n >= 4 else None,
             "gain_drift_half": 0.5 if n >= 7 else None}.get(fault or "")
        if g is not None:
            out = dark + g * (f.astype(np.float32) - dark) + rng.uniform(-0.5, 0.5, f.shape)
            f = np.clip(np.floor(out + 0.5), 0, optics.max_dn).astype(np.uint16)
        frames.append(f)
    return np.stack(frames)


def run_head(name: str, cfg: config.HeadConfig, samples: int, seed: int) -> dict:
    optics = OpticsRenderer(cfg)
    grid = cfg.stage.roi_grid
    rois = grid.count if name == "default" else 2
    res: dict = {"head": name, "frame": [cfg.camera.width, cfg.camera.height], "rois": rois,
                 "samples": samples}
    check_s, anchor_s, n_rois = 0.0, 0.0, 0
    history: list[tuple[float, float]] = []
    for fault in [None, *FAULTS]:
        check = SelfCheck(cfg)
        if fault is not None:  # the noise history of the normal samples, as on a head
            check.noise_history.extend(history)
        refused, right, reasons = 0, 0, []
        for s in range(samples):
            sample = generate_sample(seed + s, grid.extent_mm, 0.4)
            chk = check.sample(sample.sample_id)
            try:
                for i in range(rois):
                    frames = render(optics, sample, i, seed + s, fault)
                    t = time.perf_counter()
                    chk.roi(i, grid.roi_origin_mm(i), frames)
                    if fault is None:
                        check_s += time.perf_counter() - t
                        t = time.perf_counter()
                        prepare_tiles(frames, None, cfg)
                        anchor_s += time.perf_counter() - t
                        n_rois += 1
                chk.finish()
            except SelfCheckFailed as exc:
                refused += 1
                why = str(exc)
                reasons.append(f"{sample.sample_id}: {why[:160]}")
                right += bool(fault and re.search(FAULTS[fault], why))
        if fault is None:
            history[:] = check.noise_history
            res["false_error"] = refused
            res["false_error_reasons"] = reasons[:5]
        else:
            res.setdefault("faults", {})[fault] = {"caught": refused, "right_reason": right,
                                                   "missed_or_other": [r for r in reasons if not
                                                                       re.search(FAULTS[fault],
                                                                                 r)][:3]}
        print(f"{name} {fault or 'normal'}: {refused} of {samples} refused", file=sys.stderr,
              flush=True)
    res["ms_per_roi"] = round(1000 * check_s / max(n_rois, 1), 1)
    res["anchor_ms_per_roi"] = round(1000 * anchor_s / max(n_rois, 1), 1)
    res["ratio"] = round(check_s / anchor_s, 2) if anchor_s else None
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=40, help="per fault, bench and small heads")
    ap.add_argument("--default-samples", type=int, default=3,
                    help="per fault, default head (0: skip it)")
    ap.add_argument("--seed", type=int, default=30_000)
    args = ap.parse_args()
    t0 = time.monotonic()
    heads = [("bench", config.load(reduced_head(Path(tempfile.mkdtemp()), rois=2, width=256,
                                                height=224, exposure_ms=15.0,
                                                frame_time_ms=20.0, max_on_ms=150.0)),
              args.samples),
             ("small", small_head(), args.samples)]
    if args.default_samples:
        heads.append(("default", config.load(), args.default_samples))
    out = [run_head(name, cfg, n, args.seed) for name, cfg, n in heads]
    print(json.dumps({"heads": out, "seed": args.seed,
                      "seconds": round(time.monotonic() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
