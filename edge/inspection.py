"""A whole sample through the pipeline: RoI after RoI, then one fail-safe verdict.

The acquisition is a parameter (an iterable of RoIs whose frames are fetched when needed), so
recorded samples and the live head share this loop. Whatever goes wrong while a RoI is fetched
or processed ends the inspection with an ERROR verdict naming the RoI and the cause; the RoIs
already done stay in the verdict, for the log. Nothing here passes a sample it did not finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge import calibration as calib
from edge.config import HeadConfig
from edge.engine import Engine, EngineError, open_engine
from edge.hardware import HardwareError
from edge.pipeline import PipelineError, process_roi
from edge.recording import RecordedSample, RecordingError, open_sample
from edge.selfcheck import PositionLost, SelfCheck
from edge.verdict import RoiResult, Verdict, decide, error

log = logging.getLogger(__name__)

# errors whose message already says what went wrong, in the operator's words
KNOWN_ERRORS = (EngineError, PipelineError, RecordingError, calib.CalibrationError, HardwareError,
                OSError)


@dataclass(frozen=True)
class RoiInput:
    index: int
    origin_mm: tuple[float, float]
    frames: Callable[[], np.ndarray]


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, KNOWN_ERRORS):
        return str(exc)
    return f"internal error ({type(exc).__name__}: {exc})"


def load_engine(cfg: HeadConfig, artifact: str | Path | None = None) -> Engine:
    path = Path(artifact) if artifact else cfg.resolve(cfg.engine.artifact)
    e = cfg.engine
    engine = open_engine(path, e.backend, e.threads, max(e.batch_sizes), e.model_sha256)
    # the head feeds the 24-channel space-to-depth stack and reads a score map: a single-frame
    # window classifier (glass-inspect classify's kind) is refused here, not at the first batch
    if engine.input.shape[1] != 24 or len(engine.output.shape) != 4:
        engine.close()
        raise EngineError(f"{path.name} takes {engine.input.describe()} and gives "
                          f"{engine.output.describe()}; the head's network takes N x 24 x H x W "
                          "frames and gives N x 1 x H x W scores")
    return engine


def load_calibration(cfg: HeadConfig, path: str | Path | None = None,
                     camera_serial: str | None = None) -> calib.Calibration | None:
    """The head's calibration (or ``path``'s), checked against this head (and camera, where its
    serial is known): one made for another is refused before anything is inspected."""
    p = path if path else cfg.calibration.file
    if not p:
        return None
    cal = calib.load(cfg.resolve(str(p)))
    cal.check_for(cfg, camera_serial)
    return cal


def inspect_sample(sample_id: str, rois: Iterable[RoiInput], expected: int, engine: Engine,
                   calibration: calib.Calibration | None, cfg: HeadConfig,
                   mm_per_px: tuple[float, float] | None = None,
                   on_roi: Callable[[RoiResult, np.ndarray], None] | None = None,
                   keep_scores: bool = False, self_check: SelfCheck | None = None,
                   exposures_ms: Sequence[float] | None = None,
                   position_lost: Callable[[], None] | None = None) -> Verdict:
    """The sample's verdict from its RoIs. Each RoI's frames also go through the hardware
    self-check (:mod:`edge.selfcheck`; ``self_check`` keeps what it learns across samples, a
    fresh one when None; ``exposures_ms`` are the states' exposures, None: the head file's and
    the calibration's LED balance): a fault it finds ends the sample in ERROR like any other;
    when it shows the stage lost its position, ``position_lost`` is called (the head homes
    before the next sample)."""
    t0 = time.perf_counter()
    results: list[RoiResult] = []
    cal_id = calibration.identity if calibration else None
    stages: dict[str, float] = {}
    check = (self_check or SelfCheck(cfg)).sample(sample_id, calibration, exposures_ms,
                                                  mm_per_px)

    def total() -> dict[str, float]:
        return {**stages, "sample": time.perf_counter() - t0}

    current = "before the first RoI"
    try:
        for roi in rois:
            current = f"RoI {roi.index}"
            ts = time.perf_counter()
            frames = roi.frames()
            stages["acquire"] = stages.get("acquire", 0.0) + time.perf_counter() - ts
            try:
                r = process_roi(frames, calibration, engine, cfg, roi.index, roi.origin_mm,
                                mm_per_px, keep_score=keep_scores or on_roi is not None)
            except Exception as exc:
                if on_roi is not None:
                    _hand_over_refused(on_roi, roi, frames, calibration is not None, exc)
                raise
            for k, v in r.timings_s.items():
                stages[k] = stages.get(k, 0.0) + v
            if on_roi is not None:
                on_roi(r, frames)
                if not keep_scores:
                    r.score = None
            results.append(r)
            log.debug("%s %s: %d scratch(es)", sample_id, current, len(r.defects))
            ts = time.perf_counter()
            check.roi(roi.index, roi.origin_mm, frames)
            stages["self_check"] = stages.get("self_check", 0.0) + time.perf_counter() - ts
        if len(results) == expected:  # a sample cut short is an ERROR of its own
            current = "hardware self-check"  # over the whole sample: says so itself
            ts = time.perf_counter()
            check.finish()
            stages["self_check"] = stages.get("self_check", 0.0) + time.perf_counter() - ts
    except Exception as exc:  # fail-safe: any failure is an ERROR verdict, never a PASS
        if isinstance(exc, PositionLost) and position_lost is not None:
            position_lost()
        reason = reason_of(exc)
        if not reason.startswith(current) and current != "hardware self-check":
            reason = f"{current}: {reason}"
        log.error("%s: inspection stopped: %s", sample_id, reason)
        return error(sample_id, reason, results, engine.identity, cal_id, total())
    return decide(sample_id, results, expected, engine.identity, cal_id, total(),
                  cfg.reject_rule.min_length_mm)


def _hand_over_refused(on_roi: Callable[[RoiResult, np.ndarray], None], roi, frames: np.ndarray,
                       corrected: bool, exc: Exception) -> None:
    """The frames of a RoI the pipeline refused (frames unlike training, a fault it found)
    still go to ``on_roi``, without a score map: a recording keeps them, and a sample kept for
    review (:mod:`edge.review`) holds the very frames that made it an ERROR, which are what a
    person needs to see. Never raises: the refusal is the verdict's reason."""
    r = RoiResult(roi.index, tuple(roi.origin_mm), [], {}, 0, corrected,
                  notes=[f"not judged: {reason_of(exc)}"])
    try:
        on_roi(r, frames)
    except Exception:
        log.exception("RoI %s: its frames could not be handed on after it was refused", roi.index)


def recorded_rois(sample_dir: str | Path, cfg: HeadConfig) -> tuple[RecordedSample, list[RoiInput]]:
    """A recorded sample made by a camera like the head's, and its RoIs in index order (frames
    verified when read)."""
    rec = open_sample(sample_dir)
    cam = rec.manifest.camera
    if (cam.bit_depth, cam.bayer_pattern) != (cfg.camera.bit_depth, cfg.camera.bayer_pattern):
        raise RecordingError(f"{sample_dir}: recorded with a {cam.bit_depth}-bit "
                             f"{cam.bayer_pattern} camera, the head has a "
                             f"{cfg.camera.bit_depth}-bit {cfg.camera.bayer_pattern} one")
    rois = [RoiInput(e.index, tuple(e.origin_mm), lambda i=e.index: np.asarray(rec.frames(i)))
            for e in sorted(rec.manifest.rois, key=lambda e: e.index)]
    return rec, rois


def inspect_recorded(sample_dirs: Iterable[str | Path], cfg: HeadConfig,
                     engine_path: str | Path | None = None,
                     calibration_path: str | Path | None = None,
                     overlay_dir: str | Path | None = None,
                     on_verdict: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """Recorded samples through the pipeline, one verdict each. An engine or calibration that
    cannot be loaded makes every verdict ERROR with the reason; so does a damaged recording,
    for its own sample only. The engine is closed on every way out."""
    from edge.overlay import overlay_writer

    engine = calibration = None
    setup_error = None
    self_check = SelfCheck(cfg)  # one for the run: each sample's camera noise against the last
    try:
        engine = load_engine(cfg, engine_path)
        calibration = load_calibration(cfg, calibration_path)
    except Exception as exc:  # no usable engine or calibration: every sample is an ERROR
        setup_error = reason_of(exc)
    if engine is not None:
        log.info("engine: %s on %s", engine.path.name, engine.backend)
    verdicts = []
    try:
        for d in sample_dirs:
            name = Path(d).name
            if setup_error is not None:
                v = error(name, setup_error)
            else:
                try:
                    rec, rois = recorded_rois(d, cfg)
                except Exception as exc:
                    v = error(name, reason_of(exc), engine=engine.identity)
                else:
                    out = Path(overlay_dir) / rec.sample_id if overlay_dir else None
                    cal = (calibration.for_exposures(rec.manifest.camera.per_state_ms, cfg)
                           if calibration is not None else None)
                    v = inspect_sample(rec.sample_id, rois, cfg.stage.roi_grid.count, engine,
                                       cal, cfg, tuple(rec.manifest.mm_per_px),
                                       on_roi=overlay_writer(out, cfg) if out else None,
                                       self_check=self_check,
                                       exposures_ms=rec.manifest.camera.per_state_ms)
            verdicts.append(v)
            if on_verdict is not None:
                on_verdict(v)
    finally:
        if engine is not None:
            engine.close()
    return verdicts
