"""The Modbus link (docs/modbus.md) against clients we did not write: pymodbus's own client
over TCP and over RTU on a pseudo-terminal pair, and mbpoll driving ``serve --head H.toml``."""

import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from importlib import resources

import pytest
from pymodbus.client import ModbusSerialClient, ModbusTcpClient

from edge import config
from edge.verdict import Status
from firmware_bridge import modbus_link as M
from firmware_bridge.inspector import ScriptedInspector
from firmware_bridge.journal import Journal
from firmware_bridge.port import relayed_ptys
from tests.firmware_bridge.wire import ROOT, wait_for

UNIT = 7


def link_settings(**kw):
    return config.VerdictLink(**kw)


@contextmanager
def served(tmp_path, kind, inspector, journal="j.jsonl", **opts):
    """A Modbus link in a thread of this process, and a pymodbus client connected to it."""
    close = None
    if kind == "modbus-tcp":
        settings = link_settings(kind=kind, tcp_port=0, unit_id=UNIT)
    else:
        head, line, close = relayed_ptys()
        # ptys take no parity (see modbus_link.open_link)
        settings = link_settings(kind=kind, port=head, baud=115200, parity="none",
                                 unit_id=UNIT)
    link = M.ModbusLink(settings, inspector, Journal(tmp_path / journal), reopen_s=0.1,
                        **opts)
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    assert link.listening.wait(10), "the Modbus server did not start"
    if kind == "modbus-tcp":
        client = ModbusTcpClient("127.0.0.1", port=link.address[1], timeout=2)
    else:
        client = ModbusSerialClient(line, baudrate=115200, parity="N", timeout=2)
    assert client.connect()
    try:
        yield link, client
    finally:
        client.close()
        stop.set()
        t.join(10)
        if close is not None:
            close()


def inputs(client):
    r = client.read_input_registers(0, count=M.IR_COUNT, device_id=UNIT)
    assert not r.isError(), r
    return r.registers


def command(client, code, sample="", seq=0):
    return client.write_registers(0, [code, seq >> 16, seq & 0xFFFF] + M.pack_text(sample),
                                  device_id=UNIT)


def verdict_of(regs):
    return {"code": regs[M.IR_VERDICT], "acked": regs[M.IR_VERDICT_ACKED],
            "seq": regs[M.IR_VERDICT_SEQ] << 16 | regs[M.IR_VERDICT_SEQ + 1],
            "defects": regs[M.IR_DEFECT_COUNT], "longest": regs[M.IR_LONGEST_DEFECT],
            "sample": M.unpack_text(regs[M.IR_VERDICT_SAMPLE_ID:M.IR_VERDICT_SAMPLE_ID + 32])}


def until(client, pred, what, timeout=10.0):
    return wait_for(lambda: (lambda r: r if pred(r) else None)(inputs(client)), timeout, what)


def fail_sample(insp):
    """A sample id the scripted inspector fails (its verdict depends on the id)."""
    return next(s for s in (f"F{k}" for k in range(200))
                if insp._plan(s)[0] is Status.FAIL)


