"""Bad input: unreadable images, empty class folders and absurd flags. Each is one sentence naming the
thing and the fix, exit code 2, no traceback, and nothing written; --skip_bad_images skips and counts.

Most runs call the script's ``main`` in this interpreter (``run_inprocess``): they stop before training,
so an interpreter start-up would be most of their cost. One run of each kind goes through a real process.
"""

import io
import shutil

import pytest
from conftest import SIZE, assert_no_output, assert_user_error, read_log, run_inprocess, run_script
from PIL import Image

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def args_for(script, train, test, out, *extra):
    """One epoch of stage 1, or of stage 3 as a plain ResNet-18 (the fastest stage), from scratch."""
    plain = ["--concept_target", "none"] if script == "main_percept.py" else []
    return [
        "--data_path",
        train,
        "--eval_data_path",
        test,
        "--pretrained",
        "none",
        *plain,
        "--epochs",
        1,
        "--output_dir",
        out,
        "--norm_cache",
        out.parent / "cache",
        "--input_size",
        SIZE,
        "--batch_size",
        8,
        "--device",
        "cpu",
        "--num_workers",
        0,
        *extra,
    ]


def truncated_jpeg(path, source):
    """``source`` saved as a JPEG and cut in half: the header reads, the pixels do not."""
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError):  # really unreadable, not merely odd
        Image.open(path).load()


def text_jpeg(path):
    path.write_text("not a picture, only a file named like one\n")


@pytest.fixture
def data(faces, tmp_path):
    """A writable copy of the faces' train and test folders."""
    for split in ("train", "test"):
        shutil.copytree(faces / split, tmp_path / split)
    return tmp_path / "train", tmp_path / "test"


def test_unreadable_image_is_named_and_nothing_is_written(data, tmp_path, capfd):
    train, test = data
    out = tmp_path / "out"
    bad = train / "happy" / "happy_cut.jpg"
    truncated_jpeg(bad, train / "happy" / "happy_00000.png")
    # a real process, the image read by a DataLoader worker process: the worker's traceback stays hidden
    proc = run_script(
        "main_percept.py", args_for("main_percept.py", train, test, out, "--num_workers", 1), env=ONE_THREAD
    )
    assert_user_error(proc, f"cannot read image {bad}", "--skip_bad_images")
    bad.unlink()
    bad = train / "sad" / "sad_notes.jpg"
    text_jpeg(bad)
    proc = run_inprocess("main_concept.py", args_for("main_concept.py", train, test, out), capfd)
    assert_user_error(proc, f"cannot read image {bad}", "--skip_bad_images")
    assert_no_output(out)
    assert not (tmp_path / "cache").exists()  # no statistics cached from an incomplete pass


def test_skip_bad_images_completes_and_counts_them(data, tmp_path):
    train, test = data
    # 54 good + 2 bad training images = 7 full batches of 8, so no bad image falls in a dropped remainder
    (train / "anger" / "anger_00000.png").unlink()
    (train / "fear" / "fear_00000.png").unlink()
    truncated_jpeg(train / "happy" / "happy_cut.jpg", train / "happy" / "happy_00000.png")
    text_jpeg(train / "sad" / "sad_notes.jpg")
    text_jpeg(test / "neutral" / "neutral_notes.jpg")
    out = tmp_path / "out"
    proc = run_script(
        "main_percept.py", args_for("main_percept.py", train, test, out, "--skip_bad_images"), env=ONE_THREAD
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_log(out)[0]
    assert record["train_skipped_images"] == 2 and record["eval_skipped_images"] == 1
    assert record["eval_images"] == 21  # every readable test image was evaluated
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert "train_skipped_images" in header and "eval_skipped_images" in header


def test_empty_class_folder_and_missing_class_folders_are_named(data, tmp_path, capfd):
    train, test = data
    out = tmp_path / "out"
    (train / "zz_empty").mkdir()
    (train / "zz_empty" / "readme.txt").write_text("no image here\n")
    proc = run_inprocess("main_percept.py", args_for("main_percept.py", train, test, out), capfd)
    assert_user_error(proc, f"class folder {train / 'zz_empty'} holds no image", "add images or remove")
    shutil.rmtree(train / "zz_empty")
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(test / "happy" / "happy_00000.png", flat)
    proc = run_inprocess("main_percept.py", args_for("main_percept.py", train, flat, out), capfd)
    assert_user_error(proc, f"{flat} holds no class folder")
    assert_no_output(out)


ABSURD = [
    ("main_concept.py", "--batch_size", 0, "--batch_size must be positive, got 0"),
    ("main_concept.py", "--epochs", -1, "--epochs must be positive, got -1"),
    ("main_percept.py", "--lr", -1, "--lr must be positive, got -1.0"),
    ("main_percept.py", "--input_size", 5, "--input_size 5 is outside 16..1024"),
    ("main_percept.py", "--num_workers", -1, "--num_workers cannot be negative, got -1"),
    ("main_percept.py", "--k", 0, "--k must be at least 1, got 0"),
    ("high_confidence.py", "--percentile", 1.5, "--percentile must be in [0, 1), got 1.5"),
]


@pytest.mark.parametrize("script,flag,value,message", ABSURD, ids=[f"{s[:-3]}{f}={v}" for s, f, v, _ in ABSURD])
def test_absurd_flag_is_refused_before_anything_is_written(script, flag, value, message, faces, tmp_path, capfd):
    out = tmp_path / "out"
    args = args_for(script, faces / "train", faces / "test", out, flag, value)
    if script == "high_confidence.py":
        args = [
            "--concept_ckpt",
            tmp_path / "checkpoint-best.pth",
            "--data_path",
            faces / "train",
            "--output_dir",
            out,
            "--device",
            "cpu",
            flag,
            value,
        ]
    proc = run_inprocess(script, args, capfd)
    assert_user_error(proc, message)
    assert_no_output(out)
    assert not (tmp_path / "cache").exists()
