"""The V4L2 camera: unpacking every RAW Bayer format, format negotiation, controls and streaming
against a fake driver, the preflight probe, and a real device where one is present."""

import ctypes
import errno
import glob
import grp
import logging
import os
import re
import time
from collections import deque

import numpy as np
import pytest

from edge.hardware import v4l2_device
from edge.hardware.bayer_unpack import EIGHT_BIT, FORMATS, formats_for, unpack
from edge.hardware.camera import CameraError, CameraTimeout, FrameError
from edge.hardware.v4l2 import V4L2Camera, negotiate
from edge.hardware.v4l2_device import Caps, Control, PixFormat, probe

DEV = "/dev/video7"
W, H = 8, 4

# -- a plain per-pixel reference of the V4L2 layouts, independent of the unpacker ----------------


def ref_bytes(values: np.ndarray, fourcc: str, bytesperline: int, alignment: str = "lsb",
              pad: int = 0xAB) -> bytes:
    """The bytes a driver would deliver for ``values``; padding and unused bits are ``pad``."""
    fmt = FORMATS[fourcc]
    bits = fmt.bits
    h, w = values.shape
    out = bytearray([pad]) * (bytesperline * h)
    for y in range(h):
        row = y * bytesperline
        for x in range(w):
            v = int(values[y, x])
            if not fmt.packed:
                shift = 16 - bits
                word = v if alignment == "lsb" else (v << shift) | (v >> (bits - shift))
                out[row + 2 * x], out[row + 2 * x + 1] = word & 0xFF, word >> 8
            elif bits == 10:
                g, i = divmod(x, 4)
                out[row + 5 * g + i] = v >> 2
                lo = row + 5 * g + 4
                out[lo] = (out[lo] & ~(3 << 2 * i) & 0xFF) | (v & 3) << 2 * i
            else:
                g, i = divmod(x, 2)
                out[row + 3 * g + i] = v >> 4
                lo = row + 3 * g + 2
                out[lo] = (out[lo] & ~(15 << 4 * i) & 0xFF) | (v & 15) << 4 * i
    return bytes(out)


def pixels(bits: int, shape=(H, W), seed=0) -> np.ndarray:
    v = np.random.default_rng(seed).integers(0, 1 << bits, shape, dtype=np.uint16)
    v.flat[:2] = (0, (1 << bits) - 1)  # both ends of the range
    return v


ALL = sorted(FORMATS)


def test_the_table_has_every_order_at_10_and_12_bit_both_layouts():
    assert len(FORMATS) == 16
    assert [f.fourcc for f in formats_for("GRBG", 12)] == ["BA12", "pgCC"]
    assert [f.fourcc for f in formats_for("BGGR", 10)] == ["BG10", "pBAA"]
    assert {f.pattern for f in FORMATS.values()} == {"RGGB", "GRBG", "GBRG", "BGGR"}
    assert set(EIGHT_BIT.values()) == {"RGGB", "GRBG", "GBRG", "BGGR"}  # known, to refuse


@pytest.mark.parametrize("fourcc", ALL)
@pytest.mark.parametrize("width", [W, 6])  # 6 px: a partial last group in RAW10-packed
def test_round_trip_with_row_padding(fourcc, width):
    fmt = FORMATS[fourcc]
    values = pixels(fmt.bits, (H, width), seed=width)
    bpl = fmt.row_bytes(width) + 6  # padded rows, as drivers deliver
    data = ref_bytes(values, fourcc, bpl)
    out = unpack(data, fmt, width, H, bpl)
    assert out.dtype == np.uint16 and out.shape == (H, width)
    np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize("fourcc", [f for f in ALL if not FORMATS[f].packed])
def test_msb_aligned_words_round_trip(fourcc):
    fmt = FORMATS[fourcc]
    values = pixels(fmt.bits)
    data = ref_bytes(values, fourcc, 2 * W + 4, alignment="msb")
    np.testing.assert_array_equal(unpack(data, fmt, W, H, 2 * W + 4, "msb"), values)


