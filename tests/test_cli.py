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
    sample_dir = next(tmp_path.iterdir())
    assert open_sample(sample_dir).truth().has_scratch
    assert len(list((sample_dir / "preview").glob("roi_*.png"))) == 10
    assert "scratch from" in caplog.text


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
    sample_dir = next(tmp_path.iterdir())
    assert open_sample(sample_dir).frames(0).shape == (6, 64, 96)
