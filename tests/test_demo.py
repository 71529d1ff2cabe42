"""The demo page in a real headless Chromium, against the real ``bentoml serve`` on loopback.

Uses Debian's ``chromium`` + ``chromium-driver`` through selenium (no browser download); skips,
saying how to install them, when either is missing. The server is the one of tests/test_service.py
(token, 2 MiB upload limit, one broken model), started once for this module on a zoo with two
translate models, so that choosing the model matters. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from models.card import Metric, ModelCard
from tests.test_service import FIXTURE, TOKEN, server  # noqa: F401 (server: a fixture, used by `page`)
from tests.tiny_models import make_model, make_zoo

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "tests" / "fixtures" / "yosemite" / "testA" / "2010-09-07 12:23:20.jpg"
ARTIFACTS = REPO / "test-artifacts"
WAIT_S = 45  # the CI machines are small and shared; a request normally takes well under a second
INSTALL = "apt-get install chromium chromium-driver (.ci/run does this in CI)"

pytestmark = pytest.mark.integration


def _find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip with the reason."""
    chromium = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.exists(p)), None
    )
    if chromium is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver)) if p is None)
        pytest.skip(f"browser test skipped: {missing} not found; install with: {INSTALL}")
    return chromium, driver


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Overrides test_service's zoo for this module's server: a second translate model (grey out)."""
    root = make_zoo(tmp_path_factory.mktemp("demo_zoo"))
    card = ModelCard.load(make_model(root, "translate", "tiny-grey", out_channels=1) / "card.json")
    fid = Metric(name="FID", value=42.123, split="test", protocol="tests: a made-up value", command="none")
    card.model_copy(update={"metrics": [fid], "headline_metric": "FID"}).save(root / "tiny-grey")
    make_model(root, "sample", "broken")
    (root / "broken" / "model.onnx").write_bytes(b"not onnx")
    return root


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, driver_path = _find_browser()  # before the server starts: skipping is then cheap
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="browser test skipped: selenium is not installed (pip install selenium)"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",  # containers have a tiny /dev/shm
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}",
    ):
        options.add_argument(flag)
    drv = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    drv.set_page_load_timeout(WAIT_S)
    drv.set_script_timeout(WAIT_S)
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="module")
def page(browser: Any, server: str) -> Any:  # noqa: F811 (pytest fixture parameter)
    """The demo page, opened at "/" (which redirects) with the token entered by keyboard."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/")
    assert browser.current_url == server + "/demo/"
    # The server wants a token: the page says so instead of staying blank, and opens the token box.
    _wait(browser, lambda d: d.find_element(By.ID, "global-error").is_displayed())
    message = browser.find_element(By.ID, "global-error").text
    assert "API token" in message and "401" in message
    assert browser.find_element(By.ID, "auth").get_attribute("open") is not None
    box = browser.find_element(By.ID, "token")
    box.send_keys(TOKEN, Keys.ENTER)  # submit with the keyboard
    _wait(browser, lambda d: len(_options(d, "translate-model")) == 2)
    assert not browser.find_element(By.ID, "global-error").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('transfigure.token')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0
    return browser


# -- helpers -------------------------------------------------------------------------------------


def _wait(driver: Any, condition: Callable[[Any], Any], timeout: float = WAIT_S) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _options(driver: Any, select_id: str) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).options, o => o.value)", select_id
    )


def _tab(driver: Any, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, f"tab-{name}").click()
    _wait(driver, lambda d: d.find_element(By.ID, f"panel-{name}").is_displayed())