def test_packed_bytes_follow_the_v4l2_layout():
    # RAW10: the 8 high bits of 4 pixels, then their 2 low bits, pixel 0 in bits 1-0
    v10 = np.array([[0x3FF, 0x000, 0x155, 0x2AA]], np.uint16)
    assert ref_bytes(v10, "pRAA", 5) == bytes([0xFF, 0x00, 0x55, 0xAA, 0b10_01_00_11])
    out = unpack(bytes([0xFF, 0x00, 0x55, 0xAA, 0x93]), FORMATS["pgAA"], 4, 1, 5)
    assert out.tolist() == [[1023, 0, 341, 682]]
    # RAW12: the 8 high bits of 2 pixels, then pixel 0's 4 low bits in bits 3-0
    assert unpack(bytes([0xAB, 0x12, 0x3C]), FORMATS["pRCC"], 2, 1, 3).tolist() == [[0xABC,
                                                                                      0x123]]
    # 16-bit words: little-endian, LSB-aligned
    assert unpack(bytes([0xBC, 0x0A]), FORMATS["BG12"], 1, 1, 2).tolist() == [[0xABC]]


def test_a_jetson_vi_dump_reads_msb_aligned_and_is_refused_as_lsb():
    # RAW12 bytes as a Xavier's VI writes them (T_R16): D11..D0 then D11..D8 again
    dump = bytes.fromhex("FFF56CC5EFF27CCF")
    out = unpack(dump, FORMATS["RG12"], 4, 1, 8, "msb")
    assert out.tolist() == [[0xF5F, 0xC56, 0xF2E, 0xCF7]]
    with pytest.raises(FrameError, match="values up to 62975 in a 12-bit frame.*'msb'"):
        unpack(dump, FORMATS["RG12"], 4, 1, 8, "lsb", what="camera X")


def test_lsb_data_read_as_msb_is_refused():
    data = ref_bytes(pixels(10), "RG10", 2 * W)
    with pytest.raises(FrameError, match="not a copy of the top bits.*'lsb'"):
        unpack(data, FORMATS["RG10"], W, H, 2 * W, "msb")


def test_values_beyond_the_bit_depth_are_refused():
    values = pixels(10)
    values[2, 3] = 1024
    with pytest.raises(FrameError, match=r"frame 7: values up to 1024 in a 10-bit frame \(max "
                                         r"1023\)"):
        unpack(ref_bytes(values, "BA10", 2 * W), FORMATS["BA10"], W, H, 2 * W, what="frame 7")


def test_short_buffers_and_strides_are_refused():
    fmt = FORMATS["pRCC"]
    with pytest.raises(FrameError, match="rows of 10 bytes cannot hold 8 px"):
        unpack(bytes(64), fmt, W, H, 10)
    with pytest.raises(FrameError, match="40 bytes, but a 8 x 4 px frame"):
        unpack(bytes(40), fmt, W, H, 12)


def test_a_full_size_frame_unpacks_in_milliseconds():
    h, w = 3120, 3504
    values = np.random.default_rng(1).integers(0, 4096, (h, w), dtype=np.uint16)
    data = values.astype("<u2").tobytes()
    unpack(data, FORMATS["BA12"], w, h, 2 * w)
    t0 = time.perf_counter()
    out = unpack(data, FORMATS["BA12"], w, h, 2 * w)
    took = time.perf_counter() - t0
    np.testing.assert_array_equal(out, values)
    assert took < 0.1, f"{took * 1000:.0f} ms"


# -- a fake driver with V4L2Device's methods -----------------------------------------------------

TEGRA_EXPOSURE, TEGRA_GAIN = 0x009A200A, 0x009A2009
TEGRA_CONTROLS = [Control(TEGRA_GAIN, "gain", 16, 170, 16),
                  Control(TEGRA_EXPOSURE, "exposure", 13, 683709, 2495),
                  Control(0x009A2064, "bypass_mode", 0, 1, 0)]
