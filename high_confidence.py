"""Stage 2: emotional-confidence scores, per-label thresholds, high-score pools and the feature bank.

    python high_confidence.py          # output/concept/checkpoint-best.pth -> output/confidence/

The frozen conceptual model (its emotion encoder and classifier only) scores every training image.
For each label c the threshold t_c is the value at index floor(p * n_c) of the class's ascending
confidences (p = --percentile, 0.2); samples with confidence >= t_c are high-confidence and form
the class's high-score pool. Artefacts (all plain data, written atomically):

- scores_train.csv    path, label, class, confidence, pred for every training image
- thresholds.json     percentile, classes, thresholds, counts, pool_sizes (label order)
- pool.csv            the rows of scores_train.csv at or above their class threshold
- bank.pt             emotion features, concept logits, labels, mask for every image (scores order)
                      + classes, input size, normalisation, concept checkpoint sha256
- confidence_hist.png per-class confidence histograms with the threshold marked
"""
import math
import os

import numpy as np
import pandas as pd
import torch

from dataset_concept import build_dataset, build_transform, eval_loader
from models.concept import frozen_concept, load_concept_checkpoint
from utils import distributed as du
from utils.checkpoint import save_checkpoint, save_figure, sha256_file, write_csv, write_json
from utils.cli import common_parser, start_run, write_config
from utils.engine import autocast, to_device
from utils.errors import UserError, run_main
from utils.log import progress

DEFAULT_CONCEPT = os.path.join("output", "concept", "checkpoint-best.pth")


def get_args_parser():
    parser = common_parser("CRPN stage 2: confidence scores, thresholds, pools and feature bank",
                           os.path.join("output", "confidence"), epochs=None, lr_schedule=False)
    parser.set_defaults(input_size=None, batch_size=128)
    group = parser.add_argument_group("stage 2")
    group.add_argument("--concept_ckpt", default=DEFAULT_CONCEPT, help="stage-1 checkpoint")
    group.add_argument("--percentile", type=float, default=0.2, help="per-class threshold percentile")
    group.add_argument("--score_transform", default="eval", choices=("eval", "train"),
                       help="eval: deterministic resize + centre crop; train: the reference's random augmentations")
    return parser


