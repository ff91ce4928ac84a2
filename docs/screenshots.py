"""Screenshots of the head's web page for the docs: ``docs/web-live.png``, ``docs/web-sample.png``
and ``docs/web-head.png``.

What it does: calibrates the small simulated head of the tests (2 RoIs of 1024 x 1024 px, 2
frames per step: about 15 s), serves it with ``glass-inspect serve --web`` (``[review]`` keeps
the FAILs, ``--health`` keeps a heartbeat), lets a line controller send 6 samples, and takes
the three pages with Debian's headless Chromium through Selenium (the browser tests' setup,
:mod:`tests.firmware_bridge.web_head`). Run from the repository root::

    python docs/screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import small_head_toml  # noqa: E402
from tests.firmware_bridge.web_head import (  # noqa: E402
    ServingHead,
    browser_missing,
    chrome,
    wait_kept,
)

SAMPLES = 6


def shoot(driver, url: str, path: Path, wait_for: str | None = None, height: int = 1400) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(1280, 900)
    driver.get(url)
    if wait_for:
        WebDriverWait(driver, 60).until(
            EC.presence_of_element_located((By.CSS_SELECTOR, wait_for)))
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(full, 600), height))
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where the PNGs go (default: docs)")
    args = ap.parse_args()
    why = browser_missing()
    if why:
        print(f"screenshots: {why}", file=sys.stderr)
        return 2
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="web-shots-") as tmp:
        folder = Path(tmp)
        cal = folder / "cal"
        plain = small_head_toml(folder)
        subprocess.run([sys.executable, "-m", "edge.cli", "calibrate", "--head", str(plain),
                        "--out", str(cal), "--frames", "2", "--quiet"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        head = ServingHead(folder, "--health", str(folder / "health.json"),
                           calibration="cal/calibration.npz")
        try:
            from firmware_bridge.client import LineClient

            fails = []
            with LineClient(head.wire.line_path) as line:
                line.hello()
                for k in range(SAMPLES):
                    v = line.inspect(f"LINE7-{k:04d}", timeout=120)
                    if v.status.value == "FAIL":
                        fails.append(v.sample_id)
            if not fails:
                print("screenshots: no FAIL among the samples; try more", file=sys.stderr)
                return 1
            sid = fails[-1]
            wait_kept(head, sid)
            driver = chrome()
            try:
                shoot(driver, head.url + "/", out / "web-live.png", "#newest-fail", 1100)
                shoot(driver, f"{head.url}/sample/{sid}", out / "web-sample.png", "#states",
                      1800)
                shoot(driver, head.url + "/head", out / "web-head.png", "#health", 1300)
            finally:
                driver.quit()
        finally:
            head.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
