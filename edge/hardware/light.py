"""The ring light as the head sees it: one LED group at a time, a camera trigger, dark on demand.

:class:`edge.hardware.leds.RingLight` implements it over gpiozero, whichever pin factory drives
the pins (the Jetson's header, or gpiozero's ``MockFactory`` in the simulated head).
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Light(ABC):
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
