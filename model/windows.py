"""Windows of single-image dark-field frames for the weak-scratch classifier (weak-scratch paper,
section III.A and III.E), drawn from :mod:`edge.sim.darkfield`.

The paper turns 112 frames of 2048 x 2048 px (80 train, 12 validation, 20 test) into 256 x 256
windows sampled three ways, each labelled scratch or background:

* ``gaussian``: centred near a scratch: a scratch pixel drawn uniformly from the frame's mask
  (long scratches get more windows, as in the paper's Fig. 5a), moved by a normal offset of
  sigma ``window / 4`` (64 px) per axis, the window clipped into the frame. Mostly scratch.
  A frame without a labelled scratch gives a ``random`` window instead (recorded as such).
* ``uniform``: a node of the regular grid of the paper's sliding-window inspection (stride
  ``window / 2``, i.e. 128 px of redundancy, the last window flush with the edge), drawn uniformly.
  Mostly background: scratches are sparse.
* ``random``: an origin uniform over every position that keeps the window inside the frame;
  "to supplement the sample".

Mix 50 / 30 / 20 % (``DEFAULT_MIX``): the paper gives no shares, only the result (Table I,
16 800 scratch and 14 120 background training windows, 54 % scratch); this mix lands near it with
the default frames.

Label (three values): a window with fewer than :data:`WINDOW_MIN_PIXELS` (4) scratch-mask
pixels (the rule of ``model.train`` for the six-state data) is background (0). One with more is
a scratch (1) when the scratch light on its mask pixels could be seen at all: its matched-filter
signal-to-noise ``sqrt(sum snr_i ** 2)`` over those pixels (``snr_i`` the per-pixel figure of
:attr:`edge.sim.darkfield.DarkfieldFrame.scratch_snr`) reaches :data:`ROSE_SNR` (5, the Rose
criterion for seeing an object in noise). Below it the window is :data:`FAINT` (-1): the
simulator drew a groove there, but its light is lost in the noise, so no annotator (the paper's
labels are drawn by people) and no detector could tell it from background. Choice: faint windows
are left out of the training loss and of the headline metrics, and reported on their own
(how many, how many flagged): counting them as scratches would ask for the impossible, and
counting them as background would teach the network to ignore light it should follow. In our
window sets 2-7 % of the windows are faint (20 of 1,024 test, 36 of 512 validation windows).

Input: the RAW window as the camera gives it, divided by ``2 ** bit_depth - 1``, float32
``1 x 256 x 256``. A Bayer frame stays a mosaic (one channel, the runtime classifier sees the
same); window origins are then even, so every window starts on a G-R row and the classifier
sees one phase of the GRBG pattern.

Determinism: window ``index`` of a :class:`WindowSampler` is a pure function of (``seed``,
``index``) and the sampler's settings. Consecutive indexes share a frame (``per_image`` windows a
block; each pass over the frames visits them in a seeded order), so iterating renders each frame
once per block and a small cache of rendered frames suffices; random access is only slower.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.darkfield import window_origins  # the runtime's grid: training sees the same
from edge.sim.darkfield import (
    DARKFIELD_VERSION,
    DarkfieldConfig,
    DarkfieldFrame,
    DarkfieldRenderer,
    check_seed,
)

WINDOW = 256  # the paper's window side, px
WINDOW_MIN_PIXELS = 4  # model.train labels its six-state windows by this rule too
ROSE_SNR = 5.0  # matched signal-to-noise a scratch needs to be seen (module docstring)
FAINT = -1  # label of a window whose scratch is below ROSE_SNR
MODES = ("gaussian", "uniform", "random")
DEFAULT_MIX = (0.5, 0.3, 0.2)  # gaussian, uniform, random
WINDOWS_PER_IMAGE = 64  # consecutive windows cut from one frame
HELDOUT_WINDOWS = 1024  # near the paper's 1461 test windows; 64 MB compressed at 12 bits
WINDOWS_FORMAT = 2  # bump when the stored layout or the sampling rule changes
CACHE_IMAGES = 4  # rendered frames kept by a sampler: ~12 MB each at 2048 x 2048


@dataclass(frozen=True)
class Window:
    image: np.ndarray  # (1, W, W) float32 in [0, 1]
    label: int  # 1 scratch, 0 background, FAINT a scratch too weak to see
    mode: str  # one of MODES: how the origin was drawn
    image_seed: int
    origin: tuple[int, int]  # row, column of the top-left pixel in the frame
    scratch_pixels: int  # mask pixels inside the window
    visibility: float  # matched signal-to-noise of the scratch light on those pixels


@dataclass(frozen=True)
class ImageSplit:
    """Frame seeds for training, validation and image-level testing; disjoint."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]