MV_CONTROLS = [Control(v4l2_device.CID_EXPOSURE_AUTO, "auto_exposure", 0, 3, 3),
               Control(v4l2_device.CID_EXPOSURE_ABSOLUTE, "exposure_absolute", 1, 10000, 100),
               Control(v4l2_device.CID_GAIN, "gain", 0, 480, 0),
               Control(v4l2_device.CID_EXPOSURE, "exposure", 0, 5000, 100),  # lines: never used
               Control(0x0098F001, "trigger_mode", 0, 1, 0)]
CAPTURE = v4l2_device.CAP_CAPTURE | v4l2_device.CAP_STREAMING


class FakeDriver:
    """Answers like a V4L2 driver: offers ``formats``, pads rows to 64 bytes, holds buffers in
    the driver's queue until :meth:`expose` fills one (the sensor took a frame)."""

    def __init__(self, formats=(("BA12", "12-bit Bayer GRBG/BGGR"),), driver="uvcvideo",
                 controls=MV_CONTROLS, caps=CAPTURE, answer=None, fail=None):
        self.offered, self.driver, self.ctrls, self.cap = list(formats), driver, controls, caps
        self.answer, self.fail = answer, fail or {}
        self.values: dict[int, int] = {}
        self.queued: deque[int] = deque()
        self.done: deque[tuple[int, int, int]] = deque()
        self.streaming, self.closed, self.fmt = False, 0, None

    def _check(self, call):
        if call in self.fail:
            raise OSError(self.fail[call], os.strerror(self.fail[call]))

    def caps(self):
        self._check("caps")
        return Caps(self.driver, "Fake Cam", self.cap)

    def formats(self):
        return list(self.offered)

    def frame_sizes(self, code):
        return ["3504 x 3120", "1752 x 1560"]

    def set_format(self, width, height, code):
        self._check("set_format")
        bpl = -(-FORMATS[code].row_bytes(width) // 64) * 64
        self.fmt = PixFormat(width, height, code, bpl, bpl * height)
        if self.answer:
            self.fmt = self.answer(self.fmt)
        return self.fmt

    def controls(self):
        return list(self.ctrls)

    def set_control(self, ctrl_id, value):
        self.values[ctrl_id] = value

    def request_buffers(self, count):
        self._check("request_buffers")
        self.buffers = [bytearray(self.fmt.sizeimage) for _ in range(count)] if count else []
        return count

    def map_buffer(self, index):
        return self.buffers[index]

    def queue(self, index):
        assert index not in self.queued
        self.queued.append(index)

    def dequeue(self):
        return self.done.popleft() if self.done else None

    def wait(self, timeout_s):
        if not self.done:
            time.sleep(timeout_s)
        return bool(self.done)

    def stream(self, on):
        self.streaming = on

    def close(self):
        self.closed += 1

    def expose(self, data: bytes, flags: int = 0, used: int | None = None):
        index = self.queued.popleft()
        self.buffers[index][:len(data)] = data
        self.done.append((index, len(data) if used is None else used, flags))


def camera(fake, **kw):
    args = dict(device=DEV, width=W, height=H, bit_depth=12, bayer_pattern="GRBG")
    args.update(kw)
    return V4L2Camera(**args, opener=lambda path: fake)


# -- format negotiation --------------------------------------------------------------------------


def test_unpacked_is_preferred_and_an_explicit_fourcc_wins():
    fake = FakeDriver([("pgCC", "12-bit packed"), ("BA12", "12-bit")])
    assert negotiate(fake, DEV, W, H, 12, "GRBG")[0] == "BA12"
    code, got = negotiate(fake, DEV, W, H, 12, "GRBG", "pgCC")
    assert code == "pgCC" and got.bytesperline == 64
    assert negotiate(FakeDriver([("pgCC", "")]), DEV, W, H, 12, "GRBG")[0] == "pgCC"


def test_a_size_changed_by_the_driver_is_refused_with_what_it_offers():
    fake = FakeDriver(answer=lambda f: PixFormat(1920, 1080, f.fourcc, 3840, 3840 * 1080))
    with pytest.raises(CameraError) as e:
        negotiate(fake, DEV, 3504, 3120, 12, "GRBG")
    msg = str(e.value)
    assert DEV in msg and "asked for 3504 x 3120 px BA12" in msg
    assert "answered 1920 x 1080 px BA12" in msg and "3504 x 3120, 1752 x 1560" in msg


def test_a_short_stride_is_refused():
    fake = FakeDriver(answer=lambda f: PixFormat(f.width, f.height, f.fourcc, 8, 8 * f.height))
    with pytest.raises(CameraError, match="8-byte rows.*a 8 px row needs 16"):
        negotiate(fake, DEV, W, H, 12, "GRBG")


def test_a_camera_with_8_bit_bayer_only_is_refused():
    fake = FakeDriver([("GRBG", "8-bit Bayer GRGR/BGBG"), ("YUYV", "YUYV 4:2:2")])
    with pytest.raises(CameraError) as e:
        negotiate(fake, DEV, W, H, 12, "GRBG")
    msg = str(e.value)
    assert "wanted 12-bit Bayer GRBG (BA12 or pgCC)" in msg
    assert "GRBG (8-bit Bayer GRGR/BGBG), YUYV (YUYV 4:2:2)" in msg and "8-bit Bayer only" in msg


@pytest.mark.parametrize("bits, fourcc, match", [
    (8, "auto", "8-bit frames; this driver takes 10- or 12-bit"),
    (12, "GRBG", "GRBG is 8-bit Bayer"),
    (12, "RG12", "RG12 is 12-bit Bayer RGGB in 16-bit words .*, but the head file says 12-bit "
                 "GRBG"),
    (12, "XY12", "unknown pixel format 'XY12'"),
])
def test_head_file_mistakes_are_named(bits, fourcc, match):
    with pytest.raises(CameraError, match=match):
        negotiate(FakeDriver(), DEV, W, H, bits, "GRBG", fourcc)


# -- controls ------------------------------------------------------------------------------------


def test_machine_vision_camera_controls():
    fake = FakeDriver()
    cam = camera(fake)
    assert fake.values == {v4l2_device.CID_EXPOSURE_AUTO: 1, 0x0098F001: 1}  # manual, external
    cam.configure(20.0)
    assert fake.values[v4l2_device.CID_EXPOSURE_ABSOLUTE] == 200  # 100 us units
    assert fake.values[v4l2_device.CID_GAIN] == 0 and v4l2_device.CID_EXPOSURE not in fake.values
    with pytest.raises(CameraError, match="gain 2 asked, but the units of its gain control"):
        cam.configure(20.0, gain=2.0)
    with pytest.raises(CameraError, match=f"{DEV}: exposure 2000 ms is outside the sensor's "
                                          "0.1-1000 ms"):
        cam.configure(2000.0)


def test_tegra_controls_are_microseconds_and_its_vi_is_msb_aligned():
    fake = FakeDriver(driver="tegra-video", controls=TEGRA_CONTROLS)
    cam = camera(fake, trigger="free-run", gain_scale=16)
    assert cam.alignment == "msb" and fake.values == {0x009A2064: 0}  # bypass_mode off
    cam.configure(20.0, gain=2.0)
    assert fake.values[TEGRA_EXPOSURE] == 20000 and fake.values[TEGRA_GAIN] == 32


def test_external_trigger_without_a_trigger_control_is_refused_at_open():
    fake = FakeDriver(controls=TEGRA_CONTROLS)
    with pytest.raises(CameraError, match="no trigger_mode control.*its controls: gain, "
                                          "exposure, bypass_mode"):
        camera(fake)
    assert fake.closed == 1


# -- streaming -----------------------------------------------------------------------------------


@pytest.fixture
def streaming():
    fake = FakeDriver()
    cam = camera(fake)
    yield fake, cam
    cam.close()


def frame_bytes(fake, values):
    return ref_bytes(values, fake.fmt.fourcc, fake.fmt.bytesperline)


def test_a_triggered_frame_comes_out_unpacked(streaming):
    fake, cam = streaming
    assert fake.streaming and len(fake.queued) == 4 and cam.shape == (H, W)
    values = pixels(12)
    cam.arm()
    fake.expose(frame_bytes(fake, values))
    np.testing.assert_array_equal(cam.grab(1.0), values)
    assert len(fake.queued) == 4  # the buffer went back to the driver


def test_no_frame_is_a_timeout_naming_the_device(streaming):
    _, cam = streaming
    cam.arm()
    with pytest.raises(CameraTimeout, match=rf"camera {DEV}: no frame within 0.05 s \(is the "
                                            "trigger wired"):
        cam.grab(0.05)


def test_arm_drops_a_stale_frame(streaming):
    fake, cam = streaming
    fake.expose(frame_bytes(fake, pixels(12, seed=1)))  # a stray trigger before arming
    cam.arm()
    assert cam.dropped == 1 and len(fake.queued) == 4
    fresh = pixels(12, seed=2)
    fake.expose(frame_bytes(fake, fresh))
    np.testing.assert_array_equal(cam.grab(1.0), fresh)


@pytest.mark.parametrize("flags, used, match", [
    (v4l2_device.BUF_FLAG_ERROR, None, "the driver marked it corrupt"),
    (0, 100, "100 bytes delivered, a whole frame is 208"),
])
def test_bad_buffers_are_frame_errors(streaming, flags, used, match):
    fake, cam = streaming
    fake.expose(frame_bytes(fake, pixels(12)), flags, used)
    with pytest.raises(FrameError, match=match):
        cam.grab(1.0)
    assert len(fake.queued) == 4


def test_close_twice_is_safe(streaming):
    fake, cam = streaming
    cam.close()
    cam.close()
    assert fake.closed == 1 and not fake.streaming
    with pytest.raises(CameraError, match="is closed"):
        cam.grab(0.01)


@pytest.mark.parametrize("err, match", [
    (errno.ENOENT, f"camera {DEV}: no such device"),
    (errno.EACCES, "permission denied; add the user to the 'video' group"),
    (errno.EBUSY, "busy: another process holds the camera"),
])
def test_open_errors_name_the_device_and_the_cause(err, match):
    def opener(path):
        raise OSError(err, os.strerror(err), path)

    with pytest.raises(CameraError, match=match):
        V4L2Camera(DEV, W, H, 12, "GRBG", opener=opener)


def test_busy_while_setting_the_format():
    fake = FakeDriver(fail={"set_format": errno.EBUSY})
    with pytest.raises(CameraError, match=f"{DEV}: busy.*setting the format"):
        camera(fake)
    assert fake.closed == 1


# -- probe ---------------------------------------------------------------------------------------


def test_probe_missing_path():
    assert "no such device" in probe("/dev/video-none")


def test_probe_regular_file(tmp_path):
    f = tmp_path / "video0"
    f.write_bytes(b"")
    assert probe(str(f)) == f"camera {f}: a regular file, not a character device; expected a " \
                            "V4L2 video node"


def test_probe_a_char_device_that_is_not_v4l2():
    assert probe("/dev/null") == "camera /dev/null: a character device, but not a V4L2 device"


@pytest.mark.parametrize("fake, match", [
    (FakeDriver(caps=0x00800000), "'Fake Cam' \\(driver uvcvideo\\) is not a streaming video "
                                  "capture node"),
    (FakeDriver(fail={"request_buffers": errno.EBUSY}), "busy: another process"),
    (FakeDriver(), None),
])
def test_probe_through_a_fake_driver(fake, match):
    result = probe("/dev/null", opener=lambda path: fake)
    if match is None:
        assert result is None
    else:
        assert re.search(match, result), result
    assert fake.closed == 1


def test_probe_permission_names_the_group():
    def opener(path):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    group = grp.getgrgid(os.stat("/dev/null").st_gid).gr_name
    assert probe("/dev/null", opener=opener) == (
        f"camera /dev/null: permission denied; add the user to the '{group}' group "
        f"(sudo usermod -aG {group} $USER, then log in again)")


# -- the ioctl layer -----------------------------------------------------------------------------


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="struct layouts of 64-bit Linux")
def test_ioctl_numbers_match_the_kernel_headers():
    # values of <linux/videodev2.h> on 64-bit Linux: they encode each struct's size
    assert (v4l2_device.QUERYCAP, v4l2_device.ENUM_FMT, v4l2_device.S_FMT) == (
        0x80685600, 0xC0405602, 0xC0D05605)
    assert (v4l2_device.REQBUFS, v4l2_device.QUERYBUF, v4l2_device.QBUF, v4l2_device.DQBUF) == (
        0xC0145608, 0xC0585609, 0xC058560F, 0xC0585611)
    assert (v4l2_device.STREAMON, v4l2_device.STREAMOFF) == (0x40045612, 0x40045613)
    assert (v4l2_device.S_EXT_CTRLS, v4l2_device.ENUM_FRAMESIZES, v4l2_device.QUERY_EXT_CTRL) == (
        0xC0205648, 0xC02C564A, 0xC0E85667)
    assert ctypes.sizeof(v4l2_device._ExtCtrl) == 20
    assert v4l2_device._Buffer.offset.offset == 64 and v4l2_device._Buffer.length.offset == 72
    assert v4l2_device.fourcc("pRAA") == 0x41415270
    assert v4l2_device.fourcc_text(0x30314142) == "BA10"
    assert v4l2_device.control_name("Exposure Time, Absolute") == "exposure_time_absolute"