def per_class_thresholds(confidence, labels, num_classes, percentile, classes=None):
    """Thresholds keyed by label index: t_c = sorted_ascending(conf of class c)[floor(p * n_c)].

    Returns (thresholds, counts, mask) with mask[i] = confidence[i] >= t_{labels[i]}.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    labels = np.asarray(labels)
    thresholds, counts = [], []
    for c in range(num_classes):
        scores = np.sort(confidence[labels == c])
        if scores.size == 0:
            name = classes[c] if classes else c
            raise UserError(f"class {name!r} has no training image, so it has no high-score pool; every class "
                            f"needs training images.")
        thresholds.append(float(scores[int(math.floor(percentile * scores.size))]))
        counts.append(int(scores.size))
    mask = confidence >= np.asarray(thresholds)[labels]
    return thresholds, counts, mask


@torch.no_grad()
def score(model, loader, device, amp_dtype=None):
    """Emotion features, logits, confidences and predictions of every sample, gathered in index order."""
    parts = {"index": [], "e": [], "logits": [], "confidence": []}
    for batch in progress(loader, desc="scoring"):
        batch.pop("skipped", None)
        if "image" not in batch:
            continue
        batch = to_device(batch, device)
        with autocast(device, amp_dtype):
            out = model.emotion_forward(batch["image"])
        parts["index"].append(batch["index"].cpu())
        for key in ("e", "logits", "confidence"):
            parts[key].append(out[key].float().cpu())
    local = {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}
    gathered = du.all_gather_objects(local)
    merged = {k: torch.cat([g[k] for g in gathered]) for k in local}
    order = torch.argsort(merged["index"])
    return {k: v[order] for k, v in merged.items()}


def save_histograms(path, confidence, labels, classes, thresholds):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(4, len(classes))
    rows = math.ceil(len(classes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for c, name in enumerate(classes):
        ax = axes[c // cols][c % cols]
        ax.hist(confidence[labels == c], bins=30, range=(0, 1), color="tab:blue", alpha=0.8)
        ax.axvline(thresholds[c], color="tab:red", linestyle="--", label=f"t={thresholds[c]:.3f}")
        ax.set_title(name)
        ax.legend(fontsize=7)
    for k in range(len(classes), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.supxlabel("emotional confidence")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


@run_main
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if not 0 <= args.percentile < 1:
        raise UserError(f"--percentile must be in [0, 1), got {args.percentile}.")
    checkpoint = load_concept_checkpoint(args.concept_ckpt)
    meta = checkpoint["meta"]
    saved_size = meta["input_size"]
    if args.input_size is None:
        args.input_size = saved_size
    elif args.input_size != saved_size:
        raise UserError(f"--input_size {args.input_size} differs from the concept checkpoint's {saved_size}; "
                        f"drop the flag to use the checkpoint's.")
    args.epochs = None
    start_run(args)
    classes = meta["classes"]
    model = frozen_concept(checkpoint, args.device_obj)
    del checkpoint
    dataset = build_dataset(args.dataset, args.data_path, "train", skip_bad_images=args.skip_bad_images)
    if dataset.classes != classes:
        raise UserError(f"{args.data_path} has classes {dataset.classes} but the concept checkpoint was trained on "
                        f"{classes}; score the training set the concept model was trained on.")
    dataset.transform = build_transform(args.score_transform == "train", args.input_size, meta["mean"], meta["std"])
    scores = score(model, eval_loader(dataset, args), args.device_obj)
    if scores["index"].numel() != len(dataset) and not args.skip_bad_images:
        raise UserError("scoring did not cover every training image.")

    indices = scores["index"].numpy()
    labels = np.asarray(dataset.targets)[indices]
    confidence = scores["confidence"].numpy().astype(np.float64)
    thresholds, counts, mask = per_class_thresholds(confidence, labels, len(classes), args.percentile, classes)
    if not du.is_main_process():
        du.cleanup()
        return
    concept_sha = sha256_file(args.concept_ckpt)
    frame = pd.DataFrame({"path": [dataset.relpath(i) for i in indices], "label": labels,
                          "class": [classes[c] for c in labels], "confidence": confidence,
                          "pred": scores["logits"].argmax(1).numpy()})
    pool_sizes = [int(mask[labels == c].sum()) for c in range(len(classes))]
    os.makedirs(args.output_dir, exist_ok=True)
    write_config(args, {"concept_ckpt": args.concept_ckpt})
    write_csv(os.path.join(args.output_dir, "scores_train.csv"), frame)
    write_csv(os.path.join(args.output_dir, "pool.csv"), frame[mask])
    write_json(os.path.join(args.output_dir, "thresholds.json"),
               {"percentile": args.percentile, "classes": classes, "thresholds": thresholds, "counts": counts,
                "pool_sizes": pool_sizes, "score_transform": args.score_transform, "concept_sha256": concept_sha})
    save_checkpoint(os.path.join(args.output_dir, "bank.pt"), {
        "features": scores["e"], "logits": scores["logits"], "confidence": scores["confidence"],
        "labels": torch.from_numpy(labels.astype(np.int64)), "mask": torch.from_numpy(mask),
        "paths": list(frame["path"]), "classes": classes, "thresholds": thresholds, "percentile": args.percentile,
        "input_size": args.input_size, "mean": meta["mean"], "std": meta["std"], "dataset": args.dataset,
        "data_fingerprint": dataset.fingerprint(), "concept_sha256": concept_sha,
        "score_transform": args.score_transform})
    save_histograms(os.path.join(args.output_dir, "confidence_hist.png"), confidence, labels, classes, thresholds)
    print(f"scored {len(frame)} images; thresholds "
          + ", ".join(f"{c} {t:.3f} (pool {p}/{n})" for c, t, p, n in zip(classes, thresholds, pool_sizes, counts))
          + f"; artefacts in {args.output_dir}")
    du.cleanup()


if __name__ == "__main__":
    main()
