"""The Modbus link: the head as a Modbus RTU or TCP server (pymodbus) over the inspection
service, so a PLC drives it with its own Modbus function blocks and no code of ours.

The register map is ``docs/modbus.md``; :class:`Registers` is that map and nothing else, and
:class:`ModbusLink` runs pymodbus and the service. Choices:

* **Holding registers** (FC3 read, FC6/FC16 write) are what the PLC writes: the command, the
  verdict number it acknowledges, the sample id. **Input registers** (FC4) are what the head
  reports. For masters that only read holding registers, the input registers are also
  mirrored, read-only, at holding address 100 + n; a write there, or anywhere outside the
  command block, is refused with exception 02 (illegal data address).
* A write that covers the COMMAND register executes the command once every register of the
  write is stored, so one FC16 write of the whole block, or the parameters first and COMMAND
  last, are the same. COMMAND keeps the value written (an FC6 answer is an echo of the
  request on every PLC we know); writing the same command again executes it again, which is
  safe: START of the sample being inspected says RUNNING, START of a sample with a journaled
  verdict shows that verdict, ACK names its verdict number and ABORT its sample.
* A refused command answers a Modbus exception (06 device busy: START while another sample is
  inspected; 03 illegal data value: anything else) and also says why in COMMAND_RESULT and
  ERROR_TEXT, for function blocks that hide exception codes.
* The verdict block shows the **oldest unacknowledged verdict**, else the last one given or
  answered; so a verdict stays readable until acknowledged and none is overwritten by the
  next. Its number is the journal's verdict id (32 bits, big-endian words: high word first).
* Text is ASCII, two characters per register, the first in the high byte, NUL-padded
  (trailing NULs and spaces are dropped from a written sample id, so space-padded PLC
  strings work).
* One lock guards the service and the registers: pymodbus answers in its own thread (an
  asyncio loop), the service's loop takes the worker's reports in this one. The service loop
  blocks on the worker's queue, not on a timer, so a finished verdict is readable about as
  soon as it is journaled.
* RTU answers only its ``unit_id`` and stays silent for others (a multi-drop RS-485 bus);
  TCP answers other unit ids with exception 0B (gateway target failed to respond).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.datastore.context import ModbusBaseDeviceContext
from pymodbus.framer import FramerType
from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from edge import __version__
from edge.verdict import Status
from firmware_bridge import protocol as P
from firmware_bridge.codec import Decoder, Frame
from firmware_bridge.inspection import InspectionService
from firmware_bridge.journal import Entry, Journal

log = logging.getLogger("glass-inspect.bridge")

# -- the register map (docs/modbus.md); 0-based PDU addresses ----------------------------------

TEXT_REGS = 32  # 64 characters: the longest sample id

# holding registers, written by the PLC
HR_COMMAND = 0
HR_ACK_SEQ = 1  # 2 registers
HR_SAMPLE_ID = 3  # TEXT_REGS registers
HR_WRITABLE = HR_SAMPLE_ID + TEXT_REGS  # 35: the command block is 0..34
HR_MIRROR = 100  # input register n is mirrored read-only at holding 100 + n

# input registers, reported by the head
IR_STATUS = 0
IR_HEARTBEAT = 1
IR_COMMAND_COUNT = 2
IR_COMMAND_RESULT = 3
IR_PROGRESS_DONE = 4
IR_PROGRESS_TOTAL = 5
IR_INSPECTING = 6  # TEXT_REGS registers
IR_UNACKED = 38
IR_VERDICT = 40
IR_VERDICT_ACKED = 41
IR_VERDICT_SEQ = 42  # 2 registers
IR_DEFECT_COUNT = 44
IR_LONGEST_DEFECT = 45  # 0.01 mm
IR_VERDICT_SAMPLE_ID = 46  # TEXT_REGS registers
IR_ERROR_CODE = 78
IR_ERROR_TEXT = 79  # TEXT_REGS registers
IR_COUNT = IR_ERROR_TEXT + TEXT_REGS  # 111

CMD_START, CMD_ABORT, CMD_ACK = 1, 2, 3

# STATUS bits
ST_READY, ST_BUSY, ST_DONE, ST_ERROR, ST_RESTARTED = 1, 2, 4, 8, 16

# COMMAND_RESULT: 1-15 taken, 16 and up refused
RES_NONE, RES_STARTED, RES_RUNNING, RES_ANSWERED, RES_ABORTING, RES_ACKED = range(6)
RES_BUSY, RES_NOT_INSPECTING, RES_UNKNOWN_VERDICT, RES_BAD_SAMPLE_ID, RES_BAD_COMMAND = \
    range(16, 21)

VERDICT_CODES = {Status.PASS.value: 1, Status.FAIL.value: 2, Status.ERROR.value: 3}

# ERROR_CODE, in the order they win when several hold
ERR_NONE, ERR_COMMAND, ERR_INSPECTION, ERR_JOURNAL, ERR_INSPECTOR = range(5)

HEARTBEAT_S = 0.1


def pack_text(text: str, regs: int = TEXT_REGS) -> list[int]:
    """ASCII, two characters a register, the first in the high byte, NUL-padded."""
    data = text.encode("ascii", "replace")[:2 * regs].ljust(2 * regs, b"\0")
    return [data[i] << 8 | data[i + 1] for i in range(0, 2 * regs, 2)]


def unpack_text(regs: list[int]) -> str:
    """The text of :func:`pack_text` registers; trailing NULs and spaces dropped."""
    data = b"".join(r.to_bytes(2, "big") for r in regs)
    return data.split(b"\0", 1)[0].rstrip(b" ").decode("latin-1")


def _u32(value: int) -> list[int]:
    return [(value >> 16) & 0xFFFF, value & 0xFFFF]


class _Refused(Exception):
    def __init__(self, result: int, exc: ExcCodes, text: str) -> None:
        super().__init__(text)
        self.result, self.exc = result, exc


class Registers:
    """The register map over an inspection service. Every method runs under ``lock``."""

    def __init__(self, service: InspectionService, lock: threading.Lock) -> None:
        self.service = service
        self.journal: Journal = service.journal
        self.lock = lock
        self.holding = [0] * HR_WRITABLE
        self.heartbeat = 0
        self.command_count = 0
        self.command_result = RES_NONE
        self.restarted = True  # until the first command after a (re)start
        self.refused = ""  # why the last command was refused; "" when it was taken
        self._answered: Entry | None = None  # the last verdict given or answered
        self._parsed: tuple[int, P.WireVerdict] | None = None

    # -- what is shown -----------------------------------------------------------------------

    def shown(self) -> Entry | None:
        """The verdict block's verdict: the oldest unacknowledged, else the last given or
        answered, else the newest in the journal."""
        pending = self.journal.unacknowledged()
        if pending:
            return pending[0]
        if self._answered is not None and self._answered.verdict_id in self.journal.by_id:
            return self._answered
        return max(self.journal.by_id.values(), key=lambda e: e.verdict_id, default=None)

    def _wire(self, e: Entry) -> P.WireVerdict:
        if self._parsed is None or self._parsed[0] != e.verdict_id:
            frame = next(f for f in Decoder().feed(e.line.encode("ascii") + b"\n")
                         if isinstance(f, Frame))
            self._parsed = (e.verdict_id, P.WireVerdict.from_frame(frame))
        return self._parsed[1]

    def _error(self, shown: Entry | None) -> tuple[int, str]:
        s = self.service
        if s.stuck is not None:
            return ERR_INSPECTOR, (f"inspection of {s.stuck.sample_id} did not stop; busy "
                                   "until it does")
        if s.journal_problem:
            return ERR_JOURNAL, s.journal_problem
        if self.refused:
            return ERR_COMMAND, self.refused
        if shown is not None and not shown.acked and shown.status == Status.ERROR.value:
            return ERR_INSPECTION, self._wire(shown).reason
        return ERR_NONE, ""

    def inputs(self) -> list[int]:
        s = self.service
        busy = s.busy_job()
        shown = self.shown()
        code, text = self._error(shown)
        unacked = len(self.journal.unacknowledged())
        status = ((ST_BUSY if busy else ST_READY) | (ST_DONE if unacked else 0)
                  | (ST_ERROR if code else 0) | (ST_RESTARTED if self.restarted else 0))
        regs = [0] * IR_COUNT
        regs[IR_STATUS] = status
        regs[IR_HEARTBEAT] = self.heartbeat
        regs[IR_COMMAND_COUNT] = self.command_count
        regs[IR_COMMAND_RESULT] = self.command_result
        if busy is not None:
            regs[IR_PROGRESS_DONE] = min(busy.done, 0xFFFF)
            regs[IR_PROGRESS_TOTAL] = min(busy.total, 0xFFFF)
            regs[IR_INSPECTING:IR_INSPECTING + TEXT_REGS] = pack_text(busy.sample_id)
        regs[IR_UNACKED] = min(unacked, 0xFFFF)
        if shown is not None:
            w = self._wire(shown)
            regs[IR_VERDICT] = VERDICT_CODES[w.status.value]
            regs[IR_VERDICT_ACKED] = int(shown.acked)
            regs[IR_VERDICT_SEQ:IR_VERDICT_SEQ + 2] = _u32(shown.verdict_id)
            regs[IR_DEFECT_COUNT] = min(w.defect_count, 0xFFFF)
            longest = max((d.length_mm for d in w.defects), default=0.0)
            regs[IR_LONGEST_DEFECT] = min(round(longest * 100), 0xFFFF)
            regs[IR_VERDICT_SAMPLE_ID:IR_VERDICT_SAMPLE_ID + TEXT_REGS] = \
                pack_text(shown.sample_id)
        regs[IR_ERROR_CODE] = code
        regs[IR_ERROR_TEXT:IR_ERROR_TEXT + TEXT_REGS] = pack_text(text)
        return regs

    def tick(self) -> None:
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF

    # -- Modbus access -----------------------------------------------------------------------

    def read(self, fc: int, address: int, count: int) -> list[int] | ExcCodes:
        end = address + count
        if fc == 4:
            if address < 0 or end > IR_COUNT:
                return ExcCodes.ILLEGAL_ADDRESS
            return self.inputs()[address:end]
        if fc not in (3, 6, 16, 23):
            return ExcCodes.ILLEGAL_FUNCTION
        if address >= 0 and end <= HR_WRITABLE:
            return self.holding[address:end]
        if address >= HR_MIRROR and end <= HR_MIRROR + IR_COUNT:
            return self.inputs()[address - HR_MIRROR:end - HR_MIRROR]
        return ExcCodes.ILLEGAL_ADDRESS

    def write(self, fc: int, address: int, values: list[int]) -> ExcCodes | None:
        if fc not in (6, 16, 23):
            return ExcCodes.ILLEGAL_FUNCTION
        end = address + len(values)
        if address < 0 or end > HR_WRITABLE:  # read-only or nothing there
            return ExcCodes.ILLEGAL_ADDRESS
        self.holding[address:end] = values
        if address <= HR_COMMAND < end:
            return self.command(self.holding[HR_COMMAND])
        return None

    # -- commands ----------------------------------------------------------------------------

    def command(self, code: int) -> ExcCodes | None:
        self.command_count = (self.command_count + 1) & 0xFFFF
        self.restarted = False
        try:
            if code == CMD_START:
                result = self._start(self._sample_id())
            elif code == CMD_ABORT:
                result = self._abort(self._sample_id())
            elif code == CMD_ACK:
                result = self._ack((self.holding[HR_ACK_SEQ] << 16) | self.holding[HR_ACK_SEQ + 1])
            else:
                raise _Refused(RES_BAD_COMMAND, ExcCodes.ILLEGAL_VALUE,
                               f"unknown command {code}: 1 START, 2 ABORT, 3 ACK")
        except _Refused as r:
            log.info("Modbus command %d refused: %s", code, r)
            self.command_result, self.refused = r.result, str(r)
            return r.exc
        self.command_result, self.refused = result, ""
        return None

    def _sample_id(self) -> str:
        sid = unpack_text(self.holding[HR_SAMPLE_ID:HR_SAMPLE_ID + TEXT_REGS])
        if not P.valid_sample_id(sid):
            raise _Refused(RES_BAD_SAMPLE_ID, ExcCodes.ILLEGAL_VALUE,
                           f"sample id {sid!r}: 1-64 of A-Z a-z 0-9 _ . - expected")
        return sid

    def _start(self, sid: str) -> int:
        s = self.service
        if s.job is not None and s.job.sample_id == sid:
            return RES_RUNNING
        busy = s.busy_job()
        if busy is not None:
            raise _Refused(RES_BUSY, ExcCodes.DEVICE_BUSY, f"busy inspecting {busy.sample_id}")
        e = s.answer(sid)
        if e is not None:
            log.info("sample %s: asked again; answering verdict %d from the journal", sid,
                     e.verdict_id)
            self._answered = e
            return RES_ANSWERED
        s.start(sid)
        return RES_STARTED

    def _abort(self, sid: str) -> int:
        job = self.service.job
        if job is None or job.sample_id != sid:
            raise _Refused(RES_NOT_INSPECTING, ExcCodes.ILLEGAL_VALUE, f"not inspecting {sid}")
        self.service.stop(job, "aborted by the line controller")
        return RES_ABORTING

    def _ack(self, vid: int) -> int:
        e = self.journal.by_id.get(vid)
        if e is None:
            raise _Refused(RES_UNKNOWN_VERDICT, ExcCodes.ILLEGAL_VALUE,
                           f"no verdict number {vid} to acknowledge")
        self.service.acknowledge(vid)  # None when acknowledged already: the same answer
        self._answered = e
        return RES_ACKED

    def verdict_given(self, e: Entry) -> None:
        self._answered = e


class _Context(ModbusBaseDeviceContext):
    """pymodbus's view of the map: every access under the lock."""

    def __init__(self, registers: Registers) -> None:
        self.registers = registers

    def reset(self) -> None:
        pass  # the head's state is not the master's to reset

    def getValues(self, func_code, address, count=1):  # noqa: N802 (pymodbus's name)
        with self.registers.lock:
            return self.registers.read(func_code, address, count)

    def setValues(self, func_code, address, values):  # noqa: N802
        with self.registers.lock:
            return self.registers.write(func_code, address, list(values))


