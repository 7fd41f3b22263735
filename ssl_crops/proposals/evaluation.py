"""Proposal quality: IoU, detection rate and mean best overlap at several proposal counts."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["box_iou", "evaluate_proposals", "format_table"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of xyxy boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def evaluate_proposals(proposals: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                       ks: Sequence[int] = (1, 10, 100, 1000), thresholds: Sequence[float] = (0.5, 0.7)) -> dict:
    """Detection rate (share of ground-truth boxes with a proposal of IoU >= t among the
    first k) and mean best overlap over all boxes, at every ``k``. Boxes in one coordinate
    frame per image (pixels or normalized), proposals best first."""
    best = []
    for p, g in zip(proposals, gts):
        g = np.asarray(g).reshape(-1, 4)
        if len(g) == 0:
            continue
        iou = box_iou(g, p)
        cum = np.maximum.accumulate(iou, axis=1) if iou.shape[1] else np.zeros((len(g), 1))
        best.append(cum[:, np.minimum(np.asarray(ks), cum.shape[1]) - 1])
    best = np.concatenate(best) if best else np.zeros((0, len(ks)))
    return {"ks": list(ks), "num_boxes": len(best),
            "detection_rate": {t: (best >= t).mean(0).tolist() if len(best) else [0.0] * len(ks) for t in thresholds},
            "mabo": best.mean(0).tolist() if len(best) else [0.0] * len(ks)}


def format_table(result: dict, name: str = "") -> str:
    """The result of :func:`evaluate_proposals` as a small text table."""
    head = f"{name or 'proposals':<22}" + "".join(f"{'@' + str(k):>8}" for k in result["ks"])
    lines = [head]
    for t, v in result["detection_rate"].items():
        lines.append(f"{'DR IoU>=' + str(t):<22}" + "".join(f"{x:8.3f}" for x in v))
    lines.append(f"{'MABO':<22}" + "".join(f"{x:8.3f}" for x in result["mabo"]))
    lines.append(f"({result['num_boxes']} ground-truth boxes)")
    return "\n".join(lines)
