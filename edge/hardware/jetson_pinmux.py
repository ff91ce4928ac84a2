"""The Tegra234 (Jetson Orin) pinmux of the 40-pin header: which pad is behind each GPIO pin of
the header, what its PADCTL register says, and whether that lets the pin work as a GPIO.

**Pinmux.** A line request succeeds even when the pad behind the header pin is muxed to a special
function (I2S, SPI, UART...) or has its output driver off (tristate), and then nothing reaches
the pin. Like Jetson.GPIO (``gpio_cdev.check_pinmux``: it maps the pad's PADCTL register from
``/dev/mem`` and decodes it), after each line request the Jetson pin factory
(:mod:`edge.hardware.jetson`) reads the pad's PADCTL register (addresses and function names: the
kernel's ``pinctrl-tegra234.c``, which match Jetson.GPIO's pin data) and decodes bit 10
(GPIO/SFIO select: 1 = special function), bits 1:0 (which special function), bit 4 (tristate:
output driver off) and bit 6 (input buffer enabled). A pad on its special function, an output on
a tristated pad or an input without input buffer is refused with
:class:`gpiozero.exc.PinInvalidFunction` (header pin, pad, function, how to fix: the words are
:func:`gpio_problem`'s); Jetson.GPIO only warns; we refuse because the head must not run with a
dead trigger or LED group. When the register cannot be read (``/dev/mem`` needs root, or this is
not a Jetson) the pin still works and a :class:`PinmuxWarning` is issued once per pin.

**Stock pinmux.** :data:`STOCK_GPIO_PINS` lists, per board, the header pins whose pad is a GPIO
in NVIDIA's stock pinmux of the developer kit (the module's pins named GPIOxx in Jetson.GPIO's pin
data; the others are UART, I2S, SPI, CAN or PWM/clock pins): 6 pins on the Orin NX / Nano
developer kit (p3768), 5 on the AGX Orin developer kit. On JetPack 6 even those come up as
inputs (tristate) and need a device-tree overlay (jetson-io) to drive an output.

Boards are the keys of :data:`edge.hardware.jetson.BOARDS` (``p3767``: Orin NX / Orin Nano,
``p3701``: AGX Orin); pins are physical header pin numbers.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

from gpiozero.exc import PinInvalidPin, PinWarning

DEV_MEM = "/dev/mem"

# Header pins whose pad is a GPIO in the developer kit's stock pinmux (see the module docstring).
# Orin NX / Nano devkit: GPIO09, GPIO12, GPIO01, GPIO11, GPIO07, GPIO13. AGX Orin devkit: GPIO27,
# GPIO08, GPIO35, GPIO17, GPIO09 (pins 7 "MCLK05" and 13 "PWM01" left out: not GPIO-named).
STOCK_GPIO_PINS = {"p3767": (7, 15, 29, 31, 32, 33), "p3701": (15, 16, 18, 22, 32)}


# -- the pads ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pad:
    """One SoC pad: its pinctrl name, the physical address of its PADCTL register, and the four
    special functions its PM field (bits 1:0) selects when the pad is not a GPIO."""

    name: str
    address: int
    functions: tuple[str, str, str, str]


def _fn(first: str, second: str = "rsvd1", third: str = "rsvd2") -> tuple[str, str, str, str]:
    return (first, second, third, "rsvd3")


_MAIN_PADCTL, _AON_PADCTL = 0x02430000, 0x0C300000
_UARTA, _SPI1, _SPI3, _I2S2 = _fn("uarta"), _fn("spi1"), _fn("spi3"), _fn("rsvd0", "i2s2")
_COMMON_PADS = {
    11: Pad("uart1_rts_pr4", _MAIN_PADCTL + 0x0098, _UARTA),
    12: Pad("soc_gpio41_ph7", _MAIN_PADCTL + 0x4088, _I2S2),
    15: Pad("soc_gpio39_pn1", _MAIN_PADCTL + 0x10020, _fn("gp")),
    19: Pad("spi1_mosi_pz5", _MAIN_PADCTL + 0xD040, _SPI1),
    21: Pad("spi1_miso_pz4", _MAIN_PADCTL + 0xD018, _SPI1),
    23: Pad("spi1_sck_pz3", _MAIN_PADCTL + 0xD028, _SPI1),
    24: Pad("spi1_cs0_pz6", _MAIN_PADCTL + 0xD008, _SPI1),
    26: Pad("spi1_cs1_pz7", _MAIN_PADCTL + 0xD038, _SPI1),
    35: Pad("soc_gpio44_pi2", _MAIN_PADCTL + 0x40A0, _I2S2),
    36: Pad("uart1_cts_pr5", _MAIN_PADCTL + 0x0090, _UARTA),
    38: Pad("soc_gpio43_pi1", _MAIN_PADCTL + 0x4098, _I2S2),
    40: Pad("soc_gpio42_pi0", _MAIN_PADCTL + 0x4090, _I2S2),
}
ORIN_NX_NANO_PADS = {
    **_COMMON_PADS,
    7: Pad("soc_gpio59_pac6", _MAIN_PADCTL + 0x18030, _fn("aud", "i2s8")),
    13: Pad("spi3_sck_py0", _MAIN_PADCTL + 0xD030, _SPI3),
    16: Pad("spi3_cs1_py4", _MAIN_PADCTL + 0xD020, _SPI3),
    18: Pad("spi3_cs0_py3", _MAIN_PADCTL + 0xD010, _SPI3),
    22: Pad("spi3_miso_py1", _MAIN_PADCTL + 0xD000, _SPI3),
    29: Pad("soc_gpio32_pq5", _MAIN_PADCTL + 0x0068, _fn("rsvd0", "extperiph3", "dcb")),
    31: Pad("soc_gpio33_pq6", _MAIN_PADCTL + 0x0070, _fn("rsvd0", "extperiph4", "dcb")),
    32: Pad("soc_gpio19_pg6", _MAIN_PADCTL + 0x4080, _fn("gp")),
    33: Pad("soc_gpio21_ph0", _MAIN_PADCTL + 0x4040, _fn("rsvd0", "gp", "i2s7")),
    37: Pad("spi3_mosi_py2", _MAIN_PADCTL + 0xD048, _SPI3),
}
AGX_ORIN_PADS = {
    **_COMMON_PADS,
    7: Pad("soc_gpio33_pq6", _MAIN_PADCTL + 0x0070, _fn("rsvd0", "extperiph4", "dcb")),
    13: Pad("soc_gpio37_pr0", _MAIN_PADCTL + 0x0080, ("gp", "i2s5", "dmic4", "dspk1")),
    16: Pad("can1_en_pbb1", _AON_PADCTL + 0x3048, _fn("rsvd0", "dmic3", "dmic5")),
    18: Pad("soc_gpio21_ph0", _MAIN_PADCTL + 0x4040, _fn("rsvd0", "gp", "i2s7")),
    22: Pad("soc_gpio23_pp4", _MAIN_PADCTL + 0x0020, ("vi0", "vi0_alt", "vi1", "vi1_alt")),
    29: Pad("can0_din_paa1", _AON_PADCTL + 0x3018, _fn("can0")),
    31: Pad("can0_dout_paa0", _AON_PADCTL + 0x3010, _fn("can0")),
    32: Pad("can1_stb_pbb0", _AON_PADCTL + 0x3040, _fn("rsvd0", "dmic3", "dmic5")),
    33: Pad("can1_dout_paa2", _AON_PADCTL + 0x3000, _fn("can1")),
    37: Pad("can1_din_paa3", _AON_PADCTL + 0x3008, _fn("can1")),
}
PADS = {"p3767": ORIN_NX_NANO_PADS, "p3701": AGX_ORIN_PADS}


# -- the PADCTL register -----------------------------------------------------------------------
PADCTL_FUNCTION = 0x3           # PM: which of the pad's four special functions
PADCTL_TRISTATE = 1 << 4        # output driver off
PADCTL_INPUT = 1 << 6           # E_INPUT: input buffer on
PADCTL_SFIO = 1 << 10           # GPIO_SF_SEL: 1 = special function, 0 = GPIO


@dataclass(frozen=True)
class PadState:
    """A decoded PADCTL register value."""

    value: int

    @property
    def gpio(self) -> bool:
        return not self.value & PADCTL_SFIO

    @property
    def tristate(self) -> bool:
        return bool(self.value & PADCTL_TRISTATE)

    @property
    def input_enabled(self) -> bool:
        return bool(self.value & PADCTL_INPUT)

    def function(self, pad: Pad) -> str:
        """The special function the pad's mux selects (what drives it when it is not a GPIO)."""
        return pad.functions[self.value & PADCTL_FUNCTION]


