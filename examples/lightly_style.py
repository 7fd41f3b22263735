"""The lightly / solo-learn pattern on object-aware multi-crop: a dataset that gives
``(views, target, file name)`` and a generic training step over the list of views (here a
SimSiam-style loss: every view predicts every global view). Plain torch, no lightly needed:

    python examples/lightly_style.py [--data DEMO_OR_SUBSET_FOLDER] [--steps 20]
"""
import argparse
import tempfile

import torch
import torch.nn.functional as F
import torchvision

from ssl_crops import ObjectAwareMultiCrop, open_image
from ssl_crops.demo import make_demo
from ssl_crops.sources import load_index


class MultiCropDataset(torch.utils.data.Dataset):
    """lightly's ``LightlyDataset(input_dir, transform=DINOTransform())``, with boxes."""

    def __init__(self, folder, transform):
        self.folder, self.index, self.transform = folder, load_index(folder), transform

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        name = self.index.path(i)
        return self.transform(open_image(f"{self.folder}/{name}"), self.index.boxes(i)), 0, name


def training_step(model, predictor, views, n_globals):
    """Any method's step over a list of views; SimSiam's negative cosine here."""
    z = [model(v) for v in views]
    p = [predictor(zi) for zi in z]
    pairs = [(i, j) for i in range(len(views)) for j in range(n_globals) if i != j]
    return sum(-F.cosine_similarity(p[i], z[j].detach(), dim=-1).mean() for i, j in pairs) / len(pairs)


p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--data", help="a folder with images/ and its boxes (default: a new demo set)")
p.add_argument("--steps", type=int, default=20)
a = p.parse_args()
root = a.data or make_demo(tempfile.mkdtemp(), num_train=32, num_test=4, min_size=128, max_size=224)
transform = ObjectAwareMultiCrop(num_locals=2, global_size=64, local_size=32, min_region=(64, 32))
loader = torch.utils.data.DataLoader(MultiCropDataset(f"{root}/images", transform), batch_size=8, shuffle=True)
model = torchvision.models.resnet18(num_classes=128)
predictor = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 128))
opt = torch.optim.SGD([*model.parameters(), *predictor.parameters()], lr=0.05, momentum=0.9)
for step, (views, _, _) in zip(range(a.steps), (b for _ in range(a.steps) for b in loader)):
    loss = training_step(model, predictor, views, transform.num_globals)
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"step {step} loss {loss.item():.4f}", flush=True)
