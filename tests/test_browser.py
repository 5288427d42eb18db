"""End to end in a real headless browser: draw a kana on the page with pointer drags, read the answer.

Needs Debian's ``chromium`` and ``chromium-driver`` (apt) and ``selenium`` (pip); skipped otherwise.
``MAIST_SCREENSHOTS=docs/screenshots`` also saves screenshots of the page there.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_predict import held_out, tiny_predictor

CHROMIUM = next(
    (
        p
        for p in (
            os.environ.get("MAIST_CHROMIUM"),
            shutil.which("chromium"),
            shutil.which("chromium-browser"),
            shutil.which("google-chrome"),
        )
        if p
    ),
    None,
)
DRIVER = os.environ.get("MAIST_CHROMEDRIVER") or shutil.which("chromedriver")

webdriver = pytest.importorskip("selenium.webdriver", reason="browser test needs: pip install selenium")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "browser test needs a headless Chromium and its driver: apt-get install chromium chromium-driver "
        "(or set MAIST_CHROMIUM / MAIST_CHROMEDRIVER)",
        allow_module_level=True,
    )

from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.browser

CANVAS = 280


@pytest.fixture(scope="module")
def page_url():
    from maist.serve import make_server

    server = make_server(tiny_predictor(), "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,1300",
        "--force-device-scale-factor=1",
        "--lang=ja",
    ):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    except WebDriverException as err:
        pytest.skip(f"Chromium did not start: {str(err).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def strokes_of(levels: np.ndarray, grid: int = 36, box: tuple[int, int] = (35, 245)) -> list[list[tuple[int, int]]]:
    """An ETL record's ink as horizontal pen drags on the canvas: the record is shrunk to a
    ``grid``-cell raster, its ink box mapped onto ``box`` of the canvas, and every run of ink
    cells in a row becomes one drag (with the page's round pen they fill the strokes)."""
    x = torch.from_numpy(levels.astype(np.float32) / 15)[None, None]
    small = F.adaptive_avg_pool2d(x, grid)[0, 0].numpy()
    ink = small > 0.25
    ys, xs = np.nonzero(ink)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    side = max(y1 - y0, x1 - x0) + 1
    scale = (box[1] - box[0]) / side
    oy = box[0] + ((box[1] - box[0]) - (y1 - y0 + 1) * scale) / 2
    ox = box[0] + ((box[1] - box[0]) - (x1 - x0 + 1) * scale) / 2
    drags = []
    for r in range(y0, y1 + 1):
        c = x0
        while c <= x1:
            if ink[r, c]:
                start = c
                while c + 1 <= x1 and ink[r, c + 1]:
                    c += 1
                y = oy + (r - y0 + 0.5) * scale
                drags.append(
                    [(round(ox + (start - x0 + 0.5) * scale), round(y)), (round(ox + (c - x0 + 0.5) * scale), round(y))]
                )
            c += 1
    return drags


def draw(driver, canvas, drags) -> None:
    """Replay drags as pointer events (offsets are from the canvas's centre in WebDriver)."""
    actions = ActionChains(driver, duration=0)
    half = CANVAS // 2
    for (xa, ya), (xb, yb) in drags:
        actions.move_to_element_with_offset(canvas, xa - half, ya - half).click_and_hold()
        steps = max(1, abs(xb - xa) // 6)
        for k in range(1, steps + 1):
            actions.move_to_element_with_offset(canvas, round(xa + (xb - xa) * k / steps) - half, yb - half)
        actions.release()
    actions.perform()


def wait_for_answer(driver, timeout=20) -> list[str]:
    def ready(d):
        if d.execute_script("return window.maistBusy()"):
            return False
        status = d.find_element(By.ID, "status").text
        kana = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#top5 .kana")]
        return kana if status.startswith("Read") and kana else False

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(ready)


def test_drawing_a_kana_shows_it_first_with_every_layer(browser, page_url):
    browser.get(page_url)
    canvas = browser.find_element(By.ID, "pad")
    drags = strokes_of(held_out("く"))
    assert len(drags) > 10
    draw(browser, canvas, drags)
    try:
        kana = wait_for_answer(browser)
    except TimeoutException:
        pytest.fail(f"no answer on the page; status: {browser.find_element(By.ID, 'status').text!r}")
    _screenshot(browser, "draw-ku.png")
    assert kana[0] == "く", kana
    assert len(kana) == 5
    layers = [e.get_attribute("data-layer") for e in browser.find_elements(By.CSS_SELECTOR, "#layers .layer")]
    assert layers[:7] == ["input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2"]
    loaded = browser.execute_script(
        "return [...document.querySelectorAll('#layers img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert loaded


def test_clearing_and_empty_upload_show_reasons(browser, page_url):
    browser.get(page_url)
    browser.find_element(By.ID, "clear").click()
    assert browser.find_element(By.ID, "status").text == "Draw a kana."
    assert browser.find_elements(By.CSS_SELECTOR, "#top5 li") == []
    # an empty canvas sent anyway (as the page would after a stray click): the server's reason shows
    browser.execute_script("predictCanvas()")
    WebDriverWait(browser, 20).until(lambda d: "nothing drawn" in d.find_element(By.ID, "status").text)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")


def _screenshot(driver, name: str) -> None:
    folder = os.environ.get("MAIST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))
