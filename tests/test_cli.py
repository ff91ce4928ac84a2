import subprocess
import sys

from edge.cli import main
from edge.recording import open_sample


def test_simulate_then_preview(tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["simulate", "--samples", "2", "--out", str(out), "--size", "128x96",
                 "--seed", "10", "-q"]) == 0
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == ["SIM00000010", "SIM00000011"]
    assert open_sample(out / "SIM00000010").frames(9).shape == (6, 96, 128)
    assert main(["simulate", "--preview", str(out)]) == 0
    pngs = sorted((out / "SIM00000011" / "preview").glob("*.png"))
    assert len(pngs) == 10
    from PIL import Image

    with Image.open(pngs[0]) as im:
        assert im.mode == "RGB" and im.width >= 3 * 64


def test_demo_writes_a_sample_and_previews(tmp_path, caplog):
    caplog.set_level("INFO")
    assert main(["demo", "--out", str(tmp_path), "--size", "128x96"]) == 0
    sample_dir = tmp_path / "SIM00000001"
    assert open_sample(sample_dir).truth().has_scratch
    assert len(list((sample_dir / "preview").glob("roi_*.png"))) == 10
    assert "scratch from" in caplog.text
    assert "verdict: SIM00000001: " in caplog.text
    assert len(list((tmp_path / "overlay" / "SIM00000001").glob("roi_*.png"))) == 10


def test_bad_config_is_one_message_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "head.toml"
    bad.write_text("[camera]\nwidth = 'wide'\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "camera.width" in err
    assert "Traceback" not in err


def test_bad_recording_is_one_message_and_exit_2(tmp_path, capsys):
    assert main(["preview", str(tmp_path)]) == 2
    assert "no recorded sample here" in capsys.readouterr().err


def test_arguments_that_do_not_fit(tmp_path, capsys):
    assert main(["simulate", "--samples", "1"]) == 2
    assert "--out" in capsys.readouterr().err


def test_config_check_and_default(capsys):
    assert main(["config", "check"]) == 0
    assert "valid head configuration" in capsys.readouterr().out
    assert main(["config", "default"]) == 0
    assert "[camera]" in capsys.readouterr().out


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "edge.cli", "--help"], capture_output=True,
                       text=True, check=True)
    for cmd in ("demo", "simulate", "preview", "config"):
        assert cmd in r.stdout


def test_demo_records_again_when_the_head_changed(tmp_path, caplog):
    caplog.set_level("INFO")
    assert main(["demo", "--out", str(tmp_path), "--size", "64x64"]) == 0
    assert main(["demo", "--out", str(tmp_path), "--size", "64x64"]) == 0
    assert "already recorded by this head" in caplog.text
    assert main(["demo", "--out", str(tmp_path), "--size", "96x64"]) == 0
    sample_dir = tmp_path / "SIM00000001"
    assert open_sample(sample_dir).frames(0).shape == (6, 64, 96)


def test_train_and_export_name_the_missing_extra(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    assert main(["train", "--epochs", "1"]) == 2
    assert "pip install -e '.[train]'" in capsys.readouterr().err
    assert main(["export", "onnx", "x.pt"]) == 2
    assert "needs torch" in capsys.readouterr().err


def test_export_of_a_bad_checkpoint_is_one_message(tmp_path, capsys):
    import pytest

    pytest.importorskip("torch")
    bad = tmp_path / "bad.pt"
    bad.write_text("nope")
    assert main(["export", "onnx", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_writes_a_checkpoint_through_the_cli(tmp_path, capsys):
    import pytest

    pytest.importorskip("torch")
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--epochs", "1", "--steps", "1", "--batch", "1",
                 "--scratch", "1", "--val-patches", "1", "--patch", "512", "--levels", "4",
                 "-q"]) == 0
    assert (out / "best.pt").is_file() and "best checkpoint" in capsys.readouterr().out
    import torch

    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    # the command's defaults train the shipped network: the hybrid with cross-entropy
    assert ckpt["network"] == "hybrid" and ckpt["settings"]["loss"] == "bce"
    assert main(["train", "--out", str(out), "--batch", "2", "--scratch", "3"]) == 2
