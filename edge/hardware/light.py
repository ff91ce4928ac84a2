"""The ring light as the head sees it: one LED group at a time, a camera trigger, dark on demand.

:class:`edge.hardware.leds.RingLight` implements it over gpiozero, whichever pin factory drives
the pins (the Jetson's header, or gpiozero's ``MockFactory`` in the simulated head).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from edge.hardware import HardwareError


class Light(ABC):
    #: why the light refuses to light (None: it lights); see :attr:`tripped`
    fault: str | None = None
    #: watchdog trips since the light was opened
    trip_count: int = 0

    @property
    def tripped(self) -> bool:
        """The light is stopped by a watchdog trip, which :meth:`rearm` may clear."""
        return False

    def trip_times(self) -> list[float]:
        """``time.monotonic()`` of the last watchdog trips, oldest first."""
        return []

    def rearm(self) -> None:
        """Clear a watchdog trip (every group dark first); any other fault is refused."""
        if self.fault is not None:
            raise HardwareError(f"{self.fault}; it cannot be cleared without a restart")

    @abstractmethod
    def on(self, state: int) -> None:
        """Light LED group ``state`` (0..N_STATES-1); refuses while another group is lit."""

    @abstractmethod
    def off(self) -> None:
        """Darken the lit group; raises the light's fault, if it has one, after darkening."""

    @abstractmethod
    def pulse_trigger(self) -> None:
        """One pulse on the camera's trigger line."""

    @abstractmethod
    def all_dark(self) -> None:
        """Every group and the trigger off, now; safe from any thread, never raises."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Light:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
