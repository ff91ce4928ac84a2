"""The weak-scratch paper's attention fusion classifier (section II): does a window hold a scratch?

* **Brightness adjustment** (BA, eqs. 1-3): each input channel is stretched from its own
  ``[V_min, V_max]`` within the window to ``[0, 1]`` and concatenated to the raw input. The paper
  stretches to ``[0, 255]`` for 8-bit images; our inputs are already scaled to ``[0, 1]``, so the
  stretch targets the same range. A flat channel (``V_max == V_min``) maps to 0.
* **Body:** ResNet18 (7x7/2 convolution, 3x3/2 max-pooling, four stages of two basic blocks,
  64-128-256-512 features times ``width``).
* **Scale attention** (SA, Res2Net-A, Fig. 4, eq. 4) after each of the four stages: a 1x1
  convolution, a split into 4 groups, ``y_1 = x_1`` and ``y_i = Ka_i(x_i + y_{i-1})`` with atrous
  3x3 convolutions of rates 1, 3, 5 for ``i = 2, 3, 4`` (eq. 4 as printed, so ``y_2`` also sees
  ``x_1``), concatenation and a 1x1 fusion. Choice: batch norm and ReLU after each convolution
  and an identity shortcut around the module, as in the Res2Net block it modifies.
* **Channel attention** (CA, eqs. 5-8) after the last SA: squeeze-excitation
  ``sigma_c = sigmoid(W_d(ReLU(W_u(GAP(P)))))`` (the ReLU of SENet, which eq. 6 leaves out;
  reduction 16) and a spatial branch ``sigma_s = sigmoid(W_s P)``, summed:
  ``sigma_c * P + sigma_s * P``.
  We read "a CA module is then added, followed by the last SA module" as CA coming after the
  fourth SA.
* Global average pooling and one logit (``sigmoid`` of it: the scratch probability).

Inputs (``FusionSpec.in_channels``): 1, the paper's own single dark-field window (``1 x 256 x
256``, the RAW frame divided by ``2 ** bit_depth - 1``; :mod:`model.windows`, the runtime
:mod:`edge.darkfield.classify`), or 24, a window of the six-state space-to-depth map, where the
paper's single frame becomes our six RAW frames. Used with stride 128 (:func:`window_origins`).

Whitening (``FusionSpec.whiten``, our addition for the single-frame data; off for the
24-channel six-state windows and for checkpoints written before it existed): a fixed stage,
nothing learned, in front of BA, so every ablation variant sees the same input. Real single-image
dark-field frames put a weak scratch (a few DN) on a haze of hundreds to thousands of DN that
changes across the frame (vignetting, mottle, the tap seam), next to saturated dust and dark
shadows. Fed as is, batch normalisation sees mostly the haze level and the outliers, and the
network did not learn in our budget (a ResNet18 of width 0.25 stayed at chance for 4 epochs); the
paper's BA alone does not help, because one saturated speck or dead pixel sets a window's
``V_max`` or ``V_min``. The stage turns the window into noise units, the scale at which a scratch
is or is not visible:

* ``dn = x * 4095``: 12-bit DN (the simulator gives every depth the same photons; 8- and
  16-bit inputs scaled to [0, 1] land on the same scale);
* a local background ``b`` in two steps: a coarse one, the median of the 3 x 3 means of
  8 x 8 blocks around each block (a sorting network of Min and Max), bilinearly back to full
  resolution, which a speck, a shadow or a line touching one or two blocks barely moves; then
  the ``background_px`` x ``background_px`` mean (separable, borders averaged over the pixels
  inside) of the window clipped to that coarse background +- 3 noise sigmas, which follows the
  haze closely and which dust, shadows and the scratch itself move by a fraction of a sigma.
  (A plain mean first, as we had, is pulled up by 15 sigmas next to saturated dust, and a
  scratch there vanished.) The side was 15 px; a faint scratch lies inside the clip, so the
  mean takes in its own light and lowers its peak by about a fifth for a 3 px wide scratch
  (its cross-section's integral over the side); 31 px halves that loss, and the haze, which
  changes over hundreds of pixels, is followed as well. On validation 31 px cut false alarms but
  found no more scratches, so the shipped classifier keeps 15 (model card), the default, which
  checkpoints written before the setting existed rebuild with.
  Windows must be a multiple of 8 px on each side (the runtime's are 256);
* the noise sigma there from the camera's model, ``sqrt(read ** 2 + gain * (b - black))``
  (``read_noise_dn``, ``conversion_gain``, ``black_dn`` of the spec: the simulated camera's by
  default; a real camera's measured figures when training for it);
* ``z = asinh((dn - b) / sigma / 2)``: linear within a few sigmas (where weak scratches live),
  logarithmic beyond (saturated dust stays large but finite, so it does not swamp the batch
  statistics).

The whitened window is then the input BA stretches and concatenates, as the paper's raw window
is. A Bayer mosaic would need the same per colour site; the shipped classifier is trained on
grey frames (``model.windows``).

Ablations (Table III): ``FusionSpec`` switches ``ba``, ``sa`` and ``ca`` each remove one
attention module; all three on is the proposed network, all off the plain ResNet18 baseline.
Without BA the stem sees the raw input only (``in_channels`` instead of ``2 * in_channels``
channels: nothing is concatenated); without SA each stage is its two basic blocks; without CA
the last stage goes straight to the pooling. Everything else (widths, initialisation, head) is
the same, so a variant differs from the full network in exactly the module it lacks. The
switches default to on, so a checkpoint written before they existed (its spec has no such
keys) rebuilds as the full network it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

# the sliding window lives with the runtime that classifies whole images (edge.darkfield.classify),
# so training and inference cut the same windows; re-exported here for model.train
from edge.darkfield import STRIDE, WINDOW, window_origins  # noqa: F401

ATROUS_RATES = (1, 3, 5)


@dataclass(frozen=True)
class FusionSpec:
    # settings of the fixed whitening stage: nothing learned depends on their values, so a
    # checkpoint's weights can start a run that changes them (model.train's init)
    FIXED_STAGE: ClassVar[tuple[str, ...]] = ("black_dn", "read_noise_dn", "conversion_gain",
                                              "background_px")

    width: float = 1.0
    in_channels: int = 24
    ba: bool = True  # brightness adjustment (hard attention, eqs. 1-3)
    sa: bool = True  # scale attention after each stage (Res2Net-A, eq. 4)
    ca: bool = True  # channel attention after the last scale attention (eqs. 5-8)
    whiten: bool = False  # the fixed noise-unit stage in front (module docstring)
    black_dn: float = 64.0  # camera noise model at 12 bits, for whiten
    read_noise_dn: float = 2.5
    conversion_gain: float = 0.08  # DN per electron
    background_px: int = 15  # side of whiten's fine background mean (module docstring)

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.width <= 4.0:
            problems.append(f"width must be within (0, 4], got {self.width}")
        if isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int) \
                or self.in_channels < 1:
            problems.append(f"in_channels must be a positive integer, got {self.in_channels!r}")
        if self.whiten and self.in_channels != 1:
            problems.append("whiten is for single dark-field windows (in_channels 1), got "
                            f"{self.in_channels} channels")
        if not (self.read_noise_dn > 0 and self.conversion_gain > 0 and self.black_dn >= 0):
            problems.append("the noise model needs read_noise_dn > 0, conversion_gain > 0 and "
                            f"black_dn >= 0, got {self.read_noise_dn}, {self.conversion_gain}, "
                            f"{self.black_dn}")
        if isinstance(self.background_px, bool) or not isinstance(self.background_px, int) \
                or self.background_px < 3 or self.background_px % 2 == 0:
            problems.append("background_px is the odd side (3 or more) of the whitening's "
                            f"background mean, got {self.background_px!r}")
        for name in ("ba", "sa", "ca", "whiten"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be True or False, got {getattr(self, name)!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def variant(self) -> str:
        """The Table III name: ``ResNet18`` plus the modules that are on."""
        on = [n.upper() for n in ("ca", "sa", "ba") if getattr(self, n)]
        return "+".join(["ResNet18", *on])

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(max(8, int(round(f * self.width / 8.0)) * 8) for f in (64, 128, 256, 512))

    def to_dict(self) -> dict:
        return asdict(self)


def brightness_adjust(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eqs. 1-3 per sample and channel: ``(x - V_min) / (V_max - V_min)``."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    w_mult = torch.where(span > eps, 1.0 / span.clamp_min(eps), torch.zeros_like(span))
    return x * w_mult - w_mult * lo


def _median9(v: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise median of nine tensors by a 19-exchange sorting network (Paeth's): only
    Min and Max, which every runtime has, where a sort or a quantile would not export."""
    def cx(i: int, j: int) -> None:
        v[i], v[j] = torch.minimum(v[i], v[j]), torch.maximum(v[i], v[j])

    for i, j in ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8),
                 (0, 3), (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4),
                 (4, 2)):
        cx(i, j)
    return v[4]


