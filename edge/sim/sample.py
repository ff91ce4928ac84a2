"""A seeded generator of random glass samples (ground truth: :mod:`edge.truth`).

Every random detail of an object (its angular lobes, its brightness along the length, the shape
of a stain) is drawn from the object's own ``seed``, so the same object renders identically in
two overlapping RoIs; :mod:`edge.sim.optics` renders a sample through the simulated optics.

Distributions (choices; the glass paper gives sizes, not distributions):

* scratches: length log-uniform 0.05-70 mm (a few pixels to longer than an RoI), apparent width
  11-34 um (1-3 px at 11.4 um/px), peak signal log-uniform 8-2500 DN at the reference exposure
  (8 DN is about 3.5 x the read noise: just visible), straight or a gentle arc, one in four with a
  "rugged" profile; a sample has scratches with probability ``scratch_share`` (paper: ~30 %),
  then 1 + Poisson(0.7) of them;
* dust: Poisson(25) points, 15-120 um, 300-30000 DN (most saturate);
* stains: Poisson(2) diffuse blobs 0.3-3 mm, 15-1500 DN;
* fibres: Poisson(0.8) curved threads 0.3-5 mm long, 30-90 um wide, 100-3000 DN.

That is the *default* population, the only glass any shipped network was trained on. The
*other-factory* population (``glass="other-factory"``, a head's ``[simulation] glass``) stands in
for a customer's plant whose glass the training never saw, to show that a fine-tune on a few
labelled samples can recover the rates (issue 31). Its choices:

* scratches: the same lengths, shapes and share, but wider, fainter and otherwise shaped:
  apparent width 35-80 um (3-7 px), peak log-uniform 6-600 DN, three in five "polished" (a
  double-edged cross-section, two walls over a faint flat floor, with a broader angular lobe)
  and the rest "rugged"; never the training's plain "triangular";
* dust, stains and fibres as in the default population;
* water spots, Poisson(1.5): drying rings 0.4-3 mm across, ring peak log-uniform 20-600 DN, a
  faint fill inside;
* a fingerprint with probability 0.5: an oval patch 6-14 mm long of roughly parallel curved
  ridges 0.4-0.5 mm apart (about 13-40 of them: the length over the spacing), the brightest
  ridge log-uniform 8-60 DN.

The default population draws exactly what it drew before the other existed (seeds, tests and
cached score maps rely on it). The other population draws from a stream of its own (the seed
sequence ``[seed, 1]``), so that its sample of a seed shares nothing with the default sample of
that seed: without it the two would put the same scratches at the same places, and a default
seed that served training would leak geometry into an other-factory evaluation of that seed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from edge.truth import GlassObject, Sample

if TYPE_CHECKING:
    from edge.config import HeadConfig

GLASS = ("default", "other-factory")  # the glass populations (edge.config.Simulation.glass)

# Curved defects are stored as polylines with vertices at most this far apart: fine enough
# that a 3 px wide line shows no facets, coarse enough that a 70 mm scratch has < 1000 vertices.
VERTEX_SPACING_MM = 0.1


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _resample(points: np.ndarray) -> np.ndarray:
    """Insert vertices so that no segment is longer than VERTEX_SPACING_MM."""
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:], strict=True):
        n = max(1, math.ceil(float(np.hypot(*(b - a))) / VERTEX_SPACING_MM))
        t = np.arange(1, n + 1)[:, None] / n
        out.append(a + (b - a) * t)
    return np.concatenate(out)


def arc(start: tuple[float, float], angle_deg: float, length_mm: float,
        turn_deg: float = 0.0) -> np.ndarray:
    """A straight line (``turn_deg`` 0) or circular arc turning by ``turn_deg`` over its length."""
    n = max(2, math.ceil(length_mm / VERTEX_SPACING_MM) + 1)
    s = np.linspace(0.0, length_mm, n)
    heading = math.radians(angle_deg) + math.radians(turn_deg) * s / max(length_mm, 1e-12)
    # integrate the heading along the arc length (trapezoid on a fine grid is exact enough)
    dx, dy = np.cos(heading), np.sin(heading)
    ds = np.diff(s)
    x = np.concatenate([[0.0], np.cumsum((dx[1:] + dx[:-1]) * 0.5 * ds)])
    y = np.concatenate([[0.0], np.cumsum((dy[1:] + dy[:-1]) * 0.5 * ds)])
    return np.stack([x + start[0], y + start[1]], axis=1)


def _wander(rng: np.random.Generator, start: np.ndarray, length_mm: float,
            stiffness_mm: float) -> np.ndarray:
    """A thread's centre line: a heading that drifts smoothly along the length."""
    n = max(3, math.ceil(length_mm / VERTEX_SPACING_MM) + 1)
    step = length_mm / (n - 1)
    turn = rng.normal(0.0, math.sqrt(step / stiffness_mm), n - 1)
    heading = rng.uniform(0, 2 * math.pi) + np.cumsum(np.convolve(turn, np.ones(5) / 5, "same"))
    xy = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * step, axis=0)
    return np.concatenate([start[None], start + xy])


def _points(arr: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in arr)


