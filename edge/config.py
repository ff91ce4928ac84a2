"""The head configuration: one TOML file, loaded and validated here and nowhere else.

A head file describes the camera, the ring light, the stage and its RoI grid, the pipeline's
thresholds, the inference engine, the calibration file and the link to the line controller.
The simulated head ships inside the package (``default_head.toml``) and is what runs when no
file is given.

Every problem is reported as one :class:`ConfigError` that names the file and the dotted key,
for all problems found at once, so a field engineer fixes the file in one pass.

Choices written down here:

* GPIO pins are physical pin numbers of the 40-pin header (what is printed on the carrier
  board), not SoC line numbers; the Jetson pin factory maps them.
* The RoI pitch is derived (``size - overlap``) rather than stored, so the two cannot disagree.
* The pixel footprint on the sample is derived from the RoI size and the camera resolution per
  axis (40 mm / 3504 px = 11.4 um, 35 mm / 3120 px = 11.2 um by default).
* Relative paths (engine artifact, calibration file, a replay folder) are taken relative to the
  head file's folder; for the embedded default, relative to the current directory. A path
  ``shipped:NAME`` names a file shipped inside the package (``edge/models/NAME``), so the
  shipped network is found from any directory and in any installed copy.
* Which parts a head is built from is said by three keys, checked against each other here:
  ``camera.device`` (a V4L2 device path, ``sim`` or ``replay:DIR``), ``stage.port`` (a pyserial
  URL or ``sim``) and ``illumination.pin_factory`` (``jetson`` or ``mock``). Simulated cameras
  see the LEDs through the mock pins and the stage through its simulator, so they need both; a
  real camera's trigger input is wired to real pins, so it needs ``jetson``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictFloat,
    ValidationError,
    model_validator,
)

from edge.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # JetPack 6 ships Python 3.10
    import tomli as tomllib

DEFAULT_NAME = "<embedded default head>"
SHIPPED = "shipped:"  # prefix of a path to a file shipped in the package (edge/models/)
SIM = "sim"
REPLAY = "replay:"

# Illumination states per RoI: the ring's 6 opposite facet pairs, 30 degrees apart (the glass
# paper's head). Every module that counts frames, channels or LED groups takes it from here.
N_STATES = 6

# Power, ground and the fixed-function pins of the 40-pin header cannot drive an LED driver.
_NOT_GPIO = {1, 2, 4, 6, 9, 14, 17, 20, 25, 30, 34, 39}


class ConfigError(UserError, ValueError):
    """A head configuration that cannot be used; the message names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PositiveFloat = Annotated[float, Field(gt=0)]
# TOML has arrays, not tuples: accept a 2-element array, its items still strictly numbers.
Pair = Annotated[tuple[StrictFloat, StrictFloat], Field(strict=False)]
PositivePair = Annotated[
    tuple[Annotated[StrictFloat, Field(gt=0)], Annotated[StrictFloat, Field(gt=0)]],
    Field(strict=False),
]
HeaderPin = Annotated[int, Field(ge=1, le=40)]
# [fleet] head_id: one MQTT topic level, as sample ids are on the line
SAMPLE_ID_LIKE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Camera(_Section):
    # where frames come from: a V4L2 device (/dev/video0, /dev/v4l/by-id/...), "sim" (the
    # optics simulator) or "replay:DIR" (recorded samples in DIR, as the stage reaches them)
    device: str = Field(min_length=1)
    # V4L2 pixel format (fourcc such as "BA12" or "pgCC"), or "auto": the one that matches
    # bit_depth and bayer_pattern among those the device offers
    pixel_format: str = Field(default="auto", pattern=r"^(auto|[A-Za-z0-9 ]{4})$")
    # "external": each exposure starts on the ring light's trigger line; "free-run": the sensor
    # streams and the head takes the first frame that starts after the LED group is lit
    trigger: Literal["external", "free-run"] = "external"
    gain: float = Field(default=1.0, gt=0, le=1000)
    # units of the V4L2 gain control per 1x (driver-specific); 0: unknown, only gain 1 is set
    gain_scale: float = Field(default=0.0, ge=0)
    # where a 10/12-bit pixel sits in its 16-bit container: "msb" (Jetson Orin's VI), "lsb"
    # (plain V4L2), or "auto" (msb on the tegra-video driver, else lsb)
    alignment: Literal["auto", "lsb", "msb"] = "auto"
    width: int = Field(ge=16, le=16384, multiple_of=2)
    height: int = Field(ge=16, le=16384, multiple_of=2)
    bit_depth: int = Field(ge=8, le=16)
    bayer_pattern: Literal["GRBG", "RGGB", "GBRG", "BGGR"]
    exposure_ms: float = Field(gt=0, le=10_000)
    frame_time_ms: float = Field(gt=0, le=60_000)
    # a frame not delivered this long after its trigger is a camera fault
    grab_timeout_ms: float = Field(default=1000.0, gt=0, le=60_000)

    @property
    def max_dn(self) -> int:
        return (1 << self.bit_depth) - 1

    @property
    def kind(self) -> Literal["v4l2", "sim", "replay"]:
        if self.device == SIM:
            return "sim"
        return "replay" if self.device.startswith(REPLAY) else "v4l2"

    @model_validator(mode="after")
    def _device_named(self) -> Camera:
        if self.device.startswith(REPLAY) and not self.device[len(REPLAY):]:
            raise ValueError("device 'replay:' needs a folder of recorded samples: replay:DIR")
        if self.kind == "v4l2" and not self.device.startswith("/"):
            raise ValueError(f"device {self.device!r}: expected a V4L2 device path such as "
                             "/dev/video0, 'sim' or 'replay:DIR'")
        return self

    @model_validator(mode="after")
    def _frame_holds_exposure(self) -> Camera:
        if self.frame_time_ms < self.exposure_ms:
            raise ValueError(
                f"frame_time_ms ({self.frame_time_ms}) is shorter than exposure_ms "
                f"({self.exposure_ms}); a frame cannot be exposed longer than it lasts"
            )
        return self


