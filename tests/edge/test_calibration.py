"""The calibration file: version 3 written and read back, versions 1 and 2 still read, every
refusal."""

import json
import math
import zipfile

import numpy as np
import pytest

from edge import __version__, config
from edge import calibration as calib
from edge.calibration import CalibrationError, DefectivePixels, Geometry
from tests.conftest import small_head_data

W, H = 20, 16


@pytest.fixture(scope="module")
def head() -> config.HeadConfig:
    data = small_head_data()
    data["camera"].update(width=W, height=H)
    return config.parse(data, "tiny-head.toml")


def other_head(head, **camera) -> config.HeadConfig:
    data = head.model_dump(mode="json")
    data["camera"].update(camera)
    return config.parse(data, "other-head.toml")


def full(tmp_path, head, name="cal.npz", **changes):
    rng = np.random.default_rng(3)
    kw = dict(
        dark=rng.uniform(60, 70, (6, H, W)).astype(np.float32),
        gain=rng.uniform(0.8, 1.2, (6, H, W)).astype(np.float32),
        head=head, camera_serial="CAM-0042",
        defects=DefectivePixels.of(hot=([0, 5], [0, 7]), dead=([11], [15]), stuck=([3], [2])),
        geometry=Geometry((0.0115, 0.0113), 0.25, (10.05, 9.97)),
        led_exposure_scale=[1.0, 1.02, 0.97, 1.1, 0.93, 1.0],
        thresholds={"t_low": 0.3, "t_high": 0.7, "dbscan_eps": 20.0, "dbscan_min_samples": 12})
    kw.update(changes)
    return calib.save(tmp_path / name, **kw)


def test_version_3_round_trip(tmp_path, head):
    path = full(tmp_path, head)
    c = calib.load(path)
    rng = np.random.default_rng(3)
    dark = rng.uniform(60, 70, (6, H, W)).astype(np.float32)
    gain = rng.uniform(0.8, 1.2, (6, H, W)).astype(np.float32)
    assert c.version == 3 and (c.width, c.height) == (W, H)
    assert np.array_equal(c.dark, dark) and np.array_equal(c.gain, gain)
    assert c.dark.dtype == c.gain.dtype == np.float32
    # sorted by row, then column; kinds kept with their pixel
    assert c.defects.rows.tolist() == [0, 3, 5, 11] and c.defects.cols.tolist() == [0, 2, 7, 15]
    assert [calib.KINDS[k] for k in c.defects.kinds] == ["hot", "stuck", "hot", "dead"]
    assert [a.tolist() for a in c.defects.of_kind("hot")] == [[0, 5], [0, 7]]
    assert c.geometry == Geometry((0.0115, 0.0113), 0.25, (10.05, 9.97))
    assert c.led_exposure_scale == (1.0, 1.02, 0.97, 1.1, 0.93, 1.0)
    assert c.thresholds == {"t_low": 0.3, "t_high": 0.7, "dbscan_eps": 20.0,
                            "dbscan_min_samples": 12}
    assert c.head_digest == calib.head_digest(head) and c.camera_serial == "CAM-0042"
    assert c.software_version == __version__ and c.created_utc.endswith("+00:00")
    assert len(c.sha256) == 64 and c.identity == {"file": "cal.npz", "sha256": c.sha256}
    assert c.defect_table.count == 4 and c.defect_table is c.defect_table  # built once
    c.check_for(head, "CAM-0042")
    c.check_for(head)  # serial unknown here (a recording): not checked
    p = c.pipeline_for(head)
    assert (p.t_low, p.t_high, p.dbscan_eps, p.dbscan_min_samples) == (0.3, 0.7, 20.0, 12)
    assert p.tile_size == head.pipeline.tile_size
    with zipfile.ZipFile(path) as z:  # the format of docs/calibration_file.md
        assert sorted(z.namelist()) == ["dark.npy", "defect_cols.npy", "defect_kinds.npy",
                                        "defect_rows.npy", "gain.npy", "meta.npy"]


