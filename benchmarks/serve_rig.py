"""What ``benchmarks/faults.py`` and ``benchmarks/soak.py`` share (a helper, not a benchmark).

* :func:`reduced_head` writes a small simulated head file: the embedded default head with small
  frames, short frame and settle times and 1 or 2 RoIs, so that one inspection takes a fraction
  of a second on 2 cores while every part (GRBL driver and simulator, ring light on the mock
  pins, SimCamera, the shipped network on ONNX Runtime) still runs;
* :class:`LinePort` is the line controller's serial cable: a pseudo-terminal whose head end
  ``glass-inspect serve`` opens through a symlink (as /dev/serial/by-id/... on a device), so the
  cable can be pulled (the head reads EIO, the symlink disappears) and plugged back in as a new
  pty; the line end is held here, for :class:`firmware_bridge.client.LineClient`;
* :class:`Serve` runs ``glass-inspect serve`` (``python -m edge.cli serve``) as a separate
  process, so SIGTERM and SIGKILL are real; its log goes to a file;
* :class:`Trace` reads the GPIO trace the simulated wiring writes (``time pin level`` per edge,
  ``time.monotonic()`` of the serve process, the clock this process reads too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

import serial

from edge import config
from firmware_bridge.client import LineClient
from firmware_bridge.port import FdPort, Link

ROOT = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def reduced_head(folder: Path, *, rois: int = 2, width: int = 256, height: int = 224,
                 exposure_ms: float = 4.0, frame_time_ms: float = 8.0,
                 max_on_ms: float = 60.0, grab_timeout_ms: float = 300.0,
                 settle_ms: float = 5.0, name: str = "reduced-head.toml") -> Path:
    """The default simulated head, shrunk (see the module docstring); returns its path."""
    mm_x, mm_y = width * 40.0 / 3504, height * 35.0 / 3120  # the default head's pixel footprint
    text = config.default_text()
    subs = {r"^name = .*": 'name = "reduced-simulated-head"',
            r"^width = \d+": f"width = {width}", r"^height = \d+": f"height = {height}",
            r"^exposure_ms = .*": f"exposure_ms = {exposure_ms}",
            r"^frame_time_ms = .*": f"frame_time_ms = {frame_time_ms}",
            r"^grab_timeout_ms = .*": f"grab_timeout_ms = {grab_timeout_ms}",
            r"^settle_ms = 2\.0.*": "settle_ms = 1.0",  # the LEDs' rise time
            r"^max_on_ms = .*": f"max_on_ms = {max_on_ms}",
            r"^settle_ms = 100\.0.*": f"settle_ms = {settle_ms}",  # the stage's
            r"^size_mm = .*": f"size_mm = [{mm_x:.4f}, {mm_y:.4f}]",
            r"^overlap_mm = .*": "overlap_mm = 0.2",
            # a short travel: re-homing after an alarm takes a fraction of a second
            r"^soft_limits_mm = .*": "soft_limits_mm = { x = [0.0, 20.0], y = [0.0, 20.0] }",
            r"^columns = \d+": f"columns = {rois}", r"^rows = \d+": "rows = 1",
            r"^tile_size = .*": "tile_size = 128", r"^tile_overlap = .*": "tile_overlap = 16",
            r"^threads = .*": "threads = 1"}
    for pattern, repl in subs.items():
        text, n = re.subn(pattern, repl, text, count=1, flags=re.M)
        if n != 1:
            raise RuntimeError(f"the default head file changed: no line matches {pattern}")
    path = folder / name
    path.write_text(text)
    config.load(path)  # valid, or say why now
    return path


def raw_pty() -> tuple[int, int]:
    """A new pseudo-terminal in raw mode, its master non-blocking: ``(master, slave)``."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave


