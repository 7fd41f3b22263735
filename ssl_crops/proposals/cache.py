"""Cached proposals for a folder of images: the ``.npz`` cache and the parallel, resumable writer.

Cache file (``np.savez``, no pickle): ``ids`` (N,) str image ids (relative path without the
extension, as ``BoxIndex.from_folder`` names them), ``offsets`` (N+1,) int64, ``boxes``
(M, 4) float32 pixel xyxy best first, ``scores`` (M,) float32, ``sizes`` (N, 2) int64 image
``(w, h)``, ``meta`` (JSON string: model, top_k, failed images).

While ``propose_folder`` runs, finished chunks are written atomically as shards to
``<out>.parts/``; a re-run skips images already in the shards (or in ``<out>``), and the
final merge replaces ``<out>`` atomically and removes the shards.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..boxes import image_files
from ..files import atomic_write
from .bing import Bing, ImageReadError, image_size

__all__ = ["ProposalCache", "open_proposals", "list_images", "propose_folder"]

_KEYS = ("ids", "offsets", "boxes", "scores", "sizes")


class ProposalCache:
    """Proposals of many images in flat arrays; ``proposals_for`` serves the training dataset."""

    needs_image = False  # proposals_for reads the cache, not the pixels: the dataset need not decode

    def __init__(self, ids, offsets, boxes, scores, sizes, meta: dict | None = None):
        self.ids = np.asarray(ids, dtype=str).reshape(-1)
        self.offsets = np.asarray(offsets, np.int64).reshape(-1)
        self.boxes_flat = np.asarray(boxes, np.float32).reshape(-1, 4)
        self.scores_flat = np.asarray(scores, np.float32).reshape(-1)
        self.sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
        self.meta = dict(meta or {})
        n = len(self.ids)
        if (len(self.offsets) != n + 1 or len(self.sizes) != n or self.offsets[0] != 0
                or self.offsets[-1] != len(self.boxes_flat) or len(self.scores_flat) != len(self.boxes_flat)
                or np.any(np.diff(self.offsets) < 0)):
            raise ValueError("inconsistent proposal cache arrays")
        self._row = {str(i): k for k, i in enumerate(self.ids)}
        self._warned_missing = False
        if len(self._row) != n:
            raise ValueError("duplicate image ids in proposal cache")

    @classmethod
    def from_records(cls, records: Sequence[tuple], meta: dict | None = None) -> "ProposalCache":
        """From ``(image_id, boxes, scores, (w, h))`` tuples."""
        counts = [len(r[1]) for r in records]
        return cls([r[0] for r in records], np.concatenate([[0], np.cumsum(counts)]),
                   np.concatenate([np.reshape(r[1], (-1, 4)) for r in records]) if records else np.zeros((0, 4)),
                   np.concatenate([np.reshape(r[2], -1) for r in records]) if records else np.zeros(0),
                   [r[3] for r in records], meta)

    def records(self):
        """Iterate ``(image_id, boxes, scores, (w, h))``."""
        for k, i in enumerate(self.ids):
            a, b = self.offsets[k], self.offsets[k + 1]
            yield str(i), self.boxes_flat[a:b], self.scores_flat[a:b], tuple(int(v) for v in self.sizes[k])

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id) -> bool:
        return str(image_id) in self._row

    def __repr__(self) -> str:
        return f"ProposalCache({len(self)} images, {len(self.boxes_flat)} boxes)"

    def _slice(self, image_id) -> slice:
        try:
            k = self._row[str(image_id)]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in the proposal cache") from None
        return slice(self.offsets[k], self.offsets[k + 1])

    def boxes(self, image_id) -> np.ndarray:
        """Pixel xyxy proposals of ``image_id``, best first."""
        return self.boxes_flat[self._slice(image_id)]

    def scores(self, image_id) -> np.ndarray:
        return self.scores_flat[self._slice(image_id)]

    def size(self, image_id) -> tuple[int, int]:
        """``(w, h)`` of the image the proposals were computed on."""
        w, h = self.sizes[self._row[str(image_id)]]
        return int(w), int(h)

    def proposals_for(self, image_id: str, image=None, top_k: int | None = None) -> np.ndarray:
        """Dataset protocol: float32 ``(K, 4)`` normalized xyxy, best first, the first ``top_k``
        (``None``: all; ``image`` unused).

        An image missing from the cache gets no proposals (so scene crops), with one warning
        per cache."""
        if str(image_id) not in self._row:
            if not self._warned_missing:
                warnings.warn(f"image {image_id!r} is not in the proposal cache ({len(self)} images): "
                              "images missing from it get scene crops")
                self._warned_missing = True
            return np.zeros((0, 4), np.float32)
        w, h = self.size(image_id)
        return np.clip(self.boxes(image_id)[:top_k] / np.array([w, h, w, h], np.float32), 0, 1)

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """Write the cache atomically (temporary file, then rename)."""
        with atomic_write(path) as f:
            np.savez(f, ids=self.ids, offsets=self.offsets, boxes=self.boxes_flat, scores=self.scores_flat,
                     sizes=self.sizes, meta=np.array(json.dumps(self.meta)))

    @classmethod
    def load(cls, path) -> "ProposalCache":
        """Read a cache written by :meth:`save`; a malformed file raises ``ValueError`` naming it."""
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in _KEYS if k not in z.files]
                if missing:
                    raise ValueError(f"missing arrays {missing}")
                meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
                return cls(*(z[k] for k in _KEYS), meta=meta)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: proposal cache not found") from None
        except Exception as e:
            raise ValueError(f"{path}: not a valid proposal cache ({type(e).__name__}: {e})") from e


def open_proposals(path):
    """A :class:`Bing` (model ``.npz`` or OpenCV model folder) or a :class:`ProposalCache`,
    whichever ``path`` holds."""
    path = Path(path)
    if path.is_dir():
        return Bing.from_opencv(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: proposals file not found") from None
    except Exception as e:
        raise ValueError(f"{path}: neither a BING model nor a proposal cache ({e})") from e
    if "ids" in files:
        return ProposalCache.load(path)
    if "filter" in files:
        return Bing.load(path)
    raise ValueError(f"{path}: neither a BING model nor a proposal cache (arrays {sorted(files)})")


def list_images(root) -> list[tuple[str, str]]:
    """``(image_id, relative path)`` of the images under ``root``, sorted; ids as in
    ``BoxIndex.from_folder`` (relative path without the extension)."""
    return [(p.with_suffix("").as_posix(), p.as_posix()) for p in image_files(root)]


# --------------------------------------------------------------------------- writer
_WORKER: dict = {}


def _init_worker(model: Bing, root: str, parts: str, top_k: int, single_thread: bool = True) -> None:
    if single_thread:                    # one process per core
        import cv2
        cv2.setNumThreads(1)
    _WORKER.update(model=model, root=Path(root), parts=Path(parts), top_k=top_k)


def _run_chunk(chunk: list[tuple[str, str]]) -> tuple[int, list[str]]:
    """Propose for a chunk of images and write its shard atomically; returns (count, failed)."""
    model, root, top_k = _WORKER["model"], _WORKER["root"], _WORKER["top_k"]
    records, failed = [], []
    for image_id, rel in chunk:
        try:   # from the path: large JPEGs are decoded at a reduced scale (model.max_side)
            size = image_size(root / rel)
            boxes, scores = model.propose(root / rel, top_k, return_scores=True)
        except ImageReadError as e:
            failed.append(str(e))
            records.append((image_id, np.zeros((0, 4)), np.zeros(0), (0, 0)))
            continue
        records.append((image_id, boxes, scores, size))
    name = hashlib.sha1("\n".join(i for i, _ in chunk).encode()).hexdigest()[:16]
    ProposalCache.from_records(records, {"failed": failed}).save(_WORKER["parts"] / f"shard-{name}.npz")
    return len(chunk), failed


def propose_folder(images, model: Bing, out, top_k: int = 1000, workers: int = 1, chunk_size: int = 32,
                   progress: bool = True, model_name: str = "", overwrite: bool = False) -> ProposalCache:
    """Cache ``model``'s proposals for every image under ``images`` into ``out``.

    Runs ``workers`` processes (1: in this process), shows a tqdm bar, and resumes: images
    already in ``out`` or in the shards of an interrupted run are skipped. Unreadable images
    get no proposals, are listed in ``meta['failed']`` and reported on stderr.
    """
    from tqdm import tqdm

    out, parts = Path(out), Path(str(out) + ".parts")
    meta = {"model": model_name or repr(model), "top_k": int(top_k), "nms": model.nms_iou, "failed": []}
    if overwrite:
        shutil.rmtree(parts, ignore_errors=True)
        out.unlink(missing_ok=True)
    parts.mkdir(parents=True, exist_ok=True)
    done: list[ProposalCache] = []
    if out.exists():
        old = ProposalCache.load(out)
        settings = ("model", "top_k", "nms")
        if tuple(old.meta.get(k) for k in settings) != tuple(meta[k] for k in settings):
            raise ValueError(f"{out} was made with {old.meta.get('model')!r}, top_k={old.meta.get('top_k')}, "
                             f"nms={old.meta.get('nms')}; pass --overwrite to recompute")
        done.append(old)
    shards = lambda: sorted(parts.glob("shard-*.npz"))  # noqa: E731
    done += [ProposalCache.load(p) for p in shards()]
    seen = {str(i) for c in done for i in c.ids}
    todo = [x for x in list_images(images) if x[0] not in seen]
    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
    init = (model, str(images), str(parts), int(top_k))
    failed = [f for c in done for f in c.meta.get("failed", [])]
    with tqdm(total=len(todo), desc="proposals", unit="img", disable=not progress) as bar:
        def consume(results):
            for n, bad in results:
                bar.update(n)
                failed.extend(bad)

        if workers <= 1 or len(chunks) <= 1:
            _init_worker(*init, single_thread=False)
            consume(map(_run_chunk, chunks))
        else:
            with mp.get_context("spawn").Pool(min(workers, len(chunks)), _init_worker, init) as pool:
                consume(pool.imap_unordered(_run_chunk, chunks))
    for msg in failed:
        print(f"warning: {msg}", file=sys.stderr)
    records = [r for p in ([out] if out.exists() else []) + shards() for r in ProposalCache.load(p).records()]
    cache = ProposalCache.from_records(sorted(records, key=lambda r: r[0]), {**meta, "failed": failed})
    cache.save(out)
    shutil.rmtree(parts, ignore_errors=True)
    return cache

