"""A real two-process torchrun on CPU (gloo) through utils/distributed.py."""

import json
import os
import subprocess
import sys

import torch

from utils import distributed as du

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(args, nproc=2, timeout=300, env=None):
    """Run ``python -m torch.distributed.run --standalone`` from the repo root."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def test_two_process_all_reduce_and_exact_sharding(tmp_path):
    out = tmp_path / "result.json"
    proc = torchrun([os.path.join("tests", "dist_helper_script.py"), str(out), "7"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["backend"] == "gloo"
    assert result["sum"] == 3.0  # ranks 0 and 1 contribute 1 and 2
    assert result["counts"] == [1.0] * 7  # every sample exactly once, no padding
    assert result["gathered"][0]["indices"] == [0, 2, 4, 6] and result["gathered"][1]["indices"] == [1, 3, 5]
    assert result["seeds"] == [7, 8]  # seed + rank
    assert proc.stdout.count("only rank 0 prints this") == 1


def test_single_process_layout_and_sampler():
    layout = du.init_distributed("cpu")
    assert layout["world_size"] == 1 and not layout["distributed"] and layout["device"] == torch.device("cpu")
    assert list(du.ShardSampler(5)) == [0, 1, 2, 3, 4]
    assert list(du.ShardSampler(5, rank=1, world_size=3)) == [1, 4]
    assert du.all_gather_objects("x") == ["x"]
