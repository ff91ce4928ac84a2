"""The inspection service every verdict link drives: one inspection at a time, each verdict
journaled once, delivered until the line acknowledges it.

What it owns: the inspector's worker thread, the job (progress, abort, timeout), the verdict
journal and the sequence numbers of journaled VERDICT frames. What it does not own: how a link
tells the line (ASCII frames, Modbus registers). A link calls :meth:`start`, :meth:`stop`,
:meth:`answer` and :meth:`acknowledge` from the one thread that owns the service, calls
:meth:`poll` on each turn of its loop, and hears back through four callbacks:

* ``on_progress(job)``: the current job reported RoIs done;
* ``on_verdict(entry)``: a verdict was journaled (or could not be, see ``on_journal_error``)
  and must now reach the line until acknowledged;
* ``on_stuck(job)``: the job did not stop within ``abort_grace_s``; its ERROR verdict follows
  at once and the service stays busy until the thread really ends;
* ``on_journal_error(exc)``: a journal record could not be written.

Choices:

* The journal record keeps the ASCII VERDICT frame (``docs/protocol.md``) whatever the link:
  the journal's format stays one, and a head moved from one link kind to another keeps its
  unacknowledged verdicts and its answers to repeated requests.
* Fail-safe: an exception from the inspector, a verdict for another sample, anything that is
  not a Verdict, a stop (abort, timeout) all give ERROR, never PASS.
* A restart mid-inspection leaves no job: the line asks again (the ASCII line re-sends
  INSPECT, a Modbus PLC writes START again) and the sample is inspected from the start; a
  sample whose verdict is journaled is answered from the journal (:meth:`answer`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.verdict import Status, Verdict, error
from firmware_bridge import codec
from firmware_bridge import protocol as P
from firmware_bridge.codec import encode
from firmware_bridge.inspector import Inspector
from firmware_bridge.journal import Entry, Journal, JournalError

log = logging.getLogger("glass-inspect.bridge")


@dataclass
class Job:
    sample_id: str
    abort: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    total: int = 0
    stop_reason: str | None = None  # why the head stopped it (abort, timeout)
    stop_deadline: float = 0.0
    thread: threading.Thread | None = None


def _ignore(*_: object) -> None:
    pass


class InspectionService:
    def __init__(self, inspector: Inspector, journal: Journal, *, abort_grace_s: float = 2.0,
                 inspect_timeout_s: float = 300.0) -> None:
        self.inspector = inspector
        self.journal = journal
        self.abort_grace_s = abort_grace_s
        self.inspect_timeout_s = inspect_timeout_s
        self.job: Job | None = None  # the inspection the line is waiting for
        self.stuck: Job | None = None  # an abandoned inspection whose thread still runs
        self.journal_problem: str | None = None  # the last journal write failed: why
        # serve --web: the page's state (firmware_bridge.web_state), told of each start and
        # progress here; verdicts reach it through listeners
        self.web = None
        self.on_progress = self.on_verdict = self.on_stuck = self.on_journal_error = _ignore
        # after the link: listen(entry, verdict, seconds the line waited) for each verdict
        # (metrics, the fleet); called in this service's thread, so each must not block
        self.listeners: list[Callable[[Entry, Verdict, float], None]] = []
        self._events: queue.Queue = queue.Queue()
        self._wake = threading.Event()
        self._seq = (journal.last_seq + 1) % (codec.MAX_SEQ + 1)

    def next_seq(self) -> int:
        """The next frame number of the head (ASCII frames and journaled verdicts share it)."""
        seq = self._seq
        self._seq = (seq + 1) % (codec.MAX_SEQ + 1)
        return seq

    def busy_job(self) -> Job | None:
        return self.job or self.stuck

    def answer(self, sample_id: str) -> Entry | None:
        """The journaled verdict a request for ``sample_id`` gets instead of an inspection:
        any but an ERROR the line acknowledged (ERROR says nothing about the glass, so the
        line may ask again and gets a new inspection and a new verdict id)."""
        e = self.journal.lookup(sample_id)
        if e is not None and not (e.status == Status.ERROR.value and e.acked):
            return e
        return None

    # -- the job -----------------------------------------------------------------------------

    def start(self, sid: str) -> Job:
        """Inspect ``sid`` in a worker thread; the caller checked that nothing is busy."""
        assert self.busy_job() is None, "one inspection at a time"
        job = Job(sid)

        def progress(done: int, total: int) -> None:
            self._post(("progress", job, int(done), int(total)))

        def work() -> None:
            try:
                v = self.inspector.inspect(sid, job.abort, progress)
            except BaseException as exc:  # whatever it was, the line gets an ERROR
                log.exception("sample %s: the inspection failed", sid)
                v = error(sid, f"inspection failed: {type(exc).__name__}: {exc}")
            self._post(("done", job, v))

        job.thread = threading.Thread(target=work, name=f"inspect-{sid}", daemon=True)
        self.job = job
        log.info("sample %s: inspecting", sid)
        if self.web is not None:
            self.web.inspecting(sid)
        job.thread.start()
        return job

    def stop(self, job: Job, reason: str) -> None:
        if job.stop_reason is None:
            job.stop_reason = reason
            job.stop_deadline = time.monotonic() + self.abort_grace_s
            job.abort.set()
            log.warning("sample %s: %s; stopping the inspection", job.sample_id, reason)

    def _post(self, event: tuple) -> None:
        self._events.put(event)
        self._wake.set()

    def wait(self, timeout: float) -> None:
        """Block until the worker reports something or ``timeout`` passed (for links whose
        loop has nothing else to block on)."""
        self._wake.wait(timeout)
        self._wake.clear()

    def poll(self) -> None:
        """Take what the worker reported; stop a job past its timeout; give up on one that
        does not stop."""
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            job = ev[1]
            if ev[0] == "progress":
                job.done, job.total = ev[2], ev[3]
                if job is self.job:
                    self.on_progress(job)
                    if self.web is not None:
                        self.web.progress(job.sample_id, job.done, job.total)
            elif job is self.job:
                self.job = None
                self.finish(job, ev[2])
            elif job is self.stuck:
                self.stuck = None
                log.warning("sample %s: the inspection finally stopped; its late result was "
                            "dropped (ERROR was already given)", job.sample_id)
        job = self.job
        if job is None:
            return
        now = time.monotonic()
        if job.stop_reason is None and now - job.started > self.inspect_timeout_s:
            self.stop(job, f"inspection timed out after {self.inspect_timeout_s:.0f} s")
        elif job.stop_reason is not None and now > job.stop_deadline:
            log.error("sample %s: the inspection did not stop within %.1f s; answering ERROR "
                      "and refusing new samples until it does", job.sample_id,
                      self.abort_grace_s)
            self.job, self.stuck = None, job
            self.on_stuck(job)
            self.finish(job, error(job.sample_id, f"{job.stop_reason}; the inspection did not "
                                                  f"stop within {self.abort_grace_s:.1f} s"))

    def _checked(self, job: Job, v: object) -> Verdict:
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

    def finish(self, job: Job, result: object) -> Entry:
        """Journal the verdict of ``job`` (fsynced) and hand it to the link."""
        v = self._checked(job, result)
        vid = self.journal.next_verdict_id()
        seq = self.next_seq()
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
            self.journal_problem = None
        except JournalError as exc:
            log.error("%s; the verdict is sent but will not survive a restart", exc)
            self.journal_problem = str(exc)
            self.on_journal_error(exc)
            e = self.journal.by_id[vid]
        log.info("%s (verdict %d)", v.summary(), vid)
        self.on_verdict(e)
        waited = time.monotonic() - job.started
        for listen in self.listeners:
            try:
                listen(e, v, waited)
            except Exception:  # what watches the head never takes a verdict back
                log.exception("a verdict listener failed; the verdict stands")
        return e

    def acknowledge(self, verdict_id: int, sample_id: str | None = None) -> Entry | None:
        """The line acknowledged verdict ``verdict_id`` (of ``sample_id``, when it says):
        the entry, now acknowledged in the journal, or None when there is no such
        unacknowledged verdict."""
        e = self.journal.by_id.get(verdict_id)
        if e is None or (sample_id is not None and e.sample_id != sample_id) or e.acked:
            return None
        try:
            self.journal.record_ack(e)
            self.journal_problem = None
        except JournalError as exc:
            log.error("%s", exc)
            self.journal_problem = str(exc)
            self.on_journal_error(exc)
        log.info("sample %s: verdict %d acknowledged by the line controller", e.sample_id,
                 e.verdict_id)
        return e

    # -- stopping ----------------------------------------------------------------------------

    def abort_now(self, reason: str) -> None:
        """Tell the running inspection to stop at once, saying why (from a signal handler:
        only sets an event)."""
        job = self.job
        if job is not None:
            job.abort.reason = reason  # the head's ERROR verdict says it (edge.head)
            job.abort.set()

    def shutdown(self) -> None:
        """Abandon the running inspection (the line must ask again after the restart) and
        close the journal."""
        job = self.job
        if job is not None:
            job.abort.set()
            log.warning("sample %s: the server is stopping; the inspection is abandoned and the "
                        "line must ask again", job.sample_id)
        self.journal.close()
