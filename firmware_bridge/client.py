"""The line controller's end of the verdict link: a small client library.

``LineClient`` is synchronous and single-threaded, like a PLC's scan: each call sends its
command and reads the port until the answer is there, handling everything else that arrives on
the way (verdicts, progress, NAKs, restarts of the head). Its guarantees to the application:

* a VERDICT is accepted only from a frame whose CRC matches and whose fields make sense;
* every VERDICT is acknowledged, repeats included, so the head stops repeating it;
* each request gets exactly one verdict: repeats and re-sends (same sample id and verdict id)
  are dropped, however they were numbered;
* lost lines are recovered by sending the same line again (every command is idempotent): after
  ``retry_s`` without an answer, at once after a NAK for damage on the wire, and after a HELLO
  when the head says it restarted or reopened its port. While a sample is inspected, INSPECT is
  sent again when nothing was heard of it for ``stall_s``: a head that restarted mid-inspection
  then inspects it again, and one that already answered sends its journaled verdict.

Verdicts for samples nobody is waiting for (e.g. the head re-sending one from before this
client started) are acknowledged and kept in ``unsolicited``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_bridge import protocol as P
from firmware_bridge.codec import CRC, MAX_SEQ, Decoder, Frame, Reject, encode
from firmware_bridge.port import Link

log = logging.getLogger("glass-inspect.line")

_NO = object()  # "this frame is not the answer"


class LinkTimeout(TimeoutError):
    """No answer from the head in time."""


class LinkRefused(RuntimeError):
    """The head refused a command for a reason that sending it again will not fix."""

    def __init__(self, command: str, code: str, text: str) -> None:
        super().__init__(f"the head refused {command}: {code} ({text})")
        self.code = code


@dataclass
class HeadStatus:
    busy: bool
    sample_id: str | None
    done_rois: int
    total_rois: int
    unacknowledged: int


@dataclass
class Stats:
    frames: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # per reason
    resends: int = 0
    verdict_repeats: int = 0  # repeats of a verdict already delivered
    bad_verdicts: int = 0  # CRC fine, fields not a verdict
    naks: int = 0
    head_restarts: int = 0

    @property
    def crc_errors(self) -> int:
        return self.rejected.get(CRC, 0)


@dataclass
class _Pending:
    last_heard: float
    answer: P.WireVerdict | None = None


class LineClient:
    def __init__(self, url: str, baud: int = 115200, *, retry_s: float = 0.5,
                 stall_s: float = 5.0, versions: tuple[int, ...] = P.SUPPORTED_VERSIONS,
                 on_progress: Callable[[str, int, int], None] | None = None,
                 link: Link | None = None) -> None:
        self.link = link or Link(url, baud, name="head port")
        self.retry_s = retry_s
        self.stall_s = stall_s
        self.versions = versions
        self.on_progress = on_progress
        self.version: int | None = None
        self.decoder = Decoder()
        self.stats = Stats()
        self.unsolicited: list[P.WireVerdict] = []
        self._seq = 0
        self._replies: list[Frame] = []
        self._pending: dict[str, _Pending] = {}
        self._delivered: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._reset = False  # the head lost our session: HELLO, then send again

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the wire ----------------------------------------------------------------------------

    def _send(self, type_: str, *fields: str) -> tuple[int, bytes]:
        seq = self._seq
        self._seq = (seq + 1) % (MAX_SEQ + 1)
        raw = encode(seq, type_, fields)
        self.link.write(raw)
        return seq, raw

    def _pump(self) -> None:
        """Read what arrived (waits at most the port's read timeout) and handle it."""
        data = self.link.read()
        if not data:
            return
        for item in self.decoder.feed(data):
            if isinstance(item, Reject):
                self.stats.rejected[item.reason] = self.stats.rejected.get(item.reason, 0) + 1
                log.debug("dropped a damaged line from the head (%s: %s)", item.reason,
                          item.detail)
                continue
            self.stats.frames += 1
            if item.type == P.VERDICT:
                self._on_verdict(item)
            elif item.type == P.PROGRESS and len(item.fields) == 3:
                p = self._pending.get(item.fields[0])
                if p is not None:
                    p.last_heard = time.monotonic()
                if self.on_progress and item.fields[1].isdigit() and item.fields[2].isdigit():
                    self.on_progress(item.fields[0], int(item.fields[1]), int(item.fields[2]))
            elif item.type == P.ERROR and item.fields:
                if item.fields[0] in P.SESSION_RESETS:
                    self.stats.head_restarts += 1
                    self._reset = True
                    log.info("the head says: %s", ",".join(item.fields[1:]))
                else:
                    log.warning("the head reports %s", ",".join(item.fields))
            else:
                if (item.type == P.ACK and len(item.fields) >= 3 and item.fields[1] == P.INSPECT
                        and item.fields[2] in self._pending):
                    self._pending[item.fields[2]].last_heard = time.monotonic()
                self._replies.append(item)

    def _on_verdict(self, f: Frame) -> None:
        try:
            v = P.WireVerdict.from_frame(f)
        except P.ProtocolError as exc:
            self.stats.bad_verdicts += 1
            log.warning("ignored a malformed verdict from the head: %s", exc)
            return
        self._send(P.ACK, str(f.seq), P.VERDICT, v.sample_id, str(v.verdict_id))
        p = self._pending.get(v.sample_id)
        if v.key in self._delivered or (p is not None and p.answer is not None
                                        and p.answer.key == v.key):
            self.stats.verdict_repeats += 1
            return
        self._delivered[v.key] = None
        while len(self._delivered) > 4096:
            self._delivered.popitem(last=False)
        if p is not None and p.answer is None:
            p.answer = v
        else:
            log.info("verdict for %s arrived while nobody waits for it: %s", v.sample_id,
                     v.summary())
            self.unsolicited.append(v)

    def _request(self, type_: str, fields: tuple[str, ...], accept: Callable[[Frame], object],
                 timeout: float, done: Callable[[], object] = lambda: _NO,
                 retry_s: float | None = None,
                 heard: Callable[[], float] = lambda: 0.0, send_now: bool = True) -> object:
        """Send a command and read until ``accept`` (on a reply to it) or ``done`` gives an
        answer; send the same line again when needed (see the module docstring)."""
        if type_ in P.NEEDS_SESSION and self.version is None:
            self.hello(timeout)
        deadline = time.monotonic() + timeout
        retry = self.retry_s if retry_s is None else retry_s
        if send_now:
            seq, raw = self._send(type_, *fields)
        else:  # only if nothing is heard for retry_s
            seq, raw = self._seq, encode(self._seq, type_, fields)
            self._seq = (seq + 1) % (MAX_SEQ + 1)
        sent = time.monotonic()
        while True:
            self._pump()
            result = done()
            if result is not _NO:
                return result
            resend = False
            for f in self._take_replies(seq):
                if f.type == P.NAK:
                    self.stats.naks += 1
                    code = f.fields[1] if len(f.fields) > 1 else "?"
                    if code in P.RETRYABLE_NAKS:
                        resend = True
                        continue
                    if code == P.NAK_HELLO:
                        self._reset = True
                        continue
                result = accept(f)
                if result is not _NO:
                    return result
                if f.type == P.NAK:
                    raise LinkRefused(type_, code, ",".join(f.fields[2:]))
            now = time.monotonic()
            if now > deadline:
                raise LinkTimeout(f"no answer from the head to {type_} within {timeout:.1f} s")
            if self._reset and type_ != P.HELLO:
                self.version = None
                self.hello(max(deadline - now, 0.1))
                sent = 0.0  # the head forgot us: send it again now
                resend = True
            elif now - max(sent, heard()) > retry:
                resend = True
            if resend and time.monotonic() - sent > 0.05:
                self.stats.resends += 1
                self.link.write(raw)
                sent = time.monotonic()

    def _take_replies(self, seq: int) -> list[Frame]:
        """The replies to ``seq`` (or to an unreadable line: ref "-"); others are dropped."""
        mine = [f for f in self._replies
                if f.fields and (f.fields[0] == str(seq) or
                                 (f.type == P.NAK and f.fields[0] == P.NONE))]
        self._replies.clear()
        return mine

    def poll(self, seconds: float) -> None:
        """Service the link for a while without a command: acknowledge verdicts, pass on
        progress, note restarts of the head."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._pump()
            self._replies.clear()

    # -- commands ----------------------------------------------------------------------------

    def hello(self, timeout: float = 5.0) -> int:
        """Agree on a protocol version; returns it."""
        self._reset = False

        def accept(f: Frame) -> object:
            if f.type == P.ACK and len(f.fields) >= 3 and f.fields[1] == P.HELLO \
                    and f.fields[2].isdigit():
                return int(f.fields[2])
            return _NO

        self.version = int(self._request(P.HELLO, (";".join(map(str, self.versions)),),
                                         accept, timeout))
        # The wire keeps order: a restart notice read before this answer came from before the
        # head heard our HELLO, so it is already dealt with.
        self._reset = False
        return self.version

    def ping(self, timeout: float = 5.0) -> float:
        """Round trip time in seconds."""
        t = time.monotonic()
        self._request(P.PING, (), lambda f: True if f.type == P.ACK else _NO, timeout)
        return time.monotonic() - t

    def status(self, timeout: float = 5.0) -> HeadStatus:
        def accept(f: Frame) -> object:
            x = f.fields
            if f.type == P.ACK and len(x) == 7 and x[1] == P.STATUS and x[4].isdigit() \
                    and x[5].isdigit() and x[6].isdigit():
                return HeadStatus(x[2] == P.BUSY, None if x[3] == P.NONE else x[3],
                                  int(x[4]), int(x[5]), int(x[6]))
            return _NO

        return self._request(P.STATUS, (), accept, timeout)

    def _answer(self, sample_id: str) -> Callable[[], object]:
        def done() -> object:
            p = self._pending.get(sample_id)
            return p.answer if p is not None and p.answer is not None else _NO
        return done

    def start_inspect(self, sample_id: str, timeout: float = 30.0) -> None:
        """Ask for an inspection; returns once the head took it (or already answered).

        A head busy with another sample answers BUSY; this waits and asks again until
        ``timeout``.
        """
        if not P.valid_sample_id(sample_id):
            raise ValueError(f"sample id {sample_id!r} is outside [A-Za-z0-9][A-Za-z0-9_.-]"
                             "{0,63}")
        self._pending[sample_id] = _Pending(time.monotonic())
        # A new request: an earlier verdict of this sample may legitimately be the answer.
        for key in [k for k in self._delivered if k[0] == sample_id]:
            del self._delivered[key]

        busy_with: list[str] = []

        def accept(f: Frame) -> object:
            if f.type == P.ACK and len(f.fields) >= 3 and f.fields[1] == P.INSPECT \
                    and f.fields[2] == sample_id:
                return None
            if f.type == P.BUSY and len(f.fields) >= 2:
                busy_with[:] = [f.fields[1]]
            return _NO

        try:
            self._request(P.INSPECT, (sample_id,), accept, timeout,
                          done=self._answer(sample_id))
        except LinkTimeout:
            if busy_with:
                raise LinkTimeout(f"the head stayed busy with sample {busy_with[0]} for "
                                  f"{timeout:.1f} s; {sample_id} was not taken") from None
            raise

    def wait_verdict(self, sample_id: str, timeout: float = 60.0) -> P.WireVerdict:
        """The verdict of a sample asked for with start_inspect; exactly one per request."""
        p = self._pending.get(sample_id)
        if p is None:
            raise ValueError(f"no inspection of {sample_id} was asked for")
        try:
            return self._request(P.INSPECT, (sample_id,), lambda f: _NO, timeout,
                                 done=self._answer(sample_id), retry_s=self.stall_s,
                                 heard=lambda: p.last_heard, send_now=False)
        finally:
            if p.answer is not None:
                del self._pending[sample_id]

    def inspect(self, sample_id: str, timeout: float = 60.0) -> P.WireVerdict:
        """Inspect one sample and return its verdict."""
        deadline = time.monotonic() + timeout
        self.start_inspect(sample_id, timeout)
        return self.wait_verdict(sample_id, max(deadline - time.monotonic(), 0.1))

    def abort(self, sample_id: str, timeout: float = 5.0) -> bool:
        """Stop the inspection of a sample; False if the head was not inspecting it. Its
        verdict (ERROR) still comes: collect it with wait_verdict."""
        def accept(f: Frame) -> object:
            if f.type == P.ACK and len(f.fields) >= 3 and f.fields[1:3] == (P.ABORT, sample_id):
                return True
            if f.type == P.NAK and len(f.fields) >= 2 and f.fields[1] == P.NAK_IDLE:
                return False
            return _NO

        return bool(self._request(P.ABORT, (sample_id,), accept, timeout))

    def result(self, sample_id: str, timeout: float = 5.0) -> P.WireVerdict | None:
        """Ask the head again for a sample's verdict; None if it has none (it may still be
        inspecting it: then this waits)."""
        mine = sample_id not in self._pending
        if mine:
            self._pending[sample_id] = _Pending(time.monotonic())
        for key in [k for k in self._delivered if k[0] == sample_id]:
            del self._delivered[key]

        def accept(f: Frame) -> object:
            if f.type == P.NAK and len(f.fields) >= 2 and f.fields[1] == P.NAK_UNKNOWN:
                return None
            return _NO

        try:
            return self._request(P.RESULT, (sample_id,), accept, timeout,
                                 done=self._answer(sample_id))
        finally:
            p = self._pending.get(sample_id)
            if p is not None and (p.answer is not None or mine):
                del self._pending[sample_id]
