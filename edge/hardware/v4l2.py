"""The head's real camera: a RAW Bayer sensor behind V4L2 (a Jetson CSI camera through the tegra
VI driver, or a USB3 machine-vision camera).

:class:`V4L2Camera` negotiates the head file's size, bit depth and Bayer order, sets exposure,
gain and the trigger mode, streams through mmap buffers and unpacks each frame with
:mod:`edge.hardware.bayer_unpack`. Every failure is a :class:`CameraError` naming the device.
The ioctls, and the preflight probe of a device node, are :mod:`edge.hardware.v4l2_device`;
the camera takes any object with :class:`V4L2Device`'s methods (the tests hand in a fake
driver).

Choices, and why:

* **Format:** unpacked (16-bit words) before MIPI-packed when the device offers both: the tegra
  VI writes only unpacked, and packing saves bus bandwidth this head does not need (a 3504 x 3120
  12-bit frame every 120 ms is 180 MB/s unpacked, well within USB3). ``pixel_format`` forces one.
* **Alignment:** ``"auto"`` means ``"msb"`` on the tegra VI (driver ``tegra-video``, Xavier and
  Orin: the modules :mod:`edge.hardware.jetson` knows) and ``"lsb"`` (the V4L2 layout)
  elsewhere; a Nano's VI2 writes LSB-aligned: set ``"lsb"`` there. The facts and their source are
  in :mod:`edge.hardware.bayer_unpack`; a wrong choice is refused frame by frame, not hidden.
* **Exposure:** the tegra camera control named ``exposure`` (microseconds, INTEGER64; tegracam
  drivers with the usual ``exposure_factor`` of 1e6) when present, else the standard
  ``exposure_absolute`` (V4L2_CID_EXPOSURE_ABSOLUTE, 100 us units). The user-class
  V4L2_CID_EXPOSURE (also named ``exposure``, in driver units such as lines) is not used.
  ``auto_exposure`` is set to manual and ``gain_automatic`` off at open, where they exist.
* **Gain:** analogue_gain, else the tegra ``gain``, else the standard ``gain``. Their units are
  the driver's (tegracam: ``gain_factor`` steps per 1x), so ``gain_scale`` (control units per
  1x) converts; without it only gain 1.0 is accepted, set as the control's minimum (1x on the
  sensors we know).
* **Trigger:** ``trigger="external"`` sets the ``trigger_mode`` control to 1 (Vision Components'
  drivers: 1 = external; Allied Vision's Alvium: a boolean, whose ``trigger_source`` must also
  select the input line) and refuses a camera without it; ``"free-run"`` sets it to 0 where it
  exists. A tegra ``bypass_mode`` is set to 0, which plain V4L2 capture (no Argus) needs.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import stat
import time
from collections.abc import Callable

import numpy as np

from edge.hardware.bayer_unpack import ALIGNMENTS, EIGHT_BIT, FORMATS, PATTERNS, formats_for, unpack
from edge.hardware.camera import Camera, CameraError, CameraTimeout, FrameError
from edge.hardware.v4l2_device import (
    BUF_FLAG_ERROR,
    CAP_CAPTURE,
    CAP_STREAMING,
    CID_ANALOGUE_GAIN,
    CID_AUTOGAIN,
    CID_EXPOSURE_ABSOLUTE,
    CID_EXPOSURE_AUTO,
    CID_GAIN,
    EXPOSURE_MANUAL,
    TEGRA_CIDS,
    Control,
    PixFormat,
    V4L2Device,
    open_problem,
)

log = logging.getLogger(__name__)


def serial_of(device: str, by_id: str = "/dev/v4l/by-id", sysfs: str = "/sys") -> str:
    """The camera's identity as udev names it, its ID_SERIAL (``Vendor_Model_SERIAL``), or ""
    where it has none (a CSI sensor): a calibration is bound to it, so a swapped camera is
    noticed.

    First from the ``usb-...-video-index0`` links in ``by_id``, which udev makes on the host.
    A container has no ``/dev/v4l`` (Docker passes the device node alone), so then from sysfs
    (:func:`usb_serial_from_sysfs`), composed as udev's usb_id composes it, so that a
    calibration made on the host and a head started in the container name the camera alike.
    Where neither gives one, a warning says the calibration's camera check is skipped."""
    try:
        target = os.path.realpath(device)
        for link in sorted(glob.glob(os.path.join(by_id, "*"))):
            if os.path.realpath(link) != target:
                continue
            name = os.path.basename(link)
            m = re.match(r"^[a-z0-9]+-(.+)-video-index\d+$", name)
            if m:
                return m.group(1)
    except OSError:
        pass
    serial = usb_serial_from_sysfs(device, sysfs)
    if not serial:
        log.warning("camera %s: no serial number found (no link in %s, no USB device above its "
                    "node in %s: a CSI sensor has none), so a calibration's check that it was "
                    "made with this camera is skipped; the dark frame at start still compares "
                    "the sensor's hot pixels", device, by_id, sysfs)
    return serial


