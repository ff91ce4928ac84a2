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
  orientation and the mean over orientations (a line has one strong orientation, a blob all).

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

    def __post_init__(self) -> None:
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
    def divisor(self) -> int:
        return 4

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


class PhysicsLayers(nn.Module):
    """The fixed part: ``N x 24 x H x W`` -> ``N x 8 x H/2 x W/2`` (module docstring)."""

    def __init__(self, spec: HybridSpec):
        super().__init__()
        self.register_buffer("lines", line_kernels(spec.line_px, spec.orientations))
        # not persistent: fixed maths, not state (a checkpoint holds what was learned)
        self.register_buffer("cells", torch.full((N_STATES, 4, 1, 1), DN), persistent=False)
        self.pad = spec.line_px // 2

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
        return torch.cat([_compress(dn), half[:, 5:]], dim=1)


class HybridNet(nn.Module):
    """``forward(x)`` returns the scores at half resolution (as the U-Net's finest map) and at
    quarter resolution; ``logits(x)`` the same before the output activation."""

    def __init__(self, spec: HybridSpec | None = None):
        super().__init__()
        self.spec = spec = spec or HybridSpec()
        f = spec.features
        self.physics = PhysicsLayers(spec)
        self.first = nn.Conv2d(PHYSICS_CHANNELS, f, 3, padding=1)
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
