"""Time grid DBSCAN on score maps against scikit-learn.

Prints one JSON object: ``cases``, each with ``name``, ``n_points``, ``sklearn_s`` (scikit-learn's
DBSCAN on the pixels >= T_low, default algorithm, points given), ``kernel_s`` (our score-map entry
point, thresholding included, warm, best of --repeat), ``kernel_cold_s`` (first call in a fresh
process: JIT cache load included), ``speedup`` and ``same_clusters`` (core points and noise equal,
core labels equal up to renaming).

Maps: "scratch lines plus noise": half of the pixels above T_low lie on 2-3 px wide straight lines,
half are scattered at random; eps 25, min_samples 16, T_low 0.25.

    python benchmarks/dbscan.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
from sklearn.cluster import DBSCAN

from edge.kernels.dbscan import dbscan, dbscan_map

T_LOW, EPS, MIN_SAMPLES = 0.25, 25.0, 16
CASES = [("438x390 0.1%", 390, 438, 0.001), ("438x390 1%", 390, 438, 0.01),
         ("438x390 5%", 390, 438, 0.05), ("438x390 20%", 390, 438, 0.20),
         ("1752x1560 1%", 1560, 1752, 0.01)]


def score_map(h: int, w: int, share: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.uniform(-1.0, 0.2, (h, w)).astype(np.float32)
    target = int(share * h * w)
    while (m >= T_LOW).sum() < target // 2:  # lines first, about half of the budget
        r0, c0, a = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, np.pi)
        length = rng.uniform(0.1, 0.8) * max(h, w)
        t = np.arange(0, length, 0.5)
        for off in range(int(rng.integers(2, 4))):
            r = (r0 + t * np.sin(a) + off * np.cos(a)).astype(int)
            c = (c0 + t * np.cos(a) - off * np.sin(a)).astype(int)
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            m[r[ok], c[ok]] = rng.uniform(0.5, 1.0)
    below = np.flatnonzero(m.ravel() < T_LOW)
    extra = target - int((m >= T_LOW).sum())
    if extra > 0:
        m.flat[rng.choice(below, extra, replace=False)] = rng.uniform(T_LOW, 0.9, extra)
    return m


def same(labels_a, core_a, labels_b, core_b) -> bool:
    if not (np.array_equal(core_a, core_b) and np.array_equal(labels_a < 0, labels_b < 0)):
        return False
    pairs = set(zip(labels_a[core_a].tolist(), labels_b[core_b].tolist(), strict=True))
    return len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def cold_time(h: int, w: int, share: float) -> float:
    code = (
        "import time, sys\n"
        "sys.path.insert(0, 'benchmarks')\n"
        "from dbscan import score_map, T_LOW, EPS, MIN_SAMPLES\n"
        f"m = score_map({h}, {w}, {share})\n"
        "t = time.perf_counter()\n"
        "from edge.kernels.dbscan import dbscan_map\n"
        "dbscan_map(m, T_LOW, EPS, MIN_SAMPLES)\n"
        "print(time.perf_counter() - t)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    dbscan_map(score_map(64, 64, 0.05), T_LOW, EPS, MIN_SAMPLES)  # compile or load the cache
    cases = []
    for name, h, w, share in CASES:
        m = score_map(h, w, share)
        rows, cols = np.nonzero(m >= T_LOW)
        pts = np.stack([cols, rows], axis=1).astype(np.float64)
        t = time.perf_counter()
        ref = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES).fit(pts)
        sklearn_s = time.perf_counter() - t
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            res = dbscan_map(m, T_LOW, EPS, MIN_SAMPLES)
            times.append(time.perf_counter() - t)
        kernel_s = min(times)
        labels, core = dbscan(pts, EPS, MIN_SAMPLES)
        ref_core = np.zeros(len(pts), bool)
        ref_core[ref.core_sample_indices_] = True
        ok = same(labels, core, ref.labels_, ref_core) and np.array_equal(
            res.labels[rows, cols], labels)
        cases.append({
            "name": name, "n_points": int(len(pts)), "sklearn_s": round(sklearn_s, 5),
            "kernel_s": round(kernel_s, 5), "kernel_cold_s": round(cold_time(h, w, share), 4),
            "speedup": round(sklearn_s / kernel_s, 1), "clusters": res.count,
            "same_clusters": bool(ok),
        })
    big = [c for c in cases if c["n_points"] >= 10_000]
    print(json.dumps({
        "eps": EPS, "min_samples": MIN_SAMPLES, "cases": cases,
        "min_speedup_10k_plus": min((c["speedup"] for c in big), default=None),
        "targets": {
            "speedup_20x_10k_plus": all(c["speedup"] >= 20 for c in big),
            "438x390_20pct_under_10ms": cases[3]["kernel_s"] < 0.010,
            "1752x1560_1pct_under_150ms": cases[4]["kernel_s"] < 0.150,
            "all_same": all(c["same_clusters"] for c in cases),
        },
    }))


if __name__ == "__main__":
    main()
