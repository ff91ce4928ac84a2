"""One RoI: 6 RAW frames -> scratches in pixels and sample millimetres. No hardware, no state.

Stages (their wall times are in the result, under these names):

* ``prepare``: dark subtraction, flat-field gain, defective-pixel repair and 12-bit scaling
  fused with space-to-depth, written straight into the engine's tiles (``tile_size`` with
  ``tile_overlap``, at half resolution), in the engine's input dtype;
* ``infer``: the tiles in batches of the largest configured batch size the engine takes;
* ``stitch``: the centre crop of each tile back into one score map (see the kernel's docstring);
* ``postprocess``: T_low, the ``downscale``-times max-pooled grid, grid DBSCAN, clusters whose
  peak is below T_high dropped (:func:`edge.postprocess.find_scratches`);
* ``defects``: boxes and lengths to RAW pixels and sample mm.

Sample mm: without calibrated geometry, RAW pixel ``(x, y)`` of a RoI is at
``origin_mm + (x, y) * mm_per_px`` (the recording's ``mm_per_px`` when given, else the head
file's nominal footprint), as always. When the calibration measured the geometry (pixel
footprint x and y, camera rotation, stage position of the RoI grid's origin), that replaces the
nominal one, also for recordings: the image is turned and scaled about the frame centre, the box
in sample mm is the axis-aligned box around the turned pixel box's corners, and lengths use the
mean footprint (:class:`edge.calibration.SampleMapping`, ``docs/calibration_file.md``); the
stage is taken to have gone to the head file's RoI positions. Thresholds tuned by the
calibration replace the head file's for the post-processing.

Without a calibration the frames are only scaled to [0, 1] (what the shipped network was trained
on) and the result says so in its notes. Anything the pipeline cannot trust raises
:class:`PipelineError` naming the RoI: frames of the wrong type or shape, a calibration for
another camera, scores that are NaN or infinite, and frames unlike the ones the network was
trained on (:class:`UnlikeTrainingError`): as the frames are prepared, the RoI's statistics
(dark level, haze and balance per state, noise against the camera model, the fixed layers'
contrast, the light's fall-off) are measured on the frames as corrected and compared with the
envelope in the model's metadata (:mod:`edge.envelope`; its time counts in ``prepare``). A
model without an envelope is not checked: logged once, and each RoI's notes say so; nor are
frames smaller than :data:`edge.envelope.MIN_FRAME_PX` on a side (the reduced heads of the
fault benchmarks and tests; a stain can cover such a window), which the notes also say.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np

from edge import envelope
from edge.calibration import Calibration, CalibrationError
from edge.config import N_STATES, HeadConfig
from edge.engine import Engine
from edge.kernels.space_to_depth import (
    ShapeError,
    TileGrid,
    plan_tiles,
    space_to_depth_tiles,
    stitch,
)
from edge.postprocess import find_scratches
from edge.verdict import Defect, RoiResult

NO_CALIBRATION = "no calibration file: frames used uncorrected (dark level and flat field ignored)"
NO_CORRECTION = ("the calibration holds no dark level, flat field or defective pixels: frames "
                 "used uncorrected")
NO_ENVELOPE = ("the model carries no envelope of its training frames: frames not checked "
               "against them (glass-inspect export envelope)")
SMALL_FRAMES = ("frames smaller than {px} x {px} px: not checked against the envelope of the "
                "training frames (RoI statistics need more glass than a stain covers)")

log = logging.getLogger(__name__)
_unchecked_models: set[str] = set()  # models without an envelope, logged once each


class PipelineError(RuntimeError):
    """A RoI the pipeline cannot give a trustworthy answer for."""


class UnlikeTrainingError(PipelineError):
    """A RoI whose frames lie outside the envelope of the model's training frames."""


def batch_size(cfg: HeadConfig, engine: Engine) -> int:
    fits = [b for b in cfg.engine.batch_sizes if b <= engine.max_batch]
    return max(fits) if fits else 1


def _batches(tiles: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(tiles), size):
        yield tiles[i:i + size]


def _check_frames(frames, where: str) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint16:
        got = getattr(frames, "dtype", type(frames).__name__)
        raise PipelineError(f"{where}: frames must be uint16 RAW, got {got}")
    if frames.ndim != 3 or frames.shape[0] != N_STATES:
        raise PipelineError(f"{where}: expected {N_STATES} frames ({N_STATES}, H, W), got shape "
                            f"{list(frames.shape)}")


