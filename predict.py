"""Predict the emotion category (and Valence/Arousal/Dominance for a multi-task model) of the faces in
photos, videos or a camera.

    python predict.py --model output/percept/checkpoint-best.pth photo.jpg photos/ --output faces.csv --save_vis vis/
    python predict.py --model model.onnx clip.mp4 --every 2 --smooth 0.5 --save_vis vis/   # exported model
    python predict.py --model CKPT --camera 0 --max_frames 300 --save_vis vis/
    python predict.py --model CKPT --faces none crops/      # dataset crops (RAF-DB aligned, FER2013, synthetic)

Needs only the perceptual checkpoint, or its ONNX export (tools/export.py): class names, input size and
normalisation travel inside it. By default every picture's faces are found (OpenCV's Haar cascade,
utils/faces.py), each is cropped as training images are (square, with --margin) and classified, and the
CSV gets one row per face (box, detector score, class, probabilities[, valence, arousal, dominance]); a
picture without a face gets one row saying so. Videos (and --camera) get one row per face per kept frame,
with the frame's time; --save_vis writes each picture with its boxes and labels, and an annotated video.
``--faces none`` classifies each whole picture as a face crop, as before: one row per picture.
Pictures are turned upright by their EXIF orientation.
"""

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dataset_concept import ImageFiles, build_transform, make_loader
from models.runtime import load_runner
from utils.checkpoint import atomic_path, write_csv
from utils.distributed import resolve_device
from utils.errors import UserError, run_main
from utils.faces import (
    DEFAULT_DETECT_SIDE,
    DEFAULT_MARGIN,
    DEFAULT_MIN_FACE,
    FaceDetector,
    FaceTracker,
    annotate,
    crop_face,
)
from utils.figures import new_figure, save_figure
from utils.labels import VAD_NAMES
from utils.log import progress
from utils.video import FrameSource, VideoOut, is_video

NO_FACE = "no face"
LEADING = ("path", "frame", "time_s", "faces", "face", "track", "x", "y", "w", "h", "score", "pred")
INTEGERS = ("frame", "faces", "face", "track", "x", "y", "w", "h")


def table(records) -> pd.DataFrame:
    """The CSV: identification and box first, then the prediction; whole numbers stay whole where a row
    without a face leaves them empty."""
    frame = pd.DataFrame(records)
    columns = [c for c in LEADING if c in frame] + [c for c in frame if c not in LEADING]
    frame = frame[columns]
    for column in INTEGERS:
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