def test_one_dark_map_for_every_state(tmp_path, head):
    level = np.random.default_rng(4).uniform(60, 70, (H, W)).astype(np.float32)
    c = calib.load(calib.save(tmp_path / "d.npz", dark=level, gain=np.ones(6), head=head))
    assert c.dark.shape == (H, W) and np.array_equal(c.dark, level)
    with np.load(tmp_path / "d.npz") as z:
        assert z["dark"].shape == (H, W)  # stored once, not six times


def test_partial_calibrations(tmp_path, head):
    darks = calib.load(calib.save(tmp_path / "d.npz", dark=np.full(6, 64.0), head=head))
    assert darks.gain is None and darks.defects is None and darks.geometry is None
    assert darks.thresholds == {} and darks.pipeline_for(head) is head.pipeline
    assert darks.mapping(head) is None and darks.defect_table is None
    darks.check_for(head, "")
    tuned = calib.load(calib.save(tmp_path / "t.npz", head=head, thresholds={"t_low": 0.2}))
    assert tuned.pipeline_for(head).t_low == 0.2
    assert tuned.pipeline_for(head).t_high == head.pipeline.t_high
    # an empty defect list is "measured: none", not "not measured"
    none = calib.load(calib.save(tmp_path / "n.npz", head=head, defects=DefectivePixels.of()))
    assert none.defects.count == 0 and none.defect_table is None
    geo = calib.load(calib.save(tmp_path / "g.npz", head=head,
                                geometry=Geometry(rotation_deg=0.5)))
    m = geo.mapping(head)
    sx, sy = head.mm_per_px
    assert m.mm_per_px == (sx, sy) and m.rotation_deg == 0.5
    assert m.centre_mm == pytest.approx((W / 2 * sx, H / 2 * sy))  # the nominal stage origin
    with pytest.raises(CalibrationError, match="would hold nothing"):
        calib.save(tmp_path / "e.npz", head=head)
    with pytest.raises(CalibrationError, match="frame size is needed"):
        calib.save(tmp_path / "e.npz", dark=np.zeros(6))


def test_version_1_still_read(tmp_path, head):
    meta = {"format": calib.FORMAT, "version": 1, "width": W, "height": H,
            "created_utc": "2025-01-02T03:04:05+00:00"}
    np.savez(tmp_path / "v1.npz", dark=np.full(6, 64.0, np.float32),
             gain=np.ones((6, H, W), np.float32), meta=np.array(json.dumps(meta)))
    c = calib.load(tmp_path / "v1.npz")
    assert c.version == 1 and c.dark.tolist() == [64.0] * 6 and c.gain.shape == (6, H, W)
    assert c.head_digest is None and c.camera_serial is None and c.defects is None
    c.check_for(head, "ANY")  # no identity to check: accepted, as before
    np.savez(tmp_path / "v1bad.npz", dark=np.zeros(6), meta=np.array(json.dumps(meta)))
    with pytest.raises(CalibrationError, match=r"v1bad.npz lacks \['gain'\]"):
        calib.load(tmp_path / "v1bad.npz")


def test_another_head_is_refused_naming_both_digests(tmp_path, head):
    c = calib.load(full(tmp_path, head))
    other = other_head(head, exposure_ms=25.0)
    made, has = calib.head_digest(head)[:12], calib.head_digest(other)[:12]
    with pytest.raises(CalibrationError,
                       match=rf"cal.npz was made for head configuration {made}, this head "
                             rf"\(other-head.toml\) is {has}"):
        c.check_for(other, "CAM-0042")


def test_naming_the_file_in_the_head_file_keeps_it_bound(tmp_path, head):
    c = calib.load(full(tmp_path, head))
    data = head.model_dump(mode="json")
    data["calibration"]["file"] = "cal.npz"
    named = config.parse(data, "named.toml")
    assert named.digest() != head.digest()
    c.check_for(named, "CAM-0042")


