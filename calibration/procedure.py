"""The calibration procedure: a head measured step by step through the same assembly it inspects
with.

Steps, in order, each kept in the run folder as it finishes (:mod:`calibration.store`), so an
interrupted run resumes at the step it was in:

1. **dark**: the lens capped (or the stage empty and every LED group dark), ``frames`` frames:
   dark level map, read noise, hot pixels (:mod:`calibration.dark`);
2. **flat**: the diffusing reference plate under the camera; per LED group ``frames`` frames:
   each group's field, its gain toward the reference head, dead and stuck pixels, and each
   group's brightness against the others (:mod:`calibration.flat`). Then the **LED balance**:
   per group the exposure factor that brings it to the groups' mean level (within the LED
   on-time limit and the frame time, :func:`balance_scale`), checked with one frame per group at
   those exposures (the residual spread must be within ``BALANCE_TOLERANCE``); the gains are
   divided by the factors, since the runtime takes each group's frame at its own exposure;
3. **geometry**: the dot-grid target at RoI 0: mm per pixel, camera rotation and where the
   frame's centre really is (:mod:`calibration.geometry`);
4. **thresholds** (when golden samples are given): the post-processing settings that catch the
   scratched golden samples with the fewest false alarms, through this calibration
   (:mod:`calibration.thresholds`).

What goes under the camera is asked for through ``place(what)`` with ``what`` one of
``"lens cap"``, ``"reference plate"``, ``"dot grid"``: on a real head the operator puts it there
(the command line asks and waits), on a simulated head the simulated stage gets the target.

The gains make this head's frames look like the reference head's (the default simulated head,
on whose frames the network was trained): per group, the *shape* of the field and the groups'
brightness relative to each other are corrected; the overall level is not, because a real plate's
brightness is not known to the percent (the exposure sets the level). So
``gain_k = (reference_k / mean(reference)) / (field_k / mean(field))``, the means over all groups.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.dark import measure_dark
from calibration.flat import gains, measure_flats
from calibration.geometry import find_dots, fit_geometry
from calibration.store import StepStore
from edge.config import N_STATES

STEPS = ("dark", "flat", "geometry", "thresholds")
BALANCE_TOLERANCE = 0.02  # groups' levels within +-2 % of their mean after balancing
TARGETS = {"dark": "lens cap", "flat": "reference plate", "geometry": "dot grid"}


@dataclass
class Settings:
    frames: int = 8  # per dark, per LED group
    dot_pitch_mm: float = 1.0
    dot_diameter_mm: float = 0.2
    dot_grid_origin_mm: tuple[float, float] = (0.0, 0.0)  # sample position of one dot
    steps: Sequence[str] = STEPS
    redo: bool = False  # measure steps already done again
    golden: Sequence[str] = ()  # recorded samples with known truth, for the thresholds step


@dataclass
class Run:
    folder: Path
    summary: dict = field(default_factory=dict)  # step -> its figures
    arrays: dict = field(default_factory=dict)  # step -> its arrays


def reference_response(shape: tuple[int, int]) -> np.ndarray:
    """What the reference head (the embedded default simulated head) records per LED group for
    a uniform plate, up to one overall factor: (N_STATES, H, W)."""
    from edge import config
    from edge.sim.targets import head_truth

    truth = head_truth(config.load(), shape)
    return np.stack([truth.response(k) for k in range(N_STATES)]).astype(np.float32)


def calibrate(asm, out: str | Path, settings: Settings | None = None,
              place: Callable[[str], None] | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              reference: Callable[[tuple[int, int]], np.ndarray] = reference_response) -> Run:
    """Measure the head of ``asm`` (an :class:`edge.assembly.Assembly`) into the folder
    ``out``. The LEDs are dark on every way out."""
    s = settings or Settings()
    unknown = [x for x in s.steps if x not in STEPS]
    if unknown:
        raise ValueError(f"unknown calibration steps {unknown}; the steps are {list(STEPS)}")
    if s.frames < 2:
        raise ValueError(f"each step needs at least 2 frames, got {s.frames}")
    if not s.golden:
        s = Settings(**{**s.__dict__, "steps": [x for x in s.steps if x != "thresholds"]})
    store = StepStore(out)
    run = Run(Path(out))
    head = asm.head
    wanted = [x for x in STEPS if x in s.steps]
    # what later steps need from earlier ones comes from the store, measured now or before
    needs = set(wanted) | ({"dark"} if {"flat", "geometry"} & set(wanted) else set())
    if "thresholds" in wanted:  # tuned through everything measured so far, and the dark at least
        needs |= {"dark"} | {x for x in ("flat", "geometry") if x in wanted or store.done(x)}
    tick = progress or (lambda what, done, total: None)
    try:
        head.stage.ready()
        for step in STEPS:
            if step not in needs:
                continue
            if step in wanted and (s.redo or not store.done(step)):
                if place is not None and step in TARGETS:
                    place(TARGETS[step])
                summary, arrays = _MEASURE[step](head, s, run, tick, reference)
                store.save(step, summary, **arrays)
            summary, arrays = store.load(step)
            run.summary[step], run.arrays[step] = summary, arrays
    finally:
        with contextlib.suppress(Exception):
            asm.ring.all_dark()
    return run


PREVIEW = 4  # the report's pictures are made from frames shrunk this much (block means)


def _preview(img: np.ndarray) -> np.ndarray:
    """Block means of PREVIEW x PREVIEW pixels over the last two axes: a picture's worth."""
    h, w = (img.shape[-2] // PREVIEW) * PREVIEW, (img.shape[-1] // PREVIEW) * PREVIEW
    a = img[..., :h, :w]
    return a.reshape(*a.shape[:-2], h // PREVIEW, PREVIEW, w // PREVIEW, PREVIEW).mean(
        axis=(-3, -1)).astype(np.float32)


def _frames(head, state: int | None, n: int, tick, what: str, done: int, total: int):
    # at the head file's exposure, whatever LED balance an earlier calibration set: the balance
    # is measured from these frames. Choice: the dark is taken at that exposure only; at tens of
    # ms a sensor's dark current is far below its offset, and the hot pixels, whose signal
    # grows with the exposure, are repaired rather than subtracted
    for k in range(n):
        yield head.expose(state, exposure_ms=head.cfg.camera.exposure_ms)[0]
        tick(what, done + k + 1, total)


def _dark(head, s: Settings, run: Run, tick, reference):
    d = measure_dark(_frames(head, None, s.frames, tick, "dark frames", 0, s.frames))
    return d.summary(), {"level": d.level, "hot": d.hot}


def _flat(head, s: Settings, run: Run, tick, reference):
    dark = run.arrays["dark"]
    total = N_STATES * s.frames
    # one generator per group, consumed in turn: one frame in memory at a time, not 6 x N
    per_state = (_frames(head, k, s.frames, tick, f"flat, LED group {k}", k * s.frames, total)
                 for k in range(N_STATES))
    offset = run.summary["dark"]["offset_dn"]
    r = measure_flats(per_state, dark["level"], offset, dark["hot"])
    ref = reference(r.fields.shape[1:])
    norm_ref = ref / ref.mean()
    norm_field = r.fields / r.fields.mean()
    balance = np.array([float(np.median(f)) for f in r.fields])
    balance /= balance.mean()
    scale = balance_scale(balance, head.cfg)
    # the check: one frame per group at its balanced exposure, its level against the others'
    base = head.cfg.camera.exposure_ms
    levels = []
    for k in range(N_STATES):
        frame = head.expose(k, exposure_ms=base * float(scale[k]))[0]
        levels.append(float(np.median(frame - dark["level"])))
        tick("LED balance check", k + 1, N_STATES)
    after = np.array(levels) / np.mean(levels)
    spread = float(np.abs(after - 1.0).max())
    # frames are taken at exposure base * scale_k: gain_k relates the base exposure's field
    g = gains(norm_field, norm_ref) / scale[:, None, None].astype(np.float32)
    summary = dict(r.summary(), led_balance=[round(float(b), 4) for b in balance],
                   led_exposure_scale=[round(float(x), 4) for x in scale],
                   led_balance_after=[round(float(b), 4) for b in after],
                   led_balance_spread_pct=round(100 * spread, 2),
                   led_balanced=spread <= BALANCE_TOLERANCE)
    # the report's pictures need only a shrunk copy of the fields (the gains are the result)
    return summary, {"fields_preview": _preview(r.fields), "gain": g, "dead": r.dead,
                     "stuck": r.stuck, "led_exposure_scale": scale}


def balance_scale(balance: np.ndarray, cfg) -> np.ndarray:
    """Per LED group the exposure factor that brings its level (``balance``: level over the
    groups' mean) to the mean: ``1 / balance``, each capped so the group's exposure keeps the
    LEDs lit within ``ON_TIME_SHARE`` of ``max_on_ms`` (with the settle time) and within the
    frame time. Choice: the mean, not the brightest group, is the target, so the exposures stay
    near the head file's and the LEDs' on-time changes least."""
    from edge.calibration import ON_TIME_SHARE

    cam, ill = cfg.camera, cfg.illumination
    longest = min(ON_TIME_SHARE * ill.max_on_ms - ill.settle_ms, cam.frame_time_ms)
    return np.minimum(1.0 / np.asarray(balance, np.float64), longest / cam.exposure_ms)


def _geometry(head, s: Settings, run: Run, tick, reference):
    cfg = head.cfg
    x, y = head.stage_target(0)
    head.stage.move_to(x, y)
    dark = run.arrays["dark"]["level"]
    total = np.zeros(head.shape, np.float64)
    for k in range(N_STATES):  # the dots scatter evenly: every group adds light
        frame = head.expose(k, exposure_ms=cfg.camera.exposure_ms)[0]
        total += frame - dark
        tick("dot grid", k + 1, N_STATES)
    total /= N_STATES
    noise = run.summary["dark"]["read_noise_dn"]
    sx, sy = cfg.mm_per_px
    h, w = head.shape
    ox, oy = cfg.stage.roi_grid.roi_origin_mm(0)
    nominal_centre = (ox + w * sx / 2.0, oy + h * sy / 2.0)
    dots = find_dots(total, noise, s.dot_diameter_mm / sx)
    g = fit_geometry(dots, head.shape, (sx, sy), nominal_centre, s.dot_grid_origin_mm,
                     s.dot_pitch_mm)
    return g.summary(), {"dots_preview": dots / PREVIEW, "frame_preview": _preview(total),
                         "fit": np.array([*g.mm_per_px, g.rotation_deg, *g.origin_offset_mm])}


def _thresholds(head, s: Settings, run: Run, tick, reference):
    import tempfile

    from calibration.thresholds import choose, golden_scores, sweep
    from edge import calibration as calib

    with tempfile.TemporaryDirectory() as tmp:  # this calibration, as the runtime will read it
        cal = calib.load(write_calibration(run, head.cfg, Path(tmp) / "cal.npz"))
    tick("golden samples", 0, 1)
    goldens = golden_scores(s.golden, head.cfg, head.engine, cal)
    tick("golden samples", 1, 1)
    rows = sweep(goldens, head.cfg.pipeline, head.cfg.reject_rule.min_length_mm)
    return {"chosen": choose(rows, head.cfg.pipeline, goldens), "sweep": rows}, {}


_MEASURE = {"dark": _dark, "flat": _flat, "geometry": _geometry, "thresholds": _thresholds}


def write_calibration(run: Run, cfg, path: str | Path, camera_serial: str = "") -> Path:
    """The calibration file the runtime reads (:mod:`edge.calibration`, format 3) from the
    steps ``run`` measured, bound to this head and camera."""
    from edge import calibration as calib

    a = run.arrays
    if "dark" not in a:
        raise ValueError("a calibration file needs at least the dark step")
    hot = a["dark"]["hot"].astype(bool)
    dead = a["flat"]["dead"].astype(bool) & ~hot if "flat" in a else np.zeros_like(hot)
    stuck = a["flat"]["stuck"].astype(bool) & ~hot & ~dead if "flat" in a else np.zeros_like(hot)
    gain = None
    if "flat" in a:
        gain = a["flat"]["gain"].astype(np.float32)
        gain[~np.isfinite(gain) | (gain <= 0)] = np.nan  # no field there: the grid leaves it out
    geometry = None
    if "geometry" in a:
        sx, sy, rot, dx, dy = (float(v) for v in a["geometry"]["fit"])
        geometry = calib.Geometry.measured(cfg, (sx, sy), rot, (dx, dy))
    defects = calib.DefectivePixels.of(hot=np.nonzero(hot), dead=np.nonzero(dead),
                                       stuck=np.nonzero(stuck))
    scale = None
    if "flat" in a and "led_exposure_scale" in a["flat"]:
        scale = [float(x) for x in a["flat"]["led_exposure_scale"]]
    thresholds = None
    if "thresholds" in run.summary:
        chosen = run.summary["thresholds"]["chosen"]
        thresholds = {k: chosen[k] for k in ("t_low", "t_high", "dbscan_min_samples")}
    if gain is not None:
        bad = np.zeros(gain.shape[1:], bool)
        bad[hot | dead | stuck] = True
        gain[:, bad] = np.nan  # the grid's medians leave them out; they are repaired anyway
        gain = calib.gain_grid(gain)
    return calib.save(path, dark=a["dark"]["level"].astype(np.float32), gain_grid=gain,
                      head=cfg, camera_serial=camera_serial, defects=defects, geometry=geometry,
                      led_exposure_scale=scale, thresholds=thresholds)
