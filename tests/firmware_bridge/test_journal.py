import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from firmware_bridge.journal import Journal, JournalError


def _verdict(j, sid, vid=None):
    vid = vid or j.next_verdict_id()
    return j.record_verdict(sid, vid, vid * 10, f"$%d,VERDICT,{sid}*0000" % (vid * 10),
                            {"status": "PASS", "sample_id": sid})


def test_replay_gives_verdicts_acks_and_next_id(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    a, b = _verdict(j, "A"), _verdict(j, "B")
    j.record_ack(a)
    j.close()
    j = Journal(path)
    assert [e.sample_id for e in j.unacknowledged()] == ["B"]
    assert j.lookup("A").acked and j.lookup("A").line == a.line
    assert j.lookup("B").verdict_id == b.verdict_id == 2
    assert j.next_verdict_id() == 3 and j.last_seq == 20
    assert j.lookup("C") is None and not j.torn_bytes and not j.damaged_lines


def test_torn_last_line_is_reported_dropped_and_appending_goes_on(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    _verdict(j, "A")
    j.close()
    with open(path, "ab") as f:
        f.write(b'{"rec":"verdict","sample_id":"B","verd')  # the power went here
    j = Journal(path)
    assert j.torn_bytes.startswith(b'{"rec"') and "cut short" in caplog.text
    assert [e.sample_id for e in j.unacknowledged()] == ["A"]
    _verdict(j, "C")
    j.close()
    j = Journal(path)
    assert sorted(j.by_sample) == ["A", "C"] and not j.torn_bytes and not j.damaged_lines


def test_damaged_middle_line_is_skipped_not_fatal(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    _verdict(j, "A")
    j.close()
    with open(path, "ab") as f:
        f.write(b"\x00\x00garbage\n")
    j = Journal(path)
    _verdict(j, "B")
    j.close()
    j = Journal(path)
    assert sorted(j.by_sample) == ["A", "B"] and j.damaged_lines == [2]
    assert "unreadable" in caplog.text


def test_unusable_place_is_one_clear_error(tmp_path):
    with pytest.raises(JournalError, match="does not exist"):
        Journal(tmp_path / "nowhere" / "j.jsonl")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(JournalError, match="cannot open the verdict journal"):
            Journal(ro / "j.jsonl")


def test_one_server_per_journal(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    with pytest.raises(JournalError, match="in use by another serve process"):
        Journal(tmp_path / "j.jsonl")
    j.close()
    Journal(tmp_path / "j.jsonl").close()


# -- rotation --------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SMALL = 4096  # bytes: a rotation every ~25 records of _verdict's size


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def archives(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir()
                  if p.name.startswith(path.name + ".") and p.name[len(path.name) + 1:].isdigit())


def state(j: Journal) -> tuple:
    """What the server sees of a journal."""
    return ({vid: (e.sample_id, e.seq, e.line, e.status, e.acked) for vid, e in j.by_id.items()},
            {sid: e.verdict_id for sid, e in j.by_sample.items()}, j.next_verdict_id(),
            j.last_seq)


def test_rotation_keeps_unacknowledged_recent_and_ids(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, max_bytes=SMALL, keep=2, recent=5)
    given, pending = [], set()
    for i in range(200):
        e = _verdict(j, f"S{i}")
        given.append(e.verdict_id)
        if i % 17 == 3:
            pending.add(e.verdict_id)  # left unacknowledged: the line never answered
        else:
            j.record_ack(e)
        assert path.stat().st_size < 2 * SMALL  # rotated, never much past max_bytes
    last = _verdict(j, "LAST")  # the record past max_bytes may itself be unacknowledged
    pending.add(last.verdict_id)
    given.append(last.verdict_id)
    assert j.rotations >= 5 and archives(path) == ["j.jsonl.1", "j.jsonl.2"]
    assert given == sorted(set(given)) == list(range(1, 202))
    assert {e.verdict_id for e in j.unacknowledged()} == pending
    running = state(j)
    j.close()

    j = Journal(path, max_bytes=SMALL, keep=2, recent=5)
    assert state(j) == running  # a restart after rotation sees what the running head saw
    assert {e.verdict_id for e in j.unacknowledged()} == pending
    recs = records(path)
    assert recs[0]["rec"] == "rotated" and recs[0]["rotation"] == j.rotations
    vids = [r["verdict_id"] for r in recs if r["rec"] == "verdict"]
    assert vids == sorted(set(vids))  # each once, in order
    for i in range(195, 200):  # the most recent samples still answer RESULT / INSPECT
        assert j.lookup(f"S{i}").acked and j.lookup(f"S{i}").line.startswith("$")
    assert j.lookup("S150") is None  # older ones are only in the old files
    assert j.next_verdict_id() == 202 and _verdict(j, "NEXT").verdict_id == 202
    # the old files and the journal hold every verdict since the oldest kept file began
    files = [tmp_path / n for n in ("j.jsonl.2", "j.jsonl.1", "j.jsonl")]
    head, rest = files[0].read_bytes().split(b"\n", 1)
    header = json.loads(head)
    assert header["rec"] == "rotated"
    since = json.loads(rest[header["carried_bytes"]:].split(b"\n", 1)[0])["verdict_id"]
    vids = {r["verdict_id"] for f in files for r in records(f) if r["rec"] == "verdict"}
    assert set(range(since, 203)) <= vids
    j.close()


def test_next_id_and_seq_survive_a_rotation_that_carries_nothing(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, max_bytes=SMALL, keep=1, recent=0)
    while j.rotations == 0:
        j.record_ack(_verdict(j, f"S{j.next_verdict_id()}"))
    nxt, seq = j.next_verdict_id(), j.last_seq
    j.close()
    assert [r["rec"] for r in records(path)] == ["rotated"]
    j = Journal(path, max_bytes=SMALL, keep=1, recent=0)
    assert (j.next_verdict_id(), j.last_seq, j.by_id) == (nxt, seq, {})
    j.close()


def test_keep_caps_the_old_files_and_zero_disables(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, max_bytes=SMALL, keep=3)
    while j.rotations < 5:
        j.record_ack(_verdict(j, f"S{j.next_verdict_id()}"))
    j.close()
    assert archives(path) == ["j.jsonl.1", "j.jsonl.2", "j.jsonl.3"]
    j = Journal(path, max_bytes=SMALL, keep=1)  # keep lowered: the extra ones go next time
    while j.rotations < 6:
        j.record_ack(_verdict(j, f"S{j.next_verdict_id()}"))
    assert archives(path) == ["j.jsonl.1"]
    j.close()
    j = Journal(path, max_bytes=SMALL, keep=0)
    while j.rotations < 7:
        j.record_ack(_verdict(j, f"S{j.next_verdict_id()}"))
    assert archives(path) == []
    j.close()
    j = Journal(path, max_bytes=0)  # never rotated
    for _ in range(100):
        j.record_ack(_verdict(j, f"S{j.next_verdict_id()}"))
    assert j.rotations == 7 and path.stat().st_size > 3 * SMALL
    j.close()
    assert Journal(path, max_bytes=SMALL).rotations == 8  # too big already: rotated on open


def test_many_unacknowledged_do_not_make_every_record_rotate(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, max_bytes=SMALL, keep=2)
    for i in range(150):
        _verdict(j, f"S{i}")  # the line acknowledges nothing
    # each rotation carries everything: the next waits for half of max_bytes more
    assert 0 < j.rotations <= 20
    assert len(j.unacknowledged()) == 150
    j.close()
    j = Journal(path, max_bytes=SMALL, keep=2)
    assert [e.sample_id for e in j.unacknowledged()] == [f"S{i}" for i in range(150)]
    j.close()


def test_a_failed_rotation_is_undone_and_tried_again(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    j = Journal(path, max_bytes=SMALL, keep=2)

    def fail(step):
        if step == "linked":
            raise OSError(28, "No space left on device")

    j._rotation_hook = fail
    while path.stat().st_size < SMALL:
        _verdict(j, f"S{j.next_verdict_id()}")
    assert "rotation failed" in caplog.text and j.rotations == 0
    assert not (tmp_path / "j.jsonl.new").exists() and archives(path) == []
    n = len(j.by_id)
    _verdict(j, "AFTER")  # the journal goes on in the same file
    assert len(records(path)) == n + 1
    j._rotation_hook = None
    while j.rotations == 0:
        _verdict(j, f"S{j.next_verdict_id()}")
    assert archives(path) == ["j.jsonl.1"] and len(j.unacknowledged()) == len(j.by_id)
    j.close()


def test_without_hard_links_the_old_file_is_copied(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    j = Journal(path, max_bytes=SMALL, keep=2)

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    while j.rotations == 0:
        _verdict(j, f"S{j.next_verdict_id()}")
    old = records(tmp_path / "j.jsonl.1")
    assert old[0]["rec"] == "verdict" and len(old) == j.next_verdict_id() - 1
    assert not os.path.samefile(tmp_path / "j.jsonl.1", path)
    j.close()


def test_leftovers_of_an_interrupted_rotation_are_undone_or_finished(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    j = Journal(path, max_bytes=0)
    for i in range(5):
        _verdict(j, f"S{i}")
    j.close()
    full = path.read_bytes()
    # not committed: NAME.new (here torn: the power went while it was written) and NAME.old go
    (tmp_path / "j.jsonl.new").write_bytes(full[:50])
    (tmp_path / "j.jsonl.old").write_bytes(full[:120])
    j = Journal(path, max_bytes=0)
    assert "did not finish" in caplog.text and len(j.unacknowledged()) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.jsonl", "j.jsonl.lock"]
    j.close()
    # committed: NAME.old is the complete old file and gets its name
    (tmp_path / "j.jsonl.old").write_bytes(b"old\n")
    j = Journal(path, max_bytes=0)
    assert (tmp_path / "j.jsonl.1").read_bytes() == b"old\n" and len(j.unacknowledged()) == 5
    assert not (tmp_path / "j.jsonl.old").exists()
    j.close()


# A kill between any two steps of a rotation. The scenario is deterministic (records have a
# fixed size), so it runs once here to name the steps and note the state when the rotation
# starts, then once per step in a child process that SIGKILLs itself right after that step.

KEEP = 2
CHILD = """
import errno, os, signal, sys
from tests.firmware_bridge.test_journal import scenario
target = sys.argv[2]
if sys.argv[3] == "copy":
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")
    os.link = no_links
def hook(j, step):
    if step == target:
        os.kill(os.getpid(), signal.SIGKILL)
scenario(sys.argv[1], hook)
print("the rotation never reached", target)
"""


def scenario(path, hook) -> None:
    """Append to a journal with old files .1 and .2 until it rotates once more."""
    j = Journal(path, max_bytes=SMALL, keep=KEEP, recent=3)
    j._rotation_hook = lambda step: hook(j, step)
    start = j.rotations
    i = 0
    while j.rotations == start:
        e = _verdict(j, f"K{i}")
        if i % 3 != 1:
            j.record_ack(e)
        i += 1
    j.close()


def _prepare(folder: Path) -> Path:
    """A journal rotated twice (so .1 and .2 exist), with some verdicts unacknowledged."""
    folder.mkdir()
    path = folder / "j.jsonl"
    j = Journal(path, max_bytes=SMALL, keep=KEEP, recent=3)
    i = 0
    while j.rotations < 2 or path.stat().st_size < SMALL // 2:
        e = _verdict(j, f"P{i}")
        if i % 4:
            j.record_ack(e)
        i += 1
    j.close()
    return path


@pytest.mark.parametrize("how", ["link", "copy"])
def test_a_kill_between_any_two_rotation_steps_loses_and_doubles_nothing(tmp_path, how,
                                                                         monkeypatch):
    if how == "copy":  # a filesystem without hard links
        def no_links(src, dst):
            raise OSError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_links)
    steps, seen = [], {}

    def note(j, step):
        if not steps:  # the rotation starts: what every killed run must come back with
            seen["pending"] = {e.verdict_id for e in j.unacknowledged()}
            seen["acked"] = {vid for vid, e in j.by_id.items() if e.acked}
            seen["next"] = j.next_verdict_id()
        steps.append(step)

    base = _prepare(tmp_path / "base")
    shutil.copytree(base.parent, tmp_path / "ref")
    scenario(tmp_path / "ref" / base.name, note)
    assert steps == ["new-created", "new-written", "dropped j.jsonl.2",
                     "moved j.jsonl.1 to j.jsonl.2", "linked" if how == "link" else "copied",
                     "folder-synced", "committed", "folder-synced-again", "archived",
                     "folder-synced-last"]
    assert seen["pending"] and seen["acked"]

    for n, step in enumerate(steps):
        shutil.copytree(base.parent, tmp_path / f"kill{n}")
        path = tmp_path / f"kill{n}" / base.name
        child = subprocess.run([sys.executable, "-c", CHILD, str(path), step, how], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert child.returncode == -signal.SIGKILL, (step, child.stdout, child.stderr)
        j = Journal(path, max_bytes=0)  # replay only: no rotation on open to hide a leftover
        where = f"killed after {step!r}"
        assert not (path.parent / "j.jsonl.new").exists(), where
        assert not (path.parent / "j.jsonl.old").exists(), where
        assert len(archives(path)) <= KEEP, where
        assert not any(os.path.samefile(path.parent / a, path) for a in archives(path)), where
        assert {e.verdict_id for e in j.unacknowledged()} == seen["pending"], where
        counts = Counter(r["verdict_id"] for r in records(path) if r["rec"] == "verdict")
        assert all(counts[vid] == 1 for vid in seen["pending"]), where  # once, not twice
        assert all(c == 1 for c in counts.values()), where
        assert all(j.by_id[vid].acked for vid in seen["acked"] if vid in j.by_id), where
        assert j.next_verdict_id() == seen["next"], where
        j.close()
        # and it goes on: new ids above the old, the pending ones acknowledged, rotated again
        j = Journal(path, max_bytes=SMALL, keep=KEEP, recent=3)
        assert {e.verdict_id for e in j.unacknowledged()} == seen["pending"], where
        assert _verdict(j, "NEW").verdict_id == seen["next"], where
        for e in j.unacknowledged():
            j.record_ack(e)
        r = j.rotations
        while j.rotations == r:
            j.record_ack(_verdict(j, f"M{j.next_verdict_id()}"))
        j.close()
        j = Journal(path, max_bytes=SMALL, keep=KEEP, recent=3)
        assert not j.unacknowledged() and len(archives(path)) == KEEP, where
        inodes = {os.stat(path.parent / a).st_ino for a in [path.name, *archives(path)]}
        assert len(inodes) == KEEP + 1, where  # journal and old files: all different files
        assert j.next_verdict_id() > seen["next"] + 1, where
        j.close()
