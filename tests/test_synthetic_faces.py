"""The embedded synthetic face dataset: layouts, determinism, label mappings, VAD consistency."""

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from tools import make_synthetic_faces as msf
from utils.errors import UserError
from utils.labels import CLASSES_7, FER2013_CODES, RAFDB_CODES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(size=48, train_per_class=10, test_per_class=4, fer_train_per_class=10, fer_test_per_class=4)
FER_COLUMNS = ["emotion", "pixels", "Usage", "Valence", "Arousal", "Dominance"]
SPLIT_FILES = {"Training": "train.csv", "PublicTest": "public_test.csv", "PrivateTest": "private_test.csv"}
# DESIGN's expected VAD signs per class (+, -, 0 near zero, None free), in V, A, D order.
SIGNS = {
    "anger": ("-", "+", None),
    "disgust": ("-", "+", "+"),
    "fear": ("-", None, "-"),
    "happy": ("+", "+", "+"),
    "sad": ("-", "-", "-"),
    "surprise": (None, "+", "-"),
    "neutral": ("0", "0", None),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "faces"
    summary = msf.make_dataset(str(out), seed=0, rafdb=True, fer2013=True, **SMALL)
    return out, summary


def all_files(root):
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = handle.read()
    return found


def test_imagefolder_layout_and_counts(dataset):
    out, summary = dataset
    for split, per_class in (("train", SMALL["train_per_class"]), ("test", SMALL["test_per_class"])):
        assert sorted(os.listdir(out / split)) == CLASSES_7
        for name in CLASSES_7:
            files = sorted(os.listdir(out / split / name))
            assert files == [f"{name}_{i:05d}.png" for i in range(per_class)]
        folder = ImageFolder(str(out / split))
        assert folder.classes == CLASSES_7
        assert len(folder) == 7 * per_class
        assert np.bincount(folder.targets).tolist() == [per_class] * 7
        image = Image.open(folder.samples[0][0])
        assert image.mode == "RGB" and image.size == (SMALL["size"], SMALL["size"])
    assert summary["counts"]["train"] == 70 and summary["counts"]["test"] == 28
    meta = pd.read_csv(out / "metadata.csv")
    images = meta[meta["split"].isin(["train", "test"])]
    assert len(images) == 98
    assert ((images["intensity"] >= 0.15) & (images["intensity"] <= 1.0)).all()
    assert all(os.path.isfile(out / p) for p in images["path"])
    assert (images["class"] == [CLASSES_7[i] for i in images["label"]]).all()
    # identities are drawn independently of the label: some identity shows several classes
    assert images.groupby("identity")["class"].nunique().max() > 1


def test_render_face_shapes_and_classes():
    identity = msf.sample_identity(np.random.default_rng(3))
    rgb = msf.render_face("happy", 0.9, identity, np.random.default_rng(1), size=40)
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    grey = msf.render_face(3, 0.9, identity, np.random.default_rng(1), size=48, grey=True)
    assert grey.shape == (48, 48) and grey.dtype == np.uint8
    # same identity and nuisance stream, different expression: the pictures differ
    faces = [msf.render_face(name, 1.0, identity, np.random.default_rng(5), size=64) for name in CLASSES_7]
    for i in range(len(faces)):
        for j in range(i + 1, len(faces)):
            assert np.abs(faces[i].astype(int) - faces[j].astype(int)).sum() > 0, (CLASSES_7[i], CLASSES_7[j])
    assert set(msf.EXPRESSIONS) == set(CLASSES_7) == set(msf.VAD)


def test_deterministic_for_a_seed(tmp_path, dataset):
    out, _ = dataset
    again = tmp_path / "again"
    msf.make_dataset(str(again), seed=0, rafdb=True, fer2013=True, **SMALL)
    first, second = all_files(out), all_files(again)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)

    other = tmp_path / "other"
    msf.make_dataset(str(other), seed=1, rafdb=True, fer2013=True, **SMALL)
    third = all_files(other)
    assert third.keys() == first.keys()
    pngs = [k for k in first if k.endswith(".png")]
    assert sum(first[k] != third[k] for k in pngs) == len(pngs)
    assert first[os.path.join("fer2013", "fer2013_vad.csv")] != third[os.path.join("fer2013", "fer2013_vad.csv")]


def test_rerun_replaces_own_output_and_refuses_foreign_folder(tmp_path):
    out = tmp_path / "faces"
    msf.make_dataset(str(out), train_per_class=1, test_per_class=1, size=32)
    msf.make_dataset(str(out), train_per_class=2, test_per_class=1, size=32)  # earlier output: replaced
    assert len(os.listdir(out / "train" / "happy")) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError):
        msf.make_dataset(str(foreign), train_per_class=1, test_per_class=1, size=32)
    assert os.listdir(foreign) == ["notes.txt"]


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(msf, "_write_fer2013", broken)
    out = tmp_path / "nested" / "faces"
    with pytest.raises(RuntimeError):
        msf.make_dataset(str(out), train_per_class=1, test_per_class=1, size=32, fer2013=True)
    assert os.listdir(tmp_path) == []