class IlluminationState(_Section):
    angle_deg: float = Field(ge=0, lt=180)
    pin: HeaderPin


class Illumination(_Section):
    # how the header pins are driven: "jetson" (the Jetson pin factory over libgpiod) or
    # "mock" (gpiozero's MockFactory: the simulated head's wiring)
    pin_factory: Literal["jetson", "mock"]
    trigger_pin: HeaderPin
    settle_ms: float = Field(ge=0, le=1000)
    max_on_ms: float = Field(gt=0, le=10_000)
    # After a watchdog trip the head self-tests the ring and serves again; this many trips
    # within the window keep it down (ERROR) until it is restarted. 1: the first trip does.
    watchdog_max_trips: int = Field(default=3, ge=1, le=100)
    watchdog_window_s: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    # the self-test's least mean level above a dark frame for a group to count as seen
    self_test_min_dn: float = Field(default=0.25, gt=0, lt=65_535)
    states: list[IlluminationState] = Field(min_length=N_STATES, max_length=N_STATES)

    @property
    def angles_deg(self) -> tuple[float, ...]:
        return tuple(s.angle_deg for s in self.states)

    @model_validator(mode="after")
    def _pins_and_angles(self) -> Illumination:
        pins = [s.pin for s in self.states] + [self.trigger_pin]
        bad = sorted({p for p in pins if p in _NOT_GPIO})
        if bad:
            raise ValueError(f"header pins {bad} are power, ground or fixed-function, not GPIO")
        if len(set(pins)) != len(pins):
            raise ValueError(f"each LED group and the trigger need their own pin, got {pins}")
        angles = self.angles_deg
        if len(set(angles)) != len(angles):
            raise ValueError(f"the {N_STATES} states need {N_STATES} different angles, "
                             f"got {list(angles)}")
        return self


class RoiGrid(_Section):
    origin_mm: Pair
    size_mm: PositivePair
    overlap_mm: float = Field(ge=0)
    columns: int = Field(ge=1, le=100)
    rows: int = Field(ge=1, le=100)

    @property
    def pitch_mm(self) -> tuple[float, float]:
        return (self.size_mm[0] - self.overlap_mm, self.size_mm[1] - self.overlap_mm)

    @property
    def count(self) -> int:
        return self.columns * self.rows

    def roi_origin_mm(self, index: int) -> tuple[float, float]:
        """Sample coordinates of RoI ``index``'s top-left corner; row-major, serpentine-free."""
        if not 0 <= index < self.count:
            raise IndexError(f"RoI {index} outside the grid of {self.count}")
        row, col = divmod(index, self.columns)
        return (col * self.pitch_mm[0], row * self.pitch_mm[1])

    @property
    def extent_mm(self) -> tuple[float, float]:
        """Width and height of the sample area the grid covers."""
        return (
            self.size_mm[0] + (self.columns - 1) * self.pitch_mm[0],
            self.size_mm[1] + (self.rows - 1) * self.pitch_mm[1],
        )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RoiGrid:
        if self.overlap_mm >= min(self.size_mm):
            raise ValueError(
                f"overlap_mm ({self.overlap_mm}) must be smaller than the RoI size {self.size_mm}"
            )
        return self


