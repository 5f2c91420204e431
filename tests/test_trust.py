"""Numbers people can trust (issue #16): the validation split that chooses the best epoch and the figures
reported next to it, progress lines for logs, the output-folder lock, a full disk during a save, image and
FER2013 readers on hostile input, stage 2's flags, --deterministic.

The stage runs here are in-process (``run_inprocess``) and tiny: a stage-1 checkpoint is written directly
(untrained weights with the metadata stage 1 records), stage 2 scores 42 images, stage 3 trains one epoch.
"""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, SIZE, assert_no_output, assert_user_error, read_log, run_inprocess
from PIL import Image

import utils.checkpoint as checkpoint_module
from dataset_concept import Fer2013Csv, FolderFaces, apply_recorded_split, build_dataset, split_validation
from models.concept import ConceptNet
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.engine import selection_columns, selection_line, selection_summary
from utils.errors import UserError
from utils.files import LOCK_NAME, check_folder_free, hold_folder, release_folders

COMMON = ["--input_size", SIZE, "--batch_size", 8, "--device", "cpu", "--num_workers", 0]


# --------------------------------------------------------------------------- the validation split
def test_split_validation_is_stratified_seeded_and_rederived(faces):
    train = build_dataset("folder", str(faces / "train"), "train")  # 7 classes x 8 images
    remaining, held, record = split_validation(train, 0.25, seed=3)
    assert len(held) == 14 and len(remaining) == 42  # round(0.25 * 8) = 2 per class
    assert np.bincount(held.targets).tolist() == [2] * 7 and np.bincount(remaining.targets).tolist() == [6] * 7
    held_paths = {held.relpath(i) for i in range(len(held))}
    kept_paths = {remaining.relpath(i) for i in range(len(remaining))}
    assert not held_paths & kept_paths and len(held_paths | kept_paths) == 56
    assert record == {"fraction": 0.25, "seed": 3, "images": 14, "fingerprint": held.fingerprint()}
    # the same record gives the same images; another seed other images
    assert apply_recorded_split(train, record, "stage 1").fingerprint() == remaining.fingerprint()
    assert split_validation(train, 0.25, seed=4)[2]["fingerprint"] != record["fingerprint"]
    assert apply_recorded_split(train, None, "stage 1") is train
    # a class keeps at least one training image and gives at least one
    assert len(split_validation(train, 0.01, 0)[1]) == 7 and len(split_validation(train, 0.99, 0)[0]) == 7
    with pytest.raises(UserError, match="does not hold the 14 validation images"):
        apply_recorded_split(train, {**record, "fingerprint": "0" * 16}, "ckpt.pth")


def test_fer2013_subset_keeps_pixels_and_line_numbers_aligned(faces):
    data = Fer2013Csv(str(faces / "fer2013" / "fer2013_vad.csv"), "train", vad=True)
    part = data.subset([5, 2])
    assert part.rows == [data.rows[5], data.rows[2]] and part.targets == [data.targets[5], data.targets[2]]
    assert np.array_equal(np.asarray(part.load_image(0)), np.asarray(data.load_image(5)))
    assert np.array_equal(part.vad, data.vad[[5, 2]])
    assert part.describe(1) == data.describe(2) and len(data) > 2  # the original is untouched


