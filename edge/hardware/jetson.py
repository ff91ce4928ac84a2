"""A gpiozero pin factory for Jetson Orin carriers: the Linux GPIO character device via ``gpiod``.

gpiozero knows Raspberry Pi boards only. This factory gives gpiozero the 40-pin header of a
Jetson Orin carrier (its power and ground pins at the same places as a Pi's, so ``BOARD<n>``
names mean the same physical pin) and drives the GPIO pins through libgpiod: each pin is one
line of a gpiochip, requested on first use and released on close. Registered under gpiozero's
``gpiozero_pin_factories`` entry point as ``jetson``, so ``GPIOZERO_PIN_FACTORY=jetson`` or
``Device.pin_factory = JetsonFactory()`` selects it.

The header-to-line tables are the module's (Orin NX / Orin Nano on the p3768 / p3509 carriers)
and the AGX Orin developer kit's (p3737): (line offset, chip label, SoC pad) per physical pin, as
NVIDIA's pinmux and Jetson.GPIO document them. The board is read from the device tree; the chip
of each label is found by asking every ``/dev/gpiochip*`` for its label.

**Python binding.** Two incompatible bindings both import as ``gpiod``: libgpiod v2's (``gpiod``
2.x from PyPI: ``gpiod.request_lines`` + ``gpiod.LineSettings``) and libgpiod v1's (Ubuntu
22.04 / JetPack 6 ``python3-libgpiod`` 1.6: ``gpiod.Chip(path).get_line(n).request(...)``,
``chip.label()``). Both are supported through a small adapter (:func:`gpiod_binding`) with the
four operations the factory needs: the label of a chip, request one line as output or input,
set/get its value, release it. Anything else imported as ``gpiod`` (e.g. the unrelated PyPI
``gpiod`` 1.x) is refused with one message naming the two packages that work.

**Permissions.** A ``/dev/gpiochip*`` that cannot be opened for lack of permission is reported
as such (:class:`GpioPermissionError`, naming the device and the ``gpio`` group) when it holds a
chip the board needs; no ``/dev/gpiochip*`` at all raises :class:`NoGpioChips`.

**Pinmux.** After each line request the factory asks :mod:`edge.hardware.jetson_pinmux`
whether the pad behind the header pin works as a GPIO that way (it reads the pad's PADCTL
register from ``/dev/mem``): a pin that cannot is refused with
:class:`gpiozero.exc.PinInvalidFunction` and the line let go again; a register that cannot be
read (no root, not a Jetson) is warned about once per pin and the pin used unchecked.
"""

from __future__ import annotations

import getpass
import glob
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from gpiozero.exc import PinError, PinInvalidFunction, PinInvalidPin, PinSetInput
from gpiozero.pins import BoardInfo, Factory, HeaderInfo, Pin, PinInfo

from edge.hardware.jetson_pinmux import (
    DEV_MEM,
    PADS,
    STOCK_GPIO_PINS,
    PadctlUnreadable,
    gpio_problem,
    unchecked_warning,
)

MAIN, AON = "tegra234-gpio", "tegra234-gpio-aon"
CONSUMER = "glass-inspect"
# Where the board's device-tree "compatible" strings are read. A container does not see
# /proc/device-tree (Docker masks /sys/firmware), so the image bind-mounts that one file read-only
# and names it here rather than lifting the masks.
DEVICE_TREE_COMPATIBLE = os.environ.get("GLASS_INSPECT_DEVICE_TREE_COMPATIBLE",
                                        "/proc/device-tree/compatible")
CHIP_GLOB = "/dev/gpiochip*"

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


class GpioPermissionError(PinError, PermissionError):
    """A ``/dev/gpiochip*`` the board needs cannot be opened by this user."""


class NoGpioChips(PinInvalidPin):
    """No GPIO character device at all."""


