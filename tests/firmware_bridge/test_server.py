"""The server in a thread of this process, the client on the pty's other end: the rules."""

import os
import threading
import time
import tty
from contextlib import contextmanager

import pytest

from edge.verdict import Status, error
from firmware_bridge import protocol as P
from firmware_bridge.client import LineClient, LinkRefused, LinkTimeout
from firmware_bridge.codec import Decoder, Frame, encode
from firmware_bridge.inspector import ScriptedInspector
from firmware_bridge.journal import Journal
from firmware_bridge.port import FdPort, Link
from firmware_bridge.server import VerdictServer


@contextmanager
def served(tmp_path, inspector, **opts):
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    server = VerdictServer(Link(os.ttyname(slave), name="line controller port"), inspector,
                           Journal(tmp_path / "journal.jsonl"), repeat_s=0.3, **opts)
    stop = threading.Event()
    t = threading.Thread(target=server.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.link.generation and time.monotonic() < deadline:
        time.sleep(0.01)  # opening a port flushes what waits in it: write only after
    port = FdPort(master, 0.02)
    client = LineClient("pty", link=Link("pty", opener=lambda: port), retry_s=0.3, stall_s=1.0)
    try:
        yield server, client
    finally:
        stop.set()
        t.join(10)
        os.close(master)
        os.close(slave)


def _raw_exchange(client, data, seconds=0.5):
    """Write bytes as they are; the frames that come back."""
    client.link.write(data)
    end, got = time.monotonic() + seconds, []
    dec = Decoder()
    while time.monotonic() < end:
        got += [f for f in dec.feed(client.link.read()) if isinstance(f, Frame)]
    return got


def test_bad_lines_are_nakked_and_not_acted_on(tmp_path):
    insp = ScriptedInspector()
    with served(tmp_path, insp) as (server, client):
        client.hello()
        line = bytearray(encode(50, P.INSPECT, ["S1"]))
        line[10] ^= 0x04
        got = _raw_exchange(client, b"noise\r\n" + bytes(line) + encode(51, "FOO") +
                            encode(52, P.INSPECT, ["bad/id"]) + encode(53, P.STATUS, ["x"]))
        naks = [f.fields[:2] for f in got if f.type == P.NAK]
        assert naks == [("-", "FORMAT"), ("-", "CRC"), ("51", "TYPE"), ("52", "SAMPLE"),
                        ("53", "FIELDS")]
        assert not [f for f in got if f.type in (P.VERDICT, P.PROGRESS)]
    assert not server.journal.by_id


def test_commands_need_hello_and_the_client_says_it(tmp_path):
    with served(tmp_path, ScriptedInspector()) as (server, client):
        got = _raw_exchange(client, encode(9, P.STATUS))
        assert any(f.type == P.NAK and f.fields[:2] == ("9", P.NAK_HELLO) for f in got)
        client.version = 1  # pretend: the head does not know us
        st = client.status()
        assert not st.busy and client.stats.naks >= 1
        got = _raw_exchange(client, encode(10, P.HELLO, ["7;8"]))
        assert any(f.type == P.NAK and f.fields[1] == P.NAK_VERSION for f in got)


def test_exception_and_nonsense_from_the_inspector_give_error(tmp_path):
    class Odd(ScriptedInspector):
        def inspect(self, sample_id, abort, progress):
            if sample_id == "NONE":
                return None
            if sample_id == "OTHER":
                return error("SOMEONE", "x")
            if sample_id == "NOREASON":
                return error(sample_id, None)
            return super().inspect(sample_id, abort, progress)

    insp = Odd(script={"BOOM": RuntimeError("stage alarm 2"), "OK": Status.PASS})
    with served(tmp_path, insp) as (server, client):
        v = client.inspect("BOOM", 10)
        assert v.status is Status.ERROR and "stage alarm 2" in v.reason
        assert "NoneType" in client.inspect("NONE", 10).reason
        assert "SOMEONE" in client.inspect("OTHER", 10).reason
        assert "could not be encoded" in client.inspect("NOREASON", 10).reason
        assert client.inspect("OK", 10).status is Status.PASS


def test_journal_answers_repeated_requests_once_and_error_may_be_retried(tmp_path):
    insp = ScriptedInspector(script={"F": Status.FAIL, "E": Status.ERROR})
    with served(tmp_path, insp) as (server, client):
        first = client.inspect("F", 10)
        again = client.inspect("F", 10)
        assert first.status is Status.FAIL and again.key == first.key
        assert client.result("F").key == first.key
        assert client.result("NEVER") is None
        e1 = client.inspect("E", 10)
        client.poll(0.2)  # let its ACK reach the head
        e2 = client.inspect("E", 10)
        assert e1.status is e2.status is Status.ERROR and e2.verdict_id != e1.verdict_id
        assert not client.unsolicited
        client.poll(0.3)
    verdicts = [e.sample_id for e in sorted(server.journal.by_id.values(),
                                            key=lambda e: e.verdict_id)]
    assert verdicts == ["F", "E", "E"]
    assert all(e.acked for e in server.journal.by_id.values())


def test_busy_and_an_inspector_that_ignores_abort(tmp_path):
    insp = ScriptedInspector(roi_time_s=0.1, ignore_abort=True, script={"A": Status.PASS,
                                                                        "B": Status.PASS})
    seen = []
    with served(tmp_path, insp, abort_grace_s=0.3) as (server, client):
        client.on_progress = lambda sid, d, t: seen.append((sid, d, t))
        client.start_inspect("A")
        got = _raw_exchange(client, encode(client._seq + 100, P.INSPECT, ["B"]), 0.2)
        assert any(f.type == P.BUSY and f.fields[1] == "A" for f in got)
        assert client.abort("A") is True
        v = client.wait_verdict("A", 10)
        assert v.status is Status.ERROR and "did not stop" in v.reason
        assert client.status().busy  # the inspection thread still runs
        assert client.abort("A") is False
        with pytest.raises(LinkTimeout, match="busy with sample A"):
            client.start_inspect("B", 0.3)
        deadline = time.monotonic() + 10
        while client.status().busy and time.monotonic() < deadline:
            client.poll(0.1)
        assert client.inspect("B", 10).status is Status.PASS
        assert seen and seen[0][0] == "A"
    assert [e.status for e in server.journal.by_id.values()] == ["ERROR", "PASS"]


def test_inspection_timeout_gives_error(tmp_path):
    insp = ScriptedInspector(roi_time_s=0.1, script={"SLOW": Status.PASS})
    with served(tmp_path, insp, inspect_timeout_s=0.25) as (server, client):
        v = client.inspect("SLOW", 10)
        assert v.status is Status.ERROR and "timed out" in v.reason


def test_refusals_reach_the_caller(tmp_path):
    with served(tmp_path, ScriptedInspector()) as (server, client):
        with pytest.raises(ValueError):
            client.start_inspect("bad,id")
        client.hello()
        assert client.abort("NOPE") is False
        client.versions = (7,)
        with pytest.raises(LinkRefused, match="VERSION"):
            client.hello()