def get_args_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("inputs", nargs="*", help="image files, folders (searched for images) and/or video files")
    parser.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        default=os.path.join("output", "percept", "checkpoint-best.pth"),
        help="a stage-3 checkpoint-best.pth, or an .onnx written by tools/export.py (run with onnxruntime)",
    )
    parser.add_argument("--output", default="predictions.csv", help="CSV to write")
    parser.add_argument("--save_vis", default="", help="folder for one picture per image and one video per video")
    parser.add_argument(
        "--faces",
        choices=("haar", "none"),
        default="haar",
        help="haar: find the faces in each picture; none: each picture is already a face crop (datasets)",
    )
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="crop border, per side, x box side")
    parser.add_argument("--detect_side", type=int, default=DEFAULT_DETECT_SIDE, help="short side detection runs at")
    parser.add_argument("--min_face", type=int, default=DEFAULT_MIN_FACE, help="smallest face, px at --detect_side")
    parser.add_argument("--camera", type=int, default=None, help="read this camera (OpenCV index) instead of files")
    parser.add_argument("--every", type=int, default=1, help="video: classify every N-th frame")
    parser.add_argument(
        "--smooth",
        type=float,
        default=1.0,
        help="video: weight of the new frame in each face's moving average (1: off)",
    )
    parser.add_argument("--max_frames", type=int, default=0, help="video/camera: stop after N frames (0: no limit)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    parser.add_argument("--skip_bad_images", action="store_true")
    return parser


def check_args(args):
    if args.batch_size < 1 or args.num_workers < 0:
        raise UserError("--batch_size must be positive and --num_workers not negative.")
    if args.every < 1 or args.max_frames < 0 or not 0 <= args.margin <= 2:
        raise UserError("--every must be at least 1, --max_frames not negative and --margin in [0, 2].")
    if not args.inputs and args.camera is None:
        raise UserError("give image files, folders or videos to read, or --camera N.")
    videos = [item for item in args.inputs if is_video(item)]
    if args.faces == "none" and (videos or args.camera is not None):
        raise UserError(
            "--faces none classifies whole pictures; videos and --camera need face detection (--faces haar)."
        )


# --------------------------------------------------------------------------- whole pictures (--faces none)
def run(runner, loader):
    """(dataset index, probabilities, vad or None) for every readable picture of ``loader``."""
    rows = []
    for batch in loader:
        batch.pop("skipped", None)
        if "image" not in batch:
            continue
        probs, vad = runner(batch["image"])
        for row, index in enumerate(batch["index"].tolist()):
            rows.append((index, probs[row], None if vad is None else vad[row]))
    return rows


def draw(path, image, classes, probs, vad):
    panels = 3 if vad is not None else 2
    fig, axes = new_figure(1, panels, figsize=(3.2 * panels, 3), gridspec_kw={"width_ratios": [1.1, 1.4, 1][:panels]})
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].axis("off")
    best = int(probs.argmax())
    axes[0].set_title(f"{classes[best]} ({probs[best]:.2f})")
    colours = ["tab:orange" if i == best else "tab:blue" for i in range(len(classes))]
    axes[1].barh(range(len(classes)), probs, color=colours)
    axes[1].set_yticks(range(len(classes)), classes)
    axes[1].set_xlim(0, 1)
    axes[1].invert_yaxis()
    axes[1].set_xlabel("probability")
    if vad is not None:
        axes[2].bar(range(3), vad, color=["tab:green" if v >= 0 else "tab:red" for v in vad])
        axes[2].set_xticks(range(3), ["V", "A", "D"])
        axes[2].set_ylim(-2.2, 2.2)
        axes[2].axhline(0, color="black", linewidth=0.8)
        for i, v in enumerate(vad):
            axes[2].text(i, v + (0.1 if v >= 0 else -0.25), f"{v:.2f}", ha="center", fontsize=8)
        axes[2].set_title("valence / arousal / dominance")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def prediction(classes, probs, vad):
    """The CSV columns and the stdout text of one prediction."""
    best = int(np.argmax(probs))
    record = {"pred": classes[best], **{f"prob_{c}": round(float(p), 6) for c, p in zip(classes, probs)}}
    text = f"{classes[best]} ({probs[best]:.3f})"
    if vad is not None:
        record.update({name: round(float(v), 4) for name, v in zip(VAD_NAMES, vad)})
        text += "  " + "  ".join(f"{n[0].upper()} {float(v):+.2f}" for n, v in zip(VAD_NAMES, vad))
    return record, text


def whole_pictures(args, runner, meta, transform, paths):
    dataset = ImageFiles(paths, transform, args.skip_bad_images)
    device = getattr(runner, "device", "cpu")
    rows = run(runner, make_loader(dataset, args.batch_size, num_workers=args.num_workers, device=device))
    records = []
    for index, probs, vad in rows:
        path = dataset.relpath(index)
        record, text = prediction(meta["classes"], probs, vad)
        print(f"{path}: {text}")
        records.append({"path": path, **record})
        if args.save_vis:
            stem = os.path.splitext(os.path.basename(path))[0]
            draw(
                os.path.join(args.save_vis, f"{index:05d}_{stem}.png"),
                dataset.load_image(index),
                meta["classes"],
                probs,
                vad,
            )
    return records, len(dataset) - len(records)


# --------------------------------------------------------------------------- faces in pictures and videos
class FaceClassifier:
    """Detect, crop and classify the faces of one RGB picture."""

    def __init__(self, args, runner, meta):
        self.detector = FaceDetector(args.detect_side, args.min_face)
        self.runner, self.classes, self.margin = runner, meta["classes"], args.margin
        self.transform = build_transform(False, meta["input_size"], meta["mean"], meta["std"])

    def __call__(self, rgb):
        """(faces, probabilities F x C, vad F x 3 or None)."""
        faces = self.detector(rgb)
        if not faces:
            return faces, np.zeros((0, len(self.classes)), np.float32), None
        batch = torch.stack([self.transform(crop_face(rgb, face, self.margin)) for face in faces])
        probs, vad = self.runner(batch)
        return faces, probs, vad

    def rows(self, where, faces, probs, vad, tracks=None):
        """(CSV records, stdout lines, box labels): one per face, or one saying there is none."""
        if not faces:
            return [{**where, "faces": 0, "face": None, "pred": NO_FACE}], [f"{NO_FACE} found"], []
        records, lines, labels = [], [], []
        for i, face in enumerate(faces):
            record, text = prediction(self.classes, probs[i], None if vad is None else vad[i])
            box = {"x": face.x, "y": face.y, "w": face.w, "h": face.h, "score": round(face.score, 3)}
            track = {} if tracks is None else {"track": tracks[i]}
            records.append({**where, "faces": len(faces), "face": i, **track, **box, **record})
            lines.append(f"face {i} [{face.x},{face.y},{face.w},{face.h}]: {text}")
            labels.append(f"{record['pred']} {probs[i].max():.2f}")
        return records, lines, labels


