import argparse

import pytest

from firmware_bridge import cli


def parser():
    p = argparse.ArgumentParser(prog="glass-inspect")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    cli.add_commands(sub)
    return p


def test_both_commands_are_registered_with_their_options():
    p = parser()
    a = p.parse_args(["serve", "--port", "/dev/ttyUSB0", "--journal", "j.jsonl",
                      "--roi-time", "0", "--repeat", "0.5"])
    assert a.func is cli.cmd_serve and a.port == "/dev/ttyUSB0" and a.roi_time == 0.0
    assert a.inspector == "head" and a.repeat == 0.5 and not hasattr(a, "head")
    a = p.parse_args(["line-sim", "--config", "head.toml", "--samples", "3", "--seed", "7",
                      "--prefix", "LINE4_", "--timeout", "9"])
    assert a.func is cli.cmd_line_sim and (a.samples, a.seed, a.prefix, a.timeout) == \
        (3, 7, "LINE4_", 9.0)
    assert a.head == "head.toml"


@pytest.mark.parametrize("argv", [["serve", "--repeat", "0"], ["serve", "--roi-time", "-1"],
                                  ["line-sim", "--prefix", "bad,prefix"],
                                  ["line-sim", "--timeout", "soon"],
                                  ["serve", "--inspector", "real"]])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_port_and_baud_come_from_the_head_config():
    a = parser().parse_args(["line-sim"])
    assert cli._link_settings(a) == ("sim", 115200)
    a = parser().parse_args(["line-sim", "--port", "loop://", "--baud", "9600"])
    assert cli._link_settings(a) == ("loop://", 9600)


def test_line_sim_needs_a_real_port(capsys):
    a = parser().parse_args(["line-sim"])
    assert a.func(a) == 2
    assert "give --port" in capsys.readouterr().err
