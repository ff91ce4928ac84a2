"""Time the optics simulator on one full-size RoI (6 frames of 3504 x 3120) on one core.

Prints one JSON object. ``roi_render_s`` is the target (under 1 s on one core). The anchor, timed
in the same run on the same core, is ``numpy_noise_s``: NumPy drawing only the Gaussian noise for
the same 6 frames (float32), which is less than the simulator does; ``ratio_to_numpy_noise`` below
1 means the whole render costs less than NumPy's noise alone.

    python benchmarks/sim_render.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numba
import numpy as np
from timing import best_of

from edge import config
from edge.sim import OpticsRenderer, generate_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    cfg = config.load()
    head = OpticsRenderer(cfg)
    grid = cfg.stage.roi_grid
    # a sample with scratches, dust, stains and fibres; RoI 4 holds several of them
    sample = generate_sample(3, grid.extent_mm, scratch_share=1.0)
    origin = grid.roi_origin_mm(0)

    numba.set_num_threads(1)
    t = time.perf_counter()
    r = head.render(sample, origin, noise_seed=1)
    cold = time.perf_counter() - t
    warm = best_of(lambda: head.render(sample, origin, noise_seed=1), args.repeat, warm=False)
    scene = best_of(lambda: head.scene(sample, origin), args.repeat)

    rng = np.random.default_rng(0)
    n = 6 * cfg.camera.height * cfg.camera.width
    anchor = best_of(lambda: rng.standard_normal(n, dtype=np.float32), args.repeat)

    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    parallel = best_of(lambda: head.render(sample, origin, noise_seed=1), args.repeat)

    print(json.dumps({
        "roi_render_s": round(warm, 4),
        "roi_render_cold_s": round(cold, 4),
        "scene_s": round(scene, 4),
        "numpy_noise_s": round(anchor, 4),
        "ratio_to_numpy_noise": round(warm / anchor, 3),
        "roi_render_all_threads_s": round(parallel, 4),
        "threads": numba.config.NUMBA_NUM_THREADS,
        "frames_shape": list(r.frames.shape),
        "defects_in_roi": len(r.defect_ids),
        "target_met": warm < 1.0,
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
