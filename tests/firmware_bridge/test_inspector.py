import threading
from collections import Counter

import pytest

from edge.verdict import Status, Verdict
from firmware_bridge.inspector import Inspector, ScriptedInspector


def _run(insp, sid, abort=None):
    seen = []
    v = insp.inspect(sid, abort or threading.Event(), lambda d, t: seen.append((d, t)))
    return v, seen


def test_deterministic_varied_and_a_real_inspector():
    insp = ScriptedInspector()
    assert isinstance(insp, Inspector)
    vs = [_run(insp, f"S{k}")[0] for k in range(200)]
    assert all(isinstance(v, Verdict) for v in vs)
    c = Counter(v.status for v in vs)
    assert c[Status.PASS] > 100 and c[Status.FAIL] > 30 and c[Status.ERROR] > 2
    again = _run(insp, "S7")[0]
    assert again.to_dict() | {"created_utc": 0} == vs[7].to_dict() | {"created_utc": 0}
    assert all((v.status is Status.FAIL) == bool(v.defects) for v in vs)


def test_progress_and_abort():
    insp = ScriptedInspector(roi_time_s=0.01, script={"P": Status.PASS})
    v, seen = _run(insp, "P")
    assert v.status is Status.PASS and seen == [(k, 10) for k in range(11)]
    abort = threading.Event()
    abort.set()
    v, seen = _run(insp, "P", abort)
    assert v.status is Status.ERROR and "aborted after 0 of 10" in v.reason


def test_script_overrides():
    boom = RuntimeError("stage alarm")
    insp = ScriptedInspector(script={"E": Status.ERROR, "F": Status.FAIL, "X": boom})
    assert _run(insp, "E")[0].status is Status.ERROR
    assert len(_run(insp, "F")[0].defects) == 1
    with pytest.raises(RuntimeError, match="stage alarm"):
        _run(insp, "X")
