"""The head's real camera: a RAW Bayer sensor behind V4L2 (a Jetson CSI camera through the tegra
VI driver, or a USB3 machine-vision camera).

:class:`V4L2Camera` negotiates the head file's size, bit depth and Bayer order, sets exposure,
gain and the trigger mode, streams through mmap buffers and unpacks each frame with
:mod:`edge.hardware.bayer_unpack`. :func:`probe` says, without changing anything, why a device
node cannot be used. Every failure is a :class:`CameraError` naming the device.

Choices, and why:

* **Binding: ctypes and fcntl.ioctl, no PyPI package.** linuxpy (the maintained successor of
  v4l2py) would fit technically (pure Python, Python >= 3.10, every ioctl needed), but it is
  GPL-3.0-or-later, as are v4l2py and v4l2-python3 (GPL-2, constants only); pyv4l2 is a C
  extension. This project is proprietary and ships in the head, so the dozen ioctls are written
  here (struct layouts of 64-bit Linux, checked in the tests against the kernel's ioctl numbers).
  The ioctl layer is :class:`V4L2Device`; the camera takes any object with its methods, which is
  how the tests drive it with a fake driver.
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

import contextlib
import ctypes as C
import errno
import fcntl
import glob
import grp
import logging
import mmap
import os
import re
import select
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge.hardware.bayer_unpack import ALIGNMENTS, EIGHT_BIT, FORMATS, PATTERNS, formats_for, unpack
from edge.hardware.camera import Camera, CameraError, CameraTimeout, FrameError

log = logging.getLogger(__name__)

CAPTURE, MMAP = 1, 1  # V4L2_BUF_TYPE_VIDEO_CAPTURE, V4L2_MEMORY_MMAP
CAP_CAPTURE, CAP_STREAMING, CAP_DEVICE_CAPS = 0x1, 0x04000000, 0x80000000
BUF_FLAG_ERROR = 0x40
CTRL_NEXT, CTRL_DISABLED, CTRL_CLASS_TYPE = 0x80000000, 0x1, 6
CID_EXPOSURE_AUTO, CID_EXPOSURE_ABSOLUTE, EXPOSURE_MANUAL = 0x009A0901, 0x009A0902, 1
CID_EXPOSURE, CID_AUTOGAIN, CID_GAIN = 0x00980911, 0x00980912, 0x00980913
CID_ANALOGUE_GAIN = 0x009E0903
TEGRA_CIDS = range(0x009A2000, 0x009A3000)  # NVIDIA's camera-class controls (ids vary by L4T)

u32, u8 = C.c_uint32, C.c_uint8


class _Cap(C.Structure):
    _fields_ = [("driver", C.c_char * 16), ("card", C.c_char * 32), ("bus_info", C.c_char * 32),
                ("version", u32), ("capabilities", u32), ("device_caps", u32), ("_r", u32 * 3)]


class _FmtDesc(C.Structure):
    _fields_ = [("index", u32), ("type", u32), ("flags", u32), ("description", C.c_char * 32),
                ("pixelformat", u32), ("mbus_code", u32), ("_r", u32 * 3)]


class _Pix(C.Structure):
    _fields_ = [(n, u32) for n in ("width", "height", "pixelformat", "field", "bytesperline",
                                   "sizeimage", "colorspace", "priv", "flags", "enc",
                                   "quantization", "xfer_func")]


class _FmtUnion(C.Union):  # v4l2_window in the kernel's union holds pointers: 8-byte aligned
    _fields_ = [("pix", _Pix), ("raw", u8 * 200), ("_align", C.c_void_p)]


class _Format(C.Structure):
    _fields_ = [("type", u32), ("fmt", _FmtUnion)]


class _FrmSize(C.Structure):  # discrete: w, h; stepwise: min_w, max_w, step_w, min_h, max_h, step_h
    _fields_ = [("index", u32), ("pixel_format", u32), ("type", u32), ("v", u32 * 6),
                ("_r", u32 * 2)]


class _ReqBufs(C.Structure):
    _fields_ = [("count", u32), ("type", u32), ("memory", u32), ("capabilities", u32),
                ("flags", u8), ("_r", u8 * 3)]


class _Buffer(C.Structure):  # timeval, timecode opaque; of the 8-byte union m, the mmap offset
    _fields_ = [("index", u32), ("type", u32), ("bytesused", u32), ("flags", u32),
                ("field", u32), ("timestamp", C.c_long * 2), ("timecode", u8 * 16),
                ("sequence", u32), ("memory", u32), ("offset", u32), ("_m", u32),
                ("length", u32), ("_r2", u32), ("request_fd", C.c_int32)]


class _QueryExtCtrl(C.Structure):
    _fields_ = [("id", u32), ("type", u32), ("name", C.c_char * 32), ("minimum", C.c_int64),
                ("maximum", C.c_int64), ("step", C.c_uint64), ("default", C.c_int64),
                ("flags", u32), ("elem_size", u32), ("elems", u32), ("nr_of_dims", u32),
                ("dims", u32 * 4), ("_r", u32 * 32)]


class _ExtCtrl(C.Structure):
    _pack_ = 1  # the kernel declares it packed
    _fields_ = [("id", u32), ("size", u32), ("_r", u32), ("value64", C.c_int64)]


class _ExtCtrls(C.Structure):
    _fields_ = [("which", u32), ("count", u32), ("error_idx", u32), ("request_fd", C.c_int32),
                ("_r", u32), ("controls", C.POINTER(_ExtCtrl))]


def _ioc(direction: int, nr: int, struct) -> int:
    return direction << 30 | C.sizeof(struct) << 16 | ord("V") << 8 | nr


RW, W, R = 3, 1, 2
QUERYCAP, ENUM_FMT, S_FMT = _ioc(R, 0, _Cap), _ioc(RW, 2, _FmtDesc), _ioc(RW, 5, _Format)
REQBUFS, QUERYBUF = _ioc(RW, 8, _ReqBufs), _ioc(RW, 9, _Buffer)
QBUF, DQBUF = _ioc(RW, 15, _Buffer), _ioc(RW, 17, _Buffer)
STREAMON, STREAMOFF = _ioc(W, 18, C.c_int), _ioc(W, 19, C.c_int)
S_EXT_CTRLS, ENUM_FRAMESIZES = _ioc(RW, 72, _ExtCtrls), _ioc(RW, 74, _FrmSize)
QUERY_EXT_CTRL = _ioc(RW, 103, _QueryExtCtrl)


def fourcc(text: str) -> int:
    return int.from_bytes(text.encode("latin-1"), "little")


def fourcc_text(code: int) -> str:
    return code.to_bytes(4, "little").decode("latin-1")


def control_name(name: str) -> str:
    """A control's name as v4l2-ctl writes it: 'Exposure, Absolute' -> 'exposure_absolute'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass(frozen=True)
