"""Frame checks, and the simulated cameras that follow the GPIO pins and the stage."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge.hardware.camera import CameraTimeout, FrameError, _stats, check_frame
from edge.hardware.leds import RingLight
from edge.recording import open_sample
from edge.sim.camera import ReplayCamera, SimCamera, SimWiring
from edge.sim.optics import OpticsRenderer
from edge.sim.recorder import record_sample
from edge.sim.sample import arc
from edge.truth import GlassObject, Sample

SHAPE = (256, 256)


def test_check_frame_accepts_a_noisy_dark_field_frame():
    rng = np.random.default_rng(0)
    f = rng.integers(60, 80, SHAPE, dtype=np.uint16)
    f[10:12, 10:12] = 4095  # a saturated dust speck is normal
    assert check_frame(f, SHAPE, 12, "frame") is f


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.uint16, st.integers(1, 20_000), elements=st.integers(0, 65535)),
       st.sampled_from([255, 1023, 4095, 65535]))
def test_frame_stats_match_numpy(flat, full):
    # blocks of 4096 with a ragged last one: every length from 1 past two blocks
    lo, hi, sat = _stats(flat, full)
    assert (lo, hi, sat) == (flat.min(), flat.max(), int(np.count_nonzero(flat >= full)))


@pytest.mark.parametrize("frame, match", [
    (np.zeros(SHAPE, np.float32), "expected a uint16"),
    (np.ones((128, 256), np.uint16), "expected a 256 x 256 px frame"),
    (np.full(SHAPE, 64, np.uint16), "every pixel is 64 DN"),
    (np.full(SHAPE, 4095, np.uint16), "every pixel is 4095"),
    (np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint16).reshape(SHAPE), "beyond the 12-bit range"),
])
def test_check_frame_refuses(frame, match):
    with pytest.raises(FrameError, match=match):
        check_frame(frame, SHAPE, 12, "RoI 3, LED group 1")


def test_check_frame_refuses_a_mostly_saturated_frame():
    f = np.full(SHAPE, 4095, np.uint16)
    f[: SHAPE[0] // 2] = 70
    f[0, 0] = 71
    with pytest.raises(FrameError, match="50 % of the pixels are saturated"):
        check_frame(f, SHAPE, 12, "frame")


@pytest.fixture
def bench(cfg):
    """Ring light and camera on the same wires, the stage parked at the grid origin."""
    made = []

    def build(led_pins=None, trigger_pin=None, sample=None):
        ill = cfg.illumination
        wiring = SimWiring()
        ring = RingLight(ill, pin_factory=wiring.factory)
        head = OpticsRenderer(cfg, SHAPE)
        cam = SimCamera(head, wiring, trigger_pin or ill.trigger_pin,
                        led_pins or [s.pin for s in ill.states],
                        lambda: cfg.stage.roi_grid.origin_mm, cfg.stage.roi_grid.origin_mm, 0.01)
        cam.load(sample)
        made.append((cam, ring, wiring))
        return ring, cam

    yield build
    for cam, ring, wiring in made:
        cam.close()
        ring.close()
        wiring.close()


def take(ring, cam, states=range(6), timeout=2.0):
    frames = []
    for k in states:
        ring.on(k)
        cam.arm()
        ring.pulse_trigger()
        ring.off()
        frames.append(cam.grab(timeout))
    return np.stack(frames)


def horizontal_scratch(cfg) -> Sample:
    w_mm = SHAPE[1] * cfg.mm_per_px[0]
    h_mm = SHAPE[0] * cfg.mm_per_px[1]
    pts = arc((0.2 * w_mm, 0.5 * h_mm), 0.0, 0.6 * w_mm)
    d = GlassObject("scratch", tuple(map(tuple, pts)), 22.0, 800.0, 5, "triangular")
    return Sample("H", (w_mm, h_mm), (d,))


def test_frames_follow_the_lit_led_group(cfg, bench):
    """A horizontal scratch is brightest under the 90 degree pair; a head whose LED pins are
    wired in another order than its file says gets that signature in the wrong frame."""
    sample = horizontal_scratch(cfg)
    row = SHAPE[0] // 2
    band = slice(int(0.3 * SHAPE[1]), int(0.7 * SHAPE[1]))

    def brightest(frames):
        signal = frames[:, row - 2:row + 3, band].astype(float).mean(axis=(1, 2))
        return int(np.argmax(signal))

    ring, cam = bench(sample=sample)
    assert cfg.illumination.angles_deg[brightest(take(ring, cam))] == 90.0
    pins = [s.pin for s in cfg.illumination.states]
    ring2, cam2 = bench(led_pins=pins[::-1], sample=sample)  # wired backwards
    assert brightest(take(ring2, cam2)) == 2  # pin of group 2 lights the 90 degree pair


def test_no_group_lit_gives_a_dark_frame(cfg, bench):
    ring, cam = bench(sample=horizontal_scratch(cfg))
    cam.arm()
    ring.pulse_trigger()
    dark = cam.grab(2.0)
    lit = take(ring, cam, [3])[0]
    row, band = SHAPE[0] // 2, slice(int(0.3 * SHAPE[1]), int(0.7 * SHAPE[1]))
    assert dark[row - 1:row + 2, band].mean() < 80  # the scratch does not show: only the offset
    assert lit[row - 1:row + 2, band].mean() > 150


def test_camera_only_takes_armed_triggers_and_times_out(cfg, bench):
    ring, cam = bench()
    ring.pulse_trigger()  # not armed: ignored
    assert cam.triggers == 0
    with pytest.raises(CameraTimeout, match="no frame within 0.20 s"):
        cam.arm()
        cam.grab(0.2)


def test_camera_on_another_trigger_pin_never_answers(cfg, bench):
    ring, cam = bench(trigger_pin=3)
    ring.on(0)
    cam.arm()
    ring.pulse_trigger()
    ring.off()
    with pytest.raises(CameraTimeout):
        cam.grab(0.2)


def test_replay_camera_returns_the_recorded_frame_of_the_lit_group(tmp_path, cfg):
    head = OpticsRenderer(cfg, SHAPE)
    sample = horizontal_scratch(cfg)
    rec = open_sample(record_sample(cfg, head, sample, tmp_path, progress=False))
    entry = rec.manifest.rois[1]
    wiring = SimWiring()
    ill = cfg.illumination
    with RingLight(ill, pin_factory=wiring.factory) as ring:
        cam = ReplayCamera(rec, wiring, ill.trigger_pin, [s.pin for s in ill.states],
                           lambda: tuple(entry.stage_mm), 0.01)
        frames = take(ring, cam)
        cam.arm()
        ring.pulse_trigger()  # nothing lit: nothing was recorded like that
        black = cam.grab(1.0)
        cam.close()
    np.testing.assert_array_equal(frames, rec.frames(entry.index))
    with pytest.raises(FrameError):
        check_frame(black, SHAPE, 12, "frame")
    wiring.close()