class Limits(_Section):
    x: Pair
    y: Pair

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        for axis, (lo, hi) in (("x", self.x), ("y", self.y)):
            if lo >= hi:
                raise ValueError(f"{axis} limits must be [min, max] with min < max, got {[lo, hi]}")
        return self


_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 250000, 460800, 921600, 1000000)


class Stage(_Section):
    port: str = Field(min_length=1)
    baud: Literal[_BAUDS]  # type: ignore[valid-type]
    feed_mm_min: float = Field(gt=0, le=50_000)
    # after a move reports Idle, before the first frame: lets the mechanics stop ringing
    settle_ms: float = Field(default=100.0, ge=0, le=10_000)
    # true: the stage has limit switches and is homed ($H); false: it is unlocked ($X)
    homing: bool = True
    soft_limits_mm: Limits
    # where the controller's machine origin (MPos 0, 0) lies in these stage coordinates: GRBL
    # homes toward + by default and its machine origin is then at the + end of each axis, its
    # travel [-$130, 0]; None: the soft limits' maxima (that default; grblHAL with hard limits:
    # its pull-off $27 beyond them)
    machine_origin_mm: Pair | None = None
    roi_grid: RoiGrid

    @model_validator(mode="after")
    def _grid_inside_limits(self) -> Stage:
        g, lim = self.roi_grid, self.soft_limits_mm
        last = g.roi_origin_mm(g.count - 1)
        for axis, k, span in (("x", 0, lim.x), ("y", 1, lim.y)):
            lo, hi = g.origin_mm[k], g.origin_mm[k] + last[k]
            if lo < span[0] or hi > span[1]:
                raise ValueError(
                    f"the RoI grid needs stage {axis} from {lo} to {hi} mm, outside the soft "
                    f"limits {list(span)}"
                )
        return self


class Pipeline(_Section):
    tile_size: int = Field(ge=32, le=4096, multiple_of=32)
    tile_overlap: int = Field(ge=0)
    t_low: float = Field(ge=-1, le=1)
    t_high: float = Field(ge=-1, le=1)
    dbscan_eps: float = Field(gt=0)
    dbscan_min_samples: int = Field(ge=1)
    downscale: int = Field(ge=1, le=64)

    @model_validator(mode="after")
    def _consistent(self) -> Pipeline:
        if self.tile_overlap >= self.tile_size // 2:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be below half the tile_size "
                f"({self.tile_size})"
            )
        if self.t_low > self.t_high:
            raise ValueError(f"t_low ({self.t_low}) must not exceed t_high ({self.t_high})")
        return self


class RejectRule(_Section):
    """Which scratches fail a sample: the customer's rule, applied alike by the verdict, the
    evaluation and the calibration's threshold sweep (:func:`edge.verdict.decide`).

    A scratch whose apparent length (along its main axis, merged across RoIs) is at least
    ``min_length_mm`` must be caught and fails the sample; a shorter one is reported but passes,
    and the evaluation counts it neither as a miss nor as a false alarm.
    """

    min_length_mm: float = Field(default=0.5, ge=0, le=1000)

    def rejects(self, length_mm: float) -> bool:
        return length_mm >= self.min_length_mm


class Engine(_Section):
    artifact: str = Field(min_length=1)
    backend: Literal["auto", "onnxruntime", "tensorrt"]
    threads: int = Field(ge=1, le=256)
    batch_sizes: list[Annotated[int, Field(ge=1, le=256)]] = Field(min_length=1)
    # SHA-256 of the ONNX model this head is qualified with; an artifact made from another
    # model is refused. Empty: any model.
    model_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")


class Calibration(_Section):
    file: str


LINK_KINDS = ("ascii", "modbus-rtu", "modbus-tcp", "io")
_SERIAL_ONLY = ("port", "baud", "parity", "stop_bits", "rs485", "rs485_rts_level_for_tx",
                "rs485_delay_before_tx_ms", "rs485_delay_before_rx_ms")
_MODBUS_ONLY = ("unit_id",)
_TCP_ONLY = ("host", "tcp_port")
_RS485_ONLY = ("rs485_rts_level_for_tx", "rs485_delay_before_tx_ms", "rs485_delay_before_rx_ms")
_IO_PINS = ("trigger_pin", "busy_pin", "pass_pin", "fail_pin", "error_pin", "strobe_pin")
_IO_ONLY = _IO_PINS + ("ack_pin", "strobe_ms", "settle_ms", "hold_ms", "debounce_ms",
                       "trigger_edge", "active_high")


