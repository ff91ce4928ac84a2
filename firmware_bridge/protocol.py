"""The messages of the verdict link: types, their fields, NAK codes, and the VERDICT payload.

docs/protocol.md is the integrator's reference; this module is its executable form. Choices:

* **Every command is idempotent**, so a lost answer is recovered by sending the same line
  again: INSPECT of the sample being inspected answers "RUNNING", INSPECT of a sample with a
  journaled verdict answers that verdict, ABORT names the sample it aborts (a repeated ABORT
  cannot stop the next sample), ACK of a verdict names the sample and the verdict id.
* **A verdict is identified by (sample id, verdict id)**, the verdict id being a number the
  head's journal gives out once. Repeats and re-sends after a restart carry the same pair, so
  the line side recognises duplicates whatever the sequence numbers did.
* **The verdict line is compact and complete**: status, the exact defect count, then as many
  defects (centre x, centre y, length in mm, peak score; longest first) as fit the line, then
  the head's reason in words. The full record (boxes, RoIs, timings) stays in the journal.
* The sample-id alphabet is the recorded-sample one (:data:`edge.verdict.SAMPLE_ID`, shared
  with :mod:`edge.recording`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from edge.verdict import SAMPLE_ID, Defect, Status, Verdict
from firmware_bridge.codec import FIELDS, MAX_LINE, Frame, FrameError, encode

VERSION = 1
SUPPORTED_VERSIONS = (1,)
PRODUCT = "glass-inspect"


# From the line controller.
HELLO, PING, INSPECT, STATUS, ABORT, RESULT = "HELLO", "PING", "INSPECT", "STATUS", "ABORT", \
    "RESULT"
# Both directions (the line acknowledges verdicts, the head acknowledges commands).
ACK = "ACK"
# From the head.
NAK, BUSY, PROGRESS, VERDICT, ERROR = "NAK", "BUSY", "PROGRESS", "VERDICT", "ERROR"

LINE_TYPES = (HELLO, PING, INSPECT, STATUS, ABORT, RESULT, ACK)
HEAD_TYPES = (ACK, NAK, BUSY, PROGRESS, VERDICT, ERROR)
NEEDS_SESSION = (INSPECT, STATUS, ABORT, RESULT)  # HELLO first; PING and ACK always work

# Field count (after seq and type) each line command takes: (least, most).
LINE_ARITY = {HELLO: (1, 1), PING: (0, 1), INSPECT: (1, 1), STATUS: (0, 0), ABORT: (1, 1),
              RESULT: (1, 1), ACK: (1, 4)}

# NAK codes beyond the codec's CRC / FORMAT / LENGTH / FIELDS.
NAK_TYPE = "TYPE"  # unknown message type
NAK_SAMPLE = "SAMPLE"  # sample id outside the alphabet
NAK_HELLO = "HELLO"  # say HELLO first (after a restart or a reconnection of the port)
NAK_VERSION = "VERSION"  # no protocol version in common
NAK_IDLE = "IDLE"  # ABORT of a sample that is not being inspected
NAK_UNKNOWN = "UNKNOWN"  # RESULT of a sample with no verdict in the journal
# Damage on the wire: the sender should send the same line again.
RETRYABLE_NAKS = ("CRC", "FORMAT", "LENGTH")

# ACK answers to INSPECT and RESULT.
STARTED, RUNNING, DONE = "STARTED", "RUNNING", "DONE"
IDLE = "IDLE"

# ERROR event codes.
EV_RESTART = "RESTART"  # the head (re)started: sessions are gone, say HELLO again
EV_LINK = "LINK"  # the head reopened its port after losing it: say HELLO again
EV_JOURNAL = "JOURNAL"  # the verdict journal could not be written
EV_INSPECTOR = "INSPECTOR"  # the inspection did not stop when asked
SESSION_RESETS = (EV_RESTART, EV_LINK)

NONE = "-"  # an empty optional field
REASON_CHARS = 64
_TEXT_BAD = re.compile(r"[^\x20-\x23\x25-\x29\x2b\x2d-\x7e]")  # printable, no $ * ,
_NUMBER = re.compile(r"-?\d{1,6}(\.\d{1,4})?")


class ProtocolError(ValueError):
    """A frame that passed its CRC but does not carry what its type promises."""


def valid_sample_id(text: str) -> bool:
    return bool(SAMPLE_ID.match(text))


def text_field(text: str, limit: int = REASON_CHARS) -> str:
    """Free text (a reason, a NAK explanation) made safe for one field: no separators."""
    t = _TEXT_BAD.sub("_", " ".join(text.replace(",", ";").split()))[:limit].strip()
    return t or NONE


def check_fields(frame: Frame) -> tuple[str, str] | None:
    """(NAK code, explanation) for a line-side command whose fields are wrong, or None."""
    least, most = LINE_ARITY[frame.type]
    n = len(frame.fields)
    if not least <= n <= most:
        want = str(least) if least == most else f"{least} to {most}"
        return FIELDS, f"{frame.type} takes {want} field(s), got {n}"
    if frame.type in (INSPECT, ABORT, RESULT) and not valid_sample_id(frame.fields[0]):
        return NAK_SAMPLE, (f"sample id {frame.fields[0]!r} is outside "
                            "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    return None


def parse_versions(field: str) -> set[int]:
    """HELLO's field: the versions the line speaks, separated by ';' (e.g. '1' or '1;2')."""
    out = set()
    for part in field.split(";"):
        if part.isdigit() and len(part) <= 4:
            out.add(int(part))
    return out