def test_selection_summary_hand_computed():
    history = [
        {"epoch": 0, "val_acc": 40.0, "eval_acc": 50.0, "test_acc": 30.0},
        {"epoch": 1, "val_acc": 60.0, "eval_acc": 45.0, "test_acc": 35.0},
        {"epoch": 2, "val_acc": 55.0, "eval_acc": 70.0, "test_acc": 35.0},
    ]
    best = {"epoch": 1, "value": 60.0, "metric": "val_acc"}
    summary = selection_summary(history, best, ["val", "eval", "test"])
    assert summary["selected_on"] == "val" and summary["epoch"] == 1
    assert summary["splits"]["eval"] == {"acc_at_selected_epoch": 45.0, "best_epoch": 2, "acc_at_best_epoch": 70.0}
    assert summary["splits"]["test"] == {"acc_at_selected_epoch": 35.0, "best_epoch": 1, "acc_at_best_epoch": 35.0}
    assert selection_columns(summary) == {
        "eval_acc_at_selected_epoch": 45.0,
        "eval_acc_max_over_epochs": 70.0,
        "test_acc_at_selected_epoch": 35.0,
        "test_acc_max_over_epochs": 35.0,
    }
    line = selection_line(summary)
    assert "best epoch 1 by val_acc 60.00; there eval_acc 45.00, test_acc 35.00" in line
    assert "eval_acc 70.00 at epoch 2" in line and "what papers report" in line
    eval_chosen = selection_summary(history, {"epoch": 2, "value": 70.0, "metric": "eval_acc"}, ["eval"])
    assert "chosen on the eval split itself" in selection_line(eval_chosen)
    # with a test split beside it, the eval split is a validation split: the test figure at its epoch is honest
    eval_and_test = selection_summary(history, {"epoch": 2, "value": 70.0, "metric": "eval_acc"}, ["eval", "test"])
    assert "chosen on the eval split itself" not in selection_line(eval_and_test)
    assert "there test_acc 35.00" in selection_line(eval_and_test)


@pytest.fixture(scope="module")
def concept_ckpt(faces, tmp_path_factory):
    """A stage-1 checkpoint-best.pth as main_concept.py writes it with --val_split 0.25 --val_seed 3
    (untrained weights: these tests check which images each stage uses, not what it learns)."""
    train = build_dataset("folder", str(faces / "train"), "train")
    remaining, _, record = split_validation(train, 0.25, seed=3)
    torch.manual_seed(0)
    model = ConceptNet(len(train.classes))
    meta = {
        "model": "ConceptNet",
        "classifier_input": "scaled",
        "classes": train.classes,
        "input_size": SIZE,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "dataset": "folder",
        "train_fingerprint": remaining.fingerprint(),
        "val_split": record,
    }
    path = tmp_path_factory.mktemp("concept") / "checkpoint-best.pth"
    best = {"epoch": 0, "value": 20.0, "metric": "val_acc"}
    save_checkpoint(str(path), {"model": model.state_dict(), "epoch": 0, "best": best, "args": {}, "meta": meta})
    return path, remaining


