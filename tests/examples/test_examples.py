"""The examples in examples/ run for a few steps on the demo data."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["dino_multicrop.py", "lightly_style.py"])
def test_example_runs_a_few_steps(script, demo_root):
    assert len((REPO / "examples" / script).read_text().splitlines()) < 60
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO / "examples" / script), "--data", str(demo_root), "--steps", "2"],
                            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    losses = [float(x) for x in re.findall(r"step \d+ loss (\S+)", result.stdout)]
    assert len(losses) == 2 and all(abs(v) < 1e3 for v in losses), result.stdout