def point_at(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target`` in one step (as udev's by-id links appear)."""
    tmp = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


class LinePort:
    """The line controller's cable to the head (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "line-port"
        self.master = self.slave = -1
        self.plug()

    def plug(self) -> None:
        # This end keeps the slave open too, so the master never reads EIO while no serve
        # process has the port open (between a kill and the restart).
        self.master, self.slave = raw_pty()
        point_at(self.path, os.ttyname(self.slave))

    def unplug(self) -> None:
        """Pull the cable: the head's end reads EIO, and the port is gone until plug()."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for fd in (self.master, self.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = -1

    def drain(self) -> int:
        """Drop what the head sent that the line has not read yet; how many bytes."""
        n = 0
        while self.master >= 0:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            n += len(data)
        return n

    def opener(self) -> FdPort:
        if self.master < 0:
            raise serial.SerialException("the line cable is unplugged")
        return FdPort(self.master, 0.05)

    def client(self, **kw) -> LineClient:
        kw = {"retry_s": 0.3, "stall_s": 1.0} | kw
        link = Link(str(self.path), name="head port", reopen_s=0.1, opener=self.opener)
        return LineClient(str(self.path), link=link, **kw)

    def close(self) -> None:
        self.unplug()


class Serve:
    """``glass-inspect serve`` in its own process (see the module docstring)."""

    def __init__(self, head: Path, port: Path, journal: Path, log: Path, *,
                 env: dict[str, str] | None = None, extra: tuple[str, ...] = (),
                 wrap: tuple[str, ...] = ()) -> None:
        self.args = [*wrap, sys.executable, "-m", "edge.cli", "serve", "--head", str(head),
                     "--port", str(port), "--journal", str(journal), "--repeat", "0.3",
                     "--reopen", "0.1", "--inspect-timeout", "60", *extra]
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> float:
        """Send ``signum``; the monotonic time it was sent."""
        t = time.monotonic()
        self.proc.send_signal(signum)
        return t

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Events(logging.Handler):
    """What the line client logs: the head's ERROR events (``the head reports ...``) and
    session resets (``the head says: ...``), with their times."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str]] = []
        lg = logging.getLogger("glass-inspect.line")
        lg.setLevel(logging.INFO)
        lg.propagate = False
        lg.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record.getMessage()))

    def close(self) -> None:
        logging.getLogger("glass-inspect.line").removeHandler(self)

    def since(self, t: float) -> list[str]:
        return [m for ts, m in self.records if ts >= t]


class Trace:
    """The GPIO trace of the simulated wiring: which LED groups were lit when."""

    def __init__(self, path: Path, led_pins: list[int]) -> None:
        self.path, self.leds = path, set(led_pins)

    def edges(self) -> list[tuple[float, int, int]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                with contextlib.suppress(ValueError):
                    out.append((float(parts[0]), int(parts[1]), int(parts[2])))
        out.sort(key=lambda e: e[0])
        return out

    def lit_at(self, t: float) -> set[int]:
        lit: set[int] = set()
        for ts, pin, level in self.edges():
            if ts > t:
                break
            if pin in self.leds:
                (lit.add if level else lit.discard)(pin)
        return lit

    def dark_after(self, t: float) -> float | None:
        """The first time at or after ``t`` with every LED group dark (``t`` itself when they
        were dark then); None if they never were."""
        edges = self.edges()
        lit: set[int] = set()
        k = 0
        while k < len(edges) and edges[k][0] <= t:
            if edges[k][1] in self.leds:
                (lit.add if edges[k][2] else lit.discard)(edges[k][1])
            k += 1
        if not lit:
            return t
        for ts, pin, level in edges[k:]:
            if pin in self.leds:
                (lit.add if level else lit.discard)(pin)
                if not lit:
                    return ts
        return None

    def rises_between(self, a: float, b: float) -> int:
        """How many times an LED group was lit after ``a`` and up to ``b``."""
        return sum(1 for ts, pin, level in self.edges() if a < ts <= b and pin in self.leds
                   and level)

    def last_fall_between(self, a: float, b: float) -> float | None:
        """The last time an LED group went dark after ``a`` and up to ``b``."""
        falls = [ts for ts, pin, level in self.edges() if a < ts <= b and pin in self.leds
                 and not level]
        return falls[-1] if falls else None

    def first_rise_after(self, t: float) -> tuple[float, int] | None:
        for ts, pin, level in self.edges():
            if ts > t and pin in self.leds and level:
                return ts, pin
        return None

    def on_off_around(self, t: float) -> tuple[float, float | None] | None:
        """The LED lighting that was on at ``t``: (rise, fall) times."""
        rise = None
        for ts, pin, level in self.edges():
            if pin not in self.leds:
                continue
            if ts <= t and level:
                rise = (ts, pin)
            elif ts <= t and not level and rise and rise[1] == pin:
                rise = None
            elif ts > t and rise is not None and pin == rise[1] and not level:
                return rise[0], ts
        return (rise[0], None) if rise else None


def wait_until(cond, timeout: float, step: float = 0.005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = cond()
        if r:
            return r
        time.sleep(step)
    return None


def proc_stats(pid: int, root: str = "/proc") -> dict:
    """Resident memory (kB), open file descriptors and threads of a process, from /proc."""
    status = Path(f"{root}/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"{root}/{pid}/fd"))}
