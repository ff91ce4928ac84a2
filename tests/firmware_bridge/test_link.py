"""Server and line controller in separate processes over real pseudo-terminals.

The head runs ``python -m firmware_bridge serve`` with the scripted inspector, whose verdict of
each sample id is known in advance, so every answer the line accepts can be checked.
"""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from edge.verdict import Status
from firmware_bridge import protocol as P
from firmware_bridge.client import LineClient
from firmware_bridge.codec import Decoder, encode
from firmware_bridge.inspector import ScriptedInspector

from .wire import ROOT, Noise, ServerProcess, Wire, journal_records, wait_for


def expected(sample_id: str) -> P.WireVerdict:
    """What the head must answer for this sample: the scripted verdict, through the codec."""
    v = ScriptedInspector().inspect(sample_id, threading.Event(), lambda d, t: None)
    (f,) = Decoder().feed(encode(0, P.VERDICT, P.verdict_fields(v, 1)))
    return P.WireVerdict.from_frame(f)


def same(answer: dict, want: P.WireVerdict) -> bool:
    return (answer["status"] == want.status.value and answer["defect_count"] ==
            want.defect_count and answer["reason"] == want.reason and
            [tuple(d) for d in answer["defects"]] ==
            [(d.x_mm, d.y_mm, d.length_mm, d.peak_score) for d in want.defects])


def as_dict(v: P.WireVerdict) -> dict:
    return {"status": v.status.value, "defect_count": v.defect_count, "reason": v.reason,
            "defects": [[d.x_mm, d.y_mm, d.length_mm, d.peak_score] for d in v.defects]}


@pytest.fixture
def wire(tmp_path):
    w = Wire(tmp_path)
    yield w
    w.close()


@pytest.fixture
def head(tmp_path, wire):
    servers = []

    def start(roi_time=0.01, *extra):
        s = ServerProcess(wire.head_path, tmp_path / "journal.jsonl", tmp_path / "serve.log",
                          roi_time, *extra)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def client_for(wire, **kw):
    kw = {"retry_s": 0.3, "stall_s": 1.0} | kw
    return LineClient(wire.line_path, **kw)


