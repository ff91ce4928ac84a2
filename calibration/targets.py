"""What goes under the camera for each calibration step, on a simulated head.

A real head's operator places the lens cap, the reference plate and the dot-grid target by hand
(the command line asks for each); on a simulated head the simulated stage gets the simulator's
twin of each, so one procedure serves both.
"""

from __future__ import annotations

from collections.abc import Callable


def sim_placer(asm, dot_pitch_mm: float = 1.0, dot_diameter_mm: float = 0.2,
               dot_grid_origin_mm: tuple[float, float] = (0.0, 0.0)) -> Callable[[str], None]:
    from edge.sim.targets import DotGrid, LensCap, ReferencePlate

    targets = {"lens cap": LensCap(), "reference plate": ReferencePlate(),
               "dot grid": DotGrid(pitch_mm=dot_pitch_mm, diameter_mm=dot_diameter_mm,
                                   origin_mm=dot_grid_origin_mm)}

    def place(what: str) -> None:
        asm.glass.place(targets[what])

    return place
