"""``glass-inspect serve`` with ``[verdict_link] kind = "io"`` on the simulated head, end to end:
the simulated PLC (firmware_bridge/io_plc_sim.py) drives the trigger on the same MockFactory as
the ring light, the whole head inspects (GRBL stage on its pty, SimCamera, the shipped network),
and the PLC reads the result at the strobe and acknowledges (docs/io_link.md)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

from edge import config
from firmware_bridge.io_link import sample_prefix
from tests.conftest import small_head_toml
from tests.firmware_bridge.wire import ROOT, wait_for

# the header pins of docs/io_link.md's example; none is an LED group's or the camera trigger's
IO_LINK = """[verdict_link]
kind = "io"
trigger_pin = 11
busy_pin = 12
pass_pin = 13
fail_pin = 16
error_pin = 18
strobe_pin = 22
ack_pin = 35
strobe_ms = 5

"""
CYCLE = re.compile(r"simulated PLC: (PASS|FAIL|ERROR) at the strobe \(([\d.]+) ms after the "
                   r"trigger\), acknowledged")


def verdicts(journal) -> list[dict]:
    if not journal.exists():
        return []
    recs = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    return [r for r in recs if r.get("rec") == "verdict"]


def test_serve_io_link_on_the_simulated_head_two_samples(tmp_path):
    head = small_head_toml(tmp_path)
    text, n = re.subn(r"\[verdict_link\]\n(?:[^\[\n].*\n|\n)*", IO_LINK, head.read_text(),
                      count=1)
    assert n == 1
    head.write_text(text)
    cfg = config.load(head)
    assert cfg.verdict_link.kind == "io" and cfg.illumination.pin_factory == "mock"
    journal, log = tmp_path / "journal.jsonl", tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "firmware_bridge", "serve", "--head",
                                 str(head), "--journal", str(journal)], cwd=ROOT, stdout=f,
                                stderr=subprocess.STDOUT)

    def out() -> str:
        if proc.poll() is not None:
            raise AssertionError(f"serve ended ({proc.returncode}):\n{log.read_text()}")
        return log.read_text(errors="replace")

    try:
        wait_for(lambda: len(CYCLE.findall(out())) >= 2, 60, "two PLC cycles")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text
    assert "simulated PLC on the mock pins" in text and "homing the stage" in text, text
    cycles = CYCLE.findall(text)
    recs = verdicts(journal)
    # every trigger got one journaled verdict, in order; the PLC read each one's own status
    assert len(recs) >= 2 and [r["verdict_id"] for r in recs] == \
        list(range(1, len(recs) + 1)), text
    for (status, _ms), rec in zip(cycles[:2], recs[:2], strict=True):
        assert rec["verdict"]["status"] == status, (rec, text)
        # the whole head judged the glass: a PASS or FAIL, not an ERROR from a missing part
        assert status in ("PASS", "FAIL"), rec["verdict"].get("reason")
        # the io link names the sample from the head's name and the verdict number
        name = re.escape(sample_prefix(cfg.name))
        assert re.fullmatch(rf"{name}-{rec['verdict_id']:06d}-\d{{8}}T\d{{6}}Z",
                            rec["sample_id"]), rec["sample_id"]
