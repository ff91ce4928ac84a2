import copy
import sys
from pathlib import Path

import pytest

from edge import config

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

_DEFAULT = tomllib.loads(config.default_text())


@pytest.fixture
def default_data() -> dict:
    """The embedded default head as a plain mapping, to modify in a test."""
    return copy.deepcopy(_DEFAULT)


@pytest.fixture(scope="session")
def cfg() -> config.HeadConfig:
    return config.load()


def with_changes(**sections) -> config.HeadConfig:
    """The default head with some keys of some sections replaced."""
    data = copy.deepcopy(_DEFAULT)
    for section, changes in sections.items():
        data[section].update(changes)
    return config.parse(data, "test.toml")


ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "edge" / "models" / "scratch_hybrid.onnx"  # the default head's network
UNET_MODEL = ROOT / "edge" / "models" / "scratch_unet.onnx"  # the glass paper's U-Net

# A small head at the real pixel footprint: 1024 x 1024 px RoIs (one 512 x 512 tile after
# space-to-depth), two of them side by side overlapping by 2 mm.
SMALL_PX = 1024


def small_head_data(columns: int = 2, rows: int = 1) -> dict:
    data = copy.deepcopy(_DEFAULT)
    w_mm = SMALL_PX * 40.0 / 3504
    h_mm = SMALL_PX * 35.0 / 3120
    data["camera"].update(width=SMALL_PX, height=SMALL_PX)
    data["stage"]["roi_grid"].update(size_mm=[w_mm, h_mm], overlap_mm=2.0, columns=columns,
                                     rows=rows)
    data["engine"]["artifact"] = str(SHIPPED_MODEL)
    return data


@pytest.fixture(scope="session")
def small_cfg() -> config.HeadConfig:
    return config.parse(small_head_data(), "small-head.toml")


def small_head_toml(folder: Path) -> Path:
    """The small head as a file, for the command line."""
    import re

    d = small_head_data()
    text = config.default_text()
    subs = {r"^width = \d+": f"width = {SMALL_PX}", r"^height = \d+": f"height = {SMALL_PX}",
            r"^size_mm = .*": f"size_mm = {d['stage']['roi_grid']['size_mm']}",
            r"^columns = \d+": "columns = 2", r"^rows = \d+": "rows = 1",
            r"^artifact = .*": f'artifact = "{SHIPPED_MODEL}"'}
    for pattern, repl in subs.items():
        text, n = re.subn(pattern, repl, text, count=1, flags=re.M)
        assert n == 1, pattern
    path = folder / "small-head.toml"
    path.write_text(text)
    assert config.load(path).digest() == config.parse(d).digest()
    return path


def real_head_toml(folder: Path, camera: str = "/dev/video9", port: str = "/dev/ttyGRBL9") -> Path:
    """The default head turned into a real one whose parts are not on this machine."""
    text = config.default_text()
    for old, new in (('device = "sim"', f'device = "{camera}"'),
                     ('pin_factory = "mock"', 'pin_factory = "jetson"'),
                     ('port = "sim"            # a pyserial', f'port = "{port}"  # a pyserial')):
        assert old in text, old
        text = text.replace(old, new, 1)
    path = folder / "real-head.toml"
    path.write_text(text)
    return path
