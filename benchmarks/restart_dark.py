"""How long a lit LED group stays lit when the head is killed with SIGKILL and restarted.

Nothing runs after SIGKILL (nor after the OOM killer or a kernel panic): the LED watchdog is a
thread of the killed process, so a group lit at that moment stays lit until the restarted head
claims its pins dark (on a device; whether a released GPIO line keeps its level is up to the
kernel driver, see docs/deploy.md). This measures that time the way the product restarts:

1. **the killed head**: a process holding LED group 3 lit (:class:`edge.hardware.leds.RingLight`
   on gpiozero's ``MockFactory``, the head file's pins) gets SIGKILL while the group is lit
   (within its ``max_on_ms``, before its own watchdog could darken it);
2. **the restart policy**: this script plays the supervisor: it reaps the dead process and,
   after ``--restart-delay`` (default 0.1 s: Docker's first delay for ``restart:
   unless-stopped``, which is what restarts the head in deploy/compose.yaml; systemd's default
   ``RestartSec`` is 100 ms too), starts the container's command again;
3. **the restarted head** runs that command, ``glass-inspect start --head H --cache C --journal
   J --health F`` (the image's CMD, less ``--require-tensorrt``: there is no TensorRT here, so
   ONNX Runtime serves the shipped model), on the simulated head ``--head`` (default: the
   embedded default, full-size frames). A probe records ``time.monotonic()`` (one clock for all
   processes) when the ring light's constructor returned, i.e. when every group and the trigger
   were driven low, and ends the process there.

``kill_to_dark_s`` = SIGKILL to that moment, split into ``reaped_s`` (the supervisor sees the
death), ``restart_delay_s``, ``interpreter_s`` (exec to the first line of Python) and
``start_to_dark_s`` (the command's imports, head file, engine preparation and loading, stage,
and then the ring light, which :func:`edge.assembly.build_head` claims first of the parts),
itself split at the call of ``build_head`` (``to_build_head_s``: imports, head file, engine
preparation; ``build_head_to_dark_s``: the pin factory and the ring light).
The anchor, measured in the same run: ``bare_to_dark_s``, a process that does only what
darkening needs (import the ring light, read the head file, claim the pins low), restarted the
same way; ``ratio`` = kill_to_dark / bare kill_to_dark says what darkening before the imports
and the engine preparation would still gain (2.6 x: 0.83 s against 0.32 s). Medians of
``--runs`` (default 3) with min and max.

Not measured here (no systemd as PID 1, no Docker daemon, no Jetson): Docker's container start
(runc, the NVIDIA runtime hook), the TensorRT engine's deserialization instead of ONNX Runtime,
an Orin's CPU, and what the tegra GPIO driver does with a line its holder released.

    python benchmarks/restart_dark.py [--runs N] [--restart-delay S] [--head H.toml]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_EXEC = time.monotonic()  # first line of Python in this process

ROOT = Path(__file__).resolve().parents[1]
GROUP = 3


def _note(report: str, what: str) -> None:
    with open(report, "a") as f:
        f.write(f"{what} {time.monotonic():.6f}\n")


def _hook_ring(report: str, then) -> None:
    """Report when RingLight's constructor has driven every pin low, then ``then(ring)``."""
    from edge.hardware.leds import RingLight

    init = RingLight.__init__

    def probed(self, *a, **k):
        init(self, *a, **k)
        _note(report, "dark")
        then(self)

    RingLight.__init__ = probed


def child(mode: str, report: str, argv: list[str]) -> None:
    with open(report, "a") as f:
        f.write(f"exec {T_EXEC:.6f}\n")
    if mode == "lit":  # the head that gets killed: a group lit, waiting for its SIGKILL
        from gpiozero.pins.mock import MockFactory

        from edge import config

        cfg = config.load(argv[0]) if argv else config.load()
        ring = __import__("edge.hardware.leds", fromlist=["RingLight"]).RingLight(
            cfg.illumination, pin_factory=MockFactory())
        ring.on(GROUP)
        _note(report, "lit")
        time.sleep(60)
        return
    if mode == "bare":  # only what darkening needs
        _hook_ring(report, lambda ring: os._exit(0))
        from gpiozero.pins.mock import MockFactory

        from edge import config
        from edge.hardware.leds import RingLight

        cfg = config.load(argv[0]) if argv else config.load()
        RingLight(cfg.illumination, pin_factory=MockFactory())
        os._exit(1)
    _hook_ring(report, lambda ring: os._exit(0))  # the restarted head: the container's command
    import edge.assembly

    build = edge.assembly.build_head

    def timed_build(*a, **k):
        _note(report, "build")
        return build(*a, **k)

    edge.assembly.build_head = timed_build  # serve imports it when it builds the head
    from edge.cli import main

    sys.exit(main(argv))


def _read(report: Path) -> dict[str, float]:
    out = {}
    if report.exists():
        for line in report.read_text().splitlines():
            what, t = line.split()
            out.setdefault(what, float(t))
    return out


def one(work: Path, k: int, restart: list[str], delay_s: float, head: list[str],
        max_on_s: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    me = [sys.executable, str(Path(__file__).resolve())]
    lit_report = work / f"lit-{k}.txt"
    victim = subprocess.Popen([*me, "--child", "lit", str(lit_report), "--", *head], cwd=ROOT,
                              env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while "lit" not in _read(lit_report):
        if victim.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the process to be killed never lit its LED group")
        time.sleep(0.001)
    t_kill = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    t_reaped = time.monotonic()
    time.sleep(delay_s)  # the restart policy's delay
    report = work / f"restart-{k}.txt"
    t_spawn = time.monotonic()
    proc = subprocess.run([*me, "--child", restart[0], str(report), "--", *restart[1:]],
                          cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    seen = _read(report)
    if "dark" not in seen:
        raise RuntimeError(f"the restarted process never claimed the pins (exit "
                           f"{proc.returncode}): {proc.stderr[-2000:]}")
    lit_s = t_kill - _read(lit_report)["lit"]
    build = seen.get("build", seen["exec"])  # the bare process builds no head
    return {"kill_to_dark_s": seen["dark"] - t_kill, "reaped_s": t_reaped - t_kill,
            "restart_delay_s": t_spawn - t_reaped, "interpreter_s": seen["exec"] - t_spawn,
            "start_to_dark_s": seen["dark"] - seen["exec"],
            "to_build_head_s": build - seen["exec"], "build_head_to_dark_s": seen["dark"] - build,
            "lit_at_kill": lit_s < max_on_s}


def summary(runs: list[dict], key: str) -> dict:
    v = [r[key] for r in runs]
    return {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
            "max": round(max(v), 3)}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        rest = sys.argv[4:]
        child(sys.argv[2], sys.argv[3], rest[1:] if rest[:1] == ["--"] else rest)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--restart-delay", type=float, default=0.1, metavar="S",
                    help="the supervisor's delay before the restart (default 0.1 s: Docker's "
                         "first restart delay, systemd's default RestartSec)")
    ap.add_argument("--head", default=None, help="the head file (default: the embedded one)")
    args = ap.parse_args()
    from edge import config

    cfg = config.load(args.head) if args.head else config.load()
    head = [str(Path(args.head).resolve())] if args.head else []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="restart-dark-") as tmp:
        work = Path(tmp)
        start = ["start", *(["--head", head[0]] if head else []), "--cache",
                 str(work / "engines"), "--journal", str(work / "verdicts.jsonl"), "--health",
                 str(work / "health.json")]
        full, bare = [], []
        for k in range(args.runs):  # interleaved: both see the same load on the machine
            full.append(one(work, k, ["start", *start], args.restart_delay, head,
                            cfg.illumination.max_on_ms / 1000.0))
            bare.append(one(work, 100 + k, ["bare", *head], args.restart_delay, head,
                            cfg.illumination.max_on_ms / 1000.0))
            print(f"run {k + 1}: kill to dark {full[-1]['kill_to_dark_s']:.2f} s "
                  f"(bare {bare[-1]['kill_to_dark_s']:.2f} s)", file=sys.stderr, flush=True)
    med = summary(full, "kill_to_dark_s")["median"]
    bare_med = summary(bare, "kill_to_dark_s")["median"]
    print(json.dumps({
        "head": args.head or "embedded default (simulated, 3504 x 3120 px)",
        "command": "glass-inspect start --head H --cache C --journal J --health F",
        "runs": args.runs, "restart_delay_s": args.restart_delay,
        "all_lit_at_kill": all(r["lit_at_kill"] for r in full + bare),
        "kill_to_dark_s": summary(full, "kill_to_dark_s"),
        "parts_s": {key: summary(full, key)["median"] for key in
                    ("reaped_s", "restart_delay_s", "interpreter_s", "start_to_dark_s",
                     "to_build_head_s", "build_head_to_dark_s")},
        "bare_to_dark_s": summary(bare, "kill_to_dark_s"),
        "ratio": round(med / bare_med, 2),
        "cpus": os.cpu_count(),
        "not_measured": ["docker container start (runc, NVIDIA runtime hook)",
                         "TensorRT engine deserialization", "an Orin's CPU",
                         "the tegra GPIO driver's level on a released line"],
        "seconds": round(time.monotonic() - t0, 1)}))


if __name__ == "__main__":
    main()
