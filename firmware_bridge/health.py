"""The health of a serving head: the heartbeat ``serve`` keeps, and the check that reads it.

**Health** (``glass-inspect health``, Docker's ``HEALTHCHECK``). ``serve --health FILE`` keeps a
small heartbeat file up to date from its loop (every few seconds: its pid, the time, whether the
line controller's port is open, the verdict journal); the health check reads it and says, in one
line, whether the head is serving: the process is alive, its loop has reported recently (a hung
loop stops reporting), the port is open, and the journal's disk has room. ``start`` writes a
"provisioning" heartbeat before it builds, so a head that is still building its engine says so.

**The LED watchdog.** A serving head also writes what its inspector reports (``led_watchdog``:
trips since the start and within the window, the limit, and whether the head is ``ok``, has a
``self-test due`` or is ``down``; :meth:`edge.head.Head.watchdog_health`). A head that stays
down after too many trips, or after a failed self-test of its ring, is unhealthy with that
reason, though its loop and port are fine: it answers every sample with ERROR until it is
restarted. Nothing restarts it by itself (Docker does not restart an unhealthy container):
someone should look at the ring and the CPU load first. There is no HTTP ``/health``: the
container has no network; the heartbeat file and ``glass-inspect health`` are where it shows.

This module imports nothing heavy: the health check runs every 30 s on the device
(``python -m firmware_bridge health``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("glass-inspect.health")


class Heartbeat:
    """The heartbeat file of a serving head: rewritten (atomically) at most every ``every_s``.
    ``report()``, when given, adds fields of the moment to every write (the inspector's
    ``led_watchdog``)."""

    def __init__(self, path: str | Path, every_s: float = 5.0,
                 report: Callable[[], dict] | None = None, **fixed) -> None:
        self.path = Path(path)
        self.every_s = every_s
        self.report = report
        self.fixed = fixed  # written every time: port, journal, engine...
        self._last = float("-inf")

    def write(self, state: str, **fields) -> None:
        now: dict = {}
        if self.report is not None:
            try:
                now = dict(self.report())
            except Exception as exc:  # health reporting must never stop the head
                log.warning("cannot read the inspector's health: %s", exc)
        record = {"state": state, "pid": os.getpid(), "time": time.time(),
                  "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  **self.fixed, **now, **fields}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".partial")
            tmp.write_text(json.dumps(record) + "\n")
            tmp.replace(self.path)
        except OSError as exc:  # health reporting must never stop the head
            log.warning("cannot write the heartbeat %s: %s", self.path, exc)
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def check_health(path: str | Path, max_age_s: float = 30.0, min_free_mb: float = 64.0,
                 now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line saying why) from the heartbeat file that ``serve --health`` writes."""
    path = Path(path)
    now = time.time() if now is None else now
    try:
        beat = json.loads(path.read_text())
        state, pid, when = str(beat["state"]), int(beat["pid"]), float(beat["time"])
    except FileNotFoundError:
        return False, (f"no heartbeat at {path}: serve has not started (or runs without "
                       "--health)")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"unreadable heartbeat {path}: {exc}"
    age = now - when
    if not _alive(pid):
        return False, f"the head process (pid {pid}) is not running ({state} {_ago(age)} ago)"
    if state == "provisioning":
        return False, (f"starting: {beat.get('doing', 'preparing the engine')} since "
                       f"{_ago(age)} (pid {pid})")
    if state == "failed":
        return False, f"the start failed {_ago(age)} ago: {beat.get('doing', '?')}"
    if state != "serving":
        return False, f"the head is {state} (pid {pid}, {_ago(age)} ago)"
    if age > max_age_s:
        return False, (f"serve (pid {pid}) has not reported for {_ago(age)}: its loop is stuck "
                       f"(limit {max_age_s:g} s)")
    leds = beat.get("led_watchdog")
    leds = leds if isinstance(leds, dict) else {}
    if leds.get("state") == "down":
        return False, (f"the head stays down (pid {pid}), every verdict ERROR until it is "
                       f"restarted: {leds.get('reason', 'LED watchdog')}")
    port = beat.get("port", "?")
    if not beat.get("link_open", False):
        return False, f"the line controller's port {port} is not open (unplugged, or in use?)"
    free = ""
    journal = beat.get("journal")
    if journal:
        folder = Path(journal).resolve().parent
        try:
            free_mb = shutil.disk_usage(folder).free / 2**20
        except OSError as exc:
            return False, f"cannot see the verdict journal's folder {folder}: {exc}"
        if free_mb < min_free_mb:
            return False, (f"only {free_mb:.0f} MiB free for the verdict journal in {folder} "
                           f"(limit {min_free_mb:g} MiB)")
        free = f", {free_mb / 1024:.1f} GiB free for the journal"
    pending = beat.get("unacknowledged", 0)
    trips = ""
    if leds.get("trips"):
        window = leds.get("window_s")
        window = f"{window:g}" if isinstance(window, (int, float)) else "?"
        trips = (f"; LED watchdog: {leds['trips']} trip(s) since the start, "
                 f"{leds.get('recent', '?')} in the last {window} s "
                 f"(down at {leds.get('max_trips', '?')})")
        if leds.get("state") == "self-test due":
            trips += ", the ring's self-test comes before the next sample"
    return True, (f"healthy: serving on {port} (pid {pid}, heartbeat {_ago(max(age, 0))} ago, "
                  f"{pending} verdict(s) awaiting acknowledgement{free}){trips}")