# -- the board -----------------------------------------------------------------------------
def detect_board(compatible: bytes | None = None) -> str:
    """The module's key in :data:`BOARDS`, from the device tree's ``compatible`` strings."""
    if compatible is None:
        try:
            compatible = Path(DEVICE_TREE_COMPATIBLE).read_bytes()
        except OSError:
            raise PinInvalidPin(f"not a Jetson: {DEVICE_TREE_COMPATIBLE} is missing") from None
    text = compatible.decode(errors="replace")
    for key in BOARDS:
        if key in text:
            return key
    raise PinInvalidPin(f"unknown Jetson module (device tree says {text.split(chr(0))!r}); "
                        f"known: {', '.join(name for name, _ in BOARDS.values())}")


def _on_tegra234() -> bool:
    try:
        return b"tegra234" in Path(DEVICE_TREE_COMPATIBLE).read_bytes()
    except OSError:
        return False


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


# -- the two libgpiod bindings ----------------------------------------------------------------
_INSTALL = ("install libgpiod's Python binding: pip install 'gpiod>=2.1' (libgpiod v2 API) or "
            "apt install python3-libgpiod (JetPack 6 / Ubuntu 22.04: libgpiod 1.6, v1 API)")


class _V2Binding:
    """libgpiod v2 (``gpiod`` 2.x): one ``LineRequest`` per line."""

    name = "libgpiod v2"

    def __init__(self, gpiod):
        self.gpiod = gpiod

    def chip_label(self, path: str) -> str:
        chip = self.gpiod.Chip(path)
        try:
            return chip.get_info().label
        finally:
            chip.close()

    def request(self, path: str, offset: int, output: bool):
        g = self.gpiod
        direction = g.line.Direction.OUTPUT if output else g.line.Direction.INPUT
        settings = g.LineSettings(direction=direction, output_value=g.line.Value.INACTIVE)
        return offset, g.request_lines(path, consumer=CONSUMER, config={offset: settings})

    def set(self, handle, value: bool) -> None:
        offset, request = handle
        v = self.gpiod.line.Value
        request.set_value(offset, v.ACTIVE if value else v.INACTIVE)

    def get(self, handle) -> bool:
        offset, request = handle
        return request.get_value(offset) == self.gpiod.line.Value.ACTIVE

    def release(self, handle) -> None:
        handle[1].release()


class _V1Binding:
    """libgpiod v1 (``python3-libgpiod`` 1.x): a ``Line`` of an open ``Chip``; the chip stays
    open while the line is requested (closing it releases the line)."""

    name = "libgpiod v1"

    def __init__(self, gpiod):
        self.gpiod = gpiod

    def chip_label(self, path: str) -> str:
        chip = self.gpiod.Chip(path)
        try:
            label = chip.label
            return label() if callable(label) else label
        finally:
            chip.close()

    def request(self, path: str, offset: int, output: bool):
        g = self.gpiod
        chip = g.Chip(path)
        try:
            line = chip.get_line(offset)
            if output:  # default_vals always given: some 1.x releases leave it uninitialised
                line.request(consumer=CONSUMER, type=g.LINE_REQ_DIR_OUT, default_vals=[0])
            else:
                line.request(consumer=CONSUMER, type=g.LINE_REQ_DIR_IN)
        except BaseException:
            chip.close()
            raise
        return chip, line

    def set(self, handle, value: bool) -> None:
        handle[1].set_value(1 if value else 0)

    def get(self, handle) -> bool:
        return bool(handle[1].get_value())

    def release(self, handle) -> None:
        chip, line = handle
        try:
            line.release()
        finally:
            chip.close()


def gpiod_binding(gpiod):
    """The adapter for the module imported as ``gpiod``: libgpiod v2's or v1's binding."""
    if hasattr(gpiod, "request_lines") and hasattr(gpiod, "LineSettings"):
        return _V2Binding(gpiod)
    if hasattr(gpiod, "LINE_REQ_DIR_OUT") and hasattr(gpiod, "Chip"):
        return _V1Binding(gpiod)
    where = getattr(gpiod, "__file__", None) or getattr(gpiod, "__name__", "?")
    version = getattr(gpiod, "__version__", "unknown version")
    raise PinInvalidPin(f"the module imported as 'gpiod' ({where}, {version}) is neither "
                        f"libgpiod's v2 nor its v1 Python binding; {_INSTALL}")