@pytest.mark.parametrize("kind", ["modbus-tcp", "modbus-rtu"])
def test_request_verdict_ack_cycle_with_pymodbus(tmp_path, kind):
    insp = ScriptedInspector(roi_time_s=0.005)
    sid = fail_sample(insp)
    with served(tmp_path, kind, insp) as (link, client):
        r = inputs(client)
        assert r[M.IR_STATUS] == M.ST_READY | M.ST_RESTARTED and r[M.IR_VERDICT] == 0
        assert not command(client, M.CMD_START, sid).isError()
        r = until(client, lambda r: r[M.IR_STATUS] & M.ST_DONE, "the verdict")
        v = verdict_of(r)
        e = link.journal.lookup(sid)
        assert (v["code"], v["acked"], v["seq"], v["sample"]) == (2, 0, e.verdict_id, sid)
        truth = insp.inspect(sid, threading.Event(), lambda *_: None)
        assert v["defects"] == len(truth.defects) >= 1
        assert v["longest"] == round(max(d.length_mm for d in truth.defects) * 100)
        assert r[M.IR_STATUS] & M.ST_READY and not r[M.IR_STATUS] & M.ST_RESTARTED
        # readable until acknowledged, however often it is read
        time.sleep(0.3)
        assert verdict_of(inputs(client)) == v and inputs(client)[M.IR_UNACKED] == 1
        # the same through the read-only mirror in the holding registers (FC3-only masters)
        hr = client.read_holding_registers(M.HR_MIRROR + M.IR_VERDICT, count=6,
                                           device_id=UNIT).registers
        assert hr == inputs(client)[M.IR_VERDICT:M.IR_VERDICT + 6]
        assert command(client, M.CMD_ACK, seq=v["seq"] + 1).isError()  # not its number
        assert not command(client, M.CMD_ACK, seq=v["seq"]).isError()
        r = inputs(client)
        assert r[M.IR_STATUS] == M.ST_READY and r[M.IR_COMMAND_RESULT] == M.RES_ACKED
        assert verdict_of(r) == {**v, "acked": 1} and link.journal.lookup(sid).acked
        # asked again: the journal's verdict, not a second inspection
        assert not command(client, M.CMD_START, sid).isError()
        r = inputs(client)
        assert r[M.IR_COMMAND_RESULT] == M.RES_ANSWERED and verdict_of(r)["seq"] == v["seq"]
        assert len(link.journal.by_id) == 1
        beat = inputs(client)[M.IR_HEARTBEAT]
        time.sleep(0.35)
        assert inputs(client)[M.IR_HEARTBEAT] != beat


def test_refusals_are_modbus_exceptions_and_say_why(tmp_path):
    insp = ScriptedInspector(roi_time_s=0.05)
    with served(tmp_path, "modbus-tcp", insp) as (link, client):
        for addr in (M.HR_MIRROR, M.HR_MIRROR + M.IR_VERDICT, M.HR_WRITABLE):
            r = client.write_register(addr, 1, device_id=UNIT)
            assert r.isError() and r.exception_code == 2  # read-only / nothing there
        assert client.read_input_registers(M.IR_COUNT - 1, count=2,
                                           device_id=UNIT).exception_code == 2
        r = command(client, M.CMD_START, "bad,id")
        assert r.exception_code == 3
        regs = inputs(client)
        assert regs[M.IR_COMMAND_RESULT] == M.RES_BAD_SAMPLE_ID
        assert regs[M.IR_ERROR_CODE] == M.ERR_COMMAND and regs[M.IR_STATUS] & M.ST_ERROR
        assert "bad,id" in M.unpack_text(regs[M.IR_ERROR_TEXT:])
        assert command(client, 9, "A").exception_code == 3
        assert not command(client, M.CMD_START, "A").isError()
        assert command(client, M.CMD_START, "B").exception_code == 6  # busy
        assert not command(client, M.CMD_START, "A").isError()  # a repeat: RUNNING
        regs = inputs(client)
        assert regs[M.IR_COMMAND_RESULT] == M.RES_RUNNING and regs[M.IR_STATUS] & M.ST_BUSY
        assert M.unpack_text(regs[M.IR_INSPECTING:M.IR_INSPECTING + 32]) == "A"
        assert command(client, M.CMD_ABORT, "B").exception_code == 3  # not that sample
        until(client, lambda r: r[M.IR_STATUS] & M.ST_DONE, "A's verdict")
        # a unit id that is not ours: exception 0B on TCP
        assert client.read_input_registers(0, count=1, device_id=UNIT + 1).isError()