class IoctlDriver:
    """A tegra-like driver at the ioctl level: it reads and fills the ctypes structs as the
    kernel would, and serves its buffers from a plain file mapped like the device node."""

    PAGE = 4096

    def __init__(self, node):
        self.node, self.queued, self.done, self.set = node, deque(), deque(), {}
        self.ctrls = [(TEGRA_GAIN, b"Gain", 16, 170), (TEGRA_EXPOSURE, b"Exposure", 13, 683709),
                      (0x0098F001, b"Trigger Mode", 0, 1)]

    def __call__(self, fd, request, arg):
        if request == v4l2_device.QUERYCAP:
            arg.driver, arg.card = b"tegra-video", b"vi-output, imx477 9-001a"
            arg.capabilities = v4l2_device.CAP_DEVICE_CAPS | CAPTURE | 0x00200000
            arg.device_caps = CAPTURE
        elif request == v4l2_device.ENUM_FMT:
            offered = ["RG10", "BA12"]
            if arg.index >= len(offered):
                raise OSError(errno.EINVAL, "Invalid argument")
            arg.pixelformat, arg.description = v4l2_device.fourcc(offered[arg.index]), b"Bayer"
        elif request == v4l2_device.S_FMT:
            p = arg.fmt.pix
            p.bytesperline = -(-2 * p.width // 64) * 64
            p.sizeimage = p.bytesperline * p.height
            self.size = p.sizeimage
        elif request == v4l2_device.QUERY_EXT_CTRL:
            after = sorted(c for c in self.ctrls if c[0] > arg.id & ~v4l2_device.CTRL_NEXT)
            if not after:
                raise OSError(errno.EINVAL, "Invalid argument")
            arg.id, arg.name, arg.minimum, arg.maximum = after[0]
            arg.type = 5  # INTEGER64
        elif request == v4l2_device.ENUM_FRAMESIZES:
            if arg.index > 0:
                raise OSError(errno.EINVAL, "Invalid argument")
            arg.type, arg.v[0], arg.v[1] = 1, 3504, 3120  # discrete
        elif request == v4l2_device.S_EXT_CTRLS:
            one = arg.controls[0]
            self.set[one.id] = one.value64
        elif request == v4l2_device.REQBUFS:
            self.count = arg.count
            self.node.truncate(max(1, arg.count) * self.PAGE)
        elif request == v4l2_device.QUERYBUF:
            arg.offset, arg.length = arg.index * self.PAGE, self.size
        elif request == v4l2_device.QBUF:
            self.queued.append(arg.index)
        elif request == v4l2_device.DQBUF:
            if not self.done:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            arg.index, arg.bytesused = self.done.popleft(), self.size
        elif request not in (v4l2_device.STREAMON, v4l2_device.STREAMOFF):
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    def expose(self, data: bytes):
        index = self.queued.popleft()
        self.node.seek(index * self.PAGE)
        self.node.write(data)
        self.node.flush()
        self.done.append(index)


def test_the_ioctl_layer_end_to_end(tmp_path, monkeypatch):
    path = tmp_path / "video0"
    with open(path, "w+b") as node:
        driver = IoctlDriver(node)
        monkeypatch.setattr(v4l2_device.fcntl, "ioctl", driver)
        cam = V4L2Camera(str(path), W, H, 12, "GRBG", opener=v4l2_device.V4L2Device, gain_scale=16)
        try:
            assert cam.format == PixFormat(W, H, "BA12", 64, 256) and cam.alignment == "msb"
            assert driver.set == {0x0098F001: 1}  # external trigger
            dev = cam._dev
            assert dev.formats() == [("RG10", "Bayer"), ("BA12", "Bayer")]
            assert dev.frame_sizes("BA12") == ["3504 x 3120"]
            assert [c.name for c in dev.controls()] == ["trigger_mode", "gain", "exposure"]
            cam.configure(20.0, 1.5)
            assert driver.set[TEGRA_EXPOSURE] == 20000 and driver.set[TEGRA_GAIN] == 24
            values = pixels(12)
            cam.arm()
            driver.expose(ref_bytes(values, "BA12", 64, alignment="msb"))
            np.testing.assert_array_equal(cam.grab(1.0), values)
            assert len(driver.queued) == 4
        finally:
            cam.close()


@pytest.mark.skipif(not glob.glob("/dev/video*"), reason="no V4L2 device on this machine")
def test_a_real_device_answers():
    for path in sorted(glob.glob("/dev/video*")):
        problem = probe(path)
        if problem is not None:
            assert path in problem
            continue
        dev = v4l2_device.V4L2Device(path)
        try:
            assert dev.caps().capabilities & v4l2_device.CAP_CAPTURE
            assert all(len(code) == 4 for code, _ in dev.formats())
            assert all(isinstance(c, Control) for c in dev.controls())
        finally:
            dev.close()


def test_the_serial_comes_from_udevs_by_id_link(tmp_path):
    from edge.hardware.v4l2 import serial_of

    node = tmp_path / "video2"
    node.touch()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "usb-Acme_RAW12_Cam_A1B2C3-video-index0").symlink_to(node)
    (by_id / "usb-Other_Cam_ZZZ-video-index0").symlink_to(tmp_path / "video9")
    assert serial_of(str(node), str(by_id)) == "Acme_RAW12_Cam_A1B2C3"
    no_sysfs = str(tmp_path / "sys")
    assert serial_of(str(tmp_path / "video5"), str(by_id), no_sysfs) == ""  # a CSI sensor: none


