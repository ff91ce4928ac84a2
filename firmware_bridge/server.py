"""The head's end of the verdict link (``glass-inspect serve``).

Structure: one loop owns the port, the decoder, the journal and every write; the inspection
runs in one worker thread that only talks back through a queue (progress, result). So no lock
guards the port or the journal, and the loop stays responsive (PING, STATUS, ABORT, BUSY)
while a sample is inspected.

Rules the loop keeps (docs/protocol.md has the line's view):

* A rejected line is answered with NAK and never acted on.
* One inspection at a time: INSPECT of another sample while busy -> BUSY; of the same sample
  -> ACK RUNNING (the line re-sent it).
* INSPECT of a sample whose verdict is in the journal answers that verdict instead of
  inspecting again, so a re-sent INSPECT can never produce a second, different answer. The
  exception is an ERROR verdict the line has acknowledged: ERROR says nothing about the glass,
  so the line may ask again and the sample is inspected anew (a new verdict id).
* A verdict is journaled (fsynced), then sent, then repeated every ``repeat_s`` until the line
  acknowledges it, across port outages and restarts.
* Fail-safe: an exception from the inspector, a verdict for another sample, anything that is
  not a Verdict, an ABORT or a timeout all give ERROR. When the inspector ignores the abort,
  the ERROR is sent after ``abort_grace_s`` anyway and the head answers BUSY until the
  inspector thread really ends (its late result is logged and dropped).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from edge import __version__
from edge.verdict import Status, Verdict, error
from firmware_bridge import codec
from firmware_bridge import protocol as P
from firmware_bridge.codec import Decoder, Frame, Reject, encode
from firmware_bridge.inspector import Inspector
from firmware_bridge.journal import Entry, Journal, JournalError
from firmware_bridge.port import Link

log = logging.getLogger("glass-inspect.bridge")


@dataclass
class _Job:
    sample_id: str
    abort: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    total: int = 0
    stop_reason: str | None = None  # why the head stopped it (ABORT, timeout)
    stop_deadline: float = 0.0
    thread: threading.Thread | None = None


class VerdictServer:
    def __init__(self, link: Link, inspector: Inspector, journal: Journal, *,
                 repeat_s: float = 1.0, abort_grace_s: float = 2.0,
                 inspect_timeout_s: float = 300.0, heartbeat=None) -> None:
        self.link = link
        # written from this loop (firmware_bridge.health), so a stuck loop stops beating
        self.heartbeat = heartbeat
        self.inspector = inspector
        self.journal = journal
        self.repeat_s = repeat_s
        self.abort_grace_s = abort_grace_s
        self.inspect_timeout_s = inspect_timeout_s
        self.decoder = Decoder()
        self._events: queue.Queue = queue.Queue()
        self._job: _Job | None = None  # the inspection the line is waiting for
        self._stuck: _Job | None = None  # an abandoned inspection whose thread still runs
        self._session: int | None = None  # agreed protocol version; None until HELLO
        self._generation = 0
        self._seq = (journal.last_seq + 1) % (codec.MAX_SEQ + 1)
        self._repeat: dict[int, float] = {}  # verdict id -> when to send it next
        for e in journal.unacknowledged():
            self._repeat[e.verdict_id] = 0.0

    # -- sending -----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % (codec.MAX_SEQ + 1)
        return seq

    def _send(self, type_: str, *fields: str) -> None:
        self.link.write(encode(self._next_seq(), type_, fields))

    def _nak(self, ref: str, code: str, text: str) -> None:
        self._send(P.NAK, ref, code, P.text_field(text))

    def _send_verdict(self, e: Entry) -> None:
        self.link.write(e.line.encode("ascii") + b"\r\n")
        if not e.acked:  # sent or not (port down), the next try is one interval away
            self._repeat[e.verdict_id] = time.monotonic() + self.repeat_s

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set."""
        pending = len(self._repeat)
        log.info("verdict journal %s: %d verdict(s), %d awaiting acknowledgement by the line",
                 self.journal.path, len(self.journal.by_id), pending)
        try:
            while not stop.is_set():
                try:
                    self.step()
                    if self.heartbeat is not None and self.heartbeat.due():
                        self.heartbeat.write("serving", link_open=self.link.is_open,
                                             unacknowledged=len(self.journal.unacknowledged()))
                except Exception:
                    # A bug must not take the line down: the journal and the repeats carry
                    # on, and the traceback tells us what to fix.
                    log.exception("internal error in the verdict server; carrying on")
                    time.sleep(0.1)
        finally:
            self.shutdown()

    def step(self) -> None:
        data = self.link.read()
        if self.link.generation != self._generation:
            self._connected()
        if data:
            for item in self.decoder.feed(data):
                if isinstance(item, Reject):
                    log.debug("rejected a line from the line controller (%s: %s): %r",
                              item.reason, item.detail, item.raw)
                    self._nak(P.NONE, item.reason, item.detail)
                else:
                    self._handle(item)
        self._poll_inspection()
        self._resend_due()

    def _connected(self) -> None:
        """The port (re)opened: sessions start over; unacknowledged verdicts go out now."""
        first = self._generation == 0
        self._generation = self.link.generation
        self._session = None
        self.decoder = Decoder()  # half a line from before the outage means nothing now
        code, text = ((P.EV_RESTART, f"head started ({P.PRODUCT} {__version__}); send HELLO")
                      if first else (P.EV_LINK, "port reopened; send HELLO"))
        self._send(P.ERROR, code, P.text_field(text))
        for vid in self._repeat:
            self._repeat[vid] = 0.0

    def _resend_due(self) -> None:
        if not self._repeat or not self.link.is_open:
            return
        now = time.monotonic()
        for vid, due in list(self._repeat.items()):
            if due <= now:
                e = self.journal.by_id[vid]
                log.debug("sample %s: verdict %d not acknowledged yet; sending it again",
                          e.sample_id, vid)
                self._send_verdict(e)

    # -- commands ----------------------------------------------------------------------------

    def _handle(self, f: Frame) -> None:
        ref = str(f.seq)
        if f.type not in P.LINE_TYPES:
            self._nak(ref, P.NAK_TYPE, f"unknown message type {f.type}")
            return
        problem = P.check_fields(f)
        if problem:
            self._nak(ref, *problem)
            return
        if f.type in P.NEEDS_SESSION and self._session is None:
            self._nak(ref, P.NAK_HELLO, "send HELLO first")
            return
        getattr(self, f"_on_{f.type.lower()}")(f, ref)

    def _on_hello(self, f: Frame, ref: str) -> None:
        common = P.parse_versions(f.fields[0]) & set(P.SUPPORTED_VERSIONS)
        if not common:
            self._nak(ref, P.NAK_VERSION, "head speaks version " +
                      ";".join(map(str, P.SUPPORTED_VERSIONS)))
            return
        self._session = max(common)
        log.info("line controller said HELLO; protocol version %d", self._session)
        self._send(P.ACK, ref, P.HELLO, str(self._session), f"{P.PRODUCT}/{__version__}")

    def _on_ping(self, f: Frame, ref: str) -> None:
        self._send(P.ACK, ref, P.PING, *f.fields)

    def _busy_job(self) -> _Job | None:
        return self._job or self._stuck

    def _on_status(self, f: Frame, ref: str) -> None:
        job = self._busy_job()
        if job is None:
            self._send(P.ACK, ref, P.STATUS, P.IDLE, P.NONE, "0", "0", str(len(self._repeat)))
        else:
            self._send(P.ACK, ref, P.STATUS, P.BUSY, job.sample_id, str(job.done),
                       str(job.total), str(len(self._repeat)))

    def _on_inspect(self, f: Frame, ref: str) -> None:
        sid = f.fields[0]
        if self._job is not None and self._job.sample_id == sid:
            self._send(P.ACK, ref, P.INSPECT, sid, P.RUNNING)
            return
        busy = self._busy_job()
        if busy is not None:
            self._send(P.BUSY, ref, busy.sample_id, str(busy.done), str(busy.total))
            return
        e = self.journal.lookup(sid)
        if e is not None and not (e.status == Status.ERROR.value and e.acked):
            log.info("sample %s: asked again; answering verdict %d from the journal", sid,
                     e.verdict_id)
            self._send(P.ACK, ref, P.INSPECT, sid, P.DONE)
            self._send_verdict(e)
            return
        self._send(P.ACK, ref, P.INSPECT, sid, P.STARTED)
        self._start(sid)

    def _on_abort(self, f: Frame, ref: str) -> None:
        sid = f.fields[0]
        job = self._job
        if job is None or job.sample_id != sid:
            self._nak(ref, P.NAK_IDLE, f"not inspecting {sid}")
            return
        self._send(P.ACK, ref, P.ABORT, sid)
        self._stop(job, "aborted by the line controller")

    def _on_result(self, f: Frame, ref: str) -> None:
        sid = f.fields[0]
        if self._job is not None and self._job.sample_id == sid:
            self._send(P.ACK, ref, P.RESULT, sid, P.RUNNING)
            return
        e = self.journal.lookup(sid)
        if e is None:
            self._nak(ref, P.NAK_UNKNOWN, f"no verdict for {sid}")
            return
        self._send_verdict(e)
        self._send(P.ACK, ref, P.RESULT, sid, P.DONE)

    def _on_ack(self, f: Frame, ref: str) -> None:
        # Only verdict acknowledgements mean something to the head: ACK,<seq>,VERDICT,<id>,<vid>
        if len(f.fields) != 4 or f.fields[1] != P.VERDICT or not f.fields[3].isdigit():
            return
        e = self.journal.by_id.get(int(f.fields[3]))
        if e is None or e.sample_id != f.fields[2] or e.acked:
            return
        self._repeat.pop(e.verdict_id, None)
        try:
            self.journal.record_ack(e)
        except JournalError as exc:
            log.error("%s", exc)
            self._send(P.ERROR, P.EV_JOURNAL, P.text_field(str(exc)))
        log.info("sample %s: verdict %d acknowledged by the line controller", e.sample_id,
                 e.verdict_id)

    # -- the inspection ----------------------------------------------------------------------

    def _start(self, sid: str) -> None:
        job = _Job(sid)

        def progress(done: int, total: int) -> None:
            self._events.put(("progress", job, int(done), int(total)))

        def work() -> None:
            try:
                v = self.inspector.inspect(sid, job.abort, progress)
            except BaseException as exc:  # whatever it was, the line gets an ERROR
                log.exception("sample %s: the inspection failed", sid)
                v = error(sid, f"inspection failed: {type(exc).__name__}: {exc}")
            self._events.put(("done", job, v))

        job.thread = threading.Thread(target=work, name=f"inspect-{sid}", daemon=True)
        self._job = job
        log.info("sample %s: inspecting", sid)
        job.thread.start()

    def _stop(self, job: _Job, reason: str) -> None:
        if job.stop_reason is None:
            job.stop_reason = reason
            job.stop_deadline = time.monotonic() + self.abort_grace_s
            job.abort.set()
            log.warning("sample %s: %s; stopping the inspection", job.sample_id, reason)

    def _poll_inspection(self) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            job = ev[1]
            if ev[0] == "progress":
                job.done, job.total = ev[2], ev[3]
                if job is self._job:
                    self._send(P.PROGRESS, job.sample_id, str(job.done), str(job.total))
            elif job is self._job:
                self._job = None
                self._finish(job, ev[2])
            elif job is self._stuck:
                self._stuck = None
                log.warning("sample %s: the inspection finally stopped; its late result was "
                            "dropped (ERROR was already sent)", job.sample_id)
        job = self._job
        if job is None:
            return
        now = time.monotonic()
        if job.stop_reason is None and now - job.started > self.inspect_timeout_s:
            self._stop(job, f"inspection timed out after {self.inspect_timeout_s:.0f} s")
        elif job.stop_reason is not None and now > job.stop_deadline:
            log.error("sample %s: the inspection did not stop within %.1f s; answering ERROR "
                      "and refusing new samples until it does", job.sample_id,
                      self.abort_grace_s)
            self._send(P.ERROR, P.EV_INSPECTOR, P.text_field(
                f"inspection of {job.sample_id} did not stop; head busy until it does"))
            self._job, self._stuck = None, job
            self._finish(job, error(job.sample_id, f"{job.stop_reason}; the inspection did not "
                                                   f"stop within {self.abort_grace_s:.1f} s"))

    def _checked(self, job: _Job, v: object) -> Verdict:
        if not isinstance(v, Verdict):
            return error(job.sample_id, f"the inspector returned {type(v).__name__}, "
                                        "not a verdict")
        if v.sample_id != job.sample_id:
            return error(job.sample_id, f"the inspector answered for sample {v.sample_id}")
        if job.stop_reason is not None and v.status is not Status.ERROR:
            # Stopped: whatever it found is not a complete inspection the line asked for.
            return error(job.sample_id, job.stop_reason, v.rois, v.engine, v.calibration,
                         v.timings_s)
        if job.stop_reason is not None and job.stop_reason not in v.reason:
            v.reason = f"{job.stop_reason}: {v.reason}"
        return v

    def _finish(self, job: _Job, result: object) -> None:
        v = self._checked(job, result)
        vid = self.journal.next_verdict_id()
        seq = self._next_seq()
        try:
            line = encode(seq, P.VERDICT, P.verdict_fields(v, vid))
            record = v.to_dict()
        except Exception as exc:  # a verdict we cannot carry is not an answer
            log.exception("sample %s: the verdict cannot be sent as it is", job.sample_id)
            v = error(job.sample_id, f"the verdict could not be encoded: {exc}")
            line, record = encode(seq, P.VERDICT, P.verdict_fields(v, vid)), v.to_dict()
        line = line.rstrip(b"\r\n").decode("ascii")
        try:
            e = self.journal.record_verdict(v.sample_id, vid, seq, line, record)
        except JournalError as exc:
            log.error("%s; the verdict is sent but will not survive a restart", exc)
            self._send(P.ERROR, P.EV_JOURNAL, P.text_field(str(exc)))
            e = self.journal.by_id[vid]
        log.info("%s (verdict %d)", v.summary(), vid)
        self._send_verdict(e)

    def abort_now(self, reason: str) -> None:
        """Tell the running inspection to stop at once, saying why (from a signal handler:
        only sets an event); the server loop itself ends at its next turn."""
        job = self._job
        if job is not None:
            job.abort.reason = reason  # the head's ERROR verdict says it (edge.head)
            job.abort.set()

    def shutdown(self) -> None:
        job = self._job
        if job is not None:
            job.abort.set()
            log.warning("sample %s: the server is stopping; the inspection is abandoned and the "
                        "line must ask again", job.sample_id)
        self.link.close()
        self.journal.close()


def serve(link: Link, inspector: Inspector, journal_path: str, stop: threading.Event,
          **options: float) -> None:
    """Open the journal, then serve the link until ``stop`` is set."""
    journal = Journal(journal_path)
    VerdictServer(link, inspector, journal, **options).run(stop)
