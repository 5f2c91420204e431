"""Stages 1 -> 2 -> 3 -> prediction on synthetic faces, in-process and under torchrun, with the
artefacts, resume, --eval and the user-facing errors each stage promises."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SIZE, assert_user_error, read_log, run_script, torchrun

from dataset_concept import build_dataset, build_transform
from models.concept import ConceptNet

COMMON = ["--input_size", SIZE, "--batch_size", 8, "--device", "cpu", "--num_workers", 0]


def concept_args(faces, out, epochs=2, *extra):
    return [
        "--data_path",
        faces / "train",
        "--eval_data_path",
        faces / "test",
        "--pretrained",
        "none",
        "--epochs",
        epochs,
        "--output_dir",
        out,
        "--norm_cache",
        out.parent / "cache",
        *COMMON,
        *extra,
    ]


@pytest.fixture(scope="module")
def concept_run(faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("concept") / "concept"
    proc = run_script("main_concept.py", concept_args(faces, out, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def confidence_run(faces, concept_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("confidence") / "confidence"
    proc = run_script(
        "high_confidence.py",
        [
            "--concept_ckpt",
            concept_run[0] / "checkpoint-best.pth",
            "--data_path",
            faces / "train",
            "--output_dir",
            out,
            "--device",
            "cpu",
            "--num_workers",
            0,
            "--batch_size",
            16,
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# --------------------------------------------------------------------------- stage 1
def test_stage1_writes_every_artefact(concept_run):
    out, proc = concept_run
    for name in (
        "checkpoint-best.pth",
        "checkpoint-last.pth",
        "log.jsonl",
        "log.csv",
        "config.json",
        "metrics.json",
        "confusion_matrix.csv",
        "confusion_matrix.png",
    ):
        assert (out / name).is_file(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tb"))
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1]
    assert len(pd.read_csv(out / "log.csv")) == 2
    for record in log:
        assert 0 <= record["eval_acc"] <= 100 and math.isfinite(record["train_loss"])
        for part in ("train_orth", "train_focal", "train_rr", "train_cc"):
            assert part in record
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["lr"] == pytest.approx(1e-4) and config["args"]["pretrained"] == "none"
    checkpoint = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["meta"]["classes"] == sorted(checkpoint["meta"]["classes"])
    assert checkpoint["meta"]["input_size"] == SIZE
    assert proc.stdout.count("epoch 0 |") == 1 and proc.stdout.count("epoch 1 |") == 1


def test_stage1_eval_reproduces_logged_best(concept_run, faces, tmp_path):
    out, _ = concept_run
    best = max(r["eval_acc"] for r in read_log(out))
    proc = run_script(
        "main_concept.py",
        [
            "--eval",
            "--resume",
            out / "checkpoint-best.pth",
            "--data_path",
            faces / "train",
            "--eval_data_path",
            faces / "test",
            "--output_dir",
            tmp_path / "ev",
            "--norm_cache",
            out.parent / "cache",
            *COMMON,
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("eval:"))
    acc = float(line.split("| acc ")[1].split(" |")[0])
    assert acc == pytest.approx(best, abs=1e-4)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["acc"] == pytest.approx(best, abs=1e-9)


def test_stage1_resume_continues_identically(concept_run, faces, tmp_path):
    """2 epochs then --resume to 3 gives the same epoch-2 line as 3 straight epochs."""
    out, _ = concept_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("checkpoint-last.pth", "log.jsonl", "log.csv"):
        (resumed / name).write_bytes((out / name).read_bytes())
    proc = run_script("main_concept.py", concept_args(faces, resumed, 3, "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    straight = tmp_path / "straight"
    proc = run_script("main_concept.py", concept_args(faces, straight, 3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_log(resumed), read_log(straight)
    assert [r["epoch"] for r in a] == [0, 1, 2]
    timing = ("epoch_time", "train_images_per_s")
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in timing} == {k: v for k, v in rb.items() if k not in timing}


def test_stage1_torchrun_two_processes(faces, tmp_path):
    out = tmp_path / "ddp"
    proc = torchrun("main_concept.py", concept_args(faces, out, 1, "--batch_size", 4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_log(out)) == 1 and proc.stdout.count("epoch 0 |") == 1
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["args"]["lr"] == pytest.approx(2e-4)
    assert (out / "checkpoint-best.pth").is_file()


def test_stage1_user_errors(faces, tmp_path):
    out = tmp_path / "never"
    proc = run_script("main_concept.py", concept_args(faces, out, 1, "--data_path", tmp_path / "missing"))
    assert_user_error(proc, "missing")
    proc = run_script("main_concept.py", concept_args(faces, out, 1, "--pretrained", tmp_path / "nope.pkl"))
    assert_user_error(proc, "nope.pkl", "pretrained/README.md")
    proc = run_script("main_concept.py", concept_args(faces, out, 1, "--non_emotion_pretrained", tmp_path / "n.pkl"))
    assert_user_error(proc, "non-emotion encoder weights", "n.pkl", "--non_emotion_pretrained same")
    proc = run_script("main_concept.py", concept_args(faces, out, 1, "--batch_size", -1))
    assert_user_error(proc, "--batch_size")
    proc = run_script("main_concept.py", concept_args(faces, out, 1, "--focal_alpha", "0.5,0.5"))
    assert_user_error(proc, "--focal_alpha")
    other = tmp_path / "other_test"
    (other / "anger").mkdir(parents=True)
    (other / "anger" / "a.png").write_bytes((faces / "test" / "anger" / "anger_00000.png").read_bytes())
    proc = run_script("main_concept.py", concept_args(faces, out, 1, "--eval_data_path", other))
    assert_user_error(proc, "classes")
    assert not out.exists()


# --------------------------------------------------------------------------- stage 2
def test_stage2_artefacts_match_their_definitions(confidence_run, faces):
    out = confidence_run
    scores = pd.read_csv(out / "scores_train.csv")
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert list(scores.columns) == ["path", "label", "class", "confidence", "pred"]
    assert len(scores) == 56 and thresholds["percentile"] == 0.2
    classes = thresholds["classes"]
    assert classes == sorted(classes)
    for c, name in enumerate(classes):
        conf = np.sort(scores.confidence[scores.label == c].to_numpy())
        assert thresholds["thresholds"][c] == conf[int(np.floor(0.2 * conf.size))]
        assert thresholds["counts"][c] == conf.size
        assert (scores["class"][scores.label == c] == name).all()
    expected_pool = scores[scores.confidence >= np.asarray(thresholds["thresholds"])[scores.label]]
    pool = pd.read_csv(out / "pool.csv")
    assert pool.equals(expected_pool.reset_index(drop=True))
    assert thresholds["pool_sizes"] == [int((pool.label == c).sum()) for c in range(len(classes))]
    assert (out / "confidence_hist.png").stat().st_size > 1000


def test_stage2_bank_equals_fresh_forward(confidence_run, concept_run, faces):
    bank = torch.load(confidence_run / "bank.pt", map_location="cpu", weights_only=True)
    checkpoint = torch.load(concept_run[0] / "checkpoint-best.pth", map_location="cpu", weights_only=True)
    meta = checkpoint["meta"]
    model = ConceptNet(len(meta["classes"]), None)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    dataset = build_dataset(
        "folder", str(faces / "train"), "train", build_transform(False, meta["input_size"], meta["mean"], meta["std"])
    )
    rows = [0, 17, 55]
    images = torch.stack([dataset[i]["image"] for i in rows])
    with torch.no_grad():
        out = model.emotion_forward(images)
    assert torch.allclose(bank["features"][rows], out["e"], atol=1e-5)
    assert torch.allclose(bank["logits"][rows], out["logits"], atol=1e-5)
    assert bank["paths"][17] == dataset.relpath(17)
    scores = pd.read_csv(confidence_run / "scores_train.csv")
    assert np.allclose(scores.confidence[rows], out["confidence"].numpy(), atol=1e-6)
    assert bank["mask"].dtype == torch.bool and bank["input_size"] == SIZE and bank["classes"] == meta["classes"]


def test_stage2_two_processes_identical(confidence_run, concept_run, faces, tmp_path):
    out = tmp_path / "conf2"
    proc = torchrun(
        "high_confidence.py",
        [
            "--concept_ckpt",
            concept_run[0] / "checkpoint-best.pth",
            "--data_path",
            faces / "train",
            "--output_dir",
            out,
            "--device",
            "cpu",
            "--num_workers",
            0,
            "--batch_size",
            16,
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = pd.read_csv(confidence_run / "scores_train.csv"), pd.read_csv(out / "scores_train.csv")
    assert one[["path", "label", "pred"]].equals(two[["path", "label", "pred"]])
    assert np.allclose(one.confidence, two.confidence, atol=1e-6)
    a, b = (json.loads((d / "thresholds.json").read_text()) for d in (confidence_run, out))
    assert np.allclose(a["thresholds"], b["thresholds"], atol=1e-6) and a["pool_sizes"] == b["pool_sizes"]


# --------------------------------------------------------------------------- stage 3
def percept_args(faces, concept_run, confidence_run, out, mode, epochs=1, *extra):
    return [
        "--data_path",
        faces / "train",
        "--eval_data_path",
        faces / "test",
        "--pretrained",
        "none",
        "--concept_ckpt",
        concept_run[0] / "checkpoint-best.pth",
        "--confidence_dir",
        confidence_run,
        "--epochs",
        epochs,
        "--output_dir",
        out,
        "--norm_cache",
        out.parent / "cache",
        *COMMON,
        *mode,
        *extra,
    ]


@pytest.mark.parametrize(
    "mode",
    [
        ["--concept_target", "pool", "--pool_features", "online"],
        ["--concept_target", "pool", "--pool_features", "bank"],
        ["--concept_target", "self"],
        ["--concept_target", "none"],
        ["--concept_target", "pool", "--pool_features", "bank", "--teacher_filter", "correct"],
    ],
    ids=["pool-online", "pool-bank", "self", "none", "pool-bank-correct"],
)
def test_stage3_each_concept_target(mode, faces, concept_run, confidence_run, tmp_path):
    out = tmp_path / "percept"
    proc = run_script("main_percept.py", percept_args(faces, concept_run, confidence_run, out, mode))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_log(out)[0]
    assert math.isfinite(record["train_loss"]) and 0 <= record["eval_acc"] <= 100
    checkpoint = torch.load(out / "checkpoint-best.pth", map_location="cpu", weights_only=True)
    if mode[1] == "none":
        assert "train_mmd" not in record and checkpoint["meta"]["teacher"] is None
    else:
        assert record["train_mmd"] >= 0 and record["train_kl"] >= 0
        teacher = checkpoint["meta"]["teacher"]  # the 2-epoch scratch concept model is weak: the run says so
        assert teacher["eval_acc"] == pytest.approx(max(r["eval_acc"] for r in read_log(concept_run[0])))
        assert proc.stdout.count("warning: the concept model is weak") == 1
        if "correct" in mode:
            bank = torch.load(confidence_run / "bank.pt", map_location="cpu", weights_only=True)
            assert teacher["filtered_mask_share"] <= float(bank["mask"].float().mean())
    assert checkpoint["meta"]["model"] == "PerceptNet"
    assert not any(k.startswith(("emotion", "non_emotion")) for k in checkpoint["model"])  # only P is saved
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["report"]) == set(checkpoint["meta"]["classes"])
    assert (out / "confusion_matrix.csv").is_file() and (out / "confusion_matrix.png").is_file()


def test_stage3_torchrun_eval_and_predict(faces, concept_run, confidence_run, tmp_path):
    out = tmp_path / "percept"
    proc = torchrun("main_percept.py", percept_args(faces, concept_run, confidence_run, out, [], 2, "--batch_size", 4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1]
    best = max(r["eval_acc"] for r in log)
    proc = run_script(
        "main_percept.py",
        [
            "--eval",
            "--resume",
            out / "checkpoint-best.pth",
            "--data_path",
            faces / "train",
            "--eval_data_path",
            faces / "test",
            "--output_dir",
            tmp_path / "ev",
            "--norm_cache",
            out.parent / "cache",
            *COMMON,
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["acc"] == pytest.approx(best, abs=1e-9)

    csv = tmp_path / "pred.csv"
    proc = run_script(
        "predict.py",
        [
            "--checkpoint",
            out / "checkpoint-best.pth",
            faces / "test" / "happy",
            "--faces",
            "none",
            faces / "test" / "sad" / "sad_00000.png",
            "--output",
            csv,
            "--save_vis",
            tmp_path / "vis",
            "--device",
            "cpu",
            "--num_workers",
            0,
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(csv)
    assert len(table) == 4 and table["path"].str.endswith(".png").all()
    probs = table[[c for c in table.columns if c.startswith("prob_")]]
    assert probs.shape[1] == 7 and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert set(table["pred"]) <= {c[5:] for c in probs.columns}
    assert len(os.listdir(tmp_path / "vis")) == 4
    assert proc.stdout.count(".png: ") == 4


def test_stage3_refuses_mismatched_artefacts(faces, concept_run, confidence_run, tmp_path):
    out = tmp_path / "never"
    proc = run_script(
        "main_percept.py", percept_args(faces, concept_run, confidence_run, out, [], 1, "--input_size", 40)
    )
    assert_user_error(proc, "input size")
    proc = run_script(
        "main_percept.py",
        percept_args(faces, concept_run, confidence_run, out, [], 1, "--confidence_dir", tmp_path / "none"),
    )
    assert_user_error(proc, "bank.pt", "high_confidence.py")
    proc = run_script("predict.py", ["--checkpoint", concept_run[0] / "checkpoint-best.pth", faces / "test"])
    assert_user_error(proc, "not a stage-3")
    assert not out.exists()


def test_stage3_lighter_backbone_trains_and_predicts(faces, tmp_path):
    """--backbone mobilenet_v3_large: stage 3 trains, the checkpoint records the backbone, predict.py and
    --eval rebuild the same network from it; a backbone without a default weight file asks for one."""
    out = tmp_path / "mobile"
    args = [
        "--data_path",
        faces / "train",
        "--eval_data_path",
        faces / "test",
        "--concept_target",
        "none",
        "--epochs",
        1,
        "--output_dir",
        out,
        "--norm_cache",
        tmp_path / "cache",
        *COMMON,
    ]
    proc = run_script("main_percept.py", [*args, "--backbone", "mobilenet_v3_large"])
    assert_user_error(proc, "--backbone mobilenet_v3_large has no default weight file", "--pretrained")
    assert not out.exists()
    proc = run_script("main_percept.py", [*args, "--backbone", "mobilenet_v3_large", "--pretrained", "none"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = torch.load(out / "checkpoint-best.pth", map_location="cpu", weights_only=True)
    assert checkpoint["meta"]["backbone"] == "mobilenet_v3_large"
    assert any(k.startswith("encoder.backbone.features.") for k in checkpoint["model"])
    best = read_log(out)[0]["eval_acc"]
    proc = run_script(
        "main_percept.py",
        [
            "--eval",
            "--resume",
            out / "checkpoint-best.pth",
            "--backbone",
            "mobilenet_v3_large",
            *args[:4],
            "--output_dir",
            tmp_path / "ev",
            "--norm_cache",
            tmp_path / "cache",
            *COMMON,
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["acc"] == pytest.approx(best, abs=1e-9)
    proc = run_script(
        "main_percept.py",
        [
            "--eval",
            "--resume",
            out / "checkpoint-best.pth",
            *args[:4],
            "--output_dir",
            tmp_path / "ev2",
            "--norm_cache",
            tmp_path / "cache",
            *COMMON,
        ],
    )
    assert_user_error(proc, "backbone 'mobilenet_v3_large'", "'resnet18'")
    csv = tmp_path / "pred.csv"
    proc = run_script(
        "predict.py",
        [
            "--checkpoint",
            out / "checkpoint-best.pth",
            faces / "test" / "sad",
            "--faces",
            "none",
            "--output",
            csv,
            "--device",
            "cpu",
            "--num_workers",
            0,
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(csv)
    assert len(table) == 3 and set(table["pred"]) <= set(checkpoint["meta"]["classes"])
    proc = run_script("main_percept.py", [*args, "--backbone", "mobilenet", "--pretrained", "none"])
    assert_user_error(proc, "--backbone mobilenet is not one of", "efficientnet_b0")
