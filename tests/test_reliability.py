"""Runs that are killed, diverge or are fed hostile files: nothing lost, nothing executed."""
import os
import pickle
import signal
import subprocess
import sys
import time

from conftest import REPO, SIZE, assert_user_error, read_log, run_script

TIMING = ("epoch_time", "train_images_per_s")


def baseline_args(faces, out, epochs, *extra):
    return [os.path.join(REPO, "main_percept.py"), "--data_path", faces / "train", "--eval_data_path", faces / "test",
            "--pretrained", "none", "--concept_target", "none", "--epochs", epochs, "--output_dir", out,
            "--norm_cache", out.parent / "cache", "--input_size", SIZE, "--batch_size", 8, "--device", "cpu",
            "--num_workers", 0, *extra]


def strip(log):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in log]


def test_sigkill_then_resume_auto_matches_uninterrupted_run(faces, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": REPO}
    straight = tmp_path / "straight"
    proc = run_script(baseline_args(faces, straight, 4)[0], baseline_args(faces, straight, 4)[1:])
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    cmd = [sys.executable, *map(str, baseline_args(faces, killed, 4, "--resume", "auto"))]
    victim = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "log.jsonl").is_file():
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere inside epoch 1 (or its save)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    done_before = len(read_log(killed))
    assert 1 <= done_before < 4
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stdout
    assert strip(read_log(killed)) == strip(read_log(straight))
    assert not [f for f in os.listdir(killed) if f.endswith(".tmp")]  # no half-written file left


def test_non_finite_loss_stops_with_epoch_and_step(faces, tmp_path):
    out = tmp_path / "nan"
    args = baseline_args(faces, out, 2, "--lr", "1e38")
    proc = run_script(args[0], args[1:])
    assert_user_error(proc, "epoch 0, step")
    assert not (out / "checkpoint-last.pth").exists()  # never overwritten by a diverged state


class Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_payload_checkpoint_is_refused_without_running(faces, tmp_path):
    sentinel = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": Payload(sentinel)}))
    out = tmp_path / "out"
    args = baseline_args(faces, out, 1, "--resume", evil)
    proc = run_script(args[0], args[1:])
    assert_user_error(proc, "evil.pth", "refused")
    proc = run_script("high_confidence.py", ["--concept_ckpt", evil, "--data_path", faces / "train", "--output_dir",
                                             tmp_path / "conf", "--device", "cpu"])
    assert_user_error(proc, "evil.pth")
    assert not sentinel.exists()
