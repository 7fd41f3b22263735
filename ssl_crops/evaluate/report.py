"""Reports: overall and per-class AP, frequency groups, the report files and the printed table."""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np

from ..files import json_text
from ..metrics import (GROUPS, TERTILES, batch_mean_average_precision, frequency_groups, group_map, map_details,
                       tertile_groups, topk_accuracy)
from ..viz import per_class_ap_figure

PAPER_BATCH_SIZE = 256  # the original main_lincls.py test batch (divided by the GPUs)
PAPER_LABEL = "comparable with the paper only"


def scoring_targets(targets, train_counts, multilabel: bool) -> np.ndarray:
    """The ``(N, C)`` targets AP is computed on: multi-hot (int labels become one-hot), with
    -1 (not scored) in the columns of classes without a training image."""
    targets, train_counts = np.asarray(targets), np.asarray(train_counts)
    out = (targets if multilabel else np.eye(len(train_counts), dtype=np.int8)[targets]).astype(np.float32)
    out[:, train_counts == 0] = -1  # a class never seen in training cannot be learned
    return out


def build_report(scores, targets, train_counts, classes, multilabel: bool, head_min: int = 100,
                 tail_max: int = 20, paper_batch_size: int = PAPER_BATCH_SIZE, **extra) -> dict:
    """Overall and per-class AP, mAP by training frequency (fixed thresholds and class
    tertiles), top-1/5 when single-label, and the original code's batch-mean mAP.

    ``targets``: multi-hot (or federated: -1 not scored), or int labels when single-label.
    ``map`` is over the whole set; ``map_batch_mean`` is the mean over consecutive batches
    of ``paper_batch_size`` (``main_lincls.py``'s figure, for comparison with the paper only).
    Classes without a training image are not scored (``classes_without_train_images``
    lists those with test positives) and belong to no tertile.
    """
    targets, train_counts = np.asarray(targets), np.asarray(train_counts)
    onehot = targets if multilabel else np.eye(len(classes), dtype=np.int8)[targets]
    positives = (onehot > 0).sum(0)
    untrained = train_counts == 0
    scored = scoring_targets(targets, train_counts, multilabel)
    res = map_details(scores, scored)
    groups = frequency_groups(train_counts, head_min, tail_max)
    tertiles = np.full(len(classes), "no training image", dtype=object)
    tertiles[~untrained] = tertile_groups(train_counts[~untrained])
    tertiles = tertiles.astype(str)
    report = {**extra, "task": "multilabel" if multilabel else "singlelabel",
              "num_test": int(len(targets)), "num_classes": len(classes),
              "map": res.map,
              "map_batch_mean": batch_mean_average_precision(scores, scored, paper_batch_size),
              "map_batch_mean_note": f"mean of per-batch mAP over test batches of {paper_batch_size} "
                                     f"(original main_lincls.py); {PAPER_LABEL}",
              "classes_evaluated": int(len(classes) - len(res.skipped)),
              "classes_skipped": [classes[i] for i in res.skipped if positives[i] == 0],
              "classes_without_train_images": [classes[i] for i in np.flatnonzero(untrained & (positives > 0))],
              "thresholds": {"head_min": head_min, "tail_max": tail_max},
              "groups": _named(group_map(res.ap, groups, GROUPS, train_counts), groups, classes),
              "tertiles": _named(group_map(res.ap, tertiles, TERTILES, train_counts), tertiles, classes)}
    if not multilabel:
        acc = topk_accuracy(scores, targets, (1, 5))
        report.update(top1=acc[1], top5=acc[5])
    report["per_class"] = [
        {"class_index": i, "class": c, "train_images": int(train_counts[i]),
         "test_positives": int(positives[i]), "group": str(groups[i]), "tertile": str(tertiles[i]),
         "ap": None if np.isnan(res.ap[i]) else float(res.ap[i])} for i, c in enumerate(classes)]
    report["per_class_ap"] = {r["class"]: r["ap"] for r in report["per_class"]}
    report["per_class_train_images"] = {r["class"]: r["train_images"] for r in report["per_class"]}
    return report


def _named(stats: dict, labels, classes) -> dict:
    labels = np.asarray(labels)
    for g, r in stats.items():
        r["class_names"] = [classes[i] for i in np.flatnonzero(labels == g)]
    return stats


