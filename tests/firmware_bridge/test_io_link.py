"""The discrete I/O link (docs/io_link.md) on gpiozero's MockFactory, with the simulated PLC
(firmware_bridge.io_plc_sim) on the other end of the wires. Times are compressed (a few ms)
and bounded generously from above: the host is shared."""

import copy
import threading
import time
from contextlib import contextmanager

import pytest
from gpiozero.exc import GPIOPinInUse
from gpiozero.pins.mock import MockFactory

from edge import config
from edge.verdict import Status
from firmware_bridge import io_link
from firmware_bridge.inspector import ScriptedInspector
from firmware_bridge.io_link import Debounced, IoLink, Phase, sample_prefix
from firmware_bridge.io_plc_sim import SimPlc, edges
from firmware_bridge.journal import Journal
from firmware_bridge.protocol import valid_sample_id
from tests.firmware_bridge.wire import wait_for

# free header pins of the default head (LED groups 29 31 32 33 15 7, camera trigger 37)
PINS = dict(trigger_pin=11, busy_pin=12, pass_pin=13, fail_pin=16, error_pin=18, strobe_pin=22)
SLACK_MS = 150.0  # how late an edge may come on a loaded host


def until(cond, timeout_s=10.0):
    """Poll ``cond`` as fast as a PLC scans (wire.wait_for's 20 ms would miss a strobe)."""
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {cond}"
        time.sleep(0.0002)


def io_settings(**kw):
    base = dict(kind="io", **PINS, ack_pin=35, strobe_ms=6.0, settle_ms=2.0, debounce_ms=2.0)
    base.update(kw)
    return config.VerdictLink(**{k: v for k, v in base.items() if v is not None})


class Planned:
    """The scripted inspector, told which status each next sample gets."""

    def __init__(self, *statuses, roi_time_s=0.001, error=None):
        self.plan = list(statuses)
        self.inner = ScriptedInspector(roi_time_s=roi_time_s, rois=3)
        self.error = error
        self.calls = 0

    def inspect(self, sample_id, abort, progress):
        self.calls += 1
        if self.error is not None:
            raise self.error
        self.inner.script[sample_id] = self.plan.pop(0) if self.plan else Status.PASS
        return self.inner.inspect(sample_id, abort, progress)


@contextmanager
def served(tmp_path, settings, inspector, **kw):
    factory = MockFactory()
    link = IoLink(settings, inspector, Journal(tmp_path / "j.jsonl"), pin_factory=factory,
                  name="line 4/head", **kw)
    plc = SimPlc(factory, settings, poll_s=0.0002)
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    assert link.ready.wait(5)
    try:
        yield link, plc
    finally:
        stop.set()
        t.join(10)
        assert not t.is_alive()
        factory.close()


def test_trigger_busy_result_strobe_ack_then_outputs_drop(tmp_path):
    s = io_settings()
    insp = Planned(Status.PASS, Status.FAIL, Status.ERROR)
    with served(tmp_path, s, insp) as (link, plc):
        got = [plc.cycle(timeout_s=10) for _ in range(3)]
        assert [c.status for c in got] == ["PASS", "FAIL", "ERROR"]
        for c in got:
            assert c.valid and c.acked
            assert 0 < c.busy_ms < c.result_ms <= c.strobe_ms < c.drop_ms
            assert s.debounce_ms <= c.busy_ms < s.debounce_ms + SLACK_MS
            assert s.settle_ms <= c.settle_ms < s.settle_ms + SLACK_MS
            assert s.strobe_ms <= c.strobe_width_ms < s.strobe_ms + SLACK_MS
            # busy fell with the strobe's rise, and every output is off now
            busy_fall = next(t for t, v in edges(plc.pins["busy"]) if not v and t > c.t_trigger)
            assert abs(busy_fall - (c.t_trigger + c.strobe_ms / 1e3)) < 0.002
        assert plc._idle()
        entries = sorted(link.journal.by_id.values(), key=lambda e: e.verdict_id)
        assert [e.status for e in entries] == ["PASS", "FAIL", "ERROR"]
        assert all(e.acked for e in entries)
        # the generated ids: the head's name, the verdict number, the time
        for e in entries:
            assert valid_sample_id(e.sample_id)
            assert e.sample_id.startswith(f"line_4_head-{e.verdict_id:06d}-")
        assert link.triggers == 3 and link.ignored_triggers == 0


