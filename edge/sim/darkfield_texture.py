"""Real-glass textures for the single-image dark-field frames of :mod:`edge.sim.darkfield`.

Why: real dark-field frames of scratched optics (a public set of 57 images, 512 x 512, 8 bits)
carry texture the plain renderer never drew: strong multiplicative grain/speckle inside the haze
(bright and dark, about 3-10 px), a two-tap seam down the middle, dark pits, dust clusters,
glare spots, a dark last row, noise 1.26-1.34 x the model camera's and 8-bit levels. A classifier
trained without them flagged every window of those frames (issue 29). This module draws such
texture per frame from the seed and renders it; ``DarkfieldConfig.texture`` selects it.

Families (``DarkfieldConfig.texture``; ranges drawn per frame, DN at 12 bits):

* ``none`` (default): no texture; the frames are byte for byte those rendered before textures.
* ``grain``: multiplicative log-normal grain in the haze, ``exp(s z - s**2 / 2)`` with ``z``
  white noise smoothed by a Gaussian and scaled to unit variance. Grain size ``d`` (the FWHM of
  the field's autocorrelation, :data:`GAUSS_FWHM` times the smoothing sigma) log-uniform
  2-10 px; strength ``s`` (std of the log gain) log-uniform 0.005-0.8, from under the noise of a
  bright haze to stronger than the real set's. With probability 0.4 a second, independent layer
  (``d`` 2-10 px, ``s`` 0.005-0.3) multiplies the first. Only the haze is modulated, so the
  grain is strong where the haze is bright and fades where it is dark.
* ``pits``: dark spots in the haze, 1 + Poisson(10-400 per megapixel), Gaussian sigma
  0.6-2.5 px, removing 30-95 % of the haze at the centre (overlaps capped at 95 %).
* ``glare``: soft bright blobs, 1 + Poisson(2-12 per megapixel), sigma log-uniform 6-40 px,
  peak log-uniform 10-150 % of the haze where they sit.
* ``dust``: dense dust clusters beside the renderer's own sparse dust, 1 + Poisson(2-15 per
  megapixel) clusters of 5-40 specks (offsets normal, spread log-uniform 4-25 px), each speck
  sigma log-uniform 0.6-2.5 px, peak log-uniform 5-600 DN, lit by the field like the rest.
* ``seam``: a second two-tap step on top of ``tap_gain_ratio``: columns from one uniform in
  45-55 % of the width take a gain log-uniform 0.92-1.08 and an offset uniform -40..+40 DN.
* ``lines``: dark rows and columns (a readout fault, applied to the whole value, black level
  included): the last row with probability 0.6 (gain 0-0.3), the first row and the first and
  last columns each with 0.2 (gain 0-0.3), and Poisson(1) interior rows or columns (gain
  0.3-0.85), at least one of them.
* ``quantised``: the frame as an 8-bit camera gives it: rounded to 256 levels and promoted to
  ``bit_depth`` by ``2 ** (bit_depth - 8)`` (nothing to do in 8-bit frames).
* ``noise``: read and shot noise sigma times a factor log-uniform 0.7-1.8.
* ``mixed``: the training mix. Each element above is drawn independently with its ranges:
  grain 0.75, pits 0.5, glare 0.35, dust 0.35, seam 0.5, lines 0.4, quantised 0.3, noise 0.6;
  about 0.4 % of frames get none.
* ``heldout``: the stand-in for an unseen camera, NEVER drawn by ``mixed`` or any other family:
  coherent speckle through a circular pupil (:func:`pupil_speckle`: a complex Gaussian field
  band-limited to a disc, intensity normalised to mean 1, so exponentially distributed with a
  sharp spectral cut-off: a different generator from the log-normal grain), speckle size ``d``
  (FWHM of the intensity autocorrelation, as for the grain) uniform 6-10 px, blended as
  ``1 - a + a I`` with ``a`` uniform 0.55-0.85; a seam at exactly the middle column (gain
  log-uniform 0.93-1.07, offset uniform -40..+40 DN); a dark last row (gain 0-0.3); noise x
  1.26-1.34; 8-bit levels.

Truth: texture never changes the scratch mask. Grain and pits multiply the haze only, glare and
dust add light beside the scratches, so the scratch light is untouched; only the seam, a sensor
gain like the taps, scales it, and its gain is folded into the renderer's tap gain so that a
scratch's recorded peak stays what the frame shows. ``scratch_snr`` follows the textured haze
and the noise factor. Pits, glare and
dust are recorded as specks (``pit``, ``glare``, ``dust``): distractors, never scratches. The
frame's ``background`` carries the grain, the seam and the dark lines (the clean glass as this
camera shows it), not the distractors.

Streams: the texture is drawn from its own stream of the seed (the third child of the seed's
``SeedSequence``; scene and noise are the first two), so a seed keeps its scratches, dust and
field whatever the texture, and the same seed and family give the same frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy.ndimage import gaussian_filter

from edge.sim.optics import BLOCK_SHIFT, _draw_blob

ELEMENTS = ("grain", "pits", "glare", "dust", "seam", "lines", "quantised", "noise")
HELDOUT = "heldout"
TEXTURES = ("none", *ELEMENTS, "mixed", HELDOUT)
TRAINING_TEXTURES = tuple(t for t in TEXTURES if t != HELDOUT)
# chance of each element in a "mixed" frame
MIX_CHANCE = {"grain": 0.75, "pits": 0.5, "glare": 0.35, "dust": 0.35, "seam": 0.5,
              "lines": 0.4, "quantised": 0.3, "noise": 0.6}
QUANTISED_BITS = 8  # the real set's depth
MAX_PIT = 0.95  # overlapping pits leave some haze, as shadows do
TEXTURE_STREAM = 2  # spawn key of the texture stream; the renderer's scene and noise are 0 and 1
# autocorrelation FWHM per smoothing sigma of Gaussian-smoothed white noise: the correlation is a
# Gaussian of sigma sqrt(2) times the kernel's, FWHM 2 sqrt(2 ln 2) sqrt(2) sigma
GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0)) * math.sqrt(2.0)
# intensity autocorrelation FWHM times the pupil radius (cycles/px) of circular-pupil speckle:
# |2 J1(x) / x| ** 2 = 1/2 at x = 1.6163, x = 2 pi rho r, so FWHM = 1.6163 / (pi rho)
PUPIL_FWHM = 1.6163 / math.pi


@dataclass(frozen=True)
class Grain:
    kind: str  # "lognormal" (training) or "pupil" (held out)
    strength: float  # lognormal: std of the log gain; pupil: blend a of 1 - a + a I
    scale_px: float  # grain size: FWHM of the field's autocorrelation
    field_seed: int  # seeds the per-pixel field


@dataclass(frozen=True)
class Blob:
    x: float
    y: float
    sigma_px: float
    amplitude: float  # pits: share of haze removed; glare: share of the local haze; dust: DN12


@dataclass(frozen=True)
class Seam:
    column: int  # first column of the second tap
    gain: float
    offset_dn: float  # at 12 bits


@dataclass(frozen=True)
class Texture:
    """One frame's texture as drawn from its seed; :mod:`edge.sim.darkfield` renders it."""

    family: str
    grain: tuple[Grain, ...] = ()
    pits: tuple[Blob, ...] = ()
    glare: tuple[Blob, ...] = ()
    dust: tuple[Blob, ...] = ()
    seam: Seam | None = None
    dark_rows: tuple[tuple[int, float], ...] = ()  # (row, gain)
    dark_cols: tuple[tuple[int, float], ...] = ()  # (column, gain)
    quantise_bits: int | None = None
    noise_factor: float = 1.0

    @property
    def elements(self) -> tuple[str, ...]:
        """The elements present, by family name (``pupil`` for the held-out speckle)."""
        on = {"grain": any(g.kind == "lognormal" for g in self.grain),
              "pupil": any(g.kind == "pupil" for g in self.grain),
              "pits": bool(self.pits), "glare": bool(self.glare), "dust": bool(self.dust),
              "seam": self.seam is not None, "lines": bool(self.dark_rows or self.dark_cols),
              "quantised": self.quantise_bits is not None, "noise": self.noise_factor != 1.0}
        return tuple(k for k, v in on.items() if v)