def image_split(first_seed: int = 0, n_train: int = 80, n_validation: int = 12,
                n_test: int = 20) -> ImageSplit:
    """Consecutive seeds from ``first_seed``: the paper's 80 / 12 / 20 frames by default."""
    first_seed = check_seed(first_seed, "first_seed")
    for name, n in (("n_train", n_train), ("n_validation", n_validation), ("n_test", n_test)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")
    a, b = first_seed + n_train, first_seed + n_train + n_validation
    return ImageSplit(tuple(range(first_seed, a)), tuple(range(a, b)),
                      tuple(range(b, b + n_test)))


EXTRA_TRAIN_SEED = 100_000  # far above any split's validation and test seeds
# frames for choosing between classifiers (model.window_eval, on="development"): none is a
# training frame, nor a validation or test frame of the paper's split or of the 200-frame test
# set (seeds 92-291); 4,096 windows of them, since 12 validation frames are too few to tell
# two classifiers apart
DEVELOPMENT_SEEDS = tuple(range(300, 400))
DEVELOPMENT_WINDOWS = 4096


def train_seeds(train_images: int = 80, extra_train_images: int = 0) -> tuple[int, ...]:
    """A classifier's training frames: the split's (seeds 0..) and ``extra_train_images`` more
    from :data:`EXTRA_TRAIN_SEED` (``model.train``), so that validation and test frames stay
    where :func:`image_split` puts them."""
    return (image_split(0, train_images, 1, 1).train
            + tuple(range(EXTRA_TRAIN_SEED, EXTRA_TRAIN_SEED + extra_train_images)))


def scale(raw: np.ndarray, bit_depth: int) -> np.ndarray:
    """RAW DN -> float32 in [0, 1] with a leading channel axis: the classifier's input."""
    return (raw.astype(np.float32) / np.float32(2 ** bit_depth - 1))[..., None, :, :]


def label_of(mask_window: np.ndarray, snr_window: np.ndarray | None = None
             ) -> tuple[int, int, float]:
    """(label, scratch pixels, visibility) of a window from its mask and, if given, the
    per-pixel scratch signal-to-noise on it (zero off the mask); without it the window's
    scratch counts as visible (module docstring)."""
    n = int(np.count_nonzero(mask_window))
    if snr_window is None:
        return int(n >= WINDOW_MIN_PIXELS), n, math.inf if n else 0.0
    return _label(n, float(np.sqrt(np.sum(np.square(snr_window, dtype=np.float64)))))


def _label(n: int, visibility: float, limit: float = ROSE_SNR) -> tuple[int, int, float]:
    if n < WINDOW_MIN_PIXELS:
        return 0, n, visibility
    return (1 if visibility >= limit else FAINT), n, visibility


def check_limit(limit: float) -> float:
    """A visibility limit for scoring: at least :data:`ROSE_SNR`, below which nothing is seen."""
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (
            math.isfinite(limit) and limit >= ROSE_SNR):
        raise ValueError(f"the visibility limit must be a number of at least {ROSE_SNR:g} (the "
                         f"Rose criterion, below which windows are faint anyway), got {limit!r}")
    return float(limit)


def relabel(labels: np.ndarray, visibility: np.ndarray, limit: float) -> np.ndarray:
    """Window labels scored at another visibility ``limit`` (at least :data:`ROSE_SNR`): a
    scratch window whose visibility is below it becomes :data:`FAINT`, counted neither way;
    background and faint windows stay. Training keeps the Rose criterion; evaluation may judge
    by what a person sees (``model.window_eval``)."""
    limit = check_limit(limit)
    labels = np.asarray(labels)
    out = labels.copy()
    out[(labels == 1) & (np.asarray(visibility) < limit)] = FAINT
    return out


class _Truth:
    """A frame's scratch pixels (row, column) with their squared signal-to-noise, for window
    labels by :data:`ROSE_SNR` without a dense map per frame."""

    def __init__(self, frame: DarkfieldFrame):
        at = np.flatnonzero(frame.mask)
        w = frame.mask.shape[1]
        self.rows, self.cols = at // w, at % w
        self.snr2 = np.square(frame.scratch_snr, dtype=np.float64)

    @property
    def size(self) -> int:
        return self.rows.size

    def label(self, row: int, col: int, win: int, limit: float = ROSE_SNR
              ) -> tuple[int, int, float]:
        inside = ((self.rows >= row) & (self.rows < row + win) & (self.cols >= col)
                  & (self.cols < col + win))
        return _label(int(np.count_nonzero(inside)), float(np.sqrt(self.snr2[inside].sum())),
                      limit)


def image_windows(frame: DarkfieldFrame, window: int = WINDOW, stride: int | None = None,
                  pixels: np.ndarray | None = None, limit: float = ROSE_SNR
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every window of the sliding-window grid of one frame, for image-level evaluation:
    origins (K, 2) row/column, windows (K, 1, W, W) float32, labels (K,) int64 (1, 0 or
    :data:`FAINT`; a scratch window below the visibility ``limit`` is faint, :func:`relabel`).
    ``pixels``: cut the windows from these (the frame as the runtime prepared it, H x W in
    [0, 1]) instead of the frame's RAW image."""
    limit = check_limit(limit)
    h, w = frame.image.shape
    rows, cols = window_origins(h, window, stride), window_origins(w, window, stride)
    origins = np.array([(r, c) for r in rows for c in cols], dtype=np.int64)
    source = frame.image if pixels is None else pixels
    cut = np.stack([source[r:r + window, c:c + window] for r, c in origins])
    truth = _Truth(frame)
    labels = np.array([truth.label(int(r), int(c), window, limit)[0] for r, c in origins],
                      dtype=np.int64)
    wins = scale(cut, frame.config.bit_depth) if pixels is None else cut[:, None]
    return origins, wins, labels


def config_key(config: DarkfieldConfig) -> dict:
    """A frame configuration as the window sets' settings record it: every field, except a
    ``texture`` of ``"none"``, which renders frames byte for byte as before the field existed,
    so the sets and checkpoints made then keep their keys; any other texture is kept."""
    out = asdict(config)
    if out.get("texture") == "none":
        del out["texture"]
    return out


def _check_mix(mix: Sequence[float]) -> np.ndarray:
    arr = np.asarray(mix, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or (arr < 0).any() or arr.sum() <= 0:
        raise ValueError(f"mix must be three non-negative shares (gaussian, uniform, random) "
                         f"with a positive sum, got {tuple(mix)}")
    return arr / arr.sum()


class WindowSampler:
    """Training windows from the frames ``image_seeds`` rendered with ``config``.

    ``sample(index)`` gives a :class:`Window`; ``sampler[index]`` its (image, label); ``batch``
    stacks consecutive ones. ``sigma`` (px) is the Gaussian mode's spread, ``window / 4`` if None.
    ``alt_config`` renders the frames of ``alt_seeds`` instead (training frames with another
    scratch brightness range, :mod:`model.train`); it must keep the frame's shape, depth and
    mosaic.
    """

    def __init__(self, image_seeds: Sequence[int], config: DarkfieldConfig | None = None, *,
                 seed: int = 0, window: int = WINDOW, mix: Sequence[float] = DEFAULT_MIX,
                 per_image: int = WINDOWS_PER_IMAGE, sigma: float | None = None,
                 cache_images: int = CACHE_IMAGES, alt_config: DarkfieldConfig | None = None,
                 alt_seeds: Sequence[int] = ()):
        self.config = config if config is not None else DarkfieldConfig()
        self.alt_seeds = frozenset(int(x) for x in alt_seeds)
        if self.alt_seeds and alt_config is None:
            raise ValueError("alt_seeds need an alt_config to render them with")
        if alt_config is not None and (alt_config.shape, alt_config.bit_depth, alt_config.bayer) \
                != (self.config.shape, self.config.bit_depth, self.config.bayer):
            raise ValueError("alt_config must keep the frame's shape, bit depth and mosaic")
        self.alt_config = alt_config
        self.image_seeds = tuple(check_seed(s, "an image seed") for s in image_seeds)
        if not self.image_seeds:
            raise ValueError("image_seeds must name at least one frame")
        if not self.alt_seeds <= set(self.image_seeds):
            raise ValueError(f"alt_seeds must be among image_seeds, got "
                             f"{sorted(self.alt_seeds - set(self.image_seeds))[:5]} outside them")
        if len(set(self.image_seeds)) != len(self.image_seeds):
            raise ValueError(f"image_seeds must be distinct, got {list(image_seeds)}")
        self.seed = check_seed(seed)
        h, w = self.config.shape
        if not isinstance(window, int) or window < 8:
            raise ValueError(f"window must be an integer of at least 8 px, got {window!r}")
        if window > min(h, w):
            raise ValueError(f"a {window} px window does not fit in a {h} x {w} px frame")
        if self.config.bayer and window % 2:
            raise ValueError(f"a window of a Bayer mosaic must have an even side, got {window}")
        if not isinstance(per_image, int) or per_image < 1:
            raise ValueError(f"per_image must be a positive integer, got {per_image!r}")
        if cache_images < 1:
            raise ValueError(f"cache_images must be at least 1, got {cache_images}")
        self.sigma = window / 4.0 if sigma is None else float(sigma)
        if not self.sigma > 0 or not math.isfinite(self.sigma):
            raise ValueError(f"sigma must be a positive number of pixels, got {sigma}")
        self.window = window
        self.mix = _check_mix(mix)
        self.per_image = per_image
        self.grid = (window_origins(h, window), window_origins(w, window))
        self._renderer = DarkfieldRenderer(self.config)
        self._alt_renderer = DarkfieldRenderer(alt_config) if alt_config is not None else None
        self._cache: OrderedDict[int, tuple[np.ndarray, _Truth]] = OrderedDict()
        self._cache_size = cache_images

    def settings(self) -> dict:
        """Everything that fixes the windows, as plain JSON values (:func:`config_key` of each
        configuration)."""
        alt = ({"alt_config": config_key(self.alt_config), "alt_seeds": sorted(self.alt_seeds)}
               if self.alt_seeds else {})
        return {"image_seeds": list(self.image_seeds), "config": config_key(self.config), **alt,
                "seed": self.seed, "window": self.window, "mix": self.mix.tolist(),
                "per_image": self.per_image, "sigma": self.sigma,
                "darkfield_version": DARKFIELD_VERSION, "format": WINDOWS_FORMAT}

    def _frame(self, image_seed: int) -> tuple[np.ndarray, _Truth]:
        hit = self._cache.get(image_seed)
        if hit is not None:
            self._cache.move_to_end(image_seed)
            return hit
        renderer = self._alt_renderer if image_seed in self.alt_seeds else self._renderer
        f = renderer.render(image_seed)
        entry = (f.image, _Truth(f))
        self._cache[image_seed] = entry
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def image_seed_of(self, index: int) -> int:
        """The frame window ``index`` is cut from: a seeded order of the frames per pass."""
        block = index // self.per_image
        n = len(self.image_seeds)
        order = np.random.default_rng([self.seed, block // n, 0x0F]).permutation(n)
        return self.image_seeds[int(order[block % n])]

    def sample(self, index: int) -> Window:
        raw, label, mode, image_seed, origin, n, vis = self._cut(index)
        return Window(scale(raw, self.config.bit_depth), label, mode, image_seed, origin, n,
                      vis)

    def _cut(self, index: int) -> tuple[np.ndarray, int, str, int, tuple[int, int], int, float]:
        """The RAW window ``index`` (a view into the cached frame) and its truth."""
        index = check_seed(index, "index")
        image_seed = self.image_seed_of(index)
        image, truth = self._frame(image_seed)
        rng = np.random.default_rng([self.seed, index, 0x57])
        mode = MODES[int(rng.choice(3, p=self.mix))]
        h, w = image.shape
        win = self.window
        if mode == "gaussian" and truth.size == 0:
            mode = "random"
        if mode == "gaussian":
            k = int(rng.integers(truth.size))
            r, c = int(truth.rows[k]), int(truth.cols[k])
            dr, dc = rng.normal(0.0, self.sigma, 2)
            row = min(max(round(r + dr - win / 2), 0), h - win)
            col = min(max(round(c + dc - win / 2), 0), w - win)
        elif mode == "uniform":
            rows, cols = self.grid
            row, col = rows[rng.integers(len(rows))], cols[rng.integers(len(cols))]
        else:
            row, col = int(rng.integers(h - win + 1)), int(rng.integers(w - win + 1))
        if self.config.bayer:
            row, col = row - row % 2, col - col % 2  # h, w even: still inside the frame
        label, n, vis = truth.label(row, col, win)
        return (image[row:row + win, col:col + win], label, mode, image_seed,
                (int(row), int(col)), n, vis)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        s = self.sample(index)
        return s.image, s.label

    def batch(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows ``start .. start + count - 1``: (count, 1, W, W) float32 and (count,) int64."""
        images, labels, _ = self.batch_visibility(start, count)
        return images, labels

    def batch_visibility(self, start: int, count: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`batch` and each window's visibility, (count,) float64: the matched
        signal-to-noise of its scratch-mask pixels, whatever its label."""
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        items = [self.sample(start + i) for i in range(count)]
        return (np.stack([s.image for s in items]),
                np.array([s.label for s in items], dtype=np.int64),
                np.array([s.visibility for s in items], dtype=np.float64))

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        index = 0
        while True:
            yield self[index]
            index += 1


@dataclass
class WindowSet:
    """A fixed set of windows kept as RAW DN (exact, half the size of float32)."""

    raw: np.ndarray  # (N, W, W) uint16
    labels: np.ndarray  # (N,) int64: 1 scratch, 0 background, FAINT too weak to see
    modes: np.ndarray  # (N,) int64 index into MODES
    image_seeds: np.ndarray  # (N,) int64
    origins: np.ndarray  # (N, 2) int64 row, column
    scratch_pixels: np.ndarray  # (N,) int64
    visibility: np.ndarray  # (N,) float64, matched signal-to-noise of the scratch pixels
    bit_depth: int
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return scale(self.raw[i], self.bit_depth), int(self.labels[i])

    def images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Windows ``start:stop`` as the classifier's input, (n, 1, W, W) float32."""
        return scale(self.raw[start:stop], self.bit_depth)


def _from_sampler(sampler: WindowSampler, count: int) -> WindowSet:
    cuts = [sampler._cut(i) for i in range(count)]
    raw = np.stack([c[0] for c in cuts])
    return WindowSet(raw, np.array([c[1] for c in cuts], np.int64),
                     np.array([MODES.index(c[2]) for c in cuts], np.int64),
                     np.array([c[3] for c in cuts], np.int64),
                     np.array([c[4] for c in cuts], np.int64).reshape(-1, 2),
                     np.array([c[5] for c in cuts], np.int64),
                     np.array([c[6] for c in cuts], np.float64),
                     sampler.config.bit_depth)


def _load(path: Path, meta: str) -> WindowSet | None:
    """The set stored at ``path`` if it is whole and was made with ``meta``; else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["meta"]) != meta:
                return None
            return WindowSet(z["raw"], z["labels"], z["modes"], z["image_seeds"], z["origins"],
                             z["scratch_pixels"], z["visibility"], int(z["bit_depth"]), path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def heldout_windows(cache_dir: str | os.PathLike, image_seeds: Sequence[int],
                    config: DarkfieldConfig | None = None, *, count: int = HELDOUT_WINDOWS,
                    seed: int = 0, window: int = WINDOW, mix: Sequence[float] = DEFAULT_MIX,
                    per_image: int = WINDOWS_PER_IMAGE) -> WindowSet:
    """The fixed held-out window set: windows ``0 .. count - 1`` of a :class:`WindowSampler`
    over ``image_seeds`` (held-out frames, e.g. :func:`image_split` ``.test``), rendered once and
    kept in ``cache_dir`` under a name that digests every setting, then read back.

    A file that is damaged or made with other settings is rebuilt; the write goes through a
    temporary file and a rename, so a reader never sees half a set.
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    sampler = WindowSampler(image_seeds, config, seed=seed, window=window, mix=mix,
                            per_image=per_image, cache_images=1)
    meta = json.dumps({**sampler.settings(), "count": count}, sort_keys=True)
    digest = hashlib.sha256(meta.encode()).hexdigest()[:16]
    folder = Path(cache_dir)
    path = folder / f"darkfield-windows-{digest}.npz"
    if path.exists():
        found = _load(path, meta)
        if found is not None:
            return found
    folder.mkdir(parents=True, exist_ok=True)
    ws = _from_sampler(sampler, count)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, raw=ws.raw, labels=ws.labels, modes=ws.modes,
                                image_seeds=ws.image_seeds, origins=ws.origins,
                                scratch_pixels=ws.scratch_pixels, visibility=ws.visibility,
                                bit_depth=ws.bit_depth,
                                meta=np.array(meta))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    ws.path = path
    return ws
