"""Deployment: faces found in pictures, EXIF orientation, video, ONNX export (fp32 and int8), user errors.

The Haar cascade finds about 60 % of the synthetic demo faces (README, Deployment); the scenes here are
made of synthetic faces it finds on their own, pasted into a larger picture, so that what is tested is
the crop / row / box / video logic around the real detector. The network is a random-initialised
ResNet-18 at 32 px: parity and plumbing need no trained weights.
"""

import os

import cv2
import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from conftest import assert_user_error, run_inprocess
from PIL import Image

from dataset_concept import ImageFiles, build_transform
from models.percept import PerceptNet
from models.runtime import OnnxRunner, load_runner
from tools.make_synthetic_faces import generate_split
from utils.checkpoint import save_checkpoint
from utils.faces import Face, FaceDetector, FaceTracker, crop_face
from utils.labels import CLASSES_7

SIZE = 32
FACE = 72  # pasted face side, px
SPOTS = ((24, 40), (168, 56))  # top-left corners of the two pasted faces in a 280 x 180 scene
BOX_COLOUR = (255, 140, 0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A stage-3-format checkpoint of a random ResNet-18 PerceptNet with a VAD head."""
    torch.manual_seed(0)
    model = PerceptNet(len(CLASSES_7), None, vad=True)
    meta = {
        "model": "PerceptNet+VAD",
        "backbone": "resnet18",
        "classifier_input": "scaled",
        "vad": True,
        "classes": list(CLASSES_7),
        "input_size": SIZE,
        "mean": [0.5, 0.45, 0.4],
        "std": [0.25, 0.25, 0.25],
    }
    path = tmp_path_factory.mktemp("deploy") / "checkpoint-best.pth"
    save_checkpoint(str(path), {"model": model.state_dict(), "meta": meta})
    return path


@pytest.fixture(scope="module")
def detected_faces():
    """Two synthetic 72-px faces that the cascade finds on their own (the first two of a fixed list)."""
    detector = FaceDetector()
    found = [s["image"] for s in generate_split(0, "test", 2, FACE) if len(detector(s["image"])) == 1]
    assert len(found) >= 2, "the cascade finds fewer than two of these fourteen synthetic faces"
    return found[:2]


def scene(faces, shift=0):
    """A 280 x 180 grey, lightly textured picture with the faces pasted at SPOTS (moved right by ``shift``)."""
    rng = np.random.default_rng(1)
    picture = np.clip(rng.normal(150, 6, (180, 280, 3)), 0, 255).astype(np.uint8)
    for face, (x, y) in zip(faces, SPOTS):
        picture[y : y + FACE, x + shift : x + shift + FACE] = face
    return picture


def overlap(row, spot, shift=0):
    x, y = spot[0] + shift, spot[1]
    ix = max(0, min(row.x + row.w, x + FACE) - max(row.x, x))
    iy = max(0, min(row.y + row.h, y + FACE) - max(row.y, y))
    return ix * iy / (row.w * row.h + FACE * FACE - ix * iy)


def predict(capfd, *args):
    return run_inprocess("predict.py", [*map(str, args), "--device", "cpu", "--num_workers", 0], capfd)


# --------------------------------------------------------------------------- pictures
def test_two_faces_two_rows_and_boxes_and_a_picture_without_face(checkpoint, detected_faces, tmp_path, capfd):
    Image.fromarray(scene(detected_faces)).save(tmp_path / "group.png")
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(tmp_path / "wall.png")
    csv, vis = tmp_path / "faces.csv", tmp_path / "vis"
    proc = predict(capfd, "--model", checkpoint, tmp_path / "group.png", tmp_path / "wall.png", "--output", csv,
                   "--save_vis", vis)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(csv)
    group = table[table.path.str.endswith("group.png")]
    assert list(group.face) == [0, 1] and list(group.faces) == [2, 2]
    for (_, row), spot in zip(group.iterrows(), SPOTS):  # left to right, each on its pasted face
        assert overlap(row, spot) > 0.4, (row.x, row.y, row.w, row.h, spot)
    probs = group[[f"prob_{c}" for c in CLASSES_7]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-4) and group.score.notna().all()
    assert set(group.pred) <= set(CLASSES_7) and group[["valence", "arousal", "dominance"]].notna().all().all()
    wall = table[table.path.str.endswith("wall.png")]
    assert len(wall) == 1 and wall.pred.item() == "no face" and wall.faces.item() == 0 and wall.prob_happy.isna().all()
    assert "wall.png: no face found" in proc.stdout and proc.stdout.count("group.png: face ") == 2
    drawn = np.asarray(Image.open(vis / "00000_group.png").convert("RGB"))
    assert drawn.shape == (180, 280, 3)
    for _, row in group.iterrows():  # the box's left edge is drawn in the box colour
        assert (drawn[int(row.y + row.h // 2), int(row.x)] == BOX_COLOUR).all()


def test_exif_rotated_jpeg_is_read_upright(checkpoint, detected_faces, tmp_path, capfd):
    upright = Image.fromarray(scene(detected_faces))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    assert ImageFiles([str(tmp_path / "phone.jpg")]).load_image(0).size == upright.size  # the training loader too
    proc = predict(capfd, "--model", checkpoint, tmp_path / "phone.jpg", "--output", tmp_path / "p.csv")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 2 and all(overlap(row, spot) > 0.4 for (_, row), spot in zip(table.iterrows(), SPOTS))


def test_crop_is_a_square_around_the_box_filled_at_the_edges():
    picture = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    crop = np.asarray(crop_face(picture, Face(10, 4, 8, 8), margin=0.25))  # side 12, from (8, 2)
    assert crop.shape == (12, 12, 3) and (crop == picture[2:14, 8:20]).all()
    edge = np.asarray(crop_face(picture, Face(0, 0, 4, 4), margin=0.5))  # side 8, from (-2, -2)
    assert edge.shape == (8, 8, 3) and (edge[:2, :2] == picture[0, 0]).all() and (edge[2:, 2:] == picture[:6, :6]).all()


def test_tracker_smooths_each_face_and_starts_new_tracks():
    tracker = FaceTracker(alpha=0.25)
    a, b = Face(0, 0, 10, 10), Face(50, 0, 10, 10)
    ids, out = tracker.update([a], np.array([[1.0, 0.0]]))
    assert ids == [0] and np.allclose(out, [[1.0, 0.0]])
    ids, out = tracker.update([b, Face(1, 1, 10, 10)], np.array([[0.0, 1.0], [0.0, 1.0]]))
    assert ids == [1, 0] and np.allclose(out, [[0.0, 1.0], [0.75, 0.25]])  # 0.25 * new + 0.75 * previous


# --------------------------------------------------------------------------- video
def test_video_rows_per_face_per_kept_frame_and_annotated_video(checkpoint, detected_faces, tmp_path, capfd):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (280, 180))
    for shift in range(6):
        writer.write(cv2.cvtColor(scene(detected_faces, shift), cv2.COLOR_RGB2BGR))
    writer.release()
    csv = tmp_path / "video.csv"
    proc = predict(capfd, "--model", checkpoint, path, "--every", 2, "--smooth", 0.5, "--output", csv,
                   "--save_vis", tmp_path / "vis")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(csv)
    assert list(table.frame) == [0, 0, 2, 2, 4, 4] and list(table.face) == [0, 1] * 3
    assert np.allclose(table.time_s, table.frame / 10.0) and list(table.track) == [0, 1] * 3
    for _, row in table.iterrows():
        assert overlap(row, SPOTS[row.face], row.frame) > 0.4
    assert "6 frames, 3 classified, 6 face rows" in proc.stdout and "frames/s" in proc.stdout
    out = cv2.VideoCapture(str(tmp_path / "vis" / "clip_annotated.mp4"))
    frames = []
    while True:
        ok, frame = out.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 6 and frames[0].shape == (180, 280, 3)


def test_corrupt_video_absent_camera_missing_or_bad_model(checkpoint, tmp_path, capfd):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    assert_user_error(predict(capfd, "--model", checkpoint, bad, "--output", tmp_path / "a.csv"), "cannot read video")
    assert_user_error(predict(capfd, "--model", checkpoint, "--camera", 63), "camera 63 is not available")
    assert_user_error(predict(capfd, "--model", tmp_path / "nope.pth", bad), "not found")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(2000))
    assert_user_error(predict(capfd, "--model", junk, bad), "not a readable ONNX model")
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX model that tools/export.py did not write
    value = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", value[:1], value[1:])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(proto, str(foreign))
    assert_user_error(predict(capfd, "--model", foreign, bad), "carries no CRPN metadata")
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "predictions.csv").exists()


# --------------------------------------------------------------------------- ONNX
def test_onnx_export_matches_the_checkpoint(checkpoint, faces, tmp_path, capfd):
    onnx_path = tmp_path / "model.onnx"
    proc = run_inprocess(
        "tools/export.py",
        ["--checkpoint", checkpoint, "--out", onnx_path, "--int8", "static", "--calib", faces / "test",
         "--calib_count", 14],
        capfd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runner, meta = load_runner(str(onnx_path))
    assert isinstance(runner, OnnxRunner) and meta["classes"] == list(CLASSES_7) and meta["input_size"] == SIZE
    model, _ = load_runner(str(checkpoint))
    real = torch.stack(
        [build_transform(False, SIZE, meta["mean"], meta["std"])(Image.open(p).convert("RGB"))
         for p in sorted((faces / "test" / "happy").glob("*.png"))]
    )  # fmt: skip
    for inputs in (torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)), real):
        with torch.no_grad():
            reference = model.model(inputs)
        got = runner.raw(inputs)
        assert np.abs(got["logits"] - reference["logits"].numpy()).max() <= 1e-4
        assert np.abs(got["vad"] - reference["vad"].numpy()).max() <= 1e-4
    int8 = tmp_path / "model.int8.onnx"
    assert os.path.getsize(int8) <= 0.3 * os.path.getsize(onnx_path)

    tables = {}
    for name, model_path in (("pth", checkpoint), ("onnx", onnx_path), ("int8", int8)):
        csv = tmp_path / f"{name}.csv"
        vis = ["--save_vis", tmp_path / "vis"] if name == "pth" else []  # whole-picture drawing, VAD bars included
        proc = predict(capfd, "--model", model_path, "--faces", "none", faces / "test" / "happy", "--output", csv, *vis)
        assert proc.returncode == 0, proc.stderr
        tables[name] = pd.read_csv(csv)
    probs = [f"prob_{c}" for c in CLASSES_7]
    assert list(tables["onnx"].columns) == list(tables["pth"].columns)
    assert (tables["onnx"].pred == tables["pth"].pred).all()
    assert np.abs(tables["onnx"][probs].to_numpy() - tables["pth"][probs].to_numpy()).max() <= 1e-4
    assert np.allclose(tables["int8"][probs].sum(1), 1, atol=1e-4) and len(tables["int8"]) == len(tables["pth"])
    assert len(list((tmp_path / "vis").glob("*.png"))) == len(tables["pth"])
