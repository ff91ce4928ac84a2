"""The V4L2 ioctl layer under :mod:`edge.hardware.v4l2`: the constants, the struct layouts and
the dozen ioctls a streaming RAW capture needs, on one open node (:class:`V4L2Device`), and
:func:`probe`, which says, without changing anything, why a device node cannot be used as the
head's camera.

The struct layouts are those of 64-bit Linux, checked in the tests against the kernel's ioctl
numbers (which encode each struct's size) and field offsets.

**Binding: ctypes and fcntl.ioctl, no PyPI package.** linuxpy (the maintained successor of
v4l2py) would fit technically (pure Python, Python >= 3.10, every ioctl needed), but it is
GPL-3.0-or-later, as are v4l2py and v4l2-python3 (GPL-2, constants only); pyv4l2 is a C
extension. This project is proprietary and ships in the head, so the dozen ioctls are written
here. The camera takes any object with :class:`V4L2Device`'s methods, which is how the tests
drive it with a fake driver.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import errno
import fcntl
import glob
import grp
import mmap
import os
import re
import select
import stat
from collections.abc import Callable
from dataclasses import dataclass

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
