"""Weighted kNN classification on features (faiss), and the online kNN monitor of training."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..distributed import all_gather_cat, all_gather_objects, broadcast_buffers
from ..metrics import map_details, topk_accuracy
from ..transforms import eval_transform
from .features import extract_features, extract_shard, feature_loader, is_multilabel, rank_and_world


def nearest(train_feats, test_feats, k: int):
    """``(sims, rows)``: each test row's ``k`` most cosine-similar training rows, best first
    (faiss ``IndexFlatIP`` on L2-normalized copies), as ``(M, k)`` float32 and int64 arrays."""
    import faiss
    train = np.array(train_feats, dtype=np.float32, order="C")  # copies: normalized in place below
    test = np.array(test_feats, dtype=np.float32, order="C")
    faiss.normalize_L2(train), faiss.normalize_L2(test)
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    return index.search(test, k)


def knn_scores(train_feats, train_targets, test_feats, k: int = 200, temperature: float = 0.07,
               chunk: int = 512, neighbours=None) -> dict[int, np.ndarray]:
    """Weighted kNN vote scores (cosine similarity via faiss ``IndexFlatIP`` on L2-normalized
    features, weights ``exp(sim / T)``) for every ``k`` in ``k`` (int or tuple):
    ``{k: (M, C) scores}``, normalized by the summed weights. ``train_targets`` multi-hot.
    ``neighbours``: precomputed ``(sims, rows)`` best first (:func:`sharded_neighbours`; rows of
    ``train_targets``, -1 past the training set's end); ``train_feats`` and ``test_feats`` are then unused.

    A ``k`` larger than the training set cannot be honoured: it is capped at the number of
    training samples with a warning, and the result is keyed by the ``k`` actually used.
    """
    ks = (k,) if isinstance(k, int) else tuple(k)
    if neighbours is None:
        n_train = len(train_feats)
    else:
        n_train = int((neighbours[1][0] >= 0).sum()) if len(neighbours[1]) else neighbours[1].shape[1]
    if n_train == 0:
        raise ValueError("kNN needs at least one training sample")
    for kk in ks:
        if kk > n_train:
            warnings.warn(f"kNN: k={kk} exceeds the {n_train} training samples; reporting k={n_train} instead")
    ks = tuple(dict.fromkeys(min(kk, n_train) for kk in ks))
    kmax = min(max(ks), n_train)
    sims, nbrs = nearest(train_feats, test_feats, kmax) if neighbours is None else \
        (neighbours[0][:, :kmax], neighbours[1][:, :kmax])
    targets = torch.as_tensor(np.asarray(train_targets, dtype=np.float32))
    out = {kk: np.zeros((len(sims), targets.shape[1]), np.float32) for kk in ks}
    for lo in range(0, len(sims), chunk):
        s = torch.from_numpy(np.ascontiguousarray(sims[lo:lo + chunk]))
        w = torch.exp((s - s[:, :1]) / temperature)  # shifted by the top similarity: no overflow
        votes = w.unsqueeze(2) * targets[torch.from_numpy(np.ascontiguousarray(nbrs[lo:lo + chunk]))]  # (m, kmax, C)
        for kk in ks:
            out[kk][lo:lo + chunk] = (votes[:, :kk].sum(1) / w[:, :kk].sum(1, keepdim=True)).numpy()
    return out


def sharded_neighbours(shard_feats, shard_rows, test_feats, k: int, chunk: int = 4096):
    """:func:`nearest` over the training rows of all ranks, each holding its shard (features and
    global ``rows``): each rank searches its own and only its top ``k`` per test row travel, in
    chunks of ``chunk`` test rows (``world x chunk x k`` pairs at a time), merged on rank 0.
    Returns ``(sims, rows)`` on rank 0 (rows -1 past the training set's end), ``None`` on the
    others. Called on every rank; ``test_feats`` the same on all."""
    rank, world = rank_and_world()
    total = int(all_gather_cat(torch.tensor([len(shard_rows)])).sum())
    k = max(1, min(k, total))
    sims = np.full((len(test_feats), k), -np.inf, np.float32)
    rows = np.full((len(test_feats), k), -1, np.int64)
    mine = min(k, len(shard_rows))
    if mine:
        s, i = nearest(shard_feats, test_feats, mine)
        sims[:, :mine], rows[:, :mine] = s, np.asarray(shard_rows)[i]
    for lo in range(0, len(test_feats), chunk):  # the same number of chunks on every rank
        gs, gi = (all_gather_cat(torch.from_numpy(a[lo:lo + chunk]).unsqueeze(0)) for a in (sims, rows))
        if rank == 0:  # (world, m, k) -> (m, world * k), best k first
            gs, gi = (g.permute(1, 0, 2).reshape(g.shape[1], -1) for g in (gs, gi))
            order = torch.sort(gs, dim=1, descending=True, stable=True).indices[:, :k]
            sims[lo:lo + chunk], rows[lo:lo + chunk] = gs.gather(1, order).numpy(), gi.gather(1, order).numpy()
    return (sims, rows) if rank == 0 else None


def knn_classify(train_feats, train_targets, test_feats, test_targets, k=(20, 200), temperature: float = 0.07,
                 multilabel: bool = True, neighbours=None) -> dict:
    """kNN evaluation: ``knn{k}_map`` (multi-label, mAP of vote scores) or ``knn{k}_top1``
    (single-label; targets int labels or one-hot). Values are fractions; ``k`` is the one
    used (capped at the training set size, see :func:`knn_scores`, which takes ``neighbours``)."""
    train_targets, test_targets = np.asarray(train_targets), np.asarray(test_targets)
    if not multilabel:
        if train_targets.ndim == 2:
            train_targets, test_targets = train_targets.argmax(1), test_targets.argmax(1)
        c = int(max(train_targets.max(), test_targets.max())) + 1
        train_targets = np.eye(c, dtype=np.float32)[train_targets]
    scores = knn_scores(train_feats, train_targets, test_feats, k, temperature, neighbours=neighbours)
    if multilabel:
        return {f"knn{kk}_map": map_details(s, test_targets).map for kk, s in scores.items()}
    return {f"knn{kk}_top1": topk_accuracy(s, test_targets, (1,))[1] for kk, s in scores.items()}


class KNNMonitor:
    """Online kNN evaluation for ``main_moco.py --knn-every N``.

    ``monitor(encoder)`` extracts features before ``encoder.fc`` (swapped for identity while
    extracting) on the encoder's device and returns ``knn_classify`` metrics on rank 0, ``{}``
    on other ranks. With a process group it must be called on every rank: each extracts its
    shard (``batch_size`` images per batch and rank) with rank 0's buffers (BatchNorm statistics,
    copied to every rank first); the training features stay on their rank, which finds each test
    image's nearest among them, and only these top-k lists travel to rank 0 (:func:`sharded_neighbours`),
    which votes. The encoder's train/eval mode and ``fc``
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
        rank, world = rank_and_world()
        fc, encoder.fc = encoder.fc, nn.Identity()
        try:  # the training features stay sharded over the ranks; the test features are gathered
            train = feature_loader(self.train, self.batch_size, self.workers)
            tr = (extract_features(encoder, train, device, self.amp, progress=self.progress) if world == 1
                  else extract_shard(encoder, train, device, self.amp, progress=self.progress))
            te = extract_features(encoder, feature_loader(self.test, self.batch_size, self.workers), device,
                                  self.amp, progress=self.progress)
        finally:
            encoder.fc = fc
        from ..data import unreadable_rows
        keep, keep_test = ~unreadable_rows(tr[1]), ~unreadable_rows(te[1])  # on_corrupt="skip": left out
        train_rows = np.arange(len(keep)) if world == 1 else np.asarray(tr[2])  # this rank's dataset rows
        bad_train = [self.train.index.path(int(i)) for i in train_rows[~keep]]
        if world > 1:  # every rank's, so that every rank takes the same turn below
            bad_train = [name for names in all_gather_objects(bad_train) for name in names]
        n_train = len(self.train)
        if rank == 0:  # the test features are the same on every rank
            for name, bad, total in (("training", bad_train, n_train),
                                     ("test", [self.test.index.path(int(i)) for i in np.flatnonzero(~keep_test)],
                                      len(keep_test))):
                if bad:
                    warnings.warn(f"kNN monitor: {len(bad)} of {total} {name} images unreadable or missing in "
                                  f"{(self.train if name == 'training' else self.test).root}, left out: "
                                  f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}")
        if not keep_test.any() or len(bad_train) == n_train:  # the same decision on every rank
            if rank != 0:
                return {}
            nan = float("nan")  # logged as null, with a warning
            return {f"knn{k}_{'map' if self.multilabel else 'top1'}_pct": nan
                    for k in ((self.k,) if isinstance(self.k, int) else self.k)}
        test_y = te[1] if self.test_targets is None else self.test_targets
        if world > 1:  # only each rank's top k travel
            ks = (self.k,) if isinstance(self.k, int) else self.k
            found = sharded_neighbours(tr[0][keep], tr[2][keep], te[0][keep_test], max(ks))
            if rank != 0:
                return {}
            res = knn_classify(None, self.train.targets.numpy(), None, test_y[keep_test], k=self.k,
                               temperature=self.temperature, multilabel=self.multilabel, neighbours=found)
        else:
            res = knn_classify(tr[0][keep], tr[1][keep], te[0][keep_test], test_y[keep_test], k=self.k,
                               temperature=self.temperature, multilabel=self.multilabel)
        return {f"{key}_pct": 100 * v for key, v in res.items()}  # percent, as linear_eval.py prints mAP
