"""What a trained model gets wrong on the test set: confusions, examples, writers.

``analyse_test(model, datamodule, out_dir, loggers)`` runs after ``trainer.test``: it predicts
the whole test set once and writes

- ``figures/confusion.png``: the confusion matrix, rows true / columns predicted, in the order
  of the class list (the kana table);
- ``figures/misclassified.png``: a gallery of misclassified test images, "true→pred";
- ``figures/worst_writers.png``: the errors of the writers with the lowest accuracy;
- ``report.md``: accuracy, the most confused pairs, the worst writers, links to the figures;

logs the same pictures to every logger whose ``experiment`` has ``add_image`` (TensorBoard),
and returns a summary dict (also JSON-friendly) for ``metrics.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from maist import viz

log = logging.getLogger(__name__)

FIGURES = "figures"
REPORT = "report.md"


@torch.no_grad()
def predict(model: torch.nn.Module, data: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Class predictions (N,) of ``model`` for (N, 1, S, S) images, in eval mode, batch by batch."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        preds = [model(data[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(data), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


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
        out.append({"true": classes[i], "pred": classes[j], "count": int(off[i, j]),
                    "of_true": round(float(off[i, j] / max(rows[i], 1)), 4)})
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
        out.append({"writer": int(writer), "n": int(sel.sum()), "acc": round(float((t[sel] == p[sel]).mean()), 4),
                    "errors": [f"{classes[a]}→{classes[b]}" for a, b in zip(t[wrong], p[wrong])]})
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
    for lg in loggers or []:
        exp = getattr(lg, "experiment", None)
        if exp is None or not hasattr(exp, "add_image"):
            continue
        for tag, arr in images.items():
            exp.add_image(tag, arr, step, dataformats="HWC" if arr.ndim == 3 else "HW")
        if hasattr(exp, "flush"):
            exp.flush()


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


def analyse_test(model: torch.nn.Module, datamodule, out_dir: Path, loggers=(), *, top_pairs: int = 10,
                 worst_writers: int = 5, max_gallery: int = 64, metrics: dict | None = None,
                 step: int = 0) -> dict:
    """Predict the test set, draw and write the analysis; return its summary (see module doc)."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURES
    if getattr(datamodule, "test_set", None) is None:
        datamodule.setup("test")
    part = datamodule.test_set
    num_classes = _num_classes(model, datamodule, part.targets)
    classes = _class_names(model, datamodule, num_classes)
    preds = predict(model, part.data, getattr(getattr(datamodule, "hparams", None), "eval_batch_size", 1000) or 1000)
    targets = part.targets.cpu()
    n = len(targets)
    wrong = torch.nonzero(preds != targets).squeeze(1)
    cm = confusion_matrix(targets.numpy(), preds.numpy(), num_classes)
    pairs = confused_pairs(cm, classes, top_pairs)
    by_writer = writer_accuracy(part.writers.cpu().numpy(), targets.numpy(), preds.numpy(), classes)
    acc = float((preds == targets).float().mean()) if n else float("nan")

    # ---- figures
    images = {"test/confusion": viz.confusion_image(cm, classes)}
    if len(wrong):
        sel = wrong[:max_gallery]
        images["test/misclassified"] = viz.gallery(part.data[sel], targets[sel], preds[sel], classes,
                                                   max_items=max_gallery)
        worst_ids = [r["writer"] for r in by_writer[:worst_writers] if r["acc"] < 1.0]
        mask = np.isin(part.writers.cpu().numpy(), worst_ids) & (preds != targets).numpy()
        idx = torch.as_tensor(np.flatnonzero(mask), dtype=torch.long)
        if len(idx):
            images["test/worst_writers"] = viz.gallery(part.data[idx], targets[idx], preds[idx], classes,
                                                       max_items=max_gallery)
    files = {}
    for tag, arr in images.items():
        path = fig_dir / f"{tag.split('/')[-1]}.png"
        viz.save_png(arr, path)
        files[tag.split("/")[-1]] = str(path)
    _log_images(loggers, images, step)

    # ---- report
    accs = [r["acc"] for r in by_writer]
    summary = {
        "test_acc": round(acc, 6), "n_test": n, "errors": int(len(wrong)),
        "confused_pairs": pairs,
        "writer_acc_min": min(accs) if accs else None,
        "writer_acc_mean": round(float(np.mean(accs)), 4) if accs else None,
        "worst_writers": [{k: r[k] for k in ("writer", "n", "acc", "errors")} for r in by_writer[:worst_writers]],
        "figures": files, "report": str(out_dir / REPORT),
    }
    lines = ["# Test-set analysis", ""]
    lines += [f"- test accuracy: **{acc:.4%}** ({n - len(wrong):,} of {n:,}; {len(wrong)} errors)",
              f"- writers: {len(accs)}; accuracy per writer: min {summary['writer_acc_min']}, "
              f"mean {summary['writer_acc_mean']}"]
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float, str)) and not k.startswith("test/acc_class"):
            lines.append(f"- {k}: {v}")
    lines += ["", "## Most confused pairs (true → predicted)", ""]
    lines += (_md_table(["true", "predicted", "count", "share of true class"],
                        [[p["true"], p["pred"], p["count"], f"{p['of_true']:.1%}"] for p in pairs])
              if pairs else ["No confusions."])
    lines += ["", f"## Worst writers (of {len(accs)})", ""]
    lines += _md_table(["writer (sheet)", "images", "accuracy", "errors (true→pred)"],
                       [[r["writer"], r["n"], f"{r['acc']:.1%}", ", ".join(r["errors"]) or "–"]
                        for r in by_writer[:worst_writers]])
    lines += ["", "## Figures", ""]
    lines += [f"- [{name}]({FIGURES}/{Path(p).name})" for name, p in files.items()]
    lines += ["", f"![confusion matrix]({FIGURES}/confusion.png)", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (REPORT + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(out_dir / REPORT)
    log.info("test analysis: %s (%d errors; worst writer %.3f)", out_dir / REPORT, len(wrong),
             summary["writer_acc_min"] or float("nan"))
    return summary