class VerdictLink(_Section):
    """How the line controller talks to the head: ``kind`` picks the link, every kind drives
    the same inspection service and verdict journal (:mod:`firmware_bridge.links`).

    * ``ascii`` (default): our CRC'd line protocol on a serial port (docs/protocol.md);
      ``port``, ``baud``; 8N1 only.
    * ``modbus-rtu``: Modbus RTU server on a serial port (docs/modbus.md): ``port``,
      ``baud``, ``parity`` (default even, the Modbus standard's), ``stop_bits`` (default 1),
      ``unit_id``, and ``rs485 = "kernel"`` where the port's RS-485 transceiver needs its
      direction switched by RTS (the Linux driver toggles it: pyserial's rs485_mode).
    * ``modbus-tcp``: Modbus TCP server on ``host`` (default 127.0.0.1: a PLC on the plant
      network needs the head's address there, said on purpose) and ``tcp_port`` (default 502,
      0 = any free port, printed), ``unit_id``.
    * ``io``: discrete I/O on header pins (docs/io_link.md): inputs ``trigger_pin`` and
      ``ack_pin`` (optional), outputs ``busy_pin``, ``pass_pin``, ``fail_pin``, ``error_pin``,
      ``strobe_pin``; ``trigger_edge`` (rising/falling, electrical), ``debounce_ms``,
      ``settle_ms`` (result outputs set to strobe), ``strobe_ms`` (strobe width),
      ``hold_ms`` (outputs drop this long after the strobe; 0: only on acknowledge, which
      needs ``ack_pin``) and ``active_high`` (false: outputs and the acknowledge are active
      low, for sinking PLC inputs). The pins are driven through the head's own pin factory,
      so they are checked as the LED pins are; none may be an LED group's or the camera
      trigger's (:class:`HeadConfig`).

    ``port`` and ``baud`` have no default (None: absent) so a head file that names them keeps
    its digest (``digest`` leaves out defaults). Keys that mean nothing for the chosen kind are
    refused rather than ignored, so a file cannot look as if it set something it does not.
    """

    kind: Literal[LINK_KINDS] = "ascii"  # type: ignore[valid-type]
    port: str | None = Field(default=None, min_length=1)
    baud: Literal[_BAUDS] | None = None  # type: ignore[valid-type]
    parity: Literal["none", "even", "odd"] | None = None
    stop_bits: Literal[1, 2] | None = None
    unit_id: int = Field(default=1, ge=1, le=247)  # 248-255 reserved, 0 broadcast
    host: str = Field(default="127.0.0.1", min_length=1)
    tcp_port: int = Field(default=502, ge=0, le=65535)
    # "kernel": the serial driver switches the RS-485 transceiver with RTS (TIOCSRS485);
    # "off": the adapter does it itself (most USB RS-485 adapters) or the port is RS-232
    rs485: Literal["off", "kernel"] = "off"
    rs485_rts_level_for_tx: bool = True
    rs485_delay_before_tx_ms: float = Field(default=0.0, ge=0, le=100)
    rs485_delay_before_rx_ms: float = Field(default=0.0, ge=0, le=100)
    # discrete I/O (kind = "io"): header pins, and the handshake's timing
    trigger_pin: HeaderPin | None = None
    busy_pin: HeaderPin | None = None
    pass_pin: HeaderPin | None = None
    fail_pin: HeaderPin | None = None
    error_pin: HeaderPin | None = None
    strobe_pin: HeaderPin | None = None
    ack_pin: HeaderPin | None = None
    # a PLC input scan is 1-10 ms: a 10 ms strobe is seen by the slowest of them
    strobe_ms: float = Field(default=10.0, gt=0, le=10_000)
    settle_ms: float = Field(default=2.0, ge=0, le=1000)
    hold_ms: float = Field(default=0.0, ge=0, le=3_600_000)
    debounce_ms: float = Field(default=5.0, ge=0, le=1000)
    trigger_edge: Literal["rising", "falling"] = "rising"
    active_high: bool = True

    @model_validator(mode="after")
    def _keys_fit_the_kind(self) -> VerdictLink:
        given, kind = self.model_fields_set, self.kind

        def refuse(keys: tuple[str, ...], why: str) -> None:
            # a key at its default is no choice: a whole configuration dumped and read back
            # (model_dump, a calibration's copy of the head) names every key
            fields = type(self).model_fields
            bad = [k for k in keys if k in given and getattr(self, k) != fields[k].default]
            if bad:
                raise ValueError(f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} {why}, "
                                 f"not for kind = {kind!r}")

        if kind == "io":
            refuse(_SERIAL_ONLY + _TCP_ONLY + _MODBUS_ONLY, "for the serial and TCP links; io "
                   "takes header pins (trigger_pin, busy_pin, ...)")
            self._io_pins_fit()
            return self
        refuse(_IO_ONLY, "for kind = 'io'")
        if kind == "modbus-tcp":
            refuse(_SERIAL_ONLY, "for a serial link (ascii, modbus-rtu); modbus-tcp takes host "
                                 "and tcp_port")
        else:
            refuse(_TCP_ONLY, "for kind = 'modbus-tcp'")
            for key, what in (("port", "the serial port (a device path, a pyserial URL or "
                                       "'sim')"), ("baud", "the baud rate")):
                if getattr(self, key) is None:
                    raise ValueError(f"kind = {kind!r} needs {key}: {what}")
        if kind == "ascii":
            refuse(_MODBUS_ONLY + ("stop_bits", "rs485") + _RS485_ONLY, "for Modbus links")
            if self.parity not in (None, "none"):
                raise ValueError("the ascii link is 8N1: parity must be 'none' (or left out)")
        if self.rs485 == "off":
            refuse(_RS485_ONLY, "for rs485 = 'kernel'")
        return self

    def _io_pins_fit(self) -> None:
        missing = [k for k in _IO_PINS if getattr(self, k) is None]
        if missing:
            raise ValueError(f"kind = 'io' needs {', '.join(missing)}: header pin numbers")
        pins = self.io_pins
        bad = sorted({p for p in pins.values() if p in _NOT_GPIO})
        if bad:
            raise ValueError(f"header pins {bad} are power, ground or fixed-function, not GPIO")
        if len(set(pins.values())) != len(pins):
            raise ValueError(f"each io signal needs its own pin, got {pins}")
        if self.ack_pin is None and self.hold_ms == 0:
            raise ValueError("without ack_pin the outputs drop only after hold_ms: give hold_ms "
                             "> 0 (how long the PLC has to read them) or an ack_pin")

    @property
    def io_pins(self) -> dict[str, int]:
        """Signal -> header pin of the io link (``ack`` only when wired)."""
        return {k.removesuffix("_pin"): getattr(self, k)
                for k in (*_IO_PINS, "ack_pin") if getattr(self, k) is not None}

    @property
    def serial_parity(self) -> str:
        """Parity as pyserial names it ('N', 'E', 'O'); Modbus RTU defaults to even."""
        default = "even" if self.kind == "modbus-rtu" else "none"
        return {"none": "N", "even": "E", "odd": "O"}[self.parity or default]

    @property
    def serial_stop_bits(self) -> int:
        return self.stop_bits or 1


