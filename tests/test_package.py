"""The layout a user is promised: configs at the top (conf/), and a wheel that carries them, so an
installed MAIST trains from an empty folder with nothing of the checkout beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO


def test_the_configs_are_the_top_level_conf_folder():
    from maist.config import CONFIG_DIR

    assert CONFIG_DIR.resolve() == (REPO / "conf").resolve()
    assert not (REPO / "maist" / "conf").exists()


@pytest.mark.slow
def test_an_installed_wheel_trains_from_an_empty_folder(tmp_path, sample_cache):
    wheels, target, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(wheels)], check=True)
    (wheel,) = wheels.glob("maist-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "maist/conf/train.yaml" in names and "maist/conf/experiment/best.yaml" in names
    assert "maist/fonts/NotoSansCJKjp-Regular-subset.otf" in names  # the figures name their characters
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "MAIST_CACHE_DIR": str(sample_cache)}
    # the installed console script, run where there is no checkout
    script = target / "bin" / "maist-train"
    proc = subprocess.run(
        [sys.executable, str(script), "debug=default", "trainer.max_steps=4", "analyse_test=false"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics,) = (empty / "outputs").rglob("metrics.json")
    assert json.loads(metrics.read_text())["steps"] == 4
    where = subprocess.run(
        [sys.executable, "-c", "from maist.config import CONFIG_DIR; print(CONFIG_DIR)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()) == target / "maist" / "conf"  # the installed copy ran, not the checkout
