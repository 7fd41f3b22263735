"""The train and test images of a linear evaluation (``linear_eval.py`` annotation flags),
what is left out of them and why."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..distributed import print0
from .features import is_multilabel


@dataclass
class Splits:
    """Train and test images of a linear evaluation, and what was left out of the test set."""
    train_root: Path
    train: object  # BoxIndex
    test_root: Path
    test: object   # BoxIndex, with the training classes
    notes: dict = field(default_factory=dict)


def _one_of(args, names: tuple[str, ...], what: str):
    given = [n for n in names if getattr(args, n, None)]
    if len(given) > 1:
        raise ValueError(f"{what}: give only one of " + ", ".join("--" + n.replace("_", "-") for n in given))
    return given[0] if given else None


def load_splits(args, multilabel: bool | None = None) -> Splits:
    """The train and test indices named by the arguments (see ``linear_eval.py -h``).

    The test index gets the training classes. Test classes without a training image are
    named in ``notes["test_unseen_classes"]`` (class -> test images) and not scored: in a
    single-label task their images are left out (``notes["test_images_left_out"]``), in a
    multi-label one the class is not scored (:func:`~.report.scoring_targets`).
    """
    from ..boxes import BoxIndex
    from ..sources import AnnotationSpec, load_index
    data = Path(args.data)
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: image folder not found")
    train_src = _one_of(args, ("coco", "index", "labels"), "train annotations")
    test_src = _one_of(args, ("test_coco", "test_index", "test_labels"), "test annotations")
    for name in ("coco", "index", "labels", "boxes", "test_coco", "test_index", "test_labels"):
        path = getattr(args, name, None)
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: --{name.replace('_', '-')} file not found")
    for name in ("labels", "test_labels"):
        path = getattr(args, name, None)
        if path and Path(path).suffix.lower() == ".json":
            raise ValueError(f"{path}: a JSON file given to --{name.replace('_', '-')} (which reads the "
                             f"OpenImages-subset .npy dicts); pass COCO/LVIS json as --{name.replace('labels', 'coco').replace('_', '-')}")
    folders = (data / "train").is_dir() and (data / "val").is_dir() and not train_src and not test_src
    if folders:
        train_root, test_root = data / "train", Path(args.test_images or data / "val")
        train, test = BoxIndex.from_folder(train_root), BoxIndex.from_folder(test_root)
    else:
        train_root, test_root = data, Path(args.test_images or data)
        train = load_index(AnnotationSpec.from_args(args, data))
        test = load_index(AnnotationSpec.from_args(args, data, prefix="test-"))
    if not test_root.is_dir():
        raise FileNotFoundError(f"{test_root}: test image folder not found")
    if len(train) == 0 or train.num_classes == 0:
        raise ValueError(f"{train_root}: no labelled training images")
    train_counts = dict(zip(train.classes, train.class_counts().tolist()))
    counts = dict(zip(test.classes, test.class_counts().tolist()))
    unseen = {c: n for c, n in counts.items() if n and not train_counts.get(c)}
    raw_labels = test.num_labels_per_image()
    test = test.with_classes(train.classes)
    notes = {}
    if unseen:
        notes["test_unseen_classes"] = unseen
    single = not multilabel if multilabel is not None else not is_multilabel(train)
    if single:
        trained = train.class_counts() > 0
        n_labels = test.num_labels_per_image()
        # one label before and after the switch to the training classes: an image of a trained and
        # an unseen class is left out, not scored as the trained one
        keep = np.array([raw == n == 1 and trained[test.labels(i)[0]]
                         for i, (raw, n) in enumerate(zip(raw_labels, n_labels))], bool)
        if not keep.all():
            notes["test_images_left_out"] = int((~keep).sum())
            if (raw_labels != 1).any():
                notes["test_images_without_one_label"] = int((raw_labels != 1).sum())
            test = test.subset(keep)
    if len(test) == 0:
        raise ValueError(f"{test_root}: no test image with a training class left to score")
    return Splits(train_root, train, test_root, test, notes)


def unseen_notes(notes: dict) -> list[str]:
    out = []
    if notes.get("test_unseen_classes"):
        unseen = notes["test_unseen_classes"]
        out.append(f"{len(unseen)} test classes have no training image and are not scored: "
                   + ", ".join(f"{c} ({n} images)" for c, n in sorted(unseen.items())))
    if notes.get("test_images_left_out"):
        other = notes.get("test_images_without_one_label", 0)
        out.append(f"{notes['test_images_left_out']} test images left out of the single-label scoring"
                   + (f" ({other} without exactly one label)" if other else ""))
    for split in ("train", "test"):
        bad = notes.get(f"{split}_unreadable_images")
        if bad:
            out.append(f"{len(bad)} unreadable {split} images left out (--bad-image skip): "
                       + "; ".join(f"{name}: {why}" for name, why in list(bad.items())[:5])
                       + (f"; ... (all {len(bad)} in report.json)" if len(bad) > 5 else ""))
    return out


def leave_out_unreadable(splits: Splits, split: str, targets) -> np.ndarray:
    """Mask of the readable images of ``split`` (``"train"`` or ``"test"``) from the targets the
    loader served; the unreadable ones (read again here for their reason) go into
    ``splits.notes`` and out of ``splits``, with one line on rank 0."""
    from ..data import unreadable_rows
    from ..images import ImageReadError, load_image
    bad = unreadable_rows(targets)
    if not bad.any():
        return ~bad
    root, index = (splits.train_root, splits.train) if split == "train" else (splits.test_root, splits.test)
    reasons = {}
    for i in np.flatnonzero(bad):
        try:
            load_image(root / index.path(i))
            reasons[index.path(i)] = "unreadable in a loader worker"
        except ImageReadError as e:
            reasons[index.path(i)] = str(e).removeprefix(f"{root / index.path(i)}: ")
    splits.notes[f"{split}_unreadable_images"] = reasons
    setattr(splits, split, index.subset(~bad))
    print0("warning: " + unseen_notes({f"{split}_unreadable_images": reasons})[0])
    return ~bad
