"""Training the window classifier on textured extra frames (issue 29, item 2)."""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("torch")

from edge.config import load  # noqa: E402
from edge.sim.darkfield import DarkfieldRenderer, frames_at  # noqa: E402
from model.train import Trainer, TrainSettings  # noqa: E402

BASE = dict(network="fusion", data="darkfield", width=0.125, frame_px=512, train_images=2,
            val_images=1, val_windows=4, batch_size=4, steps_per_epoch=1, epochs=1)


@pytest.mark.parametrize("texture, match", [
    ("heldout", "held-out family"),
    ("velvet", "extra_texture must be one of"),
])
def test_the_heldout_family_and_unknown_families_are_refused(texture, match):
    with pytest.raises(ValueError, match=match):
        TrainSettings(**BASE, extra_train_images=2, extra_texture=texture)


def test_a_texture_needs_extra_frames():
    with pytest.raises(ValueError, match="needs extra_train_images"):
        TrainSettings(**BASE, extra_texture="mixed")


def test_extra_frames_are_textured_and_the_papers_frames_are_not(tmp_path):
    s = TrainSettings(**BASE, extra_train_images=2, extra_texture="mixed")
    t = Trainer(s, load(), tmp_path, progress=False)
    plain, mixed = frames_at(512), frames_at(512, "mixed")
    for seed, cfg in [(0, plain), (1, plain), (100_000, mixed), (100_001, mixed)]:
        image, _ = t.sampler._frame(seed)
        np.testing.assert_array_equal(image, DarkfieldRenderer(cfg).render(seed).image)
    untextured = DarkfieldRenderer(plain).render(100_000).image
    assert not np.array_equal(t.sampler._frame(100_000)[0], untextured)
    windows = t.sampler.settings()
    assert windows["alt_config"]["texture"] == "mixed" and "texture" not in windows["config"]
    assert sorted(windows["alt_seeds"]) == [100_000, 100_001]
    # with the other extra-frame settings the texture goes to the same frames
    s2 = TrainSettings(**BASE, extra_train_images=1, extra_texture="grain",
                       extra_peak_dn=(3.0, 50.0))
    alt = Trainer(s2, load(), tmp_path / "b", progress=False).sampler.alt_config
    assert alt == dataclasses.replace(plain, texture="grain", scratch_peak_dn=(3.0, 50.0))