def check_texture(name: object) -> str:
    if name not in TEXTURES:
        raise ValueError(f"texture must be one of {', '.join(TEXTURES)}, got {name!r}")
    return str(name)


def texture_rng(seed: int) -> np.random.Generator:
    """The texture stream of ``seed``: independent of the renderer's scene and noise streams."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(TEXTURE_STREAM,)))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def _field_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2 ** 63))


# -- drawing: one function per element, the ranges of the module docstring ---------------------
def _draw_grain(rng, shape) -> tuple[Grain, ...]:
    layers = [Grain("lognormal", _log_uniform(rng, 0.005, 0.8), _log_uniform(rng, 2.0, 10.0),
                    _field_seed(rng))]
    if rng.random() < 0.4:
        layers.append(Grain("lognormal", _log_uniform(rng, 0.005, 0.3),
                            _log_uniform(rng, 2.0, 10.0), _field_seed(rng)))
    return tuple(layers)


def _draw_pits(rng, shape) -> tuple[Blob, ...]:
    h, w = shape
    n = 1 + int(rng.poisson(_log_uniform(rng, 10.0, 400.0) * h * w / 1e6))
    return tuple(Blob(float(rng.uniform(0, w)), float(rng.uniform(0, h)),
                      float(rng.uniform(0.6, 2.5)), float(rng.uniform(0.3, 0.95)))
                 for _ in range(n))


def _draw_glare(rng, shape) -> tuple[Blob, ...]:
    h, w = shape
    n = 1 + int(rng.poisson(rng.uniform(2.0, 12.0) * h * w / 1e6))
    return tuple(Blob(float(rng.uniform(0, w)), float(rng.uniform(0, h)),
                      _log_uniform(rng, 6.0, 40.0), _log_uniform(rng, 0.1, 1.5))
                 for _ in range(n))


def _draw_dust(rng, shape) -> tuple[Blob, ...]:
    h, w = shape
    specks = []
    for _ in range(1 + int(rng.poisson(rng.uniform(2.0, 15.0) * h * w / 1e6))):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        spread = _log_uniform(rng, 4.0, 25.0)
        for _ in range(int(rng.integers(5, 41))):
            specks.append(Blob(float(x0 + rng.normal(0, spread)),
                               float(y0 + rng.normal(0, spread)),
                               _log_uniform(rng, 0.6, 2.5), _log_uniform(rng, 5.0, 600.0)))
    return tuple(specks)


def _draw_seam(rng, shape) -> Seam:
    w = shape[1]
    return Seam(int(round(w * rng.uniform(0.45, 0.55))), _log_uniform(rng, 0.92, 1.08),
                float(rng.uniform(-40.0, 40.0)))


def _draw_lines(rng, shape) -> tuple[tuple, tuple]:
    h, w = shape
    rows, cols = {}, {}
    if rng.random() < 0.6:
        rows[h - 1] = float(rng.uniform(0.0, 0.3))
    for lines, edge in ((rows, 0), (cols, 0), (cols, w - 1)):
        if rng.random() < 0.2:
            lines[edge] = float(rng.uniform(0.0, 0.3))
    interior = int(rng.poisson(1.0))
    for _ in range(interior if rows or cols else max(1, interior)):
        if rng.random() < 0.5:
            rows[int(rng.integers(1, h - 1))] = float(rng.uniform(0.3, 0.85))
        else:
            cols[int(rng.integers(1, w - 1))] = float(rng.uniform(0.3, 0.85))
    return tuple(sorted(rows.items())), tuple(sorted(cols.items()))


def _draw_heldout(rng, shape) -> Texture:
    h, w = shape
    speckle = Grain("pupil", float(rng.uniform(0.55, 0.85)), float(rng.uniform(6.0, 10.0)),
                    _field_seed(rng))
    seam = Seam(w // 2, _log_uniform(rng, 0.93, 1.07), float(rng.uniform(-40.0, 40.0)))
    return Texture(HELDOUT, grain=(speckle,), seam=seam,
                   dark_rows=((h - 1, float(rng.uniform(0.0, 0.3))),),
                   quantise_bits=QUANTISED_BITS, noise_factor=float(rng.uniform(1.26, 1.34)))


def _draw_elements(rng, shape, family: str, chosen: tuple[str, ...]) -> Texture:
    """The elements ``chosen``, drawn in the order of :data:`ELEMENTS`."""
    parts: dict = {}
    if "grain" in chosen:
        parts["grain"] = _draw_grain(rng, shape)
    if "pits" in chosen:
        parts["pits"] = _draw_pits(rng, shape)
    if "glare" in chosen:
        parts["glare"] = _draw_glare(rng, shape)
    if "dust" in chosen:
        parts["dust"] = _draw_dust(rng, shape)
    if "seam" in chosen:
        parts["seam"] = _draw_seam(rng, shape)
    if "lines" in chosen:
        parts["dark_rows"], parts["dark_cols"] = _draw_lines(rng, shape)
    if "quantised" in chosen:
        parts["quantise_bits"] = QUANTISED_BITS
    if "noise" in chosen:
        parts["noise_factor"] = _log_uniform(rng, 0.7, 1.8)
    return Texture(family, **parts)


def draw_texture(family: str, seed: int, shape: tuple[int, int]) -> Texture | None:
    """The texture of frame ``seed`` of ``shape`` in ``family``; None for ``none``."""
    check_texture(family)
    if family == "none":
        return None
    rng = texture_rng(seed)
    if family == HELDOUT:
        return _draw_heldout(rng, shape)
    if family == "mixed":
        chosen = tuple(e for e in ELEMENTS if rng.random() < MIX_CHANCE[e])
        return _draw_elements(rng, shape, family, chosen)
    return _draw_elements(rng, shape, family, (family,))


# -- rendering ---------------------------------------------------------------------------------
def lognormal_grain(shape: tuple[int, int], strength: float, size_px: float,
                    field_seed: int) -> np.ndarray:
    """Log-normal gain of mean 1: Gaussian-smoothed white noise at unit variance, exponentiated
    (a Gaussian power spectrum, no sharp cut-off; always positive, skewed to bright grains);
    ``size_px`` is the FWHM of the smoothed noise's autocorrelation."""
    z = np.random.default_rng(field_seed).standard_normal(shape, dtype=np.float32)
    z = gaussian_filter(z, size_px / GAUSS_FWHM, mode="wrap")
    z *= np.float32(1.0 / max(float(z.std()), 1e-12))
    return np.exp(np.float32(strength) * z - np.float32(0.5 * strength * strength))


