"""The other factory's glass and head (issue 31 item 5): a population no training rendered, and
the default population exactly as it was before the other existed."""

import hashlib
import json

import numpy as np
import pytest

from edge import config
from edge.cli import main
from edge.labels_sample import from_truth, parse_labels
from edge.recording import open_sample
from edge.sim import OpticsRenderer, arc, generate_sample
from edge.sim.optics import area_primitives
from edge.sim.parts import SimGlass
from edge.sim.recorder import simulate_samples
from edge.truth import GlassObject, Sample
from model.heldout import must_fail_seeds
from tests.conftest import ROOT

HEAD = ROOT / "edge" / "heads" / "other_factory.toml"
EXTENT = (78.0, 167.0)  # the default RoI grid's area
OTHER = "other-factory"
NEW_KINDS = ("water_spot", "fingerprint")


@pytest.fixture(scope="module")
def other_cfg():
    return config.load(HEAD)


def test_default_population_draws_what_it_drew_before():
    # pinned from the generator before the other population was added (seeds 0-39, share 0.3)
    h = hashlib.sha256()
    for s in range(40):
        h.update(json.dumps(generate_sample(s, EXTENT, 0.3).to_dict(), sort_keys=True).encode())
    assert h.hexdigest() == "92d9b8fe216f48c90847679bc52dc4fc20487d224c30b9cf3a04f773b0fbc4c6"
    s = generate_sample(7, EXTENT, 1.0)
    assert s.sample_id == "SIM00000007"
    assert s.describe() == "3 scratches, 28 dust specks, 1 stains, 0 fibres"
    first = s.objects[0]
    assert (first.width_um, first.intensity_dn, first.seed, first.profile) == (
        17.96974581684421, 39.602274650783315, 1545052024, "triangular")


def test_default_glass_stays_out_of_dumps(cfg, other_cfg):
    # the default head's render identity (the held-out cache's key) hashes this dump
    assert "glass" not in cfg.model_dump(mode="json")["simulation"]
    assert cfg.simulation.glass == "default"
    assert other_cfg.model_dump(mode="json")["simulation"]["glass"] == OTHER


def test_other_population_draws_new_kinds_widths_and_profiles():
    samples = [generate_sample(s, EXTENT, 1.0, glass=OTHER) for s in range(200)]
    objects = [d for s in samples for d in s.objects]
    assert {d.kind for d in objects} == {"scratch", "dust", "stain", "fibre", *NEW_KINDS}
    scratches = [d for d in objects if d.kind == "scratch"]
    widths_px = np.array([d.width_um for d in scratches]) / 11.4
    assert widths_px.min() > 3.0 and widths_px.max() < 7.1 and np.ptp(widths_px) > 3.0
    peaks = np.array([d.intensity_dn for d in scratches])
    assert peaks.min() >= 6.0 and peaks.max() <= 600.0 and np.median(peaks) < 80
    profiles = [d.profile for d in scratches]
    assert set(profiles) == {"polished", "rugged"}
    assert 0.5 < profiles.count("polished") / len(profiles) < 0.7
    spots = np.mean([sum(d.kind == "water_spot" for d in s.objects) for s in samples])
    prints = np.mean([sum(d.kind == "fingerprint" for d in s.objects) for s in samples])
    assert 1.2 < spots < 1.8 and 0.4 < prints < 0.6
    assert all(s.sample_id.startswith("OFG") for s in samples)
    # its own stream: the default sample of a seed is not the other one's with extras
    assert generate_sample(8, EXTENT, 1.0).objects[0].points_mm != samples[8].objects[0].points_mm


def test_unknown_population_is_refused():
    with pytest.raises(ValueError, match="glass population 'elsewhere'"):
        generate_sample(1, EXTENT, glass="elsewhere")


def _scene(head, *objects):
    return head.scene(Sample("T", (3.0, 3.0), tuple(objects)), (0.0, 0.0))


def _spread(scene):
    per_state = scene.layers.astype(np.float64).sum(axis=(1, 2))
    return per_state.max() / per_state.min()


