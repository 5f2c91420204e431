"""tools/analyse_concepts.py end to end on a 1-epoch stage-1 model of the small synthetic faces: the files
and JSON it writes, what it skips without ground truth, its user errors; and the TensorBoard summary a
training stage writes at its end (confusion matrix figures, hparams)."""

import json
import os

import pytest
from conftest import SIZE, assert_no_output, assert_user_error, run_inprocess, run_script

TOOL = os.path.join("tools", "analyse_concepts.py")
FIGURES = ("probes", "embeddings", "reliability", "pools_grid", "saliency")
SMALL = ["--device", "cpu", "--num_workers", 0, "--batch_size", 32, "--tsne_samples", 40, "--grid_images", 2]


@pytest.fixture(scope="module")
def stages(faces, tmp_path_factory):
    """(stage-1 folder, stage-2 folder) of a 1-epoch run from random weights."""
    root = tmp_path_factory.mktemp("analysis")
    concept, confidence = root / "concept", root / "confidence"
    proc = run_script(
        "main_concept.py",
        ["--data_path", faces / "train", "--eval_data_path", faces / "test", "--test_data_path", faces / "test"]
        + ["--pretrained", "none", "--epochs", 1, "--output_dir", concept, "--norm_cache", root / "cache"]
        + ["--input_size", SIZE, "--batch_size", 8, "--device", "cpu", "--num_workers", 0],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_script(
        "high_confidence.py",
        ["--concept_ckpt", concept / "checkpoint-best.pth", "--data_path", faces / "train"]
        + ["--output_dir", confidence, "--device", "cpu", "--num_workers", 0, "--batch_size", 16],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return concept, confidence


def tool_args(faces, stages, out, *extra):
    return [
        "--concept_ckpt",
        stages[0] / "checkpoint-best.pth",
        "--data_path",
        faces / "train",
        "--eval_data_path",
        faces / "test",
        "--output_dir",
        out,
        *SMALL,
        *extra,
    ]


def test_training_stage_writes_confusion_figures_and_hparams_to_tensorboard(stages):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(stages[0] / "tb")).Reload()
    tags = events.Tags()
    assert {"eval/confusion_matrix", "test/confusion_matrix"} <= set(tags["images"])
    assert "final/best_eval_acc" in tags["scalars"] and "final/last_eval_acc" in tags["scalars"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_tool_writes_figures_json_and_tensorboard(faces, stages, tmp_path, capfd):
    out = tmp_path / "analysis"
    proc = run_inprocess(TOOL, tool_args(faces, stages, out, "--confidence_dir", stages[1]), capfd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 1000, name
    report = json.loads((out / "analysis.json").read_text())
    assert report["images"] == {"train": 56, "eval": 21}
    assert report["ground_truth"] == {"train": True, "eval": True}
    assert set(report["probes"]["expression"]) == {"e", "n"}  # no raw backbone: stage 1 started from none
    assert report["raw_backbone"] is None and any("raw-backbone" in note for note in report["skipped"])
    assert report["probes"]["expression"]["e"]["n_test"] == 21
    assert set(report["probes"]["identity"]) == {"e", "n"}
    assert report["confidence"]["source"].startswith("stage 2")
    train = report["confidence"]["train"]
    assert sum(d["count"] for d in train["by_decile"]) == 56
    assert train["pools"]["pool"]["count"] + train["pools"]["dropped"]["count"] == 56
    pool_rows = len((stages[1] / "pool.csv").read_text().strip().splitlines()) - 1
    assert train["pools"]["pool"]["count"] == pool_rows
    assert set(train["intensity_spearman"]["per_class"]) == set(report["classes"])
    assert "intensity_spearman" in report["confidence"]["eval"]
    assert {"expression_e_minus_n", "confidence_intensity_spearman", "pool_minus_dropped_error_rate"} <= set(
        report["goals"]
    )
    assert report["attention"]["faces"] == 6 and set(report["attention"]["mass_by_band"]) == {"emotion", "non_emotion"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = EventAccumulator(str(out / "tb")).Reload().Tags()["images"]
    assert {f"analysis/{name}" for name in FIGURES} <= set(images)
    assert "expression probe" in proc.stdout


def test_tool_without_ground_truth_or_stage2_says_what_it_skips(faces, stages, tmp_path, capfd):
    out = tmp_path / "analysis"
    args = tool_args(faces, stages, out, "--ground_truth", "none", "--pretrained", "none", "--saliency_faces", 2)
    proc = run_inprocess(TOOL, args, capfd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "analysis.json").read_text())
    assert report["ground_truth"] == {"train": False, "eval": False}
    assert "identity" not in report["probes"]
    assert "intensity_spearman" not in report["confidence"]["train"]
    assert report["confidence"]["source"].startswith("scored here")
    assert set(report["goals"]) == {"expression_e_minus_n", "pool_minus_dropped_error_rate"}
    assert any("identity probes" in note for note in report["skipped"])
    assert "note: identity probes" in proc.stdout
    assert report["attention"]["faces"] == 2


def test_tool_user_errors_leave_nothing_behind(faces, stages, tmp_path, capfd):
    out = tmp_path / "analysis"
    args = tool_args(faces, stages, out)
    args[1] = tmp_path / "missing.pth"
    assert_user_error(run_inprocess(TOOL, args, capfd), "missing.pth")
    assert_user_error(
        run_inprocess(TOOL, tool_args(faces, stages, out, "--confidence_dir", tmp_path), capfd), "scores_train.csv"
    )
    assert_user_error(run_inprocess(TOOL, tool_args(faces, stages, out, "--grid_images", 0), capfd), "--grid_images")
    assert_no_output(out)
