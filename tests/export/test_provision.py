"""First start (build the engine where needed, then serve) and the health check, with ONNX Runtime
standing in for TensorRT: the builder is a stand-in with the engine cache's behaviour (keyed by
model hash, TensorRT version, device, precision, tile and batch sizes) that "builds" an ONNX copy
and its sidecar, which ONNX Runtime then serves."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge import config
from edge.cli import build_parser, main
from edge.engine.sidecar import Sidecar
from edge.hashing import sha256_file
from export import provision
from export.provision import ProvisionError, prepare_engine
from export.tensorrt import BuildError, BuildResult
from firmware_bridge.health import Heartbeat, check_health
from tests.conftest import SHIPPED_MODEL, small_head_data, small_head_toml

ROOT = Path(__file__).resolve().parents[2]


class StandInBuilder:
    """export.tensorrt.build_engine's contract, without TensorRT: a cache in ``cache_dir`` keyed
    like the real one; a "build" copies the ONNX model (so ONNX Runtime can serve it) and writes
    the sidecar the real builder writes."""

    def __init__(self, trt_version: str = "10.3.0", device: str = "Orin", fail: str = ""):
        self.trt_version, self.device, self.fail = trt_version, device, fail
        self.calls: list[dict] = []
        self.builds = 0

    def __call__(self, onnx_path, out, precision="fp16", batch_sizes=(1, 4), tile=512,
                 workspace_mb=1024, timing_cache=None, quantization_batches=None,
                 strongly_typed=None, cache_dir=None) -> BuildResult:
        self.calls.append(dict(onnx=Path(onnx_path), out=Path(out), precision=precision,
                               batch_sizes=tuple(batch_sizes), tile=tile, cache_dir=cache_dir,
                               timing_cache=timing_cache))
        if self.fail:
            raise BuildError(self.fail)
        onnx_sha = sha256_file(onnx_path)
        batches = "-".join(str(b) for b in sorted(set(batch_sizes)))
        key = f"{onnx_sha[:16]}_trt{self.trt_version}_{self.device}_{precision}_t{tile}_b{batches}"
        cached = Path(cache_dir) / f"{key}.onnx"
        served = Path(out).with_suffix(".onnx")  # ONNX Runtime serves it by its suffix
        served.parent.mkdir(parents=True, exist_ok=True)
        if cached.is_file():
            shutil.copyfile(cached, served)
            shutil.copyfile(Sidecar.path_for(cached), Sidecar.path_for(served))
            return BuildResult(served, Sidecar.read(served), True, 0.01)
        self.builds += 1
        shutil.copyfile(onnx_path, served)
        sc = Sidecar(engine_sha256=sha256_file(served), onnx_sha256=onnx_sha,
                     onnx_name=Path(onnx_path).name, tensorrt_version=self.trt_version,
                     device=self.device, compute_capability="8.7", sm_count=16,
                     memory_mib=62841, precision=precision,
                     strongly_typed=False, input_name="frames", input_dtype="float32",
                     output_name="scores", tile=tile, batch_sizes=tuple(sorted(set(batch_sizes))),
                     built_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        sc.write(served)
        shutil.copyfile(served, cached)
        sc.write(cached)
        return BuildResult(served, sc, False, 0.5)


def has_tensorrt(version="10.3.0"):
    return lambda: (version, None)


def no_tensorrt():
    return None, "No module named 'tensorrt'"


def head(tmp_path: Path, artifact: Path | None = None, **engine) -> config.HeadConfig:
    d = small_head_data()
    if artifact is not None:
        d["engine"]["artifact"] = str(artifact)
    d["engine"].update(engine)
    return config.parse(d, str(tmp_path / "head.toml"))


def changed_model(tmp_path: Path) -> Path:
    """The shipped model with a doc string appended (ModelProto field 6): another valid model."""
    p = tmp_path / "retrained.onnx"
    p.write_bytes(SHIPPED_MODEL.read_bytes() + b"\x32\x09retrained")
    return p


# -- first start ----------------------------------------------------------------------------
def test_first_start_builds_into_the_cache_then_serves_what_it_built(tmp_path):
    pytest.importorskip("onnxruntime")
    from edge.engine import open_engine

    builder = StandInBuilder()
    cfg = head(tmp_path)
    served = []
    status = provision.start(cfg, lambda p: served.append(p) or 0, cache_dir=tmp_path / "c",
                             builder=builder, probe=has_tensorrt())
    assert status == 0 and builder.builds == 1 and len(served) == 1
    p = served[0]
    assert p.built and not p.from_cache and p.backend == "tensorrt"
    assert p.path.is_file() and p.path.is_relative_to(tmp_path / "c")
    call = builder.calls[0]
    assert call["onnx"] == SHIPPED_MODEL and call["cache_dir"] == tmp_path / "c"
    assert call["precision"] == "fp16" and call["tile"] == cfg.pipeline.tile_size
    assert call["batch_sizes"] == tuple(cfg.engine.batch_sizes)
    assert "10.3.0" in call["timing_cache"].name  # one timing cache per TensorRT version
    assert Sidecar.read(p.path).onnx_sha256 == sha256_file(SHIPPED_MODEL)
    with open_engine(p.path, max_batch=1) as engine:  # what was built is what ONNX Runtime serves
        out = engine.infer(np.zeros((1, 24, 64, 64), np.float32))
    assert out.shape == (1, 1, 64, 64)


def test_a_later_start_loads_the_cached_engine(tmp_path, caplog):
    builder = StandInBuilder()
    cfg = head(tmp_path)
    first = prepare_engine(cfg, tmp_path / "c", builder=builder, probe=has_tensorrt())
    caplog.set_level("INFO", logger="glass-inspect.provision")
    status = provision.start(cfg, lambda p: 7, cache_dir=tmp_path / "c", builder=builder,
                             probe=has_tensorrt())
    assert status == 7  # serve's own exit status
    again = prepare_engine(cfg, tmp_path / "c", builder=builder, probe=has_tensorrt())
    assert builder.builds == 1 and len(builder.calls) == 3
    assert again.from_cache and not again.built and again.path == first.path
    assert "from the engine cache" in caplog.text


@pytest.mark.parametrize("change", ["model", "tensorrt", "device", "precision"])
def test_a_changed_model_tensorrt_or_device_builds_again(tmp_path, change):
    builder = StandInBuilder()
    prepare_engine(head(tmp_path), tmp_path / "c", builder=builder, probe=has_tensorrt())
    cfg, precision, probe = head(tmp_path), "fp16", has_tensorrt()
    if change == "model":
        cfg = head(tmp_path, changed_model(tmp_path))
    elif change == "tensorrt":
        builder.trt_version, probe = "10.4.0", has_tensorrt("10.4.0")
    elif change == "device":
        builder.device = "Orin-Nano"
    else:
        precision = "fp32"
    p = prepare_engine(cfg, tmp_path / "c", precision, builder=builder, probe=probe)
    assert builder.builds == 2 and p.built
    assert Sidecar.read(p.path).onnx_sha256 == sha256_file(cfg.resolve(cfg.engine.artifact))


def test_a_retrained_model_is_served_after_its_rebuild(tmp_path):
    pytest.importorskip("onnxruntime")
    from edge.engine import open_engine

    model = changed_model(tmp_path)
    p = prepare_engine(head(tmp_path, model), tmp_path / "c", builder=StandInBuilder(),
                       probe=has_tensorrt())
    assert p.path.read_bytes() == model.read_bytes()
    open_engine(p.path).close()  # a valid model: ONNX Runtime loads it


def test_a_failed_build_is_one_message_and_nothing_is_served(tmp_path):
    builder = StandInBuilder(fail="TensorRT's ONNX parser rejected scratch_hybrid.onnx:\n"
                                  "  unsupported operator Foo")
    served = []
    with pytest.raises(ProvisionError) as e:
        provision.start(head(tmp_path), served.append, cache_dir=tmp_path / "c",
                        builder=builder, probe=has_tensorrt())
    msg = str(e.value)
    assert not served and "\n" not in msg
    assert "cannot build the fp16 TensorRT engine of scratch_hybrid.onnx" in msg
    assert "unsupported operator Foo" in msg and "not started" in msg


def test_a_cache_folder_the_user_cannot_write_says_what_to_do(tmp_path):
    def builder(*a, **kw):
        raise PermissionError(13, "Permission denied", str(tmp_path / "c"))

    with pytest.raises(ProvisionError, match="writable by this user"):
        prepare_engine(head(tmp_path), tmp_path / "c", builder=builder, probe=has_tensorrt())


@pytest.mark.parametrize("defect", ["other model", "precision", "batches", "damaged", "missing"])
def test_an_engine_that_is_not_this_models_is_never_served(tmp_path, defect):
    real = StandInBuilder()

    def builder(onnx_path, out, **kw):
        if defect == "other model":
            onnx_path = changed_model(tmp_path)
        elif defect == "precision":
            kw["precision"] = "fp32"
        elif defect == "batches":
            kw["batch_sizes"] = (1,)
        r = real(onnx_path, out, **kw)
        if defect == "damaged":
            with open(r.path, "ab") as f:
                f.write(b"\0")
        elif defect == "missing":
            r.path.unlink()
        return r

    with pytest.raises(ProvisionError, match="cannot be served"):
        prepare_engine(head(tmp_path), tmp_path / "c", builder=builder, probe=has_tensorrt())


def test_without_tensorrt_the_onnx_model_is_served_on_onnx_runtime_and_said(tmp_path):
    builder = StandInBuilder()
    p = prepare_engine(head(tmp_path), tmp_path / "c", builder=builder, probe=no_tensorrt)
    assert not builder.calls and p.path == SHIPPED_MODEL and p.backend == "onnxruntime"
    assert "TensorRT cannot be used on this machine" in p.how
    assert "No module named 'tensorrt'" in p.how and "ONNX Runtime" in p.how


def test_where_tensorrt_is_required_its_absence_stops_the_start(tmp_path):
    with pytest.raises(ProvisionError, match="runtime: nvidia"):
        prepare_engine(head(tmp_path), tmp_path / "c", require_tensorrt=True,
                       builder=StandInBuilder(), probe=no_tensorrt)
    with pytest.raises(ProvisionError, match="engine.backend"):
        prepare_engine(head(tmp_path, backend="tensorrt"), tmp_path / "c",
                       builder=StandInBuilder(), probe=no_tensorrt)
    with pytest.raises(ProvisionError, match="ONNX Runtime"):
        prepare_engine(head(tmp_path, backend="onnxruntime"), tmp_path / "c",
                       require_tensorrt=True, probe=has_tensorrt())


def test_an_engine_named_by_the_head_or_onnx_runtime_asked_for_needs_no_build(tmp_path):
    engine = tmp_path / "built-elsewhere.engine"
    engine.write_bytes(b"plan")
    builder = StandInBuilder()
    p = prepare_engine(head(tmp_path, engine), tmp_path / "c", builder=builder,
                       probe=has_tensorrt())
    assert p.path == engine and p.backend == "tensorrt" and not builder.calls
    p = prepare_engine(head(tmp_path, backend="onnxruntime"), tmp_path / "c", builder=builder,
                       probe=has_tensorrt())
    assert p.path == SHIPPED_MODEL and p.backend == "onnxruntime" and not builder.calls


def test_a_model_the_head_is_not_qualified_with_is_not_built(tmp_path):
    builder = StandInBuilder()
    with pytest.raises(ProvisionError, match="not the model"):
        prepare_engine(head(tmp_path, changed_model(tmp_path),
                            model_sha256=sha256_file(SHIPPED_MODEL)), tmp_path / "c",
                       builder=builder, probe=has_tensorrt())
    assert not builder.calls


def test_missing_model_and_int8_are_refused_in_words(tmp_path):
    with pytest.raises(ProvisionError, match="does not exist"):
        prepare_engine(head(tmp_path, tmp_path / "nope.onnx"), probe=has_tensorrt())
    with pytest.raises(ProvisionError, match="export engine --precision int8"):
        prepare_engine(head(tmp_path), precision="int8", probe=has_tensorrt())


def test_the_real_builder_takes_the_call_first_start_makes(tmp_path):
    """The stand-in is called exactly as export.tensorrt.build_engine would be."""
    from export.tensorrt import build_engine

    builder = StandInBuilder()
    prepare_engine(head(tmp_path), tmp_path / "c", builder=builder, probe=has_tensorrt())
    c = builder.calls[0]
    inspect.signature(build_engine).bind(
        c["onnx"], c["out"], precision=c["precision"], batch_sizes=c["batch_sizes"],
        tile=c["tile"], workspace_mb=1024, timing_cache=c["timing_cache"],
        cache_dir=c["cache_dir"])
    assert provision.default_builder() is build_engine


# -- the command ------------------------------------------------------------------------------
def test_start_parses_and_serves_the_prepared_engine(tmp_path, monkeypatch):
    import firmware_bridge.cli as bridge

    a = build_parser().parse_args(["start", "--head", "h.toml", "--cache", "c", "--precision",
                                   "fp32", "--journal", "j.jsonl", "--require-tensorrt"])
    assert a.func is bridge.cmd_start and a.cache == "c" and a.require_tensorrt
    assert not hasattr(a, "engine")  # start chooses the engine itself
    builder = StandInBuilder()
    monkeypatch.setattr(provision, "default_builder", lambda: builder)
    monkeypatch.setattr(provision, "tensorrt_runtime", has_tensorrt())
    seen = []
    monkeypatch.setattr(bridge, "cmd_serve", lambda args: seen.append(args.engine) or 0)
    small = small_head_toml(tmp_path)
    hb = tmp_path / "h.json"
    assert main(["start", "--head", str(small), "--cache", str(tmp_path / "c"),
                 "--health", str(hb)]) == 0
    assert builder.builds == 1 and seen == [str(builder.calls[0]["out"].with_suffix(".onnx"))]
    assert json.loads(hb.read_text())["state"] == "provisioning"  # serve (stubbed) took over


def test_start_with_a_failing_build_exits_non_zero_without_serving(tmp_path, monkeypatch, capsys):
    import firmware_bridge.cli as bridge

    monkeypatch.delenv("GLASS_INSPECT_HEAD", raising=False)
    monkeypatch.setattr(provision, "default_builder",
                        lambda: StandInBuilder(fail="out of memory while building"))
    monkeypatch.setattr(provision, "tensorrt_runtime", has_tensorrt())
    monkeypatch.setattr(bridge, "cmd_serve", lambda args: pytest.fail("served"))
    hb = tmp_path / "h.json"
    status = main(["start", "--cache", str(tmp_path / "c"), "--health", str(hb)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.count("\n") == 0
    assert err.startswith("glass-inspect start: cannot build") and "out of memory" in err
    ok, line = check_health(hb)
    assert not ok and line.startswith("the start failed")


def test_serve_hands_its_engine_option_to_the_assembly(tmp_path, monkeypatch):
    import edge.assembly as assembly
    from edge.assembly import AssemblyError

    monkeypatch.delenv("GLASS_INSPECT_HEAD", raising=False)
    seen = {}

    def spy(cfg, **kw):
        seen.update(kw)
        raise AssemblyError("head", ["stop here"])

    monkeypatch.setattr(assembly, "build_head", spy)
    engine = tmp_path / "x.onnx"
    assert main(["serve", "--engine", str(engine), "--journal", str(tmp_path / "j.jsonl"),
                 "--port", "loop://"]) == 2
    assert seen["engine_path"] == str(engine)


@pytest.mark.skipif(provision.tensorrt_runtime()[0] is not None,
                    reason="TensorRT is importable here: start would build, not fall back")
def test_start_on_a_machine_without_tensorrt_serves_onnx_and_is_healthy(tmp_path):
    """The whole first start in a process of its own: fallback said in words, served, healthy,
    stopped by SIGTERM."""
    hb = tmp_path / "health.json"
    env = {**os.environ, "GLASS_INSPECT_HEAD": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "start", "--cache", str(tmp_path / "c"), "--port",
         "sim", "--journal", str(tmp_path / "j.jsonl"), "--health", str(hb), "--inspector",
         "scripted", "--roi-time", "0"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if hb.is_file() and json.loads(hb.read_text() or "{}").get("state") == "serving":
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        ok, line = check_health(hb)
        assert ok, line
        assert main(["health", "--file", str(hb)]) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "TensorRT cannot be used on this machine" in out and "ONNX Runtime" in out
    assert main(["health", "--file", str(hb)]) == 1  # stopped


# -- health -----------------------------------------------------------------------------------
def beat(path: Path, **fields) -> Path:
    rec = {"state": "serving", "pid": os.getpid(), "time": time.time(), "port": "/dev/ttyTHS1",
           "link_open": True, "journal": str(path.parent / "j.jsonl"), "unacknowledged": 2,
           **fields}
    path.write_text(json.dumps(rec))
    return path


def test_a_fresh_heartbeat_of_a_live_serve_with_its_port_open_is_healthy(tmp_path):
    ok, line = check_health(beat(tmp_path / "h.json"))
    assert ok and line.startswith("healthy: serving on /dev/ttyTHS1") and "2 verdict(s)" in line


@pytest.mark.parametrize(("fields", "words"), [
    ({"time": -300}, "has not reported for 5 min: its loop is stuck"),  # seconds from now
    ({"pid": 2**22 + 12345}, "is not running"),
    ({"link_open": False}, "port /dev/ttyTHS1 is not open"),
    ({"state": "provisioning", "doing": "building the engine"}, "starting: building the engine"),
    ({"state": "stopped"}, "the head is stopped"),
])
def test_an_unhealthy_head_says_why_in_one_line(tmp_path, fields, words):
    if "time" in fields:
        fields = {**fields, "time": time.time() + fields["time"]}
    ok, line = check_health(beat(tmp_path / "h.json", **fields))
    assert not ok and words in line and "\n" not in line


def test_missing_or_broken_heartbeats_and_a_full_disk_are_unhealthy(tmp_path, monkeypatch):
    assert check_health(tmp_path / "none.json") == (
        False, f"no heartbeat at {tmp_path / 'none.json'}: serve has not started (or runs "
               "without --health)")
    (tmp_path / "bad.json").write_text("{")
    assert not check_health(tmp_path / "bad.json")[0]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=10 << 20))
    ok, line = check_health(beat(tmp_path / "h.json"))
    assert not ok and "only 10 MiB free for the verdict journal" in line


def test_the_health_command_answers_only_0_or_1(tmp_path, capsys):
    assert main(["health", "--file", str(beat(tmp_path / "h.json"))]) == 0
    assert main(["health", "--file", str(tmp_path / "missing.json")]) == 1
    assert main(["health", "--file", str(beat(tmp_path / "h.json")), "--max-age", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("healthy:") and out[1].startswith("unhealthy: no heartbeat")


def test_heartbeat_writes_atomically_and_only_when_due(tmp_path):
    hb = Heartbeat(tmp_path / "sub" / "h.json", every_s=60, port="p", journal="j")
    assert hb.due()
    hb.write("serving", link_open=True)
    rec = json.loads((tmp_path / "sub" / "h.json").read_text())
    assert rec["state"] == "serving" and rec["pid"] == os.getpid() and rec["port"] == "p"
    assert not hb.due() and not list((tmp_path / "sub").glob("*.partial"))


def test_serve_beats_from_its_own_loop(tmp_path):
    """The heartbeat is written by the server's loop after each step, so a stuck loop goes
    stale."""
    import threading

    from firmware_bridge.journal import Journal
    from firmware_bridge.server import VerdictServer

    stop = threading.Event()

    class OneStep(VerdictServer):
        steps = 0

        def step(self):
            self.steps += 1
            stop.set()

        def shutdown(self):
            pass

    journal = Journal(tmp_path / "j.jsonl")
    hb = Heartbeat(tmp_path / "h.json", every_s=0.0, port="p")
    server = OneStep(SimpleNamespace(is_open=True), None, journal, heartbeat=hb)
    server.run(stop)
    journal.close()
    rec = json.loads((tmp_path / "h.json").read_text())
    assert server.steps == 1 and rec["link_open"] is True and rec["unacknowledged"] == 0
