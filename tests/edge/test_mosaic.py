"""``edge.darkfield.mosaic``: a Bayer mosaic's colour sites balanced to one response, noise
matched."""

import numpy as np
import pytest

from edge.darkfield.mosaic import (
    MIN_LEVEL_DN,
    MosaicError,
    balance,
    site_gains,
    sites,
)
from edge.darkfield.noise import REFERENCE_FULL_SCALE, Sensor

FS = REFERENCE_FULL_SCALE
CAMERA = Sensor(64 / FS, 2.5 / FS, 0.08 / FS)  # the simulated camera's figures
GAINS = np.array([[1.0, 0.6], [0.75, 1.0]])  # GRBG under white light: G R / B G


def box_mean(plane: np.ndarray, size: int = 15) -> np.ndarray:
    """The reference local level: the mean over the ``size`` x ``size`` square around each
    pixel, near the borders over the pixels inside (float32, the plane's shape)."""
    out = plane.astype(np.float64)
    half = size // 2
    for axis in (0, 1):
        n = out.shape[axis]
        c = np.cumsum(out, axis=axis)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        hi = np.minimum(np.arange(n) + half + 1, n)
        lo = np.maximum(np.arange(n) - half, 0)
        count = (hi - lo).astype(np.float64)
        shape = [1, 1]
        shape[axis] = n
        out = (np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)) / count.reshape(shape)
    return out.astype(np.float32)


