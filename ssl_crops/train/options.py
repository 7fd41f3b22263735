"""``main_moco.py``'s command line: the original MoCo flags, the object-crop flags and the extras,
and ``--demo``'s defaults. :func:`parse_args` returns the settings as a frozen :class:`Config`."""
import argparse
import os
from pathlib import Path

import torchvision.models as models

from ..config import AMP_DTYPES, Config
from .. import slurm
from ..formats import SUBSET_FILES
from ..run import summary_writer
from ..sources import add_annotation_args
from ..transforms.geometry import GEOMETRIES
from ..transforms.crop import MODES as CROP_MODES

__all__ = ["ARCHS", "CROP_MODES", "DEMO_DEFAULTS", "KEEP_CHECKPOINTS", "build_parser", "default_workers", "parse_args",
           "process_cpus"]

ARCHS = sorted(n for n in models.list_models(module=models) if n.startswith(("resnet", "resnext", "wide_resnet")))


KEEP_CHECKPOINTS = -1  # numbered checkpoints kept by default: all (one every --save-freq epochs, and the last)


# --demo: a small ResNet on the generated data, about two minutes on two CPU cores. The original
# method's epoch is one item per box (~4.6 per demo image): 7 epochs are 154 steps, as many as
# 30 per-image epochs. Its 224 px minimum region is ~22% of an OpenImages photo's side; on the
# 256-448 px demo scenes with 64 px views it is 64 px (224 px would make most object crops scenes).
# Temperature 0.1: at MoCo v2's 0.2 the keys of the random-init network stay nearly parallel (mean
# cosine 0.99 after 154 steps, the loss at ln(K+1)) and pretraining learns nothing in so few steps.
DEMO_DEFAULTS = dict(arch="resnet18", epochs=7, batch_size=32, lr=0.03, moco_k=128, moco_m=0.99, moco_t=0.1,
                     image_size=64, min_region=64, workers=1, mlp=True, aug_plus=True, cos=True, bing_crops=True,
                     save_name="demo", log_freq=1, save_freq=10, knn_every=10, seed=0,
                     resume="auto")  # running the Quick start again continues (or just reloads) the demo run