@pytest.fixture(scope="module")
def stage2_run(faces, concept_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("confidence") / "confidence"
    args = ["--concept_ckpt", concept_ckpt[0], "--data_path", faces / "train", "--output_dir", out]
    args += ["--device", "cpu", "--num_workers", 0, "--batch_size", 32, "--amp", "--channels_last"]
    proc = run_inprocess("high_confidence.py", args, _Capture())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc


class _Capture:
    """A stand-in for pytest's capfd in module fixtures: nothing to reset, output stays in the test's."""

    def readouterr(self):
        return "", ""


def test_stage2_scores_only_the_images_stage1_trained_on(stage2_run, concept_ckpt):
    out, _ = stage2_run
    remaining = concept_ckpt[1]
    scores = pd.read_csv(out / "scores_train.csv")
    assert sorted(scores["path"]) == sorted(remaining.relpath(i) for i in range(len(remaining)))
    bank = load_checkpoint(str(out / "bank.pt"))
    assert bank["data_fingerprint"] == remaining.fingerprint() and len(bank["labels"]) == 42


def test_stage3_trains_on_the_same_images_and_chooses_on_the_held_out_ones(
    faces, concept_ckpt, stage2_run, tmp_path, capfd
):
    out = tmp_path / "percept"
    args = ["--data_path", faces / "train", "--eval_data_path", faces / "test", "--pretrained", "none"]
    args += ["--epochs", 2, "--output_dir", out, "--norm_cache", tmp_path / "cache", "--lr", 1e-3]
    args += ["--concept_ckpt", concept_ckpt[0], "--confidence_dir", stage2_run[0], "--pool_features", "bank"]
    args += ["--print_freq", 2, *COMMON]
    proc = run_inprocess("main_percept.py", args, capfd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "holds out the 14 training images stage 1 held out" in proc.stdout
    assert "42 train images" in proc.stdout
    log = read_log(out)
    assert all(r["val_images"] == 14 and r["eval_images"] == 21 for r in log)
    chosen = max(log, key=lambda r: r["val_acc"])  # the first best epoch on the held-out images
    assert all(r["selected_epoch"] == chosen["epoch"] for r in log[chosen["epoch"] :])
    assert log[-1]["eval_acc_at_selected_epoch"] == chosen["eval_acc"]
    assert log[-1]["eval_acc_max_over_epochs"] == max(r["eval_acc"] for r in log)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epoch"] == chosen["epoch"] and metrics["acc"] == pytest.approx(chosen["eval_acc"])
    assert metrics["selection"]["metric"] == "val_acc"
    assert metrics["selection"]["splits"]["eval"]["acc_at_best_epoch"] == max(r["eval_acc"] for r in log)
    assert json.loads((out / "metrics_val.json").read_text())["acc"] == pytest.approx(chosen["val_acc"])
    checkpoint = load_checkpoint(str(out / "checkpoint-best.pth"))
    assert checkpoint["meta"]["val_split"]["images"] == 14 and checkpoint["best"]["metric"] == "val_acc"
    # progress lines (stdout is not a terminal here): 42 images / batch 8 = 5 steps, a line at steps 2 and 4
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch 0 step ")]
    assert [line.split(" | ")[0] for line in lines] == ["epoch 0 step 2/5", "epoch 0 step 4/5"]
    parts = lines[0].split(" | ")
    assert [p.split(" ")[0] for p in parts[1:6]] == ["loss", "ce", "mmd", "kl", "lr"]
    assert parts[6].endswith(" img/s") and parts[7].startswith("eta 0:") and len(parts) == 8  # no CUDA memory
    summary = [line for line in proc.stdout.splitlines() if line.startswith("summary: 2 epochs")]
    assert len(summary) == 1 and f"best epoch {chosen['epoch']} by val_acc" in summary[0]
    # another split than stage 1's is refused before anything is written
    again = run_inprocess("main_percept.py", [*args[:9], tmp_path / "other", *args[10:], "--val_split", 0.1], capfd)
    assert_user_error(again, "--val_split 0.25 --val_seed 3", "drop --val_split")
    assert_no_output(tmp_path / "other")


def test_stage2_refuses_training_flags(concept_ckpt, tmp_path, capfd):
    out = tmp_path / "conf"
    args = ["--concept_ckpt", concept_ckpt[0], "--output_dir", out, "--device", "cpu", "--epochs", 3, "--lr", 0.1]
    proc = run_inprocess("high_confidence.py", args, capfd)
    assert_user_error(proc, "--epochs, --lr do not apply to high_confidence.py")
    proc = run_inprocess("high_confidence.py", [*args[:6], "--eval"], capfd)
    assert_user_error(proc, "--eval does not apply")
    assert not out.exists()


# --------------------------------------------------------------------------- runs that never collide
def test_live_run_holds_its_folder_and_a_killed_one_releases_it(tmp_path, capfd, faces):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from utils.files import hold_folder; hold_folder({str(out)!r}); print('held', flush=True); input()",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["--data_path", faces / "train", "--eval_data_path", faces / "test", "--pretrained", "none"]
        args += ["--concept_target", "none", "--epochs", 1, "--output_dir", out, *COMMON]
        proc = run_inprocess("main_percept.py", args, capfd)
        assert_user_error(proc, f"output folder {out} is in use by a run that is still going (pid {holder.pid}")
        assert sorted(os.listdir(out)) == [LOCK_NAME]
        with pytest.raises(UserError, match="in use"):
            hold_folder(str(out))
        with pytest.raises(UserError, match=r"in use .* pass another --out\.$"):  # benchmarks/ablation.py's flag
            hold_folder(str(out), "--out")
    finally:
        holder.kill()
        holder.wait()
    handle = hold_folder(str(out))  # the kernel released the killed process's lock
    assert f"pid {os.getpid()}" in open(out / LOCK_NAME).read()
    assert hold_folder(str(out)) is handle and check_folder_free(str(out)) is None  # re-entrant in one process
    release_folders()
    assert handle.closed


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-last.pth"
    save_checkpoint(str(path), {"epoch": 1, "w": torch.ones(3)})

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.os, "fsync", full)
    with pytest.raises(UserError) as info:
        save_checkpoint(str(path), {"epoch": 2, "w": torch.zeros(3)})
    message = str(info.value)
    assert message.startswith(f"could not write {path} (No space left on device); the previous checkpoint-last.pth")
    assert "is intact and readable" in message and "\n" not in message
    monkeypatch.undo()
    assert load_checkpoint(str(path))["epoch"] == 1 and os.listdir(tmp_path) == ["checkpoint-last.pth"]


# --------------------------------------------------------------------------- hostile images and rows
def _one_image_folder(root, size=36):
    os.makedirs(root / "happy")
    os.makedirs(root / "sad")
    Image.new("RGB", (size, size), (120, 80, 60)).save(root / "happy" / "a.png")
    (root / "sad" / "b.png").write_bytes(b"")
    return FolderFaces(str(root))


def test_decompression_bombs_and_empty_images_name_the_file(tmp_path, monkeypatch):
    data = _one_image_folder(tmp_path / "d")
    with pytest.raises(UserError, match=r"sad/b.png \(the file is empty, 0 bytes\)"):
        data.load_image(1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 36 x 36 = 1296 pixels: PIL's warning
    with pytest.raises(UserError, match=r"happy/a.png is refused as a decompression bomb"):
        data.load_image(0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # over twice the limit: PIL's error
    with pytest.raises(UserError, match=r"happy/a.png is refused as a decompression bomb"):
        data.load_image(0)


def test_malformed_fer2013_rows_name_the_line(tmp_path):
    good = " ".join(["7"] * 2304)
    rows = ["emotion,pixels", f"3,{good}", f"0,{' '.join(['7'] * 2303)}", f"1,{good[:-1]}x", "2,1e9 " + good[2:]]
    path = tmp_path / "fer.csv"
    path.write_text("\n".join(rows) + "\n")
    data = Fer2013Csv(str(path), "train")
    assert data.load_image(0).size == (48, 48)
    with pytest.raises(UserError, match=r"fer.csv line 3 \(pixels holds 2303 values, not 48x48 = 2304\)"):
        data.load_image(1)
    with pytest.raises(UserError, match=r"fer.csv line 4 \(pixels holds the non-numeric value 'x'\)"):
        data.load_image(2)
    with pytest.raises(UserError, match=r"fer.csv line 5 \(pixels holds values outside 0..255\)"):
        data.load_image(3)


# --------------------------------------------------------------------------- wording found by a review
def test_missing_eval_folder_names_its_flag_and_digit_classes_warn(tmp_path, capsys):
    with pytest.raises(UserError, match="pass --eval_data_path"):
        build_dataset("folder", str(tmp_path / "absent"), "eval")
    with pytest.raises(UserError, match="pass --test_data_path"):
        build_dataset("folder", str(tmp_path / "absent"), "test")
    for label in ("0", "1", "10"):
        os.makedirs(tmp_path / "digits" / label)
        Image.new("RGB", (8, 8)).save(tmp_path / "digits" / label / "x.png")
    data = build_dataset("folder", str(tmp_path / "digits"), "train")
    assert data.classes == ["0", "1", "10"]
    out = capsys.readouterr().out
    assert out.startswith(f"warning: the class folders of {tmp_path / 'digits'} are named only by digits (0, 1, 10)")
    assert "the class names are the folder names" in out


def test_corrupt_checkpoint_is_called_corrupt_not_unsafe(tmp_path):
    path = tmp_path / "checkpoint-best.pth"
    save_checkpoint(str(path), {"model": {"w": torch.arange(1000.0)}, "meta": {"classes": ["a", "b"]}})
    data = bytearray(path.read_bytes())
    start = data.index(b"\x80\x02", data.index(b"data.pkl"))  # the pickle of the first zip member
    data[start + 2 : start + 10] = b"\xd7" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as info:
        load_checkpoint(str(path))
    message = str(info.value)
    assert "is corrupt or truncated" in message and "weights_only" not in message and "\n" not in message


def test_deterministic_flag_sets_torch_and_cublas(monkeypatch):
    from utils.cli import set_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


# --------------------------------------------------------------------------- seeds
def test_seeds_tool_runs_each_stage_per_seed_and_tabulates_mean_and_std(tmp_path, monkeypatch, capfd):
    """tools/seeds.py over the whole pipeline, its stage runs replaced by ones that write known figures."""
    from tools import seeds

    calls = []

    def fake_run(script, argv, log):
        calls.append((script, argv))
        out = argv[argv.index("--output_dir") + 1]
        seed = int(argv[argv.index("--seed") + 1])
        os.makedirs(out, exist_ok=True)
        if script != "high_confidence.py":
            selection = {
                "selected_on": "val",
                "metric": "val_acc",
                "epoch": seed,
                "value": 50.0 + seed,
                "splits": {"val": {}, "eval": {"acc_at_selected_epoch": 40.0 + 2 * seed, "acc_at_best_epoch": 45.0}},
            }
            with open(os.path.join(out, "metrics.json"), "w") as handle:
                json.dump({"selection": selection}, handle)

    monkeypatch.setattr(seeds, "run", fake_run)
    common = "--data_path D/train --eval_data_path D/test --val_split 0.1 --input_size 40 --num_workers 2"
    argv = ["--seeds", "0,1,2", "--out", str(tmp_path), "--common", common, "--percept", "--epochs 3"]
    assert seeds.main(argv) is None
    assert [c[0] for c in calls[:3]] == ["main_concept.py", "high_confidence.py", "main_percept.py"] and len(calls) == 9
    stage2 = calls[1][1]
    assert stage2[:6] == ["--data_path", "D/train", "--input_size", "40", "--num_workers", "2"]
    assert "--val_split" not in stage2 and "--eval_data_path" not in stage2
    assert stage2[stage2.index("--concept_ckpt") + 1] == str(tmp_path / "seed_0" / "concept" / "checkpoint-best.pth")
    stage3 = calls[2][1]
    assert stage3[-2:] == ["--epochs", "3"] and stage3[stage3.index("--confidence_dir") + 1].endswith("confidence")
    rows = pd.read_csv(tmp_path / "seeds.csv")
    assert len(rows) == 6 and rows["eval_acc"].tolist() == [40.0, 40.0, 42.0, 42.0, 44.0, 44.0]
    summary = pd.read_csv(tmp_path / "seeds_summary.csv").set_index("stage")
    assert summary.loc["percept", "eval_acc_mean"] == pytest.approx(42.0)
    assert summary.loc["percept", "eval_acc_std"] == pytest.approx(2.0)  # sample std of 40, 42, 44
    assert summary.loc["concept", "val_acc_mean"] == pytest.approx(51.0) and summary.loc["concept", "seeds"] == 3
    table = (tmp_path / "seeds.md").read_text()
    assert "| percept | 3 | 51.00 ± 1.00 | 42.00 ± 2.00 | 45.00 ± 0.00 |" in table
