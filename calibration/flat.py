"""Flat fields: how each LED group lights the field of view, and the pixels that do not respond.

Under each LED group in turn, N frames of a diffusing reference plate (it scatters evenly into
the lens whichever group lights it). Their mean minus the dark level is that group's *field*:
the LEDs' brightness and fall-off times the sensor's response, per pixel.

The correction makes this head's frames look like the reference head's, the one the network was
trained on (not merely flat): the gain of group k is ``reference_k / field_k``, where
``reference_k`` is the field the reference head shows under the same plate. Choice (the glass
paper is silent): the reference head is the default simulated head, whose raw frames are their
own reference, so its own calibration is the identity within the noise and a calibrated head is
never further from what the network saw in training than that head itself.

A pixel that does not respond to light is **dead** (it reads near the offset) or **stuck** (it
reads a fixed level of its own): its response in every group's field is below ``DEAD_SHARE`` of
the median response of its 8 nearest neighbours of the same Bayer colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEAD_SHARE = 0.3


@dataclass
class FlatResult:
    fields: np.ndarray  # (N_STATES, H, W) float32: mean plate frame minus dark, DN
    dead: np.ndarray  # (H, W) bool: does not respond to light, reads near the offset
    stuck: np.ndarray  # (H, W) bool: does not respond to light, reads a level of its own

    def summary(self) -> dict:
        levels = [round(float(np.median(f)), 2) for f in self.fields]
        return {"field_median_dn": levels, "dead_pixels": int(self.dead.sum()),
                "stuck_pixels": int(self.stuck.sum())}


def mean_frame(frames) -> np.ndarray:
    """The mean of frames that arrive one at a time (only the mean: no spread is needed)."""
    total, n = None, 0
    for f in frames:
        if total is None:
            total = f.astype(np.float64)
        else:
            total += f
        n += 1
    if n == 0:
        raise ValueError("a flat field needs at least one frame")
    return total / n


def same_colour_median(img: np.ndarray) -> np.ndarray:
    """Per pixel, the median of its 8 nearest neighbours of the same Bayer colour (2 px away),
    edges mirrored."""
    p = np.pad(img, 2, mode="reflect")
    h, w = img.shape
    shifts = [p[2 + dy:2 + dy + h, 2 + dx:2 + dx + w]
              for dy in (-2, 0, 2) for dx in (-2, 0, 2) if dy or dx]
    return np.median(np.stack(shifts), axis=0)


def measure_flats(frames_per_state, dark_level: np.ndarray, offset_dn: float,
                  hot: np.ndarray | None = None) -> FlatResult:
    """``frames_per_state``: per LED group an iterable of plate frames. ``dark_level`` is the
    dark calibration's mean frame; ``hot`` its hot pixels (not counted again as stuck)."""
    fields = np.stack([mean_frame(frames) - dark_level for frames in frames_per_state])
    fields = fields.astype(np.float32)
    responds = np.zeros(dark_level.shape, bool)
    for f in fields:
        responds |= f >= DEAD_SHARE * np.maximum(same_colour_median(f), 1e-6)
    silent = ~responds
    high = dark_level > offset_dn + 0.5 * max(float(np.median(fields)), 1.0)
    stuck = silent & high
    if hot is not None:
        stuck &= ~hot
    return FlatResult(fields, silent & ~high, stuck)


def gains(fields: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per group and pixel, what multiplies this head's dark-subtracted frame so that it reads
    as the reference head's would: ``reference / field`` (1 where the field is not positive)."""
    if fields.shape != reference.shape:
        raise ValueError(f"fields {fields.shape} and reference {reference.shape} differ")
    out = np.ones_like(fields, dtype=np.float32)
    ok = fields > 0
    out[ok] = reference[ok] / fields[ok]
    return out


def rms_mismatch_pct(corrected: np.ndarray, reference: np.ndarray) -> float:
    """RMS of the relative difference between corrected fields and the reference, in %."""
    ok = reference > 0
    rel = corrected[ok] / reference[ok] - 1.0
    return float(np.sqrt(np.mean(rel * rel)) * 100.0)
