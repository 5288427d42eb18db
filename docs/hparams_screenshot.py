"""The README's picture of a sweep in TensorBoard's HParams dashboard, made from a real sweep.

    python docs/hparams_screenshot.py [--steps 1000] [--out docs/screenshots/hparams-sweep.png]

Runs ``train.py -m schedule=constant,stepped,stepped_dropout`` (the article's CNN on the shipped
sample, which is not ETL data) into a temporary folder, serves it with TensorBoard on loopback,
opens the HParams table in headless Chromium (Debian's chromium and chromium-driver, driven by
selenium) and saves a screenshot.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep(folder: Path, steps: int) -> None:
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "model=cnn",
            "schedule=constant,stepped,stepped_dropout",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={max(1, steps // 4)}",
            f"hydra.sweep.dir={folder}",
            "trainer.enable_progress_bar=false",
            "torch_threads=1",
            "~callbacks.feature_maps",
        ],
        cwd=REPO,
        check=True,
    )


def chromium(width: int, height: int, profile: Path):
    """Headless Debian Chromium driven by selenium, a window of ``width``×``height``, a fresh
    profile in ``profile``, and nothing reaching beyond the page it is sent to."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def screenshot(logdir: Path, out: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    board = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("tensorboard")),
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    driver = chromium(1900, 560, logdir.parent / "chromium-profile")
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # TensorBoard takes a few seconds to start and load
            try:
                driver.get(f"http://127.0.0.1:{port}/#hparams")
                WebDriverWait(driver, 20).until(
                    lambda d: (
                        len(d.find_elements(By.CSS_SELECTOR, "tf-hparams-table-view, .hparams-table, table")) > 0
                        or "stepped_dropout" in d.page_source
                    )
                )
                break
            except Exception:
                time.sleep(2)
        time.sleep(5)  # let the table fill
        for box in driver.find_elements(By.XPATH, "//*[contains(text(), 'Show Metrics')]"):
            driver.execute_script("arguments[0].style.display='none'", box)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        print(f"wrote {out}")
    finally:
        driver.quit()
        board.terminate()
        board.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots" / "hparams-sweep.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="maist-hparams-") as tmp:
        sweep(Path(tmp) / "sweep", args.steps)
        screenshot(Path(tmp) / "sweep", args.out)


if __name__ == "__main__":
    main()