def write_report(report: dict, out_dir) -> dict[str, Path]:
    """Write the report files into ``out_dir``: ``report.json`` (per-class AP and training
    images as class -> value maps), ``per_class_ap.csv`` (per-class rows) and ``per_class_ap.png``
    (AP per class sorted by training frequency; needs the ``[viz]`` extra, else a warning says
    how to install it); returns ``{name: path}``. The one place report files are made."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"report": out_dir / "report.json", "per-class AP": out_dir / "per_class_ap.csv"}
    files["report"].write_text(json_text({k: v for k, v in report.items() if k != "per_class"}, indent=2))
    with open(files["per-class AP"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(report["per_class"][0]))
        w.writeheader()
        w.writerows(report["per_class"])
    rows = report["per_class"]
    try:
        files["per-class AP plot"] = per_class_ap_figure(
            [r["ap"] for r in rows], [r["class"] for r in rows], [r["train_images"] for r in rows],
            out_dir / "per_class_ap.png")
    except ImportError as e:  # matplotlib is optional
        warnings.warn(f"per_class_ap.png not written: {e}")
    return files


def _pct(v) -> str:
    return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"


def _range(r: dict) -> str:
    lo, hi = r.get("train_images") or (None, None)
    return "" if lo is None else f" [{lo}-{hi} imgs]"


def format_table(report: dict, notes: bool = True) -> str:
    """Plain-text summary (percent): overall mAP, the paper-comparable batch-mean mAP, mAP per
    frequency group and tertile, top-1/5, the probe setting, the image size, kNN, unseen test
    classes. ``notes=False`` leaves out the lines a run printed as it went (image size, sweep
    notes, unseen test classes), so that each is printed once."""
    t = report["thresholds"]
    rows = [f"{'subset':<44}{'classes':>8}{'mAP %':>8}",
            f"{'all (whole test set)':<44}{report['classes_evaluated']:>8}{_pct(report['map']):>8}"]
    labels = {"head": f"head (>{t['head_min']} train imgs)", "medium": f"medium ({t['tail_max']}-{t['head_min']})",
              "tail": f"tail (<{t['tail_max']})"}
    for g, r in report["groups"].items():
        rows.append(f"{labels[g]:<44}{r['evaluated']:>8}{_pct(r['map']):>8}")
    for g, r in report.get("tertiles", {}).items():
        rows.append(f"{(g + _range(r)):<44}{r['evaluated']:>8}{_pct(r['map']):>8}")
    if report["classes_skipped"]:
        rows.append(f"skipped (no test positive): {len(report['classes_skipped'])} classes")
    if report.get("classes_without_train_images"):
        rows.append(f"not scored (test positives but no training image): "
                    f"{len(report['classes_without_train_images'])} classes")
    for key in ("top1", "top5"):
        if key in report:
            rows.append(f"{key:<44}{'':>8}{_pct(report[key]):>8}")
    if "map_batch_mean" in report:
        rows.append(f"{'batch-mean mAP (' + PAPER_LABEL + ')':<52}{_pct(report['map_batch_mean']):>8}")
    if report.get("best_epoch"):
        b = report["best_epoch"]
        rows.append(f"{'best epoch on test, batch-mean (original protocol; ' + PAPER_LABEL + ')':<52}"
                    f"{_pct(b['value']):>8}  (epoch {b['epoch']})")
    if report.get("sweep"):
        best = report["best"]
        val = ", ".join(f"{k} {100 * v:.2f}" for k, v in best.items() if k.startswith("val_"))
        rows.append(f"probe: lr {best['lr']:g}, wd {best['wd']:g} chosen from {len(report['sweep'])} ({val})")
        for note in report.get("sweep_notes", []) if notes else ():
            rows.append(f"probe: {note}")
    if "image_size" in report and notes:
        source = report.get("image_size_source")
        rows.append(f"image size: {report['image_size']} px" + (f" ({source})" if source else ""))
    for key, v in report.get("knn", {}).items():
        rows.append(f"{key:<44}{'':>8}{_pct(v):>8}")
    for note in report.get("notes", []) if notes else ():
        rows.append(f"note: {note}")
    return "\n".join(rows)
