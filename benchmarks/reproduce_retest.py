"""The registered retest of issue 28: annotation-box object crops against random boxes of the
same sizes, on generated scenes the network learns from (benchmarks/RESULTS.md).

    PYTHONPATH=. python benchmarks/reproduce_retest.py --preset smoke        # plumbing
    PYTHONPATH=. python benchmarks/reproduce_retest.py --preset cpu --processes 2  # 5 seeds, 2 idle cores, ~50 min
    PYTHONPATH=. python benchmarks/reproduce_retest.py --preset gpu          # 5 seeds, one H100, <= 8 min (sized)
    PYTHONPATH=. python benchmarks/reproduce_retest.py --preset cpu --pilot  # validation only, not the result

Arms, same network, schedule, augmentation and budget (data seed = seed):
  (b*) obj_ann      object-object + dilation, original geometry, annotation boxes, ``min_region``
                    below every object (the tight region is the object)
  (g)  random_same  as (b*), each image's own annotation box sizes at uniformly random
                    positions, drawn per epoch and seed (``ObjectCropDataset(random_boxes=True)``,
                    what ``main_moco.py --random-boxes`` trains on)
  (e)  random_init  the untrained network (the floor)
  (a)  scene        MoCo-v2 scene crops (reference, not in the rule)

Precondition, on validation: (g) - (e) >= 10 mAP on the primary probe (mean over seeds) and the
final loss of (b*) and of (g) (mean over seeds) at least 1 below ln(K+1); else the verdict is
"uninformative". Rule, on test: (b*) - (g) paired by seed over >= 5 seeds, mean >= 3 mAP and a
one-sided paired t-test p < 0.05. Every seed's figures and wall time are in the table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ssl_crops.boxes import BoxIndex
from ssl_crops.data import ObjectCropDataset
from ssl_crops.files import atomic_write
from ssl_crops.transforms import MoCoV2Augment, ObjectAwareCrop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import COMMON, git_commit, load_runs, pm, random_encoder, save_run, train_moco  # noqa: E402
from reproduce_probes import evaluate, prepare  # noqa: E402
from reproduce_scenes import CLASS_NAMES, make_scenes  # noqa: E402

# fewer, larger objects (1-3 of 25-42% of the side) than issue 20's 3-6 of 14-26%; 100 epochs at
# batch 64 (1,500 steps, issue 20 had 330), temperature 0.1 (at 0.2 issue 20's loss stayed at ln(K+1)),
# shuffle-BN over 2 sub-batches of 32 (the package's default rule; 8 of 8 in the pilot: RESULTS.md)
DATA = dict(image_size=96, objects_per_scene=[1, 3], object_side=[0.25, 0.42], num_bing_fit=0, view_size=32,
            probe_size=64)
PRESETS = {
    "smoke": dict(DATA, image_size=64, num_train=96, num_val=32, num_test=48, view_size=32, probe_size=48,
                  arch="small", width=8, epochs=2, batch_size=32, moco_k=64, bn_splits=2, seeds=[0, 1], workers=0),
    "cpu": dict(DATA, num_train=1000, num_val=300, num_test=500, arch="small", width=16, epochs=100, batch_size=64,
                moco_k=256, bn_splits=2, seeds=[0, 1, 2, 3, 4], workers=1),
    # the cpu preset's data and network on one H100 (16 CPU cores): 14 loader workers, bf16 (an
    # estimate from CPU timings, not measured on a GPU: benchmarks/RESULTS.md)
    "gpu": dict(DATA, num_train=1000, num_val=300, num_test=500, arch="small", width=16, epochs=100, batch_size=64,
                moco_k=256, bn_splits=2, seeds=[0, 1, 2, 3, 4], workers=14, amp="bf16"),
}
RETEST = dict(COMMON, moco_t=0.1, min_region_frac=0.12)  # 12 px of 96: below every object's side
SETTINGS = {"b_obj_ann": "(b*) obj-obj, annotation boxes, min_region below the objects",
            "g_random_same": "(g) as (b*), random boxes of each image's own sizes (--random-boxes)",
            "e_random_init": "(e) random-init backbone", "a_scene": "(a) scene crops (reference)"}
SHORT = {s: SETTINGS[s].split(" ")[0] for s in SETTINGS}
PRIMARY, MARGIN, ALPHA, MIN_SEEDS, FLOOR_GAP, LOSS_GAP = "knn_object_map", 3.0, 0.05, 5, 10.0, 1.0


# --------------------------------------------------------------------------- the paired t-test
def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below the mean
        return 1.0 - betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return front * (f - 1.0)


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def paired_t(diffs) -> tuple[float, float]:
    """``(t, one-sided p)`` of the paired differences against a mean of 0 (H1: mean > 0)."""
    d = np.asarray(diffs, np.float64)
    sd = d.std(ddof=1)
    if sd == 0:  # every difference equal
        t = math.copysign(math.inf, d.mean()) if d.mean() else 0.0
        return t, 0.0 if t > 0 else 1.0 if t < 0 else 0.5
    t = float(d.mean() / (sd / math.sqrt(len(d))))
    return t, t_sf(t, len(d) - 1)


# --------------------------------------------------------------------------- precondition and rule
def paired(results: dict, a: str, b: str, metric: str, seeds) -> tuple[list, list]:
    """``(seeds, 100 x (a - b) per seed)`` over the seeds where both ran."""
    both = [s for s in seeds if f"{a}/{s}" in results and f"{b}/{s}" in results]
    return both, [100 * (results[f"{a}/{s}"][metric] - results[f"{b}/{s}"][metric]) for s in both]


def precondition(results: dict, seeds, moco_k: int) -> tuple[bool, str]:
    """Does the setup learn? (g) - (e) on validation and the final losses (see the module doc)."""
    used, d = paired(results, "g_random_same", "e_random_init", "val_" + PRIMARY, seeds)
    chance = math.log(moco_k + 1)
    losses = {s: [results[f"{s}/{x}"]["loss"][-1] for x in seeds if f"{s}/{x}" in results]
              for s in ("b_obj_ann", "g_random_same")}
    if not used or not all(losses.values()):
        return False, "not checked: (g), (e) and (b*) must have run"
    gap = float(np.mean(d))
    loss_ok = {s: float(np.mean(v)) <= chance - LOSS_GAP for s, v in losses.items()}
    ok = gap >= FLOOR_GAP and all(loss_ok.values())
    text = (f"val (g) - (e) = {gap:+.1f} mAP over {len(used)} seeds (needs >= {FLOOR_GAP:.0f}); final loss "
            + ", ".join(f"{SHORT[s]} {np.mean(v):.2f}" for s, v in losses.items())
            + f" against ln(K+1) = {chance:.2f} (needs <= {chance - LOSS_GAP:.2f})")
    return ok, f"{'met' if ok else 'not met'}: {text}"


def decide(results: dict, seeds, moco_k: int) -> list[str]:
    """The registered verdict (RESULTS.md, issue 28), one line each: precondition, rule, verdict."""
    ok, pre = precondition(results, seeds, moco_k)
    used, d = paired(results, "b_obj_ann", "g_random_same", PRIMARY, seeds)
    lines = [f"- precondition {pre}"]
    if len(used) < MIN_SEEDS:
        return lines + [f"- verdict: none: {len(used)} paired seeds of (b*) and (g), the rule needs {MIN_SEEDS}"]
    t, p = paired_t(d)
    passed = float(np.mean(d)) >= MARGIN and p < ALPHA
    per_seed = ", ".join(f"{v:+.1f}" for v in d)
    lines.append(f"- rule: (b*) - (g) = {pm(d, '{:+.1f}')} over {len(used)} seeds ({per_seed});"
                 f" paired t = {t:.2f}, one-sided p = {p:.3f}: {'passes' if passed else 'does not pass'} "
                 f"(mean >= {MARGIN:.0f} and p < {ALPHA})")
    if not ok:
        verdict = "uninformative: the precondition is not met (the setup did not learn enough to answer)"
    elif passed:
        verdict = ("annotation-box object crops beat random boxes of the same sizes at this scale "
                   "(objectness of the boxes helps)")
    else:
        verdict = "not shown: annotation-box object crops do not beat random boxes of the same sizes by the rule"
    return lines + [f"- verdict: {verdict}"]


# --------------------------------------------------------------------------- the table
COLUMNS = [("knn_object_map", "kNN object mAP 1.4x, test (primary)", 100), ("val_knn_object_map", "val", 100),
           ("nn_same_class", "20-NN same class", 1), ("nn_colour_near", "20-NN colour-nearer", 1),
           ("knn_object05_map", "kNN 0.5x", 100), ("linear_scene_max_map", "whole-image linear", 100)]


def summarize(results: dict, settings, seeds, moco_k: int) -> str:
    """Markdown: every seed's figures and wall time, mean +- std per arm, the paired
    differences, the precondition and the verdict."""
    head = "| arm | seed | " + " | ".join(c[1] for c in COLUMNS) + " | final loss | wall time |"
    lines, means = [head, "|---" * (len(COLUMNS) + 4) + "|"], []
    for s in settings:
        runs = [(x, results[f"{s}/{x}"]) for x in seeds if f"{s}/{x}" in results]
        for x, r in runs:
            cells = ["-" if r.get(m) is None else f"{f * r[m]:.{1 if f == 100 else 3}f}" for m, _, f in COLUMNS]
            loss = f"{r['loss'][-1]:.2f}" if "loss" in r else "-"
            lines.append(f"| {SHORT[s]} | {x} | " + " | ".join(cells) + f" | {loss} | "
                         f"{(r.get('train_s', 0) + r['eval_s']) / 60:.1f} min |")
        if runs:
            cells = [spread([f * r[m] for _, r in runs if r.get(m) is not None], 1 if f == 100 else 3)
                     for m, _, f in COLUMNS]
            loss = pm([r["loss"][-1] for _, r in runs], "{:.2f}") if "loss" in runs[0][1] else "-"
            means.append(f"| {SETTINGS[s]} | " + " | ".join(cells) + f" | {loss} |")
    lines += ["", "| arm (mean +- std over seeds) | " + " | ".join(c[1] for c in COLUMNS) + " | final loss |",
              "|---" * (len(COLUMNS) + 2) + "|", *means, "", "| paired difference | probe | per seed | mean +- std |",
              "|---|---|---|---|"]
    for a, b, m in (("b_obj_ann", "g_random_same", PRIMARY), ("b_obj_ann", "g_random_same", "val_" + PRIMARY),
                    ("g_random_same", "e_random_init", "val_" + PRIMARY), ("b_obj_ann", "e_random_init", PRIMARY),
                    ("a_scene", "e_random_init", PRIMARY)):
        used, d = paired(results, a, b, m, seeds)
        if used:
            lines.append(f"| {SHORT[a]} - {SHORT[b]} | {m} | {', '.join(f'{v:+.1f}' for v in d)} | "
                         f"{pm(d, '{:+.1f}')} |")
    if "b_obj_ann" in settings and "g_random_same" in settings:
        lines += ["", "Registered precondition and rule (RESULTS.md, issue 28):", *decide(results, seeds, moco_k)]
    return "\n".join(lines)


def spread(values, digits: int) -> str:
    """``mean +- std`` (ddof=1) with ``digits`` decimals."""
    if not values:
        return "-"
    v = np.asarray(values, np.float64)
    return f"{v.mean():.{digits}f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:.{digits}f}"


# --------------------------------------------------------------------------- one seed
def make_crop(setting: str, cfg: dict) -> ObjectAwareCrop:
    """The arm's crop: scene crops for (a), else object-object with ``min_region`` below the objects."""
    augment = MoCoV2Augment(jitter=cfg["jitter"], blur_sigma=cfg["blur_sigma"])
    if setting == "a_scene":
        return ObjectAwareCrop(mode="scene", size=cfg["view_size"], augment=augment)
    return ObjectAwareCrop(mode="object-object", geometry="original", dilation=cfg["dilation"], size=cfg["view_size"],
                           min_region=max(1, round(cfg["min_region_frac"] * cfg["image_size"])), augment=augment)


