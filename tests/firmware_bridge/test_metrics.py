"""serve --metrics: the Prometheus metrics of a serving head, scraped while line-sim runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.verdict import Status
from firmware_bridge.inspector import ScriptedInspector
from firmware_bridge.metrics import Metrics, parse_listen
from tests.firmware_bridge.wire import ROOT


def samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_verdict_counts_its_status_stage_times_and_engine_time(tmp_path):
    fake_journal = SimpleNamespace(path=tmp_path / "j.jsonl", by_id={
        1: SimpleNamespace(acked=True), 2: SimpleNamespace(acked=False)})
    health = {"led_watchdog": {"trips": 3, "recent": 1, "state": "self-test due"}}
    m = Metrics(fake_journal, SimpleNamespace(health=lambda: health))
    insp = ScriptedInspector(script={"A": Status.FAIL})
    v = insp.inspect("A", threading.Event(), lambda d, t: None)
    for r in v.rois:  # as the head's pipeline reports them
        r.timings_s = {"prepare": 0.002, "infer": 0.03, "defects": 0.001}
    v.timings_s.update(moves=1.5, frames=0.6)
    m.observe(v, 2.5)
    got = samples(m.exposition().decode())
    assert got[("glass_inspect_verdicts_total", frozenset({("status", "FAIL")}))] == 1
    assert got[("glass_inspect_verdicts_total", frozenset({("status", "PASS")}))] == 0
    assert got[("glass_inspect_inspection_seconds_sum", frozenset())] == 2.5
    assert got[("glass_inspect_engine_seconds_count", frozenset())] == 10
    assert got[("glass_inspect_roi_stage_seconds_count", frozenset({("stage", "prepare")}))] == 10
    assert ("glass_inspect_roi_stage_seconds_count", frozenset({("stage", "infer")})) not in got
    assert got[("glass_inspect_acquisition_seconds_sum", frozenset({("part", "moves")}))] == 1.5
    assert got[("glass_inspect_led_watchdog_trips_total", frozenset())] == 3
    assert got[("glass_inspect_head_down", frozenset())] == 0
    assert got[("glass_inspect_journal_backlog", frozenset())] == 1
    assert got[("glass_inspect_journal_disk_free_bytes", frozenset())] > 0


@pytest.mark.parametrize("text", ["host:", "127.0.0.1:99999", "x:y", ":80"])
def test_a_bad_listen_address_says_what_it_expected(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)
    assert parse_listen("9464") == ("127.0.0.1", 9464)


def test_metrics_scraped_during_line_sim_match_its_verdicts(tmp_path):
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge", "serve", "--port", "sim", "--journal",
         str(tmp_path / "j.jsonl"), "--roi-time", "0.01", "--inspector", "scripted",
         "--metrics", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        pty = serve.stdout.readline().split("line controller port: ")[1].split()[0]
        report = tmp_path / "answers.json"
        sim = subprocess.Popen([sys.executable, "-m", "firmware_bridge", "line-sim", "--port", pty,
                                "--samples", "12", "--seed", "3", "--json", str(report)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        scrapes = []
        while sim.poll() is None:  # scraped while the line asks
            scrapes.append(samples(urllib.request.urlopen(url, timeout=5).read().decode()))
            time.sleep(0.1)
        assert sim.wait(60) == 0
        final = samples(urllib.request.urlopen(url, timeout=5).read().decode())
    finally:
        serve.terminate()
        serve.wait(10)
    answers = json.loads(report.read_text())["answers"]
    assert len(answers) == 12
    total = 0
    for status in ("PASS", "FAIL", "ERROR"):
        n = final[("glass_inspect_verdicts_total", frozenset({("status", status)}))]
        assert n == sum(a["status"] == status for a in answers), status
        total += n
    assert final[("glass_inspect_inspection_seconds_count", frozenset())] == total
    # scrapes in between saw the count grow, never past the end
    seen = [sum(s.get(("glass_inspect_verdicts_total", frozenset({("status", k)})), 0)
                for k in ("PASS", "FAIL", "ERROR")) for s in scrapes]
    assert seen == sorted(seen) and len(set(seen)) > 1 and seen[-1] <= total
    assert final[("glass_inspect_journal_backlog", frozenset())] == 0  # line-sim acknowledges
