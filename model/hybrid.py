"""The hybrid scratch network: the six-state ring light's physics as fixed layers, a small learned
head on top.

Why: the U-Net of the glass paper, at the width that trains on 2 CPU cores, did not learn what
the optics already say (a scratch is bright under few LED groups, a contaminant under all; a
scratch is a line), and a filter built from exactly that, with no training
(:class:`model.baselines.PhysicsScorer`), beat it on every count (``edge/models/MODEL_CARD.md``).
The issue allows the physics to help the network ("extra input channels computed in the fused
preparation pass"); here they are computed **inside the graph**, from the same ``frames`` input
(``N x 24 x H x W``, space-to-depth of the 6 RAW frames over ``2**bits - 1``), so the runtime,
its tiling, TensorRT and the ONNX files' interface are the U-Net's, unchanged.

Fixed layers (no weights to learn), per half-resolution pixel, on the sum of each 2 x 2 Bayer
cell per state ``s_k`` (in DN of a cell sum):

* ``contrast`` = brightest state minus the mean of the three dimmest (a sorting network
  of elementwise Min and Max over the 6);
* ``background``: the haze and dark level around the pixel, the smallest 4 x 4 mean of the
  dimmest state within 36 x 36 pixels (the means on a 4 x 4 grid, a 9 x 9 min filter on it,
  back up by repetition: follows vignetting and the haze, not a dust speck or a
  scratch, at a tenth of the cost of a full-resolution min filter);
* ``signal`` = mean over states minus the background; ``gate`` = clip(contrast / signal - 1,
  0, 1): a scratch lit by one or two groups of six has ``contrast / signal`` of 3-6, a
  contaminant lit by all below 1 (the baseline's gate, with a local background instead of the
  RoI's median, because a tile does not see its RoI);
* ``dirt`` = dimmest state minus the background (bright in every state: contamination);
* the gated contrast, 2 x 2 max-pooled to quarter resolution, averaged along a line of
  ``line_px`` pixels in 12 orientations (one fixed convolution with 12 line kernels): the best
  orientation and the mean over orientations (a line has one strong orientation, a blob all);
* **long lines** (``line_lengths``, e.g. 11, 31 and 91 quarter-resolution cells: 0.5, 1.4 and
  4.2 mm), one channel each: a faint scratch is weak per pixel but strong along its length (the
  mean of ``L`` noisy cells has ``sqrt(L)`` times less noise), so each length's line mean, best
  orientation minus the mean over orientations, is divided by the local noise floor and scaled
  by ``sqrt(L / 11)``: a z-score that grows with the length a line keeps. See
  :class:`LineBank` for the choices (coarser grids for the longer lines, clipping, padding).

Every DN feature (all but the gate) goes through ``log1p(x / 16) / log1p(1024)`` (16 DN of a
cell sum is about the read noise; full scale maps near 1), so faint scratches and saturated dust
share one scale.

Learned head, at quarter resolution (the score map's cell is 4 RAW pixels, 46 um; a scratch of
the reject rule's 0.5 mm spans 11 cells): a 3 x 3 convolution, then three 3 x 3 convolutions
dilated 2, 4 and 8 (context of about 0.7 mm each side, to tell a scratch from a row of dust
or a stain's rim), ELU between, a 1 x 1 convolution to one logit, upsampled 2x (nearest) to the
half-resolution grid the runtime's post-processing expects. ``logits`` also returns the
quarter-resolution logit, so the cross-entropy loss sees both scales as it does for the U-Net.

Choices: quarter resolution for the head and the line filter, since the runtime clusters on a grid
2-8 times coarser still and a 1-3 px scratch survives a 2 x 2 max-pool; ``features`` 16 (the
cost and quality curve is in the model card); sigmoid output and cross-entropy for the shipped
network; ``activation = "tanh"`` trains the same network with the glass paper's autoencoder loss,
for the comparison the model card reports.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge.config import N_STATES

IN_CHANNELS = 4 * N_STATES
DN = 4095.0  # the input is RAW / (2**12 - 1): DN of a 12-bit sensor
COMPRESS_DN = 16.0
COMPRESS_NORM = math.log1p(4 * DN / COMPRESS_DN)
PHYSICS_CHANNELS = 8
DILATIONS = (2, 4, 8)
REFERENCE_LINE = 11  # the z-scores of all lengths are scaled to this length's noise


def line_kernels(length: int, orientations: int) -> torch.Tensor:
    """``(orientations, 1, length, length)``: a centred line of ``length`` taps per orientation,
    each tap ``1 / length`` (the same lines as :func:`model.baselines._line_offsets`)."""
    k = torch.zeros(orientations, 1, length, length)
    half = (length - 1) / 2.0
    for j in range(orientations):
        a = math.pi * j / orientations
        for i in range(length):
            t = i - half
            r = int(round(half + t * math.sin(a)))
            c = int(round(half + t * math.cos(a)))
            k[j, 0, r, c] = 1.0
        k[j] /= k[j].sum()
    return k


@dataclass(frozen=True)
class HybridSpec:
    """Everything needed to rebuild the network; stored in checkpoints and ONNX metadata."""

    features: int = 16
    line_px: int = 9  # at quarter resolution: 9 cells, about 0.4 mm
    orientations: int = 12
    in_channels: int = IN_CHANNELS
    activation: str = "sigmoid"  # "sigmoid" (cross-entropy, shipped) or "tanh" (autoencoder)
    # long-line z-score channels, lengths in quarter-resolution cells; () for the networks
    # trained before them (their metadata has no such key)
    line_lengths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "line_lengths", tuple(int(v) for v in self.line_lengths))
        if any(v < 5 or v > 255 or v % 2 == 0 for v in self.line_lengths) or len(
                set(self.line_lengths)) != len(self.line_lengths):
            raise ValueError(f"line_lengths must be distinct odd lengths within 5..255 cells, "
                             f"got {list(self.line_lengths)}")
        if not 4 <= self.features <= 128:
            raise ValueError(f"features must be within 4..128, got {self.features}")
        if self.line_px < 3 or self.line_px % 2 == 0:
            raise ValueError(f"line_px must be odd and at least 3, got {self.line_px}")
        if not 4 <= self.orientations <= 36:
            raise ValueError(f"orientations must be within 4..36, got {self.orientations}")
        if self.in_channels != IN_CHANNELS:
            raise ValueError(f"the hybrid network takes {IN_CHANNELS} channels (6 states x 4 "
                             f"Bayer sites), got {self.in_channels}")
        if self.activation not in ("sigmoid", "tanh"):
            raise ValueError(f"activation must be 'sigmoid' (cross-entropy) or 'tanh' (the "
                             f"autoencoder loss), got {self.activation!r}")

    @property
    def channels(self) -> int:
        return PHYSICS_CHANNELS + len(self.line_lengths)

    @property
    def divisor(self) -> int:
        """What the half-resolution input's sides must divide by: the background's 4 x 4 grid,
        and the long lines' coarsest grid (:func:`line_grid`) at quarter resolution."""
        return max([4] + [2 * line_grid(v)[0] for v in self.line_lengths])

    def to_dict(self) -> dict:
        return asdict(self)


def _compress(dn: torch.Tensor) -> torch.Tensor:
    return torch.log1p(dn.clamp_min(0.0) * (1.0 / COMPRESS_DN)) * (1.0 / COMPRESS_NORM)


# Knuth's sorting network for 6 values: 12 compare-exchanges, ascending. Elementwise Min and Max
# cost a fifth of what ONNX Runtime's TopK over the channel axis does (benchmarks/network_cost.py).
SORT6 = ((1, 2), (4, 5), (0, 2), (3, 5), (0, 1), (3, 4), (1, 4), (0, 3), (2, 5), (1, 3), (2, 4),
         (2, 3))


def sort_states(states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Six ``N x 1 x H x W`` maps -> the same six, sorted per pixel (ascending)."""
    v = list(states)
    for i, j in SORT6:
        v[i], v[j] = torch.minimum(v[i], v[j]), torch.maximum(v[i], v[j])
    return v


def repeat2d(x: torch.Tensor, k: int) -> torch.Tensor:
    """Nearest upsampling by ``k`` as expand + reshape (ONNX Runtime's Resize is slower)."""
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, k, w, k).reshape(n, c, h * k, w * k)


def line_grid(length: int) -> tuple[int, int, int]:
    """``(pool, taps, orientations)`` for a line of ``length`` quarter-resolution cells.

    Choice: lines longer than 15 cells are summed on a coarser grid (2 x 2 means up to 47 cells,
    4 x 4 above), ``taps`` cells of it, with more orientations the longer the line, so that
    the line's end stays within about 0.7 coarse cells of a scratch at the worst angle between
    two orientations. A 1-cell line in a ``p x p`` mean keeps its signal-to-noise ratio (signal
    and noise both fall by ``p``), so the coarse grid costs ``sqrt(p)`` of the ideal ``sqrt(L)``
    gain and saves ``p**3`` of the work of a dense full-resolution kernel.
    """
    pool = 1 if length <= 15 else 2 if length <= 47 else 4
    taps = max(3, int(round(length / pool)) | 1)
    orientations = 12 if pool == 1 else 16 if pool == 2 else 24
    return pool, taps, orientations


class LineBank(nn.Module):
    """Long-line z-scores of the gated contrast, one channel per length (module docstring).

    Choices, per length ``L`` (:func:`line_grid` for the grid):

    * the **noise floor** ``m``: the smallest 4 x 4 mean of the (ungated) contrast within 20 x 20
      cells, plus 4 DN; the contrast of noise alone is about its spread, and a floor of means
      follows the haze without rising on a scratch or a speck;
    * the gated contrast is **clipped** at ``4 m`` before summing, so a saturated speck left by
      the gate adds at most what four noisy cells would, not a line of its own;
    * **reflect padding** (not zeros) at a tile's border: a line cut by the border keeps its
      mean there instead of falling by the missing share; the runtime's tile overlap (32 half
      pixels each side, 16 cells) is shorter than the longest half-line, so near a seam the long
      line sums fewer independent cells (less gain, no bias);
    * ``z = (best orientation - mean over orientations) / m * sqrt(L / 11)``, clamped at 0 and
      back on the quarter grid by repetition.
    """

    def __init__(self, lengths: tuple[int, ...]):
        super().__init__()
        self.grids = [line_grid(v) for v in lengths]
        self.gains = [math.sqrt(v / REFERENCE_LINE) for v in lengths]
        for i, (_, taps, orientations) in enumerate(self.grids):
            self.register_buffer(f"kernel{i}", line_kernels(taps, orientations), persistent=False)

    def forward(self, gated: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        floor = -F.max_pool2d(-F.avg_pool2d(contrast, 4), 5, 1, 2)
        floor = repeat2d(floor, 4) + 4.0
        clipped = torch.minimum(gated, 4.0 * floor)
        out = []
        for i, ((pool, taps, _), gain) in enumerate(zip(self.grids, self.gains, strict=True)):
            x = F.avg_pool2d(clipped, pool) if pool > 1 else clipped
            m = F.avg_pool2d(floor, pool) if pool > 1 else floor
            pad = taps // 2
            lines = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"),
                             getattr(self, f"kernel{i}"))
            z = ((lines.amax(dim=1, keepdim=True) - lines.mean(dim=1, keepdim=True)) / m
                 * gain).clamp_min(0.0)
            out.append(repeat2d(z, pool) if pool > 1 else z)
        return torch.cat(out, dim=1)


def _compress_z(z: torch.Tensor) -> torch.Tensor:
    return torch.log1p(4.0 * z) * (1.0 / math.log1p(64.0))


class PhysicsLayers(nn.Module):
    """The fixed part: ``N x 24 x H x W`` -> ``N x C x H/2 x W/2``, ``C`` = 8 plus one per long
    line (module docstring)."""

    def __init__(self, spec: HybridSpec):
        super().__init__()
        self.register_buffer("lines", line_kernels(spec.line_px, spec.orientations))
        # not persistent: fixed maths, not state (a checkpoint holds what was learned)
        self.register_buffer("cells", torch.full((N_STATES, 4, 1, 1), DN), persistent=False)
        self.pad = spec.line_px // 2
        self.long = LineBank(spec.line_lengths) if spec.line_lengths else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.conv2d(x, self.cells, groups=N_STATES)  # N x 6 x H x W, DN of a cell sum
        v = sort_states(list(torch.split(s, 1, dim=1)))
        total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5]
        brightest, dimmest = v[5], v[0]
        contrast = (brightest - (v[0] + v[1] + v[2]) * (1.0 / 3.0)).clamp_min(0.0)
        local = -F.avg_pool2d(dimmest, 4)  # negated: a min filter is a max-pool of -x
        local = F.max_pool2d(local, 9, 1, 4)  # on the 4 x 4 grid: cheap even unseparated
        background = -repeat2d(local, 4)
        signal = (total * (1.0 / N_STATES) - background).clamp_min(0.0)
        gate = (contrast / (signal + 4.0) - 1.0).clamp(0.0, 1.0)
        gated = contrast * gate
        dirt = dimmest - background
        half = F.max_pool2d(torch.cat([contrast, signal, gated, dirt, brightest - background,
                                       gate], dim=1), 2)
        line = F.conv2d(half[:, 2:3], self.lines, padding=self.pad)
        dn = torch.cat([half[:, :5], line.amax(dim=1, keepdim=True),
                        line.mean(dim=1, keepdim=True)], dim=1)
        fixed = [_compress(dn), half[:, 5:]]
        if self.long is not None:
            fixed.append(_compress_z(self.long(half[:, 2:3], half[:, 0:1])))
        return torch.cat(fixed, dim=1)


class HybridNet(nn.Module):
    """``forward(x)`` returns the scores at half resolution (as the U-Net's finest map) and at
    quarter resolution; ``logits(x)`` the same before the output activation."""

    def __init__(self, spec: HybridSpec | None = None):
        super().__init__()
        self.spec = spec = spec or HybridSpec()
        f = spec.features
        self.physics = PhysicsLayers(spec)
        self.first = nn.Conv2d(spec.channels, f, 3, padding=1)
        self.context = nn.ModuleList(nn.Conv2d(f, f, 3, padding=d, dilation=d)
                                     for d in DILATIONS)
        self.out = nn.Conv2d(f, 1, 1)
        for conv in (self.first, *self.context, self.out):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.elu(self.first(self.physics(x)))
        for conv in self.context:
            h = F.elu(conv(h) + h)
        quarter = self.out(h)
        return [repeat2d(quarter, 2), quarter]

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z) if self.spec.activation == "tanh" else torch.sigmoid(z)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        quarter = self.activate(self.logits(x)[1])  # before upsampling: a quarter of the work
        return [repeat2d(quarter, 2), quarter]