def _scratch(rng: np.random.Generator, extent_mm: tuple[float, float],
             width_um: tuple[float, float], peak_dn: tuple[float, float],
             profile: tuple[str, float, str]) -> GlassObject:
    """A scratch of any population: lengths and shapes alike, width (uniform) and peak
    (log-uniform) from its ranges, ``profile`` (first, its share, else second). The draws come
    in one order for every population, so the default's samples stay what they were."""
    length = _log_uniform(rng, 0.05, 70.0)
    start = (rng.uniform(0, extent_mm[0]), rng.uniform(0, extent_mm[1]))
    turn = 0.0 if rng.random() < 0.5 else rng.uniform(-60, 60)
    pts = arc(start, rng.uniform(0, 360), length, turn)
    first, share, other = profile
    return GlassObject(
        kind="scratch",
        points_mm=_points(pts),
        width_um=rng.uniform(*width_um),
        intensity_dn=_log_uniform(rng, *peak_dn),
        seed=int(rng.integers(2**31)),
        profile=first if rng.random() < share else other,
    )


def make_scratch(rng: np.random.Generator, extent_mm: tuple[float, float]) -> GlassObject:
    return _scratch(rng, extent_mm, (11.0, 34.0), (8.0, 2500.0), ("rugged", 0.25, "triangular"))


def make_dust(rng: np.random.Generator, extent_mm: tuple[float, float]) -> GlassObject:
    return GlassObject(
        kind="dust",
        points_mm=((rng.uniform(0, extent_mm[0]), rng.uniform(0, extent_mm[1])),),
        width_um=_log_uniform(rng, 15.0, 120.0),
        intensity_dn=_log_uniform(rng, 300.0, 30000.0),
        seed=int(rng.integers(2**31)),
    )


def make_stain(rng: np.random.Generator, extent_mm: tuple[float, float]) -> GlassObject:
    return GlassObject(
        kind="stain",
        points_mm=((rng.uniform(0, extent_mm[0]), rng.uniform(0, extent_mm[1])),),
        width_um=_log_uniform(rng, 300.0, 3000.0),
        intensity_dn=_log_uniform(rng, 15.0, 1500.0),
        seed=int(rng.integers(2**31)),
    )


def make_fibre(rng: np.random.Generator, extent_mm: tuple[float, float]) -> GlassObject:
    start = np.array([rng.uniform(0, extent_mm[0]), rng.uniform(0, extent_mm[1])])
    pts = _wander(rng, start, _log_uniform(rng, 0.3, 5.0), stiffness_mm=rng.uniform(0.3, 3.0))
    return GlassObject(
        kind="fibre",
        points_mm=_points(_resample(pts)),
        width_um=rng.uniform(30.0, 90.0),
        intensity_dn=_log_uniform(rng, 100.0, 3000.0),
        seed=int(rng.integers(2**31)),
    )


def make_other_scratch(rng: np.random.Generator, extent_mm: tuple[float, float]) -> GlassObject:
    """A scratch of the other factory: the default's lengths and shapes, its own width, peak
    and profile."""
    return _scratch(rng, extent_mm, (35.0, 80.0), (6.0, 600.0), ("polished", 0.6, "rugged"))


def make_water_spot(rng: np.random.Generator, extent_mm: tuple[float, float]) -> GlassObject:
    return GlassObject(
        kind="water_spot",
        points_mm=((rng.uniform(0, extent_mm[0]), rng.uniform(0, extent_mm[1])),),
        width_um=_log_uniform(rng, 400.0, 3000.0),
        intensity_dn=_log_uniform(rng, 20.0, 600.0),
        seed=int(rng.integers(2**31)),
    )


def make_fingerprint(rng: np.random.Generator, extent_mm: tuple[float, float]) -> GlassObject:
    return GlassObject(
        kind="fingerprint",
        points_mm=((rng.uniform(0, extent_mm[0]), rng.uniform(0, extent_mm[1])),),
        width_um=rng.uniform(6000.0, 14000.0),
        intensity_dn=_log_uniform(rng, 8.0, 60.0),
        seed=int(rng.integers(2**31)),
    )


def head_glass(cfg: HeadConfig) -> str:
    """The glass population a head's simulation draws (its ``[simulation] glass``); a head
    without a simulation: the default."""
    return cfg.simulation.glass if cfg.simulation is not None else "default"


def generate_sample(seed: int, extent_mm: tuple[float, float], scratch_share: float = 0.3,
                    sample_id: str | None = None, *, glass: str = "default") -> Sample:
    """A random glass sample of the population ``glass`` (:data:`GLASS`); the same seed and
    population give the same sample. Ids are ``SIM`` (default) or ``OFG`` (other factory) and
    the seed, so the two populations' samples never share an id."""
    if not 0.0 <= scratch_share <= 1.0:
        raise ValueError(f"scratch_share must be within [0, 1], got {scratch_share}")
    if glass not in GLASS:
        raise ValueError(f"glass population {glass!r}: expected one of {', '.join(GLASS)}")
    other = glass == "other-factory"
    scratch = make_other_scratch if other else make_scratch
    rng = np.random.default_rng([seed, 1] if other else seed)
    objects: list[GlassObject] = []
    if rng.random() < scratch_share:
        objects += [scratch(rng, extent_mm) for _ in range(1 + min(4, rng.poisson(0.7)))]
    objects += [make_dust(rng, extent_mm) for _ in range(rng.poisson(25))]
    objects += [make_stain(rng, extent_mm) for _ in range(rng.poisson(2.0))]
    objects += [make_fibre(rng, extent_mm) for _ in range(rng.poisson(0.8))]
    if other:
        objects += [make_water_spot(rng, extent_mm) for _ in range(rng.poisson(1.5))]
        if rng.random() < 0.5:
            objects.append(make_fingerprint(rng, extent_mm))
    return Sample(
        sample_id=sample_id or f"{'OFG' if other else 'SIM'}{seed:08d}",
        extent_mm=(float(extent_mm[0]), float(extent_mm[1])),
        objects=tuple(objects),
        seed=seed,
    )