def test_another_camera_is_refused_naming_both_serials(tmp_path, head):
    c = calib.load(full(tmp_path, head))
    with pytest.raises(CalibrationError, match="was made with camera serial 'CAM-0042', the "
                                               "head's camera is serial 'CAM-0043'"):
        c.check_for(head, "CAM-0043")
    with pytest.raises(CalibrationError, match="the head's camera is without a serial number"):
        c.check_for(head, "")
    sim = calib.load(full(tmp_path, head, "sim.npz", camera_serial=""))
    with pytest.raises(CalibrationError, match="made with camera without a serial number .* "
                                               "serial 'CAM-1'"):
        sim.check_for(head, "CAM-1")


def test_another_frame_size_is_refused(tmp_path, head):
    c = calib.load(full(tmp_path, head))
    with pytest.raises(CalibrationError, match=r"is for 20 x 16 frames, the head other-head.toml "
                                               r"has a 32 x 16 camera"):
        c.check_for(other_head(head, width=32))
    with pytest.raises(CalibrationError, match="for 20 x 16 frames, the camera delivers 20 x 14"):
        c.check_frames((6, 14, 20))


def test_thresholds_that_do_not_fit_the_head_are_refused(tmp_path, head):
    c = calib.load(calib.save(tmp_path / "t.npz", head=head, thresholds={"t_low": 0.9}))
    with pytest.raises(CalibrationError, match=r"t.npz: its thresholds .* do not fit the head: "
                                               r"t_low \(0.9\) must not exceed t_high"):
        c.check_for(head)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_refused(tmp_path, head, cut):
    path = full(tmp_path, head)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(CalibrationError, match=r"calibration file .*cal.npz is (not a readable "
                                               r"\.npz|damaged)"):
        calib.load(path)


