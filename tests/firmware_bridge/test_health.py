"""The heartbeat and the health check as the head's LED watchdog shows in them."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from edge import config
from firmware_bridge.health import Heartbeat, check_health
from tests.conftest import small_head_data


def beat(path: Path, **fields) -> Path:
    rec = {"state": "serving", "pid": os.getpid(), "time": time.time(), "port": "/dev/ttyTHS1",
           "link_open": True, "unacknowledged": 0, **fields}
    path.write_text(json.dumps(rec))
    return path


def watchdog(state="ok", trips=0, recent=0, **more) -> dict:
    return {"led_watchdog": {"state": state, "trips": trips, "recent": recent,
                             "window_s": 3600.0, "max_trips": 3, "self_tests_passed": 0, **more}}


def test_the_heartbeat_carries_the_inspectors_report_of_the_moment(tmp_path):
    now = watchdog()
    hb = Heartbeat(tmp_path / "h.json", every_s=0.0, report=lambda: now, port="p")
    hb.write("serving", link_open=True)
    assert json.loads((tmp_path / "h.json").read_text())["led_watchdog"]["state"] == "ok"
    now = watchdog("self-test due", trips=1, recent=1)
    hb.write("serving", link_open=True)
    rec = json.loads((tmp_path / "h.json").read_text())
    assert rec["led_watchdog"]["trips"] == 1 and rec["port"] == "p"

    def broken():
        raise RuntimeError("the head is closed")

    hb.report = broken  # a report that fails never stops the heartbeat
    hb.write("stopped")
    rec = json.loads((tmp_path / "h.json").read_text())
    assert rec["state"] == "stopped" and "led_watchdog" not in rec


def test_a_head_kept_down_by_its_led_watchdog_is_unhealthy_and_says_why(tmp_path):
    why = ("LED watchdog tripped 3 times in 3600 s: down until restarted "
           "(watchdog_max_trips = 3); the last trip: watchdog: LED group 2 was lit ...")
    ok, line = check_health(beat(tmp_path / "h.json", **watchdog("down", 3, 3, reason=why)))
    assert not ok and "\n" not in line
    assert line.startswith("the head stays down") and why in line


@pytest.mark.parametrize(("state", "words"), [
    ("ok", "LED watchdog: 2 trip(s) since the start, 1 in the last 3600 s (down at 3)"),
    ("self-test due", "the ring's self-test comes before the next sample"),
])
def test_a_serving_head_says_how_often_its_watchdog_tripped(tmp_path, state, words):
    ok, line = check_health(beat(tmp_path / "h.json", **watchdog(state, 2, 1)))
    assert ok and line.startswith("healthy: serving") and words in line
    ok, line = check_health(beat(tmp_path / "h.json", **watchdog()))
    assert ok and "LED watchdog" not in line  # nothing to say before a trip


def test_serve_reports_the_heads_led_watchdog_in_its_heartbeat(tmp_path):
    """serve on a simulated head whose watchdog tripped once with watchdog_max_trips = 1: the
    heartbeat shows it down, the health check is unhealthy, and a SIGTERM still stops it."""
    pytest.importorskip("onnxruntime")
    from edge.assembly import build_head
    from firmware_bridge.inspector import HeadInspector
    from firmware_bridge.service import serve

    d = small_head_data()
    d["illumination"].update(max_on_ms=30.0, watchdog_max_trips=1)
    asm = build_head(config.parse(d, "one-trip.toml"))
    asm.ring.on(0)
    time.sleep(0.15)  # the watchdog trips
    assert asm.ring.tripped
    hb = tmp_path / "health.json"
    seen = {}

    def stop_when_beating():
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not hb.exists():
            time.sleep(0.05)
        seen["ok"], seen["line"] = check_health(hb)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    watcher = threading.Thread(target=stop_when_beating)
    watcher.start()
    try:
        status = serve("loop://", 115200, str(tmp_path / "j.jsonl"),
                       lambda: (HeadInspector(asm), asm.close), health=str(hb))
    finally:
        signal.signal(signal.SIGTERM, before)
        watcher.join()
    assert status == 0
    assert not seen["ok"] and "LED watchdog tripped 1 time in 3600 s: down until" in seen["line"]
    rec = json.loads(hb.read_text())
    assert rec["state"] == "stopped" and rec["led_watchdog"]["state"] == "down"
