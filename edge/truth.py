"""Ground truth: what lies on a piece of cover glass, in sample millimetres.

A :class:`Sample` is a glass sample's id, the area the RoI grid covers, and the objects on it:
scratches (what the product looks for) and the hard negatives that look like them in a single
dark-field image (dust, stains, fibres; on the other factory's glass, :mod:`edge.sim.sample`,
also water spots and fingerprints), each a :class:`GlassObject`. It says nothing about
pixels. The optics simulator renders it, a recorded sample may carry it (``truth.json``), and the
evaluation and the command line compare verdicts with it; none of them owns it, so the runtime
can read a recording's truth without importing the simulator.

A found scratch is an :class:`edge.verdict.Defect`; a ground-truth object is a
:class:`GlassObject`; the two never mix. In ``truth.json`` the objects stay under the key
``defects`` (recorded-sample format version 1).

Coordinates are millimetres on the sample, x to the right and y down (image orientation), with
(0, 0) at the top-left corner of the area the RoI grid covers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Kind = Literal["scratch", "dust", "stain", "fibre", "water_spot", "fingerprint"]
KINDS: tuple[str, ...] = ("scratch", "dust", "stain", "fibre", "water_spot", "fingerprint")
PROFILES = ("triangular", "rugged", "polished", "")
# Objects given by a centre and a diameter whose whole area scatters (a drying ring, the ridges
# of a fingerprint): they reach half their diameter from the centre.
AREA_KINDS = ("water_spot", "fingerprint")
# how a plural reads in Sample.describe; kinds of the other factory only when present
_PLURAL = {"scratch": "scratches", "dust": "dust specks", "stain": "stains", "fibre": "fibres",
           "water_spot": "water spots", "fingerprint": "fingerprints"}


@dataclass(frozen=True)
class GlassObject:
    """One object on the glass: a scratch, or dust, a stain, a fibre, a water spot or a
    fingerprint that looks like one.

    ``points_mm`` is the centre line (scratch, fibre) or the centre (dust, stain, water spot,
    fingerprint: one point). ``width_um`` is the apparent width of a line (FWHM through the
    optics), the diameter of a blob or a water spot's ring, or the long axis of a fingerprint's
    oval. ``intensity_dn`` is the peak scattered signal, in DN of the green channel at the
    reference exposure, for the best illumination direction (a fingerprint: of its brightest
    ridge). Shapes beyond these (a stain's parts, a ring's wobble, a fingerprint's ridges)
    follow from ``seed`` (:mod:`edge.sim.optics`).
    """

    kind: Kind
    points_mm: tuple[tuple[float, float], ...]
    width_um: float
    intensity_dn: float
    seed: int
    profile: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"defect kind {self.kind!r}: expected one of {KINDS}")
        if self.profile not in PROFILES:
            raise ValueError(f"scratch profile {self.profile!r}: expected one of {PROFILES}")
        if len(self.points_mm) < (2 if self.kind in ("scratch", "fibre") else 1):
            raise ValueError(f"a {self.kind} needs more points, got {len(self.points_mm)}")
        if not (self.width_um > 0 and self.intensity_dn > 0):
            raise ValueError(f"{self.kind}: width_um and intensity_dn must be positive")

    @property
    def points(self) -> np.ndarray:
        return np.asarray(self.points_mm, dtype=np.float64)

    @property
    def length_mm(self) -> float:
        p = self.points
        return float(np.hypot(*np.diff(p, axis=0).T).sum()) if len(p) > 1 else 0.0

    def bounds_mm(self, pad_mm: float = 0.0) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 of where the defect visibly lies, widened by ``pad_mm``."""
        p = self.points
        # a stain's Gaussians spread to about 0.6 diameters from its centre (see optics); a
        # ring or a fingerprint's oval (whose ridges stay inside it) to half its diameter
        share = {"stain": 0.6, "water_spot": 0.5, "fingerprint": 0.5}.get(self.kind, 1.0)
        reach = self.width_um * 1e-3 * share + pad_mm
        return (p[:, 0].min() - reach, p[:, 1].min() - reach,
                p[:, 0].max() + reach, p[:, 1].max() + reach)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "points_mm": [[round(x, 6), round(y, 6)] for x, y in self.points_mm],
            "width_um": self.width_um,
            "intensity_dn": self.intensity_dn,
            "seed": self.seed,
            "profile": self.profile,
        }

    @classmethod
    def from_dict(cls, d: dict) -> GlassObject:
        return cls(
            kind=d["kind"],
            points_mm=tuple((float(x), float(y)) for x, y in d["points_mm"]),
            width_um=float(d["width_um"]),
            intensity_dn=float(d["intensity_dn"]),
            seed=int(d["seed"]),
            profile=str(d.get("profile", "")),
        )


@dataclass(frozen=True)
class Sample:
    """A piece of cover glass: its id, the area the grid covers, and what lies on it."""

    sample_id: str
    extent_mm: tuple[float, float]
    objects: tuple[GlassObject, ...] = field(default_factory=tuple)
    seed: int = 0

    @property
    def scratches(self) -> tuple[GlassObject, ...]:
        return tuple(d for d in self.objects if d.kind == "scratch")

    @property
    def has_scratch(self) -> bool:
        return bool(self.scratches)

    def describe(self) -> str:
        """What lies on the glass, in words: "1 scratches, 23 dust specks, ..."; water spots
        and fingerprints only where there are some."""
        count = {k: sum(d.kind == k for d in self.objects) for k in _PLURAL}
        return ", ".join(f"{n} {_PLURAL[k]}" for k, n in count.items()
                         if n or k not in AREA_KINDS)

    def to_dict(self) -> dict:
        return {
            "sample_id": self.sample_id,
            "seed": self.seed,
            "extent_mm": list(self.extent_mm),
            "defects": [d.to_dict() for d in self.objects],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Sample:
        return cls(
            sample_id=str(d["sample_id"]),
            extent_mm=(float(d["extent_mm"][0]), float(d["extent_mm"][1])),
            objects=tuple(GlassObject.from_dict(x) for x in d["defects"]),
            seed=int(d.get("seed", 0)),
        )


def agreement(flagged: bool | None, truth: Sample,
              min_length_mm: float = 0.0) -> tuple[str, bool | None]:
    """The ground truth in words, and whether a verdict agrees with it under the reject rule.

    ``flagged`` is the verdict's answer (True: FAIL, False: PASS, None: ERROR, which is neither
    right nor wrong). Returns e.g. ``("1 scratch (18.2 mm) -> MISSED", False)``. A sample whose
    scratches are all shorter than ``min_length_mm`` may pass or fail (the evaluation counts it
    neither way): either verdict agrees.
    """
    lengths = sorted((d.length_mm for d in truth.scratches), reverse=True)
    said = (f"{len(lengths)} scratch{'es' if len(lengths) != 1 else ''} "
            f"({', '.join(f'{x:.1f}' for x in lengths)} mm)" if lengths else "no scratch")
    if flagged is None:
        return said, None
    if lengths and lengths[0] < min_length_mm:
        return f"{said}, shorter than the reject rule's {min_length_mm:g} mm -> agrees", True
    ok = flagged == bool(lengths)
    judged = "agrees" if ok else ("MISSED" if lengths else "FALSE ALARM")
    return f"{said} -> {judged}", ok
