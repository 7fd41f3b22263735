"""The knobs of a BING model, in three small frozen groups: how candidates are scored (stages I
and II), how they are ranked and returned (ranking, edge snapping, NMS), and how ``Bing.fit``
trains. ``split_knobs`` routes the flat keyword arguments ``Bing(...)`` and ``Bing.fit(...)``
have always taken (and the model file's ``params``) into them."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .gradients import COLORS, W8

__all__ = ["ScoringConfig", "RankingConfig", "FitConfig", "MAXIMA", "MAX_SIDE", "FIT_SIDES", "split_knobs", "Knob"]

MAXIMA = ("grid", "local")               # candidates: features.grid_maxima or 3x3 local maxima
MAX_SIDE = 640                           # default working size (long side, px)
FIT_SIDES = (16, 32, 64, 128, 256, 512)  # default sides of Bing.fit (held-out choice, README)


def _set(obj, **values) -> None:
    for k, v in values.items():
        object.__setattr__(obj, k, v)


@dataclass(frozen=True)
class ScoringConfig:
    """Stages I and II. ``color``: the gradient's colour space (``rgb``, ``hsv``, ``gray``);
    ``max_side``: working size (long side, px; ``None`` = the input's size); ``gradient_shift``:
    low gradient bits dropped before stage I (4 for OpenCV's binarized model); ``maxima``:
    ``local`` (3x3) or ``grid`` candidates; ``per_size``: cap on candidates per size (``None``
    or 0: no cap)."""

    color: str = "rgb"
    max_side: int | None = MAX_SIDE
    gradient_shift: int = 0
    maxima: str = "local"
    per_size: int | None = None

    def __post_init__(self):
        if self.color not in COLORS:
            raise ValueError(f"unknown colour space {self.color!r}; expected one of {COLORS}")
        if self.maxima not in MAXIMA:
            raise ValueError(f"unknown candidate maxima {self.maxima!r}; expected one of {MAXIMA}")
        if self.max_side is not None and int(self.max_side) < W8:
            raise ValueError(f"max_side must be at least {W8} px, got {self.max_side}")
        if not 0 <= int(self.gradient_shift) < 8:
            raise ValueError(f"gradient_shift must be in 0..7, got {self.gradient_shift}")
        _set(self, max_side=None if self.max_side is None else int(self.max_side),
             gradient_shift=int(self.gradient_shift), per_size=self.per_size and int(self.per_size))


@dataclass(frozen=True)
class RankingConfig:
    """Ranking and the returned list. ``top_k``: number of proposals ``proposals_for`` returns;
    ``sparse_top``: leading proposals taken from the 5x5 maxima only; ``fine_share`` /
    ``fine_after``: share of the list given to sizes between powers of two, after that rank;
    ``snap``: edge-snapping step, a share of the box's side (``None``: none); ``nms_iou``:
    optional final box NMS."""

    top_k: int = 1000
    sparse_top: int = 100
    fine_share: float = 0.1
    fine_after: int = 100
    snap: float | None = None
    nms_iou: float | None = None

    def __post_init__(self):
        if not 0 <= self.fine_share <= 1:
            raise ValueError(f"fine_share must be in [0, 1], got {self.fine_share}")
        if self.snap is not None and not 0 < self.snap < 0.5:
            raise ValueError(f"snap must be None or in (0, 0.5), got {self.snap}")
        _set(self, top_k=int(self.top_k), sparse_top=int(self.sparse_top), fine_share=float(self.fine_share),
             fine_after=int(self.fine_after), snap=None if self.snap is None else float(self.snap))


@dataclass(frozen=True)
class FitConfig:
    """Training (``Bing.fit``). ``sides``: window sides tried (all ``(w, h)`` pairs);
    ``min_positives``: sizes with fewer boxes are dropped; ``negatives_per_image``: random
    stage-I negatives; ``c``: the SVM's regularization; ``rescore_top`` / ``rescore_head``: the
    stage-III rescorer (``None``: no stage III); ``box_weight``: see :mod:`.rescoring`;
    ``seed``: everything random."""

    seed: int = 0
    min_positives: int = 10
    negatives_per_image: int = 100
    c: float = 1e-3
    sides: tuple = FIT_SIDES
    rescore_top: int | None = 3000
    rescore_head: int = 50
    box_weight: float = 30.0

    def __post_init__(self):
        _set(self, sides=tuple(int(s) for s in self.sides))


FIT_SCORING = ScoringConfig(color="hsv")                   # Bing.fit's defaults (held-out choices, README)
FIT_RANKING = RankingConfig(fine_share=0.15, snap=0.12)


def split_knobs(knobs: dict, *configs):
    """``configs`` (dataclass instances) with the flat keyword arguments ``knobs`` applied by
    name; an unknown name raises ``TypeError``."""
    names = [{f.name for f in fields(c)} for c in configs]
    unknown = sorted(set(knobs) - set().union(*names))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}")
    return tuple(replace(c, **{k: v for k, v in knobs.items() if k in n}) if set(knobs) & n else c
                 for c, n in zip(configs, names))


class Knob:
    """One field of a model's config group, read and set on the model by its name
    (``model.snap = None`` replaces ``model.ranking`` with a validated copy)."""

    def __init__(self, group: str, name: str):
        self.group, self.name = group, name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(getattr(obj, self.group), self.name)

    def __set__(self, obj, value) -> None:
        setattr(obj, self.group, replace(getattr(obj, self.group), **{self.name: value}))
