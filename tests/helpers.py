"""Helpers shared by the test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from maist.data.preprocess import Preprocess

# The preprocessing with every clean-up step off: contrast stretch and resize only (what a test of
# one step builds on; the project's defaults, Preprocess(), crop and threshold too).
PLAIN = {
    "threshold": 0.0,
    "despeckle": 0,
    "crop": False,
    "margin": 0.12,
    "crop_mass": 0.0,
    "crop_connect": 0.0,
    "crop_bridge": 0.0,
}


def plain_preprocess(**steps) -> Preprocess:
    """``Preprocess`` with only ``steps`` (and contrast stretch, unless ``contrast`` is given) on."""
    return Preprocess(**{**PLAIN, **steps})
