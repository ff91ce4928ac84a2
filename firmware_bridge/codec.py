"""Frames on the wire: the line format, its CRC, encoding, and an incremental decoder.

A frame is one ASCII line (docs/protocol.md has the full grammar and a worked example)::

    $<seq>,<TYPE>[,<field>...]*<CRC>\\r\\n

Choices:

* **CRC-16/CCITT-FALSE** (polynomial 0x1021, initial value 0xFFFF, no reflection, no final
  XOR; ``binascii.crc_hqx(body, 0xFFFF)``) over the bytes between ``$`` and ``*``, written as 4
  upper-case hex digits (lower case is refused: a flipped case bit must not pass as the same
  checksum). It is in the standard library (C speed, nothing to keep), catches every
  error burst up to 16 bits, and PLCs commonly have it as a function block.
* **Resynchronisation by line.** A frame ends at ``\\n``; within a line the frame starts at the
  *last* ``$``, so noise before a frame, or a frame cut short and followed by a new one, costs
  only the damaged frame. ``$`` and ``*`` never occur inside a frame body, so they cannot be
  confused with payload.
* **The decoder never raises and never grows without bound**: anything that is not a valid
  frame becomes a :class:`Reject` (reason + short detail), and a line that goes on past
  :data:`MAX_LINE` bytes without a ``\\n`` is dropped as it arrives (keeping only what could
  still be the start of a frame).
* Whole lines are cut with ``bytes.split`` and checked with one compiled pattern, so parsing
  runs at C speed per line rather than per byte in Python (benchmarks/codec.py).

The codec checks syntax only (sequence number, type word, field count, CRC); what the fields of
each message type mean is :mod:`firmware_bridge.protocol`'s job.
"""

from __future__ import annotations

import re
from binascii import crc_hqx
from typing import NamedTuple

MAX_LINE = 512  # bytes from "$" to "\n" inclusive
MAX_FIELDS = 16  # seq and type included
MAX_SEQ = 0xFFFF  # sequence numbers wrap from 65535 to 0
CRC_INIT = 0xFFFF

# Reasons a line is rejected; the server sends them back in its NAK.
CRC = "CRC"  # well formed but the checksum does not match: noise on the wire
FORMAT = "FORMAT"  # not a frame: no "$", no "*CRC", bad characters, bad seq or type word
LENGTH = "LENGTH"  # longer than MAX_LINE
FIELDS = "FIELDS"  # more than MAX_FIELDS fields

# Between "$" and "*": printable ASCII except "$" (0x24) and "*" (0x2A).
_CANDIDATE = re.compile(rb"([\x20-\x23\x25-\x29\x2b-\x7e]+)\*([0-9A-F]{4})\r?")
_HEAD = re.compile(r"(0|[1-9][0-9]{0,4}),([A-Z]{1,12})")
_FIELD_OK = re.compile(r"[\x20-\x23\x25-\x29\x2b\x2d-\x7e]*")  # printable, no "$", "*", ","
_TYPE_OK = re.compile(r"[A-Z]{1,12}")


class FrameError(ValueError):
    """A frame that this side was asked to send but that the format cannot carry."""


class Frame(NamedTuple):
    seq: int
    type: str
    fields: tuple[str, ...]
    raw: bytes  # the line as received, from "$" to the CRC (no line ending)


class Reject(NamedTuple):
    reason: str  # CRC, FORMAT, LENGTH or FIELDS
    detail: str  # for logs and the NAK text: what was wrong
    raw: bytes  # the start of the offending line, for logs (at most 80 bytes)


def crc16(body: bytes) -> int:
    """CRC-16/CCITT-FALSE of a frame body (the bytes between "$" and "*")."""
    return crc_hqx(body, CRC_INIT)


