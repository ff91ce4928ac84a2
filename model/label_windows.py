"""Training windows from a user's labelled single dark-field frames, mixed with simulated ones:
``glass-inspect train --network fusion --images DIR --labels DIR --init CHECKPOINT``.

* **What trains is what runs.** Each image is read as ``classify`` reads it
  (:func:`edge.darkfield.reading.read_image`, ``bit_depth`` and ``bayer`` as there) and prepared
  as it prepares it (:mod:`edge.darkfield.frame_prep`: colour sites, exposure, noise matched to
  the network's camera, which its spec says); windows are cut from the prepared frame, so the
  levels near a window's edge are the frame's. Choice: a frame whose noise lies above the noise
  check's limits (a real background's grain reads as noise), which ``classify`` refuses, is
  trained on as it comes, **not matched**: grain is not noise, and matching it scales each
  scratch down by the same factor (the held-out texture family reads 2.1-6.4 x: its 30 DN
  scratches became 5-14 DN, and a fine-tune on 20 matched frames learnt none of them, label
  F1 0.08-0.19 on its own training frames). These are the frames a user fine-tunes for; they
  are counted (:attr:`LabelledFrames.refused_by_classify`), and ``glass-inspect export
  frame-envelope --images`` gives the fine-tuned model the noise limits that take such frames
  as they come (:func:`edge.darkfield.noise.limits_of`). A frame below the limits (a wrong bit
  depth) or one ``classify`` cannot judge at all (unreadable, flat, overexposed, too dark) is
  refused here with why.
* **Truth** from the label (:mod:`edge.darkfield.labels`, the simulator's rasterisation rule)
  and the rule of simulated windows (:func:`model.windows.label_of`): a scratch window holds at
  least 4 scratch pixels. Every labelled scratch counts as visible: no faint class
  (:mod:`model.label_eval`'s choice).
* **Windows** (:class:`LabelledWindows`, index ``i`` a pure function of (seed, i)): the
  runtime's grid (256 px, stride 128), each origin moved by a uniform jitter of up to half a
  stride in both directions (clipped to the frame) so that a few images give more than their
  grid's windows. Choice: half the windows start from a grid cell holding a scratch, the rest
  from any cell, as the simulated sampler centres half its windows on a scratch: a user's
  frames hold few scratch windows, and a batch of background alone teaches little. The label
  is that of the jittered window. :data:`PER_IMAGE` consecutive windows share an image, as the
  simulated batches do. Flips come from the trainer (``model.train``), for every window of a
  batch alike.
* **Mixing** (:class:`MixedBatches`): ``round(batch * sim_share)`` windows of each batch are the
  trainer's simulated windows (its :class:`model.windows.WindowSampler`, the run's frames),
  the rest labelled ones, so the fine-tuned network keeps what the simulator taught
  (``sim_share`` 0.5 by default).
* **Validation** (:func:`validate_labelled`): the trainer's simulated validation windows, and a
  fixed set of grid windows of the labelled frames (at most :data:`VAL_WINDOWS`, half with a
  scratch where there are that many); the epoch's ``val_loss`` is the two losses weighed by
  ``sim_share``, so the best epoch is chosen on what must not be forgotten and what is to be
  learnt. The labelled part is scored on the frames trained on: only ``--folds``
  (:mod:`model.label_folds`) says what to expect on new images.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.darkfield.windows import STRIDE, WINDOW, window_origins
from edge.errors import UserError
from model.windows import label_of

log = logging.getLogger("glass-inspect.train")

PER_IMAGE = 4  # consecutive windows from one image (model.train.DARKFIELD_PER_IMAGE)
SCRATCH_SHARE = 0.5  # windows started from a grid cell with a scratch (module docstring)
JITTER = STRIDE // 2  # px, each way
VAL_WINDOWS = 256  # labelled validation windows at most
VAL_BATCH = 32
MAX_PROBLEMS = 12


class LabelWindowsError(UserError, ValueError):
    """Labelled images that cannot be trained on; the message names each and says why."""


@dataclass
class LabelledFrame:
    name: str
    pixels: np.ndarray  # H x W float32 in [0, 1], as the network sees the frame
    mask: np.ndarray  # H x W bool, the label rasterised
    clean: bool
    scratch_cells: np.ndarray  # (n, 2) grid origins (row, column) of scratch windows
    cells: np.ndarray  # (m, 2) every grid origin
    refused_by_classify: str = ""  # classify's reason to refuse it (noise), else ""


class LabelledFrames(list):
    """The prepared frames of a labelled folder (:func:`load_frames`)."""

    @property
    def refused_by_classify(self) -> list[LabelledFrame]:
        return [f for f in self if f.refused_by_classify]


def frame_prep(spec: dict):
    """The runtime's preparation for a network of ``spec`` (its camera figures, its whitening)
    -> (:class:`edge.darkfield.frame_prep.FramePrep`, its sensor)."""
    from edge.darkfield.frame_prep import FramePrep

    prep = FramePrep.for_model({"spec": json.dumps(spec)}, "the network")
    return prep, prep.sensor


def prepare(pixels: np.ndarray, spec: dict, bayer: bool = False) -> tuple[np.ndarray, str]:
    """A read frame as the network is to see it -> (pixels, classify's reason to refuse it or
    ""); ``PrepError`` when classify could not judge it at all (module docstring)."""
    from edge.darkfield import noise
    from edge.darkfield.frame_prep import FramePrep, PrepError

    prep, sensor = frame_prep(spec)
    try:
        return prep(pixels, bayer).pixels, ""
    except PrepError as exc:
        refused = exc
    if sensor is None:
        raise refused
    # exposure first, as FramePrep checks it: a frame too dark to judge is not trained on
    from edge.darkfield import exposure

    balanced = FramePrep(sensor, False)(pixels, bayer).pixels
    try:
        exposure.check(balanced, sensor.black, prep.haze_floor)
    except exposure.ExposureError as exc:
        raise PrepError(str(exc)) from None
    try:
        ratio = noise.noise_ratio(balanced, sensor)
    except noise.NoiseError:
        raise refused from None
    # above the limits only: below them is a wrong bit depth, as classify says, not grain
    if not math.isfinite(ratio) or ratio <= noise.LIMITS[1]:
        raise refused
    return balanced, str(refused)


def _cells(h: int, w: int) -> np.ndarray:
    return np.array([(r, c) for r in window_origins(h) for c in window_origins(w)], np.int64)


def load_frames(images: str | Path, labels: str | Path | None, spec: dict,
                bit_depth: int | None = None, bayer: bool = False) -> LabelledFrames:
    """Every labelled image of ``images`` read, checked against its label and prepared; one
    :class:`LabelWindowsError` (or the labels' own ``LabelError``) naming every problem."""
    from edge.darkfield.frame_prep import PrepError
    from edge.darkfield.reading import ClassifyError, read_image
    from model.label_eval import labelled_images

    pairs = labelled_images(Path(images), None if labels is None else Path(labels))
    if not pairs:
        raise LabelWindowsError(f"--images {images}: no images to train on")
    out, problems = LabelledFrames(), []
    for path, label in pairs:
        try:
            frame = read_image(path, bit_depth, bayer)
            pixels, refused = prepare(frame.pixels, spec, bayer)
        except ClassifyError as exc:
            problems.append(str(exc))
            continue
        except PrepError as exc:
            problems.append(f"{path} {exc}; classify cannot judge it, so it is not trained on: "
                            "leave it out")
            continue
        mask = label.mask(pixels.shape)
        cells = _cells(*pixels.shape)
        scratch = np.array([label_of(mask[r:r + WINDOW, c:c + WINDOW])[0] == 1
                            for r, c in cells], bool)
        out.append(LabelledFrame(path.name, pixels.astype(np.float32, copy=False), mask,
                                 label.clean, cells[scratch], cells, refused))
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise LabelWindowsError(f"{len(problems)} of {len(pairs)} labelled images cannot be "
                                "trained on:\n  " + "\n  ".join(problems[:MAX_PROBLEMS])
                                + (f"\n  ... and {more} more" if more > 0 else ""))
    if out.refused_by_classify:
        log.warning("%d of %d labelled images are ones classify refuses (%s): trained on as "
                    "they come (grain is not noise); give the fine-tuned model their noise "
                    "limits with 'export frame-envelope --images'",
                    len(out.refused_by_classify), len(out),
                    out.refused_by_classify[0].refused_by_classify)
    return out


class LabelledWindows:
    """Training windows of prepared labelled frames (module docstring): ``batch(start, count)``
    -> windows (count, 1, 256, 256) float32, labels (count,) int64 (1 or 0), visibility
    (count,) float64 (inf for a scratch window: every labelled scratch is visible; 0 else)."""

    def __init__(self, frames: LabelledFrames, seed: int = 0, per_image: int = PER_IMAGE,
                 scratch_share: float = SCRATCH_SHARE, jitter: int = JITTER,
                 bayer: bool = False):
        if not frames:
            raise ValueError("no labelled frames")
        self.frames, self.seed, self.per_image = frames, int(seed), int(per_image)
        self.scratch_share, self.jitter, self.bayer = float(scratch_share), int(jitter), bayer

    def frame_of(self, index: int) -> LabelledFrame:
        """A seeded order of the frames per pass, ``per_image`` windows each."""
        block = index // self.per_image
        n = len(self.frames)
        order = np.random.default_rng([self.seed, block // n, 0x1AB]).permutation(n)
        return self.frames[int(order[block % n])]

    def origin(self, index: int) -> tuple[LabelledFrame, int, int]:
        f = self.frame_of(index)
        rng = np.random.default_rng([self.seed, index, 0x717])
        pool = f.scratch_cells if (len(f.scratch_cells) and rng.random() < self.scratch_share) \
            else f.cells
        r, c = pool[rng.integers(len(pool))]
        dr, dc = rng.integers(-self.jitter, self.jitter + 1, 2)
        h, w = f.pixels.shape
        r, c = min(max(int(r + dr), 0), h - WINDOW), min(max(int(c + dc), 0), w - WINDOW)
        if self.bayer:  # keep the mosaic's phase (an even frame: still inside it)
            r, c = r - r % 2, c - c % 2
        return f, r, c

    def sample(self, index: int) -> tuple[np.ndarray, int]:
        f, r, c = self.origin(index)
        return (f.pixels[r:r + WINDOW, c:c + WINDOW],
                label_of(f.mask[r:r + WINDOW, c:c + WINDOW])[0])

    def batch(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        items = [self.sample(start + i) for i in range(count)]
        x = np.stack([w for w, _ in items])[:, None].astype(np.float32)
        y = np.array([lab for _, lab in items], np.int64)
        return x, y, np.where(y == 1, np.inf, 0.0)

    def validation(self, count: int = VAL_WINDOWS) -> tuple[np.ndarray, np.ndarray]:
        """A fixed set of grid windows -> (frame index, row, column) (n, 3) and labels (n,):
        at most ``count``, half with a scratch where there are that many."""
        rows = [(k, int(r), int(c), label_of(f.mask[r:r + WINDOW, c:c + WINDOW])[0])
                for k, f in enumerate(self.frames) for r, c in f.cells]
        arr = np.array(rows, np.int64)
        rng = np.random.default_rng([self.seed, 0x7A1])
        pos, neg = rng.permutation(np.flatnonzero(arr[:, 3] == 1)), \
            rng.permutation(np.flatnonzero(arr[:, 3] == 0))
        n_pos = min(len(pos), count // 2)
        pick = np.sort(np.concatenate([pos[:n_pos], neg[:count - n_pos]]))
        return arr[pick, :3], arr[pick, 3]

    def windows_at(self, at: np.ndarray) -> np.ndarray:
        return np.stack([self.frames[k].pixels[r:r + WINDOW, c:c + WINDOW]
                         for k, r, c in at])[:, None].astype(np.float32)


class MixedBatches:
    """Batches of ``round(batch * sim_share)`` simulated windows (``sim``, a
    :class:`model.windows.WindowSampler`) and labelled ones: ``batch(step, size)`` -> windows,
    labels (1, 0 or ``FAINT`` for a simulated scratch too weak to see), visibility; a pure
    function of the step."""

    def __init__(self, labelled: LabelledWindows, sim, sim_share: float):
        self.labelled, self.sim, self.sim_share = labelled, sim, float(sim_share)

    def split(self, size: int) -> tuple[int, int]:
        n_sim = int(round(size * self.sim_share))
        return n_sim, size - n_sim

    def batch(self, step: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_sim, n_lab = self.split(size)
        parts = []
        if n_sim:
            parts.append(self.sim.batch_visibility(step * n_sim, n_sim))
        if n_lab:
            parts.append(self.labelled.batch(step * n_lab, n_lab))
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def validate_labelled(model, labelled: LabelledWindows, metrics: dict, sim_share: float
                      ) -> dict:
    """``metrics`` of the simulated validation windows with the labelled validation windows'
    added (``label_val_loss``, ``label_f1``, ...) and ``val_loss`` the two weighed by
    ``sim_share`` (module docstring); the simulated loss kept as ``sim_val_loss``."""
    import torch
    import torch.nn.functional as F

    from model.train import _decisions

    if not hasattr(labelled, "_val"):
        labelled._val = labelled.validation()
    at, y = labelled._val
    logits = []
    with torch.no_grad():
        for s in range(0, len(y), VAL_BATCH):
            logits.append(model(torch.from_numpy(labelled.windows_at(at[s:s + VAL_BATCH]))))
    z = torch.cat(logits)
    truth = torch.from_numpy(y == 1)
    loss = float(F.binary_cross_entropy_with_logits(z, truth.float()))
    d = _decisions(z.numpy() >= 0, truth.numpy())
    out = dict(metrics)
    out["sim_val_loss"] = metrics["val_loss"]
    out["val_loss"] = sim_share * metrics["val_loss"] + (1 - sim_share) * loss
    out.update({"label_val_loss": loss, **{f"label_{k}": v for k, v in d.items()}})
    return out

