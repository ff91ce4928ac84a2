"""The Jetson pin factory with fake ``gpiod`` bindings (v2- and v1-shaped) and a fake /dev/mem."""

import struct
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
from gpiozero import DigitalOutputDevice
from gpiozero.exc import PinInvalidFunction, PinInvalidPin

from edge.hardware import jetson, jetson_pinmux
from edge.hardware.jetson import (
    AGX_ORIN,
    AON,
    MAIN,
    ORIN_NX_NANO,
    GpioPermissionError,
    JetsonFactory,
    NoGpioChips,
    detect_board,
)
from edge.hardware.jetson_pinmux import (
    PADS,
    STOCK_GPIO_PINS,
    PadState,
    PinmuxWarning,
    read_padctl,
    stock_gpio_pins,
)

GPIO_BIDI = 0x40      # GPIO, input buffer on, output driver on: what an overlay sets
GPIO_INPUT = 0x54     # GPIO, tristate, input buffer on, pull-down: JetPack 6's stock state
SFIO = 0x400          # special function; bits 1:0 pick which one


class Kernel:
    """What the fake bindings did: line levels per (device, offset), requests and releases."""

    def __init__(self, labels, denied=()):
        self.labels, self.denied = labels, set(denied)
        self.levels: dict[tuple[str, int], list[bool]] = {}
        self.requested: list[tuple[str, int, str, str]] = []
        self.released: list[tuple[str, int]] = []
        self.held: set[tuple[str, int]] = set()

    def open(self, path):
        if path in self.denied:
            raise PermissionError(13, "Permission denied", path)
        if path not in self.labels:
            raise FileNotFoundError(2, "No such file or directory", path)

    def request(self, path, offset, consumer, direction, value=False):
        self.open(path)
        assert (path, offset) not in self.held, "line requested twice"
        self.held.add((path, offset))
        self.requested.append((path, offset, consumer, direction))
        self.levels.setdefault((path, offset), []).append(bool(value))

    def drive(self, path, offset, value):
        assert (path, offset) in self.held, "line not requested"
        self.levels[(path, offset)].append(bool(value))

    def release(self, path, offset):
        self.held.remove((path, offset))
        self.released.append((path, offset))


def fake_v2(kernel):
    """Shaped like libgpiod v2's binding (``gpiod`` 2.x from PyPI)."""
    value = SimpleNamespace(ACTIVE="active", INACTIVE="inactive")
    direction = SimpleNamespace(INPUT="in", OUTPUT="out")

    class Chip:
        def __init__(self, path):
            kernel.open(path)
            self.path = path

        def get_info(self):
            return SimpleNamespace(name="gpiochipN", label=kernel.labels[self.path], num_lines=8)

        def close(self):
            pass

    class LineSettings:
        def __init__(self, direction=None, output_value=value.INACTIVE):
            self.direction, self.output_value = direction, output_value

    class LineRequest:
        def __init__(self, path, offset):
            self.path, self.offset = path, offset

        def set_value(self, offset, v):
            assert offset == self.offset
            kernel.drive(self.path, offset, v == value.ACTIVE)

        def get_value(self, offset):
            return value.ACTIVE if kernel.levels[(self.path, offset)][-1] else value.INACTIVE

        def release(self):
            kernel.release(self.path, self.offset)

    def request_lines(path, config, consumer=None):
        ((offset, settings),) = config.items()
        kernel.request(path, offset, consumer, settings.direction,
                       settings.output_value == value.ACTIVE)
        return LineRequest(path, offset)

    return SimpleNamespace(__name__="gpiod", __version__="2.3.0", Chip=Chip,
                           LineSettings=LineSettings, request_lines=request_lines,
                           line=SimpleNamespace(Value=value, Direction=direction))