def read_padctl(address: int, mem_path: str = DEV_MEM) -> int:
    """The 32-bit register at physical ``address``, mapped from ``mem_path`` (as Jetson.GPIO and
    ``busybox devmem`` do; ``read()`` on ``/dev/mem`` does not reach device registers)."""
    page = mmap.ALLOCATIONGRANULARITY
    base = address - address % page
    fd = os.open(mem_path, os.O_RDONLY | os.O_SYNC)
    try:
        with mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=base) as mem:
            return struct.unpack_from("<I", mem, address - base)[0]
    finally:
        os.close(fd)


# -- the stock pinmux ----------------------------------------------------------------------------
def stock_gpio_pins(board: str) -> tuple[int, ...]:
    """Header pins that are GPIO in the stock pinmux of ``board``'s developer kit."""
    if board not in STOCK_GPIO_PINS:
        raise PinInvalidPin(f"unknown Jetson module {board!r}; known: {sorted(STOCK_GPIO_PINS)}")
    return STOCK_GPIO_PINS[board]


# -- can the pin be a GPIO? ----------------------------------------------------------------------
class PinmuxWarning(PinWarning):
    """The pinmux of a header pin could not be checked; the pin is used unchecked."""


class PadctlUnreadable(Exception):
    """The PADCTL register of a pad could not be read; the message says which and why."""


