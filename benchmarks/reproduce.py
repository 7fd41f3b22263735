"""Object-aware crops against scene crops at small scale, with controls for crop scale and for
box positions: MoCo-v2 pretraining on generated multi-object scenes, probes on frozen features.

    PYTHONPATH=. python benchmarks/reproduce.py --preset smoke      # plumbing, every setting
    PYTHONPATH=. python benchmarks/reproduce.py --preset cpu        # 3 seeds on 2 cores
    PYTHONPATH=. python benchmarks/reproduce.py --preset gpu        # 3 seeds, one H100, <= 8 min (sized)

The design and the decision rule were fixed before the runs (benchmarks/RESULTS.md, issue 20).
Settings, all with the same budget (network, epochs, batch, queue, augmentation, split BN):
  (a)  scene          MoCo-v2 random resized crops of the whole image (scale 0.2-1)
  (a') scene_objscale the same at object scale: scale (0.2 c, c), c such that the median view
                      area matches (b)'s on the train scenes (view_pairs.matched_scene_scale)
  (b)  obj_orig       object-object crops + dilation, "original" geometry, annotation boxes
  (d)  bing           as (b), boxes are BING's top-10 proposals (BING fitted on that seed's
                      separate BING-fit scenes; no annotation box used in pretraining)
  (f)  random_boxes   as (b), boxes of the sizes of BING's top-10 at random positions (drawn
                      once per image)
  (e)  random_init    the same network untrained: the floor

Everything is drawn per seed (scenes, BING fit, random boxes; data seed = seed). Scenes:
``reproduce_scenes.py`` (instances vary within a class). Probes: ``reproduce_probes.py``
(primary: kNN mAP on object crops at ~1.4x), on val and test. Runs are saved one by one to
``<out>/results.json``; a rerun with the same ``--out`` skips finished runs, and processes
may share one ``--out``. The table gives mean +- std over seeds, the paired differences of
the rule per seed, and the rule's verdict.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, conv1x1

from ssl_crops.boxes import BoxIndex, random_boxes_like
from ssl_crops.data import ObjectCropDataset, load_image
from ssl_crops.distributed import DistInfo
from ssl_crops.files import atomic_write
from ssl_crops.moco import MoCo
from ssl_crops.proposals import Bing, ProposalCache, box_iou
from ssl_crops.train import adjust_learning_rate, build_loader, train_step
from ssl_crops.transforms import MoCoV2Augment, ObjectAwareCrop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_probes import (PROBES, MaxPooled, Preloaded, centred_square, evaluate, knn_vote,  # noqa: E402,F401
                              neighbour_shares, prepare, preload_objects, preload_scenes)
from reproduce_scenes import (CLASS_NAMES, CLASSES, SPLITS, TAIL_EXPONENT, clutter, instance_mask,  # noqa: E402,F401
                              instance_texture, make_scene, make_scenes)
from view_pairs import matched_scene_scale  # noqa: E402

# --------------------------------------------------------------------------- presets
PRESETS = {
    # plumbing only: every setting, two seeds, tiny everything
    "smoke": dict(image_size=64, num_train=96, num_val=32, num_test=48, num_bing_fit=40, view_size=32,
                  probe_size=48, arch="small", width=8, epochs=2, batch_size=32, moco_k=64, seeds=(0, 1), workers=0),
    # 2 CPU cores: a small ResNet whose stem keeps the resolution, 32 px views, 30 epochs (60 were
    # worse for scene crops: benchmarks/RESULTS.md)
    "cpu": dict(image_size=96, num_train=1500, num_val=300, num_test=500, num_bing_fit=200, view_size=32,
                probe_size=64, arch="small", width=16, epochs=30, batch_size=128, moco_k=512, seeds=(0, 1, 2),
                workers=1),
    # one H100 (16 CPU cores), sized for <= 8 min for all 3 seeds (an estimate from CPU timings, not
    # measured on a GPU): the cpu scenes with more images, width 32 (better for scene crops in
    # RESULTS.md), 14 loader workers; data generated on the device, the kNN in torch (no faiss)
    "gpu": dict(image_size=96, num_train=2000, num_val=300, num_test=600, num_bing_fit=200, view_size=32,
                probe_size=64, arch="small", width=32, epochs=30, batch_size=128, moco_k=1024, seeds=(0, 1, 2),
                workers=14, amp="bf16"),
}
COMMON = dict(lr=0.06, momentum=0.9, weight_decay=5e-4, moco_dim=128, moco_m=0.99, moco_t=0.2, mlp=True,
              jitter=(0.8, 0.8, 0.8, 0.2), bn_splits=8, dilation=0.2, min_region_frac=224 / 1024, bing_topk=10,
              knn_k=20, amp="off", calibration_pairs=20)
MAX_OBJECT_CROPS = 20000  # object crops per split for the kNN (decoded into memory once)
SETTINGS = {  # name -> (crop mode, geometry, boxes)
    "a_scene": ("scene", None, "none"),
    "a2_scene_objscale": ("scene", None, "none"),
    "b_obj_orig": ("object-object", "original", "annotations"),
    "d_bing": ("object-object", "original", "bing"),
    "f_random_boxes": ("object-object", "original", "random"),
    "e_random_init": (None, None, None),
}
LABELS = {"a_scene": "(a) scene crops", "a2_scene_objscale": "(a') scene crops at object scale",
          "b_obj_orig": "(b) obj-obj + dilation, original", "d_bing": "(d) as (b), BING boxes",
          "f_random_boxes": "(f) as (b), random boxes of BING's sizes", "e_random_init": "(e) random-init backbone"}
SHORT = {s: LABELS[s].split(" ")[0] for s in SETTINGS}
RULE = [("b_obj_orig", "a2_scene_objscale"), ("b_obj_orig", "f_random_boxes"), ("d_bing", "a2_scene_objscale"),
        ("d_bing", "f_random_boxes")]
CONTEXT = [("a_scene", "e_random_init"), ("a2_scene_objscale", "a_scene")]
PRIMARY = "knn_object_map"
MARGIN = 0.03  # the rule's 3 mAP


# --------------------------------------------------------------------------- network
class SmallResNet(nn.Module):
    """A narrow ResNet for small images: a 3x3 stride-1 stem (no 4x downsampling at once),
    four stages of torchvision ``BasicBlock`` (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2),
    global average pooling and ``fc``; takes ``num_classes`` like torchvision's models."""

    def __init__(self, num_classes: int = 1000, width: int = 16, blocks=(1, 1, 1, 1)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout, stride = width * 2 ** i, 1 if i == 0 else 2
            down = None if stride == 1 and cin == cout else nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
            layers += [BasicBlock(cin, cout, stride, down)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def encoder_factory(cfg: dict):
    if cfg["arch"] == "small":
        return lambda num_classes: SmallResNet(num_classes, cfg["width"])
    return getattr(torchvision.models, cfg["arch"])


# --------------------------------------------------------------------------- data of one seed
def without_boxes(index: BoxIndex) -> BoxIndex:
    """The same images and image labels, no boxes (for proposals instead of annotations)."""
    n = len(index)
    labels = [index.labels(i) for i in range(n)]
    return BoxIndex(ids=[index.image_id(i) for i in range(n)], files=[index.path(i) for i in range(n)],
                    classes=index.classes, label_offsets=np.concatenate([[0], np.cumsum([len(x) for x in labels])]),
                    label_values=np.concatenate(labels) if n else np.zeros(0), box_offsets=np.zeros(n + 1),
                    boxes=np.zeros((0, 4)), box_labels=np.zeros(0))


def box_sources(data: dict, topk: int, seed: int) -> dict:
    """BING (fitted on the seed's BING-fit scenes) top-``topk`` proposals of every train image,
    and random boxes of the same sizes placed uniformly (drawn once per image): two proposal
    caches, BING's precision@10 on the train scenes and the seconds taken."""
    train = data["train_index"]
    fit = BoxIndex.from_coco(data["bing_fit"], classes=train.classes)
    t = time.perf_counter()
    bing = Bing.fit_index(fit, data["images"], range(len(fit)), seed=seed)
    rng = np.random.default_rng(seed)
    found, placed, hits = [], [], []
    for i in range(len(train)):
        img = np.asarray(load_image(data["images"] / train.path(i)))
        h, w = img.shape[:2]
        boxes, scores = bing.propose(img, topk, return_scores=True)
        scale = np.array([w, h, w, h], np.float32)
        rand = random_boxes_like(np.clip(boxes / scale, 0, 1), rng) * scale
        found.append((train.image_id(i), boxes, scores, (w, h)))
        placed.append((train.image_id(i), rand.astype(np.float32), scores, (w, h)))
        gt = train.boxes(i) * scale
        hits.append(box_iou(boxes[:10], gt).max(1) >= 0.5 if len(gt) else np.zeros(len(boxes[:10]), bool))
    return {"bing": ProposalCache.from_records(found, {"top_k": topk}),
            "random": ProposalCache.from_records(placed, {"top_k": topk}),
            "bing_precision_at_10": float(np.concatenate(hits).mean()), "boxes_s": time.perf_counter() - t}


def prepare_seed(out: Path, cfg: dict, seed: int, settings, log) -> dict:
    """Scenes, indices, box sources, the (a') scale and the decoded probe inputs of one seed."""
    t = time.perf_counter()
    data = make_scenes(out / "data" / f"seed{seed}", cfg, seed)
    for split in ("train", "val", "test"):
        data[f"{split}_index"] = BoxIndex.from_coco(data[split], classes=CLASS_NAMES)
    data["info"] = {"scenes_s": time.perf_counter() - t}
    train = data["train_index"]
    log(f"seed {seed} scenes: {len(train)} train ({train.num_boxes} objects), {len(data['val_index'])} val, "
        f"{len(data['test_index'])} test; images per class {train.class_counts().tolist()}")
    if {"d_bing", "f_random_boxes"} & set(settings):
        data.update(box_sources(data, cfg["bing_topk"], seed))
        data["info"].update(bing_precision_at_10=data["bing_precision_at_10"], boxes_s=data["boxes_s"])
        log(f"seed {seed}: BING fitted on {cfg['num_bing_fit']} separate scenes, top-{cfg['bing_topk']} proposals "
            f"and random boxes of their sizes for the train scenes ({data['boxes_s']:.0f} s); BING precision@10 on "
            f"train {data['bing_precision_at_10']:.1%}")
    if "a2_scene_objscale" in settings:
        size = cfg["image_size"]
        b = make_crop("b_obj_orig", cfg)
        boxes = [train.boxes(i) for i in range(len(train))]
        data["scale"] = matched_scene_scale(b, np.full((len(train), 2), size), boxes, cfg["calibration_pairs"], seed)
        data["info"]["a2_scale"] = list(data["scale"])
        log(f"seed {seed}: (a') scale range {data['scale'][0]:.3f}-{data['scale'][1]:.3f} (median view area of (b))")
    data["eval"] = prepare(data["images"], {s: data[f"{s}_index"] for s in ("train", "val", "test")}, cfg,
                           MAX_OBJECT_CROPS)
    log(f"seed {seed}: probe inputs decoded ({len(data['eval']['train_objects'])} train, "
        f"{len(data['eval']['test_objects'])} test object crops; {time.perf_counter() - t:.0f} s for the seed's data)")
    return data


# --------------------------------------------------------------------------- pretraining
def make_crop(setting: str, cfg: dict, scale=None) -> ObjectAwareCrop:
    """The setting's crop; ``scale`` replaces the scene views' area range (for (a'))."""
    mode, geometry, _ = SETTINGS[setting]
    kw = dict(mode=mode, size=cfg["view_size"],
              augment=MoCoV2Augment(jitter=cfg["jitter"], blur_sigma=cfg["blur_sigma"]))
    if mode != "scene":
        kw.update(geometry=geometry, dilation=cfg["dilation"],
                  min_region=max(1, round(cfg["min_region_frac"] * cfg["image_size"])))
    crop = ObjectAwareCrop(**kw)
    if scale is not None:
        crop.scale = tuple(float(v) for v in scale)
    return crop


def pretrain(setting: str, seed: int, cfg: dict, data: dict, device, log=print) -> tuple[nn.Module, dict]:
    """MoCo-v2 on the train scenes with the crops of ``setting``; returns the query encoder
    (``fc`` replaced by identity) and ``{"loss": [per-epoch mean], "train_s"}``."""
    boxes = SETTINGS[setting][2]
    proposals = {"bing": data.get("bing"), "random": data.get("random")}.get(boxes)
    index = data["train_index"] if proposals is None else without_boxes(data["train_index"])
    crop = make_crop(setting, cfg, data["scale"] if setting == "a2_scene_objscale" else None)
    dataset = ObjectCropDataset(data["images"], index, crop, proposals=proposals, proposal_topk=cfg["bing_topk"])
    return train_moco(dataset, setting, seed, cfg, device, log)


def train_moco(dataset, name: str, seed: int, cfg: dict, device, log=print) -> tuple[nn.Module, dict]:
    """MoCo-v2 on ``dataset`` (its items seeded per ``(seed, epoch, item)``); returns the query
    encoder (``fc`` replaced by identity) and ``{"loss": [per-epoch mean], "train_s"}``."""
    torch.manual_seed(seed), np.random.seed(seed)
    args = Namespace(seed=seed, lr=cfg["lr"], cos=True, epochs=cfg["epochs"], schedule=[])
    loader = build_loader(dataset, args, DistInfo(device=device), cfg["batch_size"], cfg["workers"])
    model = MoCo(encoder_factory(cfg), cfg["moco_dim"], cfg["moco_k"], cfg["moco_m"], cfg["moco_t"], cfg["mlp"],
                 bn_splits=cfg["bn_splits"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16")
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["amp"]]
    losses, t = [], time.perf_counter()
    model.train()
    for epoch in range(cfg["epochs"]):
        loader.sampler.set_epoch(epoch)
        adjust_learning_rate(optimizer, epoch, args)
        total = torch.zeros((), device=device)
        for (im_q, im_k), *_ in loader:  # (views, index, tallies of the sample)
            loss, _ = train_step(model, im_q, im_k, optimizer, scaler, amp)
            total += loss
        losses.append(total.item() / len(loader))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"{name} seed {seed}: loss {losses[-1]} in epoch {epoch}")
        log(f"  {name} seed {seed} epoch {epoch + 1}/{cfg['epochs']} loss {losses[-1]:.3f} "
            f"({time.perf_counter() - t:.0f} s)")
    encoder = model.encoder_q
    encoder.fc = nn.Identity()
    return encoder, {"loss": losses, "train_s": time.perf_counter() - t}


def random_encoder(seed: int, cfg: dict) -> nn.Module:
    torch.manual_seed(seed)
    encoder = encoder_factory(cfg)(num_classes=cfg["moco_dim"])
    encoder.fc = nn.Identity()
    return encoder


# --------------------------------------------------------------------------- table and rule
METRICS = [("knn_object_map", "kNN object mAP, 1.4x (primary)"), ("knn_object_map_head", "head"),
           ("knn_object_map_medium", "medium"), ("knn_object_map_tail", "tail"),
           ("val_knn_object_map", "val: kNN 1.4x"), ("knn_object05_map", "kNN object mAP, 0.5x"),
           ("linear_scene_max_map", "whole-image linear mAP, max-pooled")]


def paired(results: dict, a: str, b: str, metric: str, seeds) -> tuple[list, list]:
    """``(seeds, 100 x (a - b) per seed)`` over the seeds where both ran."""
    both = [s for s in seeds if f"{a}/{s}" in results and f"{b}/{s}" in results]
    return both, [100 * (results[f"{a}/{s}"][metric] - results[f"{b}/{s}"][metric]) for s in both]


def beats(diffs) -> bool:
    """The rule for one comparison: >= 3 seeds, mean >= 3 mAP and mean > 2 x std (ddof=1)."""
    if len(diffs) < 3:
        return False
    d = np.asarray(diffs, np.float64)
    return bool(d.mean() >= 100 * MARGIN and d.mean() > 2 * d.std(ddof=1))


def decide(results: dict, seeds) -> list[str]:
    """The pre-registered verdict, one line per object setting and one overall."""
    lines, helps = [], []
    for x in ("b_obj_orig", "d_bing"):
        verdicts = []
        for y in ("a2_scene_objscale", "f_random_boxes"):
            used, d = paired(results, x, y, PRIMARY, seeds)
            if len(used) < 3:
                verdicts.append(f"{SHORT[x]} - {SHORT[y]}: {len(used)} paired seeds, the rule needs 3")
                continue
            word = "beats" if beats(d) else "does not beat"
            verdicts.append(f"{SHORT[x]} - {SHORT[y]} = {pm(d, '{:+.1f}')}: {word}")
        passed = all(beats(paired(results, x, y, PRIMARY, seeds)[1]) for y in ("a2_scene_objscale", "f_random_boxes"))
        helps.append(passed)
        lines.append(f"- {SHORT[x]}: " + "; ".join(verdicts) + f" -> {'passes' if passed else 'does not pass'}")
    complete = all(len(paired(results, x, y, PRIMARY, seeds)[0]) >= 3 for x, y in RULE)
    if any(helps):
        verdict = "object crops help at this scale"
    elif complete:
        verdict = ("object crops are not shown to help at this scale (neither (b) nor (d) beats both controls by "
                   ">= 3 mAP, mean > 2 x std)")
    else:
        verdict = "none: the rule needs 3 paired seeds of every comparison"
    return lines + [f"- verdict: {verdict}"]


def summarize(results: dict, settings, seeds) -> str:
    """Markdown: mean +- std over seeds (percent), paired differences per seed, the verdict."""
    lines = ["| setting | " + " | ".join(m[1] for m in METRICS) + " | final loss | wall time / run |",
             "|---" * (len(METRICS) + 3) + "|"]
    for s in settings:
        runs = [results[f"{s}/{seed}"] for seed in seeds if f"{s}/{seed}" in results]
        if not runs:
            continue
        cells = [pm([100 * r[m] for r in runs if r.get(m) is not None]) for m, _ in METRICS]
        loss = pm([r["loss"][-1] for r in runs], "{:.2f}") if "loss" in runs[0] else "-"
        wall = pm([(r.get("train_s", 0) + r["eval_s"]) / 60 for r in runs], "{:.1f}") + " min"
        lines.append(f"| {LABELS[s]} | " + " | ".join(cells) + f" | {loss} | {wall} |")
    diffs = []
    for a, b in RULE + CONTEXT:
        if a not in settings or b not in settings:
            continue
        for m in ("knn_object_map", "knn_object05_map", "linear_scene_max_map"):
            used, d = paired(results, a, b, m, seeds)
            if used:
                per_seed = ", ".join(f"{v:+.1f}" for v in d)
                diffs.append(f"| {SHORT[a]} - {SHORT[b]} | {m} | {per_seed} | {pm(d, '{:+.1f}')} |")
    if diffs:
        lines += ["", "| paired difference | probe | per seed | mean +- std |", "|---|---|---|---|", *diffs]
    if all(s in settings for s in ("a2_scene_objscale", "b_obj_orig", "d_bing", "f_random_boxes")):
        lines += ["", "Decision rule (RESULTS.md, fixed before the runs), primary probe:", *decide(results, seeds)]
    return "\n".join(lines)


def pm(values, fmt="{:.1f}") -> str:
    if not values:
        return "-"
    v = np.asarray(values, np.float64)
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{fmt.format(v.mean())} +- {std:.1f}"


# --------------------------------------------------------------------------- main
def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_runs(path, cfg: dict) -> dict:
    """Finished runs in ``path`` made with the same configuration (else none)."""
    saved = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    return saved.get("runs", {}) if saved.get("config") == cfg else {}


def save_run(path, cfg: dict, key: str, rec: dict) -> None:
    """Add one run to ``path``: re-read and rewritten under an exclusive lock (``<path>.lock``),
    so processes sharing ``--out`` keep each other's runs."""
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = {**load_runs(path, cfg), key: rec}
        with atomic_write(path, "w") as f:
            json.dump({"config": cfg, "runs": runs}, f, indent=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--out", default=None, help="data, results.json and table.md (default: runs/reproduce-<preset>)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the preset's")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: OMP_NUM_THREADS, else all of the process's cores; "
                        "use 1 on a shared machine: oversubscribed threads made epochs 3.4x slower)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return p


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    cfg = {**COMMON, **PRESETS[a.preset]}
    if a.epochs is not None:
        cfg["epochs"] = a.epochs
    # MoCo-v2's blur (sigma 0.1-2 px) is meant for 224 px views: scaled with the view size like
    # min_region, or it wipes out the textures that tell the classes apart at small sizes
    cfg["blur_sigma"] = [round(v * cfg["view_size"] / 224, 4) for v in (0.1, 2.0)]
    cfg = json.loads(json.dumps(cfg))  # as saved in results.json
    seeds = a.seeds or cfg["seeds"]
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and (a.threads or "OMP_NUM_THREADS" not in os.environ):
        torch.set_num_threads(a.threads or len(os.sched_getaffinity(0)))  # shared machine: --threads 1
    out = Path(a.out or f"runs/reproduce-{a.preset}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    results_path = out / "results.json"
    results = load_runs(results_path, cfg)
    for seed in seeds:
        todo = [s for s in a.settings if f"{s}/{seed}" not in results]
        if not todo:
            continue
        data = prepare_seed(out, cfg, seed, todo, log)
        counts = data["train_index"].class_counts()
        for s in todo:
            key = f"{s}/{seed}"
            log(f"{LABELS[s]}, seed {seed}")
            if s == "e_random_init":
                encoder, rec = random_encoder(seed, cfg).to(device), {}
            else:
                encoder, rec = pretrain(s, seed, cfg, data, device, log)
            rec.update(evaluate(encoder, seed, cfg, data["eval"], counts, device), data=data["info"])
            results[key] = rec
            log(f"{key}: kNN object mAP 1.4x {100 * rec['knn_object_map']:.1f} (val "
                f"{100 * rec['val_knn_object_map']:.1f}), 0.5x {100 * rec['knn_object05_map']:.1f}, whole-image "
                f"linear {100 * rec['linear_scene_max_map']:.1f}")
            save_run(results_path, cfg, key, rec)
        del data
    results = {**load_runs(results_path, cfg), **results}  # with runs of processes sharing --out
    table = summarize(results, a.settings, seeds)
    total = time.perf_counter() - start
    header = (f"preset {a.preset}, commit {git_commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{platform.machine()} {torch.get_num_threads()} threads on {device.type}, "
              f"this process ran {total / 60:.1f} min (runs it loaded from --out not counted)")
    with atomic_write(out / "table.md", "w") as f:
        f.write(header + "\n\n" + table + "\n")
    print(header + "\n\n" + table, flush=True)
    return {"config": cfg, "runs": results, "table": table, "wall_s": total}


if __name__ == "__main__":
    main()
