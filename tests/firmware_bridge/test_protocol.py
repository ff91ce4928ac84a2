import re
from pathlib import Path

import pytest

from edge.verdict import Defect, Status, error
from firmware_bridge import protocol as P
from firmware_bridge.codec import MAX_LINE, Decoder, FrameError, Reject, encode
from firmware_bridge.inspector import ScriptedInspector


def _frame(fields, seq=1):
    (f,) = Decoder().feed(encode(seq, P.VERDICT, fields))
    return f


def _verdict(status, n=0, reason="x"):
    v = error("S-1", reason)
    v.status = status
    v.defects = [Defect((i, 1.0, i + 2.0, 3.0), 2.0 + i / 100, 0.9, (0,)) for i in range(n)]
    return v


def test_sample_id_alphabet_is_the_recorded_sample_one():
    from edge.recording import Manifest

    assert Manifest.model_fields["sample_id"].metadata[0].pattern == P.SAMPLE_ID.pattern
    assert P.valid_sample_id("SIM00000042") and not P.valid_sample_id("a,b")
    assert not P.valid_sample_id("-x") and not P.valid_sample_id("x" * 65)


def test_verdict_round_trip():
    v = ScriptedInspector(script={"S-1": Status.FAIL}).inspect("S-1", *_no_abort())
    fields = P.verdict_fields(v, 42)
    w = P.WireVerdict.from_frame(_frame(fields, 9))
    assert (w.sample_id, w.verdict_id, w.status, w.defect_count, w.seq) == ("S-1", 42,
                                                                            Status.FAIL, 1, 9)
    (d,) = w.defects
    assert d.x_mm == pytest.approx(v.defects[0].centre_mm[0], abs=0.006)
    assert d.length_mm == pytest.approx(v.defects[0].length_mm, abs=0.006)
    assert w.reason == "1 scratch(es) found"
    assert "FAIL - 1 defect(s)" in w.summary()


def test_many_defects_keep_the_exact_count_and_the_longest():
    v = _verdict(Status.FAIL, 60)
    line = encode(65535, P.VERDICT, P.verdict_fields(v, 1))
    assert len(line) <= MAX_LINE
    w = P.WireVerdict.from_frame(Decoder().feed(line)[0])
    assert w.defect_count == 60 and 10 < len(w.defects) < 60
    assert w.defects[0].length_mm == pytest.approx(2.59)


def test_contradictory_verdicts_go_out_as_error_never_pass():
    for v in (_verdict(Status.FAIL, 0), _verdict(Status.PASS, 2)):
        w = P.WireVerdict.from_frame(_frame(P.verdict_fields(v, 1)))
        assert w.status is Status.ERROR and w.defect_count == 0


def test_reason_text_is_made_safe():
    v = _verdict(Status.ERROR, 0, "camera: timeout, retry*later $ \n" + "x" * 100)
    w = P.WireVerdict.from_frame(_frame(P.verdict_fields(v, 1)))
    assert w.reason.startswith("camera: timeout; retry_later _ x") and len(w.reason) <= 64
    with pytest.raises(FrameError):
        P.verdict_fields(error("bad,id", "x"), 1)


@pytest.mark.parametrize("fields, problem", [
    (["S", "1", "PASS", "0", "-"], "6"),
    (["S", "x", "PASS", "0", "-", "r"], "verdict id"),
    (["S", "1", "GOOD", "0", "-", "r"], "status"),
    (["S", "1", "FAIL", "0", "-", "r"], "contradictory"),
    (["S", "1", "PASS", "1", "1:2:3:0.9", "r"], "contradictory"),
    (["S", "1", "FAIL", "1", "1:2:3", "r"], "x:y:length:peak"),
    (["S", "1", "FAIL", "1", "1:2:3:0.9;1:2:3:0.9", "r"], "listed"),
    (["_S", "1", "PASS", "0", "-", "r"], "sample id"),
])
def test_malformed_verdicts_are_refused(fields, problem):
    with pytest.raises(P.ProtocolError, match=problem):
        P.WireVerdict.from_frame(_frame(fields))


def test_command_fields_are_checked():
    (f,) = Decoder().feed(encode(1, P.INSPECT, ["ok-1"]))
    assert P.check_fields(f) is None
    (f,) = Decoder().feed(encode(1, P.INSPECT, ["no/slash"]))
    assert P.check_fields(f)[0] == P.NAK_SAMPLE
    (f,) = Decoder().feed(encode(1, P.STATUS, ["extra"]))
    assert P.check_fields(f)[0] == "FIELDS"
    assert P.parse_versions("1;2;x;99999") == {1, 2}


def _no_abort():
    import threading

    return threading.Event(), lambda done, total: None


def test_every_frame_in_the_protocol_doc_is_valid():
    """docs/protocol.md's examples are checked: a doc with a wrong CRC misleads integrators."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    lines = re.findall(r"\$[^\s<]*?\*[0-9A-Fa-f]{4}", text)
    lines += [line.split("  ", 1)[1].split("   ")[0].strip() for line in text.splitlines()
              if line[:3] in ("H  ", "L  ")]
    assert len(lines) > 20
    for line in lines:
        (item,) = Decoder().feed(line.encode() + b"\r\n")
        assert isinstance(item, Reject) == ("STA?US" in line), line
    assert encode(7, P.INSPECT, ["SIM00000042"]) in text.replace("\\r\\n", "\r\n").encode()