def fake_v1(kernel):
    """Shaped like libgpiod v1's binding (``python3-libgpiod`` 1.6 on Ubuntu 22.04)."""
    dir_in, dir_out = 2, 3

    class Line:
        def __init__(self, chip, offset):
            self.chip, self.offset = chip, offset

        def request(self, consumer, type=0, flags=0, default_vals=None):
            assert not self.chip.closed
            kernel.request(self.chip.path, self.offset, consumer,
                           {dir_in: "in", dir_out: "out"}[type], (default_vals or [0])[0])

        def set_value(self, v):
            kernel.drive(self.chip.path, self.offset, v)

        def get_value(self):
            return int(kernel.levels[(self.chip.path, self.offset)][-1])

        def release(self):
            kernel.release(self.chip.path, self.offset)

    class Chip:
        def __init__(self, path):
            kernel.open(path)
            self.path, self.closed = path, False

        def label(self):
            return kernel.labels[self.path]

        def get_line(self, offset):
            return Line(self, offset)

        def close(self):
            self.closed = True

    return SimpleNamespace(__name__="gpiod", __version__="1.6.3", Chip=Chip,
                           LINE_REQ_DIR_IN=dir_in, LINE_REQ_DIR_OUT=dir_out)


BINDINGS = {"v2": fake_v2, "v1": fake_v1}


@pytest.fixture
def dev(tmp_path):
    """A fake /dev with the two tegra234 GPIO chips."""
    d = tmp_path / "dev"
    d.mkdir()
    paths = {}
    for name, label in (("gpiochip0", MAIN), ("gpiochip1", AON)):
        (d / name).touch()
        paths[str(d / name)] = label
    return SimpleNamespace(glob=str(d / "gpiochip*"), labels=paths, main=str(d / "gpiochip0"),
                           aon=str(d / "gpiochip1"))


def fake_mem(tmp_path, registers: dict[int, int]) -> str:
    """A sparse file holding ``registers`` (physical address -> value) where /dev/mem has them."""
    path = tmp_path / "mem"
    with open(path, "wb") as f:
        f.truncate(0x0C310000)  # past the AON pad controller
        for address, value in registers.items():
            f.seek(address)
            f.write(struct.pack("<I", value))
    return str(path)


def pads(board, values: dict[int, int]) -> dict[int, int]:
    """Header pin -> register value, as physical address -> register value."""
    return {PADS[board][n].address: v for n, v in values.items()}


def make(dev, tmp_path, binding="v2", board="p3767", registers=None, **kw):
    kernel = Kernel(dev.labels, kw.pop("denied", ()))
    if registers is not None:
        kw.setdefault("mem_path", fake_mem(tmp_path, pads(board, registers)))
    factory = JetsonFactory(board, gpiod=BINDINGS[binding](kernel), chip_glob=dev.glob, **kw)
    return factory, kernel


# -- the header, the board, the entry point --------------------------------------------------
def test_tables_put_gpio_only_where_the_header_has_it_and_pads_match_ports():
    for board, (_, table) in jetson.BOARDS.items():
        assert len(table) == 22
        assert not set(table) & {1, 2, 4, 6, 9, 14, 17, 20, 25, 30, 34, 39}
        assert set(PADS[board]) == set(table)
        for n, (_, label, port) in table.items():
            bank, bit = port[1:].split(".")
            pad = PADS[board][n]
            assert pad.name.endswith(f"_p{bank.lower()}{int(bit)}"), (board, n, pad.name)
            base = 0x0C300000 if label == AON else 0x02430000
            assert base <= pad.address < base + 0x20000 and pad.address % 8 == 0
    assert ORIN_NX_NANO[7] == (144, MAIN, "PAC.06")
    assert PADS["p3767"][7].address == 0x02448030
    assert AGX_ORIN[29] == (1, AON, "PAA.01")
    assert PADS["p3701"][29].address == 0x0C303018
    assert detect_board(b"nvidia,p3768-0000+p3767-0005\x00nvidia,tegra234\x00") == "p3767"
    assert detect_board(b"nvidia,p3737-0000+p3701-0004\x00") == "p3701"
    with pytest.raises(PinInvalidPin, match="unknown Jetson module"):
        detect_board(b"nvidia,p3450-0000\x00")