class ChannelGain(_Section):
    R: PositiveFloat
    G: PositiveFloat
    B: PositiveFloat


class Simulation(_Section):
    """Parameters of the simulated head (sensor, ring light, stage, and how its camera is mounted);
    a real head has none.

    The mounting tolerances say how the simulated camera really sits against what the head file
    says (all 0: exactly as the file says). ``scale_error`` is the relative error of the pixel
    footprint (0.01: a pixel sees 1 % more mm than RoI size / pixels), ``rotation_deg`` turns the
    camera against the stage axes about the frame centre (positive from +x toward +y, the image's
    y pointing down), ``origin_offset_mm`` moves the whole field of view: where the camera's RoI
    0 really is minus where the file puts it. Scale and rotation act about the frame centre.

    ``glass`` is which glass population the simulated head sees (:mod:`edge.sim.sample`):
    ``default``, the one every shipped network was trained on, or ``other-factory``, another
    plant's (other scratches, water spots and fingerprints) that no training rendered. Left out
    of dumps at its default, so that the default head's render identity, and with it every
    cached held-out score map, stays what it was before the key existed.
    """

    head_seed: int = Field(ge=0)
    dark_offset_dn: float = Field(ge=0)
    read_noise_dn: float = Field(ge=0)
    conversion_gain_dn_per_e: float = Field(gt=0)
    hot_pixel_fraction: float = Field(ge=0, le=0.01)
    background_dn: float = Field(ge=0)
    channel_gain: ChannelGain
    field_vignetting: float = Field(ge=0, lt=1)
    field_tilt: float = Field(ge=0, lt=1)
    led_balance: float = Field(ge=0, lt=1)
    stage_accel_mm_s2: float = Field(default=800.0, gt=0)
    scale_error: float = Field(default=0.0, gt=-0.05, lt=0.05)
    rotation_deg: float = Field(default=0.0, gt=-5.0, lt=5.0)
    origin_offset_mm: Pair = (0.0, 0.0)
    glass: Literal["default", "other-factory"] = Field(
        default="default", exclude_if=lambda v: v == "default")

    @model_validator(mode="after")
    def _offset_within_reach(self) -> Simulation:
        dx, dy = self.origin_offset_mm
        if not (dx * dx + dy * dy) ** 0.5 < 5.0:
            raise ValueError(f"origin_offset_mm {[dx, dy]} is 5 mm or more from the nominal "
                             "origin; a camera mounted that far off is not a tolerance")
        return self


