"""The simulated twins of the head's parts: optics, GRBL stage, cameras, and a whole simulated
head's parts for the assembly. Chosen by the head file; no runtime module imports this package."""

from edge.sim.optics import REFERENCE_EXPOSURE_MS, OpticsRenderer, RoiRender, Scene
from edge.sim.sample import arc, generate_sample

__all__ = ["REFERENCE_EXPOSURE_MS", "OpticsRenderer", "RoiRender", "Scene", "arc",
           "generate_sample"]