def _sysfs(root, usb: dict[str, str] | None = None):
    """A sysfs tree as the kernel lays it out on an Orin: video0, the tegra VI's CSI sensor (a
    platform device), and video2, a UVC camera whose USB device 1-2 carries ``usb``'s
    attributes (its interface 1-2:1.0 is the video node's parent). /sys/class/video4linux and
    /sys/dev/char link to the nodes' folders."""
    devices = root / "devices"
    csi = devices / "platform" / "tegra-capture-vi"
    usb_dev = devices / "platform" / "3610000.usb" / "usb1" / "1-2"
    nodes = {"video0": (csi, "81:0"), "video2": (usb_dev / "1-2:1.0", "81:2")}
    usb_dev.mkdir(parents=True)
    (usb_dev.parent / "idVendor").write_text("1d6b\n")  # the root hub: not the camera
    for name, text in (usb or {}).items():
        (usb_dev / name).write_text(text + "\n")
    (usb_dev / "1-2:1.0" / "bInterfaceClass").parent.mkdir()
    (usb_dev / "1-2:1.0" / "bInterfaceClass").write_text("0e\n")
    for name, (parent, number) in nodes.items():
        node = parent / "video4linux" / name
        node.mkdir(parents=True)
        (node / "device").symlink_to(os.path.relpath(parent, node))
        for link in (root / "class" / "video4linux" / name, root / "dev" / "char" / number):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(node, link.parent))
    return root


