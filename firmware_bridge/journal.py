"""The verdict journal: every verdict the head gave, and which ones the line acknowledged.

One JSON object per line, appended and fsynced before anything else happens:

* ``{"rec": "verdict", "sample_id", "verdict_id", "seq", "line", "verdict", "utc"}`` is written
  *before* the VERDICT goes on the wire, so a verdict the line may have seen is always on disk;
  ``line`` is the exact frame (without its line ending) that is sent and re-sent, ``verdict``
  the head's full record (boxes, RoIs, timings) for traceability.
* ``{"rec": "ack", "sample_id", "verdict_id", "utc"}`` is written when the line acknowledges.
* ``{"rec": "rotated", "rotation", "next_verdict_id", "last_seq", "carried_verdicts",
  "carried_bytes", "utc"}`` is the first line of a file that rotation started (below).

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
* Verdict ids are ``1 + the highest in the file`` (or in its ``rotated`` record), so they stay
  unique and increasing across restarts and rotations of one journal; an exclusive lock
  (flock on ``NAME.lock``, released by the kernel even on SIGKILL) keeps a second server off the
  journal. The lock is on its own file because rotation replaces ``NAME`` by another file.

Rotation (a head runs for months; ``max_bytes``, default 64 MiB, and ``keep``, default 4):

* Files: ``NAME`` the journal, the only file ever replayed; ``NAME.1`` .. ``NAME.<keep>`` the
  old ones, newest first, for traceability only; ``NAME.lock``; ``NAME.new`` and ``NAME.old``
  only while a rotation runs.
* When ``NAME`` has passed ``max_bytes`` (checked after each record), it is rotated:

  1. ``NAME.new`` is written and fsynced: the ``rotated`` record (next verdict id, last seq),
     then, in verdict id order, every unacknowledged verdict and the latest verdict of the
     most recent samples (``recent``, default 1000, and at most a quarter of ``max_bytes``)
     with their ack records, so RESULT and a repeated INSPECT of recent samples still answer
     the same verdict. Each verdict record is copied byte for byte.
  2. Old files move up: ``NAME.<i>`` -> ``NAME.<i+1>`` from the first free number down, so
     ``NAME.1`` is free; the oldest is dropped only when all ``keep`` numbers are taken
     (numbers past ``keep`` are dropped too).
  3. ``NAME.old`` is made a hard link to ``NAME`` (a copy, fsynced, where the filesystem has
     no hard links); the folder is fsynced.
  4. **Commit**: ``rename(NAME.new, NAME)``, one atomic step; the folder is fsynced.
  5. ``rename(NAME.old, NAME.1)``; the folder is fsynced.

  In memory, the journal then holds exactly what a replay of the new file gives, so the head
  behaves the same whether or not it restarts after a rotation, and memory stays bounded.
* Crash analysis (SIGKILL, or a power cut, between any two steps). ``NAME`` always exists and
  always holds every verdict and ack that matter: before the commit it is the old file, which
  has every record; after it, the new one, fsynced in full before it was renamed into place.
  Nothing is appended while a rotation runs (one thread owns the journal). Whether the commit
  happened is told by ``NAME.new``, which exists from step 1 up to the commit only. So on
  open, before the replay: ``NAME.new`` present -> remove it and ``NAME.old`` (the rotation is
  undone; ``NAME`` is the complete old file); else ``NAME.old`` present -> it is the complete
  old file (on disk before the commit), renamed to ``NAME.1`` (step 5 finished). A power cut
  cannot reorder these: each step's folder fsync comes before the next. Only ``NAME`` is
  replayed, so a verdict carried into the new file and also in ``NAME.1`` is never read twice
  (and the replay keys verdicts by verdict id anyway): nothing lost, nothing sent twice.
  Old files moved in step 2 of an undone rotation leave ``NAME.1`` free, and the next
  rotation fills that gap instead of dropping the oldest. A rotation that fails while the head
  runs (disk full) is logged and undone the same way, and tried again after another eighth
  of ``max_bytes``; the record that triggered it is already safe in ``NAME``.
* A file that is mostly carried-over records is not rotated again until half of ``max_bytes``
  was added after them, so a pile of unacknowledged verdicts cannot make every record rotate.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("glass-inspect.bridge")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 4
DEFAULT_RECENT = 1000


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
    ack_utc: str | None = field(default=None, repr=False, compare=False)
    # where its verdict record lies in the current file (offset, length), or the record itself
    # when it could not be written: what rotation copies into the next file
    pos: tuple[int, int] | None = field(default=None, repr=False, compare=False)
    raw: bytes | None = field(default=None, repr=False, compare=False)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _encode(rec: dict) -> bytes:
    return (json.dumps(rec, separators=(",", ":")) + "\n").encode("utf-8")


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "the write made no progress")
        view = view[n:]


class Journal:
    def __init__(self, path: str | Path, *, max_bytes: int | None = DEFAULT_MAX_BYTES,
                 keep: int = DEFAULT_KEEP, recent: int = DEFAULT_RECENT) -> None:
        """Open (or create) the journal at ``path`` and replay it.

        ``max_bytes``: rotate the file once it has grown past this (0 or None: never);
        ``keep``: how many old files to keep (``NAME.1`` .. ``NAME.<keep>``);
        ``recent``: how many recent acknowledged verdicts a rotation carries into the new file
        (besides every unacknowledged one), so RESULT and a repeated INSPECT still find them.
        """
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
        if keep < 0 or recent < 0:
            raise ValueError(f"keep and recent must be 0 or more, got {keep} and {recent}")
        self.path = Path(path)
        self.max_bytes = max_bytes or 0
        self.keep = keep
        self.recent = recent
        self.by_sample: dict[str, Entry] = {}  # the latest verdict of each sample
        self.by_id: dict[int, Entry] = {}
        self.torn_bytes = b""  # what a torn last line held, when there was one
        self.damaged_lines: list[int] = []  # 1-based line numbers skipped as unreadable
        self.last_seq = -1
        self.rotations = 0  # how many times this journal was rotated, over its whole life
        self._next_id = 1
        self._last_vid = 0  # the verdict id last_seq belongs to
        self._size = 0  # bytes in the current file
        self._base = 0  # bytes the last rotation carried into it
        self._retry_at = 0  # after a failed rotation: do not try again before this size
        self._fd = self._lock_fd = -1
        # Tests only: called with the name of each rotation step once it is done.
        self._rotation_hook: Callable[[str], None] | None = None
        self._new = self.path.with_name(self.path.name + ".new")
        self._old = self.path.with_name(self.path.name + ".old")
        if not self.path.parent.is_dir():
            raise JournalError(f"cannot open the verdict journal {self.path}: "
                               f"folder {self.path.parent} does not exist")
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open the verdict journal {self.path}: "
                               f"{exc.strerror or exc} ({lock})") from None
        try:
            # Two servers appending to one journal would give out the same verdict ids.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise JournalError(f"the verdict journal {self.path} is in use by another serve "
                               "process") from None
        try:
            changed = self._clean_up_rotation()
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            self.close()
            raise JournalError(f"cannot open the verdict journal {self.path}: "
                               f"{exc.strerror or exc}") from None
        if created or changed:
            _fsync_dir(self.path.parent)
        self._replay()
        self._maybe_rotate()

    def archive(self, n: int) -> Path:
        """The n-th old file (1 = the newest)."""
        return self.path.with_name(f"{self.path.name}.{n}")

    # -- reading ---------------------------------------------------------------------------

    def _clean_up_rotation(self) -> bool:
        """Undo or finish a rotation that was interrupted; True if a file was touched."""
        changed = False
        if os.path.lexists(self._new):  # before its commit: NAME is the complete old file
            log.warning("verdict journal %s: removing %s, left by a rotation that did not "
                        "finish (the journal itself holds everything)", self.path, self._new)
            os.unlink(self._new)
            if os.path.lexists(self._old):
                os.unlink(self._old)  # NAME itself, or a copy of it
            changed = True
        elif os.path.lexists(self._old):  # after its commit: the old file only lacks its name
            log.warning("verdict journal %s: a rotation was interrupted after it finished; "
                        "%s becomes %s", self.path, self._old, self.archive(1))
            os.replace(self._old, self.archive(1))
            changed = True
        first = self.archive(1)
        with contextlib.suppress(OSError):
            if os.path.samefile(first, self.path):  # cannot happen, but never keep it
                os.unlink(first)
                changed = True
        return changed

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
        self._size = end
        pos = n = 0
        while pos < end:
            stop = data.index(b"\n", pos) + 1
            raw = data[pos:stop]
            n += 1
            if raw.strip():
                try:
                    self._apply(json.loads(raw), (pos, stop - pos))
                except (ValueError, KeyError, TypeError):
                    self.damaged_lines.append(n)
                    log.error("verdict journal %s: line %d is unreadable and was skipped: %r",
                              self.path, n, raw[:120])
            pos = stop

    def _apply(self, rec: dict, pos: tuple[int, int]) -> None:
        kind = rec["rec"]
        if kind == "verdict":
            e = Entry(str(rec["sample_id"]), int(rec["verdict_id"]), int(rec["seq"]),
                      str(rec["line"]), str(rec["verdict"]["status"]), pos=pos)
            old = self.by_id.get(e.verdict_id)
            if old is not None and old.sample_id == e.sample_id:
                old.pos = pos  # the same record twice: one verdict, acked or not
                return
            self.by_sample[e.sample_id] = e
            self.by_id[e.verdict_id] = e
            self._next_id = max(self._next_id, e.verdict_id + 1)
            if e.verdict_id >= self._last_vid:
                self.last_seq, self._last_vid = e.seq, e.verdict_id
        elif kind == "ack":
            e = self.by_id.get(int(rec["verdict_id"]))
            if e is not None and e.sample_id == rec["sample_id"]:
                e.acked = True
                e.ack_utc = rec.get("utc")
        elif kind == "rotated":
            next_id, last_seq = int(rec["next_verdict_id"]), int(rec["last_seq"])
            self.rotations = max(self.rotations, int(rec["rotation"]))
            self._next_id = max(self._next_id, next_id)
            if next_id - 1 >= self._last_vid:
                self.last_seq, self._last_vid = last_seq, next_id - 1
            self._base = pos[0] + pos[1] + int(rec["carried_bytes"])
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

    def _write(self, data: bytes) -> tuple[int, int]:
        """Append one record and fsync it; where it lies in the file."""
        start = self._size
        try:
            written = 0
            while written < len(data):
                try:
                    n = os.write(self._fd, data[written:])
                except OSError as exc:  # the kernel's reason: ENOSPC (disk full), EIO...
                    with contextlib.suppress(OSError):  # the next record on a clean line
                        os.ftruncate(self._fd, start)
                    raise OSError(exc.errno, f"{exc.strerror} (only {written} of {len(data)} "
                                             "bytes of the record were written)") from None
                if n == 0:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, start)
                    raise OSError(f"only {written} of {len(data)} bytes were written")
                written += n
            self._size = start + len(data)
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._size = os.fstat(self._fd).st_size
            raise JournalError(f"cannot write the verdict journal {self.path}: "
                               f"{exc.strerror or exc}") from None
        return start, len(data)

    def record_verdict(self, sample_id: str, verdict_id: int, seq: int, line: str,
                       verdict: dict) -> Entry:
        """Write the verdict to disk; only then may it be sent."""
        e = Entry(sample_id, verdict_id, seq, line, str(verdict["status"]))
        self._next_id = max(self._next_id, verdict_id + 1)
        data = _encode({"rec": "verdict", "sample_id": sample_id, "verdict_id": verdict_id,
                        "seq": seq, "line": line, "verdict": verdict, "utc": _now()})
        try:
            e.pos = self._write(data)
        except JournalError:
            e.raw = data  # a rotation that works writes it after all
            raise
        finally:
            # Also remembered when the disk failed: the line still gets it, and RESULT works
            # until a restart.
            self.by_sample[sample_id] = e
            self.by_id[verdict_id] = e
            self.last_seq, self._last_vid = seq, verdict_id
        self._maybe_rotate()
        return e

    def record_ack(self, e: Entry) -> None:
        utc = _now()
        try:
            self._write(_encode({"rec": "ack", "sample_id": e.sample_id,
                                 "verdict_id": e.verdict_id, "utc": utc}))
        finally:
            e.acked, e.ack_utc = True, utc
        self._maybe_rotate()

    # -- rotation --------------------------------------------------------------------------

    def _maybe_rotate(self) -> None:
        if (not self.max_bytes or self._size < self.max_bytes or self._size < self._retry_at
                or self._size - self._base < self.max_bytes // 2):
            return
        try:
            self._rotate()
        except Exception as exc:  # never fatal: the record is safe in NAME, which goes on
            self._retry_at = self._size + max(1, self.max_bytes // 8)
            log.error("verdict journal %s: rotation failed (%s); the journal goes on in the "
                      "same file and rotation is tried again later", self.path,
                      getattr(exc, "strerror", None) or exc,
                      exc_info=not isinstance(exc, OSError))

    def _step(self, name: str) -> None:
        if self._rotation_hook is not None:
            self._rotation_hook(name)

    def _record_of(self, e: Entry) -> bytes:
        """The verdict record of ``e`` as it was written."""
        if e.raw is not None:
            return e.raw
        if e.pos is not None:
            raw = os.pread(self._fd, e.pos[1], e.pos[0])
            try:
                rec = json.loads(raw)
                if (raw.endswith(b"\n") and rec["rec"] == "verdict"
                        and rec["verdict_id"] == e.verdict_id
                        and rec["sample_id"] == e.sample_id):
                    return raw
            except (ValueError, KeyError, TypeError):
                pass
        log.warning("verdict journal %s: the record of verdict %d is not where it was "
                    "written; carrying what is known of it", self.path, e.verdict_id)
        return _encode({"rec": "verdict", "sample_id": e.sample_id, "verdict_id": e.verdict_id,
                        "seq": e.seq, "line": e.line,
                        "verdict": {"sample_id": e.sample_id, "status": e.status},
                        "utc": _now()})

    def _carried(self) -> list[tuple[Entry, bytes]]:
        """Every unacknowledged verdict, and the latest of the most recent samples."""
        carry = {e.verdict_id: (e, self._record_of(e)) for e in self.by_id.values()
                 if not e.acked}
        budget = self.max_bytes // 4
        recent = sorted((e for e in self.by_sample.values() if e.acked),
                        key=lambda e: e.verdict_id, reverse=True)[:self.recent]
        for e in recent:
            raw = self._record_of(e)
            budget -= len(raw) + 100  # with its ack
            if budget < 0:
                break
            carry[e.verdict_id] = (e, raw)
        return [carry[vid] for vid in sorted(carry)]

    def _rotate(self) -> None:
        carried = self._carried()
        body, where, size = [], {}, 0
        for e, raw in carried:
            where[e.verdict_id] = (size, len(raw))
            body.append(raw)
            size += len(raw)
            if e.acked:
                body.append(_encode({"rec": "ack", "sample_id": e.sample_id,
                                     "verdict_id": e.verdict_id, "utc": e.ack_utc or _now()}))
                size += len(body[-1])
        body_bytes = b"".join(body)
        header = _encode({"rec": "rotated", "rotation": self.rotations + 1,
                          "next_verdict_id": self._next_id, "last_seq": self.last_seq,
                          "carried_verdicts": len(carried), "carried_bytes": len(body_bytes),
                          "utc": _now()})
        log.info("verdict journal %s: rotating at %d bytes; %d verdict(s) carried over, %d of "
                 "them awaiting acknowledgement", self.path, self._size, len(carried),
                 sum(not e.acked for e, _ in carried))
        self._clean_up_rotation()  # what an earlier failed one left, if anything
        # 1. the next file, complete and on disk
        fd = os.open(self._new, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            self._step("new-created")
            _write_all(fd, header + body_bytes)
            os.fsync(fd)
            self._step("new-written")
            self._drop_archives_past_keep()
            if self.keep:
                self._shift_archives()  # 2. old files up, NAME.1 free
                self._keep_current()  # 3. NAME.old = NAME
            _fsync_dir(self.path.parent)
            self._step("folder-synced")
            os.replace(self._new, self.path)  # 4. commit
        except BaseException:  # undone: NAME goes on as it was
            os.close(fd)
            for leftover in (self._new, self._old):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
            raise
        self._step("committed")
        os.close(self._fd)
        self._fd = fd
        # What a replay of the new file gives.
        self.rotations += 1
        self._size = self._base = len(header) + len(body_bytes)
        self._retry_at = 0
        self.by_id, self.by_sample = {}, {}
        for e, _ in carried:
            off, length = where[e.verdict_id]
            e.pos, e.raw = (len(header) + off, length), None
            self.by_id[e.verdict_id] = e
            self.by_sample[e.sample_id] = e
        _fsync_dir(self.path.parent)
        self._step("folder-synced-again")
        if self.keep:  # 5. the old file gets its name
            try:
                os.replace(self._old, self.archive(1))
            except OSError as exc:
                log.error("verdict journal %s: cannot rename %s to %s (%s); tried again at the "
                          "next rotation or start", self.path, self._old, self.archive(1),
                          exc.strerror or exc)
                return
            self._step("archived")
            _fsync_dir(self.path.parent)
            self._step("folder-synced-last")

    def _drop_archives_past_keep(self) -> None:
        """Old files numbered past ``keep`` (it was lowered) go."""
        pattern = re.escape(self.path.name) + r"\.(\d+)"
        for p in sorted(self.path.parent.iterdir()):
            m = re.fullmatch(pattern, p.name)
            if m and int(m.group(1)) > self.keep:
                os.unlink(p)
                self._step(f"dropped {p.name}")

    def _shift_archives(self) -> None:
        free = next((n for n in range(1, self.keep + 1)
                     if not os.path.lexists(self.archive(n))), None)
        if free is None:
            os.unlink(self.archive(self.keep))
            self._step(f"dropped {self.archive(self.keep).name}")
            free = self.keep
        for n in range(free - 1, 0, -1):
            os.replace(self.archive(n), self.archive(n + 1))
            _fsync_dir(self.path.parent)  # in order, so a power cut cannot skip one
            self._step(f"moved {self.archive(n).name} to {self.archive(n + 1).name}")

    def _keep_current(self) -> None:
        """``NAME.old`` becomes the current file: a hard link, else a copy, on disk."""
        try:
            os.link(self.path, self._old)
            self._step("linked")
            return
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                                 errno.ENOSYS):
                raise
        shutil.copyfile(self.path, self._old)
        cfd = os.open(self._old, os.O_RDONLY)
        try:
            os.fsync(cfd)
        finally:
            os.close(cfd)
        self._step("copied")

    def close(self) -> None:
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
