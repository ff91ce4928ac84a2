"""The head's end of the verdict link (``glass-inspect serve``).

Structure: one loop owns the port, the decoder, the inspection service
(:mod:`firmware_bridge.inspection`: the job, the journal) and every write; the inspection runs
in one worker thread that only talks back through the service's queue (progress, result). So
no lock guards the port or the journal, and the loop stays responsive (PING, STATUS, ABORT,
BUSY) while a sample is inspected. This module is the ASCII protocol only; the job, the
journaling and the acknowledgement are the service's, shared with the other links.

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
import threading
import time

from edge import __version__
from firmware_bridge import protocol as P
from firmware_bridge.codec import Decoder, Frame, Reject, encode
from firmware_bridge.inspection import InspectionService, Job
from firmware_bridge.inspector import Inspector
from firmware_bridge.journal import Entry, Journal, JournalError
from firmware_bridge.port import Link, sim_port

log = logging.getLogger("glass-inspect.bridge")

# The loop takes the inspection's result between reads, so a finished verdict waits for the
# read to time out: 10 ms gave a p99 link overhead of 26 ms, 3 ms stays under the 20 ms target
# (benchmarks/links.py) for about 1.5 % of one core while idle.
READ_TIMEOUT_S = 0.003


class VerdictServer:
    def __init__(self, link: Link, inspector: Inspector, journal: Journal, *,
                 repeat_s: float = 1.0, abort_grace_s: float = 2.0,
                 inspect_timeout_s: float = 300.0, heartbeat=None) -> None:
        self.link = link
        # written from this loop (firmware_bridge.health), so a stuck loop stops beating
        self.heartbeat = heartbeat
        self.inspector = inspector
        self.journal = journal
        self.service = InspectionService(inspector, journal, abort_grace_s=abort_grace_s,
                                         inspect_timeout_s=inspect_timeout_s)
        self.service.on_progress = self._on_progress
        self.service.on_verdict = self._send_verdict
        self.service.on_stuck = self._on_stuck
        self.service.on_journal_error = self._on_journal_error
        self.repeat_s = repeat_s
        self.decoder = Decoder()
        self._session: int | None = None  # agreed protocol version; None until HELLO
        self._generation = 0
        self._repeat: dict[int, float] = {}  # verdict id -> when to send it next
        for e in journal.unacknowledged():
            self._repeat[e.verdict_id] = 0.0

    def describe(self) -> str:
        return f"{self.link.url} at {self.link.baud} baud"

    # -- sending -----------------------------------------------------------------------------

    def _send(self, type_: str, *fields: str) -> None:
        self.link.write(encode(self.service.next_seq(), type_, fields))

    def _nak(self, ref: str, code: str, text: str) -> None:
        self._send(P.NAK, ref, code, P.text_field(text))

    def _send_verdict(self, e: Entry) -> None:
        self.link.write(e.line.encode("ascii") + b"\r\n")
        if not e.acked:  # sent or not (port down), the next try is one interval away
            self._repeat[e.verdict_id] = time.monotonic() + self.repeat_s

    def _on_progress(self, job: Job) -> None:
        self._send(P.PROGRESS, job.sample_id, str(job.done), str(job.total))

    def _on_stuck(self, job: Job) -> None:
        self._send(P.ERROR, P.EV_INSPECTOR, P.text_field(
            f"inspection of {job.sample_id} did not stop; head busy until it does"))

    def _on_journal_error(self, exc: JournalError) -> None:
        self._send(P.ERROR, P.EV_JOURNAL, P.text_field(str(exc)))

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
        self.service.poll()
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

    def _on_status(self, f: Frame, ref: str) -> None:
        job = self.service.busy_job()
        if job is None:
            self._send(P.ACK, ref, P.STATUS, P.IDLE, P.NONE, "0", "0", str(len(self._repeat)))
        else:
            self._send(P.ACK, ref, P.STATUS, P.BUSY, job.sample_id, str(job.done),
                       str(job.total), str(len(self._repeat)))

    def _on_inspect(self, f: Frame, ref: str) -> None:
        sid = f.fields[0]
        job = self.service.job
        if job is not None and job.sample_id == sid:
            self._send(P.ACK, ref, P.INSPECT, sid, P.RUNNING)
            return
        busy = self.service.busy_job()
        if busy is not None:
            self._send(P.BUSY, ref, busy.sample_id, str(busy.done), str(busy.total))
            return
        e = self.service.answer(sid)
        if e is not None:
            log.info("sample %s: asked again; answering verdict %d from the journal", sid,
                     e.verdict_id)
            self._send(P.ACK, ref, P.INSPECT, sid, P.DONE)
            self._send_verdict(e)
            return
        self._send(P.ACK, ref, P.INSPECT, sid, P.STARTED)
        self.service.start(sid)

    def _on_abort(self, f: Frame, ref: str) -> None:
        sid = f.fields[0]
        job = self.service.job
        if job is None or job.sample_id != sid:
            self._nak(ref, P.NAK_IDLE, f"not inspecting {sid}")
            return
        self._send(P.ACK, ref, P.ABORT, sid)
        self.service.stop(job, "aborted by the line controller")

    def _on_result(self, f: Frame, ref: str) -> None:
        sid = f.fields[0]
        job = self.service.job
        if job is not None and job.sample_id == sid:
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
        e = self.service.acknowledge(int(f.fields[3]), f.fields[2])
        if e is not None:
            self._repeat.pop(e.verdict_id, None)

    # -- stopping ----------------------------------------------------------------------------

    def abort_now(self, reason: str) -> None:
        """Tell the running inspection to stop at once, saying why (from a signal handler:
        only sets an event); the server loop itself ends at its next turn."""
        self.service.abort_now(reason)

    def shutdown(self) -> None:
        self.link.close()
        self.service.shutdown()


def open_link(settings, inspector: Inspector, journal: Journal, *, heartbeat=None,
              repeat_s: float = 1.0, abort_grace_s: float = 2.0,
              inspect_timeout_s: float = 300.0, reopen_s: float = 0.5) -> VerdictServer:
    """The ASCII link of ``settings`` (``[verdict_link]``, kind "ascii"):
    :mod:`firmware_bridge.links`. ``port = "sim"`` makes a pseudo-terminal and prints its
    path."""
    url, opener = settings.port, None
    if url == "sim":
        opener, url = sim_port(timeout=READ_TIMEOUT_S)
        print(f"line controller port: {url}  (e.g. glass-inspect line-sim --port {url})",
              flush=True)
    link = Link(url, settings.baud, name="line controller port", reopen_s=reopen_s,
                opener=opener, read_timeout=READ_TIMEOUT_S)
    server = VerdictServer(link, inspector, journal, repeat_s=repeat_s,
                           abort_grace_s=abort_grace_s, inspect_timeout_s=inspect_timeout_s,
                           heartbeat=heartbeat)
    return server


def serve(link: Link, inspector: Inspector, journal_path: str, stop: threading.Event,
          **options: float) -> None:
    """Open the journal, then serve the link until ``stop`` is set."""
    journal = Journal(journal_path)
    VerdictServer(link, inspector, journal, **options).run(stop)