def pupil_speckle(shape: tuple[int, int], size_px: float, field_seed: int) -> np.ndarray:
    """Fully developed coherent speckle of mean 1: the intensity of a complex Gaussian field
    whose spectrum fills a disc (a circular pupil) sized so the intensity autocorrelation's
    FWHM is ``size_px``; exponentially distributed, dark zeros included."""
    h, w = shape
    rng = np.random.default_rng(field_seed)
    fy = sfft.fftfreq(h).astype(np.float32)[:, None]
    fx = sfft.fftfreq(w).astype(np.float32)[None, :]
    pupil = (fx * fx + fy * fy) <= np.float32(PUPIL_FWHM / size_px) ** 2
    spec = np.zeros(shape, np.complex64)
    n = int(pupil.sum())
    spec[pupil] = (rng.standard_normal(n, dtype=np.float32)
                   + 1j * rng.standard_normal(n, dtype=np.float32))
    u = sfft.ifft2(spec, workers=1)
    inten = (u.real * u.real + u.imag * u.imag).astype(np.float32)
    return inten / np.float32(inten.mean())


def haze_gain(tex: Texture, shape: tuple[int, int]) -> np.ndarray | None:
    """The grain's multiplicative gain on the haze (mean about 1), or None without grain."""
    gain = None
    for g in tex.grain:
        if g.kind == "lognormal":
            layer = lognormal_grain(shape, g.strength, g.scale_px, g.field_seed)
        else:
            a = np.float32(g.strength)
            layer = np.float32(1.0) - a + a * pupil_speckle(shape, g.scale_px, g.field_seed)
        gain = layer if gain is None else gain * layer
    return gain


