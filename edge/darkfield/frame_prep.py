"""What the window classifier's network is given of a frame: a Bayer mosaic's colour sites
balanced to one response (:mod:`edge.darkfield.mosaic`), its exposure checked
(:mod:`edge.darkfield.exposure`: not flat, overexposed or too dark to judge), then the frame's noise
matched to the camera model the network was trained with when it is off
(:mod:`edge.darkfield.noise`). ``glass-inspect classify`` prepares every image this way, and
``evaluate-windows`` prepares simulated frames the same way, so what is measured is what runs.

Every step needs the model's camera figures (``black_dn``, ``read_noise_dn``,
``conversion_gain`` of its spec). A model that does not say them can classify grey frames, which
are then left as they are, but not mosaics. The exposure check and the noise step apply only to
a network that works in its camera's noise units (``whiten`` in its spec): it was trained on
that camera's dark-field frames, so it is known which frames it can judge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edge.darkfield import exposure, mosaic, noise

log = logging.getLogger(__name__)


class PrepError(ValueError):
    """A frame that cannot be prepared; the message says what of it (it names no file)."""


@dataclass(frozen=True)
class Prepared:
    pixels: np.ndarray  # H x W float32 in [0, 1], as the network is to see it
    site_gains: np.ndarray | None  # a mosaic's 2 x 2 gains; None for a grey frame
    noise_ratio: float | None  # its noise over the model's camera's; None: not measured
    noise_matched: bool
    haze: float | None = None  # the frame's median above black (exposure); None: not checked


class FramePrep:
    """The preparation for one model: ``prep(pixels, bayer)`` -> :class:`Prepared`."""

    def __init__(self, sensor: noise.Sensor | None, noise_units: bool,
                 model_name: str = "the model", haze_floor: float = exposure.MIN_HAZE,
                 noise_limits: noise.NoiseLimits = noise.CAMERA_MODEL):
        self.sensor, self.noise_units, self.model_name = sensor, noise_units, model_name
        self.haze_floor, self.noise_limits = haze_floor, noise_limits

    @classmethod
    def for_model(cls, metadata: dict, model_name: str = "the model") -> FramePrep:
        """PrepError when the model's own noise limits cannot be read."""
        try:
            limits = noise.limits_of(metadata)
        except noise.NoiseError as exc:
            raise PrepError(f"{model_name}: {exc}") from None
        return cls(noise.Sensor.from_metadata(metadata), noise.works_in_noise_units(metadata),
                   model_name, exposure.haze_floor(metadata), limits)

    def __call__(self, pixels: np.ndarray, bayer: bool = False) -> Prepared:
        gains = None
        if bayer:
            if self.sensor is None:
                raise PrepError(f"is a Bayer mosaic, and {self.model_name} does not say the "
                                "camera noise model it was trained with (black_dn, "
                                "read_noise_dn and conversion_gain in its spec metadata), which "
                                "balancing the colour sites needs; expected a model exported by "
                                "'glass-inspect export onnx'")
            try:
                gains = mosaic.site_gains(pixels, self.sensor.black)
            except mosaic.MosaicError as exc:
                raise PrepError(str(exc)) from None
            pixels = mosaic.balance(pixels, gains, self.sensor)
        if self.sensor is None or not self.noise_units:
            return Prepared(pixels, gains, None, False)
        try:
            haze = exposure.check(pixels, self.sensor.black, self.haze_floor)
        except exposure.ExposureError as exc:
            raise PrepError(str(exc)) from None
        try:
            ratio = noise.noise_ratio(pixels, self.sensor)
            matched = noise.check(ratio, self.noise_limits)
        except noise.NoiseError as exc:
            raise PrepError(str(exc)) from None
        if matched:
            pixels = noise.match(pixels, ratio, self.sensor)
        return Prepared(pixels, gains, ratio, matched, haze)