def infer_tiles(tiles: np.ndarray, engine: Engine, size: int, where: str) -> np.ndarray:
    """Scores ``(count, 1, t, t)`` float32 for the tiles, checked to be finite."""
    n, _, th, tw = tiles.shape
    scores = np.empty((n, 1, th, tw), np.float32)
    i = 0
    for out in engine.infer_stream(_batches(tiles, size)):
        if out.shape != (min(size, n - i), 1, th, tw):
            raise PipelineError(f"{where}: engine returned scores of shape {list(out.shape)} "
                                f"for {min(size, n - i)} tiles of {th} x {tw}")
        scores[i:i + len(out)] = out
        i += len(out)
    bad = ~np.isfinite(scores)
    if bad.any():
        t = int(np.argmax(bad.reshape(n, -1).any(axis=1)))
        raise PipelineError(f"{where}: the engine returned NaN or infinite scores (first in "
                            f"tile {t} of {n}); the network or its engine is broken")
    return scores


def prepare_tiles(frames: np.ndarray, calibration: Calibration | None, cfg: HeadConfig,
                  dtype=np.float32) -> tuple[TileGrid, np.ndarray]:
    """The ``prepare`` stage alone: the head's tiling of the corrected 24-channel map.

    INT8 calibration (``export.quantization_data``) cuts its tiles here too, so the ranges it
    measures are those the engine sees.
    """
    p = cfg.pipeline
    grid = plan_tiles(frames.shape[1] // 2, frames.shape[2] // 2, p.tile_size, p.tile_overlap)
    if calibration is None:
        return grid, space_to_depth_tiles(frames, grid, None, None, cfg.camera.bit_depth, dtype)
    return grid, space_to_depth_tiles(frames, grid, calibration.dark, calibration.gain,
                                      cfg.camera.bit_depth, dtype,
                                      defects=calibration.defect_table)


def envelope_values(frames: np.ndarray, calibration: Calibration | None, engine: Engine,
                    cfg: HeadConfig, where: str = "RoI") -> dict[str, float] | None:
    """The RoI's statistics as the envelope check measures them (the frames corrected by the
    calibration, the training camera's black level put back where it subtracts one); None
    when the model has no envelope."""
    try:
        env = envelope.of_metadata(engine.metadata)
    except envelope.EnvelopeMetadataError as exc:
        name = getattr(getattr(engine, "path", None), "name", "the model")
        raise PipelineError(f"{where}: the envelope in {name}'s metadata {exc}; export it "
                            "again (glass-inspect export envelope)") from None
    if env is None:
        return None
    dark = gain = None
    offset = 0.0
    if calibration is not None:
        dark, gain = calibration.dark, calibration.gain
        if dark is not None:  # in the head's DN: measure() scales to the training camera's
            offset = env.camera.black_dn * cfg.camera.max_dn / envelope.REFERENCE_FULL_SCALE
    return envelope.measure(frames, env.camera, dark, gain, offset, cfg.camera.bit_depth)


def check_envelope(frames: np.ndarray, calibration: Calibration | None, engine: Engine,
                   cfg: HeadConfig, where: str, notes: list[str] | None = None) -> None:
    """UnlikeTrainingError naming the statistic furthest outside the model's envelope, if any
    is; a model without one adds :data:`NO_ENVELOPE` to ``notes`` (and is logged once)."""
    if min(frames.shape[1:]) < envelope.MIN_FRAME_PX:
        if notes is not None:
            notes.append(SMALL_FRAMES.format(px=envelope.MIN_FRAME_PX))
        return
    values = envelope_values(frames, calibration, engine, cfg, where)
    if values is None:
        name = str(getattr(engine, "path", "model"))
        if name not in _unchecked_models:
            _unchecked_models.add(name)
            log.warning("%s: %s", name, NO_ENVELOPE)
        if notes is not None:
            notes.append(NO_ENVELOPE)
        return
    found = envelope.outside(values, envelope.of_metadata(engine.metadata))
    if found:
        raise UnlikeTrainingError(f"{where}: {envelope.reason(found)}")


def process_roi(frames: np.ndarray, calibration: Calibration | None, engine: Engine,
                cfg: HeadConfig, index: int = 0, origin_mm: tuple[float, float] = (0.0, 0.0),
                mm_per_px: tuple[float, float] | None = None,
                keep_score: bool = False, check: bool = True) -> RoiResult:
    """One RoI through the stages (module docstring). ``check`` False skips the envelope check
    (:func:`check_envelope`): for synthetic frames only, such as :func:`warm_up`'s."""
    where = f"RoI {index}"
    p = cfg.pipeline
    mmx, mmy = mm_per_px if mm_per_px is not None else cfg.mm_per_px
    mapping = None
    timings: dict[str, float] = {}
    t = time.perf_counter()
    _check_frames(frames, where)
    notes = []
    if calibration is None:
        notes.append(NO_CALIBRATION)
    else:
        try:
            calibration.check_frames(frames.shape)
            p = calibration.pipeline_for(cfg)
        except CalibrationError as exc:
            raise PipelineError(f"{where}: {exc}") from None
        mapping = calibration.mapping(cfg)
        if not corrects(calibration):
            notes.append(NO_CORRECTION)
    try:
        grid, tiles = prepare_tiles(frames, calibration, cfg, engine.input.dtype)
    except ShapeError as exc:
        raise PipelineError(f"{where}: {exc}") from None
    if check:  # on frames the kernel took: a shape it refuses is named as such first
        check_envelope(frames, calibration, engine, cfg, where, notes)
    timings["prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    scores = infer_tiles(tiles, engine, batch_size(cfg, engine), where)
    timings["infer"] = time.perf_counter() - t

    t = time.perf_counter()
    score = stitch(scores, grid)
    timings["stitch"] = time.perf_counter() - t

    t = time.perf_counter()
    found = find_scratches(score, p)
    timings["postprocess"] = time.perf_counter() - t

    t = time.perf_counter()
    defects = to_defects(found, index, origin_mm, (mmx, mmy), mapping)
    timings["defects"] = time.perf_counter() - t
    return RoiResult(index, (float(origin_mm[0]), float(origin_mm[1])), defects, timings,
                     grid.count, corrects(calibration), notes, score if keep_score else None)


def to_defects(found, index: int, origin_mm: tuple[float, float],
               mm_per_px: tuple[float, float], mapping=None) -> list[Defect]:
    """The ``defects`` stage: kept scratches (score-map pixels) to boxes in RAW pixels and
    sample mm, lengths in mm (the module docstring); shared with the evaluation, which counts
    cached score maps exactly as the runtime would."""
    mmx, mmy = mm_per_px
    px_mm = (mmx + mmy) / 2.0 if mapping is None else mapping.px_mm
    defects = []
    kept = zip(found.boxes, found.max_score, found.length, strict=True)
    for (r0, c0, r1, c1), peak, length in kept:
        # score-map pixels are 2 x 2 RAW pixels
        x0, y0, x1, y1 = 2 * int(c0), 2 * int(r0), 2 * int(c1), 2 * int(r1)
        if mapping is None:
            box_mm = (origin_mm[0] + x0 * mmx, origin_mm[1] + y0 * mmy,
                      origin_mm[0] + x1 * mmx, origin_mm[1] + y1 * mmy)
        else:
            box_mm = mapping.box_mm((x0, y0, x1, y1), origin_mm)
        defects.append(Defect(box_mm, float(length) * 2.0 * px_mm, float(peak), (index,),
                              (x0, y0, x1, y1)))
    return defects


def corrects(calibration: Calibration | None) -> bool:
    """Whether the calibration changes the frames (not only positions or thresholds)."""
    return calibration is not None and (calibration.dark is not None
                                        or calibration.gain is not None
                                        or calibration.defect_table is not None)


def warm_up(cfg: HeadConfig, engine: Engine, calibration: Calibration | None,
            shape: tuple[int, int]) -> None:
    """Run the whole pipeline once on a synthetic RoI before any LED is lit.

    Why: the first call of each Numba kernel in a process compiles it (or loads it from the
    cache) while holding the interpreter lock, for up to seconds on a cold cache. Were that to
    happen in the pipeline worker while the acquisition thread keeps an LED group lit, the group
    would stay lit past its maximum on-time and the LED watchdog would end the inspection. So
    the assembly runs this first: the correction (with this head's calibration: a calibration
    that does not fit the camera's frames is also found here), the envelope's statistics (and
    an envelope this runtime cannot read), space-to-depth, the engine, and
    the post-processing on a score map with a line in it, so DBSCAN's kernels compile too."""
    frames = np.full((N_STATES, *shape), 64, np.uint16)
    frames[:, 1::7, ::5] = 80  # not constant: a frame check would refuse a flat frame
    # synthetic frames are unlike any training frame: the envelope's kernels are compiled by
    # measuring them, not judged
    process_roi(frames, calibration, engine, cfg, check=False)
    envelope_values(frames, calibration, engine, cfg, "warm-up")
    score = np.zeros((64, 64), np.float32)
    score[30:33, 5:60] = 1.0
    p = cfg.pipeline
    find_scratches(score, p.model_copy(update={"downscale": 1, "dbscan_min_samples": 4}))