class ModbusLink:
    """The Modbus server: pymodbus in a thread of its own, the service in :meth:`run`."""

    def __init__(self, settings, inspector, journal: Journal, *, heartbeat=None,
                 abort_grace_s: float = 2.0, inspect_timeout_s: float = 300.0,
                 reopen_s: float = 0.5, port: str | None = None,
                 parity: str | None = None) -> None:
        self.settings = settings
        self.kind = settings.kind
        self.port = port or settings.port  # the serial port path (RTU)
        self.parity = parity or settings.serial_parity
        self.heartbeat = heartbeat
        self.reopen_s = reopen_s
        self.journal = journal
        self.lock = threading.Lock()
        self.service = InspectionService(inspector, journal, abort_grace_s=abort_grace_s,
                                         inspect_timeout_s=inspect_timeout_s)
        self.registers = Registers(self.service, self.lock)
        self.service.on_verdict = self.registers.verdict_given
        self.address: tuple[str, int] | None = None  # where TCP listens, once it does
        self.listening = threading.Event()
        self._server = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def describe(self) -> str:
        s = self.settings
        if self.kind == "modbus-tcp":
            where = f"{self.address[0]}:{self.address[1]}" if self.address else \
                f"{s.host}:{s.tcp_port}"
            return f"Modbus TCP on {where}, unit {s.unit_id}"
        return (f"Modbus RTU on {self.port} at {s.baud} baud, 8{self.parity}"
                f"{s.serial_stop_bits}, unit {s.unit_id}"
                + (", RS-485 direction by the kernel" if s.rs485 == "kernel" else ""))

    # -- pymodbus, in its thread -------------------------------------------------------------

    def _make_server(self):
        s = self.settings
        ctx = ModbusServerContext(devices={s.unit_id: _Context(self.registers)}, single=False)
        identity = ModbusDeviceIdentification(info_name={
            "VendorName": P.PRODUCT, "ProductName": "glass inspection head",
            "MajorMinorRevision": __version__})
        if self.kind == "modbus-tcp":
            return ModbusTcpServer(ctx, framer=FramerType.SOCKET, identity=identity,
                                   address=(s.host, s.tcp_port))
        return ModbusSerialServer(ctx, framer=FramerType.RTU, identity=identity,
                                  ignore_missing_devices=True, port=self.port,
                                  baudrate=s.baud, parity=self.parity, bytesize=8,
                                  stopbits=s.serial_stop_bits, timeout=1,
                                  reconnect_delay=self.reopen_s)

    def _rs485(self, server) -> None:
        s = self.settings
        if self.kind != "modbus-rtu" or s.rs485 != "kernel":
            return
        from serial.rs485 import RS485Settings

        # the driver raises RTS for each frame and drops it when the last bit is out
        server.transport.sync_serial.rs485_mode = RS485Settings(
            rts_level_for_tx=s.rs485_rts_level_for_tx,
            rts_level_for_rx=not s.rs485_rts_level_for_tx,
            delay_before_tx=s.rs485_delay_before_tx_ms / 1000 or None,
            delay_before_rx=s.rs485_delay_before_rx_ms / 1000 or None)

    def _alive(self, server) -> bool:
        t = server.transport
        return t is not None and (self.kind == "modbus-tcp" or t.sync_serial is not None)

    async def _serve(self) -> None:
        down_since = None
        while not self._stopping.is_set():
            server = self._make_server()
            try:
                await server.serve_forever(background=True)
                self._rs485(server)
            except Exception as exc:  # noqa: BLE001 - any failure to open is retried alike
                with contextlib.suppress(Exception):
                    await server.shutdown()
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("cannot serve %s (%s); trying again every %.1f s",
                                self.describe(), exc, self.reopen_s)
                await asyncio.sleep(self.reopen_s)
                continue
            if self.kind == "modbus-tcp":
                self.address = server.transport.sockets[0].getsockname()[:2]
            self._server = server
            if down_since is not None:
                log.warning("serving %s again after %.1f s", self.describe(),
                            time.monotonic() - down_since)
                down_since = None
            else:
                log.info("serving %s", self.describe())
            self.listening.set()
            while not self._stopping.is_set() and self._alive(server):
                await asyncio.sleep(0.1)
            self.listening.clear()
            self._server = None
            with contextlib.suppress(Exception):
                await server.shutdown()
            if not self._stopping.is_set():
                down_since = time.monotonic()
                log.warning("lost the port of %s; reopening every %.1f s", self.describe(),
                            self.reopen_s)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except Exception:
            log.exception("the Modbus server failed")
        finally:
            loop.close()

    # -- the service loop --------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set."""
        log.info("verdict journal %s: %d verdict(s), %d awaiting acknowledgement by the line",
                 self.journal.path, len(self.journal.by_id), len(self.journal.unacknowledged()))
        self._thread = threading.Thread(target=self._thread_main, name="modbus", daemon=True)
        self._thread.start()
        next_beat = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    self.service.wait(0.02)
                    with self.lock:
                        self.service.poll()
                        now = time.monotonic()
                        if now >= next_beat:
                            self.registers.tick()
                            next_beat = now + HEARTBEAT_S
                    if self.heartbeat is not None and self.heartbeat.due():
                        self.heartbeat.write("serving", link_open=self.listening.is_set(),
                                             unacknowledged=len(self.journal.unacknowledged()))
                except Exception:
                    log.exception("internal error in the Modbus verdict server; carrying on")
                    time.sleep(0.1)
        finally:
            self.shutdown()

    def abort_now(self, reason: str) -> None:
        self.service.abort_now(reason)

    def shutdown(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        with self.lock:
            self.service.shutdown()


def open_link(settings, inspector, journal: Journal, *, heartbeat=None, repeat_s: float = 1.0,
              abort_grace_s: float = 2.0, inspect_timeout_s: float = 300.0,
              reopen_s: float = 0.5) -> ModbusLink:
    """The Modbus link of ``settings`` (``[verdict_link]``). ``repeat_s`` is the ASCII link's:
    a Modbus master polls, so nothing is repeated; the verdict stays in the registers."""
    port = parity = None
    if settings.kind == "modbus-rtu" and settings.port == "sim":
        from firmware_bridge.port import relayed_ptys

        # Linux refuses to set parity on a pseudo-terminal a second time (pyserial does, on
        # open): the simulated line runs without parity, whatever the file says
        port, line, _close = relayed_ptys()
        parity = "N"
        print(f"line controller port: {line}  (e.g. mbpoll -m rtu -b {settings.baud} -P none "
              f"-a {settings.unit_id} -t 3 -c 10 -1 {line})", flush=True)
    return ModbusLink(settings, inspector, journal, heartbeat=heartbeat,
                      abort_grace_s=abort_grace_s, inspect_timeout_s=inspect_timeout_s,
                      reopen_s=reopen_s, port=port, parity=parity)
