"""What a trained model gets wrong on the test set: confusions, examples, writers.

``analyse_test(model, datamodule, out_dir, loggers)`` runs after ``trainer.test``: it predicts
the whole test set once and writes

- ``figures/confusion.png``: the confusion matrix, rows true / columns predicted, in the order
  of the class list (the kana table), for up to ``READABLE_CLASSES`` classes; for more (kanji:
  3,036) a matrix is no longer readable, and instead
  ``figures/class_accuracy.png``: a histogram of the per-class accuracy (the classes present),
  and ``figures/worst_classes.png``: the errors of the classes with the lowest accuracy, a row
  each;
- ``figures/misclassified.png``: a gallery of misclassified test images, "true→pred";
- ``figures/worst_writers.png``: the errors of the writers with the lowest accuracy;
- ``figures/voiced.png`` (when the class set has voiced kana): per family of a kana and its
  voiced forms (か/が, は/ば/ぱ, …), the confusion among its plain, dakuten (゛) and handakuten (゜)
  forms, so errors of the marks alone stand out;
- ``report.md``: accuracy, the most confused pairs, the worst classes and writers, links to the
  figures;

logs the same pictures to every tracker that keeps pictures (:func:`maist.tracking.log_image`),
and returns a summary dict (also JSON-friendly) for ``metrics.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from maist import tracking, viz
from maist.data.dataset import to_float
from maist.data.kana import voiced_parts
from maist.files import write_atomic
from maist.inference import logits
from maist.module import READABLE_CLASSES

log = logging.getLogger(__name__)

FIGURES = "figures"
REPORT = "report.md"
WORST_CLASSES = 8  # rows of the worst classes' gallery (and of its table in the report)
ERRORS_PER_CLASS = 8  # misclassified images shown per worst class
HISTOGRAM_BINS = 20
VOICED_CELL = 32  # pixels per cell of the voiced families' small matrices
VOICED_COLUMNS = 5  # families per row of figures/voiced.png


def predict(model: torch.nn.Module, images, batch_size: int = 1000) -> torch.Tensor:
    """Class predictions (N,) of ``model`` (:func:`maist.inference.logits`)."""
    out = logits(model, images, batch_size)
    return out.argmax(1) if len(out) else torch.empty(0, dtype=torch.long)


def _images(part, idx: torch.Tensor) -> torch.Tensor:
    """Float images of a part (or a tensor) at ``idx``, for drawing."""
    if callable(getattr(part, "float_images", None)):
        return part.float_images(idx)
    x = part[idx]
    return to_float(x) if x.dtype == torch.uint8 else x


def confusion_matrix(targets, preds, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    t = np.asarray(targets, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confused_pairs(cm: np.ndarray, classes, top: int = 10) -> list[dict]:
    """The largest off-diagonal counts, largest first (ties: kana-table order)."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")
    rows = cm.sum(axis=1)
    out = []
    for flat in order[:top]:
        i, j = divmod(int(flat), cm.shape[1])
        if off[i, j] == 0:
            break
        out.append(
            {
                "true": classes[i],
                "pred": classes[j],
                "count": int(off[i, j]),
                "of_true": round(float(off[i, j] / max(rows[i], 1)), 4),
            }
        )
    return out


def voiced_families(classes) -> list[list[int]]:
    """The classes that differ by a voiced mark only: for each kana with a dakuten or handakuten
    form among ``classes``, the indices of its plain, dakuten and handakuten forms present, in
    that order (か/が, は/ば/ぱ, う/ゔ, …; katakana too), in class order. Empty when no class is
    a voiced form."""
    index = {c: i for i, c in enumerate(classes)}
    families: dict[str, list] = {}
    for c in classes:
        if (voiced := voiced_parts(c)) is not None:
            base, mark = voiced
            families.setdefault(base, [None, None, None])[1 + mark] = index[c]
    for base, members in families.items():
        members[0] = index.get(base)
    out = [[i for i in members if i is not None] for members in families.values()]
    return sorted((f for f in out if len(f) > 1), key=min)


def voiced_confusions(cm: np.ndarray, classes) -> list[dict]:
    """Per family of :func:`voiced_families`: its classes and the confusion matrix among them
    (rows true, columns predicted; predictions outside the family are not counted), and the
    family's test images read as another form of it (``mark_errors``) of ``n`` in all."""
    out = []
    for family in voiced_families(classes):
        sub = cm[np.ix_(family, family)]
        out.append(
            {
                "classes": [classes[i] for i in family],
                "counts": sub.tolist(),
                "n": int(cm[family].sum()),
                "mark_errors": int(sub.sum() - np.trace(sub)),
            }
        )
    return out


def _voiced_figure(voiced: list[dict]) -> np.ndarray:
    """The families' small confusion matrices, in rows of ``VOICED_COLUMNS``: each names its
    characters (true down the left, predicted along the top) and shows its counts, on a heatmap
    of the rows normalised."""
    tiles = [viz.confusion_image(np.array(f["counts"]), f["classes"], cell=VOICED_CELL, counts=True) for f in voiced]
    return viz.image_grid(tiles, VOICED_COLUMNS)


