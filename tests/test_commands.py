"""``glass-inspect`` is assembled from the ``glass_inspect.commands`` entry-point group: each
package adds its own commands and ``edge`` imports none of the packages above it."""

import argparse
import re
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from edge import cli
from tests.conftest import ROOT

UPPER = ("calibration", "export", "model", "firmware_bridge")


def _declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["entry-points"][cli.COMMAND_GROUP]


def test_every_declared_hook_is_installed_and_loads():
    # a stale editable install (pip install -e . before a hook was added) silently drops it
    declared = _declared()
    installed = {ep.name: ep.value for ep in entry_points(group=cli.COMMAND_GROUP)}
    assert installed == declared, "reinstall: pip install -e '.[dev,cpu,train]'"
    assert set(declared) <= set(cli.HOOK_ORDER)
    for ep in entry_points(group=cli.COMMAND_GROUP):
        assert callable(ep.load()), ep


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_help_lists_every_command_of_every_package_in_hook_order():
    commands = list(_commands(cli.build_parser()))
    for name in ("run", "inspect", "preview", "config", "check", "classify", "calibrate",
                 "simulate", "simulate-darkfield", "demo", "train", "evaluate",
                 "evaluate-windows", "export", "serve", "start", "health", "line-sim"):
        assert name in commands, name
    assert commands.index("run") == 0 and commands.index("check") < commands.index("classify")
    assert commands.index("train") < commands.index("export") < commands.index("serve")
    out = subprocess.run([sys.executable, "-m", "edge.cli", "--help"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    assert "unavailable" not in out
    assert all(re.search(rf"^\s+{re.escape(n)}\b", out, re.M) for n in commands)


def test_a_hook_that_fails_to_load_becomes_one_command_that_says_why(monkeypatch, capsys):
    good = [ep for ep in cli.command_hooks() if ep.name == "head"]
    broken = EntryPoint("export", "export.nowhere:add_commands", cli.COMMAND_GROUP)
    monkeypatch.setattr(cli, "command_hooks", lambda: [*good, broken])
    parser = cli.build_parser()
    commands = _commands(parser)
    assert {"run", "inspect", "export"} <= set(commands)  # the others still work
    assert "unavailable" in parser.format_help()
    assert cli.main(["export", "onnx", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert "export.nowhere:add_commands" in err and "No module named 'export.nowhere'" in err


def test_no_module_under_edge_imports_a_package_above_it():
    pattern = re.compile(rf"^\s*(from|import) ({'|'.join(UPPER)})(\.|\s)")
    offenders = [f"{p.relative_to(ROOT)}:{k}: {line.strip()}"
                 for p in sorted((ROOT / "edge").rglob("*.py"))
                 for k, line in enumerate(p.read_text().splitlines(), 1) if pattern.match(line)]
    assert offenders == []


def test_user_errors_share_one_base_class():
    from edge.assembly import AssemblyError
    from edge.calibration import CalibrationError
    from edge.cli_common import UsageError
    from edge.config import ConfigError
    from edge.errors import UserError
    from edge.recording import RecordingError

    for cls in (AssemblyError, CalibrationError, UsageError, ConfigError, RecordingError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls
