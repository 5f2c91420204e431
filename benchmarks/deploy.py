"""Deployment costs of the perceptual network: eager PyTorch against ONNX Runtime fp32 and int8, and
faces found in pictures and video.

    python benchmarks/deploy.py --checkpoint demo/output/percept/checkpoint-best.pth --json deploy.json

What it does, on CPU with ``--threads`` threads (2 by default), with the network's own input size:

1. exports the checkpoint with tools/export.py (fp32, and int8 static calibrated on ``--calib_count``
   images of ``--calib``) into ``--out_dir``;
2. file sizes: the checkpoint, the fp32 and the int8 ONNX model;
3. latency at batch 1 and batch 32: median over ``--repeats`` calls after warm-up, the three runtimes timed
   alternately so that load from other work hits them alike;
4. accuracy of each runtime on the labelled test crops (``--test_data``, class folders);
5. detection on those crops: predict.py with and without ``--faces haar`` on the same pictures, the
   share of pictures where a face is found and, among them, how often the class agrees with the
   whole-picture prediction;
6. video: a one-face clip (``--frames`` frames of 320 x 240, a synthetic face the cascade finds) through
   predict.py (decode, detect, crop, classify, annotate, encode), eager and ONNX fp32: frames/s.

Prints a table, writes JSON (``--json``, default OUT_DIR/deploy.json). Goals (README, Deployment): ORT fp32
batch-1 latency <= 0.7x eager; int8 file <= 0.3x fp32 with <= 1 point accuracy drop; >= 25 frames/s.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_concept import FolderFaces, build_transform, make_loader  # noqa: E402
from models.runtime import OnnxRunner, TorchRunner, load_percept  # noqa: E402
from tools.make_synthetic_faces import generate_split  # noqa: E402
from utils.checkpoint import write_json  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.faces import FaceDetector  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOALS = {"ort_over_eager_batch1": 0.7, "int8_over_fp32_bytes": 0.3, "int8_accuracy_drop_points": 1.0, "video_fps": 25}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=os.path.join("demo", "output", "percept", "checkpoint-best.pth"))
    parser.add_argument("--test_data", default=os.path.join("demo", "faces", "test"))
    parser.add_argument("--calib", default=os.path.join("demo", "faces", "train"))
    parser.add_argument("--calib_count", type=int, default=128)
    parser.add_argument("--out_dir", default=os.path.join("output", "benchmarks", "deploy"))
    parser.add_argument("--json", default="")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per runtime at batch 1 (batch 32: / 3)")
    parser.add_argument("--frames", type=int, default=150, help="frames of the benchmark video")
    parser.add_argument("--reuse_export", action="store_true", help="keep OUT_DIR's exported models if there")
    return parser


def script(name, args, threads):
    """Run a repository script as a user would, with ``threads`` threads; its stdout, or a UserError."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": REPO}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, name), *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise UserError(f"{name} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}")
    return proc.stdout


def latency(runners, batch, repeats):
    """Median milliseconds per call of each runner on ``batch``, timed alternately after 3 warm-up calls:
    wall clock, and the CPU time of this process (all its threads), which other work on the machine
    inflates less than the wall clock."""
    wall, cpu = {name: [] for name in runners}, {name: [] for name in runners}
    for _ in range(3):
        for runner in runners.values():
            runner(batch)
    for _ in range(repeats):
        for name, runner in runners.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            runner(batch)
            wall[name].append(1000 * (time.perf_counter() - start))
            cpu[name].append(1000 * (time.process_time() - start_cpu))
    return {
        "wall": {name: statistics.median(values) for name, values in wall.items()},
        "cpu": {name: statistics.median(values) for name, values in cpu.items()},
    }


def accuracy(runner, loader):
    correct = total = 0
    for batch in loader:
        probs, _ = runner(batch["image"])
        correct += int((probs.argmax(1) == batch["label"].numpy()).sum())
        total += len(probs)
    return 100.0 * correct / total


