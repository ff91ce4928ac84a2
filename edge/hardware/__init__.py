"""Hardware of the inspection head behind small interfaces, each with a simulated twin."""


class HardwareError(RuntimeError):
    """A part of the head (ring light, stage, camera) failed; the message says which and why,
    in words an operator understands."""
