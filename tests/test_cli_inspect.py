"""``glass-inspect inspect`` and ``export parity`` / ``qdq`` through the command line."""

import json

import pytest

from edge.cli import main
from tests.conftest import SHIPPED_MODEL, small_head_toml

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    head = small_head_toml(root)
    assert main(["simulate", "--config", str(head), "--samples", "1", "--seed", "3",
                 "--scratch-share", "1", "--out", str(root / "samples"), "-q"]) == 0
    return head, root / "samples"


def test_inspect_prints_a_verdict_and_writes_overlays_and_json(small, tmp_path, capsys):
    head, samples = small
    rc = main(["inspect", str(samples), "--config", str(head), "--overlay", str(tmp_path / "ov"),
               "--json", str(tmp_path / "v.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("SIM00000003: ")
    (v,) = json.loads((tmp_path / "v.json").read_text())
    assert v["status"] in ("PASS", "FAIL") and len(v["rois"]) == 2
    assert v["engine"]["backend"] == "onnxruntime"
    assert sorted(p.name for p in (tmp_path / "ov" / "SIM00000003").iterdir()) == [
        "roi_00.png", "roi_01.png"]


def test_corrupt_engine_file_gives_error_verdicts(small, tmp_path, capsys):
    head, samples = small
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    rc = main(["inspect", str(samples), "--config", str(head), "--engine", str(bad)])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.startswith("SIM00000003: ERROR - ONNX Runtime cannot load")


def test_damaged_recording_gives_an_error_verdict(small, tmp_path, capsys):
    import shutil

    head, samples = small
    copy = tmp_path / "s"
    shutil.copytree(samples, copy)
    tif = sorted(copy.glob("*/roi_01*.tif*"))[0]
    data = bytearray(tif.read_bytes())
    data[-100] ^= 0xFF
    tif.write_bytes(bytes(data))
    rc = main(["inspect", str(copy), "--config", str(head)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "ERROR - RoI 1: " in out and "does not match the manifest's SHA-256" in out


def test_recording_of_another_camera_is_an_error(small, tmp_path, capsys):
    head, samples = small
    text = head.read_text().replace("bit_depth = 12", "bit_depth = 10")
    other = tmp_path / "ten-bit.toml"
    other.write_text(text)
    assert main(["inspect", str(samples), "--config", str(other)]) == 1
    assert "recorded with a 12-bit GRBG camera, the head has a 10-bit" in capsys.readouterr().out


def test_qdq_then_parity(small, tmp_path, capsys):
    pytest.importorskip("onnx")  # the quantizer edits the graph: the train extra
    head, samples = small
    out = tmp_path / "m.qdq.onnx"
    assert main(["export", "qdq", str(SHIPPED_MODEL), "--config", str(head), "--samples",
                 str(samples), "--tiles", "2", "--method", "minmax", "--out", str(out)]) == 0
    rc = main(["export", "parity", str(SHIPPED_MODEL), str(out), "--config", str(head),
               "--samples", str(samples), "--rois", "1"])
    text = capsys.readouterr().out
    assert "max abs difference" in text
    assert rc in (0, 1)  # 1 only when the defects disagree; the report says which
    assert ("agree" in text) if rc == 0 else ("DISAGREE" in text)


def test_engine_build_without_tensorrt_is_one_message(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt"):
        pytest.skip("TensorRT present")
    rc = main(["export", "engine", str(SHIPPED_MODEL), "--out", str(tmp_path / "m.engine")])
    assert rc == 2
    assert "needs the tensorrt Python module" in capsys.readouterr().err
