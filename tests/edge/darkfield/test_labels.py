"""Labels of single dark-field frames (edge.darkfield.labels): the format, its errors, and the
rasterisation that must mark what the simulator marks as truth."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.darkfield.labels import (
    FORMAT,
    LabelError,
    Scratch,
    find_label,
    mask_radius,
    read_label,
    scratch_mask,
    write_label,
)
from edge.errors import UserError
from edge.sim.darkfield import DarkfieldRenderer
from edge.sim.darkfield_files import darkfield_config
from edge.sim.darkfield_labels import label_scratches, write_labelled_frames

GOOD = {"scratches": [{"points_px": [[10, 20], [100.5, 40.25], [200, 41]], "width_px": 2.0}]}


def _label(tmp_path: Path, doc, name: str = "img") -> Path:
    (tmp_path / f"{name}.png").write_bytes(b"")  # the image: only its name matters here
    path = tmp_path / f"{name}.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return tmp_path / f"{name}.png"


# -- the format -------------------------------------------------------------------------------
def test_a_label_written_reads_back_the_same(tmp_path):
    s = [Scratch(np.array([[1.0, 2.0], [300.25, 400.5]]), 1.8),
         Scratch(np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 2.0]]), 3.0)]
    write_label(tmp_path / "a.json", s, "a.bmp", (512, 384))
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["format"] == FORMAT and doc["size_px"] == [512, 384] and "clean" not in doc
    got = read_label(tmp_path / "a.bmp")
    assert not got.clean and got.image == "a.bmp" and got.size_px == (512, 384)
    for a, b in zip(got.scratches, s, strict=True):
        np.testing.assert_array_equal(a.points_px, b.points_px)
        assert a.width_px == b.width_px
    write_label(tmp_path / "b.json", [], "b.bmp")
    assert json.loads((tmp_path / "b.json").read_text())["clean"] is True
    clean = read_label(tmp_path / "b.bmp")
    assert clean.clean and not clean.mask((300, 300)).any()


def test_the_minimal_label_needs_no_header(tmp_path):
    label = read_label(_label(tmp_path, GOOD))
    assert len(label.scratches) == 1 and label.scratches[0].points_px.shape == (3, 2)
    label.check_image(tmp_path / "img.png", (256, 256))  # every point inside
    assert read_label(_label(tmp_path, {"clean": True, "note": "checked by A. B."})).clean


@pytest.mark.parametrize("doc, field, expected", [
    ("[1, 2]", "", "expected an object"),
    ("{not json", "", "not JSON"),
    ({}, "", 'not "clean": true'),
    ({"scratches": []}, "", 'not "clean": true'),
    ({"clean": True, **GOOD}, "clean", "expected one or the other"),
    ({"clean": "yes"}, "clean", "expected true or false"),
    ({"scratch": GOOD["scratches"]}, "unknown field 'scratch'", "expected some of"),
    ({"format": "labelme", **GOOD}, "format", "expected 'glass-inspect-darkfield-labels'"),
    ({"version": 2, **GOOD}, "version", "expected 1"),
    ({"scratches": {"a": 1}}, "scratches", "expected a list of scratches"),
    ({"scratches": [[1, 2]]}, "scratches[0]", "expected an object with points_px"),
    ({"scratches": [{"points_px": [[1, 2], [3, 4]]}]}, "scratches[0].width_px", "missing"),
    ({"scratches": [{"points_px": [[1, 2], [3, 4]], "width_px": -1}]},
     "scratches[0].width_px", "expected a positive number"),
    ({"scratches": [{"points_px": [[1, 2], [3, 4]], "width_px": "2"}]},
     "scratches[0].width_px", "expected a positive number"),
    ({"scratches": [{"points_px": [[1, 2], [3, 4]], "width": 2}]},
     "scratches[0]: unknown field 'width'", "expected points_px, width_px"),
    ({"scratches": [{"width_px": 2}]}, "scratches[0].points_px", "missing"),
    ({"scratches": [{"points_px": [[1, 2]], "width_px": 2}]}, "scratches[0].points_px",
     "at least two points"),
    ({"scratches": [{"points_px": [[1, 2], [3, "4"]], "width_px": 2}]},
     "scratches[0].points_px[1]", "expected [x, y], two finite numbers"),
    ({"scratches": [{"points_px": [[1, 2], [3, 4, 5]], "width_px": 2}]},
     "scratches[0].points_px[1]", "expected [x, y]"),
    ({"size_px": [512], **GOOD}, "size_px", "expected [width, height]"),
    ({"image": 7, **GOOD}, "image", "expected the image's file name"),
])
def test_each_bad_label_is_one_message_naming_the_file_and_the_field(tmp_path, doc, field,
                                                                     expected):
    image = _label(tmp_path, doc)
    with pytest.raises(LabelError) as exc:
        read_label(image)
    text = str(exc.value)
    assert text.startswith(str(tmp_path / "img.json") + ": ")
    assert field in text and expected in text
    assert isinstance(exc.value, UserError)  # the command line prints it, no traceback


def test_every_problem_of_a_file_is_listed_at_once(tmp_path):
    doc = {"clean": "no", "scratches": [{"points_px": [[1, 2], [3, 4]], "width_px": 0},
                                        {"points_px": "x", "width_px": 1}]}
    with pytest.raises(LabelError) as exc:
        read_label(_label(tmp_path, doc))
    text = str(exc.value)
    assert "clean:" in text and "scratches[0].width_px" in text and "scratches[1].points_px" in text


def test_a_label_that_does_not_fit_its_image(tmp_path):
    image = _label(tmp_path, {"image": "other.png", "size_px": [512, 512], **{
        "scratches": [{"points_px": [[10, 10], [255.5, 10], [256, 10], [300, 10]],
                       "width_px": 2}]}})
    label = read_label(image)
    with pytest.raises(LabelError) as exc:
        label.check_image(image, (256, 256))
    text = str(exc.value)
    assert "image: 'other.png', but it labels 'img.png'" in text
    assert "size_px: [512, 512], but img.png is 256 x 256 px" in text
    # x = 255.5 is the right edge of the last pixel: inside; 256 is not
    assert "scratches[0].points_px[2]: [256, 10] lies outside img.png (256 x 256 px)" in text
    assert "and 1 more points outside" in text
    label = read_label(_label(tmp_path, {"scratches": [
        {"points_px": [[-0.5, -0.5], [255.5, 255.5]], "width_px": 1}]}))
    label.check_image(image, (256, 256))  # the corners' outer edges are inside


def test_a_missing_or_doubled_label_is_refused(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    (images / "a.bmp").write_bytes(b"")
    with pytest.raises(LabelError, match=r"a\.bmp: no label; expected .*labels/a\.json or "
                                         r".*labels/a\.png \(an image without scratches needs"):
        find_label(images / "a.bmp", labels)
    (labels / "a.json").write_text('{"clean": true}')
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(labels / "a.png")
    with pytest.raises(LabelError, match="two labels, .*a.json and .*a.png; expected one"):
        find_label(images / "a.bmp", labels)
    # beside the image only a JSON is a label: a PNG there may be an image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "a.png")
    with pytest.raises(LabelError, match=r"no label; expected .*images/a\.json \("):
        find_label(images / "a.bmp")


def test_png_masks_nonzero_is_scratch_and_all_zero_is_clean(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    m = np.zeros((300, 260, 3), np.uint8)
    m[100, 50:60, 2] = 7  # any nonzero channel
    Image.fromarray(m).save(labels / "a.png")
    Image.fromarray(np.zeros((300, 260), np.uint8)).save(labels / "b.png")
    a = read_label(tmp_path / "a.bmp", labels)
    assert not a.clean and a.mask((300, 260)).sum() == 10 and a.mask((300, 260))[100, 55]
    assert read_label(tmp_path / "b.bmp", labels).clean
    with pytest.raises(LabelError, match="the mask is 260 x 300 px, img.bmp 256 x 256 px"):
        a.check_image(tmp_path / "img.bmp", (256, 256))
    (labels / "c.png").write_text("not an image")
    with pytest.raises(LabelError, match=r"c\.png: cannot be read as a PNG mask"):
        read_label(tmp_path / "c.bmp", labels)


# -- rasterisation ----------------------------------------------------------------------------
def test_the_mask_is_the_pixels_within_the_simulators_radius_of_the_line():
    assert mask_radius(2.355) == pytest.approx(1.55)  # sigma 1 px
    assert mask_radius(0.2) == pytest.approx(0.775)  # the simulator's sigma floor, 0.5 px
    m = scratch_mask([Scratch(np.array([[10.0, 20.0], [50.0, 20.0]]), 2.355)], (40, 64))
    rows = np.flatnonzero(m.any(axis=1))
    assert rows.tolist() == [19, 20, 21]  # 1 px off the line is within 1.55, 2 px is not
    assert m[20, 10:51].all() and m[20, 9] and m[20, 11] and not m[20, 8]  # a cap of 1.55 px
    assert m.sum() == 43 * 3  # the caps: one more column at each end (1.41 px at its corners)
    thin = scratch_mask([Scratch(np.array([[10.0, 20.0], [50.0, 20.0]]), 0.5)], (40, 64))
    assert np.flatnonzero(thin.any(axis=1)).tolist() == [20]
    # a diagonal, away from its ends: every pixel whose centre is within the radius, none beyond
    d = scratch_mask([Scratch(np.array([[0.0, 0.0], [30.0, 30.0]]), 2.355)], (32, 32))
    yy, xx = np.mgrid[:32, :32]
    middle = (xx + yy >= 10) & (xx + yy <= 50)
    np.testing.assert_array_equal(d[middle], (np.abs(xx - yy) / np.sqrt(2) <= 1.55)[middle])
    assert d[middle].sum() == 21 + 2 * 20 + 2 * 21  # |x - y| = 0, 1 and 2 (2 / 1.41 <= 1.55)


def test_simulated_labels_cover_the_simulators_truth(tmp_path):
    renderer = DarkfieldRenderer(darkfield_config(512, 8))
    ious = []
    for seed in range(6):
        frame = renderer.render(seed)
        mask = scratch_mask(label_scratches(frame), frame.mask.shape)
        ious.append((mask & frame.mask).sum() / (mask | frame.mask).sum())
        # the labelled polylines end about where the truth does: at most a cap's pixels more
        assert (frame.mask & ~mask).sum() <= 2
    assert min(ious) > 0.9 and np.mean(ious) > 0.95, ious


def test_a_labelled_folder_from_the_simulator_reads_back(tmp_path):
    pairs = write_labelled_frames(tmp_path, [5, 7], frame_px=256, fmt="bmp", clean_seeds=[7])
    (img5, lab5), (img7, lab7) = pairs
    assert img5.parent == tmp_path / "images" and lab5 == tmp_path / "labels" / f"{img5.stem}.json"
    assert img7.name == "darkfield-0007-clean.bmp"
    assert read_label(img7, tmp_path / "labels").clean
    label = read_label(img5, tmp_path / "labels")
    label.check_image(img5, (256, 256))
    truth = DarkfieldRenderer(darkfield_config(256, 8)).render(5).mask
    mask = label.mask((256, 256))
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9
    with Image.open(img5) as im:
        assert im.format == "BMP" and im.size == (256, 256)
    with pytest.raises(ValueError, match="a BMP holds 8-bit frames"):
        write_labelled_frames(tmp_path, [1], frame_px=256, fmt="bmp", bit_depth=12)