def test_plc_that_never_acknowledges_gets_the_hold_time(tmp_path):
    s = io_settings(hold_ms=40.0)
    with served(tmp_path, s, Planned(Status.FAIL, Status.PASS)) as (link, plc):
        c = plc.cycle(timeout_s=10, ack=False)
        assert c.status == "FAIL" and not c.acked
        held = c.drop_ms - (c.strobe_ms + c.strobe_width_ms)
        assert s.hold_ms <= held < s.hold_ms + SLACK_MS
        # the verdict stays unacknowledged (ACK is wired), and the next trigger is served
        (e,) = link.journal.unacknowledged()
        assert e.status == "FAIL"
        assert plc.cycle(timeout_s=10).status == "PASS"
        assert len(link.journal.unacknowledged()) == 1


def test_without_ack_wired_the_hold_is_the_delivery(tmp_path):
    s = io_settings(ack_pin=None, hold_ms=20.0)
    with served(tmp_path, s, Planned(Status.PASS)) as (link, plc):
        c = plc.cycle(timeout_s=10)
        assert c.status == "PASS" and not c.acked
        assert c.drop_ms - (c.strobe_ms + c.strobe_width_ms) >= s.hold_ms
        wait_for(lambda: all(e.acked for e in link.journal.by_id.values()), 5)


def test_ack_pin_without_hold_time_holds_until_acknowledged(tmp_path):
    s = io_settings()
    with served(tmp_path, s, Planned(Status.FAIL)) as (link, plc):
        plc._drive("trigger", True)
        until(lambda: plc.on("strobe"))
        plc._drive("trigger", False)
        wait_for(lambda: not plc.on("strobe"), 10)
        threading.Event().wait(0.1)  # far past strobe and settle: still shown
        assert plc.on("fail") and link.phase is Phase.HOLD
        plc._drive("ack", True)
        wait_for(lambda: plc._idle(), 5)
        plc._drive("ack", False)
        assert all(e.acked for e in link.journal.by_id.values())


def test_bouncing_trigger_starts_one_inspection(tmp_path):
    s = io_settings(debounce_ms=4.0)
    insp = Planned(Status.PASS)
    with served(tmp_path, s, insp) as (link, plc):
        c = plc.cycle(timeout_s=10, bounces=6, bounce_s=0.0004)
        assert c.status == "PASS"
        assert insp.calls == 1 and link.triggers == 1 and len(link.journal.by_id) == 1
        # a lone glitch shorter than the debounce starts nothing
        plc._drive("trigger", True)
        threading.Event().wait(0.0005)
        plc._drive("trigger", False)
        threading.Event().wait(0.05)
        assert insp.calls == 1 and link.triggers == 1 and plc._idle()


def test_falling_edge_and_active_low_outputs(tmp_path):
    s = io_settings(trigger_edge="falling", active_high=False)
    with served(tmp_path, s, Planned(Status.FAIL)) as (link, plc):
        # idle: every output electrically high (off), the trigger resting high
        assert all(plc.pins[sig].state for sig in ("busy", "pass", "fail", "error", "strobe"))
        c = plc.cycle(timeout_s=10)
        assert c.status == "FAIL" and c.valid and c.acked
        assert s.strobe_ms <= c.strobe_width_ms < s.strobe_ms + SLACK_MS


def test_trigger_while_busy_is_ignored(tmp_path):
    s = io_settings()
    insp = Planned(Status.PASS, roi_time_s=0.05)
    with served(tmp_path, s, insp) as (link, plc):
        plc._drive("trigger", True)
        wait_for(lambda: plc.on("busy"), 5)
        plc._drive("trigger", False)
        threading.Event().wait(0.01)
        plc._drive("trigger", True)  # again while inspecting
        threading.Event().wait(0.01)
        plc._drive("trigger", False)
        until(lambda: plc.on("strobe"))
        plc._drive("ack", True)
        wait_for(lambda: plc._idle(), 5)
        plc._drive("ack", False)
        assert insp.calls == 1 and link.ignored_triggers == 1


def test_inspector_exception_shows_error_never_pass(tmp_path):
    s = io_settings()
    with served(tmp_path, s, Planned(error=RuntimeError("camera gone"))) as (link, plc):
        c = plc.cycle(timeout_s=10)
        assert c.status == "ERROR" and c.at_strobe == {"pass": False, "fail": False,
                                                       "error": True}


def test_outputs_safe_after_an_exception_in_the_link(tmp_path, monkeypatch):
    s = io_settings()
    insp = Planned(Status.PASS)
    with served(tmp_path, s, insp) as (link, plc):
        def broken(now):
            if link.phase is Phase.SETTLE:  # PASS is on the output, the strobe not yet
                raise RuntimeError("bug")
        monkeypatch.setattr(link, "_step", broken)
        plc._drive("trigger", True)
        wait_for(lambda: link.failed is not None, 10)
        plc._drive("trigger", False)
        assert {sig: plc.on(sig) for sig in ("busy", "pass", "fail", "error", "strobe")} == \
            {"busy": False, "pass": False, "fail": False, "error": True, "strobe": False}
        # no more triggers taken
        plc._drive("trigger", True)
        threading.Event().wait(0.05)
        assert insp.calls == 1 and plc.on("error") and not plc.on("strobe")
    # stopped: everything off, the pins released
    assert all(d.closed for d in link.outputs.values())