def _flat_mosaic(level_dn: float, shape=(512, 512), seed=0, gains=GAINS) -> np.ndarray:
    """A flat haze of ``level_dn`` above black (at gain 1) with the camera's Poisson-Gaussian
    noise on every site, scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    signal = np.tile(gains, (shape[0] // 2, shape[1] // 2)) * level_dn
    sigma = np.sqrt(2.5 ** 2 + 0.08 * signal)
    return ((64 + signal + rng.normal(0, 1, shape) * sigma) / FS).astype(np.float32)


def test_gains_are_each_sites_level_over_the_brightest_and_need_no_pattern():
    pix = _flat_mosaic(600)
    assert site_gains(pix, CAMERA.black) == pytest.approx(GAINS, abs=0.005)
    # another pattern (RGGB) is only another place for the same sites
    rggb = np.array([[0.6, 1.0], [1.0, 0.75]])
    assert site_gains(_flat_mosaic(600, gains=rggb), CAMERA.black) == pytest.approx(rggb, abs=0.005)


def test_dust_and_a_scratch_do_not_move_the_gains():
    pix = _flat_mosaic(600)
    pix[100:140, 100:140] = 1.0  # saturated dust
    pix[300, :] += 200 / FS  # a bright scratch along a row of G and R sites
    assert site_gains(pix, CAMERA.black) == pytest.approx(GAINS, abs=0.01)


def test_a_frame_too_dark_or_odd_is_refused_with_what_was_expected():
    dark = _flat_mosaic(MIN_LEVEL_DN * 0.8)  # R sites at 0.48 of it
    with pytest.raises(MosaicError, match=r"too dark to balance its Bayer colour sites: their "
                                          r"median levels stand .* DN \(12-bit\) above black; "
                                          r"expected at least 20 DN on every site"):
        site_gains(dark, CAMERA.black)
    with pytest.raises(MosaicError, match=r"even height and width, got 512 x 511 px \(width x"):
        site_gains(_flat_mosaic(600)[:511], CAMERA.black)
    nan = _flat_mosaic(600)
    nan[::2, 1::2] = np.nan
    with pytest.raises(MosaicError, match="too dark"):
        site_gains(nan, CAMERA.black)


def test_balanced_sites_have_the_level_and_the_noise_of_the_brightest():
    level = 600.0
    pix = _flat_mosaic(level)
    out = balance(pix, site_gains(pix, CAMERA.black), CAMERA)
    g_sigma = np.sqrt(2.5 ** 2 + 0.08 * level)
    for k, s in enumerate(sites(out * FS)):
        assert float(s.mean()) == pytest.approx(64 + level, abs=1.0), k
        assert float(s.std()) == pytest.approx(g_sigma, rel=0.03), k
    # the brightest sites are left as they are
    assert np.array_equal(out[1::2, 1::2], pix[1::2, 1::2])
    # scaling by 1 / gain alone would leave R 1.29 times noisier than G: the check can fail
    naive_r = (pix[0::2, 1::2] * FS - 64) / 0.6
    assert float(naive_r.std()) > 1.2 * g_sigma


def test_a_scratch_keeps_its_signal_to_noise_on_every_site():
    level, scratch = 600.0, 12.0  # a faint scratch of 12 DN at gain 1, on rows 200-201
    rng = np.random.default_rng(3)
    signal = np.tile(GAINS, (256, 256)) * level
    signal[200:202, :] += np.tile(GAINS, (1, 256)) * scratch
    pix = ((64 + signal + rng.normal(0, 1, signal.shape) * np.sqrt(2.5 ** 2 + 0.08 * signal))
           / FS).astype(np.float32)
    out = balance(pix, GAINS, CAMERA) * FS
    for r, c in ((0, 1), (1, 0)):  # R and B sites: their own signal-to-noise, in G's noise
        raw = pix * FS
        raw_snr = (raw[200 + r, c::2].mean() - raw[100 + r, c::2].mean()) / raw[100 + r, c::2].std()
        bal_snr = (out[200 + r, c::2].mean() - out[100 + r, c::2].mean()) / out[100 + r, c::2].std()
        assert bal_snr == pytest.approx(raw_snr, rel=0.1)
        expected = GAINS[r, c] * scratch / np.sqrt(2.5 ** 2 + 0.08 * GAINS[r, c] * level)
        assert raw_snr == pytest.approx(expected, rel=0.15)


def test_saturation_stays_at_full_scale():
    pix = _flat_mosaic(600)
    pix[10:20, 10:20] = 1.0
    pix[40, 41] = 0.9  # an R pixel that a grey sensor would have saturated on (0.9 / 0.6)
    out = balance(pix, GAINS, CAMERA)
    assert np.all(out[10:20, 10:20] == 1.0) and out[40, 41] == 1.0
    assert out.max() <= 1.0 and out.dtype == np.float32 and out.shape == pix.shape


@pytest.mark.parametrize("shape, size", [((7, 9), 3), ((20, 13), 15), ((1, 5), 5)])
def test_box_mean_is_the_mean_of_the_pixels_inside_the_square(shape, size):
    plane = np.random.default_rng(1).random(shape).astype(np.float32)
    half = size // 2
    expected = np.empty(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            expected[i, j] = plane[max(0, i - half):i + half + 1,
                                   max(0, j - half):j + half + 1].mean()
    assert box_mean(plane, size) == pytest.approx(expected, abs=1e-6)


def _reference_balance(pixels, gains, sensor):
    """The balance written plainly: numpy, box_mean, the module docstring's formula."""
    out = pixels.astype(np.float64)
    for (r, c), g in np.ndenumerate(gains):
        plane = pixels[r::2, c::2].astype(np.float64)
        level = box_mean(plane).astype(np.float64)
        above = level - sensor.black
        ratio = (np.sqrt(sensor.read ** 2 + sensor.gain * np.maximum(above / g, 0))
                 / np.sqrt(sensor.read ** 2 + sensor.gain * np.maximum(above, 0)))
        out[r::2, c::2] = np.where(plane >= 1.0, 1.0, sensor.black + above / g
                                   + (plane - level) * ratio)
    return np.minimum(out, 1.0)


@pytest.mark.parametrize("shape", [(512, 512), (30, 46), (8, 40), (2, 2)])
def test_the_kernel_balances_as_the_plain_formula_does(shape):
    pix = _flat_mosaic(300, shape=shape, seed=sum(shape))
    pix[0, 1] = 1.0  # saturated
    pix[-1, -2] = 0.95
    gains = np.array([[0.98, 0.6], [0.75, 1.0]], np.float32)
    got = balance(pix, gains, CAMERA)
    assert got == pytest.approx(_reference_balance(pix, gains, CAMERA), abs=2e-6)
