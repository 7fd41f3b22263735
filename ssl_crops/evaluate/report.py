"""Reports: overall and per-class AP, frequency groups, the report files and the printed table."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..metrics import frequency_groups, group_map, map_details, topk_accuracy


def build_report(scores, targets, train_counts, classes, multilabel: bool, head_min: int = 100,
                 tail_max: int = 20, **extra) -> dict:
    """Overall and per-class AP, head/medium/tail mAP by training frequency (+ top-1/5 when
    single-label). ``targets`` multi-hot, or int labels when single-label."""
    targets = np.asarray(targets)
    onehot = targets if multilabel else np.eye(len(classes), dtype=np.int8)[targets]
    res = map_details(scores, onehot)
    groups = frequency_groups(train_counts, head_min, tail_max)
    report = {**extra, "task": "multilabel" if multilabel else "singlelabel",
              "num_test": int(len(targets)), "num_classes": len(classes),
              "map": res.map, "classes_evaluated": int(len(classes) - len(res.skipped)),
              "classes_skipped": [classes[i] for i in res.skipped],
              "thresholds": {"head_min": head_min, "tail_max": tail_max},
              "groups": group_map(res.ap, groups)}
    if not multilabel:
        acc = topk_accuracy(scores, targets, (1, 5))
        report.update(top1=acc[1], top5=acc[5])
    report["per_class"] = [
        {"class_index": i, "class": c, "train_images": int(train_counts[i]),
         "test_positives": int(res.num_positives[i]), "group": str(groups[i]),
         "ap": None if np.isnan(res.ap[i]) else float(res.ap[i])} for i, c in enumerate(classes)]
    return report


def write_report(report: dict, out_dir) -> tuple[Path, Path]:
    """``report.json`` (without the per-class rows) and ``per_class_ap.csv`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, cs = out_dir / "report.json", out_dir / "per_class_ap.csv"
    js.write_text(json.dumps({k: v for k, v in report.items() if k != "per_class"}, indent=2))
    with open(cs, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(report["per_class"][0]))
        w.writeheader()
        w.writerows(report["per_class"])
    return js, cs


def format_table(report: dict) -> str:
    """Plain-text summary: overall and per-group mAP (percent), top-1/5, kNN."""
    pct = lambda v: "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"
    t = report["thresholds"]
    rows = [f"{'subset':<28}{'classes':>8}{'mAP':>8}",
            f"{'all':<28}{report['classes_evaluated']:>8}{pct(report['map']):>8}"]
    labels = {"head": f"head (>{t['head_min']} train imgs)", "medium": f"medium ({t['tail_max']}-{t['head_min']})",
              "tail": f"tail (<{t['tail_max']})"}
    for g, r in report["groups"].items():
        rows.append(f"{labels[g]:<28}{r['evaluated']:>8}{pct(r['map']):>8}")
    if report["classes_skipped"]:
        rows.append(f"skipped (no test positive): {len(report['classes_skipped'])} classes")
    for key in ("top1", "top5"):
        if key in report:
            rows.append(f"{key:<28}{'':>8}{pct(report[key]):>8}")
    if report.get("sweep"):
        best = report["best"]
        val = ", ".join(f"{k} {100 * v:.2f}" for k, v in best.items() if k.startswith("val_"))
        rows.append(f"probe: lr {best['lr']:g}, wd {best['wd']:g} chosen from {len(report['sweep'])} ({val})")
    for key, v in report.get("knn", {}).items():
        rows.append(f"{key:<28}{'':>8}{pct(v):>8}")
    return "\n".join(rows)

