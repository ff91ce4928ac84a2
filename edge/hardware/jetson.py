"""A gpiozero pin factory for Jetson Orin carriers: the Linux GPIO character device via ``gpiod``.

gpiozero knows Raspberry Pi boards only. This factory gives gpiozero the 40-pin header of a
Jetson Orin carrier (its power and ground pins at the same places as a Pi's, so ``BOARD<n>``
names mean the same physical pin) and drives the GPIO pins through libgpiod v2: each pin is one
line of a gpiochip, requested as an output on first use and released on close. Registered under
gpiozero's ``gpiozero_pin_factories`` entry point as ``jetson``, so ``GPIOZERO_PIN_FACTORY=jetson``
or ``Device.pin_factory = JetsonFactory()`` selects it.

The header-to-line tables are the module's (Orin NX / Orin Nano on the p3768 / p3509 carriers)
and the AGX Orin developer kit's (p3737): (line offset, chip label, SoC pad) per physical pin, as
NVIDIA's pinmux and Jetson.GPIO document them. The board is read from the device tree; the chip
of each label is found by asking every ``/dev/gpiochip*`` for its label.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path

from gpiozero.exc import PinInvalidFunction, PinInvalidPin, PinSetInput
from gpiozero.pins import BoardInfo, Factory, HeaderInfo, Pin, PinInfo

MAIN, AON = "tegra234-gpio", "tegra234-gpio-aon"

# physical pin -> (line offset, chip label, SoC pad)
ORIN_NX_NANO = {
    7: (144, MAIN, "PAC.06"), 11: (112, MAIN, "PR.04"), 12: (50, MAIN, "PH.07"),
    13: (122, MAIN, "PY.00"), 15: (85, MAIN, "PN.01"), 16: (126, MAIN, "PY.04"),
    18: (125, MAIN, "PY.03"), 19: (135, MAIN, "PZ.05"), 21: (134, MAIN, "PZ.04"),
    22: (123, MAIN, "PY.01"), 23: (133, MAIN, "PZ.03"), 24: (136, MAIN, "PZ.06"),
    26: (137, MAIN, "PZ.07"), 29: (105, MAIN, "PQ.05"), 31: (106, MAIN, "PQ.06"),
    32: (41, MAIN, "PG.06"), 33: (43, MAIN, "PH.00"), 35: (53, MAIN, "PI.02"),
    36: (113, MAIN, "PR.05"), 37: (124, MAIN, "PY.02"), 38: (52, MAIN, "PI.01"),
    40: (51, MAIN, "PI.00"),
}
AGX_ORIN = {
    7: (106, MAIN, "PQ.06"), 11: (112, MAIN, "PR.04"), 12: (50, MAIN, "PH.07"),
    13: (108, MAIN, "PR.00"), 15: (85, MAIN, "PN.01"), 16: (9, AON, "PBB.01"),
    18: (43, MAIN, "PH.00"), 19: (135, MAIN, "PZ.05"), 21: (134, MAIN, "PZ.04"),
    22: (96, MAIN, "PP.04"), 23: (133, MAIN, "PZ.03"), 24: (136, MAIN, "PZ.06"),
    26: (137, MAIN, "PZ.07"), 29: (1, AON, "PAA.01"), 31: (0, AON, "PAA.00"),
    32: (8, AON, "PBB.00"), 33: (2, AON, "PAA.02"), 35: (53, MAIN, "PI.02"),
    36: (113, MAIN, "PR.05"), 37: (3, AON, "PAA.03"), 38: (52, MAIN, "PI.01"),
    40: (51, MAIN, "PI.00"),
}
BOARDS = {"p3767": ("Jetson Orin NX / Orin Nano", ORIN_NX_NANO),
          "p3701": ("Jetson AGX Orin", AGX_ORIN)}
POWER = {1: "3V3", 2: "5V", 4: "5V", 6: "GND", 9: "GND", 14: "GND", 17: "3V3", 20: "GND",
         25: "GND", 30: "GND", 34: "GND", 39: "GND"}
FIXED = {3: "I2C_SDA", 5: "I2C_SCL", 8: "UART_TX", 10: "UART_RX", 27: "ID_SDA", 28: "ID_SCL"}


def detect_board(compatible: bytes | None = None) -> str:
    """The module's key in :data:`BOARDS`, from the device tree's ``compatible`` strings."""
    if compatible is None:
        try:
            compatible = Path("/proc/device-tree/compatible").read_bytes()
        except OSError:
            raise PinInvalidPin("not a Jetson: /proc/device-tree/compatible is missing") from None
    text = compatible.decode(errors="replace")
    for key in BOARDS:
        if key in text:
            return key
    raise PinInvalidPin(f"unknown Jetson module (device tree says {text.split(chr(0))!r}); "
                        f"known: {', '.join(name for name, _ in BOARDS.values())}")


def header_info(table: dict) -> HeaderInfo:
    pins = {}
    for n in range(1, 41):
        row, col = (n + 1) // 2, 2 - n % 2
        if n in table:
            _, _, pad = table[n]
            name, interfaces = pad, {"gpio": ""}
        else:
            name, interfaces = POWER.get(n) or FIXED.get(n, f"PIN{n}"), {}
        names = {name, f"BOARD{n}", f"J12:{n}", f"BOARD{n}".lower()}
        pins[n] = PinInfo(number=n, name=name, names=frozenset(names), pull="", row=row, col=col,
                          interfaces=frozenset(interfaces))
    return HeaderInfo(name="J12", rows=20, columns=2, pins=pins)


def chip_paths(gpiod, pattern: str = "/dev/gpiochip*") -> dict[str, str]:
    """Chip label -> device path, for every gpiochip the kernel offers."""
    out = {}
    for path in sorted(glob.glob(pattern)):
        try:
            with gpiod.Chip(path) as chip:
                out[chip.get_info().label] = path
        except OSError:
            continue
    return out


class JetsonPin(Pin):
    def __init__(self, factory: JetsonFactory, info: PinInfo, path: str, offset: int):
        super().__init__()
        self._factory, self._info, self._path, self._offset = factory, info, path, offset
        self._request = None
        self._function = "input"
        self._state = False

    def _get_info(self):
        return self._info

    def close(self):
        if self._request is not None:
            g = self._factory.gpiod
            self._request.set_value(self._offset, g.line.Value.INACTIVE)
            self._request.release()
            self._request = None
        self._function = "input"

    def _get_function(self):
        return self._function

    def _set_function(self, value):
        if value not in ("input", "output"):
            raise PinInvalidFunction(f"{self._info.name}: only input and output are supported")
        g = self._factory.gpiod
        if self._request is not None:
            self._request.release()
        direction = g.line.Direction.OUTPUT if value == "output" else g.line.Direction.INPUT
        settings = g.LineSettings(direction=direction, output_value=g.line.Value.INACTIVE)
        self._request = g.request_lines(self._path, consumer="glass-inspect",
                                        config={self._offset: settings})
        self._function = value
        self._state = False

    def _get_state(self):
        if self._request is None:
            return self._state
        return self._request.get_value(self._offset) == self._factory.gpiod.line.Value.ACTIVE

    def _set_state(self, value):
        if self._function != "output":
            raise PinSetInput(f"cannot set the state of input pin {self._info.name}")
        g = self._factory.gpiod
        self._request.set_value(self._offset, g.line.Value.ACTIVE if value else
                                g.line.Value.INACTIVE)
        self._state = bool(value)


class JetsonFactory(Factory):
    """Pins of the 40-pin header of a Jetson Orin carrier, through libgpiod v2."""

    def __init__(self, board: str | None = None, gpiod=None, chips: dict[str, str] | None = None):
        super().__init__()
        if gpiod is None:
            try:
                import gpiod
            except ImportError:
                raise PinInvalidPin("the Jetson pin factory needs libgpiod's Python binding: "
                                    "pip install gpiod (2.x)") from None
        self.gpiod = gpiod
        self.board = board or detect_board()
        self.model, self.table = BOARDS[self.board]
        self.chips = chips if chips is not None else chip_paths(gpiod)
        self._pins: dict[int, JetsonPin] = {}
        header = header_info(self.table)
        self._board_info = BoardInfo(
            revision=self.board, model=self.model, pcb_revision="", released="", soc="tegra234",
            manufacturer="NVIDIA", memory=None, storage="", usb=None, usb3=None, ethernet=None,
            eth_speed=None, wifi=None, bluetooth=None, csi=None, dsi=None,
            headers={"J12": header}, board={})

    def _get_board_info(self):
        return self._board_info

    def ticks(self):
        return time.monotonic()

    def ticks_diff(self, later, earlier):
        return later - earlier

    def physical(self, name) -> int:
        for _, info in self._board_info.find_pin(str(name)):
            if "gpio" not in info.interfaces:
                raise PinInvalidPin(f"header pin {info.number} ({info.name}) is not a GPIO")
            return info.number
        raise PinInvalidPin(f"{name!r} is not a pin of the {self.model} header")

    def pin(self, name):
        n = self.physical(name)
        if n not in self._pins:
            offset, label, _ = self.table[n]
            if label not in self.chips:
                raise PinInvalidPin(f"header pin {n} is line {offset} of {label}, which this "
                                    f"system does not offer (chips: {sorted(self.chips)})")
            info = self._board_info.headers["J12"].pins[n]
            self._pins[n] = JetsonPin(self, info, self.chips[label], offset)
        return self._pins[n]

    def close(self):
        for p in self._pins.values():
            p.close()
        self._pins.clear()
        super().close()
