"""Training patches (glass paper, sections 5.3 and 5.6): RAW windows -> network inputs and targets.

A patch is a ``1024 x 1024`` window of the 6 RAW frames with its scratch mask. It becomes the
network's ``24 x 512 x 512`` input through the runtime's own space-to-depth kernel (no
calibration: the pipeline without a calibration file sees the same numbers), the mask is
max-pooled 2x2, and the "brightest" map (max over the 24 channels, i.e. over the 6 frames and the
2x2 Bayer cell) gives the autoencoder target.

Sources draw a window 2 px larger than the patch, so that augmentation can flip and rotate it and
still cut a patch that starts on a G-R row (Bayer-preserving augmentation, after Liu et al. 2019):
every flip or quarter turn of a GRBG mosaic is one of the four 2x2 phases of GRBG, and a shift of
at most one pixel in each direction restores it. The same flip or turn mirrors the directions the
LED groups light from, so the 6 frames are permuted to keep each scratch's directional signature
physical (a quarter turn moves state ``s`` to ``s + 3`` on a 30-degree ring).

Background patches without any information (nothing brighter than the haze but hot pixels) are
dropped (section 5.6); the batch sampler fixes the number of scratch patches per batch (the paper
uses one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.config import HeadConfig
from edge.kernels.space_to_depth import space_to_depth
from edge.recording import RecordingError, open_sample
from edge.sim.optics import OpticsRenderer
from edge.sim.sample import generate_sample

PATCH = 1024
MARGIN = 2  # extra RAW pixels drawn around a patch for Bayer-preserving flips and turns
GRBG_CODES = np.array([[0, 1], [2, 0]])  # G, R / B, G: the two greens are interchangeable
INFO_LEVEL = 0.012  # above the dark level + haze (about 67 DN of 4095): "something is there"
INFO_PIXELS = 32  # more than the hot pixels of a window
# bump when what a window index draws changes: cached windows of another version are not reused
SAMPLING_VERSION = 2


@dataclass
class Patch:
    """One training example at network resolution."""

    image: np.ndarray  # (24, P/2, P/2) float32 in [0, 1]
    mask: np.ndarray  # (P/2, P/2) bool, scratch pixels
    brightest: np.ndarray  # (P/2, P/2) float32, max over the 24 channels

    @property
    def has_scratch(self) -> bool:
        return bool(self.mask.any())

    @property
    def has_information(self) -> bool:
        return int(np.count_nonzero(self.brightest > INFO_LEVEL)) >= INFO_PIXELS or self.has_scratch


@dataclass
class RawWindow:
    frames: np.ndarray  # (6, P + 2, P + 2) uint16, GRBG at (0, 0)
    mask: np.ndarray  # (P + 2, P + 2) bool


# -- augmentation ---------------------------------------------------------------------------------
def _transform(a: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, turns, axes=(-2, -1))
    return a[..., ::-1] if flip else a


def state_permutation(angles_deg: Sequence[float], turns: int, flip: bool) -> np.ndarray | None:
    """``perm`` such that ``new_frames = frames[perm]`` after the transform, or ``None`` when
    the ring's angles are not closed under it (then the transform is not used)."""
    theta = np.radians(np.asarray(angles_deg, dtype=np.float64))
    # a direction (dx, dy) in (column, row) terms, moved like the pixels are
    v = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    for _ in range(turns % 4):
        v = np.stack([v[:, 1], -v[:, 0]], axis=1)  # np.rot90: (x, y) -> (y, W - 1 - x)
    if flip:
        v = v * np.array([-1.0, 1.0])
    moved = np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 180.0
    base = np.asarray(angles_deg, dtype=np.float64) % 180.0
    diff = np.abs((moved[:, None] - base[None, :] + 90.0) % 180.0 - 90.0)
    target = diff.argmin(axis=1)  # state s is lit from where state target[s] was
    if diff[np.arange(len(base)), target].max() > 1e-6 or len(set(target)) != len(base):
        return None
    perm = np.empty(len(base), np.int64)
    perm[target] = np.arange(len(base))
    return perm