def _select(driver: Any, select_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def _type(driver: Any, input_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, input_id)
    box.clear()
    box.send_keys(text)


def _blob(driver: Any, url: str) -> bytes:
    """The bytes behind an object URL of the page (what "Download" would save)."""
    encoded = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then(r => r.blob()).then(b => {
          const reader = new FileReader();
          reader.onload = () => done(reader.result.split(",")[1]);
          reader.readAsDataURL(b);
        }).catch(e => done("error: " + e));
        """,
        url,
    )
    assert not encoded.startswith("error:"), encoded
    return base64.b64decode(encoded)


def _settle(driver: Any, task: str) -> None:
    """Wait for the request of ``task`` to finish (the spinner gone, result or error shown)."""
    from selenium.webdriver.common.by import By

    _wait(
        driver,
        lambda d: (
            d.find_element(By.ID, f"panel-{task}").get_attribute("aria-busy") is None
            and (
                d.find_element(By.ID, f"{task}-result").is_displayed()
                or d.find_element(By.ID, f"{task}-error").is_displayed()
            )
        ),
    )


def _shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def _write_png(path: Path, size: tuple[int, int], source: Path = FIXTURE) -> Path:
    Image.open(source).convert("RGB").resize(size).save(path)
    return path


# -- the tests -----------------------------------------------------------------------------------


def test_translate_upload_choose_model_get_the_output(page: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # an odd size: the server pads to the model's multiple of 4 and crops back
    src = _write_png(tmp_path / "photo.png", (149, 103), PHOTO)
    _tab(page, "translate")
    assert _options(page, "translate-model") == ["tiny-grey", "tiny-translate"]
    # each model is shown with its card's description and headline metric
    _select(page, "translate-model", "tiny-grey")
    assert "FID 42.12 (test)" in page.find_element(By.ID, "translate-card").text
    _select(page, "translate-model", "tiny-translate")
    card = page.find_element(By.ID, "translate-card").text
    assert "Tiny translate model for tests." in card and "no measured metric" in card
    page.find_element(By.ID, "translate-file").send_keys(str(src))
    page.find_element(By.ID, "translate-run").click()
    _settle(page, "translate")
    assert not page.find_element(By.ID, "translate-error").is_displayed()

    out = page.find_element(By.ID, "translate-out")
    assert page.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", out) == [
        149,
        103,
    ]
    assert page.find_element(By.ID, "translate-out-size").text == "149\u00d7103"
    link = page.find_element(By.ID, "translate-download")
    assert link.get_attribute("download") == "photo-tiny-translate.png"
    got = np.asarray(Image.open(io.BytesIO(_blob(page, link.get_attribute("href"))))).astype(int)
    want = 255 - np.asarray(Image.open(src)).astype(int)  # tiny-translate inverts colours
    assert got.shape == (103, 149, 3) and np.abs(got - want).max() <= 1
    assert "Translated in" in page.find_element(By.ID, "translate-status").text

    # compare on top of each other: the checkbox and the slider work from the keyboard
    page.find_element(By.ID, "translate-overlay").send_keys(Keys.SPACE)
    assert "overlay" in page.find_element(By.ID, "translate-compare").get_attribute("class")
    slider = page.find_element(By.ID, "translate-split")
    slider.send_keys(Keys.HOME)
    split = (
        "return getComputedStyle(document.getElementById('translate-compare')).getPropertyValue('--split')"
    )
    assert page.execute_script(split).strip() == "0%"
    slider.send_keys(Keys.END)
    assert page.execute_script(split).strip() == "100%"
    page.find_element(By.ID, "translate-overlay").send_keys(Keys.SPACE)
    page.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    _shot(page, "demo.png")

    # the other model gives another answer for the same upload
    _select(page, "translate-model", "tiny-grey")
    page.find_element(By.ID, "translate-run").click()
    _wait(
        page,
        lambda d: d.find_element(By.ID, "translate-download").get_attribute("download").endswith("grey.png"),
    )
    _settle(page, "translate")
    grey = Image.open(
        io.BytesIO(_blob(page, page.find_element(By.ID, "translate-download").get_attribute("href")))
    )
    assert grey.size == (149, 103) and grey.mode == "L"


def test_sample_grid_seed_is_shown_and_reproducible(page: Any, server: str) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    _tab(page, "sample")
    assert _options(page, "sample-model") == ["tiny-sample"]  # 'broken' failed to load: not offered
    assert _options(page, "sample-label") == ["apple", "cat", "fish"]
    _select(page, "sample-label", "cat")
    _type(page, "sample-n", "4")
    _type(page, "sample-seed", "11")
    page.find_element(By.ID, "sample-run").click()
    _settle(page, "sample")
    grid = page.find_element(By.ID, "sample-grid")
    assert page.execute_script("return arguments[0].naturalWidth", grid) == 22  # 2x2 of 8 px, padded
    assert "seed 11" in page.find_element(By.ID, "sample-caption").text
    assert '"seed":11' in page.find_element(By.ID, "sample-curl").text
    assert TOKEN not in page.find_element(By.ID, "sample-curl").text  # the command names the variable
    shown = _blob(page, grid.get_attribute("src"))
    direct = httpx.post(
        f"{server}/sample",
        json={"model": "tiny-sample", "label": "cat", "n": 4, "seed": 11},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert direct.content == shown  # the seed on the page reproduces the grid through the API

    page.execute_script("window.scrollTo(0, 0)")
    page.find_element(By.ID, "sample-new-seed").click()
    _wait(page, lambda d: d.find_element(By.ID, "sample-seed").get_attribute("value") != "11")
    _settle(page, "sample")
    new_seed = page.find_element(By.ID, "sample-seed").get_attribute("value")
    _wait(page, lambda d: f"seed {new_seed}" in d.find_element(By.ID, "sample-caption").text)
    assert _blob(page, page.find_element(By.ID, "sample-grid").get_attribute("src")) != shown
    _shot(page, "demo-sample.png")


def test_upscale_shows_input_bicubic_and_model_at_one_size(page: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    src = _write_png(tmp_path / "small.png", (20, 16))
    _tab(page, "upscale")
    page.find_element(By.ID, "upscale-file").send_keys(str(src))
    page.find_element(By.ID, "upscale-run").click()
    _settle(page, "upscale")
    assert not page.find_element(By.ID, "upscale-error").is_displayed()
    size = "return [arguments[0].naturalWidth || arguments[0].width, arguments[0].naturalHeight || arguments[0].height]"
    assert page.execute_script(size, page.find_element(By.ID, "upscale-out")) == [40, 32]  # x2 model
    assert page.execute_script(size, page.find_element(By.ID, "upscale-bicubic")) == [40, 32]
    widths = {
        page.find_element(By.ID, i).rect["width"] for i in ("upscale-in", "upscale-bicubic", "upscale-out")
    }
    assert len(widths) == 1  # the same display size
    # the zoomed crops are drawn (not blank) and differ: input (nearest) vs bicubic vs model
    crops = page.execute_script(
        """
        return ["zoom-in", "zoom-bicubic", "zoom-out"].map(id => {
          const c = document.getElementById(id);
          return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data.slice(0, 40000));
        });
        """
    )
    assert all(max(c) > 0 for c in crops)
    assert crops[0] != crops[1] and crops[1] != crops[2]
    _shot(page, "demo-upscale.png")


def test_api_errors_are_shown_as_readable_messages(page: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n" * 10)
    _tab(page, "translate")
    page.find_element(By.ID, "translate-file").send_keys(str(text))
    page.find_element(By.ID, "translate-run").click()
    _settle(page, "translate")
    error = page.find_element(By.ID, "translate-error")
    assert error.is_displayed() and error.get_attribute("role") == "alert"
    assert "HTTP 400" in error.text and "not an image" in error.text
    assert not page.find_element(By.ID, "translate-result").is_displayed()
    assert page.find_element(By.ID, "translate-run").is_enabled()  # ready for the next try
    _shot(page, "demo-error.png")

    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(3 * 1024 * 1024))  # over the server's 2 MiB upload limit
    _tab(page, "upscale")
    page.find_element(By.ID, "upscale-file").send_keys(str(big))
    page.find_element(By.ID, "upscale-run").click()
    _settle(page, "upscale")
    error = page.find_element(By.ID, "upscale-error")
    assert "Too large" in error.text and "413" in error.text and "limit" in error.text

    _tab(page, "sample")
    _type(page, "sample-n", "65")
    page.find_element(By.ID, "sample-run").click()
    _wait(page, lambda d: d.find_element(By.ID, "sample-error").is_displayed())
    assert "n must be between 1 and 64" in page.find_element(By.ID, "sample-error").text


def test_keyboard_only_tabs_and_sampling(page: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _tab(page, "translate")
    page.find_element(By.ID, "tab-translate").send_keys(Keys.ARROW_RIGHT)
    active = page.switch_to.active_element
    assert active.get_attribute("id") == "tab-sample" and active.get_attribute("aria-selected") == "true"
    assert page.find_element(By.ID, "panel-sample").is_displayed()
    assert not page.find_element(By.ID, "panel-translate").is_displayed()
    _type(page, "sample-n", "9")
    page.find_element(By.ID, "sample-n").send_keys(Keys.ENTER)  # Enter in a field submits the form
    _wait(page, lambda d: "9 \u00d7" in d.find_element(By.ID, "sample-caption").text)
    page.find_element(By.ID, "tab-sample").send_keys(Keys.END)
    assert page.switch_to.active_element.get_attribute("id") == "tab-models"
    listing = page.find_element(By.ID, "models-list").text
    assert "tiny-grey" in listing and "broken" in listing and "Unavailable" in listing


def test_dropping_a_file_on_the_box_selects_it(page: Any) -> None:
    from selenium.webdriver.common.by import By

    _tab(page, "translate")
    _select(page, "translate-model", "tiny-translate")
    # a real drop event carrying a 12x8 PNG made in the page (selenium cannot drag from the desktop)
    page.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const canvas = document.createElement("canvas");
        canvas.width = 12; canvas.height = 8;
        canvas.getContext("2d").fillRect(0, 0, 6, 8);
        canvas.toBlob(blob => {
          const data = new DataTransfer();
          data.items.add(new File([blob], "dropped.png", {type: "image/png"}));
          const zone = document.getElementById("translate-drop");
          zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true, cancelable: true}));
          zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
          done();
        }, "image/png");
        """
    )
    assert (
        page.execute_script("return document.getElementById('translate-file').files[0].name") == "dropped.png"
    )
    page.find_element(By.ID, "translate-run").click()
    _wait(page, lambda d: d.find_element(By.ID, "translate-out-size").text == "12\u00d78")
    assert (
        page.find_element(By.ID, "translate-download").get_attribute("download")
        == "dropped-tiny-translate.png"
    )
