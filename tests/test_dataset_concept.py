"""The data layer: every format on files written in its real layout, label orders, transforms,
normalisation statistics against a hand computation, and user mistakes as one clear sentence."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dataset_concept import (
    Fer2013Csv,
    RafDbList,
    build_dataset,
    build_transform,
    collate_skip_none,
    compute_norm_stats,
    make_loader,
    norm_stats,
    resize_size,
)
from utils.errors import UserError, user_message
from utils.labels import CLASSES_7, FER2013_CODES, RAFDB_CODES, code_to_label


def write_image(path, size=(20, 16), value=None, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    array = (
        rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        if value is None
        else np.full((size[1], size[0], 3), value, dtype=np.uint8)
    )
    Image.fromarray(array).save(path)
    return array


def make_folder(root, classes=("b_class", "a_class"), per_class=2):
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(os.path.join(root, name, f"{i}.png"), seed=c * 10 + i)


def test_label_tables_map_every_official_code():
    rafdb = code_to_label(RAFDB_CODES, CLASSES_7)
    assert rafdb == {1: 6, 2: 2, 3: 1, 4: 3, 5: 5, 6: 0, 7: 4}
    fer = code_to_label(FER2013_CODES, CLASSES_7)
    assert fer == {0: 0, 1: 1, 2: 2, 3: 3, 4: 5, 5: 6, 6: 4}
    assert CLASSES_7 == sorted(CLASSES_7)


def test_folder_classes_sorted_and_transforms(tmp_path):
    make_folder(tmp_path / "train")
    ds = build_dataset("folder", str(tmp_path / "train"), "train")
    assert ds.classes == ["a_class", "b_class"]
    assert ds.targets == [0, 0, 1, 1]
    assert ds.relpath(0) == os.path.join("a_class", "0.png")
    for is_train in (True, False):
        ds.transform = build_transform(is_train, 32, [0.5] * 3, [0.25] * 3)
        item = ds[0]
        assert item["image"].shape == (3, 32, 32) and item["label"] == 0 and item["index"] == 0
    assert resize_size(224) == 256 and resize_size(48) == 55


def test_eval_transform_is_resize_then_center_crop():
    image = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3) % 251)
    out = build_transform(False, 56, [0.0] * 3, [1.0] * 3)(image)
    resized = np.array(image.resize((64, 64)))  # Resize(64) keeps a 64-px square
    offset = (64 - 56) // 2
    expected = torch.from_numpy(resized[offset : offset + 56, offset : offset + 56]).permute(2, 0, 1).float() / 255
    assert torch.allclose(out, expected)


def test_missing_and_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_dataset("folder", str(tmp_path / "nope"), "train")
    make_folder(tmp_path / "train")
    os.makedirs(tmp_path / "train" / "c_empty")
    with pytest.raises(UserError, match="c_empty"):
        build_dataset("folder", str(tmp_path / "train"), "train")


def test_ferplus_checks_class_names(tmp_path):
    make_folder(tmp_path / "train")
    with pytest.raises(UserError, match="--dataset ferplus expects"):
        build_dataset("ferplus", str(tmp_path / "train"), "train")


def test_rafdb_list_layout(tmp_path):
    root = tmp_path / "basic"
    lines = ["train_00001.jpg 1", "train_00002.jpg 6", "train_00003.jpg 4", "test_0001.jpg 7", "test_0002.jpg 3"]
    os.makedirs(root / "EmoLabel")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        name = line.split()[0].replace(".jpg", "_aligned.jpg")
        write_image(str(root / "Image" / "aligned" / name))
    train = RafDbList(str(root), "train")
    test = RafDbList(str(root), "test")
    assert train.classes == CLASSES_7
    assert [CLASSES_7[t] for t in train.targets] == ["surprise", "anger", "happy"]
    assert [CLASSES_7[t] for t in test.targets] == ["neutral", "disgust"]
    assert train.relpath(0) == os.path.join("Image", "aligned", "train_00001_aligned.jpg")
    assert train.load_image(0).size == (20, 16)
    with pytest.raises(UserError, match="list_patition_label.txt not found"):
        RafDbList(str(tmp_path), "train")


def fer_frame(n=6, usage=True, vad=True, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pixels = rng.integers(0, 256, 2304)
        row = {"emotion": i % 7, "pixels": " ".join(map(str, pixels))}
        if usage:
            row["Usage"] = ["Training", "PublicTest", "PrivateTest"][i % 3]
        if vad:
            row.update(Valence=(i % 5) - 2, Arousal=1, Dominance=-1)
        rows.append(row)
    return pd.DataFrame(rows)


def test_fer2013_usage_and_split_files_agree(tmp_path):
    frame = fer_frame(9)
    frame.to_csv(tmp_path / "fer.csv", index=False)
    for usage, split in (("Training", "train"), ("PublicTest", "eval"), ("PrivateTest", "test")):
        part = frame[frame.Usage == usage].drop(columns="Usage").assign(label_name="x")
        part.to_csv(tmp_path / f"{split}.csv", index=False)
        one = Fer2013Csv(str(tmp_path / "fer.csv"), split, vad=True)
        three = Fer2013Csv(str(tmp_path / f"{split}.csv"), split, vad=True)
        assert one.targets == three.targets
        assert np.array_equal(one.vad, three.vad)
        assert np.array_equal(np.asarray(one.load_image(1)), np.asarray(three.load_image(1)))
    train = Fer2013Csv(str(tmp_path / "fer.csv"), "train", vad=True)
    # rows 0, 3, 6 have FER codes 0 (Angry), 3 (Happy), 6 (Neutral)
    assert [train.classes[t] for t in train.targets] == ["anger", "happy", "neutral"]
    image = np.asarray(train.load_image(0))
    assert image.shape == (48, 48, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    expected = np.array(frame.pixels[0].split(), dtype=np.uint8).reshape(48, 48)
    assert np.array_equal(image[..., 0], expected)
    train.transform = build_transform(False, 32, [0.5] * 3, [0.5] * 3)
    item = train[1]
    assert torch.equal(item["vad"], torch.tensor([1.0, 1.0, -1.0]))


def test_fer2013_missing_vad_is_named_or_skipped(tmp_path):
    frame = fer_frame(6)
    frame.loc[3, "Valence"] = np.nan
    frame.to_csv(tmp_path / "fer.csv", index=False)
    with pytest.raises(UserError, match="line 5"):
        Fer2013Csv(str(tmp_path / "fer.csv"), "train", vad=True)
    ds = Fer2013Csv(str(tmp_path / "fer.csv"), "train", vad=True, skip_missing_vad=True)
    assert ds.skipped_rows == 1 and len(ds) == 1
    frame.drop(columns="Valence").to_csv(tmp_path / "novad.csv", index=False)
    with pytest.raises(UserError, match="Valence"):
        Fer2013Csv(str(tmp_path / "novad.csv"), "train", vad=True)


def test_norm_stats_match_hand_computation(tmp_path):
    arrays = [
        write_image(str(tmp_path / "d" / "a" / "0.png"), size=(20, 16), seed=1),
        write_image(str(tmp_path / "d" / "a" / "1.png"), size=(12, 30), seed=2),
        write_image(str(tmp_path / "d" / "b" / "0.png"), size=(8, 8), value=200),
    ]
    ds = build_dataset("folder", str(tmp_path / "d"), "train")
    means = np.mean([a.reshape(-1, 3).mean(0) / 255 for a in arrays], axis=0)
    stds = np.mean([(a.reshape(-1, 3) / 255).std(0) for a in arrays], axis=0)
    mean, std = compute_norm_stats(ds, batch_size=2, num_workers=0)
    assert np.allclose(mean, means, atol=1e-12) and np.allclose(std, stds, atol=1e-12)
    cached = norm_stats(ds, str(tmp_path / "cache"), num_workers=0)
    assert len(os.listdir(tmp_path / "cache")) == 1
    assert np.allclose(norm_stats(ds, str(tmp_path / "cache"), num_workers=0), cached)
    # the same paths with other pixels (a regenerated dataset) are not served the stale statistics
    write_image(str(tmp_path / "d" / "b" / "0.png"), size=(9, 8), value=10)
    fresh = norm_stats(build_dataset("folder", str(tmp_path / "d"), "train"), str(tmp_path / "cache"), num_workers=0)
    assert not np.allclose(fresh[0], cached[0]) and len(os.listdir(tmp_path / "cache")) == 2


def test_unreadable_image_named_or_skipped_and_counted(tmp_path):
    make_folder(tmp_path / "d", classes=("a", "b"), per_class=3)
    bad = tmp_path / "d" / "b" / "9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = build_dataset("folder", str(tmp_path / "d"), "train")
    ds.transform = build_transform(False, 16, [0.5] * 3, [0.5] * 3)
    with pytest.raises(UserError, match="9.png"):
        ds[len(ds) - 1]
    loader = make_loader(ds, batch_size=7, num_workers=1)
    with pytest.raises(UserError) as info:
        next(iter(loader))
    message = user_message(info.value)
    assert "9.png" in message and "Traceback" not in message and message.startswith("cannot read image")
    ds.skip_bad_images = True
    batch = collate_skip_none([ds[i] for i in range(len(ds))])
    assert batch["skipped"] == 1 and batch["image"].shape[0] == len(ds) - 1
