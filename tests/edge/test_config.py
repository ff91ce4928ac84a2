import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import config
from tests.conftest import with_changes


def write_toml(tmp_path, text: str):
    p = tmp_path / "head.toml"
    p.write_text(text)
    return p


def test_embedded_default_is_the_simulated_head(cfg):
    assert cfg.name == "simulated-head"
    assert cfg.simulation is not None
    assert (cfg.camera.width, cfg.camera.height, cfg.camera.bit_depth) == (3504, 3120, 12)
    assert cfg.camera.bayer_pattern == "GRBG"
    assert cfg.illumination.angles_deg == (0, 30, 60, 90, 120, 150)
    assert cfg.stage.roi_grid.count == 10
    assert cfg.stage.roi_grid.pitch_mm == (38.0, 33.0)
    assert (cfg.pipeline.t_low, cfg.pipeline.t_high) == (0.15, 0.6)
    assert (cfg.pipeline.dbscan_eps, cfg.pipeline.dbscan_min_samples) == (12, 2)


def test_file_round_trip_and_digest_ignores_formatting(tmp_path, cfg):
    p = write_toml(tmp_path, "# a comment\n\n" + config.default_text())
    loaded = config.load(p)
    assert loaded.model_dump() == cfg.model_dump()
    assert loaded.digest() == cfg.digest()
    assert loaded.source == str(p)
    assert loaded.resolve("models/x.onnx") == tmp_path / "models/x.onnx"


def test_digest_changes_with_content():
    assert with_changes(camera={"exposure_ms": 10.0}).digest() != config.load().digest()


def test_a_key_at_its_default_leaves_the_digest_alone():
    # a software update that adds an option with a default must not unbind every head's
    # calibration (bound to this digest): a key the head file does not set is not content
    base = config.load()
    default = config.Illumination.model_fields["watchdog_max_trips"].default
    assert with_changes(illumination={"watchdog_max_trips": default}).digest() == base.digest()
    assert with_changes(illumination={"watchdog_max_trips": default + 1}).digest() != base.digest()


def test_roi_grid_geometry(cfg):
    g = cfg.stage.roi_grid
    assert g.roi_origin_mm(0) == (0.0, 0.0)
    assert g.roi_origin_mm(1) == (38.0, 0.0)
    assert g.roi_origin_mm(9) == (38.0, 132.0)
    assert g.extent_mm == (78.0, 167.0)
    with pytest.raises(IndexError):
        g.roi_origin_mm(10)


@pytest.mark.parametrize(
    ("edit", "key", "words"),
    [
        (lambda d: d["camera"].update(colour="red"), "camera.colour", "unknown key"),
        (lambda d: d.update(extra_section={}), "extra_section", "unknown key"),
        (lambda d: d["camera"].update(width="3504"), "camera.width", "valid integer"),
        (lambda d: d["camera"].update(width=3505), "camera.width", "multiple of 2"),
        (lambda d: d["camera"].update(bit_depth=20), "camera.bit_depth", "less than or equal"),
        (lambda d: d["camera"].update(bayer_pattern="GRGB"), "camera.bayer_pattern", "GRBG"),
        (lambda d: d["camera"].update(exposure_ms=-1.0), "camera.exposure_ms", "greater than"),
        (lambda d: d["camera"].pop("height"), "camera.height", "missing"),
        (lambda d: d["illumination"]["states"].pop(), "illumination.states", "at least 6"),
        (lambda d: d["illumination"]["states"][0].update(angle_deg=180.0),
         "illumination.states.0.angle_deg", "less than 180"),
        (lambda d: d["illumination"]["states"][1].update(pin=29), "illumination", "own pin"),
        (lambda d: d["illumination"].update(trigger_pin=6), "illumination", "not GPIO"),
        (lambda d: d["stage"]["roi_grid"].update(origin_mm=[1.0, 2.0, 3.0]),
         "stage.roi_grid.origin_mm", "at most 2"),
        (lambda d: d["stage"]["roi_grid"].update(size_mm=[40.0, "35"]),
         "stage.roi_grid.size_mm.1", "valid number"),
        (lambda d: d["stage"]["roi_grid"].update(overlap_mm=50.0), "stage.roi_grid", "overlap"),
        (lambda d: d["stage"].update(baud=12345), "stage.baud", "115200"),
        (lambda d: d["stage"]["soft_limits_mm"].update(x=[0.0, 40.0]), "stage", "soft limits"),
        (lambda d: d["pipeline"].update(t_low=0.9), "pipeline", "t_low"),
        (lambda d: d["pipeline"].update(tile_size=500), "pipeline.tile_size", "multiple of 32"),
        (lambda d: d["engine"].update(backend="cuda"), "engine.backend", "tensorrt"),
        (lambda d: d["simulation"].update(read_noise_dn=-2.0), "simulation.read_noise_dn",
         "greater than or equal"),
    ],
)
def test_each_error_names_the_file_and_the_key(tmp_path, default_data, edit, key, words):
    edit(default_data)
    with pytest.raises(config.ConfigError) as err:
        config.parse(default_data, str(tmp_path / "head.toml"))
    msg = str(err.value)
    assert str(tmp_path / "head.toml") in msg
    line = next((x for x in msg.splitlines() if x.strip().startswith(key + ":")), None)
    assert line is not None, msg
    assert words in line, msg