def _blobs(shape: tuple[int, int], blobs, amps) -> np.ndarray:
    h, w = shape
    out = np.zeros((1, h, w), np.float32)
    occ = np.zeros(((h >> BLOCK_SHIFT) + 1, (w >> BLOCK_SHIFT) + 1), np.uint8)
    for b, a in zip(blobs, amps, strict=True):
        _draw_blob(out, occ, b.x, b.y, b.sigma_px, np.array([a]))
    return out[0]


def pit_share(tex: Texture, shape: tuple[int, int]) -> np.ndarray | None:
    """Share of the haze the pits remove (capped at :data:`MAX_PIT`), or None without pits."""
    if not tex.pits:
        return None
    share = _blobs(shape, tex.pits, [p.amplitude for p in tex.pits])
    return np.minimum(share, np.float32(MAX_PIT))


def light_at(light: np.ndarray, x: float, y: float) -> float:
    """``light`` at the pixel nearest (x, y), clipped into the frame (a blob may sit off it)."""
    h, w = light.shape
    return float(light[min(h - 1, max(0, round(y))), min(w - 1, max(0, round(x)))])


def added_light(tex: Texture, light: np.ndarray, haze_dn: float, dust_dn: float
                ) -> tuple[np.ndarray | None, list[tuple[str, Blob, float]]]:
    """Glare and dust clusters in DN over the frame (None without either), and per blob its
    kind and peak as lit. ``light`` is the illumination field (1 at the optical centre);
    glare peaks are shares of the haze there (``haze_dn`` at the centre, the lit groups'),
    dust peaks DN12 times ``dust_dn`` (the depth's scale times the lit share) times the field
    there, as the renderer lights its own dust."""
    drawn = []
    for b in tex.glare:
        drawn.append(("glare", b, b.amplitude * haze_dn * light_at(light, b.x, b.y)))
    for b in tex.dust:
        drawn.append(("dust", b, b.amplitude * dust_dn * light_at(light, b.x, b.y)))
    if not drawn:
        return None, drawn
    return _blobs(light.shape, [d[1] for d in drawn], [d[2] for d in drawn]), drawn


