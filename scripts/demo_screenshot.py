"""Render ``docs/demo.png``: the demo page translating a photo with a shipped model.

Starts the real service (``transfigure serve``) on the models in ``models/`` on a free loopback port,
opens the demo page in headless Chromium (Debian's ``chromium`` + ``chromium-driver`` through
selenium, as ``tests/test_demo.py`` does), translates a test photo with ``--model`` (default
``summer2winter``) and saves the page as a PNG. Nothing is fetched from outside the machine.

    .venv/bin/python scripts/demo_screenshot.py                    # docs/demo.png
    .venv/bin/python scripts/demo_screenshot.py --model photo2monet --out /tmp/demo.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.server_utils import Server, free_port, server_env  # noqa: E402

PHOTO = ROOT / "tests" / "fixtures" / "yosemite" / "testA" / "2010-09-07 12:23:20.jpg"
WAIT_S = 90


def _browser_paths() -> tuple[str, str]:
    chromium = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.exists(p)), None
    )
    if chromium is None or driver is None:
        raise SystemExit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    return chromium, driver


def _wait(driver, condition, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def screenshot(url: str, model: str, photo: Path, out: Path, profile: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    chromium, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--hide-scrollbars", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    drv = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        drv.set_page_load_timeout(WAIT_S)
        drv.get(url + "/")
        _wait(drv, lambda d: model in d.execute_script(
            "return Array.from(document.getElementById('translate-model').options, o => o.value)"))  # fmt: skip
        drv.find_element(By.ID, "tab-translate").click()
        Select(drv.find_element(By.ID, "translate-model")).select_by_value(model)
        drv.find_element(By.ID, "translate-file").send_keys(str(photo))
        drv.find_element(By.ID, "translate-run").click()
        _wait(
            drv,
            lambda d: (
                d.find_element(By.ID, "panel-translate").get_attribute("aria-busy") is None
                and (
                    d.find_element(By.ID, "translate-result").is_displayed()
                    or d.find_element(By.ID, "translate-error").is_displayed()
                )
            ),
        )
        if drv.find_element(By.ID, "translate-error").is_displayed():
            raise SystemExit(f"the page shows an error: {drv.find_element(By.ID, 'translate-error').text}")
        drv.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
        time.sleep(0.5)  # let the output image paint
        out.parent.mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(out))
    finally:
        drv.quit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument(
        "--model", default="summer2winter", help="a shipped translate model (default: summer2winter)"
    )
    ap.add_argument(
        "--photo", type=Path, default=PHOTO, help="the photo to translate (default: a test photo)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "demo.png", help="where to write the PNG")
    args = ap.parse_args(argv)
    _browser_paths()  # before the server starts: fail fast
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        log = (work / "server.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=server_env(ROOT / "models", work / "bentoml_home"), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        server = Server(url=f"http://127.0.0.1:{port}", proc=proc, log_path=work / "server.log", _log=log)
        try:
            server.wait_ready(180)
            screenshot(server.url, args.model, args.photo.resolve(), args.out, work / "profile")
        finally:
            server.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
