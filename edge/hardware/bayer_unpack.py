"""RAW Bayer frames as V4L2 delivers them, unpacked to uint16 (H, W) pixel values.

The pixel formats (fourccs) of the V4L2 specification, 10 and 12 bit, in all four Bayer orders:

* **16-bit containers** ('RG10', 'BA10', 'GB10', 'BG10', 'RG12', 'BA12', 'GB12', 'BG12'): one
  little-endian 16-bit word per pixel. The V4L2 layout is LSB-aligned (the high bits are 0).
* **MIPI CSI-2 packed** ('pRAA', 'pgAA', 'pGAA', 'pBAA'; 'pRCC', 'pgCC', 'pGCC', 'pBCC'): RAW10
  puts 4 pixels in 5 bytes (the 8 high bits of each pixel, then one byte of the 4 pixels' 2 low
  bits, pixel 0 in bits 1-0); RAW12 puts 2 pixels in 3 bytes (the 8 high bits of each, then
  one byte with pixel 0's 4 low bits in bits 3-0 and pixel 1's in bits 7-4).

Rows are ``bytesperline`` apart (drivers pad rows, e.g. to 64 bytes on a Jetson).

**Alignment.** A Jetson's video input (the tegra VI) does not write the V4L2 layout into the
16-bit containers: on Xavier and Orin (VI5, the ``T_R16`` memory format) a RAW10 pixel D sits
MSB-aligned in bits 15-6 with its own 6 high bits repeated in bits 5-0, a RAW12 pixel in
bits 15-4 with D[11:8] repeated in bits 3-0 (NVIDIA developer forum, "Why v4l2 dump data bpp is
16 not 12?" (Xavier, RAW12: a dump reads D11..D0 D11..D8) and "Questions regarding VI's raw data
pixel formatting" (Xavier NX: MSB-aligned with the MSBs replicated; Nano, VI2: LSB-aligned)).
So ``alignment="msb"`` takes the top ``bits`` of each word, ``"lsb"`` the V4L2 layout.

A wrong alignment is caught rather than passed on as a wrong image: LSB-aligned data has no value
beyond the bit depth, and MSB-aligned data has in its low bits a copy of its top bits (or zeros),
which LSB-aligned data read as MSB-aligned almost never has. Either violation is a
:class:`FrameError` that names the alignment to try. The kernels are numba loops over the bytes
(one pass, little-endian by construction, whatever the host).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from edge.hardware.camera import FrameError

PATTERNS = ("RGGB", "GRBG", "GBRG", "BGGR")
ALIGNMENTS = ("lsb", "msb")
# msb: a wrong guess shows in most pixels; a handful of odd words is not a reason to refuse
MSB_ODD_SHARE = 0.01
_LE16 = np.dtype("<u2")  # V4L2's words are little-endian; so are the Jetson and x86 hosts


@dataclass(frozen=True)
class BayerFormat:
    fourcc: str
    pattern: str
    bits: int
    packed: bool

    def row_bytes(self, width: int) -> int:
        """The fewest bytes a row of ``width`` pixels takes (no padding)."""
        if not self.packed:
            return 2 * width
        per = 4 if self.bits == 10 else 2  # pixels per group; a group is per + 1 bytes
        return -(-width // per) * (per + 1)

    def describe(self) -> str:
        layout = "MIPI-packed" if self.packed else "in 16-bit words"
        return f"{self.bits}-bit Bayer {self.pattern} {layout} ({self.fourcc})"


_NAMES = {  # pattern -> fourccs: 10-bit, 12-bit, 10-bit packed, 12-bit packed
    "RGGB": ("RG10", "RG12", "pRAA", "pRCC"),
    "GRBG": ("BA10", "BA12", "pgAA", "pgCC"),
    "GBRG": ("GB10", "GB12", "pGAA", "pGCC"),
    "BGGR": ("BG10", "BG12", "pBAA", "pBCC"),
}
_KINDS = ((10, False), (12, False), (10, True), (12, True))
FORMATS: dict[str, BayerFormat] = {
    fourcc: BayerFormat(fourcc, pattern, bits, packed)
    for pattern, names in _NAMES.items()
    for fourcc, (bits, packed) in zip(names, _KINDS, strict=True)
}
EIGHT_BIT = {"RGGB": "RGGB", "GRBG": "GRBG", "GBRG": "GBRG", "BA81": "BGGR"}  # fourcc -> pattern


def formats_for(pattern: str, bits: int) -> list[BayerFormat]:
    """The formats that carry ``pattern`` at ``bits``, unpacked first (see edge.hardware.v4l2)."""
    return sorted((f for f in FORMATS.values() if f.pattern == pattern and f.bits == bits),
                  key=lambda f: f.packed)


# Each kernel takes one row at a time as a contiguous slice: that lets LLVM vectorise the inner
# loop (about 1.5 ms for a 3504 x 3120 frame instead of 10 ms with flat indexing).
@numba.njit(cache=True, nogil=True)
def _words_lsb(words, stride, out):
    worst = 0
    h, w = out.shape
    for y in range(h):
        row, o = words[y * stride:y * stride + w], out[y]
        for x in range(w):
            worst = max(worst, row[x])
            o[x] = row[x]
    return worst


@numba.njit(cache=True, nogil=True)
def _words_msb(words, stride, bits, out):
    shift = 16 - bits
    low = np.uint16((1 << shift) - 1)
    odd = 0
    h, w = out.shape
    for y in range(h):
        row, o = words[y * stride:y * stride + w], out[y]
        for x in range(w):
            v = row[x] >> shift
            lo = row[x] & low
            odd += (lo != 0) & (lo != v >> (bits - shift))
            o[x] = v
    return odd


@numba.njit(cache=True, nogil=True)
def _packed10(raw, stride, out):
    h, w = out.shape
    n = w // 4
    for y in range(h):
        r, o = raw[y * stride:y * stride + 5 * n], out[y]
        for g in range(n):
            lo = np.uint16(r[5 * g + 4])
            for i in range(4):
                o[4 * g + i] = (np.uint16(r[5 * g + i]) << 2) | ((lo >> (2 * i)) & 3)
        for x in range(4 * n, w):  # a last, partial group
            b = y * stride + 5 * n
            o[x] = (np.uint16(raw[b + x - 4 * n]) << 2) | ((raw[b + 4] >> (2 * (x - 4 * n))) & 3)


@numba.njit(cache=True, nogil=True)
def _packed12(raw, stride, out):
    h, w = out.shape
    n = w // 2
    for y in range(h):
        r, o = raw[y * stride:y * stride + 3 * n], out[y]
        for g in range(n):
            lo = np.uint16(r[3 * g + 2])
            o[2 * g] = (np.uint16(r[3 * g]) << 4) | (lo & 15)
            o[2 * g + 1] = (np.uint16(r[3 * g + 1]) << 4) | (lo >> 4)
        if w & 1:
            b = y * stride + 3 * n
            o[w - 1] = (np.uint16(raw[b]) << 4) | (raw[b + 2] & 15)


def unpack(data, fmt: BayerFormat, width: int, height: int, bytesperline: int,
           alignment: str = "lsb", what: str = "frame") -> np.ndarray:
    """The pixel values of ``data`` (any buffer: bytes, mmap, numpy) as uint16 (H, W).

    ``alignment`` matters for 16-bit containers only. :class:`FrameError` (naming ``what``) when
    the buffer is too short or its values do not fit ``fmt`` and ``alignment``."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, not {alignment!r}")
    row = fmt.row_bytes(width)
    if bytesperline < row:
        raise FrameError(f"{what}: rows of {bytesperline} bytes cannot hold {width} px of "
                         f"{fmt.describe()}, which need {row}")
    raw = np.frombuffer(data, np.uint8)
    need = bytesperline * (height - 1) + row
    if raw.size < need:
        raise FrameError(f"{what}: {raw.size} bytes, but a {width} x {height} px frame of "
                         f"{fmt.describe()} with {bytesperline}-byte rows needs {need}")
    out = np.empty((height, width), np.uint16)
    full = (1 << fmt.bits) - 1
    if fmt.packed:
        (_packed10 if fmt.bits == 10 else _packed12)(raw, bytesperline, out)
        return out
    if bytesperline % 2:
        raise FrameError(f"{what}: rows of {bytesperline} bytes: an odd stride cannot hold "
                         f"16-bit words of {fmt.describe()}")
    words = raw[:need].view(_LE16)
    if alignment == "lsb":
        worst = _words_lsb(words, bytesperline // 2, out)
        if worst > full:
            raise FrameError(
                f"{what}: values up to {worst} in a {fmt.bits}-bit frame (max {full}): the "
                f"pixels are not LSB-aligned in their 16-bit words as V4L2 defines {fmt.fourcc}; "
                "a Jetson Xavier/Orin VI writes them MSB-aligned: set alignment 'msb'")
    else:
        odd = _words_msb(words, bytesperline // 2, fmt.bits, out)
        if odd > MSB_ODD_SHARE * out.size:
            raise FrameError(
                f"{what}: in {100.0 * odd / out.size:.0f} % of the pixels the low "
                f"{16 - fmt.bits} bits of the 16-bit word are not a copy of the top bits, as "
                "MSB-aligned data from a Jetson VI has: the pixels are LSB-aligned (the V4L2 "
                "layout): set alignment 'lsb'")
    return out