class Caps:
    driver: str
    card: str
    capabilities: int  # the node's own (device_caps) where the driver reports them


@dataclass(frozen=True)
class PixFormat:
    width: int
    height: int
    fourcc: str
    bytesperline: int
    sizeimage: int


@dataclass(frozen=True)
class Control:
    id: int
    name: str  # v4l2-ctl's spelling
    minimum: int
    maximum: int
    default: int


class V4L2Device:
    """The ioctls the camera needs, on one open V4L2 node (non-blocking, so DQBUF never hangs)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._maps: list[mmap.mmap] = []

    def _ioctl(self, request: int, arg):
        fcntl.ioctl(self.fd, request, arg)  # fills ``arg`` in place
        return arg

    def caps(self) -> Caps:
        c = self._ioctl(QUERYCAP, _Cap())
        own = c.device_caps if c.capabilities & CAP_DEVICE_CAPS else c.capabilities
        return Caps(c.driver.decode(errors="replace"), c.card.decode(errors="replace"), own)

    def _each(self, request: int, make: Callable[[object], object]):
        """The answers of an enumeration ioctl, ``make(previous answer or None)`` after
        ``make``, until the driver says there are no more (EINVAL)."""
        arg = make(None)
        while True:
            try:
                self._ioctl(request, arg)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOTTY):
                    return
                raise
            yield arg
            arg = make(arg)

    def formats(self) -> list[tuple[str, str]]:
        return [(fourcc_text(d.pixelformat), d.description.decode(errors="replace"))
                for d in self._each(ENUM_FMT, lambda d: _FmtDesc(
                    index=d.index + 1 if d else 0, type=CAPTURE))]

    def frame_sizes(self, code: str) -> list[str]:
        return [f"{v[0]} x {v[1]}" if s.type == 1 else
                f"{v[0]}-{v[1]} x {v[3]}-{v[4]} (steps {v[2]}, {v[5]})"
                for s in self._each(ENUM_FRAMESIZES, lambda s: _FrmSize(
                    index=s.index + 1 if s else 0, pixel_format=fourcc(code)))
                for v in [s.v]]

    def set_format(self, width: int, height: int, code: str) -> PixFormat:
        f = _Format(type=CAPTURE)
        f.fmt.pix.width, f.fmt.pix.height, f.fmt.pix.pixelformat = width, height, fourcc(code)
        p = self._ioctl(S_FMT, f).fmt.pix
        return PixFormat(p.width, p.height, fourcc_text(p.pixelformat), p.bytesperline,
                         p.sizeimage)

    def controls(self) -> list[Control]:
        return [Control(q.id, control_name(q.name.decode(errors="replace")), q.minimum,
                        q.maximum, q.default)
                for q in self._each(QUERY_EXT_CTRL, lambda q: _QueryExtCtrl(
                    id=(q.id if q else 0) | CTRL_NEXT))
                if q.type != CTRL_CLASS_TYPE and not q.flags & CTRL_DISABLED]

    def set_control(self, ctrl_id: int, value: int) -> None:
        # the extended ioctl, because the tegra controls are 64-bit and S_CTRL refuses those
        one = _ExtCtrl(id=ctrl_id, value64=value)
        self._ioctl(S_EXT_CTRLS, _ExtCtrls(count=1, controls=C.pointer(one)))

    def request_buffers(self, count: int) -> int:
        return self._ioctl(REQBUFS, _ReqBufs(count=count, type=CAPTURE, memory=MMAP)).count

    def map_buffer(self, index: int) -> mmap.mmap:
        b = self._ioctl(QUERYBUF, _Buffer(index=index, type=CAPTURE, memory=MMAP))
        self._maps.append(mmap.mmap(self.fd, b.length, offset=b.offset))
        return self._maps[-1]

    def queue(self, index: int) -> None:
        self._ioctl(QBUF, _Buffer(index=index, type=CAPTURE, memory=MMAP))

    def dequeue(self) -> tuple[int, int, int] | None:
        """(index, bytesused, flags) of a filled buffer, or None when none is ready."""
        try:
            b = self._ioctl(DQBUF, _Buffer(type=CAPTURE, memory=MMAP))
        except BlockingIOError:
            return None
        return b.index, b.bytesused, b.flags

    def wait(self, timeout_s: float) -> bool:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        events = poller.poll(max(0, round(timeout_s * 1000)))
        if events and events[0][1] & (select.POLLERR | select.POLLHUP):
            raise OSError(errno.EIO, "the driver stopped the stream")
        return bool(events)

    def stream(self, on: bool) -> None:
        self._ioctl(STREAMON if on else STREAMOFF, C.c_int(CAPTURE))

    def close(self) -> None:
        for m in self._maps:
            # a view may still be alive (in an exception's traceback): then the mapping goes
            # with it
            with contextlib.suppress(BufferError):
                m.close()
        self._maps = []
        os.close(self.fd)


def open_problem(device: str, exc: OSError) -> str:
    """One line saying why ``device`` could not be opened."""
    if exc.errno == errno.ENOENT:
        others = sorted(glob.glob("/dev/video*"))
        seen = f"present: {', '.join(others)}" if others else "no /dev/video* at all"
        return (f"camera {device}: no such device ({seen}); is the camera connected and its "
                "driver loaded?")
    if exc.errno in (errno.EACCES, errno.EPERM):
        try:
            group = grp.getgrgid(os.stat(device).st_gid).gr_name
        except (OSError, KeyError):
            group = "video"
        return (f"camera {device}: permission denied; add the user to the '{group}' group "
                f"(sudo usermod -aG {group} $USER, then log in again)")
    if exc.errno == errno.EBUSY:
        return (f"camera {device}: busy: another process holds the camera "
                f"(find it with 'fuser {device}')")
    if exc.errno in (errno.ENODEV, errno.ENXIO):
        return f"camera {device}: the device node has no camera behind it (unplugged?)"
    return f"camera {device}: cannot open it: {exc.strerror or exc}"


def probe(device: str, opener: Callable[[str], V4L2Device] = V4L2Device) -> str | None:
    """None when ``device`` can be used as the head's camera, else one line saying why not.

    Changes nothing: only QUERYCAP and a REQBUFS of 0 buffers, which frees nothing when this
    process holds none and answers EBUSY when another process holds the camera."""
    try:
        mode = os.stat(device).st_mode
    except OSError as exc:
        return open_problem(device, exc)
    if not stat.S_ISCHR(mode):
        kind = "directory" if stat.S_ISDIR(mode) else "regular file" if stat.S_ISREG(mode) \
            else "special file"
        return f"camera {device}: a {kind}, not a character device; expected a V4L2 video node"
    try:
        dev = opener(device)
    except OSError as exc:
        return open_problem(device, exc)
    try:
        try:
            caps = dev.caps()
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                return f"camera {device}: a character device, but not a V4L2 device"
            raise
        if caps.capabilities & (CAP_CAPTURE | CAP_STREAMING) != CAP_CAPTURE | CAP_STREAMING:
            return (f"camera {device}: V4L2 device '{caps.card}' (driver {caps.driver}) is not "
                    "a streaming video capture node (a metadata or output node?)")
        dev.request_buffers(0)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return f"camera {device}: V4L2 device without mmap streaming buffers"
        return open_problem(device, exc)
    finally:
        dev.close()
    return None


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
