"""Soak the verdict service: a thousand inspections through ``glass-inspect serve``; does it leak?

``glass-inspect serve`` runs in its own process on a reduced simulated head
(``serve_rig.reduced_head``: 256 x 224 px frames, 1 RoI by default, 4 ms frames, so an
inspection takes a small fraction of a second while every part runs: GRBL driver and simulator,
ring light on the mock pins, SimCamera, the shipped network on ONNX Runtime, the journal). The
line controller simulator (:func:`firmware_bridge.linesim.run`, what ``glass-inspect line-sim``
runs) asks for ``--samples`` verdicts (default 1000) in chunks of ``--chunk`` (default 50), each
sample id once, over a pseudo-terminal. Between chunks, once the head is idle, the serve
process is measured from /proc: resident memory (``VmRSS``), open file descriptors
(``/proc/PID/fd``), threads (``Threads``), and the journal's size. When ``serve`` has journal
rotation (``--journal-max-mb`` in its ``--help``), a small maximum (``--journal-max-mb``,
default 0.25) makes the journal rotate during the soak.

Printed: one JSON object with ``inspections`` (verdicts asked for), ``delivered_once`` (every
sample got exactly one verdict id, none missing or doubled, no line with a bad CRC),
``statuses``, ``rss_growth_pct`` (resident memory at the end against the end of the warm-up,
the first ``--warmup`` inspections, default 100: target < 5), ``error_reasons`` (the
commonest, if any verdict was ERROR: none is expected), ``rss_kb`` (warm-up end, end,
highest), ``fd_growth`` and ``thread_growth`` (end minus warm-up end: target 0),
``journal_bytes`` (the journal file at the end) and ``journal_bytes_all`` (with its rotated
files), ``journal_rotations`` (when rotation exists), the timing (``seconds``,
``inspections_per_s``, per-inspection ``median_s`` and ``p99_s`` at the line) and ``samples``
(the measurements, one per chunk). Progress goes to stderr.

    python benchmarks/soak.py [--samples N] [--rois 1|2] [--journal-max-mb MB] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from serve_rig import ROOT, LinePort, Serve, proc_stats, reduced_head, say

from firmware_bridge import linesim


def _has_rotation() -> bool:
    out = subprocess.run([sys.executable, "-m", "edge.cli", "serve", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    return "--journal-max-mb" in out.stdout


def _rotations(journal: Path, log_text: str) -> int:
    """How many times the journal was rotated: its ``rotated`` record says, else the log."""
    try:
        with open(journal, "rb") as f:
            first = json.loads(f.readline() or b"{}")
        if first.get("rec") == "rotated":
            return int(first["rotation"])
    except (OSError, ValueError, KeyError):
        pass
    return len(re.findall(r"rotated", log_text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000, help="inspections (default 1000)")
    ap.add_argument("--chunk", type=int, default=50, help="inspections between measurements")
    ap.add_argument("--warmup", type=int, default=100,
                    help="inspections before the baseline measurement (default 100)")
    ap.add_argument("--rois", type=int, choices=(1, 2), default=1)
    ap.add_argument("--journal-max-mb", type=float, default=0.25,
                    help="rotate the journal past this size, where serve can (default 0.25)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, journal)")
    args = ap.parse_args()
    if args.samples < args.warmup + args.chunk or args.chunk < 1:
        ap.error("need --samples >= --warmup + --chunk and --chunk >= 1")

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="glass-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    # max_on_ms as the default head has it: the LED watchdog must not trip on a busy host
    head = reduced_head(base, rois=args.rois, exposure_ms=2.0, frame_time_ms=4.0,
                        settle_ms=1.0, max_on_ms=250.0)
    journal = base / "journal.jsonl"
    rotation = _has_rotation()
    extra = (("--journal-max-mb", str(args.journal_max_mb), "--journal-keep", "2")
             if rotation else ())
    port = LinePort(base)
    serve = Serve(head, port.path, journal, base / "serve.log", extra=extra)
    client = port.client(stall_s=5.0)
    answers: list[dict] = []
    missing: list[str] = []
    doubled: list[str] = []
    crc = 0
    measures: list[dict] = []
    ids = linesim.sample_ids(args.samples, 1, "SOAK")
    t_start = time.monotonic()
    try:
        serve.start()
        client.hello(60.0)
        say(f"serve up in {time.monotonic() - t_start:.1f} s (pid {serve.pid}); journal "
            f"rotation {'at ' + str(args.journal_max_mb) + ' MiB' if rotation else 'absent'}")
        t0 = time.monotonic()
        done = 0
        for k in range(0, len(ids), args.chunk):
            chunk = ids[k:k + args.chunk]
            rep = linesim.run(client, chunk, 60.0, say=lambda text: None)
            answers += rep.answers
            missing += rep.missing
            doubled += rep.doubled
            crc = rep.crc_errors  # the client's running total
            done += len(chunk)
            client.poll(0.1)  # acknowledgements out, the head idle
            m = proc_stats(serve.pid) | {"inspections": done,
                                         "t_s": round(time.monotonic() - t0, 1),
                                         "journal_bytes": journal.stat().st_size}
            measures.append(m)
            say(f"  {done:5d} inspections, {m['t_s']:6.1f} s: rss {m['rss_kb']} kB, "
                f"{m['fds']} fds, {m['threads']} threads, journal {m['journal_bytes']} bytes")
        seconds = time.monotonic() - t0
    finally:
        client.close()
        rc = serve.stop()
        port.close()
    base_m = next(m for m in measures if m["inspections"] >= args.warmup)
    end_m = measures[-1]
    seen: dict[str, set[int]] = {}
    for a in answers:
        seen.setdefault(a["sample_id"], set()).add(a["verdict_id"])
    once = (not missing and not doubled and crc == 0 and len(answers) == len(ids)
            and all(len(v) == 1 for v in seen.values()) and set(seen) == set(ids))
    times = sorted(a["seconds"] for a in answers)
    files = [journal, *sorted(base.glob(journal.name + ".[0-9]*"))]
    result = {
        "inspections": len(ids),
        "delivered_once": once,
        "verdicts": len(answers), "missing": len(missing), "doubled": len(doubled),
        "crc_errors": crc,
        "statuses": dict(Counter(a["status"] for a in answers)),
        "error_reasons": dict(Counter(a["reason"] for a in answers
                                      if a["status"] == "ERROR").most_common(3)),
        "rss_growth_pct": round(100.0 * (end_m["rss_kb"] - base_m["rss_kb"]) / base_m["rss_kb"],
                                2),
        "rss_kb": {"after_warmup": base_m["rss_kb"], "end": end_m["rss_kb"],
                   "max": max(m["rss_kb"] for m in measures)},
        "fd_growth": end_m["fds"] - base_m["fds"],
        "thread_growth": end_m["threads"] - base_m["threads"],
        "fds": end_m["fds"], "threads": end_m["threads"],
        "journal_bytes": end_m["journal_bytes"],
        "journal_bytes_all": sum(f.stat().st_size for f in files if f.exists()),
        "journal_rotation": rotation,
        "seconds": round(seconds, 1),
        "inspections_per_s": round(len(answers) / seconds, 2),
        "median_s": round(statistics.median(times), 3) if times else None,
        "p99_s": round(times[min(len(times) - 1, int(0.99 * len(times)))], 3) if times else None,
        "warmup": args.warmup, "rois": args.rois,
        "serve_exit_status": rc,
        "samples": measures,
    }
    if rotation:
        result["journal_rotations"] = _rotations(journal, serve.text())
        result["journal_max_mb"] = args.journal_max_mb
        result["journal_files"] = [f.name for f in files if f.exists()]
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
