"""The glass paper's "autoencoder" L2 loss (section 5.4) and the cross-entropy it is compared with.

Target (``../shared/DESIGN.md``; the printed eq. 2 lost a sign): scratch pixels -> +1, every other
pixel -> ``-max_i I_i``, the brightest of the 6 frames scaled to ``[0, 1]``. So the network must
restore dust, stains and background with an inverted sign, which pushes them away from scratches.

Per scale, eq. 3: ``L = alpha * fp + (1 - alpha) * fn`` with ``fp = max(0, y - t)^2`` (scored
higher than the target) and ``fn = max(0, t - y)^2``, averaged over pixels; eq. 4 sums the three
scales. The coarser targets are 2x2 and 4x4 max-pools of the full-resolution ones (mask and
brightness alike), so a thin scratch survives downscaling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_ALPHA = 0.7


def pooled(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Max-pool ``t`` (``N x 1 x H x W``) down to ``size``."""
    h, w = t.shape[-2:]
    if (h, w) == tuple(size):
        return t
    if h % size[0] or w % size[1]:
        raise ValueError(f"cannot pool {h} x {w} down to {size[0]} x {size[1]}")
    return F.max_pool2d(t, (h // size[0], w // size[1]))


def autoencoder_target(mask: torch.Tensor, brightest: torch.Tensor) -> torch.Tensor:
    return torch.where(mask > 0.5, torch.ones_like(brightest), -brightest)


def autoencoder_loss(outputs: Sequence[torch.Tensor], mask: torch.Tensor,
                     brightest: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Eqs. 3-4. ``outputs`` are the tanh maps, ``mask`` and ``brightest`` ``N x 1 x H x W``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    mask, brightest = mask.float(), brightest.float()
    total = outputs[0].new_zeros(())
    for y in outputs:
        size = tuple(y.shape[-2:])
        t = autoencoder_target(pooled(mask, size), pooled(brightest, size))
        d = y - t
        total = total + (alpha * F.relu(d).square() + (1.0 - alpha) * F.relu(-d).square()).mean()
    return total


def cross_entropy_loss(logits: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the three pre-sigmoid maps against the pooled mask, summed."""
    mask = mask.float()
    total = logits[0].new_zeros(())
    for z in logits:
        total = total + F.binary_cross_entropy_with_logits(z, pooled(mask, tuple(z.shape[-2:])))
    return total