# udev keeps these besides letters and digits (whitelisted_char_for_devnode)
_UDEV_KEEP = frozenset("#+-.:=@_")


def _udev_clean(text: str) -> str:
    """udev's ``udev_replace_whitespace`` then ``udev_replace_chars(str, NULL)``, as usb_id
    applies them: outer whitespace dropped, each inner run of it one ``_``, and every other
    ASCII character that is not a letter, digit or one of ``#+-.:=@_`` a ``_`` (``\\x``
    escapes and non-ASCII characters are kept)."""
    chars = list("_".join(re.split(r"[ \t\n\v\f\r]+", text.strip(" \t\n\v\f\r"))))
    i = 0
    while i < len(chars):
        c = chars[i]
        if c == "\\" and i + 1 < len(chars) and chars[i + 1] == "x":
            i += 2
            continue
        if c.isascii() and not (c.isalnum() or c in _UDEV_KEEP):
            chars[i] = "_"
        i += 1
    return "".join(chars)


def _read_attr(folder: str, name: str) -> str | None:
    try:
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def _device_number(device: str) -> tuple[int, int] | None:
    """(major, minor) of a character device node, else None."""
    try:
        st = os.stat(device)
    except OSError:
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def _sysfs_node(device: str, sysfs: str) -> str | None:
    """The device's folder in sysfs: by its device number (``dev/char/MAJOR:MINOR``), which is
    right whatever name the node has (compose maps the host's camera to ``/dev/video0`` in the
    container, and sysfs there is the host's); for a path that is not a device node, by its
    name under ``class/video4linux``."""
    number = _device_number(device)
    if number is not None:
        path = os.path.join(sysfs, "dev", "char", f"{number[0]}:{number[1]}")
    else:
        path = os.path.join(sysfs, "class", "video4linux", os.path.basename(
            os.path.realpath(device)))
    return os.path.realpath(path) if os.path.isdir(path) else None


def usb_serial_from_sysfs(device: str, sysfs: str = "/sys") -> str:
    """ID_SERIAL of a USB camera from sysfs, or "" (a CSI sensor: no USB device above it).

    From the video node's folder up its ``device`` parents to the first USB device (the folder
    with ``idVendor``), then as udev's usb_id builtin: the ``manufacturer`` (else ``idVendor``),
    ``_``, the ``product`` (else ``idProduct``), and ``_`` and the ``serial`` where there is one
    whose characters are all printable ASCII other than ``,`` (usb_id ignores any other), each
    cleaned as udev cleans them (:func:`_udev_clean`)."""
    node = _sysfs_node(device, sysfs)
    if node is None:
        return ""
    top = os.path.realpath(os.path.join(sysfs, "devices"))
    here = os.path.realpath(os.path.join(node, "device"))
    while here.startswith(top + os.sep):
        vendor_id = _read_attr(here, "idVendor")
        if vendor_id is not None:
            vendor = _read_attr(here, "manufacturer")
            model = _read_attr(here, "product")
            parts = [_udev_clean(vendor if vendor is not None else vendor_id),
                     _udev_clean(model if model is not None else
                                 _read_attr(here, "idProduct") or "")]
            serial = (_read_attr(here, "serial") or "").rstrip()
            if serial and all(0x20 <= ord(c) <= 0x7F and c != "," for c in serial):
                parts.append(_udev_clean(serial))
            return "_".join(parts)
        here = os.path.dirname(here)
    return ""


