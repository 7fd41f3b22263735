"""Shared fixtures: a small demo dataset generated once per test session; no test may leave
child processes behind."""
import gc
import multiprocessing

import pytest
import torch
import torchvision

from ssl_crops.checkpoint import to_moco_layout
from ssl_crops.demo import make_demo
from ssl_crops.moco import MoCo

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo dataset (24 train, 8 test images of 128-224 px); treat it as read-only."""
    return make_demo(tmp_path_factory.mktemp("demo"), num_train=24, num_test=8, seed=0,
                     min_size=128, max_size=224)


@pytest.fixture(autouse=True)
def no_leftover_processes(request):
    """Fail a test that leaves child processes alive (e.g. DataLoader workers of a loader that was
    not shut down): they ignore SIGTERM, so they would hang the interpreter's exit."""
    yield
    gc.collect()
    left = [p for p in multiprocessing.active_children() if (p.join(2) or p.is_alive())]
    for p in left:
        p.kill()
        p.join()
    assert not left, f"{request.node.nodeid} left {len(left)} child process(es) running: {left}"


@pytest.fixture
def one_thread():
    """One torch thread for tests of many tiny ops, where more threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


BAD_KINDS = {  # file name -> what it is; the first four cannot be decoded, the last three are valid images
    "missing.jpg": "listed but absent", "truncated.jpg": "a JPEG cut in half", "empty.jpg": "zero bytes",
    "huge.jpg": "a JPEG header claiming 20000x20000 px",
    "png.jpg": "a PNG named .jpg", "cmyk.jpg": "a CMYK JPEG", "tiny.jpg": "1x1 px",
}
UNREADABLE = ("missing.jpg", "truncated.jpg", "empty.jpg", "huge.jpg")


def _jpeg_claiming(width, height, data):
    """``data`` (a baseline JPEG) with its SOF0 frame header rewritten to ``width`` x ``height``."""
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9:]


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory):
    """A COCO-indexed folder: 37 good 40 px JPEGs with the seven kinds of ``BAD_KINDS`` placed
    among them (never two side by side), 44 images in all; ``.images``, ``.coco``, ``.unreadable``
    and ``.valid`` (the odd but decodable kinds)."""
    import io
    import json
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("bad_images")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    good = []
    for n in range(37):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"g{n:02d}.jpg")
        good.append(f"g{n:02d}.jpg")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    (images / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (images / "empty.jpg").write_bytes(b"")
    (images / "huge.jpg").write_bytes(_jpeg_claiming(20000, 20000, jpeg))
    Image.new("RGB", (30, 20), (0, 200, 0)).save(images / "png.jpg", "PNG")
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(images / "cmyk.jpg", "JPEG")
    Image.new("RGB", (1, 1), (200, 0, 0)).save(images / "tiny.jpg")
    names = list(good)
    for k, bad in enumerate(BAD_KINDS):
        names.insert(5 * k + 2, bad)
    sizes = {"huge.jpg": (20000, 20000), "tiny.jpg": (1, 1), "png.jpg": (30, 20), "cmyk.jpg": (30, 20)}
    coco = {"categories": [{"id": 1, "name": "thing"}], "images": [], "annotations": []}
    for i, name in enumerate(names):
        w, h = sizes.get(name, (40, 40))
        coco["images"].append({"id": i, "file_name": name, "width": w, "height": h})
        coco["annotations"].append({"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, w / 2, h / 2]})
    (root / "coco.json").write_text(json.dumps(coco))
    return SimpleNamespace(images=images, coco=root / "coco.json", unreadable=UNREADABLE,
                           valid=tuple(k for k in BAD_KINDS if k not in UNREADABLE))


@pytest.fixture
def moco_checkpoint_at():
    """Writes a resnet18 MoCo checkpoint (original key layout) to a path: ``(model, state)``."""
    def write(path, mlp=True, epoch=3):
        torch.manual_seed(0)
        model = MoCo(torchvision.models.resnet18, dim=16, K=32, mlp=mlp)
        state = {"epoch": epoch, "arch": "resnet18", "state_dict": to_moco_layout(model.state_dict()), "step": 12}
        torch.save(state, path)
        return model, state
    return write
