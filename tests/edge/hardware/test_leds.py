import time
from types import SimpleNamespace

import pytest
from gpiozero.pins.mock import MockFactory

from edge.hardware.jetson import AON, MAIN, JetsonFactory
from edge.hardware.leds import LedFault, RingLight


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.close()


def states(factory, pin):
    return [s.state for s in factory.pin(f"BOARD{pin}").states]


def record(factory, pins):
    """One list of (header pin, level) in the order the pins changed, across all pins."""
    log = []
    for n in pins:
        pin = factory.pin(f"BOARD{n}")
        original = pin._set_state

        def spy(value, n=n, original=original):
            log.append((n, bool(value)))
            original(value)

        pin._set_state = spy
    return log


def test_exact_pin_sequence_for_the_6_states(cfg, factory):
    ill = cfg.illumination
    pins = [s.pin for s in ill.states]
    with RingLight(ill, pin_factory=factory) as ring:
        log = record(factory, pins + [ill.trigger_pin])
        for k in range(6):
            ring.on(k)
            ring.pulse_trigger()
            ring.off()
    per_state = []
    for p in pins:
        per_state += [(p, True), (ill.trigger_pin, True), (ill.trigger_pin, False)]
        per_state += [(q, False) for q in pins]  # off() sets every group low
    assert log[:len(per_state)] == per_state
    for p in pins:
        assert states(factory, p)[:3] == [False, True, False]


def test_interlock_darkens_all_and_refuses(cfg, factory):
    with RingLight(cfg.illumination, pin_factory=factory) as ring:
        ring.on(2)
        with pytest.raises(LedFault, match="interlock: LED group 2 was still lit"):
            ring.on(3)
        assert not any(g.value for g in ring.groups)
        with pytest.raises(LedFault):  # the fault stays: the inspection must end
            ring.on(0)


def test_watchdog_switches_off_a_group_left_on(default_data, factory):
    from edge import config

    default_data["illumination"]["max_on_ms"] = 30.0
    cfg = config.parse(default_data)
    with RingLight(cfg.illumination, pin_factory=factory) as ring:
        ring.on(1)
        time.sleep(0.15)
        assert not ring.groups[1].value and ring.lit is None
        with pytest.raises(LedFault, match="watchdog: LED group 1 was lit for more than"):
            ring.off()


def test_a_watchdog_trip_is_counted_and_only_it_can_be_cleared(default_data, factory):
    from edge import config

    default_data["illumination"]["max_on_ms"] = 30.0
    cfg = config.parse(default_data)
    with RingLight(cfg.illumination, pin_factory=factory) as ring:
        assert not ring.tripped and ring.trip_count == 0 and ring.trip_times() == []
        ring.rearm()  # nothing to clear
        before = time.monotonic()
        ring.on(1)
        time.sleep(0.15)
        assert ring.tripped and ring.trip_count == 1
        (when,) = ring.trip_times()
        assert before < when <= time.monotonic()
        with pytest.raises(LedFault, match="watchdog"):
            ring.on(2)
        ring.rearm()
        assert ring.fault is None and not ring.tripped and ring.trip_count == 1
        ring.on(2)  # lights again, under the watchdog again
        time.sleep(0.15)
        assert not ring.groups[2].value and ring.trip_count == 2 and len(ring.trip_times()) == 2
        ring.rearm()
        ring.on(0)
        with pytest.raises(LedFault, match="interlock"):
            ring.on(4)
        with pytest.raises(LedFault, match="only a watchdog trip is cleared without a restart"):
            ring.rearm()
        assert not ring.tripped and not any(g.value for g in ring.groups)
        with pytest.raises(LedFault, match="interlock"):
            ring.on(0)


def test_dark_after_an_exception_mid_roi(cfg, factory):
    ring = RingLight(cfg.illumination, pin_factory=factory)
    with pytest.raises(RuntimeError, match="camera fell over"), ring:
        ring.on(4)
        raise RuntimeError("camera fell over")
    assert states(factory, cfg.illumination.states[4].pin)[-1] is False


class FakeRequest:
    def __init__(self, chip, config):
        self.chip, self.values = chip, {o: s.output_value for o, s in config.items()}
        chip.requests.append(self)

    def set_value(self, offset, value):
        self.values[offset] = value
        self.chip.log.append((offset, value))

    def get_value(self, offset):
        return self.values[offset]

    def release(self):
        self.chip.released.append(tuple(self.values))


def fake_gpiod():
    chip = SimpleNamespace(requests=[], log=[], released=[])
    value = SimpleNamespace(ACTIVE="active", INACTIVE="inactive")
    line = SimpleNamespace(Value=value, Direction=SimpleNamespace(OUTPUT="out", INPUT="in"))

    def request_lines(path, consumer, config):
        chip.path = path
        return FakeRequest(chip, config)

    mod = SimpleNamespace(line=line, request_lines=request_lines,
                          LineSettings=lambda direction, output_value: SimpleNamespace(
                              direction=direction, output_value=output_value))
    return mod, chip


def test_ring_light_on_the_jetson_factory_drives_the_mapped_lines(cfg):
    gpiod, chip = fake_gpiod()
    f = JetsonFactory("p3767", gpiod=gpiod, chips={MAIN: "/dev/gpiochip0", AON: "/dev/gpiochip1"},
                      check_pinmux=False)  # the pinmux check has its own tests (test_jetson)
    with RingLight(cfg.illumination, pin_factory=f) as ring:
        ring.on(0)  # header pin 29 -> line 105 of tegra234-gpio
        ring.off()
    assert chip.path == "/dev/gpiochip0"
    assert (105, "active") in chip.log and chip.log[-1][1] == "inactive"
    assert len(chip.released) == 7  # 6 groups and the trigger released on close
    with pytest.raises(Exception, match="not a GPIO"):
        f.pin("BOARD6")
    f.close()


def test_sigterm_darkens_before_the_process_exits(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "lit.py"
    script.write_text(
        "import os, signal, sys\n"
        "from gpiozero.pins.mock import MockFactory\n"
        "from edge import config\n"
        "from edge.hardware.leds import RingLight, darken_on_signals\n"
        "ring = RingLight(config.load().illumination, pin_factory=MockFactory())\n"
        "darken_on_signals(ring)\n"
        "ring.on(3)\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "finally:\n"
        "    print('lit after SIGTERM:', [g.value for g in ring.groups])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert out.returncode == 143
    assert "lit after SIGTERM: [0, 0, 0, 0, 0, 0]" in out.stdout
