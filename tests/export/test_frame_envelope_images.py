"""``export frame-envelope --images``: a classifier fine-tuned on a user's own frames takes
their statistics into its envelope and their noise into its own noise limits (issue 29)."""

import json
import math
import re
import shutil

import numpy as np
import pytest
import tifffile

from edge.cli import main
from edge.darkfield import noise
from edge.darkfield.frame_prep import FramePrep, PrepError
from tests.edge.darkfield.test_frame_envelope import FUSION, _frame


def test_a_model_says_its_own_noise_limits_or_the_camera_models():
    assert noise.limits_of({}) == noise.CAMERA_MODEL
    assert noise.limits_of({"noise_limits": '{"limits": [0.4, 7.5], "as_is": [2, 7.5]}'}) \
        == noise.NoiseLimits((0.4, 7.5), (2.0, 7.5))
    for text, fault in [('{"limits": [3, 7]}', "around the camera model"),
                        ('{"limits": [0.5, 7], "as_is": [2, 8]}', "holding the as-is range"),
                        ('{"limits": [0.5]}', "cannot be read"), ("[", "cannot be read"),
                        ('{"limits": [0.5, NaN]}', "around the camera model")]:
        with pytest.raises(noise.NoiseError, match=fault):
            noise.limits_of({"noise_limits": text})
    with pytest.raises(PrepError, match="the model x.onnx: its noise_limits metadata"):
        FramePrep.for_model({"noise_limits": "[1]"}, "the model x.onnx")
    own = noise.NoiseLimits((0.5, 8.0), (2.0, 8.0))
    assert noise.check(3.0, own) is False and noise.check(1.5, own) is True
    assert noise.check(1.02) is False and noise.check(1.5) is True
    with pytest.raises(noise.NoiseError, match="expected 0.5-2"):
        noise.check(3.0)


def test_the_noise_limits_cover_the_images_with_a_margin_and_never_shrink():
    from export.frame_envelope_fit import NOISE_MARGIN, noise_limits

    assert noise_limits([]) == noise.CAMERA_MODEL
    assert noise_limits([1.0, 1.5]) == noise.CAMERA_MODEL  # matched, as training matched them
    n = noise_limits([1.2, 2.13, 5.92])
    assert n.limits[0] == noise.LIMITS[0] and math.isclose(n.limits[1], 5.92 * NOISE_MARGIN,
                                                           rel_tol=1e-3)
    assert n.as_is == (noise.LIMITS[1], n.limits[1])
    assert noise_limits([3.0, 4.0]).as_is[0] == 3.0 / NOISE_MARGIN


def _noisy(seed: int) -> np.ndarray:
    """A 512 px frame of another camera: grain in its haze and white noise 2.5 x the model's."""
    raw = _frame(seed, grain=0.03)[0].astype(np.float32)
    raw += np.random.default_rng(seed).normal(0.0, 20.0, raw.shape).astype(np.float32)
    return np.clip(np.rint(raw), 0, 4095).astype(np.uint16)


@pytest.mark.slow
def test_a_grainy_frame_refused_before_is_judged_once_its_images_are_fitted(tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    own = tmp_path / "own"
    own.mkdir()
    for k in range(2):
        tifffile.imwrite(own / f"grainy-{k}.tif", _noisy(611_300 + k))
    probe = tmp_path / "probe.tif"
    tifffile.imwrite(probe, _noisy(611_310))
    model = tmp_path / "fusion.onnx"
    shutil.copy(FUSION, model)

    def classify() -> str:
        main(["classify", "--quiet", "--threads", "1", "--bit-depth", "12", "--model",
              str(model), str(probe)])
        return capsys.readouterr().out

    assert re.search(r"probe.tif: ERROR", classify())
    rc = main(["export", "frame-envelope", str(model), "--frames", "1", "--threads", "1",
               "--images", str(own), "--bit-depth", "12", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"with 2 of your own frames .*; noise 0.5-[\d.]+ x the camera model "
                     r"accepted, [\d.]+-[\d.]+ taken as it comes", out)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    limits = json.loads(meta["noise_limits"])
    assert limits["limits"][1] > noise.LIMITS[1]
    assert limits["images"] == ["grainy-0.tif", "grainy-1.tif"]
    assert json.loads(meta["frame_envelope"])["measured"]["images"] == limits["images"]
    assert re.search(r"probe.tif: (PASS|FAIL)", classify())
    # a refit without the images gives the camera model's limits back
    assert main(["export", "frame-envelope", str(model), "--frames", "1", "--threads", "1",
                 "--quiet"]) == 0
    capsys.readouterr()
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert noise.limits_of(meta) == noise.CAMERA_MODEL