def column_gain(tex: Texture, x: np.ndarray) -> np.ndarray:
    """The seam's gain at columns ``x`` (float px, may leave the frame); 1 without a seam."""
    if tex.seam is None:
        return np.ones_like(np.asarray(x, np.float64))
    return np.where(np.rint(x) >= tex.seam.column, tex.seam.gain, 1.0)


def apply_readout(tex: Texture, sig: np.ndarray, dn_scale: float, offset_dn: float) -> None:
    """In place, after noise and the tap gain: the seam's gain, the black level (``offset_dn``
    at the frame's depth) plus the seam's offset, then the dark lines over the whole value."""
    if tex.seam is not None:
        c = tex.seam.column
        sig[:, c:] *= np.float32(tex.seam.gain)
        sig[:, c:] += np.float32(tex.seam.offset_dn * dn_scale)
    sig += np.float32(offset_dn)
    for r, g in tex.dark_rows:
        sig[r, :] *= np.float32(g)
    for c, g in tex.dark_cols:
        sig[:, c] *= np.float32(g)


def quantise(tex: Texture, sig: np.ndarray, bit_depth: int) -> np.ndarray:
    """``sig`` (DN, black level included) rounded to the frame's DN, or to 8-bit levels
    promoted to ``bit_depth`` when the texture says so; clipped; uint16."""
    full = 2 ** bit_depth - 1
    bits = tex.quantise_bits
    if bits is None or bits >= bit_depth:
        return np.clip(sig + np.float32(0.5), 0.0, np.float32(full)).astype(np.uint16)
    step = np.float32(2 ** (bit_depth - bits))
    levels = np.clip(np.floor(sig / step + np.float32(0.5)), 0.0, np.float32(2 ** bits - 1))
    return (levels * step).astype(np.uint16)
