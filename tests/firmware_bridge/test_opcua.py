"""The OPC UA server (docs/opcua.md) beside a verdict link, against clients we did not write:
asyncua's own client and the uadiscover / uaread tools it installs."""

import asyncio
import shutil
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

asyncua = pytest.importorskip("asyncua")  # the optional 'opcua' extra
from asyncua import Client, ua  # noqa: E402

from edge import config  # noqa: E402
from edge.verdict import Status  # noqa: E402
from firmware_bridge import modbus_link as M  # noqa: E402
from firmware_bridge.inspector import ScriptedInspector  # noqa: E402
from firmware_bridge.journal import Journal  # noqa: E402
from firmware_bridge.opcua_server import NAMESPACE, OpcuaServer  # noqa: E402

USER, PASSWORD = "mes", "s3cret-pw"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(tmp_path, inspector, **opcua):
    """A Modbus TCP link (any link would do) in a thread, and the OPC UA server beside it."""
    settings = config.Opcua(endpoint=f"opc.tcp://127.0.0.1:{free_port()}/gi/",
                            **({"username": USER, "password": PASSWORD} | opcua))
    link = M.ModbusLink(config.VerdictLink(kind="modbus-tcp", tcp_port=0), inspector,
                        Journal(tmp_path / "j.jsonl"))
    server = OpcuaServer(settings, link, head="test head", head_digest="d" * 64,
                         model_sha256="a" * 64, backend="scripted")
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    server.start()
    try:
        yield server, link
    finally:
        server.stop()
        stop.set()
        t.join(10)


def url(server, login=True) -> str:
    host = server.endpoint.removeprefix("opc.tcp://")
    return f"opc.tcp://{USER}:{PASSWORD}@{host}" if login else server.endpoint


class Events:
    def __init__(self):
        self.got = []

    def event_notification(self, event):
        self.got.append({k: getattr(v, "Value", v)
                         for k, v in event.get_event_props_as_fields_dict().items()})


async def node(client, path):
    idx = await client.get_namespace_index(NAMESPACE)
    return client.get_node(ua.NodeId(path, idx))


SM = "VisionSystem.VisionStateMachine"
AUTO = f"{SM}.AutomaticMode"


async def mes_session(server, samples):
    """Select automatic mode, run one single job per sample, collect the result events."""
    client = Client(url(server), timeout=10)
    async with client:
        vs = await node(client, "VisionSystem")
        sm, auto = await node(client, SM), await node(client, AUTO)
        state = await node(client, f"{SM}.CurrentState")
        mode = await node(client, f"{AUTO}.CurrentState")
        assert await state.read_value() == "Halted"
        idx = await client.get_namespace_index(NAMESPACE)
        etype = await client.nodes.base_event_type.get_child(f"{idx}:ResultReadyEventType")
        handler = Events()
        sub = await client.create_subscription(20, handler)
        await sub.subscribe_events(vs, etype)
        with pytest.raises(ua.UaStatusCodeError):  # no job before a mode is selected
            await auto.call_method(f"{idx}:StartSingleJob", "TOO-EARLY")
        await sm.call_method(f"{idx}:SelectModeAutomatic")
        assert (await state.read_value(), await mode.read_value()) == ("Operational", "Ready")
        jobs = []
        for sid in samples:
            jobs.append(await auto.call_method(f"{idx}:StartSingleJob", sid))
            for _ in range(500):
                if len(handler.got) == len(jobs) and await mode.read_value() == "Ready":
                    break
                await asyncio.sleep(0.02)
        last = await (await node(client, "VisionSystem.ResultManagement.LastResult.Verdict")
                      ).read_value()
        digest = await (await node(client, "VisionSystem.ConfigurationManagement.HeadDigest")
                        ).read_value()
        model = await (await node(client, "VisionSystem.RecipeManagement.ModelSha256")
                       ).read_value()
        await sm.call_method(f"{idx}:Halt")
        halted = await state.read_value()
        return jobs, handler.got, last, digest, model, halted


def test_mes_selects_automatic_starts_jobs_and_gets_result_events(tmp_path):
    insp = ScriptedInspector(roi_time_s=0.01, rois=3,
                             script={"G-1": Status.PASS, "G-2": Status.FAIL, "G-3": Status.ERROR})
    with served(tmp_path, insp) as (server, link):
        jobs, events, last, digest, model, halted = asyncio.run(
            mes_session(server, ["G-1", "G-2", "G-3"]))
        assert jobs == ["G-1", "G-2", "G-3"]
        assert [(e["SampleId"], e["Verdict"]) for e in events] == \
            [("G-1", "PASS"), ("G-2", "FAIL"), ("G-3", "ERROR")]
        assert events[1]["DefectCount"] >= 1 and '"length_mm"' in events[1]["Defects"]
        assert {e["Origin"] for e in events} == {"opcua"}
        assert last == "ERROR" and digest == "d" * 64 and model == "a" * 64
        assert halted == "Halted"
        # journaled once each, acknowledged: the MES's jobs do not wait on the PLC's link
        assert sorted(e.sample_id for e in link.journal.by_id.values()) == ["G-1", "G-2", "G-3"]
        assert not link.journal.unacknowledged()