class Whiten(nn.Module):
    """The fixed noise-unit stage (module docstring): ``x`` in [0, 1] -> asinh of local
    contrast over the noise sigma, same shape; height and width multiples of 8."""

    FULL_SCALE = 4095.0  # 12-bit DN
    BLOCK = 8  # coarse background: median of 3 x 3 block means of this side
    CLIP = 3.0  # sigmas around the coarse background that enter the fine one

    def __init__(self, black_dn: float, read_noise_dn: float, conversion_gain: float,
                 size: int = 15):
        super().__init__()
        self.black, self.read2, self.gain = black_dn, read_noise_dn ** 2, conversion_gain
        self.size = size  # fine background window, px

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        k, p = self.size, self.size // 2
        x = F.avg_pool2d(x, (1, k), 1, (0, p), count_include_pad=False)
        return F.avg_pool2d(x, (k, 1), 1, (p, 0), count_include_pad=False)

    def _coarse(self, dn: torch.Tensor) -> torch.Tensor:
        """Median of the 3 x 3 block means around each block, back at full resolution: a
        speck, a shadow or a line touches one or two of the nine blocks and barely moves it."""
        m = F.avg_pool2d(dn, self.BLOCK)
        h, w = m.shape[-2:]
        p = F.pad(m, (1, 1, 1, 1), mode="replicate")
        med = _median9([p[..., i:i + h, j:j + w] for i in range(3) for j in range(3)])
        return F.interpolate(med, scale_factor=float(self.BLOCK), mode="bilinear",
                             align_corners=False)

    def _sigma(self, b: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.read2 + self.gain * F.relu(b - self.black))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dn = x * self.FULL_SCALE
        b = self._coarse(dn)
        reach = self.CLIP * self._sigma(b)
        b = self._mean(torch.minimum(torch.maximum(dn, b - reach), b + reach))
        return _asinh((dn - b) / (2.0 * self._sigma(b)))


