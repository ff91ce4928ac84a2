"""The dark-field optics simulator: samples in mm, rendered through a head into RAW frames."""

from edge.sim.optics import REFERENCE_EXPOSURE_MS, RoiRender, Scene, SimHead
from edge.sim.sample import KINDS, Defect, Sample, arc, generate_sample

__all__ = ["KINDS", "REFERENCE_EXPOSURE_MS", "Defect", "RoiRender", "Sample", "Scene", "SimHead",
           "arc", "generate_sample"]
