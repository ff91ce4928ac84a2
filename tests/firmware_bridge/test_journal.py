import os

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