# -- the VERDICT payload -------------------------------------------------------------------------

@dataclass(frozen=True)
class WireDefect:
    x_mm: float  # centre
    y_mm: float
    length_mm: float
    peak_score: float

    def text(self) -> str:
        return (f"{self.x_mm:.2f}:{self.y_mm:.2f}:{self.length_mm:.2f}:"
                f"{self.peak_score:.2f}")


@dataclass(frozen=True)
class WireVerdict:
    """A verdict as the line receives it: what the VERDICT frame carries."""

    sample_id: str
    verdict_id: int
    status: Status
    defect_count: int  # the true count; ``defects`` may list fewer when the line is full
    defects: tuple[WireDefect, ...]
    reason: str
    seq: int
    line: str  # the frame as received, for the line's own records

    @property
    def key(self) -> tuple[str, int]:
        return (self.sample_id, self.verdict_id)

    def summary(self) -> str:
        listed = "" if len(self.defects) == self.defect_count else \
            f" ({len(self.defects)} listed)"
        if self.status is Status.FAIL:
            longest = max((d.length_mm for d in self.defects), default=0.0)
            tail = f"{self.defect_count} defect(s){listed}, longest {longest:.1f} mm"
        else:
            tail = self.reason
        return f"{self.sample_id}: {self.status.value} - {tail} [verdict {self.verdict_id}]"

    @classmethod
    def from_frame(cls, frame: Frame) -> WireVerdict:
        f = frame.fields
        if frame.type != VERDICT or len(f) != 6:
            raise ProtocolError(f"{frame.type} with {len(f)} fields is not a VERDICT with 6 "
                                "(sample, verdict id, status, count, defects, reason)")
        sample_id, vid, status, count, listed, reason = f
        if not valid_sample_id(sample_id):
            raise ProtocolError(f"VERDICT: sample id {sample_id!r} is outside the alphabet")
        if not vid.isdigit() or len(vid) > 12:
            raise ProtocolError(f"VERDICT: verdict id {vid!r} is not a number")
        if status not in (s.value for s in Status):
            raise ProtocolError(f"VERDICT: status {status!r} is not PASS, FAIL or ERROR")
        if not count.isdigit() or len(count) > 6:
            raise ProtocolError(f"VERDICT: defect count {count!r} is not a number")
        defects = []
        if listed != NONE:
            for entry in listed.split(";"):
                parts = entry.split(":")
                if len(parts) != 4 or not all(_NUMBER.fullmatch(p) for p in parts):
                    raise ProtocolError(f"VERDICT: defect {entry!r} is not x:y:length:peak")
                defects.append(WireDefect(*(float(p) for p in parts)))
        n = int(count)
        st = Status(status)
        if len(defects) > n:
            raise ProtocolError(f"VERDICT: {len(defects)} defects listed but the count is {n}")
        if (st is Status.FAIL) != (n > 0):
            raise ProtocolError(f"VERDICT: {status} with {n} defects is contradictory")
        return cls(sample_id, int(vid), st, n, tuple(defects), reason, frame.seq,
                   frame.raw.decode("ascii"))


def _wire_defect(d: Defect) -> WireDefect:
    x, y = d.centre_mm
    return WireDefect(x, y, d.length_mm, d.peak_score)


def verdict_fields(v: Verdict, verdict_id: int) -> list[str]:
    """The VERDICT fields for a head verdict, with as many defects as fit a line.

    A FAIL without defects or a PASS/ERROR with some cannot be told apart from a damaged
    verdict on the line side, so they are sent as ERROR: fail-safe, never a PASS.
    """
    if not valid_sample_id(v.sample_id):
        raise FrameError(f"sample id {v.sample_id!r} cannot be sent: outside the alphabet")
    status, reason, defects = v.status, v.reason, list(v.defects)
    if status is Status.FAIL and not defects:
        status, reason = Status.ERROR, f"FAIL without defects ({reason})"
    elif status is not Status.FAIL and defects:
        status, reason = Status.ERROR, f"{status.value} with {len(defects)} defects ({reason})"
        defects = []
    if not all(math.isfinite(c) for d in defects for c in (*d.box_mm, d.length_mm,
                                                          d.peak_score)):
        status, reason, defects = Status.ERROR, "defect with a non-finite coordinate", []
    fields = [v.sample_id, str(verdict_id), status.value, str(len(defects)), NONE,
              text_field(reason)]
    # Room left on a line sent with the longest sequence number.
    room = MAX_LINE - len(encode(65535, VERDICT, fields)) + 1
    listed: list[str] = []
    for d in sorted(defects, key=lambda d: -d.length_mm):
        t = _wire_defect(d).text()
        need = len(t) + (1 if listed else 0)
        if need > room:
            break
        listed.append(t)
        room -= need
    if listed:
        fields[4] = ";".join(listed)
    return fields