def test_abort_gives_an_error_verdict_with_its_reason(tmp_path):
    insp = ScriptedInspector(roi_time_s=0.2, script={"SLOW": Status.PASS})
    with served(tmp_path, "modbus-tcp", insp) as (link, client):
        command(client, M.CMD_START, "SLOW")
        until(client, lambda r: r[M.IR_PROGRESS_DONE] >= 1, "progress")
        assert not command(client, M.CMD_ABORT, "SLOW").isError()
        r = until(client, lambda r: r[M.IR_STATUS] & M.ST_DONE, "the ERROR verdict", 5)
        v = verdict_of(r)
        assert (v["code"], v["sample"], v["defects"]) == (3, "SLOW", 0)
        assert r[M.IR_ERROR_CODE] == M.ERR_INSPECTION
        assert "aborted by the line controller" in M.unpack_text(r[M.IR_ERROR_TEXT:])
        command(client, M.CMD_ACK, seq=v["seq"])
        assert inputs(client)[M.IR_ERROR_CODE] == M.ERR_NONE
        # an acknowledged ERROR may be asked again: a new inspection, a new verdict number
        command(client, M.CMD_START, "SLOW")
        assert inputs(client)[M.IR_COMMAND_RESULT] == M.RES_STARTED


def test_restart_mid_inspection_and_with_a_verdict_unacknowledged(tmp_path):
    insp = ScriptedInspector(roi_time_s=0.2, script={"S": Status.PASS})
    with served(tmp_path, "modbus-tcp", insp) as (link, client):
        command(client, M.CMD_START, "S")
        until(client, lambda r: r[M.IR_PROGRESS_DONE] >= 1, "progress")
    # restarted mid-inspection: nothing is busy, no verdict for S; START inspects it anew
    fast = ScriptedInspector(roi_time_s=0.0, script={"S": Status.PASS})
    with served(tmp_path, "modbus-tcp", fast) as (link, client):
        r = inputs(client)
        assert r[M.IR_STATUS] == M.ST_READY | M.ST_RESTARTED and r[M.IR_VERDICT] == 0
        command(client, M.CMD_START, "S")
        assert inputs(client)[M.IR_COMMAND_RESULT] == M.RES_STARTED
        v = verdict_of(until(client, lambda r: r[M.IR_STATUS] & M.ST_DONE, "S's verdict"))
        assert (v["code"], v["sample"], v["acked"]) == (1, "S", 0)
    # restarted with the verdict unacknowledged: still readable, and START answers it
    with served(tmp_path, "modbus-tcp", fast) as (link, client):
        r = inputs(client)
        assert r[M.IR_STATUS] & M.ST_DONE and verdict_of(r) == v
        command(client, M.CMD_START, "S")
        assert inputs(client)[M.IR_COMMAND_RESULT] == M.RES_ANSWERED
        command(client, M.CMD_ACK, seq=v["seq"])
        assert len(link.journal.by_id) == 1 and link.journal.lookup("S").acked


def test_an_unacknowledged_verdict_is_not_overwritten_by_the_next(tmp_path):
    insp = ScriptedInspector(roi_time_s=0.0, script={"A": Status.PASS, "B": Status.FAIL})
    with served(tmp_path, "modbus-tcp", insp) as (link, client):
        command(client, M.CMD_START, "A")
        a = verdict_of(until(client, lambda r: r[M.IR_STATUS] & M.ST_DONE, "A"))
        command(client, M.CMD_START, "B")
        until(client, lambda r: r[M.IR_UNACKED] == 2, "B's verdict")
        assert verdict_of(inputs(client)) == a  # the oldest first
        command(client, M.CMD_ACK, seq=a["seq"])
        b = verdict_of(inputs(client))
        assert (b["sample"], b["code"], b["acked"]) == ("B", 2, 0)


def test_text_registers_round_trip():
    regs = M.pack_text("SIM-00042.a")
    assert len(regs) == 32 and regs[0] == (ord("S") << 8 | ord("I"))
    assert M.unpack_text(regs) == "SIM-00042.a"
    assert M.unpack_text(M.pack_text("AB  ")) == "AB"  # space-padded PLC strings


# -- configuration -----------------------------------------------------------------------------