def prepare_seed(out: Path, cfg: dict, seed: int, splits, log) -> dict:
    """The seed's scenes (made once under ``<out>/data``), indices and decoded probe inputs."""
    t = time.perf_counter()
    data = make_scenes(out / "data" / f"seed{seed}", cfg, seed)
    for split in ("train", "val", "test"):
        data[f"{split}_index"] = BoxIndex.from_coco(data[split], classes=CLASS_NAMES)
    train = data["train_index"]
    sides = np.minimum(*(np.diff(train.flat_boxes.reshape(-1, 2, 2), axis=1)[:, 0] * cfg["image_size"]).T)
    log(f"seed {seed}: {len(train)} train scenes ({train.num_boxes} objects, shorter side {np.min(sides):.0f}-"
        f"{np.max(sides):.0f} px, median {np.median(sides):.0f}; min_region {make_crop('b_obj_ann', cfg).min_region} "
        f"px), {len(data['val_index'])} val, {len(data['test_index'])} test")
    data["eval"] = prepare(data["images"], {s: data[f"{s}_index"] for s in ("train", *splits)}, cfg, 20000)
    data["info"] = {"data_s": time.perf_counter() - t, "min_object_side_px": float(np.min(sides))}
    return data


def run_arm(setting: str, seed: int, cfg: dict, data: dict, device, splits, log) -> dict:
    """Pretrain one arm (or take the untrained network for (e)) and evaluate it on ``splits``."""
    if setting == "e_random_init":
        encoder, rec = random_encoder(seed, cfg).to(device), {}
    else:
        dataset = ObjectCropDataset(data["images"], data["train_index"], make_crop(setting, cfg),
                                    random_boxes=setting == "g_random_same", random_boxes_seed=seed)
        encoder, rec = train_moco(dataset, setting, seed, cfg, device, log)
    counts = data["train_index"].class_counts()
    rec.update(evaluate(encoder, seed, cfg, data["eval"], counts, device, splits), data=data["info"])
    return rec


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--out", default=None, help="data, results.json and table.md (default: runs/retest-<preset>)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the preset's")
    p.add_argument("--pilot", action="store_true",
                   help="validation split only, saved apart (pilot.json), no verdict: checks that the setup learns")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: OMP_NUM_THREADS, else all)")
    p.add_argument("--processes", type=int, default=1,
                   help="runs in this many processes at once (one thread each; logs in <out>/logs/), then the table")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return p