def test_plc_jobs_raise_the_event_too_and_stay_the_plcs_to_acknowledge(tmp_path):
    from pymodbus.client import ModbusTcpClient

    insp = ScriptedInspector(roi_time_s=0.005, rois=2, script={"P-1": Status.FAIL})

    async def watch(server, done):
        async with Client(url(server), timeout=10) as client:
            idx = await client.get_namespace_index(NAMESPACE)
            etype = await client.nodes.base_event_type.get_child(f"{idx}:ResultReadyEventType")
            handler = Events()
            sub = await client.create_subscription(20, handler)
            await sub.subscribe_events(await node(client, "VisionSystem"), etype)
            await asyncio.get_running_loop().run_in_executor(None, done)
            for _ in range(250):
                if handler.got:
                    break
                await asyncio.sleep(0.02)
            return handler.got

    with served(tmp_path, insp) as (server, link):
        def plc():
            c = ModbusTcpClient("127.0.0.1", port=link.address[1], timeout=2)
            assert c.connect()
            assert not c.write_registers(0, [M.CMD_START, 0, 0] + M.pack_text("P-1")).isError()
            c.close()
        got = asyncio.run(watch(server, plc))
        assert [(e["SampleId"], e["Verdict"], e["Origin"]) for e in got] == \
            [("P-1", "FAIL", "link")]
        assert [e.sample_id for e in link.journal.unacknowledged()] == ["P-1"]


def test_anonymous_and_wrong_password_are_refused(tmp_path):
    async def login(address):
        async with Client(address, timeout=5) as client:
            return await (await node(client, f"{SM}.CurrentState")).read_value()

    with served(tmp_path, ScriptedInspector()) as (server, _):
        with pytest.raises(Exception):  # noqa: B017 - asyncua raises per token and version
            asyncio.run(login(server.endpoint))
        host = server.endpoint.removeprefix("opc.tcp://")
        with pytest.raises(Exception):  # noqa: B017
            asyncio.run(login(f"opc.tcp://{USER}:wrong@{host}"))
        assert asyncio.run(login(url(server))) == "Halted"


def test_anonymous_when_the_head_file_says_so(tmp_path):
    async def read(address):
        async with Client(address, timeout=5) as client:
            return await (await node(client, f"{SM}.CurrentState")).read_value()

    with served(tmp_path, ScriptedInspector(), anonymous=True, username=None,
                password=None) as (server, _):
        assert asyncio.run(read(server.endpoint)) == "Halted"


def test_opcua_section_validated(default_data):
    default_data["opcua"] = {}
    with pytest.raises(config.ConfigError, match="anonymous access is off and no username"):
        config.parse(default_data, "h.toml")
    default_data["opcua"] = {"username": "a"}
    with pytest.raises(config.ConfigError, match="username and password go together"):
        config.parse(default_data, "h.toml")
    default_data["opcua"] = {"username": "a", "password": "b", "endpoint": "http://x:1"}
    with pytest.raises(config.ConfigError, match="opcua.endpoint"):
        config.parse(default_data, "h.toml")
    default_data["opcua"] = {"username": "a", "password": "b"}
    cfg = config.parse(default_data, "h.toml")
    assert cfg.opcua.endpoint.startswith("opc.tcp://127.0.0.1:")
    del default_data["opcua"]
    assert config.parse(default_data, "h.toml").digest() == cfg.digest()  # not in the digest


@pytest.mark.skipif(not (BIN / "uaread").exists(), reason="asyncua's tools are not installed")
def test_uadiscover_and_uaread_against_the_server(tmp_path):
    with served(tmp_path, ScriptedInspector()) as (server, _):
        out = subprocess.run([str(BIN / "uadiscover"), "-u", server.endpoint],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "glass-inspect head test head" in out.stdout
        # the endpoint offers a user name login (token type 1) and no anonymous one (0)
        policies = [ln.strip() for ln in out.stdout.splitlines() if "User policy:" in ln]
        assert policies == ["User policy: username"], out.stdout
        idx = 2  # the first namespace registered after the standard ones
        read = subprocess.run([str(BIN / "uaread"), "-u", url(server), "-n",
                               f"ns={idx};s={SM}.CurrentState"],
                              capture_output=True, text=True, timeout=60)
        assert read.returncode == 0, read.stderr
        assert read.stdout.strip().splitlines()[-1] == "Halted"
        refused = subprocess.run([str(BIN / "uaread"), "-u", server.endpoint, "-n",
                                  f"ns={idx};s={SM}.CurrentState"],
                                 capture_output=True, text=True, timeout=60)
        assert "Halted" not in refused.stdout


def test_tools_are_where_the_extra_puts_them():
    assert shutil.which("uaread", path=str(BIN)) and shutil.which("uadiscover", path=str(BIN))
