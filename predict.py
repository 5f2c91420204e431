"""Predict the emotion category (and Valence/Arousal/Dominance for a multi-task model) of faces.

    python predict.py --checkpoint output/percept/checkpoint-best.pth face1.jpg faces_folder/
    python predict.py --checkpoint CKPT faces/ --output predictions.csv --save_vis vis/

Needs only the perceptual checkpoint: class names, input size and normalisation travel inside it.
Writes a CSV (path, predicted class, one probability column per class[, valence, arousal,
dominance]) and prints one line per image; --save_vis draws each face with its class
probabilities (and its three VAD values).
"""

import argparse
import os

import pandas as pd
import torch

from dataset_concept import ImageFiles, build_transform, make_loader
from models.percept import PerceptNet
from utils.checkpoint import load_checkpoint, write_csv
from utils.distributed import resolve_device
from utils.engine import to_device
from utils.errors import UserError, run_main
from utils.figures import new_figure, save_figure
from utils.labels import VAD_NAMES


def get_args_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--checkpoint", default=os.path.join("output", "percept", "checkpoint-best.pth"))
    parser.add_argument("--output", default="predictions.csv", help="CSV to write")
    parser.add_argument("--save_vis", default="", help="folder for one picture per image")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip_bad_images", action="store_true")
    return parser


def load_percept(path, device):
    checkpoint = load_checkpoint(path, "perceptual checkpoint")
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not meta or not str(meta.get("model", "")).startswith("PerceptNet"):
        raise UserError(
            f"{path} is not a stage-3 (main_percept.py) checkpoint; predict.py needs the perceptual "
            f"network, e.g. output/percept/checkpoint-best.pth."
        )
    model = PerceptNet(
        len(meta["classes"]),
        None,
        vad=meta.get("vad", False),
        backbone=meta.get("backbone", "resnet18"),
        classifier_input=meta.get("classifier_input", "unit"),
    )  # unit: checkpoints from before the flag
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), meta


@torch.no_grad()
def run(model, loader, device):
    rows = []
    for batch in loader:
        batch.pop("skipped", None)
        if "image" not in batch:
            continue
        indices = batch["index"].tolist()
        out = model(to_device(batch, device)["image"])
        probs = out["logits"].float().softmax(1).cpu()
        vad = out["vad"].float().cpu() if "vad" in out else None
        for row, index in enumerate(indices):
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
    axes[1].barh(range(len(classes)), probs.numpy(), color=colours)
    axes[1].set_yticks(range(len(classes)), classes)
    axes[1].set_xlim(0, 1)
    axes[1].invert_yaxis()
    axes[1].set_xlabel("probability")
    if vad is not None:
        values = vad.numpy()
        axes[2].bar(range(3), values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
        axes[2].set_xticks(range(3), ["V", "A", "D"])
        axes[2].set_ylim(-2.2, 2.2)
        axes[2].axhline(0, color="black", linewidth=0.8)
        for i, v in enumerate(values):
            axes[2].text(i, v + (0.1 if v >= 0 else -0.25), f"{v:.2f}", ha="center", fontsize=8)
        axes[2].set_title("valence / arousal / dominance")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


@run_main
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0:
        raise UserError("--batch_size must be positive and --num_workers not negative.")
    device = resolve_device(args.device)
    model, meta = load_percept(args.checkpoint, device)
    classes = meta["classes"]
    dataset = ImageFiles(
        args.inputs, build_transform(False, meta["input_size"], meta["mean"], meta["std"]), args.skip_bad_images
    )
    rows = run(model, make_loader(dataset, args.batch_size, num_workers=args.num_workers, device=device), device)
    records = []
    for index, probs, vad in rows:
        path = dataset.relpath(index)
        record = {
            "path": path,
            "pred": classes[int(probs.argmax())],
            **{f"prob_{c}": round(float(p), 6) for c, p in zip(classes, probs)},
        }
        line = f"{path}: {record['pred']} ({probs.max():.3f})"
        if vad is not None:
            record.update({name: round(float(v), 4) for name, v in zip(VAD_NAMES, vad)})
            line += "  " + "  ".join(f"{n[0].upper()} {float(v):+.2f}" for n, v in zip(VAD_NAMES, vad))
        print(line)
        records.append(record)
        if args.save_vis:
            stem = os.path.splitext(os.path.basename(path))[0]
            draw(os.path.join(args.save_vis, f"{index:05d}_{stem}.png"), dataset.load_image(index), classes, probs, vad)
    write_csv(args.output, pd.DataFrame(records))
    skipped = len(dataset) - len(records)
    print(f"{len(records)} image(s) -> {args.output}" + (f"; {skipped} unreadable skipped" if skipped else ""))


if __name__ == "__main__":
    main()
