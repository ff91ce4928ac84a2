import json

import numpy as np
import pytest

from edge.recording import RecordingError, SampleWriter, find_samples, open_sample
from edge.sim import OpticsRenderer, generate_sample
from edge.sim.recorder import record_sample

SHAPE = (64, 96)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, cfg):
    root = tmp_path_factory.mktemp("rec")
    head = OpticsRenderer(cfg, shape=SHAPE)
    sample = generate_sample(4, cfg.stage.roi_grid.extent_mm, 1.0)
    path = record_sample(cfg, head, sample, root, progress=False, start_s=1_700_000_000.0)
    return head, sample, path


@pytest.fixture
def copy_of(recorded, tmp_path):
    import shutil

    _, _, path = recorded
    dst = tmp_path / path.name
    shutil.copytree(path, dst)
    return dst


def test_round_trip_is_bit_exact(recorded, cfg):
    head, sample, path = recorded
    rec = open_sample(path)
    m = rec.manifest
    assert m.sample_id == sample.sample_id
    assert m.head_config_sha256 == cfg.digest()
    assert m.calibration_id is None
    assert [r.index for r in m.rois] == list(range(10))
    assert list(m.illumination_deg) == [0, 30, 60, 90, 120, 150]
    for entry in m.rois[:3]:
        again = head.render(sample, entry.origin_mm, noise_seed=(sample.seed << 8) + entry.index)
        frames = rec.frames(entry.index)
        assert frames.dtype == np.uint16 and frames.shape == (6, *SHAPE)
        assert np.array_equal(frames, again.frames)
        assert np.array_equal(rec.mask(entry.index), again.mask)
    truth = rec.truth()
    assert truth.sample_id == sample.sample_id and len(truth.objects) == len(sample.objects)


def test_timestamps_follow_the_head_timing(recorded, cfg):
    m = open_sample(recorded[2]).manifest
    t = np.array([r.timestamps for r in m.rois])
    assert np.allclose(np.diff(t, axis=1), cfg.camera.frame_time_ms / 1000)
    assert (np.diff(t[:, 0]) > 0.3).all()  # the stage moves between RoIs
    assert m.rois[3].stage_mm == (cfg.stage.roi_grid.origin_mm[0] + 38.0,
                                  cfg.stage.roi_grid.origin_mm[1] + 33.0)


def test_truncated_frames(copy_of):
    f = copy_of / "roi_02.tif"
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(RecordingError, match=r"roi_02\.tif: truncated"):
        open_sample(copy_of).frames(2)


def test_altered_byte_is_caught(copy_of):
    f = copy_of / "roi_01.tif"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x40
    f.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match=r"roi_01\.tif: content does not match"):
        open_sample(copy_of).frames(1)
    assert open_sample(copy_of).frames(1, verify=False).shape == (6, *SHAPE)


def test_frames_of_another_shape(copy_of):
    m = json.loads((copy_of / "manifest.json").read_text())
    m["camera"]["width"] = SHAPE[1] // 2
    (copy_of / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RecordingError, match="the manifest says uint16"):
        open_sample(copy_of).frames(0, verify=False)


def test_garbage_tiff(copy_of):
    f = copy_of / "roi_00.tif"
    f.write_bytes(b"\0" * f.stat().st_size)
    with pytest.raises(RecordingError, match="not a readable uncompressed TIFF"):
        open_sample(copy_of).frames(0, verify=False)


def test_missing_file(copy_of):
    (copy_of / "roi_05_mask.png").unlink()
    with pytest.raises(RecordingError, match=r"roi_05_mask\.png: missing"):
        open_sample(copy_of).mask(5)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda m: m.update(version=2), "version"),
        (lambda m: m.update(colour=1), "colour: unknown key"),
        (lambda m: m["rois"][0].update(file="../../etc/passwd"), "rois.0.file"),
        (lambda m: m["rois"][0].update(sha256="abc"), "rois.0.sha256"),
        (lambda m: m["rois"][1].update(index=0), "RoI indexes repeat"),
        (lambda m: m.pop("sample_id"), "sample_id: required key is missing"),
    ],
)
def test_invalid_manifest(copy_of, edit, words):
    m = json.loads((copy_of / "manifest.json").read_text())
    edit(m)
    (copy_of / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RecordingError, match="manifest") as err:
        open_sample(copy_of)
    assert words in str(err.value)


def test_not_json_and_no_manifest(copy_of, tmp_path):
    (copy_of / "manifest.json").write_text("{not json")
    with pytest.raises(RecordingError, match="not valid JSON"):
        open_sample(copy_of)
    with pytest.raises(RecordingError, match="interrupted recording"):
        open_sample(tmp_path)
    with pytest.raises(RecordingError, match="no recorded sample here"):
        find_samples(tmp_path / "nothing")


def test_writer_refuses_bad_input(tmp_path, cfg):
    with pytest.raises(RecordingError, match="not allowed"):
        SampleWriter(tmp_path, "../escape", cfg)
    w = SampleWriter(tmp_path, "S1", cfg, shape=SHAPE)
    with pytest.raises(RecordingError, match="uint16"):
        w.add_roi(0, (0, 0), np.zeros((6, *SHAPE), np.float32), [0] * 6)
    w.add_roi(0, (0, 0), np.zeros((6, *SHAPE), np.uint16), [0] * 6)
    w.close()
    with pytest.raises(RecordingError, match="already holds"):
        SampleWriter(tmp_path, "S1", cfg)


def test_files_swapped_between_rois(copy_of):
    a, b = copy_of / "roi_01.tif", copy_of / "roi_02.tif"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(RecordingError, match=r"roi_01\.tif: content does not match"):
        open_sample(copy_of).frames(1)


def test_per_state_exposures_are_recorded_when_they_differ(tmp_path, cfg):
    base = cfg.camera.exposure_ms
    frames = np.full((6, *SHAPE), 70, np.uint16)
    frames[:, ::3] = 90

    def write(name, exposures):
        w = SampleWriter(tmp_path, name, cfg, shape=SHAPE, exposures_ms=exposures)
        for i in range(cfg.stage.roi_grid.count):
            w.add_roi(i, cfg.stage.roi_grid.roi_origin_mm(i), frames, [0.0] * 6)
        return open_sample(w.close()).manifest.camera

    balanced = write("BAL", [base, 2 * base, base, base, base / 2, base])
    assert balanced.per_state_ms == (base, 2 * base, base, base, base / 2, base)
    plain = write("PLAIN", [base] * 6)
    assert plain.exposures_ms is None and plain.per_state_ms == (base,) * 6