def one_face_video(path, frames):
    """A 320 x 240 MJPG clip, 25 frames/s: a 96-px synthetic face the cascade finds, drifting sideways."""
    import cv2

    detector = FaceDetector()
    face = next(s["image"] for s in generate_split(0, "test", 2, 96) if len(detector(s["image"])) == 1)
    rng = np.random.default_rng(0)
    background = np.clip(rng.normal(140, 8, (240, 320, 3)), 0, 255).astype(np.uint8)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    for k in range(frames):
        picture = background.copy()
        x = 60 + int(80 * (0.5 + 0.5 * np.sin(k / 20)))
        picture[70:166, x : x + 96] = face
        writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    writer.release()


def video_fps(args, model, video, out):
    """frames/s that predict.py reports for the whole clip (detection, classification, annotated video)."""
    stdout = script(
        "predict.py",
        [video, "--model", model, "--output", os.path.join(out, "video.csv"), "--save_vis", out, "--device", "cpu",
         "--threads", args.threads],
        args.threads,
    )  # fmt: skip
    found = re.search(
        r"(\d+) frames, (\d+) classified, (\d+) face rows in [\d.]+ s \(([\d.]+) frames/s\); CPU ([\d.]+) s", stdout
    )
    if not found:
        raise UserError(f"predict.py printed no frames/s line: {stdout[-300:]}")
    frames, _, faces, fps, cpu = found.groups()
    return {
        "fps": float(fps),
        "frames_per_cpu_second": int(frames) / max(float(cpu), 1e-9),
        "frames": int(frames),
        "frame_rows_with_face": int(faces),
    }


def detection_agreement(args, model):
    """predict.py on the test crops, whole pictures against detected faces."""
    tables = {}
    for mode in ("none", "haar"):
        csv = os.path.join(args.out_dir, f"crops_{mode}.csv")
        script("predict.py", [args.test_data, "--model", model, "--faces", mode, "--output", csv, "--device", "cpu",
                              "--num_workers", 0], args.threads)  # fmt: skip
        tables[mode] = pd.read_csv(csv)
    whole = tables["none"].set_index("path")["pred"]
    found = tables["haar"][tables["haar"]["faces"] > 0]
    first = found[found["face"] == 0].set_index("path")["pred"]  # one face per crop; the leftmost if more
    truth = {p: os.path.basename(os.path.dirname(p)) for p in whole.index}
    agree = (first == whole.loc[first.index]).mean()
    return {
        "pictures": len(whole),
        "face_found_pct": 100.0 * len(first) / len(whole),
        "more_than_one_face": int((found.groupby("path")["faces"].first() > 1).sum()),
        "agreement_pct": 100.0 * float(agree),
        "acc_whole_on_found_pct": 100.0 * float(np.mean([whole[p] == truth[p] for p in first.index])),
        "acc_detected_on_found_pct": 100.0 * float(np.mean([first[p] == truth[p] for p in first.index])),
        "acc_whole_all_pct": 100.0 * float(np.mean([whole[p] == truth[p] for p in whole.index])),
    }


@run_main
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    for path, what in ((args.checkpoint, "checkpoint"), (args.test_data, "test data"), (args.calib, "calibration")):
        if not os.path.exists(path):
            raise UserError(f"{what} {path} not found (make demo writes the defaults).")
    os.makedirs(args.out_dir, exist_ok=True)
    torch.set_num_threads(args.threads)
    onnx_path = os.path.join(args.out_dir, "model.onnx")
    int8_path = os.path.join(args.out_dir, "model.int8.onnx")
    if not (args.reuse_export and os.path.isfile(onnx_path) and os.path.isfile(int8_path)):
        script("tools/export.py", ["--checkpoint", args.checkpoint, "--out", onnx_path, "--int8", "static", "--calib",
                                   args.calib, "--calib_count", args.calib_count], args.threads)  # fmt: skip
    model, meta = load_percept(args.checkpoint, "cpu")
    runners = {
        "eager": TorchRunner(model, "cpu"),
        "ort_fp32": OnnxRunner(onnx_path, threads=args.threads),
        "ort_int8": OnnxRunner(int8_path, threads=args.threads),
    }
    size = meta["input_size"]
    transform = build_transform(False, size, meta["mean"], meta["std"])
    loader = make_loader(FolderFaces(args.test_data, transform), 64, num_workers=0)
    batches = {b: torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b)) for b in (1, 32)}
    result = {
        "checkpoint": args.checkpoint,
        "input_size": size,
        "threads": args.threads,
        "cpu": f"{os.cpu_count()} logical CPUs visible",
        "bytes": {
            "checkpoint": os.path.getsize(args.checkpoint),
            "onnx_fp32": os.path.getsize(onnx_path),
            "onnx_int8": os.path.getsize(int8_path),
        },
        "latency_ms_batch1": latency(runners, batches[1], args.repeats),
        "latency_ms_batch32": latency(runners, batches[32], max(3, args.repeats // 3)),
        "test_acc_pct": {name: accuracy(runner, loader) for name, runner in runners.items()},
        "detection_on_test_crops": detection_agreement(args, onnx_path),
    }
    video = os.path.join(args.out_dir, "one_face.avi")
    one_face_video(video, args.frames)
    result["video"] = {
        name: video_fps(args, path, video, os.path.join(args.out_dir, f"video_{name}"))
        for name, path in (("eager", args.checkpoint), ("ort_fp32", onnx_path))
    }
    lat1, acc = result["latency_ms_batch1"]["wall"], result["test_acc_pct"]
    cpu1 = result["latency_ms_batch1"]["cpu"]
    result["ratios"] = {
        "ort_over_eager_batch1": lat1["ort_fp32"] / lat1["eager"],
        "int8_over_eager_batch1": lat1["ort_int8"] / lat1["eager"],
        "ort_over_eager_batch1_cpu_time": cpu1["ort_fp32"] / cpu1["eager"],
        "int8_over_fp32_bytes": result["bytes"]["onnx_int8"] / result["bytes"]["onnx_fp32"],
        "int8_accuracy_drop_points": acc["ort_fp32"] - acc["ort_int8"],
        "video_fps": result["video"]["ort_fp32"]["fps"],
    }
    result["goals"] = GOALS
    write_json(args.json or os.path.join(args.out_dir, "deploy.json"), result)

    print(f"| runtime | file | batch 1: wall / CPU | batch 32: wall / CPU | test acc | video frames/s |  ({size} px, "
          f"{args.threads} threads)")  # fmt: skip
    print("|---|---|---|---|---|---|")
    lat32 = result["latency_ms_batch32"]
    files = {"eager": "checkpoint", "ort_fp32": "onnx_fp32", "ort_int8": "onnx_int8"}
    for name in runners:
        fps = result["video"][name]["fps"] if name in result["video"] else None
        print(
            f"| {name} | {result['bytes'][files[name]] / 2**20:.1f} MiB | {lat1[name]:.2f} / {cpu1[name]:.2f} ms | "
            f"{lat32['wall'][name]:.1f} / {lat32['cpu'][name]:.1f} ms | {acc[name]:.2f} % | "
            f"{'' if fps is None else f'{fps:.1f}'} |"
        )
    det = result["detection_on_test_crops"]
    print(
        f"detection on {det['pictures']} test crops: a face in {det['face_found_pct']:.1f} %, class agrees with the "
        f"whole-picture prediction on {det['agreement_pct']:.1f} % of those"
    )
    for key, goal in GOALS.items():
        value = result["ratios"][key]
        met = value >= goal if key == "video_fps" else value <= goal
        print(f"{key}: {value:.3f} (goal {'>=' if key == 'video_fps' else '<='} {goal}) {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
