"""benchmarks/gpu_smoke.py in its CPU mode (what CI can run of it): every CPU part passes, the
CUDA parts say so, the JSON holds every figure, and faiss (absent on the GPU machines) is not needed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_smoke_cpu_mode_passes(tmp_path):
    (tmp_path / "faiss.py").write_text("raise ImportError('no faiss on this machine')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--device", "cpu", "--quick", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    rows = {r["part"]: r for r in result["rows"]}
    for part in ("BatchAugment", "train_step fp32", "train_step bf16", "train_step fp16", "compile keeps",
                 "SplitBatchNorm keeps channels_last", "2 gloo rank(s)", "loader: one worker",
                 "training loop, DDP 1 process (gloo), resnet18 32 px, eager",
                 "training loop, DDP 1 process (gloo), resnet18 32 px, compiled"):
        assert any(name.startswith(part) and r["result"] == "ok" for name, r in rows.items()), (part, proc.stdout)
    assert all(r["budget_s"] > 0 and r["seconds"] <= r["budget_s"] + 5 for r in rows.values())
    assert result["deadline_s"] == 540 and "budget" in proc.stdout
    figures = result["figures"]
    assert figures["loader_samples_per_s_per_worker_augment_cpu"] > 0 and figures["workers_needed"] >= 1
    assert figures["recompiles"] == 0  # 20+ steps of the compiled loop (dynamo's graphs; eager backend on the CPU)
    train = figures["training_compiled"]
    assert train["steady_steps"] >= 20 and train["images_per_s"] > 0 and train["compute_s_per_step"] > 0
    if not torch.cuda.is_available():
        assert figures["peak_memory_gb"] == figures["syncs_per_step"] == "skipped: no CUDA"
        assert sum(r["result"] == "skipped: no CUDA" for r in rows.values()) == 4  # the CUDA-only parts
    assert proc.stdout.rstrip().splitlines()[-1].endswith("(deadline 540 s)")
