"""DINO on object-aware multi-crop: student and EMA teacher, centering, and the multi-crop loss
(each teacher global view against every other student view). Small sizes, for a first run:

    python examples/dino_multicrop.py [--data DEMO_OR_SUBSET_FOLDER] [--steps 20]
"""
import argparse
import copy
import itertools
import tempfile

import torch
import torch.nn.functional as F
import torchvision

from ssl_crops import ObjectAwareMultiCrop
from ssl_crops.data import ObjectCropDataset
from ssl_crops.demo import make_demo
from ssl_crops.sources import load_index

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--data", help="a folder with images/ and its boxes (default: a new demo set)")
p.add_argument("--steps", type=int, default=20)
p.add_argument("--batch-size", type=int, default=8)
a = p.parse_args()
root = a.data or make_demo(tempfile.mkdtemp(), num_train=32, num_test=4, min_size=128, max_size=224)
crop = ObjectAwareMultiCrop(num_locals=4, global_size=64, local_size=32, min_region=(64, 32))
data = ObjectCropDataset(f"{root}/images", load_index(f"{root}/images"), crop)
loader = torch.utils.data.DataLoader(data, batch_size=a.batch_size, shuffle=True, drop_last=True)

student = torchvision.models.resnet18(num_classes=256)  # backbone + a 256-prototype head
teacher = copy.deepcopy(student).requires_grad_(False)
center = torch.zeros(256)
opt = torch.optim.AdamW(student.parameters(), lr=1e-4)


def dino_loss(student_out, teacher_out, n_views, n_globals, student_temp=0.1, teacher_temp=0.04):
    s = (student_out / student_temp).log_softmax(-1).chunk(n_views)
    t = F.softmax((teacher_out - center) / teacher_temp, -1).chunk(n_globals)
    pairs = [(-ti * s[j]).sum(-1).mean() for i, ti in enumerate(t) for j in range(n_views) if j != i]
    return sum(pairs) / len(pairs)


batches = (batch for _ in itertools.count() for batch in loader)  # epoch after epoch
for step, (views, _) in zip(range(a.steps), batches):  # views: globals first, each (B, 3, H, W)
    globals_ = torch.cat(views[:crop.num_globals])
    out = torch.cat([student(globals_), student(torch.cat(views[crop.num_globals:]))])
    with torch.no_grad():
        t_out = teacher(globals_)
    loss = dino_loss(out, t_out, crop.num_views, crop.num_globals)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():  # EMA teacher (weights and BatchNorm statistics), then the centre
        for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
            t.copy_(t * 0.996 + s * 0.004) if t.is_floating_point() else t.copy_(s)
        center.mul_(0.9).add_(t_out.mean(0), alpha=0.1)
    print(f"step {step} loss {loss.item():.4f}", flush=True)