def line_sim(wire, tmp_path, samples, *extra):
    out = tmp_path / "answers.json"
    r = subprocess.run([sys.executable, "-m", "firmware_bridge", "line-sim", "--port",
                        wire.line_path, "--samples", str(samples), "--timeout", "30",
                        "--stall", "1", "--json", str(out), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    return r, json.loads(out.read_text())


def test_full_exchange_between_processes(tmp_path, wire, head):
    server = head()
    r, rep = line_sim(wire, tmp_path, 6, "--seed", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [f"LS00003-{k:04d}" for k in range(1, 7)]
    assert [a["sample_id"] for a in rep["answers"]] == ids
    assert all(same(a, expected(a["sample_id"])) for a in rep["answers"])
    assert rep["crc_errors"] == 0 and not rep["missing"] and not rep["doubled"]
    assert "6 sample(s):" in r.stdout and "0 missing, 0 doubled" in r.stdout
    wait_for(lambda: sum(x["rec"] == "ack" for x in journal_records(tmp_path /
                                                                   "journal.jsonl")) == 6)
    # Asked again: answered from the journal, not inspected twice.
    r, rep2 = line_sim(wire, tmp_path, 6, "--seed", "3")
    assert r.returncode == 0 and [a["verdict_id"] for a in rep2["answers"]] == \
        [a["verdict_id"] for a in rep["answers"]]
    recs = journal_records(tmp_path / "journal.jsonl")
    assert sum(x["rec"] == "verdict" for x in recs) == 6
    assert "answering verdict" in server.text()


def test_noisy_wire_never_gives_a_wrong_or_doubled_verdict(tmp_path, wire, head):
    wire.noise = Noise(drop=0.08, dup=0.08, flip=0.08, garbage=0.08)
    head()
    n = 12
    r, rep = line_sim(wire, tmp_path, n, "--seed", "11", "--tolerate-noise")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(rep["answers"]) == n and not rep["missing"] and not rep["doubled"]
    assert all(same(a, expected(a["sample_id"])) for a in rep["answers"])
    assert len({a["sample_id"] for a in rep["answers"]}) == n
    # The noise really happened, and was survived.
    for what in ("dropped", "duplicated", "flipped", "garbage"):
        assert wire.counts[what] > 0, wire.counts
    assert rep["rejected_lines"] > 0  # (re-sends depend on which lines the relay drops)


def test_port_closed_and_reopened_mid_inspection(tmp_path, wire, head):
    server = head(0.15)  # 1.5 s per sample
    seen = []
    with client_for(wire, on_progress=lambda s, d, t: seen.append(d)) as c:
        c.start_inspect("PLUG-1", 20)
        wait_for(lambda: c.poll(0.05) or seen, what="progress")
        wire.unplug_head()
        c.poll(0.5)
        wire.plug_head()
        v = c.wait_verdict("PLUG-1", 30)
        c.poll(0.5)
        assert as_dict(v) == as_dict(expected("PLUG-1"))
        assert not c.unsolicited
    log = server.text()
    assert "lost the line controller port" in log and "is back after" in log
    recs = journal_records(tmp_path / "journal.jsonl")
    assert [x["rec"] for x in recs] == ["verdict", "ack"]


def _kill_and_restart(server):
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    server.start()


@pytest.mark.parametrize("lost", ["verdict", "ack"])
def test_server_killed_between_verdict_and_ack_delivers_exactly_once(tmp_path, wire, head,
                                                                     lost):
    """The verdict is journaled, then the head dies before the line acknowledged it: either
    the line never saw the verdict, or it saw it but its ACK never arrived."""
    if lost == "verdict":
        wire.drop_to_line = lambda line: b",VERDICT," in line
    else:
        wire.drop_to_head = lambda line: b",ACK," in line and b",VERDICT," in line
    server = head()
    journal = tmp_path / "journal.jsonl"
    with client_for(wire) as c:
        c.start_inspect("KILL-1", 20)
        answers = []
        if lost == "ack":
            answers.append(c.wait_verdict("KILL-1", 20))
        wait_for(lambda: c.poll(0.05) or journal_records(journal), what="journaled verdict")
        c.poll(0.4)  # a repeat or two, still unacknowledged
        _kill_and_restart(server)
        wire.drop_to_line = wire.drop_to_head = None
        if lost == "verdict":
            answers.append(c.wait_verdict("KILL-1", 20))
        wait_for(lambda: c.poll(0.05) or [x for x in journal_records(journal)
                                          if x["rec"] == "ack"], what="acknowledgement")
        c.poll(0.5)
        assert len(answers) == 1 and as_dict(answers[0]) == as_dict(expected("KILL-1"))
        assert not c.unsolicited
        assert c.stats.head_restarts >= 1
    recs = journal_records(journal)
    assert [x["rec"] for x in recs] == ["verdict", "ack"]
    assert recs[0]["verdict_id"] == answers[0].verdict_id
    assert "1 awaiting acknowledgement" in server.text()


def test_server_killed_mid_inspection_inspects_again_once(tmp_path, wire, head):
    server = head(0.15)
    seen = []
    with client_for(wire, on_progress=lambda s, d, t: seen.append(d)) as c:
        c.start_inspect("KILL-2", 20)
        wait_for(lambda: c.poll(0.05) or seen, what="progress")
        _kill_and_restart(server)
        v = c.wait_verdict("KILL-2", 30)
        c.poll(0.5)
        assert as_dict(v) == as_dict(expected("KILL-2")) and not c.unsolicited
    recs = journal_records(tmp_path / "journal.jsonl")
    assert [x["rec"] for x in recs] == ["verdict", "ack"]


def test_abort_mid_inspection_gives_error(tmp_path, wire, head):
    head(0.2)
    seen = []
    with client_for(wire, on_progress=lambda s, d, t: seen.append(d)) as c:
        c.start_inspect("ABORT-1", 20)
        wait_for(lambda: c.poll(0.05) or seen, what="progress")
        assert c.abort("ABORT-1") is True
        v = c.wait_verdict("ABORT-1", 20)
        assert v.status is Status.ERROR and "aborted" in v.reason
        assert max(seen) < 10
        assert not c.status().busy


def test_serve_refuses_an_unusable_journal(tmp_path):
    r = subprocess.run([sys.executable, "-m", "firmware_bridge", "serve", "--port", "loop://",
                        "--journal", str(tmp_path / "no" / "j.jsonl")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot open the verdict journal" in r.stderr


@pytest.mark.skipif(not os.path.exists("/dev/ptmx"), reason="needs pseudo-terminals")
def test_serve_on_a_sim_port_prints_its_path(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "firmware_bridge", "serve", "--port", "sim",
                          "--journal", str(tmp_path / "j.jsonl"), "--roi-time", "0",
                          "--inspector", "scripted"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = p.stdout.readline()
        path = line.split("line controller port: ")[1].split()[0]
        with LineClient(path, retry_s=0.3) as c:
            assert c.inspect("SIM-1", 20).sample_id == "SIM-1"
    finally:
        p.terminate()
        p.wait(10)


def test_the_simulated_head_answers_the_line(tmp_path, wire, head):
    """``serve --inspector head`` with a simulated head file: the verdicts come from the whole
    head (GRBL stage on its pty, MockFactory LEDs, SimCamera, the shipped network)."""
    from tests.conftest import small_head_toml

    cfg = small_head_toml(tmp_path)
    server = head(0.01, "--inspector", "head", "--head", str(cfg))
    r, rep = line_sim(wire, tmp_path, 2)
    assert r.returncode == 0, r.stdout + r.stderr + server.log.read_text()
    answers = rep["answers"]
    assert len(answers) == 2 and not rep["missing"] and not rep["doubled"]
    assert all(a["status"] in ("PASS", "FAIL") for a in answers), server.log.read_text()
    assert "homing the stage" in server.log.read_text()
