"""Layers that say who may use whom: a module imports only modules of its own layer or below, so
loading a checkpoint does not pull in the figures, and the data layer knows nothing of pictures."""

from __future__ import annotations

import ast
from pathlib import Path

MAIST = Path(__file__).resolve().parents[1] / "maist"

# Lowest first. A module may import from its own layer and those before it, never after.
LAYERS = [
    ["errors", "text", "files", "checks", "fonts"],
    ["data.kana", "data.etl", "morphology", "cli"],
    ["data.preprocess", "data.measure", "data.cache", "data.split", "distributed"],
    ["data.dataset", "data.part", "data.samplers", "data.sample", "data.sample.generate"],
    ["data.datamodule", "data", "augment", "models", "models.cnn", "models.linear", "models.modern", "models.tta"],
    ["registry", "inference"],
    ["module", "tracking", "viz", "callbacks", "callbacks.checkpoints", "callbacks.divergence"],
    ["callbacks.feature_maps", "callbacks.progress", "callbacks.schedules", "callbacks.validation", "config"],
    ["checkpoint", "analysis", "trainer", "images"],
    ["run", "predict", "sweep"],
    ["train", "visualize", "export", "serve", "fonts.make_subset"],
]
LAYER = {name: k for k, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(MAIST).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST) -> set[str]:
    """The maist modules a module imports (``from maist.x import y``: ``x``, or ``x.y`` when that is
    a module), at any depth (a function's own imports count too)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("maist"):
            base = node.module.removeprefix("maist").lstrip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                out.add(full if full in LAYER else base)
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("maist.") for a in node.names if a.name.startswith("maist.")}
    return out - {""}


def test_every_module_has_a_layer():
    modules = {module_name(p) for p in MAIST.rglob("*.py") if module_name(p)}
    assert sorted(modules - set(LAYER)) == []


def test_no_import_runs_back_up():
    upward = []
    for path in sorted(MAIST.rglob("*.py")):
        me = module_name(path)
        if not me:
            continue
        for other in imported(ast.parse(path.read_text(encoding="utf-8"))):
            if other in LAYER and LAYER[other] > LAYER[me]:
                upward.append(f"{me} (layer {LAYER[me]}) imports {other} (layer {LAYER[other]})")
    assert upward == []