def frame_bytes(f: PixFormat) -> int:
    """The bytes a whole frame of ``f`` takes (the last row may come without its padding)."""
    return f.bytesperline * (f.height - 1) + FORMATS[f.fourcc].row_bytes(f.width)


def negotiate(dev, device: str, width: int, height: int, bit_depth: int, pattern: str,
              pixel_format: str = "auto") -> tuple[str, PixFormat]:
    """Choose, set and verify the capture format; the chosen fourcc and the driver's answer."""
    if bit_depth not in (10, 12):
        raise CameraError(f"camera {device}: the head file asks for {bit_depth}-bit frames; "
                          "this driver takes 10- or 12-bit RAW Bayer only")
    if pattern not in PATTERNS:
        raise CameraError(f"camera {device}: unknown Bayer pattern {pattern!r}; "
                          f"one of {', '.join(PATTERNS)}")
    offered = dev.formats()
    codes = [code for code, _ in offered]
    listing = ", ".join(f"{code} ({desc})" for code, desc in offered) or "no formats at all"
    if pixel_format != "auto":
        fmt = FORMATS.get(pixel_format)
        if pixel_format in EIGHT_BIT:
            raise CameraError(f"camera {device}: {pixel_format} is 8-bit Bayer; the pipeline "
                              "needs 10- or 12-bit RAW")
        if fmt is None:
            raise CameraError(f"camera {device}: unknown pixel format {pixel_format!r}; known: "
                              f"{', '.join(FORMATS)}")
        if (fmt.pattern, fmt.bits) != (pattern, bit_depth):
            raise CameraError(f"camera {device}: pixel format {pixel_format} is "
                              f"{fmt.describe()}, but the head file says {bit_depth}-bit "
                              f"{pattern}")
        wanted = [fmt]
    else:
        wanted = formats_for(pattern, bit_depth)
    chosen = next((f.fourcc for f in wanted if f.fourcc in codes), None)
    if chosen is None:
        hint = ""
        if any(code in EIGHT_BIT for code in codes) and not any(c in FORMATS for c in codes):
            hint = ("; it offers 8-bit Bayer only, the pipeline needs 10 or 12 bit (select the "
                    "sensor's RAW10/RAW12 mode in its driver)")
        raise CameraError(f"camera {device}: wanted {bit_depth}-bit Bayer {pattern} "
                          f"({' or '.join(f.fourcc for f in wanted)}); it offers: "
                          f"{listing}{hint}")
    got = dev.set_format(width, height, chosen)
    row = FORMATS[chosen].row_bytes(width)
    if (got.width, got.height, got.fourcc) != (width, height, chosen) \
            or got.bytesperline < row or got.sizeimage < frame_bytes(got):
        sizes = ", ".join(dev.frame_sizes(chosen)) or "none listed"
        raise CameraError(
            f"camera {device}: asked for {width} x {height} px {chosen}, the driver answered "
            f"{got.width} x {got.height} px {got.fourcc} with {got.bytesperline}-byte rows and "
            f"{got.sizeimage}-byte frames (a {width} px row needs {row}); "
            f"sizes it offers for {chosen}: {sizes}; formats: {listing}")
    return chosen, got


