"""Labels of recorded samples (``labels.json``, :mod:`edge.labels_sample`) as what training and
evaluation use: per RoI a pixel mask and the truth the evaluation counts against, and a patch
source that mixes labelled recorded windows with simulated ones.

Choices:

* **Geometry.** A label's points are sample millimetres in the head's coordinates; a RoI's
  pixels are placed by the recorded sample's own manifest (its ``mm_per_px`` and the RoI's
  ``origin_mm``), pixel centres at whole numbers, the head file's mapping
  (:meth:`edge.sim.optics.CameraGeometry.to_px` when the camera sits as the file says). A
  simulated head whose camera is mounted off (``scale_error``, ``rotation_deg``,
  ``origin_offset_mm``) renders its truth elsewhere; so does a real one, which is what
  labelling in the head's coordinates means.
* **Rasterisation.** The simulator's rule, as :func:`edge.darkfield.labels.scratch_mask` writes
  it for single frames: a pixel is scratch when its centre lies within
  ``max(0.71, 1.55 sigma)`` px of the centre line, ``sigma = max(0.5, width / 2.355)`` with the
  width in pixels of the RoI's mean footprint. The polyline is first cut into pieces of at most
  :data:`SEGMENT_PX` pixels (the same line, only cheaper to rasterise: a person's two-point
  scratch across a whole RoI would otherwise be one box of millions of pixels). What differs
  from the simulator's own masks: its faded ends (the simulator stops marking where the line
  fades below a quarter of its brightness, a person ends the line where it is seen) and a cap
  of one radius beyond each end.
* **Truth.** A RoI's truth is :func:`model.heldout.roi_truth` of the labelled scratches against
  that mask at half resolution, exactly as the simulated held-out set computes it from the
  renderer's mask; a sample labelled clean has none. Labels carry no brightness, so a recorded
  sample has no peak signal per scratch (the evaluation's recall by peak is left empty).
* **Mixing** (:class:`MixedPatches`): window ``index`` is simulated with probability
  ``sim_share`` (drawn from ``(seed, index)``), else cut from a labelled recorded sample. The
  simulated windows are exactly those a simulated run of the same seed draws at that index
  (:class:`model.data.SimulatedPatches`), so :func:`model.heldout.training_seeds` bounds them as
  before.
* **Validation** (:func:`training_sources`): every tenth recorded sample (at least one, the
  last of the sorted list) is held out, as ``train --samples`` does; its patches are mixed with
  simulated validation patches at the same share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edge.darkfield.labels import Scratch as PixelScratch
from edge.darkfield.labels import scratch_mask
from edge.labels_sample import SampleLabelError, SampleLabels, read_labels
from edge.recording import RecordedSample, RecordingError, find_samples, open_sample
from model import data as D

SEGMENT_PX = 16.0  # longest piece of a labelled polyline rasterised at once (module docstring)


def resample(points_px: np.ndarray, step: float = SEGMENT_PX) -> np.ndarray:
    """The same polyline with extra vertices so that no segment is longer than ``step``."""
    out = [points_px[:1]]
    for a, b in zip(points_px[:-1], points_px[1:], strict=True):
        n = max(1, math.ceil(float(np.hypot(*(b - a))) / step))
        t = np.arange(1, n + 1, dtype=np.float64)[:, None] / n
        out.append(a + t * (b - a))
    return np.concatenate(out)


def to_px(points_mm, origin_mm: Sequence[float], mm_per_px: Sequence[float]) -> np.ndarray:
    """Sample mm (N x 2) -> pixel x, y of the RoI at ``origin_mm`` (centres at whole numbers)."""
    p = np.asarray(points_mm, np.float64)
    return np.stack([(p[:, 0] - origin_mm[0]) / mm_per_px[0] - 0.5,
                     (p[:, 1] - origin_mm[1]) / mm_per_px[1] - 0.5], axis=1)


def roi_mask(labels: SampleLabels, origin_mm: Sequence[float], mm_per_px: Sequence[float],
             shape: tuple[int, int]) -> np.ndarray:
    """The labelled scratches' pixels in one RoI (H x W bool), by the simulator's rule."""
    px_um = 1000.0 * float(np.mean(mm_per_px))
    h, w = shape
    lines = []
    for s in labels.scratches:
        pts = to_px(s.points_mm, origin_mm, mm_per_px)
        reach = 4.0 + s.width_um / px_um  # well past the mask radius
        if (pts[:, 0].max() < -reach or pts[:, 0].min() > w + reach
                or pts[:, 1].max() < -reach or pts[:, 1].min() > h + reach):
            continue
        lines.append(PixelScratch(resample(pts), s.width_um / px_um))
    return scratch_mask(lines, shape)


@dataclass(frozen=True)
class _Line:
    """A labelled scratch as :func:`model.heldout.roi_truth` reads an object of a sample."""

    points: np.ndarray
    length_mm: float
    kind: str = "scratch"


def sample_truth(rec: RecordedSample, labels: SampleLabels, number: int):
    """The evaluation's truth of a labelled recorded sample (:class:`model.heldout.SampleTruth`,
    ``seed`` = ``number``, its place in the set; no peaks): per RoI in index order, the
    scratches visible in its label mask at half resolution."""
    from model.heldout import RoiTruth, SampleTruth, roi_truth

    m = rec.manifest
    objects = SimpleNamespace(objects=[_Line(np.asarray(s.points_mm, np.float64), s.length_mm)
                                       for s in labels.scratches])
    rois = []
    h, w = m.camera.height, m.camera.width
    for r in sorted(m.rois, key=lambda r: r.index):
        if not labels.scratches:
            rois.append(RoiTruth({}, {}))
            continue
        mask = roi_mask(labels, r.origin_mm, m.mm_per_px, (h, w))
        half = mask.reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))
        rois.append(roi_truth(objects, r.origin_mm, m.mm_per_px, half))
    return SampleTruth(number, rois, None)


def labelled_samples(paths: Sequence[str | Path], skip_unlabelled: bool = False
                     ) -> tuple[list[Path], list[Path]]:
    """The recorded sample folders under ``paths`` (each a sample or a folder of them) that
    hold labels, and those skipped for having none. Without ``skip_unlabelled`` a sample
    without ``labels.json`` is refused (:class:`edge.labels_sample.SampleLabelError`, naming
    every such sample and how to label it)."""
    from edge.labels_sample import LABELS

    found: list[Path] = []
    for p in paths:
        found += find_samples(p)
    found = list(dict.fromkeys(found))
    missing = [d for d in found if not (d / LABELS).is_file()]
    if missing and not skip_unlabelled:
        names = "\n  ".join(str(d) for d in missing)
        raise SampleLabelError(
            f"{len(missing)} recorded sample(s) have no {LABELS}:\n  {names}\nlabel them "
            "(glass-inspect label SAMPLE_DIR), or leave them out (--skip-unlabelled)")
    return [d for d in found if d not in missing], missing


class LabelledPatches(D.RecordedPatches):
    """Windows cut from recorded samples whose masks are their labels, rasterised
    (:func:`roi_mask`) once per RoI and kept as the scratch pixels' coordinates."""

    def __init__(self, sample_dirs: Sequence[str | Path], seed: int, patch: int = D.PATCH):
        self.labels = {Path(d): read_labels(d) for d in sample_dirs}
        super().__init__(sample_dirs, seed, patch)

    def roi_mask(self, rec: RecordedSample, index: int) -> np.ndarray:
        r = rec.roi_entry(index)
        return roi_mask(self.labels[Path(rec.dir)], r.origin_mm, rec.manifest.mm_per_px,
                        rec.shape[1:])

    def window_mask(self, k: int, y0: int, x0: int, size: int) -> np.ndarray:
        out = np.zeros((size, size), bool)
        px = self.scratch_pixels[k]
        inside = ((px[:, 0] >= y0) & (px[:, 0] < y0 + size)
                  & (px[:, 1] >= x0) & (px[:, 1] < x0 + size))
        out[px[inside, 0] - y0, px[inside, 1] - x0] = True
        return out