def config(preset: str) -> dict:
    cfg = {**RETEST, **PRESETS[preset]}
    cfg["blur_sigma"] = [round(v * cfg["view_size"] / 224, 4) for v in (0.1, 2.0)]  # MoCo-v2's blur at 224 px
    return json.loads(json.dumps(cfg))  # as saved in results.json


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    cfg, splits = config(a.preset), ("val",) if a.pilot else ("val", "test")
    seeds = a.seeds or cfg["seeds"]
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and (a.threads or "OMP_NUM_THREADS" not in os.environ):
        torch.set_num_threads(a.threads or len(os.sched_getaffinity(0)))
    out = Path(a.out or f"runs/retest-{a.preset}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    path = out / ("pilot.json" if a.pilot else "results.json")
    results = load_runs(path, cfg)
    if a.processes > 1:
        in_processes(a, out, [(seed, s) for seed in seeds for s in a.settings if f"{s}/{seed}" not in results], log)
    for seed in seeds if a.processes == 1 else ():  # else every run is done: the table reads them from --out
        todo = [s for s in a.settings if f"{s}/{seed}" not in results]
        if not todo:
            continue
        data = prepare_seed(out, cfg, seed, splits, log)
        for s in todo:
            log(f"{SETTINGS[s]}, seed {seed}")
            rec = results[f"{s}/{seed}"] = run_arm(s, seed, cfg, data, device, splits, log)
            figures = ", ".join(f"{k} {100 * rec[k]:.1f}" for k in ("val_" + PRIMARY, PRIMARY) if k in rec)
            log(f"{s}/{seed}: {figures}; 20-NN same class {rec['val_nn_same_class']:.3f}, colour-nearer "
                f"{rec['val_nn_colour_near']:.3f} (val)"
                + (f"; final loss {rec['loss'][-1]:.3f}" if "loss" in rec else ""))
            save_run(path, cfg, f"{s}/{seed}", rec)
    results = {**load_runs(path, cfg), **results}
    table = summarize(results, a.settings, seeds, cfg["moco_k"]) if not a.pilot else summarize_pilot(results, cfg)
    header = (f"{'PILOT (validation only, not the result): ' if a.pilot else ''}issue-28 retest, preset {a.preset}, "
              f"commit {git_commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()} "
              f"{torch.get_num_threads()} threads on {device.type}, this process ran "
              f"{(time.perf_counter() - start) / 60:.1f} min (runs it loaded from --out not counted)")
    with atomic_write(out / ("pilot.md" if a.pilot else "table.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    print(header + "\n\n" + table, flush=True)
    return {"config": cfg, "runs": results, "table": table}


def in_processes(a, out: Path, todo, log) -> None:
    """Each ``(seed, setting)`` of ``todo`` in a process of its own, ``a.processes`` at once,
    trained runs first; each saves its run to ``--out`` (``save_run`` locks the file)."""
    (out / "logs").mkdir(exist_ok=True)
    todo = sorted(todo, key=lambda k: k[1] == "e_random_init")  # the floors are quick: last

    def one(key):
        seed, setting = key
        argv = [sys.executable, __file__, "--preset", a.preset, "--out", str(out), "--seeds", str(seed), "--settings",
                setting, "--threads", "1", *(["--pilot"] if a.pilot else []), *(["--device", a.device] if a.device else [])]
        with open(out / "logs" / f"{setting}-{seed}.log", "w") as f:
            code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                  check=False).returncode
        log(f"{setting}/{seed}: {'done' if code == 0 else f'FAILED (exit {code})'} ({f.name})")
        return code

    with ThreadPoolExecutor(a.processes) as pool:
        failed = [k for k, code in zip(todo, pool.map(one, todo)) if code]
    if failed:
        raise RuntimeError(f"{len(failed)} runs failed: {failed}; see {out / 'logs'}")


def summarize_pilot(results: dict, cfg: dict) -> str:
    """The pilot's lines: per run, the validation probe, the loss curve against ln(K+1)."""
    chance = math.log(cfg["moco_k"] + 1)
    lines = [f"ln(K+1) = {chance:.2f}"]
    for key, r in sorted(results.items()):
        curve = " ".join(f"{v:.2f}" for v in r.get("loss", [])[::max(1, len(r.get("loss", [])) // 10)])
        lines.append(f"- {key}: val kNN object mAP {100 * r['val_' + PRIMARY]:.1f}, 20-NN same class "
                     f"{r['val_nn_same_class']:.3f}, colour-nearer {r['val_nn_colour_near']:.3f}"
                     + (f"; loss {curve} (final {r['loss'][-1]:.2f}); {r['train_s'] / 60:.1f} min training"
                        if "loss" in r else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