UVC = {"idVendor": "2bdf", "idProduct": "0281", "manufacturer": "Acme Vision ",
       "product": "RAW12 Cam/USB3", "serial": "A1B2C3"}


@pytest.mark.parametrize("attrs, expected", [
    (UVC, "Acme_Vision_RAW12_Cam_USB3_A1B2C3"),  # as udev's usb_id: spaces and '/' become '_'
    ({k: v for k, v in UVC.items() if k not in ("manufacturer", "product")}, "2bdf_0281_A1B2C3"),
    ({**UVC, "serial": "A1,B2"}, "Acme_Vision_RAW12_Cam_USB3"),  # usb_id ignores such a serial
    ({k: v for k, v in UVC.items() if k != "serial"}, "Acme_Vision_RAW12_Cam_USB3"),
])
def test_in_a_container_the_serial_comes_from_sysfs_as_udev_composes_it(tmp_path, attrs,
                                                                        expected):
    """No /dev/v4l/by-id in a container: the USB device above the node in sysfs gives the same
    ID_SERIAL udev's link names on the host."""
    from edge.hardware.v4l2 import serial_of

    sysfs = _sysfs(tmp_path / "sys", attrs)
    node = tmp_path / "dev" / "video2"
    node.parent.mkdir()
    node.touch()
    assert serial_of(str(node), str(tmp_path / "no-by-id"), str(sysfs)) == expected