def test_link_kinds_and_their_keys_are_checked():
    assert link_settings(port="sim", baud=115200).kind == "ascii"
    rtu = link_settings(kind="modbus-rtu", port="/dev/ttyUSB0", baud=19200)
    assert (rtu.serial_parity, rtu.serial_stop_bits, rtu.unit_id) == ("E", 1, 1)
    tcp = link_settings(kind="modbus-tcp")
    assert (tcp.host, tcp.tcp_port) == ("127.0.0.1", 502)
    for kw, words in [
        ({"kind": "modbus-tcp", "port": "/dev/ttyS0"}, "port is for a serial link"),
        ({"kind": "modbus-rtu", "baud": 19200}, "needs port"),
        ({"kind": "modbus-rtu", "port": "x", "baud": 19200, "host": "0.0.0.0"},
         "host is for kind = 'modbus-tcp'"),
        ({"port": "sim", "baud": 115200, "unit_id": 3}, "unit_id is for Modbus links"),
        ({"port": "sim", "baud": 115200, "parity": "even"}, "ascii link is 8N1"),
        ({"kind": "modbus-rtu", "port": "x", "baud": 19200, "rs485_delay_before_tx_ms": 1.0},
         "for rs485 = 'kernel'"),
        ({"kind": "modbus-udp"}, "Input should be"),
        ({"kind": "modbus-tcp", "unit_id": 0}, "greater than or equal to 1"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            link_settings(**kw)


def _head_file(tmp_path, link_toml: str):
    text = resources.files("edge").joinpath("default_head.toml").read_text()
    text = re.sub(r"\[verdict_link\]\n(?:[^\[\n].*\n|\n)*", "[verdict_link]\n" + link_toml + "\n\n",
                  text, count=1)
    path = tmp_path / "head.toml"
    path.write_text(text)
    cfg = config.load(path)
    return path, cfg


def test_the_head_file_picks_the_link_and_a_bad_one_is_one_message(tmp_path, capsys):
    from firmware_bridge.__main__ import main

    _, cfg = _head_file(tmp_path, 'kind = "modbus-tcp"\ntcp_port = 1502\nunit_id = 3')
    assert (cfg.verdict_link.kind, cfg.verdict_link.tcp_port) == ("modbus-tcp", 1502)
    path, _ = _head_file(tmp_path, 'kind = "modbus-tcp"\ntcp_port = 1502')
    assert main(["serve", "--head", str(path), "--port", "/dev/ttyS0",
                 "--inspector", "scripted", "--journal", str(tmp_path / "j")]) == 2
    assert "--port and --baud are for a serial link" in capsys.readouterr().err
    path.write_text(path.read_text().replace('kind = "modbus-tcp"', 'kind = "modbus"'))
    assert main(["serve", "--head", str(path), "--inspector", "scripted"]) == 2
    assert "verdict_link.kind" in capsys.readouterr().err


# -- mbpoll against glass-inspect serve ---------------------------------------------------------

MBPOLL = shutil.which("mbpoll")
needs_mbpoll = pytest.mark.skipif(
    MBPOLL is None, reason="mbpoll is not installed (Debian: apt-get install mbpoll; .ci/run "
                           "installs it)")


def mbpoll(where: list[str], *args: str, values: tuple[int, ...] = ()) -> tuple[int, str]:
    """mbpoll once: the options, then the device (host or tty), then values to write."""
    dev, opts = where[-1], where[:-1]
    cmd = [MBPOLL, *opts, "-a", str(UNIT), "-1", "-q", "-o", "2", *args, dev,
           *map(str, values)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    return p.returncode, p.stdout + p.stderr


def polled(out: str) -> dict[int, int]:
    """mbpoll's ``[ref]: value`` lines."""
    return {int(a): int(b) for a, b in re.findall(r"^\[(\d+)\]:\s+(-?\d+)", out, re.M)}


@needs_mbpoll
@pytest.mark.parametrize("kind", ["modbus-tcp", "modbus-rtu"])
def test_serve_answers_mbpoll_through_a_whole_cycle(tmp_path, kind):
    """``serve --head H.toml`` with kind modbus-tcp / modbus-rtu, driven by mbpoll only:
    START (FC16), poll the status (FC4), read the verdict, a refused write to a read-only
    register, ACK (FC16), the verdict acknowledged."""
    close = None
    if kind == "modbus-tcp":
        link = f'kind = "modbus-tcp"\ntcp_port = 0\nunit_id = {UNIT}'
    else:
        head, line, close = relayed_ptys()
        link = (f'kind = "modbus-rtu"\nport = "{head}"\nbaud = 115200\nparity = "none"\n'
                f'unit_id = {UNIT}')
    path, _ = _head_file(tmp_path, link)
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "firmware_bridge", "serve", "--head", str(path),
             "--journal", str(tmp_path / "j.jsonl"), "--inspector", "scripted",
             "--roi-time", "0.005"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)

    def text() -> str:
        return log.read_text(errors="replace")
    try:
        if kind == "modbus-tcp":
            port = wait_for(lambda: re.search(r"serving Modbus TCP on 127\.0\.0\.1:(\d+)",
                                              text()), 30, "serve listening")
            where = ["-m", "tcp", "-p", port.group(1), "127.0.0.1"]
        else:
            wait_for(lambda: "serving Modbus RTU" in text(), 30, "serve listening")
            where = ["-m", "rtu", "-b", "115200", "-P", "none", line]
        sid = "MB-42"
        rc, out = mbpoll(where, "-r", "1", values=(1, 0, 0, *M.pack_text(sid, 3)))
        assert rc == 0 and "Written 6 references" in out, out

        def done():
            rc, out = mbpoll(where, "-t", "3", "-r", "1", "-c", "1")
            return rc == 0 and polled(out).get(1, 0) & M.ST_DONE
        wait_for(done, 20, "DONE in the status register")
        rc, out = mbpoll(where, "-t", "3", "-r", str(M.IR_VERDICT + 1), "-c", "38")
        regs = polled(out)
        seq = regs[M.IR_VERDICT_SEQ + 1] << 16 | regs[M.IR_VERDICT_SEQ + 2]
        got = M.unpack_text([regs[M.IR_VERDICT_SAMPLE_ID + 1 + k] & 0xFFFF for k in range(32)])
        truth = ScriptedInspector().inspect(sid, threading.Event(), lambda *_: None)
        code = {Status.PASS: 1, Status.FAIL: 2, Status.ERROR: 3}[truth.status]
        assert (got, regs[M.IR_VERDICT + 1], regs[M.IR_VERDICT_ACKED + 1]) == (sid, code, 0)
        assert regs[M.IR_DEFECT_COUNT + 1] == len(truth.defects)
        # 32-bit values: big-endian words, as mbpoll -B reads them
        rc, out = mbpoll(where, "-t", "3:int", "-B", "-r", str(M.IR_VERDICT_SEQ + 1))
        assert polled(out)[M.IR_VERDICT_SEQ + 1] == seq >= 1
        # a write to a read-only register: refused with a Modbus exception
        rc, out = mbpoll(where, "-r", str(M.HR_MIRROR + 1), values=(5,))
        assert rc != 0 and "Illegal data address" in out, out
        rc, out = mbpoll(where, "-r", "1", values=(3, seq >> 16, seq & 0xFFFF))
        assert rc == 0, out
        rc, out = mbpoll(where, "-t", "3", "-r", "1", "-c", "1")
        assert polled(out)[1] & M.ST_DONE == 0
        rc, out = mbpoll(where, "-t", "3", "-r", str(M.IR_VERDICT_ACKED + 1), "-c", "1")
        assert polled(out)[M.IR_VERDICT_ACKED + 1] == 1
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if close is not None:
            close()
    assert proc.returncode == 0, text()
