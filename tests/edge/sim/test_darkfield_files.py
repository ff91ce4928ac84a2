"""Simulated dark-field frames written as image files (``glass-inspect simulate-darkfield``)."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from edge.cli import main
from edge.darkfield.reading import ClassifyError, collect_inputs, read_image
from edge.sim import darkfield_files as dff
from edge.sim.darkfield import DarkfieldRenderer

PX = 512


def _truth(folder) -> dict:
    doc = json.loads((folder / dff.TRUTH).read_text())
    assert doc["format"] == dff.TRUTH_FORMAT
    return {e["file"]: e for e in doc["files"]}


def _cli(args, capsys) -> tuple[int, str, str]:
    try:
        rc = main(["simulate-darkfield", "--quiet", *map(str, args)])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_config_scales_scratch_lengths_with_the_frame_as_training_does():
    from edge.sim.darkfield import frames_at as training

    cfg = dff.darkfield_config(PX, 16, True)
    assert cfg.shape == (PX, PX) and cfg.bit_depth == 16 and cfg.bayer
    assert cfg.scratch_length_px == training(PX).scratch_length_px == (30.0, 375.0)
    assert dff.darkfield_config().scratch_length_px == (30.0, 1500.0)


def test_the_writer_needs_neither_torch_nor_the_training_package():
    code = ("import sys; from edge.sim.darkfield_files import darkfield_config; "
            "darkfield_config(256); assert 'torch' not in sys.modules, 'torch imported'; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'model'], 'model imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("fmt", dff.FORMATS)
@pytest.mark.parametrize("bits", (8, 12, 16))
def test_files_round_trip(tmp_path, fmt, bits):
    cfg = dff.darkfield_config(PX, bits)
    (path,) = dff.write_darkfield_frames(tmp_path, [3], cfg, fmt, progress=False)
    frame = DarkfieldRenderer(cfg).render(3)
    assert path.name == f"darkfield-0003-scratched.{fmt}"
    assert frame.image.max() <= cfg.full_scale
    # the file's own samples: 8 bits for 8-bit data, 16 for 12 and 16
    if fmt == "tiff":
        raw = tifffile.imread(path)
    else:
        with Image.open(path) as im:
            assert im.mode == ("L" if bits == 8 else "I;16")
            raw = np.asarray(im)
    assert raw.dtype == (np.uint8 if bits == 8 else np.uint16)
    np.testing.assert_array_equal(raw, frame.image)
    # and what classify reads, scaled back
    read = read_image(path, bit_depth=bits)
    assert read.bit_depth == bits and read.kind == "grey" and read.size == (PX, PX)
    np.testing.assert_array_equal(
        np.rint(read.pixels.astype(np.float64) * cfg.full_scale).astype(np.uint16), frame.image)


def test_a_bayer_tiff_says_it_is_a_grbg_mosaic(tmp_path):
    cfg = dff.darkfield_config(PX, 12, bayer=True)
    (path,) = dff.write_darkfield_frames(tmp_path, [1], cfg, progress=False)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert page.photometric.name == "CFA"
        assert bytes(page.tags["CFAPattern"].value) == bytes([1, 0, 2, 1])  # G R / B G
    read = read_image(path, bit_depth=12)  # no --bayer needed: the file says so
    assert read.kind == "bayer mosaic"
    np.testing.assert_array_equal(np.rint(read.pixels * 4095).astype(np.uint16),
                                  DarkfieldRenderer(cfg).render(1).image)
    assert _truth(tmp_path)[path.name]["bayer"] == "GRBG"


def test_clean_frames_are_named_and_recorded_without_scratches(tmp_path, capsys, caplog):
    out = tmp_path / "shots"
    with caplog.at_level(logging.INFO):
        rc, stdout, err = _cli([out, "--size", PX, "--count", 3, "--clean", 2, "--seed", 10],
                               capsys)
    assert rc == 0, err
    assert "3 frames (2 scratch-free)" in stdout
    names = ["darkfield-0010-scratched.tiff", "darkfield-0011-clean.tiff",
             "darkfield-0012-clean.tiff"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, dff.TRUTH])
    truth = _truth(out)
    assert list(truth) == names
    first = truth[names[0]]
    assert first["label"] == "scratched" and first["seed"] == 10 and first["bit_depth"] == 12
    assert first["bayer"] is None and first["sample_bits"] == 16
    assert first["scratch_count"] == len(first["scratches"]) >= 1
    assert all(s["length_px"] > 0 and s["peak_dn"] > 0 for s in first["scratches"])
    assert first["mask_pixels"] > 0
    for name in names[1:]:
        e = truth[name]
        assert (e["label"], e["scratch_share"], e["scratch_count"], e["scratches"],
                e["mask_pixels"]) == ("clean", 0.0, 0, [], 0)
    # one log line per file, naming it
    logged = [r.getMessage() for r in caplog.records if r.name == dff.__name__]
    for name in [*names, dff.TRUTH]:
        assert sum(m.startswith(str(out / name) + ":") for m in logged) == 1
    # classify takes the folder's images and skips truth.json
    assert [i.path.name for i in collect_inputs([out])] == names


def test_broken_files_are_what_they_claim(tmp_path):
    cfg = dff.darkfield_config(PX)
    written = dff.write_darkfield_frames(tmp_path, [0, 1], cfg, "png", clean_seeds=[1],
                                         broken=True, progress=False)
    assert [p.name for p in written] == ["darkfield-0000-scratched.png",
                                         "darkfield-0001-clean.png", dff.TRUNCATED, dff.TOO_SMALL]
    truncated, small = tmp_path / dff.TRUNCATED, tmp_path / dff.TOO_SMALL
    whole = dff.encode(DarkfieldRenderer(cfg).render(0).image, "tiff", 12)
    data = truncated.read_bytes()
    assert data == whole[:len(whole) // 2] and data[:4] == b"II*\x00"
    with pytest.raises(ClassifyError, match="truncated or damaged"):
        read_image(truncated, bit_depth=12)
    with Image.open(small) as im:
        assert im.size == (100, 100)
    with pytest.raises(ClassifyError, match="100 x 100 px"):
        read_image(small, bit_depth=12)
    truth = _truth(tmp_path)
    for name in (dff.TRUNCATED, dff.TOO_SMALL):
        assert truth[name]["broken"] is True and truth[name]["label"] == "broken"
        assert truth[name]["reason"]
    assert "half its bytes" in truth[dff.TRUNCATED]["reason"]
    assert "smaller than one 256" in truth[dff.TOO_SMALL]["reason"]
    assert not truth["darkfield-0000-scratched.png"]["broken"]


@pytest.mark.parametrize("args", [
    ["--size", "257"], ["--size", "128"], ["--size", "big"], ["--count", "0"],
    ["--seed", "-1"], ["--clean", "-1"], ["--count", "2", "--clean", "3"],
    ["--bit-depth", "10"], ["--format", "jpeg"],
], ids=lambda a: " ".join(a))
def test_bad_options_are_a_usage_error(tmp_path, capsys, args):
    rc, _, err = _cli([tmp_path / "out", *args], capsys)
    assert rc == 2
    assert "simulate-darkfield" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_out_dir_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc, _, err = _cli([tmp_path / "f", "--size", PX, "--count", 1], capsys)
    assert rc == 2 and "not a folder" in err and "Traceback" not in err


def test_the_same_seed_writes_the_same_files(tmp_path):
    cfg = dff.darkfield_config(PX, 12, bayer=True)
    a = dff.write_darkfield_frames(tmp_path / "a", [5, 6], cfg, clean_seeds=[6], broken=True,
                                   progress=False)
    b = dff.write_darkfield_frames(tmp_path / "b", [5, 6], cfg, clean_seeds=[6], broken=True,
                                   progress=False)
    for p, q in zip([*a, tmp_path / "a" / dff.TRUTH], [*b, tmp_path / "b" / dff.TRUTH],
                    strict=True):
        assert p.name == q.name and p.read_bytes() == q.read_bytes()
    (c,) = dff.write_darkfield_frames(tmp_path / "c", [7], cfg, progress=False)
    assert c.read_bytes() != a[0].read_bytes()


def test_a_second_run_replaces_the_first_runs_files_only(tmp_path):
    cfg = dff.darkfield_config(256)
    dff.write_darkfield_frames(tmp_path, [0, 1, 2], cfg, clean_seeds=[2], broken=True,
                               progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    dff.write_darkfield_frames(tmp_path, [0], cfg, fmt="png", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "darkfield-0000-scratched.png", "notes.txt", dff.TRUTH]


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def fail(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        dff.write_atomic(tmp_path / "x.tiff", b"data")
    assert list(tmp_path.iterdir()) == []


def test_library_refuses_bad_arguments(tmp_path):
    cfg = dff.darkfield_config(256)
    for kwargs, match in (({"seeds": []}, "no seeds"), ({"seeds": [1, 1]}, "distinct"),
                          ({"seeds": [1], "clean_seeds": [2]}, "not among"),
                          ({"seeds": [1], "fmt": "bmp"}, "format"),
                          ({"seeds": [-1]}, "non-negative")):
        with pytest.raises(ValueError, match=match):
            dff.write_darkfield_frames(tmp_path, config=cfg, progress=False, **kwargs)
    with pytest.raises(ValueError, match="even"):
        dff.darkfield_config(300 + 1)