def gpio_problem(board: str, n: int, function: str, mem_path: str, *, port: str,
                 model: str) -> str | None:
    """Why header pin ``n`` of ``board`` cannot work as a GPIO ``function`` ("output" or
    "input"), in words (header pin, ``port``, pad, register, how to fix; ``model`` names the
    devkit whose stock GPIO pins are suggested); None when its pad's PADCTL register, read from
    ``mem_path``, lets it. Raises :class:`PadctlUnreadable` when the register cannot be read."""
    pad = PADS[board][n]
    try:
        state = PadState(read_padctl(pad.address, mem_path))
    except (OSError, ValueError, OverflowError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PadctlUnreadable(f"cannot read the PADCTL register of pad {pad.name} "
                               f"(0x{pad.address:08x}) from {mem_path}: {why}") from exc
    where = (f"header pin {n} ({port}, pad {pad.name}, PADCTL 0x{pad.address:08x} = "
             f"0x{state.value:08x})")
    if not state.gpio:
        return (f"{where} is muxed to its special function '{state.function(pad)}', not GPIO: "
                "the line request succeeds but nothing reaches the pin. Mux the pad as a GPIO "
                f"output: a device-tree overlay for {pad.name} (nvidia,tristate = <0>) "
                "installed with sudo /opt/nvidia/jetson-io/jetson-io.py, or NVIDIA's pinmux "
                "spreadsheet (GPIO, output or bidirectional) and a reflash; then reboot. The "
                f"pins that are GPIO in the stock pinmux of the {model} devkit are "
                f"{list(stock_gpio_pins(board))}")
    if function == "output" and state.tristate:
        return (f"{where} is a GPIO but its output driver is off (tristate; the pinmux has it "
                "as an input): nothing reaches the pin. Apply a device-tree overlay that sets "
                f"{pad.name} to nvidia,tristate = <0> (nvidia,enable-input = <1> to read it "
                "back) with sudo /opt/nvidia/jetson-io/jetson-io.py, or set it to output or "
                "bidirectional in NVIDIA's pinmux spreadsheet and reflash; then reboot")
    if function == "input" and not state.input_enabled:
        return (f"{where} is a GPIO but its input buffer is off (the pinmux has it as an "
                f"output only): apply a device-tree overlay that sets {pad.name} to "
                "nvidia,enable-input = <1> (jetson-io), or make it bidirectional in NVIDIA's "
                "pinmux spreadsheet and reflash; then reboot")
    return None


def unchecked_warning(n: int, why: str) -> PinmuxWarning:
    """The warning for header pin ``n`` whose pinmux could not be checked (``why``)."""
    return PinmuxWarning(
        f"header pin {n}: pinmux not checked ({why}); if the pad is not a GPIO output, the "
        "line request succeeds and nothing reaches the pin. Run once as root to check it, "
        "or see sudo /opt/nvidia/jetson-io/jetson-io.py")