def process_cpus(launcher="single", local_processes=1):
    """The CPUs this process may count on: its affinity, shared with the node's other processes
    when they all see the same CPUs (torchrun, mp.spawn, an srun task that is not bound), its own
    under an srun that binds each task to its share (the affinity then smaller than the machine)
    or gives it ``--cpus-per-task``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    task = slurm.cpus_of_task() if launcher == "srun" else None
    if task:  # srun --cpus-per-task
        return max(1, min(cpus, task))
    own = launcher == "srun" and cpus < (os.cpu_count() or cpus)
    return max(1, cpus if own else cpus // max(1, local_processes))


def default_workers(launcher="single", local_processes=1):
    """``-j``'s default, per process: :func:`process_cpus` less one for the process itself (at
    least 1, at most 32)."""
    return max(1, min(32, process_cpus(launcher, local_processes) - 1))


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except ``None``: a default computed at start-up, which the help says."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser():
    """The original MoCo flags (unchanged meaning), the object-crop flags and the extras."""
    p = argparse.ArgumentParser(description="MoCo v2 pretraining with object-aware crops", formatter_class=_DefaultsHelp)
    p.add_argument("data", nargs="?", metavar="DIR",
                   help="image folder; annotation dicts are looked for beside it (or --labels/--boxes/--coco)")
    g = p.add_argument_group("MoCo (original flags)")
    g.add_argument("-a", "--arch", default="resnet50", choices=ARCHS, metavar="ARCH",
                   help="torchvision ResNet: " + ", ".join(ARCHS))
    g.add_argument("-j", "--workers", type=int, default=None,
                   help="data-loading workers per node, shared by its processes (default: per process, the CPUs "
                        f"it may use less one, {default_workers()} here; an srun task's own CPUs are not divided again)")
    g.add_argument("--epochs", type=int, default=200)
    g.add_argument("--start-epoch", type=int, default=0, help="first epoch (overridden by --resume)")
    g.add_argument("-b", "--batch-size", type=int, default=256,
                   help="total batch size over all processes (torchrun, srun, one process); per node with the "
                        "original --multiprocessing-distributed / --world-size flags, as the official code")
    g.add_argument("--lr", "--learning-rate", type=float, default=0.03, dest="lr")
    g.add_argument("--schedule", type=int, nargs="*", default=[120, 160], help="lr x0.1 at these epochs (without --cos)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--wd", "--weight-decay", type=float, default=1e-4, dest="weight_decay")
    g.add_argument("-p", "--print-freq", "--log-freq", type=int, default=10, dest="log_freq",
                   help="log every N steps")
    g.add_argument("--resume", default="", help="'auto' (newest readable checkpoint of this run; implied by a "
                                                 "torchrun restart) or a path")
    g.add_argument("--world-size", type=int, default=-1, help="number of nodes (legacy launch)")
    g.add_argument("--rank", type=int, default=-1,
                   help="node rank (legacy launch; under srun default SLURM_NODEID)")
    g.add_argument("--dist-url", default=None,
                   help="rendezvous URL (legacy launch; default: a free port on one node, tcp://<first node of the "
                        "srun step>:<port from the job id> under srun)")
    g.add_argument("--dist-backend", default=None, choices=["nccl", "gloo"], help="default: nccl on GPU, gloo on CPU")
    g.add_argument("--dist-timeout", type=float, default=30.0,
                   help="minutes a collective (or the rendezvous) may wait for the other processes (not the wait "
                        "for rank 0 fitting BING or caching proposals)")
    g.add_argument("--seed", type=int, default=None, help="default: random, recorded in the checkpoint")
    g.add_argument("--gpu", type=int, default=None, help="GPU of a single-process run")
    g.add_argument("--multiprocessing-distributed", action="store_true",
                   help="one process per GPU on each of --world-size nodes (mp.spawn)")
    g.add_argument("--moco-dim", type=int, default=128)
    g.add_argument("--moco-k", type=int, default=65536, help="queue size (a multiple of the batch size)")
    g.add_argument("--moco-m", type=float, default=0.999)
    g.add_argument("--moco-t", type=float, default=0.07)
    g.add_argument("--mlp", action="store_true", help="MLP projection head (MoCo v2)")
    g.add_argument("--aug-plus", action="store_true", help="MoCo v2 augmentation")
    g.add_argument("--cos", action="store_true", help="cosine learning-rate schedule")
    g.add_argument("--bn-splits", type=int, default=None,
                   help="BatchNorm over N sub-batches with the keys shuffled across them (shuffle-BN in one "
                        "process); default: 8 with one process when the batch splits into sub-batches of at least 32 (fewer "
                        "otherwise, 1 below a batch of 64), 1 with several processes")
    g = p.add_argument_group("object-aware crops")
    g.add_argument("--save_name", "--save-name", default="moco", help="run name: <output-dir>/<save_name>/")
    g.add_argument("--bing_crops", "--bing-crops", action="store_true",
                   help="the original method: object-object crops of the original geometry, one item per box "
                        "per epoch (with --sampling image, BING proposals for images without boxes)")
    g.add_argument("--crop-mode", choices=CROP_MODES, default=None,
                   help="default: object-object with --bing_crops, else scene")
    g.add_argument("--crop-geometry", choices=GEOMETRIES, default="original",
                   help="object regions: 'original' (the original code's, clipped to the image) or 'relative' "
                        "(dilation x the box size, grown about the centre to --min-region)")
    g.add_argument("--dilation", type=float, default=0.2, help="context dilation of the object regions")
    g.add_argument("--min-region", type=int, default=224,
                   help="smallest object region side in pixels of the input image: the original's 224 suits "
                        "photos of about 1024 px (OpenImages); scale it with your resolution (e.g. 140 for 640 px)")
    g.add_argument("--min-scale", type=float, default=0.2,
                   help="smallest scale of the RandomResizedCrop of the context (or scene) view")
    g.add_argument("--rescale_parameter", "--rescale-parameter", type=float, default=0.0,
                   help="smallest scale of the RandomResizedCrop of the tight object view")
    g.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=False,
                   help="both object views contain the box centre (default: placed uniformly, as the original)")
    g.add_argument("--sampling", choices=["image", "box"], default=None,
                   help="one item per image or per box (default: box for object crops, the original's epoch, "
                        "unless no image has boxes; image for scene crops)")
    g.add_argument("--proposals", default=None,
                   help="BING model, OpenCV BING model folder or proposal cache (.npz) for images without boxes "
                        "under --sampling image (default: fit BING on the annotated images, saved as "
                        "<run>/bing.npz)")
    g.add_argument("--bing-topk", type=int, default=10, help="proposals used per image without boxes")
    g.add_argument("--random-boxes", action="store_true",
                   help="the random-box control: each image's boxes (annotations and proposals alike) replaced by boxes "
                        "of the same sizes at uniformly random positions in the image, drawn per epoch from --seed")
    g.add_argument("--image-size", type=int, default=224)
    add_annotation_args(g)
    g.add_argument("--bad-image", choices=["skip", "error"], default="skip",
                   help="an unreadable image (missing, truncated, empty, not an image, decompression bomb): skip it "
                        "(counted per epoch, named once in <run>/bad_images.txt) or stop with an error")
    g = p.add_argument_group("speed, output, monitoring")
    g.add_argument("--amp", choices=list(AMP_DTYPES), default="off", help="mixed precision (fp16 uses a GradScaler)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on with CUDA)")
    g.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic CUDA kernels, no cuDNN autotuning: a resume repeats an uninterrupted run "
                        "bit for bit on the same GPUs and software (slower; the CPU is always so)")
    g.add_argument("--augment-on", choices=["cpu", "device"], default=None,
                   help="MoCo augmentation in the loader workers (cpu) or batched on the training device "
                        "(device: workers return uint8 crops); default: device with CUDA, else cpu")
    g.add_argument("--output-dir", default="checkpoints")
    g.add_argument("--allow-new-data", action="store_true",
                   help="resume on data other than the checkpoint's (its image count, box count and image ids); "
                        "without it that is an error")
    g.add_argument("--save-freq", type=int, default=10, help="keep checkpoint_<epoch>.pth every N epochs")
    g.add_argument("--keep-checkpoints", type=int, default=KEEP_CHECKPOINTS, metavar="N",
                   help="numbered checkpoints kept (the newest N; 0: none, -1: all); checkpoint_last and _prev "
                        "are always kept")
    g.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also log loss, lr, acc1, images/s, kNN mAP and bad images to TensorBoard in DIR "
                        "(pip install 'ssl-crops[tb]')")
    g.add_argument("--knn-every", type=int, default=0, help="kNN evaluation every N epochs (0: never)")
    add_annotation_args(g, prefix="test-", kinds=("labels", "coco"), what="test annotations for kNN")
    g.add_argument("--test-images", default=None,
                   help="test image folder for kNN (default: DIR; for LVIS the COCO folder holding train2017/val2017)")
    g.add_argument("--demo", action="store_true",
                   help="pretrain a small ResNet on generated data (made in DIR, default ./demo_data, if absent)")
    return p


def parse_args(argv=None):
    """Parse the command line; ``--demo`` changes the defaults (explicit flags still win)
    and makes DIR the demo data's folder (generated by ``train_worker`` when absent)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        parser.set_defaults(**DEMO_DEFAULTS)
        args = parser.parse_args(argv)
        args.data = str(Path(args.data or "demo_data") / SUBSET_FILES["images"])  # before freezing
    elif args.data is None:
        parser.error("the image folder DIR is required (or use --demo)")
    if args.tensorboard:
        try:
            summary_writer()
        except ImportError as e:
            parser.error(str(e))
    return Config.of(args)
