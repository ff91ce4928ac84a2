"""Keeping samples for review: does it delay the verdict, what does it write, and what happens
when the budget or the disk is full?

The simulated head at small frames (2 RoIs of 1024 x 1024 px, 30 ms frame time, the shipped
network on ONNX Runtime), the same glass twice per round: once without keeping and once keeping
every sample (``keep_share`` 1: the worst case), alternated so that the machine's load falls on
both alike. ``latency`` is the wall time from ``inspect`` to the verdict in hand, the keeper's
``finish`` included; ``finish_ms`` is that call alone. Then three runs in which nothing may be
lost (every verdict delivered, counted by the caller): a budget of 2.5 samples (the oldest go),
a disk that is full (every write raises ``ENOSPC``) and a writer that falls behind (it blocks
until the run ends: the queue fills, samples are dropped and counted).

Prints one JSON object: ``latency`` (p50 / p99 / mean seconds without and with, ``p99_ratio``,
target <= 1.05), ``finish_ms`` (p50, p99, max), ``bytes_per_sample`` (bytes written per kept
sample, and its parts: RAW frames, score maps, the rest), and ``budget_full``, ``disk_full``,
``writer_behind`` (samples, verdicts delivered, the keeper's counters).

    python benchmarks/review_keep.py [--samples N] [--threads T]
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edge import config, review
from edge.assembly import build_head

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PX = 1024  # RoI frames, at the default head's pixel footprint


def head(kept: Path, **changes) -> config.HeadConfig:
    d = tomllib.loads(config.default_text())
    d["camera"].update(width=PX, height=PX, frame_time_ms=30.0, grab_timeout_ms=3000.0)
    d["stage"]["roi_grid"].update(size_mm=[PX * 40.0 / 3504, PX * 35.0 / 3120], columns=2,
                                  rows=1)
    d["stage"]["settle_ms"] = 10.0
    d["review"] = {"dir": str(kept), "budget_gb": 10.0, "keep_share": 1.0, **changes}
    return config.parse(d, "review-bench.toml")


def one(asm, k: int, seed: int, keeper: review.Keeper | None) -> tuple[float, float, object]:
    """One sample: (seconds to the verdict, seconds in ``finish``, the verdict)."""
    sid, truth = asm.glass.next(k, seed)
    t0 = time.perf_counter()
    c = keeper.collector() if keeper is not None else None
    v = asm.head.inspect(sid, on_roi=c, truth=truth)
    t1 = time.perf_counter()
    if keeper is not None:
        keeper.finish(c, v, asm.head, truth)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1, v


def pct(xs: list[float]) -> dict:
    a = np.asarray(xs)
    return {"p50": round(float(np.percentile(a, 50)), 4),
            "p99": round(float(np.percentile(a, 99)), 4), "mean": round(float(a.mean()), 4)}


def run_case(asm, n: int, seed: int, keeper: review.Keeper) -> dict:
    delivered = sum(one(asm, k, seed, keeper)[2] is not None for k in range(n))
    keeper.close(timeout_s=30)
    return {"samples": n, "verdicts_delivered": delivered, **keeper.stats.to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20, help="rounds of the latency comparison")
    ap.add_argument("--seed", type=int, default=500)
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the full-disk runs log on purpose
    out: dict = {"samples": args.samples, "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = head(root / "kept")
        with build_head(cfg) as asm:
            one(asm, 0, args.seed, None)  # homes the stage, warms the caches
            t_high = cfg.pipeline.t_high
            keeper = review.Keeper(cfg.review, cfg, t_high, seed=args.seed)
            without, with_, finish = [], [], []
            for k in range(args.samples):
                without.append(one(asm, k, args.seed, None)[0])
                s, f, _ = one(asm, k, args.seed, keeper)
                with_.append(s)
                finish.append(f)
            keeper.close(timeout_s=60)
            st = keeper.stats
            out["latency"] = {"without": pct(without), "with": pct(with_),
                              "p99_ratio": round(pct(with_)["p99"] / pct(without)["p99"], 4),
                              "p50_ratio": round(pct(with_)["p50"] / pct(without)["p50"], 4)}
            out["finish_ms"] = {"p50": round(1000 * float(np.median(finish)), 3),
                                "p99": round(1000 * float(np.percentile(finish, 99)), 3),
                                "max": round(1000 * max(finish), 3)}
            folders = [p for p in (root / "kept").iterdir() if p.name[0] != "."]
            tif = sum(f.stat().st_size for p in folders for f in p.glob("roi_*.tif"))
            png = sum(f.stat().st_size for p in folders for f in p.glob("scores_*.png"))
            kept = max(1, st.kept)
            out["bytes_per_sample"] = {"total": st.bytes_written // kept, "raw_tiff": tif // kept,
                                       "score_png": png // kept,
                                       "rest": (st.bytes_written - tif - png) // kept,
                                       "kept": st.kept, "dropped": st.dropped_queue_full}
            per = st.bytes_written // kept

            small = head(root / "budget", budget_gb=2.5 * per / 1e9)
            out["budget_full"] = run_case(asm, 6, args.seed, review.Keeper(
                small.review, small, t_high, seed=1))
            out["budget_full"]["bytes_kept"] = sum(
                f.stat().st_size for f in (root / "budget").rglob("*") if f.is_file())
            out["budget_full"]["budget_bytes"] = int(2.5 * per)

            def full(item, staging, c):
                (staging / item.sample_id).mkdir(parents=True, exist_ok=True)
                raise OSError(errno.ENOSPC, "No space left on device")

            out["disk_full"] = run_case(asm, 4, args.seed, review.Keeper(
                cfg.review, cfg, t_high, write=full))

            release = threading.Event()

            def stuck(item, staging, c):
                release.wait(120)
                return review.write_kept(item, staging, c)

            behind = review.Keeper(head(root / "behind").review, cfg, t_high, write=stuck)
            lat = [one(asm, k, args.seed, behind)[0] for k in range(4)]
            release.set()
            behind.close(timeout_s=60)
            out["writer_behind"] = {"samples": 4, "verdicts_delivered": len(lat),
                                    "latency_p50_s": pct(lat)["p50"], **behind.stats.to_dict()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
