"""The XY stage as the head sees it: one small interface, whatever controller moves it.

The head needs four things of a stage: get ready (home or unlock), move to a position and say
when it is there, stop at once, and let go of its port. :class:`edge.hardware.grbl.GrblStage`
implements it for GRBL controllers (and, through a pseudo-terminal, for the GRBL simulator).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from edge.hardware import HardwareError


class StageError(HardwareError):
    """The stage could not do what it was asked; the message says why, in operator words."""


class StageTimeout(StageError):
    pass


class MoveCancelled(StageError):
    """The caller gave up on a move while it ran; the stage may still be moving: abort it."""


class Stage(ABC):
    """An XY stage in the head's stage coordinates (mm)."""

    #: the last known position (x, y[, z]); empty until the controller reported one
    position: tuple[float, ...] = ()
    #: how the controller introduced itself, for the log
    banner: str = ""
    #: the glass was found elsewhere than the controller said (lost steps): home before moving
    rehome: bool = False

    def lose_position(self) -> None:
        """What the frames showed overrules the controller: its position is not to be trusted,
        so the next :meth:`ready` homes (a stage without homing switches cannot, and says so)."""
        self.rehome = True

    @abstractmethod
    def ready(self) -> None:
        """Home or unlock as the stage needs, so that moves are accepted."""

    @abstractmethod
    def move_to(self, x: float, y: float, cancel: Callable[[], bool] | None = None) -> float:
        """Move and return once the stage stands there; the seconds it took. ``cancel`` is
        polled while it moves: when it says so, :class:`MoveCancelled` is raised."""

    @abstractmethod
    def abort(self) -> None:
        """Stop now, from any state; never raises."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
