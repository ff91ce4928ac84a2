"""What each verdict link adds to an inspection: trigger to readable verdict, minus the
inspection's own time, per link kind (issue 32; target p99 under 20 ms).

Each link's server runs in a thread of this process on a journal of its own in a temporary
folder (fsynced as in production: the journal write is part of the overhead), driving a
scripted inspector that takes a fixed time (``--inspect-ms``, 10 RoIs) and records when it
started and returned. The line side is a client we did not write where there is one:

* ``ascii``: :class:`firmware_bridge.client.LineClient` on a pseudo-terminal pair (HELLO
  once); trigger = ``inspect()`` called, readable = the VERDICT returned (it then ACKs);
* ``modbus-tcp``: pymodbus's client on localhost; trigger = the START write sent, readable =
  the first STATUS read (FC4, one register, polled back to back as a fast PLC task would)
  that shows DONE; the verdict is then read and acknowledged;
* ``modbus-rtu``: the same over two pseudo-terminals joined by a relay thread. A pty has no
  wire time: on a real line at 115200 baud each STATUS poll adds about 1.3 ms of bytes.
* ``io``: the discrete I/O link on gpiozero's MockFactory with the simulated PLC
  (:mod:`firmware_bridge.io_plc_sim`); trigger = the PLC's trigger edge, readable = the
  strobe's rise (the head's own pin record); it includes the head file's default
  ``debounce_ms`` (5) and ``settle_ms`` (2), which a PLC programmer chooses, and the 0.5 ms
  input sampling. Mock pins have no wire time, as a real opto-coupled input has little.

overhead = (readable - trigger) - (inspector returned - inspector started). Printed as
``{"links": [{"kind", "p50_ms", "p99_ms", ...}]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import config  # noqa: E402
from edge.verdict import Status  # noqa: E402
from firmware_bridge import modbus_link as M  # noqa: E402
from firmware_bridge.client import LineClient  # noqa: E402
from firmware_bridge.inspector import ScriptedInspector  # noqa: E402
from firmware_bridge.journal import Journal  # noqa: E402
from firmware_bridge.port import FdPort, Link, relayed_ptys  # noqa: E402
from firmware_bridge.server import open_link as open_ascii  # noqa: E402

UNIT = 1


class TimedInspector:
    """Always PASS after ``seconds`` (10 RoIs); remembers when each inspection ran."""

    def __init__(self, seconds: float) -> None:
        self.inner = ScriptedInspector(roi_time_s=seconds / 10, rois=10)
        self.spans: dict[str, float] = {}

    def inspect(self, sample_id, abort, progress):
        self.inner.script[sample_id] = Status.PASS
        t = time.monotonic()
        v = self.inner.inspect(sample_id, abort, progress)
        self.spans[sample_id] = time.monotonic() - t
        return v


def _serve(server) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    t = threading.Thread(target=server.run, args=(stop,), daemon=True)
    t.start()
    return stop, t


def run_ascii(folder: Path, insp: TimedInspector, n: int) -> list[float]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    settings = config.VerdictLink(port=os.ttyname(slave), baud=115200)
    server = open_ascii(settings, insp, Journal(folder / "ascii.jsonl"))
    stop, t = _serve(server)
    while not server.link.generation:
        time.sleep(0.01)
    port = FdPort(master, 0.02)
    client = LineClient("pty", link=Link("pty", opener=lambda: port))
    client.hello()
    out = []
    for i in range(n):
        sid = f"A{i:05d}"
        t0 = time.monotonic()
        v = client.inspect(sid, 10.0)
        t1 = time.monotonic()
        assert v.sample_id == sid and v.status is Status.PASS, v
        out.append(t1 - t0 - insp.spans[sid])
    stop.set()
    t.join(10)
    os.close(master)
    os.close(slave)
    return out


def run_modbus(folder: Path, kind: str, insp: TimedInspector, n: int) -> list[float]:
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient

    close = None
    if kind == "modbus-tcp":
        settings = config.VerdictLink(kind=kind, tcp_port=0, unit_id=UNIT)
    else:
        head, line, close = relayed_ptys()
        settings = config.VerdictLink(kind=kind, port=head, baud=115200, parity="none",
                                      unit_id=UNIT)
    link = M.ModbusLink(settings, insp, Journal(folder / f"{kind}.jsonl"))
    stop, t = _serve(link)
    assert link.listening.wait(10)
    client = (ModbusTcpClient("127.0.0.1", port=link.address[1], timeout=2)
              if kind == "modbus-tcp" else
              ModbusSerialClient(line, baudrate=115200, parity="N", timeout=2))
    assert client.connect()
    out = []
    for i in range(n):
        sid = f"M{i:05d}"
        t0 = time.monotonic()
        r = client.write_registers(0, [M.CMD_START, 0, 0] + M.pack_text(sid), device_id=UNIT)
        assert not r.isError(), r
        while True:
            status = client.read_input_registers(M.IR_STATUS, count=1, device_id=UNIT)
            if status.registers[0] & M.ST_DONE:
                break
        t1 = time.monotonic()
        regs = client.read_input_registers(0, count=M.IR_COUNT, device_id=UNIT).registers
        assert M.unpack_text(regs[M.IR_VERDICT_SAMPLE_ID:M.IR_VERDICT_SAMPLE_ID + 32]) == sid
        seq = regs[M.IR_VERDICT_SEQ] << 16 | regs[M.IR_VERDICT_SEQ + 1]
        assert not client.write_registers(0, [M.CMD_ACK, seq >> 16, seq & 0xFFFF],
                                          device_id=UNIT).isError()
        out.append(t1 - t0 - insp.spans[sid])
    client.close()
    stop.set()
    t.join(10)
    if close is not None:
        close()
    return out


def run_io(folder: Path, insp: TimedInspector, n: int) -> list[float]:
    from gpiozero.pins.mock import MockFactory

    from firmware_bridge.io_link import IoLink
    from firmware_bridge.io_plc_sim import SimPlc

    settings = config.VerdictLink(kind="io", trigger_pin=11, busy_pin=12, pass_pin=13,
                                  fail_pin=16, error_pin=18, strobe_pin=22, ack_pin=35)
    factory = MockFactory()
    link = IoLink(settings, insp, Journal(folder / "io.jsonl"), pin_factory=factory)
    plc = SimPlc(factory, settings)
    stop, t = _serve(link)
    assert link.ready.wait(10)
    out = []
    for _ in range(n):
        c = plc.cycle(10.0)
        assert c.status == "PASS", c
        sid = max(link.journal.by_id.values(), key=lambda e: e.verdict_id).sample_id
        out.append(c.strobe_ms / 1000 - insp.spans[sid])
    stop.set()
    t.join(10)
    factory.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inspections", type=int, default=200)
    ap.add_argument("--inspect-ms", type=float, default=20.0,
                    help="the scripted inspection's own time (default: 20)")
    ap.add_argument("--kinds", default="ascii,modbus-tcp,modbus-rtu,io")
    args = ap.parse_args()
    result = {"inspections": args.inspections, "inspect_ms": args.inspect_ms, "links": []}
    with tempfile.TemporaryDirectory() as d:
        for kind in args.kinds.split(","):
            insp = TimedInspector(args.inspect_ms / 1000)
            if kind == "ascii":
                spans = run_ascii(Path(d), insp, args.inspections)
            elif kind == "io":
                spans = run_io(Path(d), insp, args.inspections)
            else:
                spans = run_modbus(Path(d), kind, insp, args.inspections)
            ms = np.array(spans) * 1000
            result["links"].append({"kind": kind, "p50_ms": round(float(np.percentile(ms, 50)), 2),
                                    "p99_ms": round(float(np.percentile(ms, 99)), 2),
                                    "max_ms": round(float(ms.max()), 2),
                                    "target_p99_ms": 20.0,
                                    "meets_target": bool(np.percentile(ms, 99) < 20.0)})
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