def encode(seq: int, type_: str, fields: tuple[str, ...] | list[str] = ()) -> bytes:
    """One frame, ready to write, ``\\r\\n`` included. Raises FrameError if it cannot be sent."""
    if not 0 <= seq <= MAX_SEQ:
        raise FrameError(f"sequence number {seq} is outside 0..{MAX_SEQ}")
    if not _TYPE_OK.fullmatch(type_):
        raise FrameError(f"message type {type_!r} must be 1 to 12 upper-case letters")
    if len(fields) + 2 > MAX_FIELDS:
        raise FrameError(f"{type_}: {len(fields) + 2} fields, at most {MAX_FIELDS} fit a frame")
    for f in fields:
        if not isinstance(f, str) or not _FIELD_OK.fullmatch(f):
            raise FrameError(f"{type_}: field {f!r} must be printable ASCII without "
                             "'$', '*' or ','")
    body = ",".join((str(seq), type_, *fields)).encode("ascii")
    line = b"$%s*%04X\r\n" % (body, crc16(body))
    if len(line) > MAX_LINE:
        raise FrameError(f"{type_}: frame of {len(line)} bytes, at most {MAX_LINE} fit a line")
    return line


class Decoder:
    """Turns a byte stream, in pieces of any size, into frames and rejected lines.

    ``feed(data)`` returns what the new bytes completed, in order. Counters (``frames``,
    ``rejects`` per reason, ``garbage_bytes`` skipped before a frame) are for statistics.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._tail = b""
        self._overrun = False  # the current line already passed max_line and was reported
        self.frames = 0
        self.rejects: dict[str, int] = {}
        self.garbage_bytes = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | Reject]:
        out: list[Frame | Reject] = []
        try:
            data = bytes(data)
        except Exception:  # not bytes-like: nothing arrived that could be a frame
            return out
        if not data:
            return out
        buf = self._tail + data if self._tail else data
        lines = buf.split(b"\n")
        tail = lines.pop()
        for line in lines:
            self._line(line, out)
            self._overrun = False
        if len(tail) >= self.max_line:
            # No end of line in sight: keep only what may still start a frame, so a stream of
            # noise without "\n" cannot grow the buffer.
            start = tail.rfind(b"$")
            if start >= 0 and len(tail) - start < self.max_line:
                self.garbage_bytes += start
                tail = tail[start:]
            else:
                self.garbage_bytes += len(tail)
                if not self._overrun:
                    self._reject(out, LENGTH, f"line longer than {self.max_line} bytes", tail)
                    self._overrun = True
                tail = b""
        self._tail = tail
        return out

    def _reject(self, out: list, reason: str, detail: str, raw: bytes) -> None:
        self.rejects[reason] = self.rejects.get(reason, 0) + 1
        out.append(Reject(reason, detail, raw[:80]))

    def _line(self, line: bytes, out: list) -> None:
        start = line.rfind(b"$")
        if start < 0:
            if self._overrun or not line.strip():
                self.garbage_bytes += len(line)
            else:
                self.garbage_bytes += len(line)
                self._reject(out, FORMAT, "no '$' start of frame in the line", line)
            return
        if start:
            self.garbage_bytes += start
            line = line[start:]
        if len(line) + 1 > self.max_line:
            self._reject(out, LENGTH, f"line of {len(line) + 1} bytes, at most {self.max_line}",
                         line)
            return
        m = _CANDIDATE.fullmatch(line, 1)
        if m is None:
            self._reject(out, FORMAT, "expected printable text then '*' and 4 hex digits", line)
            return
        body = m.group(1)
        if crc16(body) != int(m.group(2), 16):
            self._reject(out, CRC, f"checksum {m.group(2).decode()} does not match "
                                   f"{crc16(body):04X}", line)
            return
        parts = body.decode("ascii").split(",")
        if len(parts) > MAX_FIELDS:
            self._reject(out, FIELDS, f"{len(parts)} fields, at most {MAX_FIELDS}", line)
            return
        if len(parts) < 2 or not _HEAD.fullmatch(f"{parts[0]},{parts[1]}"):
            self._reject(out, FORMAT, "expected a sequence number 0-65535 and a type word", line)
            return
        seq = int(parts[0])
        if seq > MAX_SEQ:
            self._reject(out, FORMAT, f"sequence number {seq} is above {MAX_SEQ}", line)
            return
        self.frames += 1
        out.append(Frame(seq, parts[1], tuple(parts[2:]), line[:m.end(2)]))