def test_water_spots_and_fingerprints_scatter_diffusely(other_cfg):
    head = OpticsRenderer(other_cfg, shape=(256, 256))
    spot = GlassObject("water_spot", ((1.46, 1.43),), 1500.0, 200.0, 4)
    finger = GlassObject("fingerprint", ((1.46, 1.43),), 6000.0, 40.0, 5)
    pts = tuple(map(tuple, arc((0.5, 1.4), 0.0, 2.0)))
    scratch = GlassObject("scratch", pts, 50.0, 200.0, 6, "polished")
    for d in (spot, finger):
        sc = _scene(head, d)
        assert _spread(sc) < 1.25, d.kind  # +-5 % per state, whatever the ridges' directions
        assert not sc.mask.any()  # contaminants are never scratch labels
        assert 0.8 * d.intensity_dn < sc.layers.max() < 1.3 * d.intensity_dn
    assert _spread(_scene(head, scratch)) > 3.0  # a scratch's lobe across its normal
    lines, blobs = area_primitives(finger, head.angles_deg)
    assert len(lines) >= 10 and not blobs
    r = head.render(Sample("T", (3.0, 3.0), (spot, finger)), (0.0, 0.0), 1)
    assert r.frames.shape == (6, 256, 256) and r.defect_ids == (0, 1)


def test_water_spot_is_a_ring_around_a_faint_fill(other_cfg):
    head = OpticsRenderer(other_cfg, shape=(256, 256))
    spot = GlassObject("water_spot", ((1.46, 1.43),), 2000.0, 300.0, 9)
    layer = _scene(head, spot).layers[0]
    ys, xs = np.mgrid[:256, :256]
    cx, cy = head.to_px(np.array([[1.46, 1.43]]), (0.0, 0.0))[0]
    r_mm = np.hypot(xs - cx, ys - cy) * head.px_mm
    ring = layer[(r_mm > 0.85) & (r_mm < 1.0)].max()
    inside = layer[r_mm < 0.5].max()
    assert ring > 150 and 0 < inside < 0.25 * ring
    assert layer[r_mm > 1.15].max() < 0.05 * ring


def test_polished_scratch_is_double_edged_and_labelled(other_cfg):
    head = OpticsRenderer(other_cfg, shape=(128, 128))
    # horizontal: its normal is 90 degrees, state 3's azimuth; 80 um = 7 px
    pts = tuple(map(tuple, arc((0.1, 0.7), 0.0, 1.2)))
    sc = _scene(head, GlassObject("scratch", pts, 80.0, 400.0, 3, "polished"))
    column = sc.layers[3][:, 64].astype(np.float64)
    top = int(np.argmax(column))
    centre = int(round(head.to_px(np.array([[0.7, 0.7]]), (0.0, 0.0))[0, 1]))
    assert abs(top - centre) >= 1  # the brightest row is a wall, not the middle
    assert column[centre] < 0.8 * column.max()
    assert column.max() < 400.0 * 1.15  # the section peaks at the scratch's intensity
    assert sc.mask[:, 64].sum() >= 5  # the label covers the groove


def test_truth_and_labels_round_trip(tmp_path, other_cfg):
    seed = next(s for s in range(100) if {"water_spot", "fingerprint"} <= {
        d.kind for d in generate_sample(s, other_cfg.stage.roi_grid.extent_mm, 1.0,
                                        glass=OTHER).objects})
    (sample, path), = simulate_samples(other_cfg, 1, tmp_path, seed=seed, scratch_share=1.0,
                                       shape=(32, 32), progress=False)
    truth = open_sample(path).truth()
    assert truth.sample_id == sample.sample_id == f"OFG{seed:08d}"
    assert [(d.kind, d.seed, d.profile, d.width_um) for d in truth.objects] == [
        (d.kind, d.seed, d.profile, d.width_um) for d in sample.objects]
    labels = from_truth(truth)
    back = parse_labels(json.loads(json.dumps(labels.to_dict())))
    assert not back.clean and len(back.scratches) == len(truth.scratches)
    kinds = [c.kind for c in back.contaminants]
    assert "water_spot" in kinds and "fingerprint" in kinds


def test_head_file_loads_and_draws_the_other_glass(other_cfg, cfg, capsys):
    assert main(["config", "check", str(HEAD)]) == 0
    assert "other-factory-head" in capsys.readouterr().out
    a, b = cfg.simulation, other_cfg.simulation
    assert b.glass == OTHER
    assert b.conversion_gain_dn_per_e / a.conversion_gain_dn_per_e == pytest.approx(1.6)
    assert b.read_noise_dn / a.read_noise_dn == pytest.approx(2.0)
    assert b.background_dn > a.background_dn
    # the simulated stage's glass loader and the held-out sets draw the head's population
    assert SimGlass(None, other_cfg).random(3).sample_id == "OFG00000003"
    assert SimGlass(None, cfg).random(3).sample_id == "SIM00000003"
    assert must_fail_seeds(0, 5, other_cfg) == [0, 2, 3, 5, 6]
    assert must_fail_seeds(0, 5, cfg) == [1, 2, 3, 4, 5]