def test_the_sysfs_serial_goes_by_the_device_number_not_the_name_in_the_container(
        tmp_path, monkeypatch):
    """compose maps the host's /dev/video2 to /dev/video0 in the container: the node's device
    number (81:2) finds the USB camera, where its name would find the host's CSI video0."""
    from edge.hardware import v4l2
    from edge.hardware.v4l2 import serial_of

    sysfs = _sysfs(tmp_path / "sys", UVC)
    node = tmp_path / "dev" / "video0"
    node.parent.mkdir()
    node.touch()
    assert serial_of(str(node), str(tmp_path / "none"), str(sysfs)) == ""  # by name: the CSI
    monkeypatch.setattr(v4l2, "_device_number", lambda device: (81, 2))
    assert serial_of(str(node), str(tmp_path / "none"), str(sysfs)) == \
        "Acme_Vision_RAW12_Cam_USB3_A1B2C3"


def test_a_csi_sensor_has_no_serial_and_the_skipped_check_is_said(tmp_path, caplog):
    from edge.hardware.v4l2 import serial_of

    sysfs = _sysfs(tmp_path / "sys", UVC)
    node = tmp_path / "dev" / "video0"
    node.parent.mkdir()
    node.touch()
    with caplog.at_level(logging.WARNING, logger="edge.hardware.v4l2"):
        assert serial_of(str(node), str(tmp_path / "none"), str(sysfs)) == ""
    (record,) = caplog.records
    assert str(node) in record.getMessage()
    assert "made with this camera is skipped" in record.getMessage()

