"""Every reader on random and corrupted files: images, FER2013 CSVs, RAF-DB list files, checkpoints and both
kinds of weight file. Each file is read in this process; the only exception allowed is the repository's
UserError with a one-line message naming the file, and nothing is written next to the inputs."""

import io
import os
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_concept import RAFDB_LIST, Fer2013Csv, FolderFaces, read_norm_cache, read_rafdb_list
from models.backbones import load_torchvision_weights, load_vggface2_weights, msceleb_resnet18, vggface2_resnet50
from utils.checkpoint import load_checkpoint
from utils.errors import UserError


def mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    """``count`` corrupted versions of ``data``: flipped bytes, cuts, inserted and deleted runs, random files."""
    out = [b"", data[:1], data[: len(data) // 2]]
    while len(out) < count:
        kind = rng.randrange(5)
        buf = bytearray(data)
        if kind == 0:  # a few random bytes replaced
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif kind == 1:  # cut anywhere
            buf = buf[: rng.randrange(1, len(buf))]
        elif kind == 2:  # garbage inserted
            at = rng.randrange(len(buf))
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == 3:  # a run deleted
            at = rng.randrange(len(buf))
            del buf[at : at + rng.randint(1, 64)]
        else:  # random bytes, sometimes behind the real header
            noise = bytes(rng.randrange(256) for _ in range(rng.randint(1, 2048)))
            buf = bytearray(data[: rng.randint(0, 16)] + noise)
        out.append(bytes(buf))
    return out


WRITTEN = set()  # every input file the test wrote


def write(path, data: bytes):
    path.write_bytes(data)
    WRITTEN.add(str(path))
    return path


def check_reader(read, path, outcomes):
    """Call ``read()``: success, or a UserError whose one-line message names ``path``."""
    try:
        read()
        outcomes["read"] += 1
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and os.path.basename(str(path)) in message, (path, message)
        outcomes["refused"] += 1


def image_bytes(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (36, 36, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def fer_csv_bytes() -> bytes:
    rng = np.random.default_rng(1)
    rows = ["emotion,pixels,Usage"]
    for label in range(4):
        rows.append(f"{label},{' '.join(map(str, rng.integers(0, 256, 2304)))},Training")
    return ("\n".join(rows) + "\n").encode()


def rafdb_list_bytes() -> bytes:
    return b"train_00001.jpg 1\ntrain_00002.jpg 4\ntest_0001.jpg 7\ntest_0002.jpg 3\n"


def test_every_reader_survives_corrupted_files(tmp_path, capfd):
    rng = random.Random(0)
    outcomes = {"read": 0, "refused": 0}
    inputs = set()

    # images: 4 formats x 20, read through the dataset's loader
    folder = tmp_path / "images" / "happy"
    folder.mkdir(parents=True)
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif")):
        for i, data in enumerate(mutations(image_bytes(fmt), rng, 20)):
            write(folder / f"{fmt}{i}.{ext}", data)
    faces = FolderFaces(str(tmp_path / "images"))
    for index in range(len(faces)):
        check_reader(lambda index=index: faces.load_image(index), faces.relpath(index), outcomes)

    # FER2013 CSVs: 40, each read whole and every row decoded
    for i, data in enumerate(mutations(fer_csv_bytes(), rng, 40)):
        path = write(tmp_path / f"fer{i}.csv", data)

        def read_csv(path=path):
            rows = Fer2013Csv(str(path), "train")
            for index in range(len(rows)):
                rows.load_image(index)

        check_reader(read_csv, path, outcomes)

    # RAF-DB list files: 30
    for i, data in enumerate(mutations(rafdb_list_bytes(), rng, 30)):
        root = tmp_path / f"rafdb{i}"
        (root / "EmoLabel").mkdir(parents=True)
        write(root / RAFDB_LIST, data)
        check_reader(lambda root=root: read_rafdb_list(str(root)), RAFDB_LIST, outcomes)

    # checkpoints (torch.save zip and legacy formats): 40
    state = {"model": {"w": torch.arange(64.0)}, "epoch": 3, "meta": {"classes": ["a", "b"]}}
    for legacy in (False, True):
        buffer = io.BytesIO()
        torch.save(state, buffer, _use_new_zipfile_serialization=not legacy)
        for i, data in enumerate(mutations(buffer.getvalue(), rng, 20)):
            path = write(tmp_path / f"checkpoint{int(legacy)}_{i}.pth", data)
            check_reader(lambda path=path: load_checkpoint(str(path)), path, outcomes)

    # weight files: the VGGFace2 pickle (25) and the torchvision-layout .pth (25)
    resnet50, resnet18 = vggface2_resnet50(), msceleb_resnet18()
    pkl = pickle.dumps({"conv1.weight": np.ones((4, 3), np.float32), "bn1.running_mean": np.zeros(4)}, protocol=2)
    for i, data in enumerate(mutations(pkl, rng, 25)):
        path = write(tmp_path / f"weights{i}.pkl", data)
        check_reader(lambda path=path: load_vggface2_weights(resnet50, str(path)), path, outcomes)
    buffer = io.BytesIO()
    torch.save({"state_dict": {"conv1.weight": torch.ones(2, 3)}}, buffer)
    for i, data in enumerate(mutations(buffer.getvalue(), rng, 25)):
        path = write(tmp_path / f"weights{i}.pth", data)
        check_reader(lambda path=path: load_torchvision_weights(resnet18, str(path)), path, outcomes)

    # normalisation caches: a damaged one is ignored (recomputed), never an error
    cache = b'{"root": "/data", "images": 4, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}'
    assert read_norm_cache(str(write(tmp_path / "norm.json", cache))) == ([0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    for i, data in enumerate(mutations(cache, rng, 20)):
        saved = read_norm_cache(str(write(tmp_path / f"norm{i}.json", data)))
        assert saved is None or (len(saved[0]) == 3 and len(saved[1]) == 3)

    assert sum(outcomes.values()) >= 200 and outcomes["refused"] > 150, outcomes
    # nothing written beside the inputs
    for folder, _, names in os.walk(tmp_path):
        inputs.update(os.path.join(folder, n) for n in names)
    assert inputs == WRITTEN, sorted(inputs - WRITTEN)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


@pytest.mark.parametrize("size", [0, 3])
def test_empty_and_tiny_checkpoints_are_corrupt(tmp_path, size):
    path = tmp_path / "checkpoint-last.pth"
    path.write_bytes(b"PK\x03"[:size])
    with pytest.raises(UserError, match="is corrupt or truncated"):
        load_checkpoint(str(path))
