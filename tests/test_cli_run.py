"""``glass-inspect run --sim``: the README's main job, as a new user runs it (a subprocess)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import real_head_toml, small_head_toml

pytest.importorskip("onnxruntime")

CLI = [sys.executable, "-m", "edge.cli"]


def levels(trace_text: str) -> dict[int, int]:
    """The last level of every header pin in a GPIO trace (time, pin, level per line)."""
    last = {}
    for line in trace_text.splitlines():
        _, pin, level = line.split()
        last[int(pin)] = int(level)
    return last


def test_run_sim_prints_verdicts_beside_the_ground_truth(tmp_path):
    head = small_head_toml(tmp_path)
    out = subprocess.run(CLI + ["run", "--sim", "--config", str(head), "--samples", "2",
                                "--seed", "11", "--quiet", "--overlay", str(tmp_path / "ov")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(" truth: " in f" {x}" for x in lines) == 2
    assert lines[-2].startswith("2 samples: ") and "agrees with the ground truth" in lines[-2]
    assert "homing the stage" in out.stderr
    assert len(list((tmp_path / "ov").glob("*/roi_*.png"))) == 4


def test_run_without_a_head_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GLASS_INSPECT_HEAD"}
    out = subprocess.run(CLI + ["run"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2
    assert "--head HEAD.toml" in out.stderr and "--sim" in out.stderr


def test_real_head_with_missing_parts_stops_at_once_one_line_each(tmp_path):
    head = real_head_toml(tmp_path)
    out = subprocess.run(CLI + ["run", "--head", str(head), "--samples", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0] == f"glass-inspect run: cannot start the head of {head}:"
    parts = [line.strip().split(":")[0] for line in lines[1:]]
    assert parts == ["GPIO (ring light and trigger)", "stage", "camera"], out.stderr
    assert "/dev/ttyGRBL9 does not exist" in out.stderr
    assert "/dev/video9" in out.stderr
    assert "Traceback" not in out.stderr


def test_sim_with_a_real_head_file_is_refused(tmp_path):
    out = subprocess.run(CLI + ["run", "--sim", "--head", str(real_head_toml(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "names a real camera (/dev/video9)" in out.stderr


def test_sigterm_leaves_every_led_dark(tmp_path):
    head = small_head_toml(tmp_path)
    trace = tmp_path / "gpio.txt"
    proc = subprocess.Popen(CLI + ["run", "--sim", "--config", str(head), "--samples", "100",
                                   "--quiet", "--trace", str(trace)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # wait until the head is in the middle of taking frames: an LED group is lit
        while time.monotonic() < deadline:
            text = trace.read_text() if trace.exists() else ""
            on = [ln for ln in text.splitlines() if ln.endswith(" 1") and " 37 " not in ln]
            if len(on) >= 9 and levels(text).get(int(on[-1].split()[1])) == 1:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the head never lit an LED")
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = levels(trace.read_text())
    assert last and all(v == 0 for v in last.values()), last
    assert "Traceback" not in err


def test_serve_with_a_real_head_missing_its_parts_stops_before_opening_the_link(tmp_path):
    head = real_head_toml(tmp_path)
    out = subprocess.run(CLI + ["serve", "--head", str(head), "--journal",
                                str(tmp_path / "j.jsonl")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "cannot start the head" in out.stderr and "camera: /dev/video9" in out.stderr
    assert "line controller port" not in out.stdout