def _import_gpiod():
    try:
        import gpiod
    except ImportError:
        raise PinInvalidPin(f"the Jetson pin factory needs libgpiod: {_INSTALL}") from None
    return gpiod


# -- the chips --------------------------------------------------------------------------------
@dataclass
class ChipScan:
    """What ``/dev/gpiochip*`` offers: label -> device path, and the devices that failed."""

    pattern: str
    devices: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    denied: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def permission_error(self) -> GpioPermissionError:
        try:
            user = getpass.getuser()
        except Exception:  # no user name in a bare container
            user = f"uid {os.getuid()}"
        return GpioPermissionError(
            f"permission denied opening {', '.join(self.denied)} (user {user}): JetPack's udev "
            "rule gives the 'gpio' group access to /dev/gpiochip*, so add the user to it "
            "(sudo usermod -aG gpio $USER, then log in again) or install a udev rule such as "
            'SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"')

    def no_chips(self) -> NoGpioChips:
        return NoGpioChips(f"no GPIO chip: nothing matches {self.pattern} (not a Jetson, or the "
                           "GPIO character devices are not in this container: pass "
                           "--device /dev/gpiochip0 --device /dev/gpiochip1)")


def scan_chips(binding, pattern: str = CHIP_GLOB) -> ChipScan:
    """Ask every GPIO chip for its label; permission problems are kept, not swallowed."""
    scan = ChipScan(pattern, devices=sorted(glob.glob(pattern)))
    for path in scan.devices:
        try:
            scan.labels.setdefault(binding.chip_label(path), path)
        except PermissionError:
            scan.denied.append(path)
        except OSError as exc:
            scan.failed[path] = exc.strerror or str(exc)
    return scan


def chip_paths(gpiod, pattern: str = CHIP_GLOB) -> dict[str, str]:
    """Chip label -> device path, for every gpiochip the kernel offers. Raises
    :class:`NoGpioChips` when there is none and :class:`GpioPermissionError` when none of them
    can be opened for lack of permission."""
    binding = gpiod if hasattr(gpiod, "chip_label") else gpiod_binding(gpiod)
    scan = scan_chips(binding, pattern)
    if not scan.devices:
        raise scan.no_chips()
    if scan.denied and not scan.labels:
        raise scan.permission_error()
    return scan.labels


# -- pins -----------------------------------------------------------------------------------
class JetsonPin(Pin):
    def __init__(self, factory: JetsonFactory, info: PinInfo, path: str, offset: int):
        super().__init__()
        self._factory, self._info, self._path, self._offset = factory, info, path, offset
        self._handle = None
        self._function = "input"
        self._state = False

    def _get_info(self):
        return self._info

    def _release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        binding = self._factory.binding
        try:
            if self._function == "output":
                binding.set(handle, False)
        finally:
            binding.release(handle)

    def close(self):
        self._release()
        self._function = "input"
        self._state = False

    def _get_function(self):
        return self._function

    def _set_function(self, value):
        if value not in ("input", "output"):
            raise PinInvalidFunction(f"{self._info.name}: only input and output are supported")
        if value == self._function and self._handle is not None:
            return
        self._release()
        binding = self._factory.binding
        handle = binding.request(self._path, self._offset, output=value == "output")
        try:
            self._factory.check_pinmux(self._info.number, value)
        except BaseException:
            binding.release(handle)
            raise
        self._handle, self._function, self._state = handle, value, False

    def _get_state(self):
        if self._handle is None:
            return self._state
        return self._factory.binding.get(self._handle)

    def _set_state(self, value):
        if self._function != "output" or self._handle is None:
            raise PinSetInput(f"cannot set the state of input pin {self._info.name}")
        self._factory.binding.set(self._handle, bool(value))
        self._state = bool(value)