class V4L2Camera(Camera):
    """A hardware-triggered RAW Bayer camera on V4L2 (see the module's notes for each choice).

    ``opener`` makes the low-level device from the path (default :class:`V4L2Device`); tests
    hand in a fake driver. Streaming starts here: with an external trigger the sensor waits for
    the head's pulse, so a frame is there only after ``arm()`` and the pulse."""

    def __init__(self, device: str, width: int, height: int, bit_depth: int, bayer_pattern: str,
                 pixel_format: str = "auto", trigger: str = "external", alignment: str = "auto",
                 buffers: int = 4, gain_scale: float | None = None,
                 opener: Callable[[str], V4L2Device] = V4L2Device):
        if trigger not in ("external", "free-run"):
            raise ValueError(f"trigger must be 'external' or 'free-run', not {trigger!r}")
        if alignment not in (*ALIGNMENTS, "auto"):
            raise ValueError(f"alignment must be 'auto', 'lsb' or 'msb', not {alignment!r}")
        self.device, self.shape, self.bit_depth = device, (height, width), bit_depth
        self.serial = serial_of(device)
        self.trigger, self.gain_scale = trigger, gain_scale
        self.dropped = 0  # stale frames arm() threw away
        self._maps: list = []
        self._streaming = False
        try:
            self._dev = opener(device)
        except OSError as exc:
            raise CameraError(open_problem(device, exc)) from exc
        try:
            self._start(width, height, bayer_pattern, pixel_format, alignment, buffers)
        except BaseException:
            self.close()
            raise

    def _do(self, what: str, call: Callable, *args):
        """``call(*args)``; an OSError becomes a CameraError that says what was being done."""
        try:
            return call(*args)
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.ENODEV, errno.ENXIO):
                raise CameraError(f"{open_problem(self.device, exc)} ({what})") from exc
            raise CameraError(f"camera {self.device}: {what} failed: "
                              f"{exc.strerror or exc}") from exc

    def _start(self, width, height, pattern, pixel_format, alignment, buffers) -> None:
        caps = self._do("reading its capabilities", self._dev.caps)
        if caps.capabilities & (CAP_CAPTURE | CAP_STREAMING) != CAP_CAPTURE | CAP_STREAMING:
            raise CameraError(f"camera {self.device}: '{caps.card}' (driver {caps.driver}) is "
                              "not a streaming video capture device")
        code, self.format = self._do("setting the format", negotiate, self._dev, self.device,
                                     width, height, self.bit_depth, pattern, pixel_format)
        self.pixel_format = FORMATS[code]
        if alignment == "auto":
            alignment = "msb" if caps.driver == "tegra-video" else "lsb"
        self.alignment = alignment
        self._controls = self._do("listing its controls", self._dev.controls)
        self._set_if("bypass_mode", 0)
        self._set_if("auto_exposure", EXPOSURE_MANUAL, CID_EXPOSURE_AUTO)
        self._set_if("gain_automatic", 0, CID_AUTOGAIN)
        if not self._set_if("trigger_mode", int(self.trigger == "external")) \
                and self.trigger == "external":
            raise CameraError(
                f"camera {self.device}: no trigger_mode control, so it cannot wait for the "
                f"head's trigger line; its controls: {self._names()}. A camera without an "
                "external trigger input runs only with trigger 'free-run' (bench use)")
        n = self._do("allocating buffers", self._dev.request_buffers, buffers)
        if n < 2:
            raise CameraError(f"camera {self.device}: the driver gave {n} buffer(s) for "
                              f"{buffers} asked; streaming needs at least 2")
        self._maps = [self._do("mapping a buffer", self._dev.map_buffer, i) for i in range(n)]
        for i in range(n):
            self._do("queueing a buffer", self._dev.queue, i)
        self._do("starting the stream", self._dev.stream, True)
        self._streaming = True

    def _names(self) -> str:
        return ", ".join(c.name for c in self._controls) or "none"

    def _find(self, name: str | None = None, cid: int | None = None,
              tegra: bool = False) -> Control | None:
        """The control with id ``cid``, else the one named ``name``; with ``tegra``, only among
        NVIDIA's camera controls (the standard user-class 'exposure' shares the name)."""
        for c in self._controls:
            if c.id == cid or (c.name == name and (not tegra or c.id in TEGRA_CIDS)):
                return c
        return None

    def _set_if(self, name: str, value: int, cid: int | None = None) -> bool:
        ctrl = self._find(name if cid is None else None, cid)
        if ctrl is not None:
            self._do(f"setting {ctrl.name} to {value}", self._dev.set_control, ctrl.id, value)
        return ctrl is not None

    def configure(self, exposure_ms: float, gain: float = 1.0) -> None:
        tegra = self._find("exposure", tegra=True)
        # units per ms: tegra's are microseconds, V4L2's exposure_absolute 100 us
        ctrl, per_ms = (tegra, 1000.0) if tegra else (self._find(cid=CID_EXPOSURE_ABSOLUTE), 10.0)
        if ctrl is None:
            raise CameraError(f"camera {self.device}: no exposure control (tegra 'exposure' or "
                              f"'exposure_absolute'); its controls: {self._names()}")
        value = round(exposure_ms * per_ms)
        if not ctrl.minimum <= value <= ctrl.maximum:
            raise CameraError(f"camera {self.device}: exposure {exposure_ms:g} ms is outside the "
                              f"sensor's {ctrl.minimum / per_ms:g}-{ctrl.maximum / per_ms:g} ms "
                              f"({ctrl.name})")
        self._do(f"setting {ctrl.name} to {value}", self._dev.set_control, ctrl.id, value)
        g = (self._find(cid=CID_ANALOGUE_GAIN) or self._find("gain", tegra=True)
             or self._find(cid=CID_GAIN))
        if g is None:
            if gain != 1.0:
                raise CameraError(f"camera {self.device}: gain {gain:g} asked, but it has no "
                                  f"gain control; its controls: {self._names()}")
            return
        if self.gain_scale is None and gain != 1.0:
            raise CameraError(f"camera {self.device}: gain {gain:g} asked, but the units of "
                              f"its {g.name} control are unknown: give gain_scale (units per 1x)")
        value = g.minimum if self.gain_scale is None else round(gain * self.gain_scale)
        if not g.minimum <= value <= g.maximum:
            raise CameraError(f"camera {self.device}: gain {gain:g} ({g.name} {value}) is "
                              f"outside {g.minimum}-{g.maximum}")
        self._do(f"setting {g.name} to {value}", self._dev.set_control, g.id, value)

    def _live(self):
        if self._dev is None:
            raise CameraError(f"camera {self.device} is closed")
        return self._dev

    def arm(self) -> None:
        dev = self._live()
        # a frame nobody grabbed is stale: it was exposed before this arm (free-run, or a stray
        # trigger edge); hand its buffer back to the driver
        for _ in range(len(self._maps)):
            got = self._do("dropping a stale frame", dev.dequeue)
            if got is None:
                return
            self.dropped += 1
            log.debug("camera %s: dropped a stale frame (buffer %d)", self.device, got[0])
            self._do("queueing a buffer", dev.queue, got[0])

    def grab(self, timeout_s: float) -> np.ndarray:
        dev = self._live()
        deadline = time.monotonic() + timeout_s
        while (got := self._do("taking a frame", dev.dequeue)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or not self._do("waiting for a frame", dev.wait, left):
                cause = ("is the trigger wired to the camera's trigger input and pulsed?"
                         if self.trigger == "external" else "is the sensor streaming?")
                raise CameraTimeout(f"camera {self.device}: no frame within {timeout_s:.2f} s "
                                    f"({cause})")
        index, used, flags = got
        try:
            what = f"camera {self.device}, {self.pixel_format.fourcc} frame"
            if flags & BUF_FLAG_ERROR:
                raise FrameError(f"{what}: the driver marked it corrupt (CSI or USB errors; "
                                 "check the cable)")
            f = self.format
            if used < frame_bytes(f):
                raise FrameError(f"{what}: {used} bytes delivered, a whole frame is "
                                 f"{frame_bytes(f)}")
            return unpack(self._maps[index], self.pixel_format, f.width, f.height,
                          f.bytesperline, self.alignment, what)
        finally:
            self._do("queueing a buffer", dev.queue, index)

    def close(self) -> None:
        dev, self._dev = getattr(self, "_dev", None), None
        if dev is None:
            return
        try:
            if self._streaming:
                dev.stream(False)
        except OSError as exc:
            log.warning("camera %s: stopping the stream: %s", self.device, exc)
        self._streaming, self._maps = False, []
        try:
            dev.close()  # unmaps the buffers, closes the node
        except OSError as exc:
            log.warning("camera %s: closing: %s", self.device, exc)