def test_corrupt_member_is_refused(tmp_path, head):
    path = full(tmp_path, head)
    data = bytearray(path.read_bytes())
    i = data.index(b"gain.npy") + 200  # inside the gain array's data
    data[i:i + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(CalibrationError, match="cal.npz is damaged"):
        calib.load(path)


def rewrite(path, meta_changes=None, **arrays):
    """The file at ``path`` with some meta keys and arrays replaced (None: removed)."""
    with np.load(path) as z:
        content = {k: z[k] for k in z.files}
    meta = json.loads(str(content["meta"]))
    for k, v in (meta_changes or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    content["meta"] = np.array(json.dumps(meta))
    for k, v in arrays.items():
        if v is None:
            content.pop(k, None)
        else:
            content[k] = v
    np.savez(path, **content)
    return path


@pytest.mark.parametrize(
    ("meta", "arrays", "words"),
    [
        ({}, {"dark": np.full((6, H, W), np.nan, np.float32)}, "'dark' holds NaN or infinite"),
        ({}, {"gain": np.full(6, np.inf, np.float32)}, "'gain' holds NaN or infinite"),
        ({}, {"gain": np.zeros(6, np.float32)}, "'gain' must be positive"),
        ({}, {"gain": np.ones((6, H, W + 2), np.float32)},
         r"'gain' has shape \(6, 16, 22\), expected \(6,\), \(6, 16, 20\) or \(16, 20\)"),
        ({}, {"dark": np.ones((5, H, W), np.float32)}, r"'dark' has shape \(5, 16, 20\)"),
        ({}, {"defect_rows": np.array([0, 16, 5, 3], np.int32)}, "inside the 20 x 16 frame"),
        ({}, {"defect_rows": np.array([0, 5], np.int32)},
         "2 rows, 4 columns and 4 kinds"),
        ({}, {"defect_kinds": np.array([0, 1, 2, 3], np.uint8)}, "defect kind 3 is not one of"),
        ({}, {"defect_rows": np.array([0.0, 3, 5, 11])}, "'defect_rows' must be a list of int"),
        ({}, {"defect_cols": np.array([0, 2, 2, 15], np.int32),
              "defect_rows": np.array([3, 3, 3, 11], np.int32)}, "listed twice"),
        ({}, {"defect_kinds": None}, "the defective pixel list needs"),
        ({}, {"extra": np.zeros(3)}, r"unknown members \['extra'\]"),
        ({"geometry": {"mm_per_px": [float("nan"), 0.01], "rotation_deg": 0.0,
                       "stage_origin_mm": None}}, {}, "'geometry.mm_per_px' must be 2 finite"),
        ({"geometry": {"mm_per_px": None, "rotation_deg": float("inf"),
                       "stage_origin_mm": None}}, {}, "'geometry.rotation_deg' must be 1 finite"),
        ({"geometry": {"rotation_deg": 90.0}}, {}, "beyond \\+-45"),
        ({"geometry": {"stage_origin_mm": [1.0]}}, {}, "'geometry.stage_origin_mm' must be 2"),
        ({"geometry": {"scale": 1}}, {}, r"unknown geometry keys \['scale'\]"),
        ({"led_exposure_scale": [1.0] * 5}, {}, "'led_exposure_scale' must be 6 finite positive"),
        ({"led_exposure_scale": [1.0] * 5 + [float("nan")]}, {}, "'led_exposure_scale' must be"),
        ({"thresholds": {"t_low": float("nan")}}, {}, "threshold 't_low' = nan is not valid"),
        ({"thresholds": {"dbscan_min_samples": 2.5}}, {}, "'dbscan_min_samples' = 2.5"),
        ({"thresholds": {"t_high": 0.1, "t_low": 0.2}}, {}, r"t_low \(0.2\) exceeds t_high"),
        ({"thresholds": {"t_mid": 0.5}}, {}, r"unknown thresholds \['t_mid'\]"),
        ({"head_digest": "abc"}, {}, "'head_digest' must be 64 hex digits"),
        ({"camera_serial": 42}, {}, "'camera_serial' must be a string"),
        ({"software_version": None}, {}, r"'meta' lacks \['software_version'\]"),
        ({"colour": "blue"}, {}, r"unknown keys in 'meta': \['colour'\]"),
        ({"version": 4}, {}, "version 4; expected glass-inspect-calibration version 1 or 2 or 3"),
        ({"version": 2, "gain_block": 4}, {}, r"unknown keys in 'meta': \['gain_block'\]"),
        ({"width": float("nan")}, {}, "'meta' is not the expected JSON"),
        ({"width": 0}, {}, "frame size 0 x 16 is not valid"),
        ({"geometry": None, "led_exposure_scale": None, "thresholds": {}},
         {"dark": None, "gain": None, "defect_rows": None, "defect_cols": None,
          "defect_kinds": None}, "holds nothing to apply"),
    ],
)
def test_bad_content_is_refused_naming_the_file(tmp_path, head, meta, arrays, words):
    path = rewrite(full(tmp_path, head), meta, **arrays)
    with pytest.raises(CalibrationError, match=rf"calibration {tmp_path}/cal.npz.*{words}"):
        calib.load(path)


def test_the_writer_refuses_what_the_reader_would(tmp_path, head):
    with pytest.raises(CalibrationError, match="'dark' holds NaN"):
        calib.save(tmp_path / "x.npz", dark=np.full(6, np.nan), head=head)
    with pytest.raises(CalibrationError, match="listed twice"):
        calib.save(tmp_path / "x.npz", head=head, defects=DefectivePixels.of(hot=([1], [1]),
                                                                             dead=([1], [1])))
    with pytest.raises(CalibrationError, match="rotation_deg"):
        calib.save(tmp_path / "x.npz", head=head, geometry=Geometry(rotation_deg=math.inf))
    with pytest.raises(CalibrationError, match="'head_digest' must be 64 hex"):
        calib.save(tmp_path / "x.npz", dark=np.zeros(6), width=W, height=H, digest="nope")
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial file


def test_a_single_array_is_not_a_calibration(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(6))
    with pytest.raises(CalibrationError, match="not a readable .npz: it holds a single array"):
        calib.load(tmp_path / "one.npy")


def test_mapping_with_the_nominal_geometry_is_the_nominal_formula(tmp_path, head):
    sx, sy = head.mm_per_px
    g = head.stage.roi_grid.origin_mm
    c = calib.load(calib.save(tmp_path / "g.npz", head=head,
                              geometry=Geometry((sx, sy), 0.0, tuple(g))))
    m = c.mapping(head)
    for x, y in ((0, 0), (3, 4), (W, H), (17, 2)):
        assert m.to_mm(x, y, (10.0, 20.0)) == pytest.approx((10.0 + x * sx, 20.0 + y * sy),
                                                            abs=1e-12)
    assert m.box_mm((2, 4, 6, 8), (0.0, 0.0)) == pytest.approx((2 * sx, 4 * sy, 6 * sx, 8 * sy),
                                                               abs=1e-12)


def test_mapping_turns_and_scales_about_the_frame_centre(tmp_path, head):
    sx, sy = head.mm_per_px
    c = calib.load(calib.save(tmp_path / "g.npz", head=head,
                              geometry=Geometry((2 * sx, 2 * sy), 90.0 / 4, None)))
    m = c.mapping(head)
    centre = (W / 2 * sx, H / 2 * sy)
    assert m.to_mm(W / 2, H / 2, (0.0, 0.0)) == pytest.approx(centre)  # stays where it is
    # +x of the image turned 22.5 degrees from +x toward +y of the stage, twice the footprint
    t = math.radians(22.5)
    assert m.to_mm(W / 2 + 1, H / 2, (1.0, 2.0)) == pytest.approx(
        (1.0 + centre[0] + 2 * sx * math.cos(t), 2.0 + centre[1] + 2 * sx * math.sin(t)))
    assert m.to_mm(W / 2, H / 2 + 1, (0.0, 0.0)) == pytest.approx(
        (centre[0] - 2 * sy * math.sin(t), centre[1] + 2 * sy * math.cos(t)))
    corners = [m.to_mm(x, y, (0.0, 0.0)) for x in (2, 6) for y in (4, 8)]
    assert m.box_mm((2, 4, 6, 8), (0.0, 0.0)) == pytest.approx(
        (min(p[0] for p in corners), min(p[1] for p in corners),
         max(p[0] for p in corners), max(p[1] for p in corners)))
    assert m.px_mm == pytest.approx(sx + sy)


def test_measured_stage_origin_moves_the_view(tmp_path, head):
    g = head.stage.roi_grid.origin_mm
    geo = Geometry.measured(head, origin_offset_mm=(0.3, -0.2))
    assert geo.stage_origin_mm == pytest.approx((g[0] - 0.3, g[1] + 0.2))
    m = calib.load(calib.save(tmp_path / "g.npz", head=head, geometry=geo)).mapping(head)
    sx, sy = head.mm_per_px
    # the camera really looks 0.3 mm further right and 0.2 mm higher than the file says
    assert m.to_mm(3, 4, (5.0, 6.0)) == pytest.approx((5.3 + 3 * sx, 5.8 + 4 * sy))


def test_mapping_of_a_calibration(tmp_path, head):
    c = calib.load(full(tmp_path, head))
    m = c.mapping(head)
    g = head.stage.roi_grid.origin_mm
    sx, sy = head.mm_per_px
    assert m.mm_per_px == (0.0115, 0.0113) and m.rotation_deg == 0.25
    assert m.centre_px == (W / 2, H / 2)
    assert m.centre_mm == pytest.approx((W / 2 * sx + g[0] - 10.05, H / 2 * sy + g[1] - 9.97))
    assert m.px_mm == pytest.approx(0.0114)


def test_version_2_still_read(tmp_path, head):
    path = rewrite(full(tmp_path, head), {"version": 2})
    c = calib.load(path)
    assert c.version == 2 and c.gain.shape == (6, H, W)


def test_gain_grid_is_small_and_expands_to_the_smooth_field(tmp_path):
    h, w = 160, 200
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    smooth = np.stack([1 + 0.3 * ((xx / w - 0.5) ** 2 + (yy / h - 0.4) ** 2) * (1 + 0.1 * k)
                       for k in range(6)]).astype(np.float32)
    smooth[:, ::2, 1::2] *= 1.04  # one Bayer site answers more: kept per site
    noisy = smooth * (1 + 0.01 * np.random.default_rng(1).standard_normal(smooth.shape))
    noisy[:, 7, 9] = np.nan  # an unmeasured pixel is left out of its cell's median
    grid = calib.gain_grid(noisy.astype(np.float32), block=8)
    assert grid.shape == (6, 2, 2, 10, 13) and np.isfinite(grid).all()
    full_ = calib.expand_gain_grid(grid, h, w, 8)
    rms = float(np.sqrt(np.mean((full_ / smooth - 1) ** 2)))
    assert rms < 0.005  # half the 1 % noise of the measurement: the grid smooths it out
    flat = calib.expand_gain_grid(np.full((6, 2, 2, 3, 4), 1.25, np.float32), 40, 60, 8)
    assert np.allclose(flat, 1.25)


def test_gain_grid_written_and_read(tmp_path, head):
    grid = np.full((6, 2, 2, 2, 3), 1.1, np.float32)  # 16 x 20 frames in cells of 4 px
    c = calib.load(calib.save(tmp_path / "g.npz", head=head, gain_grid=grid, gain_block=4))
    assert c.gain.shape == (6, H, W) and np.allclose(c.gain, 1.1)
    with pytest.raises(CalibrationError, match="'gain_grid' has shape"):
        calib.save(tmp_path / "g.npz", head=head, gain_grid=grid, gain_block=8)
    with pytest.raises(CalibrationError, match="'gain_grid' must be positive"):
        calib.save(tmp_path / "g.npz", head=head, gain_grid=-grid, gain_block=4)
    with pytest.raises(CalibrationError, match="not both"):
        calib.save(tmp_path / "g.npz", head=head, gain=np.ones(6), gain_grid=grid, gain_block=4)
    path = calib.save(tmp_path / "g.npz", head=head, gain_grid=grid, gain_block=4)
    with pytest.raises(CalibrationError, match="'gain_block' must be an integer"):
        calib.load(rewrite(path, {"gain_block": 2.5}))


def test_frames_taken_at_other_exposures_get_gains_scaled_to_match(tmp_path, head):
    base = head.camera.exposure_ms
    scale = [1.0, 2.0, 1.0, 0.5, 1.0, 1.0]
    gain = np.random.default_rng(5).uniform(0.8, 1.2, (6, H, W)).astype(np.float32)
    c = calib.load(calib.save(tmp_path / "c.npz", head=head, gain=gain,
                              led_exposure_scale=scale))
    assert c.for_exposures([base * k for k in scale], head) is c  # taken as it expects
    nominal = c.for_exposures([base] * 6, head)  # a recording made before the balance
    assert np.allclose(nominal.gain, gain * np.array(scale)[:, None, None])
    assert nominal.dark is c.dark and nominal.defects is c.defects
    no_gain = calib.load(calib.save(tmp_path / "d.npz", head=head, dark=np.full(6, 64.0),
                                    led_exposure_scale=scale))
    assert np.allclose(no_gain.for_exposures([base] * 6, head).gain, scale)


def test_a_sensor_is_told_from_another_by_its_hot_pixels(tmp_path):
    h, w = 120, 160
    rng = np.random.default_rng(9)
    rows, cols = rng.integers(0, h, 30), rng.integers(0, w, 30)
    hot = DefectivePixels.of(hot=(np.unique(rows * w + cols) // w, np.unique(rows * w + cols) % w))
    c = calib.load(calib.save(tmp_path / "c.npz", width=w, height=h, defects=hot))
    frame = rng.normal(64, 2.2, (h, w))
    mine = frame.copy()
    mine[hot.rows, hot.cols] += rng.uniform(15, 500, hot.count)
    c.check_sensor(mine.astype(np.uint16))
    other = frame.copy()
    other[rng.integers(0, h, 30), rng.integers(0, w, 30)] += 300  # its own hot pixels
    with pytest.raises(CalibrationError, match=r"another camera sensor: only \d+ of the"):
        c.check_sensor(other.astype(np.uint16))
    few = calib.load(calib.save(tmp_path / "f.npz", width=w, height=h,
                                defects=DefectivePixels.of(hot=([1], [1]))))
    few.check_sensor(other.astype(np.uint16))  # too few to fingerprint: not checked
