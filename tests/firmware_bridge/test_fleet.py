"""The fleet over MQTT against a real mosquitto: order and no loss across a broker restart, the
last will of a head that dies, and ``glass-inspect fleet --once``."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import tomllib

from edge import config
from firmware_bridge.fleet import Monitor, Publisher, parse_broker, verdict_message
from firmware_bridge.inspector import ScriptedInspector
from tests.firmware_bridge.mqtt_broker import MISSING, Broker
from tests.firmware_bridge.wire import ROOT, wait_for

needs_broker = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
INSPECTOR = ScriptedInspector()


def message(head: str, k: int) -> dict:
    sid = f"{head}-S{k:04d}"
    v = INSPECTOR.inspect(sid, threading.Event(), lambda d, t: None)
    return verdict_message(head, SimpleNamespace(verdict_id=k), v)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    yield b
    b.stop()


def publisher(broker, head: str, **kw) -> Publisher:
    return Publisher("127.0.0.1", broker.port, head, health_s=0.5, **kw)


@needs_broker
def test_verdicts_arrive_in_order_and_once_across_a_broker_restart(broker, tmp_path):
    mon = Monitor(broker.url, tmp_path / "fleet.sqlite", client_id="test-watcher")
    heads = [publisher(broker, name) for name in ("head-a", "head-b")]
    try:
        assert mon.connected.wait(10)
        for k in range(1, 6):
            for p in heads:
                p.verdict(message(p.head_id, k))
        assert all(p.flush(10) for p in heads)
        broker.stop()  # mid-way: the heads buffer, the watcher's session waits on the broker
        for k in range(6, 16):
            for p in heads:
                p.verdict(message(p.head_id, k))
        time.sleep(0.5)
        assert all(p.pending > 0 for p in heads)  # nothing went while the broker was away
        broker.start()
        assert all(p.flush(30) for p in heads)

        def all_in():
            mon.pump(0.1)
            return all(mon.heads.get(p.head_id) and mon.heads[p.head_id].verdicts == 15
                       for p in heads)

        wait_for(all_in, 30, "every verdict at the watcher")
    finally:
        for p in heads:
            p.close()
        mon.close()
    db = sqlite3.connect(tmp_path / "fleet.sqlite")
    for p in heads:
        ids = [r[0] for r in db.execute("SELECT verdict_id FROM verdicts WHERE head = ? "
                                        "ORDER BY rowid", (p.head_id,))]
        assert ids == list(range(1, 16)), p.head_id  # in order, none lost, none twice
        counts = json.loads(db.execute("SELECT counts FROM heads WHERE head = ?",
                                       (p.head_id,)).fetchone()[0])
        assert counts["PASS"] + counts["FAIL"] + counts["ERROR"] == 15
        assert counts["dropped"] == 0
    assert db.execute("SELECT COUNT(*) FROM messages WHERE kind = 'verdict'").fetchone()[0] >= 30


@needs_broker
def test_a_full_queue_drops_the_oldest_and_says_so(broker):
    broker.stop()
    p = publisher(broker, "head-q", queue_size=3)
    try:
        for k in range(1, 6):
            p.verdict(message(p.head_id, k))
        assert p.pending == 3 and p.dropped == 2
        assert [m["verdict_id"] for m in p._verdicts] == [3, 4, 5]
    finally:
        p.close(timeout=0.1)


PUBLISHER = """
import sys, time
from firmware_bridge.fleet import Publisher
p = Publisher("127.0.0.1", int(sys.argv[1]), "head-dies", health_s=0.2)
while True:
    time.sleep(1)
"""


@needs_broker
def test_the_last_will_says_offline_when_a_head_dies_without_goodbye(broker):
    mon = Monitor(broker.url, client_id="test-will")
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(broker.port)], cwd=ROOT)
    try:
        assert mon.connected.wait(10)

        def state():
            mon.pump(0.1)
            h = mon.heads.get("head-dies")
            return h.health.get("state") if h else None

        wait_for(lambda: state() == "serving", 20, "the head serving")
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sends the will
        proc.wait(10)
        wait_for(lambda: state() == "offline", 20, "the last will")
    finally:
        if proc.poll() is None:
            proc.kill()
        mon.close()


@needs_broker
def test_fleet_once_prints_both_heads_and_writes_sqlite(broker, tmp_path):
    db = tmp_path / "f.sqlite"
    heads = [publisher(broker, name) for name in ("line1-head", "line2-head")]
    for p in heads:
        p.verdict(message(p.head_id, 1))  # counts are retained: seen by a later watcher
    assert all(p.flush(10) for p in heads)
    cli = subprocess.Popen([sys.executable, "-m", "edge.cli", "fleet", "--broker", broker.url,
                            "--once", "--timeout", "3", "--db", str(db)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # subscribed by now: these verdicts reach it live
        for p in heads:
            p.verdict(message(p.head_id, 2))
        out, err = cli.communicate(timeout=30)
    finally:
        for p in heads:
            p.close()
    assert cli.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["head", "state", "seen"]
    for name in ("line1-head", "line2-head"):
        row = next(line.split() for line in lines if line.startswith(name))
        # state, PASS + FAIL + ERROR (the head's own counts), received (the live verdict)
        assert row[1] == "serving" and sum(map(int, row[3:6])) == 2 and row[8] == "1", row
        assert row[9] == f"{name}-S0002", row
    rows = sqlite3.connect(db).execute("SELECT head, verdict_id FROM verdicts ORDER BY head")
    assert rows.fetchall() == [("line1-head", 2), ("line2-head", 2)]


def test_fleet_refuses_a_bad_broker_url(capsys):
    from edge.cli import main

    assert main(["fleet", "--broker", "http://x:1883", "--once"]) == 2
    assert "mqtt://HOST:PORT" in capsys.readouterr().err
    assert parse_broker("mqtts://broker.plant") == ("broker.plant", 8883, True)


@pytest.mark.parametrize(("section", "problem"), [
    ('broker = "tcp://x"', "fleet.broker"),
    ('broker = "mqtt://x:1883"\nusername = "u"', "username and password go together"),
    ('broker = "mqtt://x:70000"', "not 1-65535"),
    ('broker = "mqtt://x"\nhead_id = "a/b"', "fleet.head_id"),
    ('broker = "mqtt://x"\nca_file = "ca.pem"', "mqtts://"),
])
def test_the_fleet_section_is_validated(section, problem):
    data = tomllib.loads(config.default_text() + "\n[fleet]\n" + section + "\n")
    with pytest.raises(config.ConfigError, match=problem.replace(".", r"\.")):
        config.parse(data)
    ok = tomllib.loads(config.default_text() + '\n[fleet]\nbroker = "mqtt://b:1884"\n')
    cfg = config.parse(ok)
    assert cfg.fleet.address == ("b", 1884)
    assert cfg.digest() == config.load().digest()  # reporting changes no verdict


@needs_broker
def test_a_head_that_says_goodbye_logs_no_lost_broker(broker, caplog):
    import logging

    p = publisher(broker, "head-bye")
    assert p._connected.wait(5.0)
    p.verdict(message(p.head_id, 1))
    with caplog.at_level(logging.WARNING, logger="glass-inspect"):
        p.close(timeout=2.0)
    assert "lost the broker" not in caplog.text
