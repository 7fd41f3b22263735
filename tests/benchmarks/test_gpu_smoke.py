"""benchmarks/gpu_smoke.py in its CPU mode (what CI can run of it): every CPU part passes, the
CUDA parts say so, and faiss (absent on the GPU machines) is not needed."""
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
    proc = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--device", "cpu", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = proc.stdout.splitlines()
    for part in ("BatchAugment", "train_step fp32", "train_step bf16", "train_step fp16", "compile keeps",
                 "SplitBatchNorm keeps channels_last", "2 gloo ranks"):
        assert any(r.startswith(part) and " ok " in r for r in rows), (part, proc.stdout)
    if not torch.cuda.is_available():
        assert sum("skipped: no CUDA" in r for r in rows) == 4
    assert "0 failed" in rows[-1]