class MixedPatches:
    """Window ``index``: simulated with probability ``sim_share``, else recorded (module
    docstring). Both sources must share the seed and the patch size."""

    def __init__(self, recorded, simulated, sim_share: float):
        if not 0.0 <= sim_share <= 1.0:
            raise ValueError(f"the simulated share must be within 0..1, got {sim_share}")
        if (recorded.seed, recorded.patch) != (simulated.seed, simulated.patch):
            raise ValueError("the recorded and simulated windows must share seed and patch")
        self.recorded, self.simulated, self.share = recorded, simulated, float(sim_share)
        self.seed, self.patch = recorded.seed, recorded.patch

    def simulated_window(self, index: int) -> bool:
        if self.share in (0.0, 1.0):
            return self.share == 1.0
        return bool(np.random.default_rng([self.seed, index, 0x5105]).random() < self.share)

    def window(self, index: int, scratch: bool) -> D.RawWindow:
        src = self.simulated if self.simulated_window(index) else self.recorded
        return src.window(index, scratch)


def check_geometry(rec: RecordedSample, cfg) -> None:
    """Refuse a recorded sample that another head took (other frames, footprint or RoI grid)
    than ``cfg``: its pixels would be placed, and its RoIs merged, by the wrong geometry."""
    m, grid = rec.manifest, cfg.stage.roi_grid
    problems = []
    if (m.camera.width, m.camera.height) != (cfg.camera.width, cfg.camera.height):
        problems.append(f"frames of {m.camera.width} x {m.camera.height} px, the head's are "
                        f"{cfg.camera.width} x {cfg.camera.height}")
    if not np.allclose(m.mm_per_px, cfg.mm_per_px, rtol=1e-6, atol=0):
        problems.append(f"{list(m.mm_per_px)} mm per px, the head's {list(cfg.mm_per_px)}")
    indexes = sorted(r.index for r in m.rois)
    if indexes != list(range(grid.count)):
        problems.append(f"RoIs {indexes}, the head's grid has 0..{grid.count - 1}")
    else:
        for r in m.rois:
            if not np.allclose(r.origin_mm, grid.roi_origin_mm(r.index), atol=1e-6):
                problems.append(f"RoI {r.index} at {list(r.origin_mm)} mm, the head's grid puts "
                                f"it at {list(grid.roi_origin_mm(r.index))}")
                break
    if problems:
        raise RecordingError(f"{rec.dir}: recorded by another head than {cfg.source or 'this'} "
                             f"({'; '.join(problems)}); name the head that took it with --head")


def training_sources(cfg, settings):
    """(training, validation) window sources of ``train --recorded`` (module docstring)."""
    from model.heldout import VALIDATION_SEED_OFFSET

    dirs = sorted(str(d) for d in settings.recorded)
    if len(dirs) < 2:
        raise SampleLabelError("training on recorded samples needs at least 2 of them (one is held "
                         "out for validation)")
    for d in dirs:
        check_geometry(open_sample(d), cfg)
    n_val = max(1, len(dirs) // 10)
    s, share = settings, settings.sim_share
    vseed = s.seed + VALIDATION_SEED_OFFSET
    return (MixedPatches(LabelledPatches(dirs[:-n_val], s.seed, s.patch),
                         D.SimulatedPatches(cfg, s.seed, s.patch), share),
            MixedPatches(LabelledPatches(dirs[-n_val:], vseed, s.patch),
                         D.SimulatedPatches(cfg, vseed, s.patch), share))
