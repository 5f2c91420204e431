"""Shared fixtures: a small synthetic face dataset and helpers to run the stage scripts."""

import json
import os
import subprocess
import sys

import pytest

from tools.make_synthetic_faces import make_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32  # input size of every pipeline test


@pytest.fixture(scope="session")
def faces(tmp_path_factory):
    """7 classes x 8 train / 3 test images at 36 px, plus the FER2013-VAD CSV (both layouts)."""
    out = tmp_path_factory.mktemp("faces") / "faces"
    make_dataset(
        str(out),
        seed=0,
        size=36,
        train_per_class=8,
        test_per_class=3,
        fer2013=True,
        fer_train_per_class=12,
        fer_test_per_class=4,
    )
    return out


def run_script(script, args, cwd=REPO, env=None, timeout=600):
    """Run a stage script as a user would, in a fresh interpreter."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run(
        [sys.executable, os.path.join(REPO, script), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def torchrun(script, args, nproc=2, timeout=600, env=None):
    """``torchrun --standalone --nproc_per_node=N script args`` on CPU."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        os.path.join(REPO, script),
        *map(str, args),
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_log(output_dir):
    with open(os.path.join(output_dir, "log.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def assert_user_error(proc, *fragments):
    """A user mistake: exit code 2, one 'error:' line naming the thing, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def run_inprocess(script, args, capfd):
    """Run ``script`` as ``python script args`` would, but in this interpreter (``runpy``, as ``__main__``;
    for checks that stop before training: no interpreter start-up). Returns a CompletedProcess; the exit
    code is that of ``run_main`` (2 for a user error). ``sys.argv`` and the global random state are left
    as they were."""
    import random
    import runpy

    import numpy as np
    import torch

    capfd.readouterr()
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    argv = sys.argv
    sys.argv = [os.path.join(REPO, script), *map(str, args)]
    code = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess([script, *map(str, args)], code, out, err)


def assert_no_output(output_dir):
    """Nothing a run writes is there: the folder is absent or holds no checkpoint, log, table or JSON."""
    if not os.path.exists(output_dir):
        return
    written = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(output_dir)
        for name in names
        if name.endswith((".pth", ".pt", ".jsonl", ".json", ".csv", ".txt", ".png", ".tmp"))
        or name.startswith("events.out.tfevents")
    ]
    assert not written, written