def bayer_augment(window: RawWindow, turns: int, flip: bool, angles_deg: Sequence[float],
                  patch: int = PATCH) -> tuple[np.ndarray, np.ndarray]:
    """Flip/turn a window and cut a GRBG-aligned ``patch`` from it -> (frames, mask)."""
    perm = state_permutation(angles_deg, turns, flip)
    if perm is None:
        turns, flip, perm = 0, False, np.arange(len(angles_deg))
    h, w = window.mask.shape
    codes = _transform(np.tile(GRBG_CODES, (h // 2, w // 2)), turns, flip)
    for dy in (0, 1):
        for dx in (0, 1):
            if np.array_equal(codes[dy:dy + 2, dx:dx + 2], GRBG_CODES):
                frames = _transform(window.frames, turns, flip)[perm, dy:dy + patch,
                                                                  dx:dx + patch]
                mask = _transform(window.mask, turns, flip)[dy:dy + patch, dx:dx + patch]
                return np.ascontiguousarray(frames), np.ascontiguousarray(mask)
    raise AssertionError("every flip or turn of a GRBG mosaic is a phase of GRBG")


def add_noise(image: np.ndarray, rng: np.random.Generator, sigma_max: float = 3.0 / 4095,
              salt_pepper: float = 2e-5) -> np.ndarray:
    """Gaussian noise of a random strength and rare salt-and-pepper pixels, in place."""
    sigma = rng.uniform(0.0, sigma_max)
    if sigma > 0:
        image += rng.normal(0.0, sigma, image.shape).astype(np.float32)
    n = rng.binomial(image.size, salt_pepper)
    if n:
        idx = rng.integers(0, image.size, n)
        image.reshape(-1)[idx] = rng.integers(0, 2, n).astype(np.float32)
    np.clip(image, 0.0, 1.0, out=image)
    return image


def to_patch(frames: np.ndarray, mask: np.ndarray, bit_depth: int = 12) -> Patch:
    """RAW frames ``(6, P, P)`` and mask ``(P, P)`` -> the network's input and targets."""
    image = space_to_depth(frames, bit_depth=bit_depth)
    h, w = mask.shape
    half = mask.reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))
    return Patch(image, half, image.max(axis=0))


# -- sources ----------------------------------------------------------------------------------
def pick_object(objects: Sequence, rng: np.random.Generator):
    """One object: its kind first, uniformly among the kinds present, then one of that kind."""
    kinds = sorted({d.kind for d in objects})
    kind = kinds[int(rng.integers(len(kinds)))]
    same = [d for d in objects if d.kind == kind]
    return same[int(rng.integers(len(same)))]


class SimulatedPatches:
    """Windows rendered on the fly by the optics simulator; the same index gives the same one.

    A scratch window is centred near a point of one of the sample's scratches. A glass window is,
    4 times in 5, centred on a contaminant, **the kind drawn first** (uniformly among the kinds the
    sample holds: dust, stain, fibre), then one object of that kind; else anywhere. Why: drawn by
    object, 9 glass windows in 10 would show dust (25 specks per sample against 0.8 fibres and 2
    stains), and the hard negatives that cost false alarms on held-out glass are fibres and
    stains (sampling version 2; version 1 drew the object directly).
    """

    def __init__(self, cfg: HeadConfig, seed: int, patch: int = PATCH):
        self.cfg, self.seed, self.patch = cfg, seed, patch
        self.head = OpticsRenderer(cfg, shape=(patch + MARGIN, patch + MARGIN))
        self.extent = cfg.stage.roi_grid.extent_mm

    def window(self, index: int, scratch: bool) -> RawWindow:
        rng = np.random.default_rng([self.seed, index])
        sample = generate_sample(int(rng.integers(2**31)), self.extent,
                                 scratch_share=1.0 if scratch else 0.0)
        objects = [d for d in sample.objects if (d.kind == "scratch") == scratch]
        fx, fy = (s * (self.patch + MARGIN) for s in self.head.mm_per_px)
        if objects and (scratch or rng.random() < 0.8):
            d = pick_object(objects, rng)
            pts = d.points
            cx, cy = pts[int(rng.integers(len(pts)))]
        else:  # plain glass somewhere, with whatever lies there
            cx, cy = rng.uniform(0, self.extent[0]), rng.uniform(0, self.extent[1])
        origin = (cx - rng.uniform(0.15, 0.85) * fx, cy - rng.uniform(0.15, 0.85) * fy)
        r = self.head.render(sample, origin, noise_seed=int(rng.integers(2**62)))
        return RawWindow(r.frames, r.mask)


class RecordedPatches:
    """Windows cut from recorded samples with masks (the ML engineer's labelled data)."""

    def __init__(self, sample_dirs: Sequence[str | Path], seed: int, patch: int = PATCH):
        self.seed, self.patch = seed, patch
        self.rois: list[tuple] = []
        self.scratch_pixels: list[np.ndarray] = []
        size = patch + MARGIN
        for path in sample_dirs:
            rec = open_sample(path)
            _, h, w = rec.shape
            if h < size or w < size:
                raise RecordingError(f"{path}: frames of {h} x {w} are smaller than a "
                                     f"{size} x {size} training window")
            for i in (r.index for r in rec.manifest.rois):
                mask = self.roi_mask(rec, i)
                if mask is None:
                    raise RecordingError(f"{path}: RoI {i} has no scratch mask; training needs "
                                         "labelled samples")
                rec.frames(i, verify=True)  # checked once here, then read without hashing
                self.rois.append((rec, i))
                self.scratch_pixels.append(np.argwhere(mask))
        if not self.rois:
            raise RecordingError("no recorded RoIs to train on")

    def roi_mask(self, rec, index: int) -> np.ndarray | None:
        """RoI ``index``'s whole scratch mask: the recorded PNG here; a subclass may draw it
        from labels (:class:`model.recorded_labels.LabelledPatches`)."""
        return rec.mask(index)

    def window_mask(self, k: int, y0: int, x0: int, size: int) -> np.ndarray:
        """The mask of RoI ``k`` (of ``self.rois``) under a window."""
        rec, i = self.rois[k]
        return rec.mask(i, verify=False)[y0:y0 + size, x0:x0 + size]

    def window(self, index: int, scratch: bool) -> RawWindow:
        rng = np.random.default_rng([self.seed, index])
        candidates = [k for k, px in enumerate(self.scratch_pixels) if len(px)] if scratch else []
        k = int(rng.choice(candidates)) if candidates else int(rng.integers(len(self.rois)))
        rec, i = self.rois[k]
        _, h, w = rec.shape
        size = self.patch + MARGIN
        if candidates:
            cy, cx = self.scratch_pixels[k][int(rng.integers(len(self.scratch_pixels[k])))]
            y0 = int(cy - rng.integers(size // 7, size - size // 7))
            x0 = int(cx - rng.integers(size // 7, size - size // 7))
        else:
            y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        # clamp inside the frame, and start on an even pixel to keep the GRBG phase
        y0 = min(max(0, y0), h - size) & ~1
        x0 = min(max(0, x0), w - size) & ~1
        frames = np.asarray(rec.frames(i, verify=False)[:, y0:y0 + size, x0:x0 + size])
        return RawWindow(frames, self.window_mask(k, y0, x0, size))


class CachedWindows:
    """Any window source with its windows kept on disk, from a finite pool, so the simulator
    (or the recordings) is out of the training loop after the first pass.

    Window ``index`` is the source's window ``index % pool`` (a training run cycles over
    ``pool`` windows of each kind; the augmentation, drawn per use, still differs each time),
    stored as ``DIR/<kind>-<ident>-<seed>-<patch>-<n>.npz`` the first time it is asked for
    (``ident``: what else the windows depend on, e.g. the simulated head). Choice:
    uncompressed: a 1024 px window is 3.2 MB, reading it back costs milliseconds, compressing
    it (noisy 12-bit data, about 1/3) seconds. The folder may be shared by runs: a window is
    the same for the same source seed, patch size and index.
    """

    def __init__(self, source, folder: str | Path, pool: int, ident: str = ""):
        if pool < 1:
            raise ValueError(f"the window pool must hold at least 1 window, got {pool}")
        self.source, self.pool = source, int(pool)
        self.seed, self.patch, self.ident = source.seed, source.patch, ident or "data"
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rendered = 0  # windows made by the source in this process (the rest were read)

    def _path(self, index: int, scratch: bool) -> Path:
        kind = "scratch" if scratch else "glass"
        return self.dir / f"{kind}-{self.ident}-{self.seed}-{self.patch}-{index % self.pool}.npz"

    def window(self, index: int, scratch: bool) -> RawWindow:
        path = self._path(index, scratch)
        if path.exists():
            try:
                with np.load(path) as z:
                    return RawWindow(z["frames"], z["mask"])
            except (OSError, ValueError, KeyError):  # a damaged file: made again below
                path.unlink(missing_ok=True)
        w = self.source.window(index % self.pool, scratch)
        self.rendered += 1
        tmp = path.with_name(path.name + ".part.npz")
        np.savez(tmp, frames=w.frames, mask=w.mask)
        tmp.replace(path)  # whole or absent: a run killed mid-write leaves no half window
        return w


class PatchSampler:
    """Batches with a fixed number of scratch patches; empty background patches are dropped."""

    def __init__(self, source, angles_deg: Sequence[float], batch_size: int,
                 scratch_per_batch: int, augment: bool = True, noise: bool = True,
                 bit_depth: int = 12, max_tries: int = 50):
        if not 0 <= scratch_per_batch <= batch_size:
            raise ValueError(f"scratch patches per batch must be within 0..{batch_size}, "
                             f"got {scratch_per_batch}")
        self.source, self.angles = source, tuple(angles_deg)
        self.batch_size, self.scratch_per_batch = batch_size, scratch_per_batch
        self.augment, self.noise, self.bit_depth = augment, noise, bit_depth
        self.max_tries = max_tries
        self.dropped = 0

    def patch(self, index: int, scratch: bool) -> Patch:
        """The first window from ``index`` on that has what was asked for."""
        for attempt in range(self.max_tries):
            key = index * self.max_tries + attempt
            rng = np.random.default_rng([self.source.seed, key, 1])
            window = self.source.window(key, scratch)
            turns, flip = (int(rng.integers(4)), bool(rng.integers(2))) if self.augment else (0, 0)
            frames, mask = bayer_augment(window, turns, flip, self.angles, self.source.patch)
            p = to_patch(frames, mask, self.bit_depth)
            if (p.has_scratch if scratch else (not p.has_scratch and p.has_information)):
                if self.noise:
                    add_noise(p.image, rng)
                return p
            self.dropped += 1
        kind = "scratch" if scratch else "non-empty background"
        raise RuntimeError(f"no {kind} patch in {self.max_tries} windows from index {index}: "
                           "does the data hold any?")

    def batch(self, step: int) -> list[Patch]:
        b = self.batch_size
        return [self.patch(step * b + k, scratch=k < self.scratch_per_batch) for k in range(b)]


def stack(patches: Sequence[Patch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> image ``(N, 24, h, w)``, mask and brightest ``(N, 1, h, w)``."""
    return (np.stack([p.image for p in patches]),
            np.stack([p.mask for p in patches])[:, None],
            np.stack([p.brightest for p in patches])[:, None])
