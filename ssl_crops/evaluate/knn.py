"""Weighted kNN classification on features (faiss), and the online kNN monitor of training."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..distributed import broadcast_buffers
from ..metrics import map_details, topk_accuracy
from ..transforms import eval_transform
from .features import extract_features, feature_loader, is_multilabel, rank_and_world


def knn_scores(train_feats, train_targets, test_feats, k: int = 200, temperature: float = 0.07,
               chunk: int = 512) -> dict[int, np.ndarray]:
    """Weighted kNN vote scores (cosine similarity via faiss ``IndexFlatIP`` on L2-normalized
    features, weights ``exp(sim / T)``) for every ``k`` in ``k`` (int or tuple):
    ``{k: (M, C) scores}``, normalized by the summed weights. ``train_targets`` multi-hot.

    A ``k`` larger than the training set cannot be honoured: it is capped at the number of
    training samples with a warning, and the result is keyed by the ``k`` actually used.
    """
    import faiss
    ks = (k,) if isinstance(k, int) else tuple(k)
    n_train = len(train_feats)
    if n_train == 0:
        raise ValueError("kNN needs at least one training sample")
    for kk in ks:
        if kk > n_train:
            warnings.warn(f"kNN: k={kk} exceeds the {n_train} training samples; reporting k={n_train} instead")
    ks = tuple(dict.fromkeys(min(kk, n_train) for kk in ks))
    train = np.array(train_feats, dtype=np.float32, order="C")  # copies: normalized in place below
    test = np.array(test_feats, dtype=np.float32, order="C")
    faiss.normalize_L2(train), faiss.normalize_L2(test)
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    kmax = min(max(ks), len(train))
    sims, nbrs = index.search(test, kmax)
    targets = torch.as_tensor(np.asarray(train_targets, dtype=np.float32))
    out = {kk: np.zeros((len(test), targets.shape[1]), np.float32) for kk in ks}
    for lo in range(0, len(test), chunk):
        s = torch.from_numpy(sims[lo:lo + chunk])
        w = torch.exp((s - s[:, :1]) / temperature)  # shifted by the top similarity: no overflow
        votes = w.unsqueeze(2) * targets[torch.from_numpy(nbrs[lo:lo + chunk])]  # (m, kmax, C)
        for kk in ks:
            out[kk][lo:lo + chunk] = (votes[:, :kk].sum(1) / w[:, :kk].sum(1, keepdim=True)).numpy()
    return out


def knn_classify(train_feats, train_targets, test_feats, test_targets, k=(20, 200), temperature: float = 0.07,
                 multilabel: bool = True) -> dict:
    """kNN evaluation: ``knn{k}_map`` (multi-label, mAP of vote scores) or ``knn{k}_top1``
    (single-label; targets int labels or one-hot). Values are fractions; ``k`` is the one
    used (capped at the training set size, see :func:`knn_scores`)."""
    train_targets, test_targets = np.asarray(train_targets), np.asarray(test_targets)
    if not multilabel:
        if train_targets.ndim == 2:
            train_targets, test_targets = train_targets.argmax(1), test_targets.argmax(1)
        c = int(max(train_targets.max(), test_targets.max())) + 1
        train_targets = np.eye(c, dtype=np.float32)[train_targets]
    scores = knn_scores(train_feats, train_targets, test_feats, k, temperature)
    if multilabel:
        return {f"knn{kk}_map": map_details(s, test_targets).map for kk, s in scores.items()}
    return {f"knn{kk}_top1": topk_accuracy(s, test_targets, (1,))[1] for kk, s in scores.items()}


class KNNMonitor:
    """Online kNN evaluation for ``main_moco.py --knn-every N``.

    ``monitor(encoder)`` extracts features before ``encoder.fc`` (swapped for identity while
    extracting) on the encoder's device and returns ``knn_classify`` metrics on rank 0, ``{}``
    on other ranks. With a process group it must be called on every rank: each extracts its
    shard (``batch_size`` images per batch and rank) with rank 0's buffers (BatchNorm statistics,
    copied to every rank first) and rank 0 runs the kNN. The encoder's train/eval mode and ``fc``
    are restored afterwards. Test images are read from ``test_root`` (default ``root``); a
    federated (LVIS) test index is scored with its federated targets. ``on_corrupt="skip"``
    leaves unreadable images out (as ``--bad-image skip``), counted and named in a warning.
    Metrics are percent, keyed ``knn{k}_map_pct`` (``_top1_pct``); NaN when nothing can be scored.
    """

    def __init__(self, root, train_index, test_index, image_size: int = 224, batch_size: int = 256,
                 workers: int = 4, k=(20, 200), temperature: float = 0.07, amp: str = "off",
                 multilabel: bool | None = None, progress: bool = False, test_root=None, on_corrupt: str = "raise"):
        from ..data import LabeledImageDataset
        tf = eval_transform(image_size)
        self.train = LabeledImageDataset(root, train_index, tf, on_corrupt)
        self.test = LabeledImageDataset(root if test_root is None else test_root, test_index, tf, on_corrupt)
        self.test_targets = test_index.target_matrix() if test_index.federated else None
        self.batch_size, self.workers, self.k, self.temperature = batch_size, workers, k, temperature
        self.amp, self.progress = amp, progress
        self.multilabel = is_multilabel(train_index) if multilabel is None else multilabel

    def __call__(self, encoder: nn.Module) -> dict:
        encoder = getattr(encoder, "module", encoder)
        device = next(encoder.parameters()).device
        broadcast_buffers(encoder)  # BatchNorm statistics differ per rank: rank 0's for every shard
        fc, encoder.fc = encoder.fc, nn.Identity()
        try:
            tr, te = [extract_features(encoder, feature_loader(ds, self.batch_size, self.workers), device,
                                       self.amp, progress=self.progress) for ds in (self.train, self.test)]
        finally:
            encoder.fc = fc
        if rank_and_world()[0] != 0:
            return {}
        from ..data import unreadable_rows
        keep, keep_test = ~unreadable_rows(tr[1]), ~unreadable_rows(te[1])  # on_corrupt="skip": left out
        for name, ds, ok in (("training", self.train, keep), ("test", self.test, keep_test)):
            bad = [ds.index.path(i) for i in np.flatnonzero(~ok)]
            if bad:
                warnings.warn(f"kNN monitor: {len(bad)} of {len(ok)} {name} images unreadable or missing in "
                              f"{ds.root}, left out: {', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}")
        if not keep_test.any() or not keep.any():
            nan = float("nan")  # logged as null, with a warning
            return {f"knn{k}_{'map' if self.multilabel else 'top1'}_pct": nan
                    for k in ((self.k,) if isinstance(self.k, int) else self.k)}
        test_y = te[1] if self.test_targets is None else self.test_targets
        res = knn_classify(tr[0][keep], tr[1][keep], te[0][keep_test], test_y[keep_test], k=self.k,
                           temperature=self.temperature, multilabel=self.multilabel)
        return {f"{key}_pct": 100 * v for key, v in res.items()}  # percent, as linear_eval.py prints mAP