def test_rafdb_layout_maps_back_to_classes(dataset):
    out, _ = dataset
    root = out / "rafdb"
    lines = (root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert len(lines) == 7 * (SMALL["train_per_class"] + SMALL["test_per_class"])
    pngs = {
        split: [
            (np.asarray(Image.open(path), np.float32), CLASSES_7[label])
            for path, label in ImageFolder(str(out / split)).samples
        ]
        for split in ("train", "test")
    }
    seen = {"train": [], "test": []}
    for line in lines:
        match = re.fullmatch(r"(train_\d{5}|test_\d{4})\.jpg ([1-7])", line)
        assert match, line
        stem, code = match.group(1), int(match.group(2))
        split = stem.split("_")[0]
        seen[split].append(RAFDB_CODES[code])
        image = Image.open(root / "Image" / "aligned" / f"{stem}_aligned.jpg")
        assert image.format == "JPEG" and image.mode == "RGB"
        jpeg = np.asarray(image, np.float32)
        # the JPEG is one of the ImageFolder faces: its nearest PNG carries the class its code names
        distances = [np.abs(jpeg - png).mean() for png, _ in pngs[split]]
        nearest, second = np.argsort(distances)[:2]
        assert distances[nearest] < 12.0 and distances[nearest] < 0.6 * distances[second]
        assert pngs[split][nearest][1] == RAFDB_CODES[code]
    for split, per_class in (("train", SMALL["train_per_class"]), ("test", SMALL["test_per_class"])):
        assert sorted(seen[split]) == sorted(CLASSES_7 * per_class)


def test_rafdb_layout_converts_back_to_the_imagefolder(dataset, tmp_path):
    from tools.prepare_rafdb import convert

    out, _ = dataset
    counts = convert(str(out / "rafdb"), str(tmp_path / "converted"))
    assert counts == {(split, name): n for split, n in (("train", 10), ("test", 4)) for name in CLASSES_7}
    assert ImageFolder(str(tmp_path / "converted" / "train")).classes == CLASSES_7


def test_fer2013_csv_format(dataset):
    out, _ = dataset
    frame = pd.read_csv(out / "fer2013" / "fer2013_vad.csv")
    assert list(frame.columns) == FER_COLUMNS
    counts = {
        "Training": SMALL["fer_train_per_class"],
        "PublicTest": SMALL["fer_test_per_class"],
        "PrivateTest": SMALL["fer_test_per_class"],
    }
    assert frame["Usage"].value_counts().to_dict() == {k: 7 * v for k, v in counts.items()}
    assert list(frame["Usage"].drop_duplicates()) == ["Training", "PublicTest", "PrivateTest"]
    for usage, per_class in counts.items():
        assert sorted(frame.loc[frame["Usage"] == usage, "emotion"]) == sorted(list(range(7)) * per_class)
    for text in frame["pixels"]:
        values = np.array(text.split(), dtype=np.int64)
        assert values.size == 48 * 48 and values.min() >= 0 and values.max() <= 255
    assert frame["pixels"].nunique() == len(frame)
    for column in ("Valence", "Arousal", "Dominance"):
        assert frame[column].dtype.kind == "i"
        assert frame[column].between(-2, 2).all()


def test_fer2013_vad_signs_follow_the_class(dataset):
    out, _ = dataset
    frame = pd.read_csv(out / "fer2013" / "fer2013_vad.csv")
    frame["name"] = frame["emotion"].map(FER2013_CODES)
    means = frame.groupby("name")[["Valence", "Arousal", "Dominance"]].mean()
    assert means.loc["happy", "Valence"] > 0 > means.loc["sad", "Valence"]
    for name, signs in SIGNS.items():
        for column, sign in zip(("Valence", "Arousal", "Dominance"), signs):
            value = means.loc[name, column]
            if sign == "+":
                assert value > 0.3, (name, column, value)
            elif sign == "-":
                assert value < -0.3, (name, column, value)
            elif sign == "0":
                assert abs(value) < 0.5, (name, column, value)
    # stronger expressions get larger magnitudes
    meta = pd.read_csv(out / "metadata.csv")
    fer = meta[meta["path"].str.startswith("fer2013/")].copy()
    lines = fer["path"].str.split(":").str[1].astype(int)
    fer["valence"] = frame["Valence"].to_numpy()[lines.to_numpy() - 2]
    emotional = fer[fer["class"].isin(["happy", "sad", "fear", "anger", "disgust"])]
    strong = emotional[emotional["intensity"] > 0.7]["valence"].abs().mean()
    weak = emotional[emotional["intensity"] < 0.45]["valence"].abs().mean()
    assert strong > weak


def test_fer2013_split_files_hold_the_same_rows(dataset):
    out, _ = dataset
    frame = pd.read_csv(out / "fer2013" / "fer2013_vad.csv")
    for usage, filename in SPLIT_FILES.items():
        split = pd.read_csv(out / "fer2013" / "split" / filename)
        assert "Usage" not in split.columns and "label_name" in split.columns
        assert set(split.columns) == set(FER_COLUMNS) - {"Usage"} | {"label_name"}
        expected = frame[frame["Usage"] == usage].drop(columns="Usage").reset_index(drop=True)
        pd.testing.assert_frame_equal(split.drop(columns="label_name")[list(expected.columns)], expected)
        assert (split["label_name"] == split["emotion"].map(FER2013_CODES)).all()


def test_logreg_yardstick_runs():
    train = msf.generate_split(0, "train", 4, 32)
    test = msf.generate_split(0, "test", 2, 32)
    scores = msf.logreg_accuracy(train, test, side=16)
    assert scores and all(0.0 <= v <= 1.0 for v in scores.values())


def test_cli_bad_flag_is_one_line_error(tmp_path):
    out = tmp_path / "faces"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "make_synthetic_faces.py"), "--out", str(out), "--size", "8"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_writes_dataset(tmp_path):
    out = tmp_path / "faces"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "make_synthetic_faces.py"),
            "--out",
            str(out),
            "--size",
            "32",
            "--train_per_class",
            "1",
            "--test_per_class",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out / "train")) == CLASSES_7
    assert (out / msf.MARKER).is_file()
