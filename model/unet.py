"""The glass paper's scratch network (sections 5.1-5.3): a U-Net with nested encoder weights.

Layout, as the paper gives it:

* input ``24 x 512 x 512``: the space-to-depth stack of the 6 RAW frames (formula 1);
* an encoder of 6 levels with 2, 2, 3, 3, 4, 5 convolutions 3x3 and 96, 128, 196, 256, 512,
  768 features, 2x2 max-pooling between levels, ELU activations;
* an asymmetric decoder with 192, 96, 48, 24, 8 features and 2 convolutions per level;
* ResNet shortcuts with their own 1x1 convolutions around every level;
* ``tanh`` outputs at three scales (full, 1/2 and 1/4 of the input's resolution).

Choices where the paper is silent (its Figs. 7 and 9 are not in the text we have):

* A level is ``x -> conv, ELU, ..., conv`` plus ``1x1(x)``, then ELU: the shortcut skips the
  whole level, as "building blocks" with their own 1x1 projection suggest.
* A decoder level upsamples the deeper decoder output 2x (nearest), concatenates the encoder
  features of its scale (U-Net skip), and runs its 2 convolutions with a 1x1 shortcut. The
  three outputs are 1x1 convolutions of the last three decoder levels.
* Nested weights (Fig. 8): one pool ``max_out x max_in x 3 x 3`` (768 x 768 x 3 x 3 at full
  width); an encoder convolution from ``c_in`` to ``c_out`` features uses the slice
  ``pool[:c_out, :c_in]``, as the figure's 256 -> 512 and 512 -> 512 kernels do. The first two
  encoder convolutions have their own kernels (the paper says so); every convolution keeps its
  own bias. The pool is one ``nn.Parameter``, so each slice's gradient lands in it.
* Initialisation: Xavier-uniform with magnitude 3 (section 5.6), i.e. bound
  ``sqrt(6 / (fan_in + fan_out))``. For the pool, the fans are the mean over the convolutions
  that use it, so a typical slice starts at Xavier scale.

Parameter counts. At full width we count **9.56 M with nested weights and 40.09 M without**;
the paper says 13.9 M and 44.4 M. The saving from nesting matches theirs exactly: the nested
kernels hold 35.84 M numbers, the pool 5.31 M (768 x 768 x 3 x 3), so nesting saves 30.53 M, and
the paper's counts differ by 30.5 M. Both of our counts are 4.3 M below theirs, the same amount:
that is the part of the network outside the nested kernels (first two convolutions, shortcuts,
decoder, heads: 4.25 M here, about 8.6 M implied by the paper), whose layout is in Figs. 7 and 9,
which the text does not describe.
Learned upsampling (transposed convolutions) is the likeliest source; we keep nearest
upsampling, which has no weights. A test pins our counts and this arithmetic.

Input compression (our addition, off by default): dark-field frames are mostly near the dark
level while dust saturates, so a faint scratch is a difference of a few thousandths of full
scale. ``input_compression = k`` maps inputs through ``log1p(k x) / log1p(k)`` (still ``[0, 1]``)
as the network's first operation, which spreads the faint end; it is part of the exported graph,
so the runtime feeds the same space-to-depth values either way.

Small variants for CPU training: ``width`` scales every feature count (rounded to a multiple of
4, at least 4) and ``levels`` (4 to 6) keeps the first encoder levels and the matching decoder.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_FEATURES = (96, 128, 196, 256, 512, 768)
ENCODER_CONVS = (2, 2, 3, 3, 4, 5)
DECODER_FEATURES = (192, 96, 48, 24, 8)
IN_CHANNELS = 24
OUTPUT_SCALES = 3


def _scaled(n: int, width: float) -> int:
    return max(4, int(round(n * width / 4.0)) * 4)


@dataclass(frozen=True)
class UNetSpec:
    """Everything needed to rebuild the network; stored in checkpoints and ONNX metadata."""

    width: float = 1.0
    levels: int = 6
    nested: bool = True
    in_channels: int = IN_CHANNELS
    activation: str = "tanh"  # "tanh" (autoencoder loss) or "sigmoid" (cross-entropy twin)
    input_compression: float = 0.0  # k > 0: inputs x -> log1p(k x) / log1p(k); 0: as they are

    def __post_init__(self) -> None:
        if not 0.0 < self.width <= 4.0:
            raise ValueError(f"width must be within (0, 4], got {self.width}")
        if not 4 <= self.levels <= 6:
            raise ValueError(f"levels must be 4, 5 or 6, got {self.levels}")
        if self.input_compression < 0:
            raise ValueError(f"input_compression must be >= 0, got {self.input_compression}")
        if self.activation not in ("tanh", "sigmoid"):
            raise ValueError(f"activation must be 'tanh' or 'sigmoid', got {self.activation!r}")

    @property
    def encoder(self) -> tuple[int, ...]:
        return tuple(_scaled(f, self.width) for f in ENCODER_FEATURES[: self.levels])

    @property
    def decoder(self) -> tuple[int, ...]:
        # the decoder climbs back from the deepest level: its last levels are the paper's last
        return tuple(_scaled(f, self.width) for f in DECODER_FEATURES[6 - self.levels:])

    @property
    def divisor(self) -> int:
        """Input sides must be multiples of this (one 2x2 pooling per level below the first)."""
        return 2 ** (self.levels - 1)

    def to_dict(self) -> dict:
        return asdict(self)


class WeightPool(nn.Module):
    """The shared 3x3 kernel pool of the nested encoder convolutions."""

    def __init__(self, max_out: int, max_in: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_out, max_in, 3, 3))
        self.users: list[tuple[int, int]] = []

    def reset_parameters(self) -> None:
        fan_in = sum(i for _, i in self.users) / len(self.users) * 9
        fan_out = sum(o for o, _ in self.users) / len(self.users) * 9
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)


class Conv3x3(nn.Module):
    """A 3x3 convolution with its own kernel, or with a slice of a :class:`WeightPool`."""

    def __init__(self, c_in: int, c_out: int, pool: WeightPool | None = None):
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        # a plain attribute, not a submodule: the pool is registered once, on the network
        self.__dict__["pool"] = pool
        if pool is None:
            self.weight = nn.Parameter(torch.empty(c_out, c_in, 3, 3))
            nn.init.xavier_uniform_(self.weight)
        else:
            if c_out > pool.weight.shape[0] or c_in > pool.weight.shape[1]:
                raise ValueError(f"a {c_in} -> {c_out} kernel does not fit the pool")
            pool.users.append((c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def kernel(self) -> torch.Tensor:
        pool = self.__dict__["pool"]
        return self.weight if pool is None else pool.weight[: self.c_out, : self.c_in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel(), self.bias, padding=1)


class Level(nn.Module):
    """Convolutions with ELU between them, a 1x1 shortcut around them, ELU after the sum."""

    def __init__(self, convs: list[Conv3x3]):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.shortcut = nn.Conv2d(convs[0].c_in, convs[-1].c_out, 1)
        nn.init.xavier_uniform_(self.shortcut.weight)
        nn.init.zeros_(self.shortcut.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for k, conv in enumerate(self.convs):
            h = conv(h)
            if k + 1 < len(self.convs):
                h = F.elu(h)
        return F.elu(h + self.shortcut(x))


class GlassUNet(nn.Module):
    """``forward(x)`` returns the three score maps, finest first; ``logits(x)`` the same
    before the output activation (for the cross-entropy loss)."""

    def __init__(self, spec: UNetSpec | None = None):
        super().__init__()
        self.spec = spec = spec or UNetSpec()
        enc = spec.encoder
        self.pool = WeightPool(max(enc), max((spec.in_channels, *enc))) if spec.nested else None
        self.encoder = nn.ModuleList()
        c_in, n_own = spec.in_channels, 0
        for feats, n_convs in zip(enc, ENCODER_CONVS, strict=False):
            convs = []
            for _ in range(n_convs):
                own = self.pool is None or n_own < 2
                convs.append(Conv3x3(c_in, feats, None if own else self.pool))
                n_own += 1
                c_in = feats
            self.encoder.append(Level(convs))
        self.decoder = nn.ModuleList()
        below = enc[-1]
        for feats, skip in zip(spec.decoder, reversed(enc[:-1]), strict=True):
            self.decoder.append(Level([Conv3x3(below + skip, feats), Conv3x3(feats, feats)]))
            below = feats
        self.heads = nn.ModuleList(nn.Conv2d(f, 1, 1) for f in spec.decoder[-OUTPUT_SCALES:])
        for head in self.heads:
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)
        if self.pool is not None:
            self.pool.reset_parameters()

    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        k = self.spec.input_compression
        if k > 0:
            x = torch.log1p(x.clamp_min(0.0) * k) * (1.0 / math.log1p(k))
        skips = []
        for k, level in enumerate(self.encoder):
            if k:
                x = F.max_pool2d(x, 2)
            x = level(x)
            skips.append(x)
        maps = []
        for level, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = level(torch.cat([x, skip], dim=1))
            maps.append(x)
        outs = [head(m) for head, m in zip(self.heads, maps[-OUTPUT_SCALES:], strict=True)]
        return outs[::-1]

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z) if self.spec.activation == "tanh" else torch.sigmoid(z)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.activate(z) for z in self.logits(x)]


def parameter_count(model: nn.Module) -> int:
    """Distinct trainable numbers (a shared pool counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