def class_accuracy(cm: np.ndarray, classes) -> list[dict]:
    """Per class present in the test set (a non-empty row of ``cm``): its count, accuracy and
    the class it is most often taken for; worst first (ties: class order)."""
    n = cm.sum(axis=1)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    out = []
    for k in np.flatnonzero(n):
        top = int(off[k].argmax())
        out.append(
            {
                "class": classes[k],
                "index": int(k),
                "n": int(n[k]),
                "acc": round(float(cm[k, k] / n[k]), 4),
                "taken_for": classes[top] if off[k, top] else None,
            }
        )
    out.sort(key=lambda r: (r["acc"], r["index"]))
    return out


def writer_accuracy(writers, targets, preds, classes) -> list[dict]:
    """Per writer: accuracy, count and the errors as "true→pred"; worst first (then by writer)."""
    w = np.asarray(writers)
    t = np.asarray(targets)
    p = np.asarray(preds)
    out = []
    for writer in np.unique(w):
        sel = w == writer
        wrong = sel & (t != p)
        out.append(
            {
                "writer": int(writer),
                "n": int(sel.sum()),
                "acc": round(float((t[sel] == p[sel]).mean()), 4),
                "errors": [f"{classes[a]}→{classes[b]}" for a, b in zip(t[wrong], p[wrong])],
            }
        )
    out.sort(key=lambda r: (r["acc"], r["writer"]))
    return out


def _num_classes(model, datamodule, targets) -> int:
    """The class list's length, else the network's output count, else the largest label + 1."""
    classes = getattr(datamodule, "classes", None) or getattr(model, "classes", None)
    if classes:
        return len(classes)
    hp = getattr(model, "hparams", None) or {}
    net = hp.get("net") if hasattr(hp, "get") else None
    if isinstance(net, dict) and net.get("num_classes"):
        return int(net["num_classes"])
    return int(targets.max()) + 1 if len(targets) else 0


def _class_names(model, datamodule, num_classes: int) -> list[str]:
    classes = list(getattr(datamodule, "classes", None) or getattr(model, "classes", None) or [])
    return classes if len(classes) >= num_classes else [str(i) for i in range(num_classes)]


def _log_images(loggers, images: dict[str, np.ndarray], step: int) -> None:
    for tag, arr in images.items():
        tracking.log_image(loggers, tag, arr, step)
    tracking.flush(loggers)


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


def _worst_classes_figure(part, targets, preds, worst: list[dict], classes) -> np.ndarray | None:
    """One gallery row per worst class: up to ``ERRORS_PER_CLASS`` of its misclassified images."""
    rows = []
    for r in worst:
        idx = torch.nonzero((targets == r["index"]) & (preds != targets)).squeeze(1)[:ERRORS_PER_CLASS]
        if len(idx):
            rows.append(
                viz.gallery(
                    _images(part, idx),
                    targets[idx],
                    preds[idx],
                    classes,
                    ncols=ERRORS_PER_CLASS,
                    max_items=ERRORS_PER_CLASS,
                )
            )
    return viz.stack_rows(rows) if rows else None


