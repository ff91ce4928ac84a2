"""The verdict journal: every verdict the head gave, and which ones the line acknowledged.

One JSON object per line, appended and fsynced before anything else happens:

* ``{"rec": "verdict", "sample_id", "verdict_id", "seq", "line", "verdict", "utc"}`` is written
  *before* the VERDICT goes on the wire, so a verdict the line may have seen is always on disk;
  ``line`` is the exact frame (without its line ending) that is sent and re-sent, ``verdict``
  the head's full record (boxes, RoIs, timings) for traceability.
* ``{"rec": "ack", "sample_id", "verdict_id", "utc"}`` is written when the line acknowledges.

On start the file is replayed: verdicts without an ack are sent again (the line recognises a
repeat by sample id and verdict id), RESULT and a repeated INSPECT answer from it. So a
restart between a verdict and its acknowledgement neither loses nor doubles the verdict.

Choices:

* **Append-only, fsync per record, directory fsynced when the file is created**: a record the
  head acted on survives a power cut. The one exception to append-only: a torn last line (the
  power went while it was being written, so no frame was ever sent from it) is cut off when the
  journal is opened, with a warning naming the bytes, so the next record starts on a clean line.
* A damaged line in the middle (which fsync ordering should make impossible) is reported and
  skipped, never fatal: the head keeps answering the line.
* Verdict ids are ``1 + the highest in the file``, so they stay unique across restarts of one
  journal; an exclusive lock (flock, released by the kernel even on SIGKILL) keeps a second
  server off the same file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("glass-inspect.bridge")


class JournalError(OSError):
    """The journal cannot be opened or written; the message names the file."""


@dataclass
class Entry:
    sample_id: str
    verdict_id: int
    seq: int
    line: str  # the VERDICT frame, "$" to CRC
    status: str
    acked: bool = False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the record itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.by_sample: dict[str, Entry] = {}  # the latest verdict of each sample
        self.by_id: dict[int, Entry] = {}
        self.torn_bytes = b""  # what a torn last line held, when there was one
        self.damaged_lines: list[int] = []  # 1-based line numbers skipped as unreadable
        self.last_seq = -1
        self._next_id = 1
        created = not self.path.exists()
        try:
            if not self.path.parent.is_dir():
                raise FileNotFoundError(f"folder {self.path.parent} does not exist")
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open the verdict journal {self.path}: "
                               f"{exc.strerror or exc}") from None
        try:
            # Two servers appending to one journal would give out the same verdict ids.
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise JournalError(f"the verdict journal {self.path} is in use by another serve "
                               "process") from None
        if created:
            _fsync_dir(self.path.parent)
        self._replay()

    # -- reading ---------------------------------------------------------------------------

    def _replay(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self.torn_bytes = data[end:]
            log.warning("verdict journal %s: the last record was cut short (power loss while "
                        "writing?); dropping its %d byte(s): %r", self.path,
                        len(self.torn_bytes), self.torn_bytes[:120])
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        for n, raw in enumerate(data[:end].splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                self._apply(rec)
            except (ValueError, KeyError, TypeError):
                self.damaged_lines.append(n)
                log.error("verdict journal %s: line %d is unreadable and was skipped: %r",
                          self.path, n, raw[:120])

    def _apply(self, rec: dict) -> None:
        kind = rec["rec"]
        if kind == "verdict":
            e = Entry(str(rec["sample_id"]), int(rec["verdict_id"]), int(rec["seq"]),
                      str(rec["line"]), str(rec["verdict"]["status"]))
            self.by_sample[e.sample_id] = e
            self.by_id[e.verdict_id] = e
            self._next_id = max(self._next_id, e.verdict_id + 1)
            self.last_seq = e.seq
        elif kind == "ack":
            e = self.by_id.get(int(rec["verdict_id"]))
            if e is not None and e.sample_id == rec["sample_id"]:
                e.acked = True
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def lookup(self, sample_id: str) -> Entry | None:
        return self.by_sample.get(sample_id)

    def unacknowledged(self) -> list[Entry]:
        return sorted((e for e in self.by_id.values() if not e.acked),
                      key=lambda e: e.verdict_id)

    def next_verdict_id(self) -> int:
        return self._next_id

    # -- writing ---------------------------------------------------------------------------

    def _append(self, rec: dict) -> None:
        data = (json.dumps(rec, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"only {written} of {len(data)} bytes were written")
            os.fsync(self._fd)
        except OSError as exc:
            raise JournalError(f"cannot write the verdict journal {self.path}: "
                               f"{exc.strerror or exc}") from None

    def record_verdict(self, sample_id: str, verdict_id: int, seq: int, line: str,
                       verdict: dict) -> Entry:
        """Write the verdict to disk; only then may it be sent."""
        e = Entry(sample_id, verdict_id, seq, line, str(verdict["status"]))
        self._next_id = max(self._next_id, verdict_id + 1)
        try:
            self._append({"rec": "verdict", "sample_id": sample_id, "verdict_id": verdict_id,
                          "seq": seq, "line": line, "verdict": verdict, "utc": _now()})
        finally:
            # Also remembered when the disk failed: the line still gets it, and RESULT works
            # until a restart.
            self.by_sample[sample_id] = e
            self.by_id[verdict_id] = e
            self.last_seq = seq
        return e

    def record_ack(self, e: Entry) -> None:
        try:
            self._append({"rec": "ack", "sample_id": e.sample_id, "verdict_id": e.verdict_id,
                          "utc": _now()})
        finally:
            e.acked = True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