class JetsonFactory(Factory):
    """Pins of the 40-pin header of a Jetson Orin carrier, through libgpiod (v2 or v1 binding).

    ``board``: a key of :data:`BOARDS` (default: from the device tree). ``gpiod``: the binding
    module (default: ``import gpiod``). ``chips``: chip label -> device path (default: scanned
    from ``chip_glob``). ``mem_path``: the file holding the PADCTL registers at their physical
    addresses (default: ``/dev/mem`` on a Tegra234, else the pinmux is not checked and a warning
    says so). ``check_pinmux=False`` skips the pinmux check and its warnings.
    """

    def __init__(self, board: str | None = None, gpiod=None, chips: dict[str, str] | None = None,
                 *, mem_path: str | None = None, chip_glob: str = CHIP_GLOB,
                 check_pinmux: bool = True):
        super().__init__()
        self.gpiod = gpiod if gpiod is not None else _import_gpiod()
        self.binding = gpiod_binding(self.gpiod)
        self.board = board or detect_board()
        if self.board not in BOARDS:
            raise PinInvalidPin(f"unknown Jetson module {self.board!r}; known: {sorted(BOARDS)}")
        self.model, self.table = BOARDS[self.board]
        self.pads = PADS[self.board]
        self._scan: ChipScan | None = None
        if chips is None:
            self._scan = scan_chips(self.binding, chip_glob)
            if not self._scan.devices:
                raise self._scan.no_chips()
            needed = {label for _, label, _ in self.table.values()}
            if self._scan.denied and not needed <= set(self._scan.labels):
                raise self._scan.permission_error()
            chips = self._scan.labels
        self.chips = chips
        self.check_pinmux_enabled = check_pinmux
        self.mem_path = mem_path if mem_path is not None else (DEV_MEM if _on_tegra234() else None)
        self._pinmux_warned: set[int] = set()
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

    @property
    def stock_gpio_pins(self) -> tuple[int, ...]:
        return STOCK_GPIO_PINS[self.board]

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
                raise PinInvalidPin(self._missing_chip(n, offset, label))
            info = self._board_info.headers["J12"].pins[n]
            self._pins[n] = JetsonPin(self, info, self.chips[label], offset)
        return self._pins[n]

    def _missing_chip(self, n: int, offset: int, label: str) -> str:
        text = (f"header pin {n} is line {offset} of {label}, which this system does not offer "
                f"(chips: {sorted(self.chips)})")
        if self._scan is not None and self._scan.denied:
            text += f"; {self._scan.permission_error()}"
        if self._scan is not None and self._scan.failed:
            text += "; could not open " + ", ".join(
                f"{path} ({why})" for path, why in self._scan.failed.items())
        return text

    # -- pinmux ---------------------------------------------------------------------------
    def check_pinmux(self, n: int, function: str) -> None:
        """Refuse header pin ``n`` for ``function`` ("output"/"input") when its pad's PADCTL
        register says the pin cannot work that way; warn once when it cannot be read."""
        if not self.check_pinmux_enabled:
            return
        pad, port = self.pads[n], self.table[n][2]
        if self.mem_path is None:
            self._warn_unverified(n, f"pad {pad.name}: not running on a Jetson Orin "
                                     f"({DEVICE_TREE_COMPATIBLE} does not name tegra234)")
            return
        try:
            problem = gpio_problem(self.board, n, function, self.mem_path, port=port,
                                   model=self.model)
        except PadctlUnreadable as exc:
            self._warn_unverified(n, str(exc))
            return
        if problem is not None:
            raise PinInvalidFunction(problem)

    def _warn_unverified(self, n: int, why: str) -> None:
        if n in self._pinmux_warned:
            return
        self._pinmux_warned.add(n)
        warnings.warn(unchecked_warning(n, why), stacklevel=3)

    def close(self):
        for p in self._pins.values():
            p.close()
        self._pins.clear()
        super().close()


def probe(pattern: str = CHIP_GLOB) -> str | None:
    """Why the Jetson pin factory cannot start here, without requesting a line; None when it
    can. The head's start-up asks before any part is opened."""
    try:
        detect_board()
        binding = gpiod_binding(_import_gpiod())
        scan = scan_chips(binding, pattern)
        if not scan.devices:
            raise scan.no_chips()
        if scan.denied and not scan.labels:
            raise scan.permission_error()
    except PinError as exc:
        return str(exc)
    return None