def test_shutdown_mid_inspection_leaves_all_outputs_off(tmp_path):
    s = io_settings()
    factory = MockFactory()
    link = IoLink(s, Planned(Status.PASS, roi_time_s=0.5), Journal(tmp_path / "j.jsonl"),
                  pin_factory=factory)
    plc = SimPlc(factory, s)
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    link.ready.wait(5)
    plc._drive("trigger", True)
    wait_for(lambda: plc.on("busy"), 5)
    stop.set()
    t.join(10)
    assert not any(plc.pins[sig].state for sig in ("busy", "pass", "fail", "error", "strobe"))
    assert not link.journal.by_id  # abandoned: the PLC triggers again after the restart
    factory.close()


def test_pins_shared_with_the_ring_light_are_refused(default_data):
    data = copy.deepcopy(default_data)
    data["verdict_link"] = {"kind": "io", **PINS, "hold_ms": 50.0,
                            "busy_pin": data["illumination"]["states"][2]["pin"],
                            "strobe_pin": data["illumination"]["trigger_pin"]}
    with pytest.raises(config.ConfigError) as e:
        config.parse(data, "h.toml")
    msg = str(e.value)
    assert "busy_pin 32 is LED group 2's" in msg and "strobe_pin 37 is the camera trigger's" \
        in msg
    data["verdict_link"] = {"kind": "io", **PINS, "hold_ms": 50.0}
    assert config.parse(data, "h.toml").verdict_link.io_pins["trigger"] == 11


@pytest.mark.parametrize("link, words", [
    ({**PINS, "kind": "io", "hold_ms": 5.0, "port": "/dev/ttyS0"}, "port is for the serial"),
    ({**PINS, "kind": "io"}, "without ack_pin the outputs drop only after hold_ms"),
    ({**PINS, "kind": "io", "hold_ms": 5.0, "error_pin": 2}, "header pins [2] are power"),
    ({**PINS, "kind": "io", "hold_ms": 5.0, "fail_pin": 11}, "each io signal needs its own"),
    ({"kind": "io", "hold_ms": 5.0, "trigger_pin": 11}, "needs busy_pin, pass_pin"),
    ({"kind": "ascii", "port": "sim", "baud": 115200, "strobe_ms": 5.0},
     "strobe_ms is for kind = 'io'"),
])
def test_io_keys_validated(default_data, link, words):
    default_data["verdict_link"] = link
    with pytest.raises(config.ConfigError) as e:
        config.parse(default_data, "h.toml")
    assert words in str(e.value)


def test_a_pin_in_use_is_refused_and_nothing_is_left_claimed(tmp_path):
    s = io_settings()
    factory = MockFactory()
    from gpiozero import DigitalOutputDevice

    taken = DigitalOutputDevice("BOARD18", pin_factory=factory)  # error_pin, e.g. an LED
    with pytest.raises(GPIOPinInUse):
        IoLink(s, Planned(), Journal(tmp_path / "j.jsonl"), pin_factory=factory)
    taken.close()
    # the pins claimed before the refusal were released: a second link gets them all
    link = IoLink(s, Planned(), Journal(tmp_path / "k.jsonl"), pin_factory=factory)
    link.close()
    factory.close()


def test_debounce_needs_a_stable_level():
    d = Debounced(False, 0.004, 0.0)
    assert not d.update(True, 0.001) and not d.update(False, 0.002)  # a bounce
    assert not d.update(True, 0.003) and not d.update(True, 0.006)
    assert d.update(True, 0.0071) and d.level
    assert sample_prefix("Línea 4 / head#2") == "L_nea_4___head_2"
    assert len(sample_prefix("x" * 80)) == io_link.NAME_CHARS


def test_open_link_on_mock_pins_runs_the_simulated_plc(tmp_path):
    s = io_settings(strobe_ms=2.0)
    link = io_link.open_link(s, ScriptedInspector(roi_time_s=0.001, rois=2),
                             Journal(tmp_path / "j.jsonl"))
    assert link.plc is not None and "discrete I/O" in link.describe()
    link.plc.pause_s = 0.05
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    wait_for(lambda: len(link.plc.cycles) >= 2, 20)
    stop.set()
    t.join(10)
    assert all(c.valid for c in link.plc.cycles)
    assert len(link.journal.by_id) >= 2