def _asinh(u: torch.Tensor) -> torch.Tensor:
    """``asinh`` from ops every exporter has (``aten::asinh`` has no ONNX export); odd, so the
    log never sees the cancellation of ``u + sqrt(u ** 2 + 1)`` for large negative ``u``."""
    a = u.abs()
    return torch.sign(u) * torch.log(a + torch.sqrt(a * a + 1.0))


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
    )


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.a = _conv_bn(c_in, c_out, 3, stride)
        self.b = _conv_bn(c_out, c_out, 3)
        self.down = _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(F.relu(self.a(x)))
        return F.relu(h + (x if self.down is None else self.down(x)))


class ScaleAttention(nn.Module):
    """Res2Net-A (Fig. 4): 4 groups, hierarchical atrous 3x3 convolutions, 1x1 fusion."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        g = channels // groups
        self.groups = groups
        self.reduce = _conv_bn(channels, channels, 1)
        self.atrous = nn.ModuleList(_conv_bn(g, g, 3, dilation=r) for r in ATROUS_RATES)
        self.fuse = _conv_bn(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(F.relu(self.reduce(x)), self.groups, dim=1)
        ys = [parts[0]]
        for part, conv in zip(parts[1:], self.atrous, strict=True):
            ys.append(F.relu(conv(part + ys[-1])))
        return F.relu(self.fuse(torch.cat(ys, dim=1)) + x)


class ChannelAttention(nn.Module):
    """Eq. 8: ``sigma_c * P + sigma_s * P``."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.w_u = nn.Conv2d(channels, hidden, 1)
        self.w_d = nn.Conv2d(hidden, channels, 1)
        self.w_s = nn.Conv2d(channels, 1, 1)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        squeezed = p.mean(dim=(2, 3), keepdim=True)  # eq. 5
        sigma_c = torch.sigmoid(self.w_d(F.relu(self.w_u(squeezed))))  # eq. 6
        sigma_s = torch.sigmoid(self.w_s(p))  # eq. 7
        return sigma_c * p + sigma_s * p


class AttentionFusionNet(nn.Module):
    """``forward(x)`` returns one logit per window, shape ``(N,)``."""

    def __init__(self, spec: FusionSpec | None = None):
        super().__init__()
        self.spec = spec = spec or FusionSpec()
        s = spec.stages
        self.whiten = (Whiten(spec.black_dn, spec.read_noise_dn, spec.conversion_gain,
                              spec.background_px) if spec.whiten else nn.Identity())
        stem_in = 2 * spec.in_channels if spec.ba else spec.in_channels
        self.stem = nn.Sequential(_conv_bn(stem_in, s[0], 7, stride=2), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages, c_in = [], s[0]
        for k, feats in enumerate(s):
            stride = 1 if k == 0 else 2
            stages += [BasicBlock(c_in, feats, stride), BasicBlock(feats, feats, 1)]
            if spec.sa:
                stages.append(ScaleAttention(feats))
            c_in = feats
        self.body = nn.Sequential(*stages)
        # Identity keeps the attribute (and forward) the same for every variant; it has no
        # weights, so the full network's state-dict keys are unchanged
        self.channel_attention = ChannelAttention(s[-1]) if spec.ca else nn.Identity()
        self.fc = nn.Linear(s[-1], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()) and (
                x.dim() != 4 or x.shape[1] != self.spec.in_channels):
            # the stem's convolution would fail later with a message about weights; say what
            # the network takes (skipped while exporting: the check would enter the graph)
            raise ValueError(f"the attention fusion network ({self.spec.variant}) takes windows "
                             f"N x {self.spec.in_channels} x H x W, got "
                             f"{' x '.join(map(str, x.shape))}")
        x = self.whiten(x)
        if self.spec.ba:
            x = torch.cat([x, brightness_adjust(x)], dim=1)
        x = self.channel_attention(self.body(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))[:, 0]