def write_png(path, rgb):
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def faces_in_pictures(args, classify, paths):
    dataset = ImageFiles(paths, None, args.skip_bad_images)
    records, skipped = [], 0
    for index in range(len(dataset)):
        try:
            rgb = np.asarray(dataset.load_image(index))  # EXIF orientation applied
        except UserError:
            if not args.skip_bad_images:
                raise
            skipped += 1
            continue
        path = dataset.relpath(index)
        faces, probs, vad = classify(rgb)
        rows, lines, labels = classify.rows({"path": path}, faces, probs, vad)
        records.extend(rows)
        for line in lines:
            print(f"{path}: {line}")
        if args.save_vis:
            stem = os.path.splitext(os.path.basename(path))[0]
            write_png(os.path.join(args.save_vis, f"{index:05d}_{stem}.png"), annotate(rgb, faces, labels))
    return records, skipped


def faces_in_video(args, classify, source):
    """Rows for every kept frame of a video file or camera; the annotated video holds every frame, with the
    boxes of the last kept one."""
    frames = FrameSource(source, args.every, args.max_frames)
    name = frames.name
    stem = f"camera{source}" if frames.camera else os.path.splitext(os.path.basename(source))[0]
    tracker = FaceTracker(args.smooth)
    out = (
        VideoOut(os.path.join(args.save_vis, f"{stem}_annotated.mp4"), frames.fps, frames.size)
        if args.save_vis
        else None
    )
    records, shown, count, kept = [], ([], []), 0, 0
    bar = progress(frames, desc=name, total=frames.total or None)
    bar.unit = "frame"
    start, start_cpu = time.monotonic(), time.process_time()
    failed = True
    try:
        try:
            for index, stamp, keep, rgb in bar:
                if keep:
                    faces, probs, vad = classify(rgb)
                    tracks, probs = tracker.update(faces, probs)
                    where = {"path": name, "frame": index, "time_s": round(stamp, 3)}
                    rows, _, labels = classify.rows(where, faces, probs, vad, tracks)
                    records.extend(rows)
                    shown, kept = (faces, labels), kept + 1
                if out is not None:
                    out.write(annotate(rgb, *shown))
                count += 1
        except KeyboardInterrupt:  # a camera runs until Ctrl-C; keep what was seen
            print(f"{name}: stopped after {count} frames")
        failed = False
    finally:
        bar.close()
        if out is not None:
            out.close(failed=failed)
    seconds, cpu = time.monotonic() - start, time.process_time() - start_cpu
    found = sum(1 for r in records if r["faces"])
    print(
        f"{name}: {count} frames, {kept} classified, {found} face rows in {seconds:.1f} s "
        f"({count / max(seconds, 1e-9):.1f} frames/s); CPU {cpu:.1f} s"
        + (f"; annotated video {out.path}" if out is not None else "")
    )
    return records


@run_main
def main(argv=None):
    args = get_args_parser().parse_intermixed_args(argv)  # flags may stand between the inputs
    check_args(args)
    device = resolve_device(args.device)
    runner, meta = load_runner(args.model, device, args.threads)
    videos = [item for item in args.inputs if is_video(item)]
    pictures = [item for item in args.inputs if not is_video(item)]
    records, skipped = [], 0
    if args.faces == "none":
        transform = build_transform(False, meta["input_size"], meta["mean"], meta["std"])
        records, skipped = whole_pictures(args, runner, meta, transform, pictures)
    else:
        classify = FaceClassifier(args, runner, meta)
        if pictures:
            records, skipped = faces_in_pictures(args, classify, pictures)
        for video in videos:
            records.extend(faces_in_video(args, classify, video))
        if args.camera is not None:
            records.extend(faces_in_video(args, classify, args.camera))
    write_csv(args.output, table(records))
    what = "image(s)" if args.faces == "none" else "row(s)"
    print(f"{len(records)} {what} -> {args.output}" + (f"; {skipped} unreadable skipped" if skipped else ""))


if __name__ == "__main__":
    main()
