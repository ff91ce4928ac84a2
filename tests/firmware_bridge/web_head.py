"""A simulated head serving with its web page, and Debian's Chromium to look at it: what the
browser tests and ``docs/screenshots.py`` share.

The head is the small simulated head of ``tests.conftest`` (2 RoIs of 1024 x 1024 px at the
real pixel footprint; about a second a sample on a CPU) with ``[review]`` keeping every FAIL
and a ``[web]`` token; ``serve`` runs as its own process on a pseudo-terminal wire, and a
:class:`firmware_bridge.client.LineClient` plays the line controller.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import small_head_toml
from tests.firmware_bridge.wire import ROOT, Wire, wait_for

TOKEN = "browser-test-token-42"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.access(path, os.X_OK) or shutil.which(Path(path).name)):
            return (f"{path} is missing: apt-get install --no-install-recommends {package} "
                    "(.ci/run does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def chrome(width: int = 1280, height: int = 900):
    """Headless Chromium through the system chromedriver (nothing downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    service = Service(shutil.which("chromedriver") or CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


def head_file(folder: Path, token: str = TOKEN, calibration: str = "") -> Path:
    """The small head's file with ``[review]`` and ``[web]`` (and a calibration file)."""
    path = small_head_toml(folder)
    text = path.read_text()
    if calibration:
        text = re.sub(r'^file = ""', f'file = "{calibration}"', text, count=1, flags=re.M)
    path.write_text(text + f'\n[review]\ndir = "kept"\nbudget_gb = 1.0\n\n'
                           f'[web]\ntoken = "{token}"\n')
    return path


class ServingHead:
    """``glass-inspect serve --web 127.0.0.1:0`` of the small simulated head on a wire."""

    def __init__(self, folder: Path, *extra: str, calibration: str = "") -> None:
        self.folder = folder
        self.head = head_file(folder, calibration=calibration)
        self.wire = Wire(folder)
        self.log = folder / "serve.log"
        args = [sys.executable, "-m", "firmware_bridge", "serve", "--head", str(self.head),
                "--port", str(self.wire.head_path), "--journal", str(folder / "journal.jsonl"),
                "--web", "127.0.0.1:0", *extra]
        env = dict(os.environ)
        env.pop("GLASS_INSPECT_WEB_TOKEN", None)
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                         env=env)
        found = wait_for(lambda: self._url(), 120, "the web page's address in serve's output")
        self.url = found.rstrip("/")

    def _url(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve ended ({self.proc.returncode}):\n{self.text()}")
        m = re.search(r"web page: (http://\S+)", self.text())
        return m.group(1) if m else None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def kept(self) -> Path:
        return self.folder / "kept"

    def inspect_until(self, status: str, prefix: str = "WEB", tries: int = 12) -> str:
        """Send samples until one gets ``status``; its id. The simulated head places its own
        glass for each id, so some are scratched and fail."""
        from firmware_bridge.client import LineClient

        with LineClient(self.wire.line_path) as line:
            line.hello()
            for k in range(tries):
                sid = f"{prefix}-{k}"
                v = line.inspect(sid, timeout=120)
                if v.status.value == status:
                    return sid
        raise AssertionError(f"no {status} verdict in {tries} samples")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.wire.close()


def wait_kept(head: ServingHead, sid: str, timeout: float = 60.0) -> Path:
    """The sample's folder once the review writer has finished it."""
    folder = head.kept / sid
    wait_for(lambda: (folder / "verdict.json").is_file(), timeout, f"{sid} kept for review")
    return folder