class Fleet(_Section):
    """Where the head reports to the plant (:mod:`firmware_bridge.fleet`, docs/fleet.md): its
    verdicts (without images), health and counts to the MQTT broker ``broker``
    (``mqtt://host:port``, default port 1883; ``mqtts://`` for TLS, default port 8883) under
    ``glass-inspect/<head_id>/``. ``head_id`` defaults to the head's ``name``; either must be
    one MQTT topic level of 1-64 letters, digits, ``_ . -``, unique in the plant (it is also
    the client id). ``username`` and ``password`` go together; ``ca_file`` (relative to the
    head file) is the broker's CA for TLS, else the system's. ``queue`` bounds the verdicts
    kept while the broker is away (the oldest go first, counted); ``health_s`` is how often
    health is sent. Absent: the head reports to nobody."""

    broker: str = Field(pattern=r"^mqtts?://[^/:@\s]+(:\d{1,5})?/?$")
    head_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    username: str | None = Field(default=None, min_length=1)
    password: str | None = Field(default=None, min_length=1)
    ca_file: str | None = Field(default=None, min_length=1)
    queue: int = Field(default=10_000, ge=1, le=1_000_000)
    health_s: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _fits(self) -> Fleet:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        port = self.broker.rstrip("/").rpartition(":")[2]
        if port.isdigit() and not 1 <= int(port) <= 65535:
            raise ValueError(f"broker port {port} is not 1-65535")
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file is for TLS: use an mqtts:// broker URL")
        return self

    @property
    def tls(self) -> bool:
        return self.broker.startswith("mqtts://")

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the broker."""
        rest = self.broker.split("://", 1)[1].rstrip("/")
        host, sep, port = rest.partition(":")
        return host, int(port) if sep else (8883 if self.tls else 1883)


class Review(_Section):
    """Which inspected samples the head keeps for people to review and label
    (:mod:`edge.review`): every FAIL and ERROR, every PASS whose peak score came within
    ``margin`` of ``t_high``, and a random ``keep_share`` of the rest, in ``dir`` under
    ``budget_gb`` (the oldest unlabelled one goes first). Absent: the head keeps nothing."""

    dir: str = Field(min_length=1)
    budget_gb: float = Field(gt=0, le=1_000_000)
    keep_share: float = Field(default=0.0, ge=0, le=1)
    # in score units; 0.1 of the shipped network's sigmoid keeps PASSes that peaked at 0.5 or
    # more under its T_high of 0.6
    margin: float = Field(default=0.1, ge=0, le=2)


class Opcua(_Section):
    """An OPC UA server beside the verdict link, for the MES (docs/opcua.md): OPC 40100
    Machine Vision's state machine, job methods and result events over the same inspection
    service. Needs the ``opcua`` extra (asyncua).

    ``endpoint`` defaults to the loopback interface: serving the plant network is said on
    purpose, by its address. Anonymous access is off unless ``anonymous = true``; a client
    logs in with ``username`` and ``password``, and with ``certificate`` and ``private_key``
    (the server's own, PEM or DER, paths relative to the head file) the endpoint takes only
    signed and encrypted connections (Basic256Sha256), so the password never crosses the
    network in the clear. Without them the endpoint is unencrypted (None security policy),
    fit for the loopback default only.
    """

    endpoint: str = Field(default="opc.tcp://127.0.0.1:4840/glass-inspect/",
                          pattern=r"^opc\.tcp://[^/:]+(:\d{1,5})?(/.*)?$")
    anonymous: bool = False
    username: str | None = Field(default=None, min_length=1)
    password: str | None = Field(default=None, min_length=1)
    certificate: str | None = Field(default=None, min_length=1)
    private_key: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _someone_can_log_in(self) -> Opcua:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (the server's own)")
        if not self.anonymous and self.username is None:
            raise ValueError("anonymous access is off and no username is set: no client could "
                             "log in; give username and password (or anonymous = true)")
        return self


_WEB_TOKEN = re.compile(r"^[A-Za-z0-9_.~-]{16,256}$")


class Web(_Section):
    """The head's operator web page (``serve --web``, :mod:`firmware_bridge.web`): ``token``
    is what a person types to change anything through it (labels, abort). The environment
    variable ``GLASS_INSPECT_WEB_TOKEN`` takes its place where set, so the head file need not
    hold the secret. Without either the page is read-only. Choice: at least 16 characters of
    ``A-Z a-z 0-9 _ - . ~`` (a token typed or pasted, never a password a person remembers)."""

    token: str = ""

    @model_validator(mode="after")
    def _token_is_usable(self) -> Web:
        if self.token and not _WEB_TOKEN.match(self.token):
            raise ValueError(f"token: expected 16 to 256 characters of A-Z a-z 0-9 _ - . ~, got "
                             f"{len(self.token)} character(s) (make one with: python -c "
                             "'import secrets; print(secrets.token_urlsafe(24))')")
        return self


class HeadConfig(_Section):
    name: str = Field(min_length=1)
    camera: Camera
    illumination: Illumination
    stage: Stage
    pipeline: Pipeline
    engine: Engine
    calibration: Calibration
    verdict_link: VerdictLink
    reject_rule: RejectRule = RejectRule()
    simulation: Simulation | None = None
    review: Review | None = None
    # left out of every model_dump: of the digest (reporting changes no verdict, so turning
    # it on must not unbind a calibration) and of printed configs (its password)
    fleet: Fleet | None = Field(default=None, exclude=True)
    web: Web | None = None
    # left out of every model_dump as [fleet] is: of the digest and of printed configs (its
    # password)
    opcua: Opcua | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _io_pins_free(self) -> HeadConfig:
        link, ill = self.verdict_link, self.illumination
        if link.kind != "io":
            return self
        taken = {s.pin: f"LED group {k}" for k, s in enumerate(ill.states)}
        taken[ill.trigger_pin] = "the camera trigger"
        clash = [f"{name}_pin {pin} is {taken[pin]}'s" for name, pin in link.io_pins.items()
                 if pin in taken]
        if clash:
            raise ValueError(f"verdict_link: {'; '.join(clash)} (illumination); each io signal "
                             "needs a header pin of its own")
        return self

    @model_validator(mode="after")
    def _fleet_head_id(self) -> HeadConfig:
        if self.fleet is not None and self.fleet.head_id is None and not SAMPLE_ID_LIKE.match(
                self.name):
            raise ValueError(f"fleet: the head's name {self.name!r} is not an MQTT topic level "
                             "(1-64 letters, digits, _ . -): give [fleet] head_id")
        return self

    @model_validator(mode="after")
    def _parts_fit_together(self) -> HeadConfig:
        cam, pins, port = self.camera.kind, self.illumination.pin_factory, self.stage.port
        if cam == "sim" and self.simulation is None:
            raise ValueError("camera.device = 'sim' renders frames with the [simulation] "
                             "section's sensor and ring light; add it, or name a real camera")
        if cam in ("sim", "replay"):
            if pins != "mock":
                raise ValueError(f"camera.device = {self.camera.device!r} sees the LEDs through "
                                 "the simulated wiring: set illumination.pin_factory = 'mock'")
            if port != SIM:
                raise ValueError(f"camera.device = {self.camera.device!r} needs the stage "
                                 "simulator's position: set stage.port = 'sim'")
        elif pins == "mock":
            raise ValueError(f"camera {self.camera.device} is triggered by real pins: set "
                             "illumination.pin_factory = 'jetson'")
        return self

    @property
    def simulated(self) -> bool:
        """True when any part of the head is simulated."""
        return (self.camera.kind != "v4l2" or self.stage.port == SIM
                or self.illumination.pin_factory == "mock")

    # Where the file came from: relative paths resolve against it. Not part of the head.
    _source: str = PrivateAttr(default=DEFAULT_NAME)

    @property
    def source(self) -> str:
        return self._source

    @property
    def base_dir(self) -> Path:
        return Path.cwd() if self.source == DEFAULT_NAME else Path(self.source).parent

    def resolve(self, path: str) -> Path:
        """A path of this head file as a filesystem path (see the module docstring)."""
        if path.startswith(SHIPPED):
            return shipped(path[len(SHIPPED):])
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def mm_per_px(self) -> tuple[float, float]:
        """Footprint of one sensor pixel on the sample, x and y."""
        w, h = self.stage.roi_grid.size_mm
        return (w / self.camera.width, h / self.camera.height)

    def summary(self) -> list[str]:
        """What ``glass-inspect config check`` says of a valid head file."""
        g, c = self.stage.roi_grid, self.camera
        return [
            f"{self.source}: valid head configuration '{self.name}' "
            f"({'simulated' if self.simulated else 'real'} parts)",
            f"  camera {c.device}: {c.width} x {c.height} px, {c.bit_depth}-bit "
            f"{c.bayer_pattern}, {self.mm_per_px[0] * 1000:.2f} x {self.mm_per_px[1] * 1000:.2f} "
            "um per pixel",
            f"  ring light: {self.illumination.pin_factory} pins, LED groups on header pins "
            f"{[s.pin for s in self.illumination.states]}, trigger on "
            f"{self.illumination.trigger_pin}",
            f"  stage on {self.stage.port}: {g.count} RoIs ({g.columns} x {g.rows}) of "
            f"{g.size_mm[0]} x {g.size_mm[1]} mm, covering {g.extent_mm[0]:.1f} x "
            f"{g.extent_mm[1]:.1f} mm",
            f"  engine {self.engine.artifact}",
            *([f"  review: keeps FAIL, ERROR, PASS within {self.review.margin:g} of T_high and "
               f"{self.review.keep_share:.1%} of the rest in {self.review.dir} (at most "
               f"{self.review.budget_gb:g} GB)"] if self.review else []),
            f"  config sha256 {self.digest()}",
        ]

    def digest(self) -> str:
        """SHA-256 of the head's content (not of the file's formatting or location). Keys at
        their default value are left out, so that a software update that adds a key with a
        default (an option the head file does not set) keeps every head's digest, and with it
        the calibrations bound to it (:func:`edge.calibration.head_digest`). ``[review]`` is
        left out too: which samples are kept changes neither the frames nor the verdicts, so
        turning it on must not unbind a calibration or change a recording's head digest.
        ``[opcua]`` is left out for the same reason (and its password with it), and ``[web]``
        (its token)."""
        content = self.model_dump(mode="json", exclude_defaults=True,
                                  exclude={"review", "opcua", "web"})
        canon = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()


def shipped(name: str) -> Path:
    """A file shipped inside the package: ``edge/models/NAME``, wherever the package is."""
    return Path(str(resources.files("edge").joinpath("models", name)))


def model_path(text: str | Path) -> Path:
    """A model named on a command line: ``shipped:NAME`` (:func:`shipped`, as a head file names
    its artifact) or a path (``~`` expanded, relative to the working folder); whether the file
    exists is for the caller to say, in its own words."""
    text = str(text)
    return shipped(text[len(SHIPPED):]) if text.startswith(SHIPPED) else Path(text).expanduser()


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per problem, ``dotted.key: what is wrong (got value)``; shared by all loaders."""
    return [_describe(e) for e in exc.errors()]


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (check its spelling)"
    if kind == "missing":
        return f"{key}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and kind != "value_error" and not isinstance(err["input"], dict):
        return f"{key}: {msg} (got {err['input']!r})"
    return f"{key}: {msg}"


def parse(data: dict, source: str = DEFAULT_NAME) -> HeadConfig:
    """Validate an already-parsed TOML mapping; ``source`` names it in errors."""
    try:
        cfg = HeadConfig.model_validate(data)
    except ValidationError as exc:
        problems = describe_errors(exc)
        head = f"invalid head configuration {source}"
        raise ConfigError(head + ":\n  " + "\n  ".join(problems)) from None
    cfg._source = source
    return cfg


def load(path: str | Path | None = None) -> HeadConfig:
    """Load and validate a head file; ``None`` gives the embedded simulated head."""
    if path is None:
        text = resources.files("edge").joinpath("default_head.toml").read_text()
        source = DEFAULT_NAME
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"head configuration {source} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read head configuration {source}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"head configuration {source} is not valid TOML: {exc}") from None
    return parse(data, source)


def default_text() -> str:
    """The embedded default file, as a starting point for a real head."""
    return resources.files("edge").joinpath("default_head.toml").read_text()


def default_head_path() -> str | None:
    """The head file named by ``GLASS_INSPECT_HEAD`` (how a device image says which head it
    is), or None."""
    return os.environ.get("GLASS_INSPECT_HEAD") or None
