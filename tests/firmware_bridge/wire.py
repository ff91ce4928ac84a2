"""Test wiring: pseudo-terminal pairs, a relay that damages the line, and server processes.

``Wire`` joins two pty pairs with a thread: the line side opens ``line_path``, the head side
opens ``head_path`` (a symlink, like /dev/serial/by-id/..., so the head's port can be unplugged
and plugged back in as a new pty). Per line, in both directions, the relay can drop it,
duplicate it, flip one bit, put random bytes before it, or drop lines a test picks.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import select
import subprocess
import sys
import threading
import time
import tty
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Noise:
    drop: float = 0.0
    dup: float = 0.0
    flip: float = 0.0
    garbage: float = 0.0


class _Pair:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class Wire:
    def __init__(self, folder: Path, noise: Noise | None = None, seed: int = 0) -> None:
        self.noise = noise or Noise()
        self.rng = random.Random(seed)
        self.line = _Pair()
        self.head: _Pair | None = _Pair()
        self.head_path = folder / "head-port"
        os.symlink(self.head.path, self.head_path)
        self.line_path = self.line.path
        # Tests set these to drop chosen lines: predicate on the complete line (bytes).
        self.drop_to_head: Callable[[bytes], bool] | None = None
        self.drop_to_line: Callable[[bytes], bool] | None = None
        self.counts: Counter = Counter()
        self._buf = {"to_head": b"", "to_line": b""}
        self._requests: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # -- control (from the test) -----------------------------------------------------------

    def _do(self, fn: Callable[[], None]) -> None:
        done = threading.Event()
        self._requests.put((fn, done))
        assert done.wait(5), "relay thread did not answer"

    def unplug_head(self) -> None:
        def fn() -> None:
            self.head.close()
            self.head = None
            self._buf["to_head"] = b""
        self._do(fn)

    def plug_head(self) -> None:
        def fn() -> None:
            self.head = _Pair()
            tmp = self.head_path.with_suffix(".new")
            os.symlink(self.head.path, tmp)
            os.replace(tmp, self.head_path)
        self._do(fn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.line.close()
        if self.head is not None:
            self.head.close()

    # -- the relay -------------------------------------------------------------------------

    def _damage(self, line: bytes) -> list[bytes]:
        n, rng = self.noise, self.rng
        if rng.random() < n.drop:
            self.counts["dropped"] += 1
            return []
        out = []
        if rng.random() < n.garbage:
            self.counts["garbage"] += 1
            out.append(rng.randbytes(rng.randrange(1, 40)))
        if rng.random() < n.flip:
            self.counts["flipped"] += 1
            b = bytearray(line)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            line = bytes(b)
        out.append(line)
        if rng.random() < n.dup:
            self.counts["duplicated"] += 1
            out.append(line)
        return out

    def _write(self, fd: int, data: bytes) -> None:
        try:
            os.write(fd, data)
        except OSError:  # full (nobody reads) or gone: the bytes are lost, as on a real wire
            self.counts["lost"] += 1

    def _forward(self, direction: str, data: bytes) -> None:
        buf = self._buf[direction] + data
        drop = self.drop_to_head if direction == "to_head" else self.drop_to_line
        target = (self.head.master if self.head else None) if direction == "to_head" \
            else self.line.master
        *lines, rest = buf.split(b"\n")
        for line in lines:
            line += b"\n"
            if drop is not None and drop(line):
                self.counts[f"dropped_{direction}"] += 1
                continue
            for piece in self._damage(line):
                if target is not None:
                    self._write(target, piece)
        if len(rest) > 2048:  # not line-shaped: pass it on as it is
            if target is not None:
                self._write(target, rest)
            rest = b""
        self._buf[direction] = rest

    def _run(self) -> None:
        while not self._stop.is_set():
            while not self._requests.empty():
                fn, done = self._requests.get()
                fn()
                done.set()
            fds = [self.line.master] + ([self.head.master] if self.head else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.02)
            except OSError:
                continue
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if fd == self.line.master:
                    self._forward("to_head", data)
                else:
                    self._forward("to_line", data)


class ServerProcess:
    """``python -m firmware_bridge serve`` in its own process, logging to a file."""

    def __init__(self, port: str | Path, journal: Path, log: Path, roi_time: float = 0.01,
                 *extra: str) -> None:
        self.args = [sys.executable, "-m", "firmware_bridge", "-v", "serve", "--port",
                     str(port), "--journal", str(journal), "--roi-time", str(roi_time),
                     "--repeat", "0.3", "--reopen", "0.1", "--inspector", "scripted", *extra]
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def journal_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(raw))
    return out


def wait_for(cond: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = cond()
        if r:
            return r
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or cond}")