def analyse_test(
    model: torch.nn.Module,
    datamodule,
    out_dir: Path,
    loggers=(),
    *,
    top_pairs: int = 10,
    worst_writers: int = 5,
    max_gallery: int = 64,
    metrics: dict | None = None,
    step: int = 0,
) -> dict:
    """Predict the test set, draw and write the analysis; return its summary (see module doc)."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURES
    if getattr(datamodule, "test_set", None) is None:
        datamodule.setup("test")
    part = datamodule.test_set
    num_classes = _num_classes(model, datamodule, part.targets)
    classes = _class_names(model, datamodule, num_classes)
    preds = predict(model, part, getattr(getattr(datamodule, "hparams", None), "eval_batch_size", 1000) or 1000)
    targets = part.targets.cpu()
    n = len(targets)
    wrong = torch.nonzero(preds != targets).squeeze(1)
    cm = confusion_matrix(targets.numpy(), preds.numpy(), num_classes)
    pairs = confused_pairs(cm, classes, top_pairs)
    by_class = class_accuracy(cm, classes)
    by_writer = writer_accuracy(part.writers.cpu().numpy(), targets.numpy(), preds.numpy(), classes)
    acc = float((preds == targets).float().mean()) if n else float("nan")
    voiced = voiced_confusions(cm, classes)

    # ---- figures
    images = {}
    if num_classes <= READABLE_CLASSES:
        images["test/confusion"] = viz.confusion_image(cm, classes)
    else:
        images["test/class_accuracy"] = viz.histogram(
            [r["acc"] for r in by_class],
            bins=HISTOGRAM_BINS,
            value_range=(0.0, 1.0),
            title=f"accuracy per class ({len(by_class):,} classes in the test set)",
            xlabel="accuracy",
        )
        worst = [r for r in by_class[:WORST_CLASSES] if r["acc"] < 1.0]
        if (figure := _worst_classes_figure(part, targets, preds, worst, classes)) is not None:
            images["test/worst_classes"] = figure
    if voiced:
        images["test/voiced"] = _voiced_figure(voiced)
    if len(wrong):
        sel = wrong[:max_gallery]
        images["test/misclassified"] = viz.gallery(
            _images(part, sel), targets[sel], preds[sel], classes, max_items=max_gallery
        )
        worst_ids = [r["writer"] for r in by_writer[:worst_writers] if r["acc"] < 1.0]
        mask = np.isin(part.writers.cpu().numpy(), worst_ids) & (preds != targets).numpy()
        idx = torch.as_tensor(np.flatnonzero(mask), dtype=torch.long)
        if len(idx):
            images["test/worst_writers"] = viz.gallery(
                _images(part, idx[:max_gallery]), targets[idx], preds[idx], classes, max_items=max_gallery
            )
    files = {}
    for tag, arr in images.items():
        path = fig_dir / f"{tag.split('/')[-1]}.png"
        viz.save_png(arr, path)
        files[tag.split("/")[-1]] = str(path)
    _log_images(loggers, images, step)

    # ---- report
    accs = [r["acc"] for r in by_writer]
    class_accs = [r["acc"] for r in by_class]
    summary = {
        "test_acc": round(acc, 6),
        "n_test": n,
        "errors": int(len(wrong)),
        "confused_pairs": pairs,
        "classes_in_test": len(by_class),
        "class_acc_min": min(class_accs) if class_accs else None,
        "class_acc_mean": round(float(np.mean(class_accs)), 4) if class_accs else None,
        "worst_classes": [{k: r[k] for k in ("class", "n", "acc", "taken_for")} for r in by_class[:WORST_CLASSES]],
        "writer_acc_min": min(accs) if accs else None,
        "writer_acc_mean": round(float(np.mean(accs)), 4) if accs else None,
        "worst_writers": [{k: r[k] for k in ("writer", "n", "acc", "errors")} for r in by_writer[:worst_writers]],
        "voiced": voiced,
        "figures": files,
        "report": str(out_dir / REPORT),
    }
    lines = ["# Test-set analysis", ""]
    lines += [
        f"- test accuracy: **{acc:.4%}** ({n - len(wrong):,} of {n:,}; {len(wrong)} errors)",
        f"- classes: {len(by_class)} of {num_classes} in the test set; accuracy per class: min "
        f"{summary['class_acc_min']}, mean {summary['class_acc_mean']}",
        f"- writers: {len(accs)}; accuracy per writer: min {summary['writer_acc_min']}, "
        f"mean {summary['writer_acc_mean']}",
    ]
    if voiced:
        v_n, v_err = sum(f["n"] for f in voiced), sum(f["mark_errors"] for f in voiced)
        worst = max(voiced, key=lambda f: f["mark_errors"])  # the first family on a tie
        most = f" (most: {'/'.join(worst['classes'])}, {worst['mark_errors']})" if v_err else ""
        lines.append(
            f"- voiced marks: {v_err} of {v_n} test images of the {len(voiced)} voiced families read as another "
            f"form of their family{most}: [figures/voiced.png]({FIGURES}/voiced.png)"
        )
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float, str)) and not k.startswith("test_per_class"):
            lines.append(f"- {k}: {v}")
    lines += ["", "## Most confused pairs (true → predicted)", ""]
    lines += (
        _md_table(
            ["true", "predicted", "count", "share of true class"],
            [[p["true"], p["pred"], p["count"], f"{p['of_true']:.1%}"] for p in pairs],
        )
        if pairs
        else ["No confusions."]
    )
    lines += ["", f"## Worst classes (of {len(by_class)})", ""]
    lines += _md_table(
        ["class", "images", "accuracy", "most often taken for"],
        [[r["class"], r["n"], f"{r['acc']:.1%}", r["taken_for"] or "–"] for r in by_class[:WORST_CLASSES]],
    )
    lines += ["", f"## Worst writers (of {len(accs)})", ""]
    lines += _md_table(
        ["writer (sheet)", "images", "accuracy", "errors (true→pred)"],
        [[r["writer"], r["n"], f"{r['acc']:.1%}", ", ".join(r["errors"]) or "–"] for r in by_writer[:worst_writers]],
    )
    lines += ["", "## Figures", ""]
    lines += [f"- [{name}]({FIGURES}/{Path(p).name})" for name, p in files.items()]
    if "confusion" in files:
        lines += ["", f"![confusion matrix]({FIGURES}/confusion.png)", ""]
    else:
        lines += ["", f"![accuracy per class]({FIGURES}/class_accuracy.png)", ""]
    write_atomic(out_dir / REPORT, "\n".join(lines).encode("utf-8"))
    log.info(
        "test analysis: %s (%d errors; worst writer %.3f)",
        out_dir / REPORT,
        len(wrong),
        summary["writer_acc_min"] if summary["writer_acc_min"] is not None else float("nan"),
    )
    return summary
