"""Dataset converters on tiny inputs in the real RAF-DB, FERPlus and AffectNet formats."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tools import prepare_affectnet, prepare_ferplus, prepare_rafdb
from utils.labels import AFFECTNET_CODES, CLASSES_7, CLASSES_8, FERPLUS_COLUMNS, RAFDB_CODES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(script, *args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", script), *map(str, args)], capture_output=True, text=True, cwd=REPO
    )


def assert_user_error(result, *words):
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for word in words:
        assert word in result.stderr


def assert_nothing_left(parent, name="out"):
    """Neither the output folder nor a temporary sibling of it exists."""
    if os.path.isdir(parent):
        assert [n for n in os.listdir(parent) if n == name or n.startswith(f".{name}.")] == []


def save_image(path, value, size=(12, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 7)).save(path, format="JPEG", quality=95)


def listing(root):
    """{split/class: sorted file names} of an ImageFolder output."""
    found = {}
    for split in sorted(os.listdir(root)):
        for name in sorted(os.listdir(os.path.join(root, split))):
            found[f"{split}/{name}"] = sorted(os.listdir(os.path.join(root, split, name)))
    return found


# --------------------------------------------------------------------------- RAF-DB
RAFDB_LINES = {
    "train_00001.jpg": 5,
    "train_00002.jpg": 1,
    "train_00003.jpg": 4,
    "test_0001.jpg": 7,
    "test_0002.jpg": 6,
    "test_0003.jpg": 2,
    "train_00004.jpg": 3,
}


@pytest.fixture
def rafdb_root(tmp_path):
    root = tmp_path / "RAF-DB" / "basic"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "".join(f"{name} {code}\n" for name, code in RAFDB_LINES.items())
    )
    for k, name in enumerate(RAFDB_LINES):
        save_image(str(root / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg")), 30 * k)
    return root


def test_rafdb_copies_into_canonical_class_folders(rafdb_root, tmp_path):
    out = tmp_path / "data" / "RAF-DB"
    result = run_cli("prepare_rafdb.py", "--root", rafdb_root, "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["test", "train"]
    assert sorted(os.listdir(out / "train")) == CLASSES_7 == sorted(os.listdir(out / "test"))
    found = listing(out)
    for name, code in RAFDB_LINES.items():
        split = name.split("_")[0]
        filename = name.replace(".jpg", "_aligned.jpg")
        assert filename in found[f"{split}/{RAFDB_CODES[code]}"]
        copied = (out / split / RAFDB_CODES[code] / filename).read_bytes()
        assert copied == (rafdb_root / "Image" / "aligned" / filename).read_bytes()
    assert sum(len(v) for v in found.values()) == len(RAFDB_LINES)
    assert found["train/sad"] == ["train_00001_aligned.jpg"] and found["test/neutral"] == ["test_0001_aligned.jpg"]
    assert found["train/surprise"] == ["train_00002_aligned.jpg"] and found["test/fear"] == ["test_0003_aligned.jpg"]


def test_rafdb_link(rafdb_root, tmp_path):
    out = tmp_path / "linked"
    prepare_rafdb.convert(str(rafdb_root), str(out), link=True)
    target = out / "train" / "sad" / "train_00001_aligned.jpg"
    source = rafdb_root / "Image" / "aligned" / "train_00001_aligned.jpg"
    assert target.is_symlink() or os.stat(target).st_ino == os.stat(source).st_ino


def test_rafdb_missing_list_file(tmp_path):
    (tmp_path / "basic").mkdir()
    result = run_cli("prepare_rafdb.py", "--root", tmp_path / "basic", "--out", tmp_path / "out")
    assert_user_error(result, "list_patition_label.txt")
    assert_nothing_left(tmp_path)


def test_rafdb_missing_image(rafdb_root, tmp_path):
    os.remove(rafdb_root / "Image" / "aligned" / "test_0002_aligned.jpg")
    result = run_cli("prepare_rafdb.py", "--root", rafdb_root, "--out", tmp_path / "new" / "out")
    assert_user_error(result, "test_0002_aligned.jpg")
    assert not (tmp_path / "new").exists()


def test_rafdb_bad_label_line(rafdb_root, tmp_path):
    with open(rafdb_root / "EmoLabel" / "list_patition_label.txt", "a") as handle:
        handle.write("train_00009.jpg 8\n")
    result = run_cli("prepare_rafdb.py", "--root", rafdb_root, "--out", tmp_path / "out")
    assert_user_error(result, "line 8")
    assert_nothing_left(tmp_path)


def test_rafdb_refuses_non_empty_output(rafdb_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    assert_user_error(run_cli("prepare_rafdb.py", "--root", rafdb_root, "--out", out), "--overwrite")
    assert os.listdir(out) == ["precious.txt"]
    assert run_cli("prepare_rafdb.py", "--root", rafdb_root, "--out", out, "--overwrite").returncode == 0
    assert sorted(os.listdir(out)) == ["test", "train"]


# --------------------------------------------------------------------------- FERPlus
VOTES = list(FERPLUS_COLUMNS) + ["unknown", "NF"]
# (Usage, Image name, {column: votes}, expected outcome with 8 classes)
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", {"happiness": 6, "neutral": 4}, "train/happy"),
    ("Training", "", {"neutral": 10}, "no image name"),
    ("PublicTest", "fer0000002.png", {"neutral": 4, "happiness": 4, "surprise": 2}, "tie"),
    ("PrivateTest", "fer0000003.png", {"unknown": 6, "fear": 4}, "unknown"),
    ("Training", "fer0000004.png", {"NF": 10}, "NF"),
    ("PublicTest", "fer0000005.png", {"contempt": 5, "anger": 3, "disgust": 2}, "val/contempt"),
    ("PrivateTest", "fer0000006.png", {"sadness": 7, "neutral": 3}, "test/sad"),
    ("Training", "fer0000007.png", {"anger": 5, "disgust": 3, "fear": 2}, "train/anger"),
    ("Training", "fer0000008.png", {"fear": 3, "surprise": 3, "contempt": 3, "NF": 1}, "tie"),
    ("PrivateTest", "fer0000009.png", {"surprise": 9, "unknown": 1}, "test/surprise"),
]


def ferplus_files(folder, rows=FERPLUS_ROWS, bad_pixels_row=None):
    """fer2013.csv (row i has every pixel = 10 * i) and an aligned fer2013new.csv."""
    os.makedirs(folder, exist_ok=True)
    fer = pd.DataFrame(
        {
            "emotion": [0] * len(rows),
            "pixels": [" ".join([str(10 * i)] * 2304) for i in range(len(rows))],
            "Usage": [r[0] for r in rows],
        }
    )
    if bad_pixels_row is not None:
        fer.loc[bad_pixels_row, "pixels"] = "1 2 3"
    new = pd.DataFrame(
        [{"Usage": r[0], "Image name": r[1], **{c: r[2].get(c, 0) for c in VOTES}} for r in rows],
        columns=["Usage", "Image name"] + VOTES,
    )
    fer_path, new_path = os.path.join(folder, "fer2013.csv"), os.path.join(folder, "fer2013new.csv")
    fer.to_csv(fer_path, index=False)
    new.to_csv(new_path, index=False)
    return fer_path, new_path


def test_ferplus_header_matches_the_real_file():
    assert VOTES == [
        "neutral",
        "happiness",
        "surprise",
        "sadness",
        "anger",
        "disgust",
        "fear",
        "contempt",
        "unknown",
        "NF",
    ]


@pytest.mark.parametrize("num_classes", [8, 7])
def test_ferplus_majority_vote(tmp_path, num_classes):
    fer_path, new_path = ferplus_files(tmp_path / "in")
    out = tmp_path / "out"
    result = run_cli(
        "prepare_ferplus.py", "--fer2013", fer_path, "--ferplus", new_path, "--out", out, "--classes", num_classes
    )
    assert result.returncode == 0, result.stderr
    classes = CLASSES_8 if num_classes == 8 else CLASSES_7
    assert sorted(os.listdir(out)) == ["test", "train", "val"]
    for split in ("train", "val", "test"):
        assert sorted(os.listdir(out / split)) == classes
    expected = {}
    for i, (_, name, _, outcome) in enumerate(FERPLUS_ROWS):
        if "/" in outcome and not (num_classes == 7 and outcome.endswith("contempt")):
            expected.setdefault(outcome, []).append(name)
            pixels = np.asarray(Image.open(out / outcome / name))
            assert pixels.shape == (48, 48) and (pixels == 10 * i).all()
    found = {k: v for k, v in listing(out).items() if v}
    assert found == expected
    assert "tie 2" in result.stdout and "unknown 1" in result.stdout and "NF 1" in result.stdout
    assert "no image name 1" in result.stdout
    assert ("contempt 1" in result.stdout) == (num_classes == 7)


def test_ferplus_majority_label_unit():
    def votes(**counts):
        return [counts.get(c, 0) for c in VOTES]

    assert prepare_ferplus.majority_label(votes(fear=4, anger=3), CLASSES_7) == ("fear", None)
    assert prepare_ferplus.majority_label(votes(fear=4, anger=4), CLASSES_8) == (None, "tie")
    assert prepare_ferplus.majority_label(votes(NF=5, anger=4), CLASSES_8) == (None, "NF")
    assert prepare_ferplus.majority_label(votes(contempt=5), CLASSES_8) == ("contempt", None)
    assert prepare_ferplus.majority_label(votes(contempt=5), CLASSES_7) == (None, "contempt")
    assert prepare_ferplus.majority_label(votes(), CLASSES_8) == (None, "tie")


def test_ferplus_missing_file(tmp_path):
    fer_path, _ = ferplus_files(tmp_path / "in")
    result = run_cli(
        "prepare_ferplus.py", "--fer2013", fer_path, "--ferplus", tmp_path / "nope.csv", "--out", tmp_path / "out"
    )
    assert_user_error(result, "nope.csv")
    assert_nothing_left(tmp_path)


def test_ferplus_misaligned_rows(tmp_path):
    fer_path, _ = ferplus_files(tmp_path / "a")
    _, new_path = ferplus_files(tmp_path / "b", rows=FERPLUS_ROWS[:-1])
    result = run_cli("prepare_ferplus.py", "--fer2013", fer_path, "--ferplus", new_path, "--out", tmp_path / "out")
    assert_user_error(result, "align")
    assert_nothing_left(tmp_path)


def test_ferplus_bad_pixels_mid_write_leaves_nothing(tmp_path):
    fer_path, new_path = ferplus_files(tmp_path / "in", bad_pixels_row=9)
    result = run_cli(
        "prepare_ferplus.py", "--fer2013", fer_path, "--ferplus", new_path, "--out", tmp_path / "deep" / "out"
    )
    assert_user_error(result, "line 11")
    assert not (tmp_path / "deep").exists()


# --------------------------------------------------------------------------- AffectNet
# (id, code as stored, split); codes 8, 9, 10 are dropped, 7 (contempt) only with 7 classes.
NPY_ITEMS = [
    ("0", "1", "train"),
    ("1", 6, "train"),
    ("2", "7", "train"),
    ("3", "8", "train"),
    ("4", 9, "train"),
    ("5", "10", "train"),
    ("6", "0", "val"),
    ("7", 3, "val"),
    ("8", "5", "val"),
    ("9", "4", "val"),
    ("10", "2", "val"),
]


def affectnet_npy(root):
    for k, (image_id, code, split) in enumerate(NPY_ITEMS):
        base = os.path.join(root, f"{split}_set")
        save_image(os.path.join(base, "images", f"{image_id}.jpg"), 20 * k)
        os.makedirs(os.path.join(base, "annotations"), exist_ok=True)
        np.save(os.path.join(base, "annotations", f"{image_id}_exp.npy"), np.array(code))
        np.save(os.path.join(base, "annotations", f"{image_id}_val.npy"), np.array("0.25"))
    return root


def expected_npy(num_classes):
    classes = CLASSES_8 if num_classes == 8 else CLASSES_7
    expected = {}
    for image_id, code, split in NPY_ITEMS:
        name = AFFECTNET_CODES.get(int(code))
        if name in classes:
            expected.setdefault(f"{split}/{name}", []).append(f"{image_id}.jpg")
    return {k: sorted(v) for k, v in expected.items()}


@pytest.mark.parametrize("num_classes", [8, 7])
def test_affectnet_npy_form(tmp_path, num_classes):
    root = affectnet_npy(str(tmp_path / "AffectNet"))
    out = tmp_path / "out"
    result = run_cli("prepare_affectnet.py", "--root", root, "--out", out, "--classes", num_classes)
    assert result.returncode == 0, result.stderr
    classes = CLASSES_8 if num_classes == 8 else CLASSES_7
    assert sorted(os.listdir(out)) == ["train", "val"]
    assert sorted(os.listdir(out / "train")) == classes == sorted(os.listdir(out / "val"))
    assert {k: v for k, v in listing(out).items() if v} == expected_npy(num_classes)
    assert "npy" in result.stdout
    assert "none (8) 1" in result.stdout and "uncertain (9) 1" in result.stdout and "no face (10) 1" in result.stdout
    assert ("contempt 1" in result.stdout) == (num_classes == 7)
    copied = (out / "train" / "happy" / "0.jpg").read_bytes()
    assert copied == (tmp_path / "AffectNet" / "train_set" / "images" / "0.jpg").read_bytes()


def test_affectnet_npy_missing_image_and_skip(tmp_path):
    root = affectnet_npy(str(tmp_path / "AffectNet"))
    os.remove(os.path.join(root, "val_set", "images", "7.jpg"))
    result = run_cli("prepare_affectnet.py", "--root", root, "--out", tmp_path / "out")
    assert_user_error(result, "7.jpg", "--skip_missing")
    assert_nothing_left(tmp_path)
    result = run_cli("prepare_affectnet.py", "--root", root, "--out", tmp_path / "out", "--skip_missing")
    assert result.returncode == 0, result.stderr
    assert "missing image 1" in result.stdout
    assert os.listdir(tmp_path / "out" / "val" / "surprise") == []


# (subDirectory_filePath, face box, expression, split)
CSV_ITEMS = [
    ("100/a.jpg", (2, 3, 20, 15), 1, "train"),
    ("100/b.jpg", (0, 0, 30, 30), 7, "train"),
    ("101/c.png", (5, 5, 10, 12), 8, "train"),
    ("101/d.jpg", (1, 1, 8, 9), 6, "train"),
    ("102/e.jpg", (4, 2, 16, 16), 0, "val"),
    ("102/f.jpg", (0, 0, 10, 10), 10, "val"),
    ("103/g.jpg", (3, 3, 12, 14), 4, "val"),
]


def affectnet_csv(root, validation_header=False, code_override=None):
    frames = {"train": [], "val": []}
    for k, (rel, (x, y, w, h), code, split) in enumerate(CSV_ITEMS):
        path = os.path.join(root, "Manually_Annotated_Images", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("RGB", (40, 36), (10 * k, 100, 50)).save(path)
        if code_override and rel in code_override:
            code = code_override[rel]
        frames[split].append([rel, x, y, w, h, "1.0;2.0", code, 0.1, -0.2])
    columns = prepare_affectnet.CSV_COLUMNS
    pd.DataFrame(frames["train"], columns=columns).to_csv(os.path.join(root, "training.csv"), index=False)
    pd.DataFrame(frames["val"], columns=columns).to_csv(
        os.path.join(root, "validation.csv"), index=False, header=validation_header
    )
    return root


@pytest.mark.parametrize("validation_header", [True, False])
def test_affectnet_csv_form_with_crop(tmp_path, validation_header):
    root = affectnet_csv(str(tmp_path / "AffectNet"), validation_header)
    out = tmp_path / "out"
    result = run_cli("prepare_affectnet.py", "--root", root, "--out", out, "--classes", 7, "--crop")
    assert result.returncode == 0, result.stderr
    assert "csv" in result.stdout
    found = {k: v for k, v in listing(out).items() if v}
    assert found == {
        "train/happy": ["100_a.jpg"],
        "train/anger": ["101_d.jpg"],
        "val/neutral": ["102_e.jpg"],
        "val/fear": ["103_g.jpg"],
    }
    for rel, (_x, _y, w, h), code, split in CSV_ITEMS:
        name = AFFECTNET_CODES.get(code)
        flat = rel.replace("/", "_")
        if f"{split}/{name}" in found:
            assert Image.open(out / split / name / flat).size == (w, h)


def test_affectnet_csv_form_8_classes_without_crop(tmp_path):
    root = affectnet_csv(str(tmp_path / "AffectNet"))
    out = tmp_path / "out"
    prepare_affectnet.convert(root, str(out), num_classes=8)
    found = {k: v for k, v in listing(out).items() if v}
    assert found == {
        "train/happy": ["100_a.jpg"],
        "train/contempt": ["100_b.jpg"],
        "train/anger": ["101_d.jpg"],
        "val/neutral": ["102_e.jpg"],
        "val/fear": ["103_g.jpg"],
    }
    assert Image.open(out / "train" / "happy" / "100_a.jpg").size == (40, 36)


def test_affectnet_bad_code(tmp_path):
    root = affectnet_csv(str(tmp_path / "AffectNet"), code_override={"102/e.jpg": 11})
    result = run_cli("prepare_affectnet.py", "--root", root, "--out", tmp_path / "out")
    assert_user_error(result, "validation.csv", "11")
    assert_nothing_left(tmp_path)


def test_affectnet_unreadable_image_mid_write_leaves_nothing(tmp_path):
    root = affectnet_csv(str(tmp_path / "AffectNet"))
    with open(os.path.join(root, "Manually_Annotated_Images", "103", "g.jpg"), "wb") as handle:
        handle.write(b"not a jpeg")
    result = run_cli("prepare_affectnet.py", "--root", root, "--out", tmp_path / "out", "--crop")
    assert_user_error(result, "g.jpg")
    assert_nothing_left(tmp_path)


def test_affectnet_missing_root_and_unknown_layout(tmp_path):
    assert_user_error(run_cli("prepare_affectnet.py", "--root", tmp_path / "nope", "--out", tmp_path / "out"), "nope")
    (tmp_path / "empty").mkdir()
    assert_user_error(
        run_cli("prepare_affectnet.py", "--root", tmp_path / "empty", "--out", tmp_path / "out"), "train_set"
    )
    assert_nothing_left(tmp_path)
