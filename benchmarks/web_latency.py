"""Does the operator page slow the verdict? Verdict latency with the page open and polled every
second, against a head without the page, in one run (issue 33; target: p99 ratio at most 1.05).

Two ``glass-inspect serve`` processes run side by side, each with the scripted inspector at a
fixed time (``--roi-time``, 10 RoIs; sample ids whose scripted verdict is PASS or FAIL, never
the ERROR that ends an inspection early, so every inspection takes the same time) on a
pseudo-terminal of its own (``serve_rig.LinePort``):

* ``anchor``: ``serve`` without ``--web``;
* ``web``: ``serve --web 127.0.0.1:0``, and while its samples run a client in a process of
  its own does what an open page in a browser does, once a second: GET ``/`` and the pictures it
  names, ``/sample/ID`` of the newest sample and its pictures, and ``/metrics`` (urllib; every
  answer read to the end).

The line side is :class:`firmware_bridge.client.LineClient` (what ``line-sim`` drives):
latency = from ``inspect()`` called to the verdict returned. The samples alternate between
the two heads in blocks of ``--block`` (default 10), so a change in the machine's load falls
on both alike; the first block of each is a warm-up and not counted. Printed: one JSON
object with, per head, p50/p99/max of the latency and of the overhead (latency minus the
inspection's own time, 10 x roi_time), the p99 ratios web / anchor, the page's requests
(count, non-200 answers, p99 time), and the machine's load average at the start and end
(``os.getloadavg``): the heads share the CPU with whatever else runs.

    python benchmarks/web_latency.py [--samples 200] [--roi-time 0.01] [--block 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import queue
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from serve_rig import LinePort, Serve, say, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.verdict import Status  # noqa: E402
from firmware_bridge.inspector import ScriptedInspector  # noqa: E402

ROIS = 10  # the scripted inspector's default


def poll_page(url: str, on, stop, latest, results) -> None:
    """A browser's worth of requests to the page, once a second while ``on`` is set, in a
    process of its own (as a browser is: its work must not take this process's GIL from the
    line client). ``latest``: a shared array with the newest sample id the line got a verdict
    for. Puts (times in ms, failures) on ``results`` when ``stop`` is set."""
    url = url.rstrip("/")
    times_ms: list[float] = []
    bad: list[str] = []

    def get(path: str) -> bytes:
        t = time.monotonic()
        body = b""
        try:
            with urllib.request.urlopen(url + path, timeout=10) as r:
                body = r.read()
                if r.status != 200:
                    bad.append(f"{path}: {r.status}")
        except Exception as exc:  # noqa: BLE001 - every failure is counted, not fatal
            bad.append(f"{path}: {exc}")
        times_ms.append((time.monotonic() - t) * 1000.0)
        return body

    def page(path: str) -> None:
        html = get(path).decode("utf-8", "replace")
        for src in re.findall(r'<img[^>]+src="(/[^"]+)"', html)[:24]:
            get(src)

    while not stop.is_set():
        if not on.wait(0.1):
            continue
        t = time.monotonic()
        page("/")
        sid = latest.value.decode("ascii")
        if sid:
            page(f"/sample/{sid}")
        get("/metrics")
        stop.wait(max(0.0, 1.0 - (time.monotonic() - t)))
    results.put((times_ms, bad))


def stats(values: list[float]) -> dict:
    a = np.asarray(values)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200, help="counted samples per head")
    ap.add_argument("--roi-time", type=float, default=0.01,
                    help="scripted inspector's seconds per RoI (10 RoIs; default 0.01)")
    ap.add_argument("--block", type=int, default=10, help="samples per block (default 10)")
    args = ap.parse_args()
    if args.samples < 10 or args.block < 1 or args.roi_time <= 0:
        ap.error("need --samples >= 10, --block >= 1, --roi-time > 0")

    insp = ScriptedInspector()  # serve's scripted inspector plans by sample id alike
    ids = (f"WL{k:06d}" for k in range(10**6))
    base = Path(tempfile.mkdtemp(prefix="glass-web-latency-"))
    load_start = os.getloadavg()
    heads = {}
    t_all = time.monotonic()
    poller = None
    times_ms: list[float] = []
    bad: list[str] = ["the page poller reported nothing"]
    try:
        for name, extra in (("anchor", ()), ("web", ("--web", "127.0.0.1:0"))):
            folder = base / name
            folder.mkdir()
            port = LinePort(folder)
            serve = Serve(Path(__file__).resolve().parents[1] / "edge" / "default_head.toml",
                          port.path, folder / "journal.jsonl", folder / "serve.log",
                          extra=("--inspector", "scripted", "--roi-time", str(args.roi_time),
                                 *extra))
            serve.start()
            client = port.client()
            client.hello(60)
            heads[name] = {"port": port, "serve": serve, "client": client, "lat": []}
        found = wait_until(lambda: re.search(r"web page: (http://\S+)",
                                             heads["web"]["serve"].text()), 30, 0.05)
        if found is None:
            raise RuntimeError("serve --web printed no address:\n"
                               + heads["web"]["serve"].text())
        ctx = multiprocessing.get_context("spawn")
        on, stop, latest, results = ctx.Event(), ctx.Event(), ctx.Array("c", 65), ctx.Queue()
        poller = ctx.Process(target=poll_page, args=(found.group(1), on, stop, latest, results),
                             daemon=True)
        poller.start()
        say(f"page at {found.group(1)}; {args.samples} samples per head, blocks of "
            f"{args.block}")
        target = args.samples + args.block  # the first block of each is a warm-up
        while any(len(h["lat"]) < target for h in heads.values()):
            for name, h in heads.items():
                if name == "web":
                    on.set()
                    time.sleep(1.0)  # the page has been open a while before the block
                for _ in range(min(args.block, target - len(h["lat"]))):
                    sid = next(ids)
                    while insp._plan(sid)[0] is Status.ERROR:
                        sid = next(ids)
                    t = time.monotonic()
                    v = h["client"].inspect(sid, 60)
                    h["lat"].append((time.monotonic() - t) * 1000.0)
                    if v.sample_id != sid:
                        raise RuntimeError(f"asked for {sid}, got the verdict of {v.sample_id}")
                    if name == "web":
                        latest.value = sid.encode("ascii")
                on.clear()
            say(f"  {len(heads['anchor']['lat'])} / {target}")
    finally:
        if poller is not None:
            stop.set()
            with contextlib.suppress(queue.Empty):
                times_ms, bad = results.get(timeout=20)
            poller.join(10)
        for h in heads.values():
            h["serve"].stop()
            h["client"].close()
            h["port"].close()
    inspection_ms = ROIS * args.roi_time * 1000.0
    out: dict = {"samples_per_head": args.samples, "block": args.block,
                 "inspection_ms": inspection_ms}
    for name, h in heads.items():
        lat = h["lat"][args.block:args.block + args.samples]
        out[name] = {"latency": stats(lat),
                     "overhead": stats([x - inspection_ms for x in lat])}
    a, w = out["anchor"], out["web"]
    out["p99_ratio"] = round(w["latency"]["p99_ms"] / a["latency"]["p99_ms"], 3)
    out["p99_overhead_ratio"] = round(w["overhead"]["p99_ms"] / a["overhead"]["p99_ms"], 3)
    out["target_p99_ratio"] = 1.05
    out["page_requests"] = {"count": len(times_ms), "failed": len(bad), "failures": bad[:5],
                            **(stats(times_ms) if times_ms else {})}
    out["loadavg_start"] = [round(x, 2) for x in load_start]
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["cpus"] = os.cpu_count()
    out["seconds"] = round(time.monotonic() - t_all, 1)
    shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