def test_all_problems_reported_at_once(default_data):
    default_data["camera"]["width"] = 1
    default_data["pipeline"]["colour"] = 1
    with pytest.raises(config.ConfigError) as err:
        config.parse(default_data, "h.toml")
    assert "camera.width" in str(err.value) and "pipeline.colour" in str(err.value)


def test_bad_toml_and_missing_file_name_the_file(tmp_path):
    p = write_toml(tmp_path, "[camera\nwidth = 1\n")
    with pytest.raises(config.ConfigError, match=r"head\.toml is not valid TOML"):
        config.load(p)
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")


def real_parts(data: dict) -> dict:
    data["camera"]["device"] = "/dev/video0"
    data["illumination"]["pin_factory"] = "jetson"
    data["stage"]["port"] = "/dev/ttyUSB0"
    return data


def test_real_head_without_simulation_is_valid(default_data):
    data = real_parts(default_data)
    del data["simulation"]
    cfg = config.parse(data)
    assert cfg.simulation is None and not cfg.simulated and cfg.camera.kind == "v4l2"


@pytest.mark.parametrize("changes, words", [
    ({"camera": {"device": "/dev/video0"}}, "set illumination.pin_factory = 'jetson'"),
    ({"illumination": {"pin_factory": "jetson"}}, "set illumination.pin_factory = 'mock'"),
    ({"stage": {"port": "/dev/ttyUSB0"}}, "set stage.port = 'sim'"),
    ({"camera": {"device": "replay:"}}, "needs a folder of recorded samples"),
    ({"camera": {"device": "video0"}}, "expected a V4L2 device path"),
    ({"camera": {"pixel_format": "RAW12"}}, "camera.pixel_format"),
    ({"camera": {"trigger": "software"}}, "camera.trigger"),
    ({"illumination": {"pin_factory": "rpigpio"}}, "illumination.pin_factory"),
])
def test_parts_that_cannot_work_together_are_refused(default_data, changes, words):
    for section, values in changes.items():
        default_data[section].update(values)
    with pytest.raises(config.ConfigError, match="invalid head configuration") as e:
        config.parse(default_data, "parts.toml")
    assert words in str(e.value)


def test_simulated_camera_needs_the_simulation_section(default_data):
    del default_data["simulation"]
    with pytest.raises(config.ConfigError, match=r"\[simulation\] section"):
        config.parse(default_data)


def test_replay_head_and_shipped_paths(tmp_path, default_data):
    default_data["camera"]["device"] = "replay:recorded"
    cfg = config.parse(default_data, str(tmp_path / "head.toml"))
    assert cfg.camera.kind == "replay" and cfg.simulated
    assert cfg.resolve("recorded") == tmp_path / "recorded"
    shipped = cfg.resolve("shipped:scratch_unet.onnx")
    assert shipped.is_file() and shipped.parent.name == "models"
    assert shipped.parent.parent == pathlib.Path(config.__file__).parent


def test_frozen(cfg):
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        cfg.camera.width = 10


_KEYS = [("camera", "width"), ("camera", "exposure_ms"), ("camera", "bayer_pattern"),
         ("illumination", "settle_ms"), ("stage", "baud"), ("stage", "soft_limits_mm"),
         ("pipeline", "t_low"), ("pipeline", "downscale"), ("engine", "batch_sizes"),
         ("calibration", "file"), ("simulation", "channel_gain")]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(_KEYS),
       value=st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                       st.text(max_size=8), st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_any_value_either_loads_or_gives_a_config_error(default_data, where, value):
    import copy

    data = copy.deepcopy(default_data)
    section, key = where
    if value is None:
        del data[section][key]
    else:
        data[section][key] = value
    try:
        config.parse(data, "fuzz.toml")
    except config.ConfigError as exc:
        assert "fuzz.toml" in str(exc) and f"{section}" in str(exc)