def test_jetson_factory_is_registered_for_gpiozero():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="gpiozero_pin_factories")}
    assert names.get("jetson") == "edge.hardware.jetson:JetsonFactory"


def test_module_imports_without_gpiod_and_the_factory_names_the_packages():
    code = ("import sys; sys.modules['gpiod'] = None\n"
            "import edge.hardware.jetson as j\n"
            "try:\n    j.JetsonFactory('p3767')\n"
            "except j.PinInvalidPin as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "pip install 'gpiod>=2.1'" in out.stdout
    assert "python3-libgpiod" in out.stdout


def test_the_pinmux_module_stands_alone_without_gpiod_or_the_factory():
    code = ("import sys; sys.modules['gpiod'] = None\n"
            "import edge.hardware.jetson_pinmux\n"
            "print('edge.hardware.jetson' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_an_unknown_gpiod_module_is_refused_with_the_packages_that_work():
    old_pypi_gpiod = SimpleNamespace(__name__="gpiod", __version__="1.5.4", chip=object,
                                     line_request=object)
    with pytest.raises(PinInvalidPin, match=r"neither libgpiod's v2 nor its v1.*python3-libgpiod"):
        JetsonFactory("p3767", gpiod=old_pypi_gpiod, chips={MAIN: "/dev/gpiochip0"})


# -- both bindings ------------------------------------------------------------------------------
@pytest.mark.parametrize("binding", ["v2", "v1"])
def test_both_bindings_drive_a_pin_high_and_low_and_release_it_on_close(dev, tmp_path, binding):
    factory, kernel = make(dev, tmp_path, binding, registers={29: GPIO_BIDI})
    assert factory.binding.name == f"libgpiod {binding}"
    assert factory.chips == {MAIN: dev.main, AON: dev.aon}
    led = DigitalOutputDevice("BOARD29", pin_factory=factory)
    led.on()
    assert led.value == 1 and factory.pin("BOARD29").state
    led.off()
    led.on()
    led.close()
    line = (dev.main, 105)  # header pin 29 = line 105 of tegra234-gpio
    assert kernel.requested == [(dev.main, 105, "glass-inspect", "out")]
    # requested low, gpiozero's initial value, on, off, on, driven low before the release
    assert kernel.levels[line] == [False, False, True, False, True, False]
    assert kernel.released == [line] and not kernel.held
    factory.close()


@pytest.mark.parametrize("binding", ["v2", "v1"])
def test_both_bindings_read_an_input_and_reuse_a_pin_after_close(dev, tmp_path, binding):
    factory, kernel = make(dev, tmp_path, binding, registers={7: GPIO_BIDI, 15: GPIO_BIDI})
    pin = factory.pin("BOARD7")
    pin.function = "input"
    kernel.levels[(dev.main, 144)].append(True)  # something outside pulls the pin high
    assert pin.state is True and pin.function == "input"
    pin.function = "output"  # re-requested as an output, driven low
    assert kernel.requested[-1][3] == "out" and kernel.levels[(dev.main, 144)][-1] is False
    with DigitalOutputDevice("BOARD15", pin_factory=factory) as a:
        a.on()
    with DigitalOutputDevice("BOARD15", pin_factory=factory) as b:  # the same pin, requested again
        assert b.value == 0
    factory.close()
    assert not kernel.held and len(kernel.released) == 4


def test_the_v2_shape_of_the_ring_light_tests_still_works_with_injected_chips():
    """test_leds.py's fake: no Chip, LineSettings(direction, output_value) only."""
    log, released = [], []

    class Request:
        def __init__(self, config):
            self.values = {o: s.output_value for o, s in config.items()}

        def set_value(self, offset, v):
            self.values[offset] = v
            log.append((offset, v))

        def get_value(self, offset):
            return self.values[offset]

        def release(self):
            released.append(tuple(self.values))

    value = SimpleNamespace(ACTIVE="active", INACTIVE="inactive")
    mod = SimpleNamespace(
        line=SimpleNamespace(Value=value, Direction=SimpleNamespace(OUTPUT="out", INPUT="in")),
        request_lines=lambda path, consumer, config: Request(config),
        LineSettings=lambda direction, output_value: SimpleNamespace(
            direction=direction, output_value=output_value))
    f = JetsonFactory("p3767", gpiod=mod, chips={MAIN: "/dev/gpiochip0"}, check_pinmux=False)
    with DigitalOutputDevice("BOARD29", pin_factory=f) as led:
        led.on()
    assert log == [(105, "inactive"), (105, "active"), (105, "inactive")]
    assert released == [(105,)]
    with pytest.raises(PinInvalidPin, match="not a GPIO"):
        f.pin("BOARD6")
    f.close()


# -- permissions and missing chips -----------------------------------------------------------
@pytest.mark.parametrize("binding", ["v2", "v1"])
def test_a_permission_error_names_the_device_and_the_gpio_group(dev, tmp_path, binding):
    with pytest.raises(GpioPermissionError) as err:
        make(dev, tmp_path, binding, denied={dev.main, dev.aon})
    text = str(err.value)
    assert isinstance(err.value, PermissionError)
    assert f"permission denied opening {dev.main}, {dev.aon}" in text
    assert "'gpio' group" in text and "usermod -aG gpio" in text and "udev" in text


def test_a_denied_chip_the_board_needs_is_reported_and_one_it_does_not_need_is_not(dev, tmp_path):
    with pytest.raises(GpioPermissionError, match=f"opening {dev.aon} "):
        make(dev, tmp_path, board="p3701", denied={dev.aon})  # AGX header pins 16, 29... on AON
    factory, _ = make(dev, tmp_path, board="p3767", denied={dev.aon}, check_pinmux=False)
    assert factory.chips == {MAIN: dev.main}  # the Orin NX / Nano header is all on MAIN
    factory.close()


def test_no_gpio_chip_at_all_says_so(dev, tmp_path):
    with pytest.raises(NoGpioChips, match=r"no GPIO chip: nothing matches .*nothing\*"):
        JetsonFactory("p3767", gpiod=fake_v2(Kernel({})), chip_glob=str(tmp_path / "nothing*"))
    assert jetson.chip_paths(fake_v1(Kernel(dev.labels)), dev.glob) == {MAIN: dev.main,
                                                                         AON: dev.aon}
    with pytest.raises(NoGpioChips):
        jetson.chip_paths(fake_v1(Kernel({})), str(tmp_path / "nothing*"))


def test_a_chip_without_the_needed_label_is_named_with_what_failed(dev, tmp_path):
    kernel = Kernel({dev.main: "some-other-gpio"})
    f = JetsonFactory("p3767", gpiod=fake_v2(kernel), chip_glob=dev.glob, check_pinmux=False)
    with pytest.raises(PinInvalidPin, match=r"line 105 of tegra234-gpio.*could not open .*"
                                            r"gpiochip1 \(No such file"):
        f.pin("BOARD29")


# -- the pinmux --------------------------------------------------------------------------------
@pytest.mark.parametrize("board, n, value, pad, function", [
    ("p3767", 37, SFIO, "spi3_mosi_py2", "spi3"),
    ("p3767", 35, SFIO | 1, "soc_gpio44_pi2", "i2s2"),
    ("p3767", 36, SFIO | GPIO_BIDI, "uart1_cts_pr5", "uarta"),
    ("p3701", 37, SFIO, "can1_din_paa3", "can1"),
])
def test_a_pin_muxed_to_a_special_function_is_refused(dev, tmp_path, board, n, value, pad,
                                                      function):
    factory, kernel = make(dev, tmp_path, board=board, registers={n: value})
    with pytest.raises(PinInvalidFunction) as err:
        DigitalOutputDevice(f"BOARD{n}", pin_factory=factory)
    text = str(err.value)
    port = (ORIN_NX_NANO if board == "p3767" else AGX_ORIN)[n][2]
    assert f"header pin {n} ({port}, pad {pad}, PADCTL 0x" in text
    assert f"special function '{function}', not GPIO" in text
    assert "jetson-io" in text and "device-tree overlay" in text
    assert f"{list(STOCK_GPIO_PINS[board])}" in text
    assert not kernel.held and len(kernel.released) == 1  # the line was let go again
    factory.close()


def test_a_tristated_gpio_is_refused_as_an_output_but_read_as_an_input(dev, tmp_path):
    factory, kernel = make(dev, tmp_path, registers={29: GPIO_INPUT, 31: GPIO_BIDI & ~0x40})
    with pytest.raises(PinInvalidFunction, match=r"header pin 29 \(PQ\.05, pad soc_gpio32_pq5.*"
                                                  r"output driver is off \(tristate"):
        DigitalOutputDevice("BOARD29", pin_factory=factory)
    pin = factory.pin("BOARD29")
    pin.function = "input"  # JetPack 6's stock state is fine for reading
    assert pin.function == "input"
    with pytest.raises(PinInvalidFunction, match="input buffer is off"):
        factory.pin("BOARD31").function = "input"
    factory.pin("BOARD31").function = "output"
    factory.close()
    assert not kernel.held


@pytest.mark.parametrize("mem", ["missing", "short"])
def test_an_unreadable_pinmux_warns_once_per_pin_and_the_pin_still_works(dev, tmp_path, mem):
    mem_path = tmp_path / "mem"
    if mem == "short":
        mem_path.write_bytes(b"\0" * 4096)  # mapping the pad's page fails
    factory, kernel = make(dev, tmp_path, mem_path=str(mem_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with DigitalOutputDevice("BOARD32", pin_factory=factory) as led:
                led.on()
        DigitalOutputDevice("BOARD33", pin_factory=factory).close()
    pinmux = [w for w in caught if issubclass(w.category, PinmuxWarning)]
    assert [str(w.message).split(":")[0] for w in pinmux] == ["header pin 32", "header pin 33"]
    assert "soc_gpio19_pg6" in str(pinmux[0].message) and str(mem_path) in str(pinmux[0].message)
    assert kernel.levels[(dev.main, 41)] == [False, False, True, False] * 2
    factory.close()


def test_off_a_jetson_the_pinmux_is_not_read_and_that_is_said_once(dev, tmp_path, monkeypatch):
    compatible = tmp_path / "compatible"
    compatible.write_bytes(b"raspberrypi,5-model-b\x00brcm,bcm2712\x00")
    monkeypatch.setattr(jetson, "DEVICE_TREE_COMPATIBLE", str(compatible))
    factory, _ = make(dev, tmp_path)
    assert factory.mem_path is None
    with pytest.warns(PinmuxWarning, match="header pin 29: pinmux not checked .*not running on"):
        DigitalOutputDevice("BOARD29", pin_factory=factory).close()
    compatible.write_bytes(b"nvidia,p3768-0000+p3767-0005\x00nvidia,tegra234\x00")
    assert make(dev, tmp_path)[0].mem_path == "/dev/mem"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet, _ = make(dev, tmp_path, check_pinmux=False)
        DigitalOutputDevice("BOARD29", pin_factory=quiet).close()


def test_padctl_registers_are_read_from_their_physical_address(tmp_path):
    mem = fake_mem(tmp_path, {0x02448030: 0x0000_0455, 0x0C303048: 0x40})
    state = PadState(read_padctl(0x02448030, mem))
    pad = PADS["p3767"][7]
    assert not state.gpio and state.tristate and state.input_enabled
    assert state.function(pad) == "i2s8"
    assert PadState(read_padctl(0x0C303048, mem)).gpio
    assert PadState(GPIO_INPUT).gpio and PadState(GPIO_INPUT).tristate


def test_gpio_problem_answers_in_words_per_function_and_raises_when_unreadable(tmp_path):
    mem = fake_mem(tmp_path, pads("p3767", {29: GPIO_BIDI, 31: GPIO_INPUT, 37: SFIO}))
    ask = dict(mem_path=mem, model="Jetson Orin NX / Orin Nano")
    for function in ("input", "output"):
        assert jetson_pinmux.gpio_problem("p3767", 29, function, port="PQ.05", **ask) is None
    assert jetson_pinmux.gpio_problem("p3767", 31, "input", port="PQ.06", **ask) is None
    assert "output driver is off" in jetson_pinmux.gpio_problem("p3767", 31, "output",
                                                                port="PQ.06", **ask)
    text = jetson_pinmux.gpio_problem("p3767", 37, "input", port="PY.02", **ask)
    assert text.startswith("header pin 37 (PY.02, pad spi3_mosi_py2, PADCTL 0x0243d048 = ")
    assert "'spi3', not GPIO" in text and "Orin NX / Orin Nano devkit are [7, 15" in text
    with pytest.raises(jetson_pinmux.PadctlUnreadable, match=r"pad soc_gpio32_pq5 .*missing"):
        jetson_pinmux.gpio_problem("p3767", 29, "output", str(tmp_path / "missing"),
                                   port="PQ.05", model="m")


# -- the stock pinmux ----------------------------------------------------------------------------
def test_the_stock_gpio_pins_are_the_documented_ones():
    assert STOCK_GPIO_PINS == {"p3767": (7, 15, 29, 31, 32, 33), "p3701": (15, 16, 18, 22, 32)}
    assert stock_gpio_pins("p3767") == (7, 15, 29, 31, 32, 33)
    doc = " ".join(jetson_pinmux.__doc__.split())
    assert "6 pins on the Orin NX / Nano" in doc and "5 on the AGX Orin" in doc
    with pytest.raises(PinInvalidPin):
        stock_gpio_pins("p3450")
    nano = PADS["p3767"]
    for n, pad in nano.items():  # GPIO pads are soc_gpio*, the rest are named after their bus
        assert pad.name.startswith("soc_gpio") == (n in STOCK_GPIO_PINS["p3767"]
                                                   or pad.functions[1] == "i2s2"), n
    for n in STOCK_GPIO_PINS["p3701"]:
        assert not PADS["p3701"][n].name.startswith(("spi", "uart", "can0", "can1_d"))
    assert len(STOCK_GPIO_PINS["p3767"]) == 6  # one short of 6 LED groups + the trigger


def test_the_proposed_head_pins_work_on_a_remuxed_devkit_and_are_refused_on_a_stock_one(
        dev, tmp_path):
    leds, trigger = (29, 31, 32, 33, 15, 7), 37
    remuxed, _ = make(dev, tmp_path, registers={n: GPIO_BIDI for n in (*leds, trigger)})
    devices = [DigitalOutputDevice(f"BOARD{n}", pin_factory=remuxed) for n in (*leds, trigger)]
    for d in devices:
        d.on()
        d.close()
    remuxed.close()
    stock = {n: GPIO_INPUT for n in leds} | {trigger: SFIO}  # JetPack 6 devkit as flashed
    factory, kernel = make(dev, tmp_path, registers=stock)
    for n in (*leds, trigger):
        with pytest.raises(PinInvalidFunction, match=f"header pin {n} "):
            DigitalOutputDevice(f"BOARD{n}", pin_factory=factory)
    assert not kernel.held


def test_probe_says_why_the_factory_cannot_start_here(monkeypatch, tmp_path):
    monkeypatch.setattr(jetson, "DEVICE_TREE_COMPATIBLE", str(tmp_path / "compatible"))
    assert "not a Jetson" in jetson.probe()
    (tmp_path / "compatible").write_bytes(b"nvidia,p3768-0000+p3767-0005\0nvidia,tegra234\0")
    monkeypatch.setattr(jetson, "_import_gpiod", lambda: object())
    assert "neither libgpiod's v2 nor its v1" in jetson.probe()
