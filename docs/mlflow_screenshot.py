"""The README's picture of a sweep in MLflow's runs table, made from a real sweep and opened with
the README's own command.

    python docs/mlflow_screenshot.py [--steps 60] [--out docs/screenshots/mlflow-runs.png]

Runs ``train.py -m logger=mlflow model=cnn model.optimizer.lr=0.0003,0.001,0.003`` (the article's
CNN on the shipped sample, which is not ETL data) in a temporary folder, so that its runs land in
that folder's default store ``outputs/mlflow.db``; starts ``mlflow ui --backend-store-uri
sqlite:///outputs/mlflow.db`` there on a loopback port, opens the experiment's runs in headless
Chromium (as docs/hparams_screenshot.py does), shows the settings and final metrics as columns and
saves a screenshot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hparams_screenshot import REPO, chromium, free_port  # docs/, beside this script

# The runs table's columns to hide and to show (a group by its name: every parameter).
COLUMNS_OFF = ("Dataset", "Source", "Models")
WIDEN = ".ag-header-cell[col-id^='metrics.'], .ag-header-cell[col-id^='params.']"
WIDTH = 2300
COLUMNS_ON = ("final/val/acc_best", "final/test/acc", "Parameters")


def sweep(folder: Path, steps: int) -> None:
    subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            "logger=mlflow",
            "model=cnn",
            "model.optimizer.lr=0.0003,0.001,0.003",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={max(1, steps // 3)}",
            "trainer.enable_progress_bar=false",
            "torch_threads=1",
        ],
        cwd=folder,
        check=True,
    )


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow ui`` on the folder's default store, once it answers: (the process, its address)."""
    port = free_port()
    ui = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", "sqlite:///outputs/mlflow.db"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while ui.poll() is None and time.time() < deadline:  # it takes a while to start on a busy machine
        try:
            urllib.request.urlopen(f"{url}/health", timeout=5)
            return ui, url
        except OSError:
            time.sleep(1)
    ui.terminate()
    raise SystemExit("mlflow ui did not answer (is the mlflow extra installed?)")


def screenshot(folder: Path, out: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ui, url = serve(folder)
    driver = chromium(WIDTH, 1000, folder / "chromium-profile")  # tall enough for the column picker
    try:
        with urllib.request.urlopen(f"{url}/ajax-api/2.0/mlflow/experiments/search?max_results=100") as answer:
            (experiment,) = [e["experiment_id"] for e in json.load(answer)["experiments"] if e["name"] == "train"]
        driver.get(f"{url}/#/experiments/{experiment}/runs?workflowType=machine_learning")
        time.sleep(10)  # let the table fill
        driver.find_element(By.XPATH, "//button[@aria-label='Close']").click()  # the assistant's panel
        driver.find_element(By.XPATH, "//button[contains(., 'Columns')]").click()
        time.sleep(2)
        for title in COLUMNS_OFF + COLUMNS_ON:
            node = f"//span[@title='{title}' or starts-with(@title, '{title} (')]"
            box = driver.find_element(By.XPATH, f"{node}/preceding-sibling::span[contains(@class, 'tree-checkbox')]")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
            box.click()
            time.sleep(0.5)
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        for cell in driver.find_elements(By.CSS_SELECTOR, WIDEN):  # each as wide as its name
            name = cell.find_element(By.CSS_SELECTOR, "span[data-testid^='sort-header']")
            wider = driver.execute_script("return arguments[0].scrollWidth + 36 - arguments[1].clientWidth", name, cell)
            if wider > 0:
                handle = cell.find_element(By.CSS_SELECTOR, ".ag-header-cell-resize")
                ActionChains(driver).drag_and_drop_by_offset(handle, wider, 0).perform()
        footer = driver.find_element(By.XPATH, "//*[contains(text(), 'matching runs')]")
        ActionChains(driver).move_to_element(footer).perform()  # no tooltip over the table
        driver.set_window_size(WIDTH, 520)  # the table's rows, without the empty page below
        time.sleep(2)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        print(f"wrote {out}")
    finally:
        driver.quit()
        ui.terminate()
        ui.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots" / "mlflow-runs.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="maist-mlflow-") as tmp:
        sweep(Path(tmp), args.steps)
        screenshot(Path(tmp), args.out.resolve())


if __name__ == "__main__":
    main()
