"""What the concepts are: disentanglement, confidence and attention of a stage-1 model, measured and drawn.

    python tools/analyse_concepts.py --concept_ckpt output/concept/checkpoint-best.pth \\
        --data_path data/RAF-DB/train --eval_data_path data/RAF-DB/test \\
        --confidence_dir output/confidence --output_dir output/analysis

Reads a stage-1 (main_concept.py) checkpoint and its two splits, extracts the emotion feature e, the
non-emotion feature n, the confidence and the prediction of every image (and the pooled features of the
pretrained backbone before stage 1, the reference point, when its weight file is at hand), and writes to
--output_dir:

- analysis.json        every number below, the goals and whether they are met, what was skipped and why
- probes.png           linear-probe accuracy (logistic regression fitted on the training images, scored on
                       the eval split) of the expression class from e, n and the raw backbone, and of
                       identity from each (held-out folds of the training images), with chance levels
- embeddings.png       t-SNE of e and n of the training images, coloured by class and by identity
- reliability.png      concept accuracy by confidence decile (training images and eval split), and the
                       confidence against the generator's expression intensity
- pools_grid.png       per class the lowest- and highest-confidence training images (dropped / kept)
- saliency.png         Grad-CAM (captum) of the emotion encoder (predicted class) and of the non-emotion
                       encoder (similarity to its own feature) on a few eval faces
- tb/                  the same figures in TensorBoard (SummaryWriter.add_figure)

Ground truth of identity and intensity comes from the synthetic generator's metadata.csv
(tools/make_synthetic_faces.py), looked for in each split folder and its parent; a dataset without it
(RAF-DB, FER2013, ...) gets every part that needs none, and analysis.json says what was skipped.
Confidence and pools come from stage 2's --confidence_dir (scores_train.csv, pool.csv); without it the
training images are scored here with stage 2's rule (--percentile).
"""

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as `python tools/analyse_concepts.py`: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import pandas as pd
import torch

from dataset_concept import build_dataset, build_transform, check_same_classes, make_loader
from models.backbones import backbone_spec, build_backbone
from models.concept import ConceptNet, frozen_concept, load_concept_checkpoint
from utils.analysis import (
    accuracy_by_decile,
    band_mass,
    confidence_validity,
    find_metadata,
    grouped_probe,
    map_correlation,
    match_metadata,
    pool_error_rates,
    probe,
)
from utils.checkpoint import write_json
from utils.cli import existing_file
from utils.confidence import per_class_thresholds
from utils.distributed import resolve_device
from utils.engine import to_device
from utils.errors import UserError, run_main
from utils.figures import new_figure, save_figure
from utils.files import sha256_file
from utils.labels import DATASETS
from utils.log import progress

GOALS = {"expression_e_minus_n": 20.0, "identity_n_minus_e": 20.0, "confidence_intensity_spearman": 0.3}
FEATURES = {"e": "emotion e", "n": "non-emotion n", "raw": "raw backbone"}
CAM_LAYERS = ("layer2", "layer3", "layer4")


def get_args_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--concept_ckpt", default=os.path.join("output", "concept", "checkpoint-best.pth"))
    parser.add_argument("--data_path", default=os.path.join("data", "RAF-DB", "train"), help="training split")
    parser.add_argument("--eval_data_path", default=os.path.join("data", "RAF-DB", "test"), help="held-out split")
    parser.add_argument("--dataset", default="folder", choices=DATASETS, help="format of the two paths")
    parser.add_argument("--confidence_dir", default="", help="stage 2's output folder ('' = score here)")
    parser.add_argument("--percentile", type=float, default=0.2, help="stage 2's rule, without --confidence_dir")
    parser.add_argument(
        "--pretrained",
        default="auto",
        help="the backbone weights before stage 1 (raw-feature reference): a file, 'auto' (the file stage 1 "
        "read, when it is still there with the same sha256) or 'none'",
    )
    parser.add_argument("--ground_truth", default="auto", choices=("auto", "none"), help="read metadata.csv or not")
    parser.add_argument("--output_dir", default=os.path.join("output", "analysis"))
    parser.add_argument("--log_dir", default=None, help="TensorBoard folder (default OUTPUT_DIR/tb)")
    parser.add_argument("--min_identity_samples", type=int, default=4, help="identities with fewer are not probed")
    parser.add_argument("--tsne_samples", type=int, default=1000, help="at most this many points per t-SNE")
    parser.add_argument("--grid_images", type=int, default=4, help="lowest and highest images per class")
    parser.add_argument("--saliency_faces", type=int, default=6)
    parser.add_argument("--cam_layer", default="layer3", choices=CAM_LAYERS, help="Grad-CAM layer of both encoders")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def check_args(args):
    for name in ("batch_size", "min_identity_samples", "tsne_samples", "grid_images", "saliency_faces"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}.")
    if args.num_workers < 0:
        raise UserError(f"--num_workers must not be negative, got {args.num_workers}.")
    if not 0 <= args.percentile < 1:
        raise UserError(f"--percentile must be in [0, 1), got {args.percentile}.")


# --------------------------------------------------------------------------- inputs
def raw_backbone(args, checkpoint, notes):
    """(backbone, weight file) for the raw-feature reference, or (None, None) with a note saying why."""
    if args.pretrained == "none":
        notes.append("raw-backbone probes skipped: --pretrained none.")
        return None, None
    if args.pretrained == "auto":
        path = (checkpoint.get("args") or {}).get("pretrained")
        expected = checkpoint["meta"].get("pretrained_sha256")
        if not path or not expected or not os.path.isfile(path) or sha256_file(path) != expected:
            notes.append(
                "raw-backbone probes skipped: the weight file stage 1 started from is not at hand "
                "(pass --pretrained PATH)."
            )
            return None, None
    else:
        path = existing_file(args.pretrained, "pretrained weights", "pass the file stage 1 read, or --pretrained none.")
    backbone, _ = build_backbone(ConceptNet.BACKBONE, path)
    return backbone.eval().requires_grad_(False), path


def ground_truth(dataset, args, split, notes):
    """The metadata rows (intensity, identity) of every image of ``dataset``, or None with a note."""
    if args.ground_truth == "none":
        notes.append(f"{split}: identity and intensity analyses skipped (--ground_truth none).")
        return None
    metadata = find_metadata(dataset.root) if os.path.isdir(dataset.root) else None
    if metadata is None:
        notes.append(f"{split}: no metadata.csv beside {dataset.root}; identity and intensity analyses skipped.")
        return None
    frame, note = match_metadata(
        metadata, [os.path.join(dataset.root, dataset.relpath(i)) for i in range(len(dataset))]
    )
    if frame is None:
        notes.append(f"{split}: {note}; identity and intensity analyses skipped.")
    return frame


def stage2_scores(folder, dataset):
    """(confidence, pred, in_pool) of every training image from stage 2's scores_train.csv and pool.csv."""
    paths = {name: os.path.join(folder, name) for name in ("scores_train.csv", "pool.csv")}
    for path in paths.values():
        if not os.path.isfile(path):
            raise UserError(f"{path} not found; pass stage 2's --output_dir as --confidence_dir, or leave it out.")
    scores, pool = pd.read_csv(paths["scores_train.csv"]), pd.read_csv(paths["pool.csv"])
    if list(scores["path"].astype(str)) != [dataset.relpath(i) for i in range(len(dataset))]:
        raise UserError(
            f"{paths['scores_train.csv']} scores other images than {dataset.root}; pass the stage-2 output of "
            f"this training split."
        )
    in_pool = scores["path"].isin(set(pool["path"].astype(str))).to_numpy()
    return scores["confidence"].to_numpy(np.float64), scores["pred"].to_numpy(), in_pool


@torch.no_grad()
def extract(model, raw, raw_bgr, dataset, args, device, desc):
    """e, n, confidence, pred (and the raw backbone's pooled features) of every image, in dataset order."""
    loader = make_loader(dataset, args.batch_size, num_workers=args.num_workers, device=device)
    parts = {key: [] for key in ("index", "e", "n", "confidence", "pred", "raw")}
    for batch in progress(loader, desc=desc):
        batch = to_device(batch, device)
        out = model(batch["image"])
        parts["index"].append(batch["index"].cpu())
        parts["pred"].append(out["logits"].argmax(1).cpu())
        for key in ("e", "n", "confidence"):
            parts[key].append(out[key].float().cpu())
        if raw is not None:
            parts["raw"].append(raw(batch["image"].flip(1) if raw_bgr else batch["image"]).float().cpu())
    return {key: torch.cat(value).numpy() for key, value in parts.items() if value}


# --------------------------------------------------------------------------- measurements
def run_probes(train, evals, train_labels, eval_labels, identities, args):
    features = [key for key in FEATURES if key in train]
    result = {"expression": {k: probe(train[k], train_labels, evals[k], eval_labels) for k in features}}
    if identities is not None:
        result["identity"] = {
            k: grouped_probe(train[k], identities, args.min_identity_samples, seed=args.seed) for k in features
        }
    return result


def confidence_section(conf, pred, labels, classes, frame, in_pool=None):
    section = {
        "accuracy": 100.0 * float(np.mean(pred == labels)),
        "by_decile": accuracy_by_decile(conf, pred == labels),
    }
    if in_pool is not None:
        section["pools"] = pool_error_rates(in_pool, labels, pred)
    if frame is not None:
        section["intensity_spearman"] = confidence_validity(conf, frame["intensity"].to_numpy(), labels, classes)
    return section


def goals(probes, confidence):
    """Each goal of the issue: its value, its target and whether it is met (None: not measurable here)."""
    out = {}
    expression, identity = probes["expression"], probes.get("identity") or {}
    out["expression_e_minus_n"] = expression["e"]["acc"] - expression["n"]["acc"]
    if identity.get("e") and identity.get("n"):
        out["identity_n_minus_e"] = identity["n"]["acc"] - identity["e"]["acc"]
    rho = (confidence["train"].get("intensity_spearman") or {}).get("overall")
    if rho is not None:
        out["confidence_intensity_spearman"] = rho
    table = {k: {"value": v, "target": f">= {GOALS[k]:g}", "met": bool(v >= GOALS[k])} for k, v in out.items()}
    pools = confidence["train"]["pools"]
    if pools["pool"]["error_rate"] is not None and pools["dropped"]["error_rate"] is not None:
        value = pools["pool"]["error_rate"] - pools["dropped"]["error_rate"]
        table["pool_minus_dropped_error_rate"] = {"value": value, "target": "< 0", "met": bool(value < 0)}
    return table


def saliency(model, images, layer, device):
    """Grad-CAM maps (N x H x W, at the input size) of the emotion encoder for its predicted class and of
    the non-emotion encoder for the similarity of n to the image's own n, through captum."""
    from captum.attr import LayerAttribution, LayerGradCam

    x = images.to(device)
    with torch.no_grad():
        out = model(x)
    target, own_n = out["logits"].argmax(1), out["n"].detach()

    def emotion_logits(inputs):
        return model.emotion_forward(inputs)["logits"]

    def non_emotion_similarity(inputs):
        return (model.non_emotion(inputs) * own_n).sum(1)

    maps = {}
    for name, forward, encoder, kwargs in (
        ("emotion", emotion_logits, model.emotion, {"target": target}),
        ("non_emotion", non_emotion_similarity, model.non_emotion, {}),
    ):
        cam = LayerGradCam(forward, getattr(encoder.backbone, layer)).attribute(x, relu_attributions=True, **kwargs)
        maps[name] = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")[:, 0].detach().cpu().numpy()
    return maps, target.cpu().numpy()


# --------------------------------------------------------------------------- figures
def probes_figure(probes):
    kinds = [k for k in ("expression", "identity") if probes.get(k)]
    fig, axes = new_figure(1, len(kinds), figsize=(4.2 * len(kinds), 3.6))
    for ax, kind in zip(axes[0], kinds):
        names = [k for k, v in probes[kind].items() if v]
        accs = [probes[kind][k]["acc"] for k in names]
        ax.bar(range(len(names)), accs, color=["tab:orange", "tab:blue", "tab:gray"][: len(names)])
        for i, acc in enumerate(accs):
            ax.text(i, acc + 1, f"{acc:.1f}", ha="center", fontsize=9)
        chance = max(probes[kind][k]["chance"] for k in names) if names else 0
        ax.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"chance {chance:.1f} %")
        ax.set_xticks(range(len(names)), [FEATURES[k] for k in names])
        ax.set_ylim(0, 105)
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(f"{kind} from ...")
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def embeddings_figure(train, labels, classes, identities, args):
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(args.seed)
    rows = np.arange(len(labels))
    if len(rows) > args.tsne_samples:
        rows = np.sort(rng.choice(rows, args.tsne_samples, replace=False))
    colourings = [("class", labels[rows])]
    if identities is not None:
        ids = np.asarray(identities)[rows]
        top = pd.Series(ids).value_counts().index[:10]  # the 10 most frequent identities in colour, others grey
        colourings.append(
            ("identity (10 most frequent)", np.array([list(top).index(i) if i in top else -1 for i in ids]))
        )
    fig, axes = new_figure(2, len(colourings), figsize=(4.6 * len(colourings), 8.4))
    perplexity = float(min(30.0, max(2.0, (len(rows) - 1) / 3)))
    for r, key in enumerate(("e", "n")):
        points = TSNE(2, perplexity=perplexity, init="pca", random_state=args.seed).fit_transform(train[key][rows])
        for c, (name, colour) in enumerate(colourings):
            ax = axes[r][c]
            grey = colour < 0
            ax.scatter(points[grey, 0], points[grey, 1], s=6, color="lightgrey")
            for value in np.unique(colour[~grey]):
                sel = colour == value
                label = classes[value] if name == "class" else None
                ax.scatter(points[sel, 0], points[sel, 1], s=8, color=f"C{value % 10}", label=label)
            ax.set_title(f"{FEATURES[key]}, by {name}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "class" and r == 0:
                ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.tight_layout()
    return fig


def reliability_figure(confidence, classes, intensity):
    panels = 2 if intensity is not None else 1
    fig, axes = new_figure(1, panels, figsize=(4.8 * panels, 3.8))
    ax = axes[0][0]
    for split, style in (("train", "o-"), ("eval", "s--")):
        deciles = confidence[split]["by_decile"]
        ax.plot(range(1, len(deciles) + 1), [d["acc"] for d in deciles], style, label=f"{split} images")
    ax.set_xlabel("confidence decile (1 = lowest)")
    ax.set_ylabel("concept accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("accuracy by confidence decile")
    ax.legend(fontsize=8)
    if intensity is not None:
        conf, values, labels = intensity
        ax = axes[0][1]
        for c, name in enumerate(classes):
            sel = labels == c
            ax.scatter(values[sel], conf[sel], s=6, color=f"C{c % 10}", label=name)
        rho = confidence["train"]["intensity_spearman"]["overall"]
        ax.set_title(f"training images: Spearman {rho:.2f}" if rho is not None else "training images")
        ax.set_xlabel("generator's expression intensity")
        ax.set_ylabel("emotional confidence")
        ax.legend(fontsize=6, markerscale=1.5)
    fig.tight_layout()
    return fig


def pools_figure(dataset, conf, labels, in_pool, classes, k):
    fig, axes = new_figure(len(classes), 2 * k, figsize=(1.3 * 2 * k, 1.45 * len(classes)))
    for c, name in enumerate(classes):
        rows = np.flatnonzero(labels == c)
        order = rows[np.argsort(conf[rows], kind="stable")]
        chosen = list(order[:k]) + list(order[-k:]) if len(order) >= 2 * k else list(order)
        for j in range(2 * k):
            ax = axes[c][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(chosen):
                ax.axis("off")
                continue
            i = chosen[j]
            ax.imshow(dataset.load_image(int(i)))
            colour = "tab:green" if in_pool[i] else "tab:red"
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(2)
            ax.set_title(f"{conf[i]:.3f}", fontsize=7, color=colour)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"{k} lowest | {k} highest confidence per class (green: in the pool, red: dropped)", fontsize=9)
    fig.tight_layout()
    return fig


def saliency_figure(images, maps, predicted, labels, classes, mean, std):
    pictures = (images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)
    pictures = pictures.permute(0, 2, 3, 1).numpy()
    fig, axes = new_figure(len(pictures), 3, figsize=(6.0, 2.0 * len(pictures)))
    for r, picture in enumerate(pictures):
        panels = (
            (picture, f"{classes[labels[r]]} (pred {classes[predicted[r]]})"),
            (maps["emotion"][r], "emotion encoder E"),
            (maps["non_emotion"][r], "non-emotion encoder N"),
        )
        for c, (image, title) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(picture)
            if c and image.max() > 0:
                ax.imshow(image, cmap="jet", alpha=0.5, vmin=0)
            elif c:
                title += "\n(no positive evidence)"
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the run
def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@run_main
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    check_args(args)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    notes = []
    checkpoint = load_concept_checkpoint(args.concept_ckpt)
    meta = checkpoint["meta"]
    classes = meta["classes"]
    transform = build_transform(False, meta["input_size"], meta["mean"], meta["std"])
    splits = {
        "train": build_dataset(args.dataset, args.data_path, "train", transform),
        "eval": build_dataset(args.dataset, args.eval_data_path, "eval", transform),
    }
    if splits["train"].classes != classes:
        raise UserError(
            f"{args.data_path} has classes {splits['train'].classes} but the concept checkpoint was trained on "
            f"{classes}; analyse the data the concept model was trained on."
        )
    check_same_classes(splits["train"], splits["eval"], "eval")
    truth = {split: ground_truth(dataset, args, split, notes) for split, dataset in splits.items()}
    stage2 = stage2_scores(args.confidence_dir, splits["train"]) if args.confidence_dir else None
    model = frozen_concept(checkpoint, device)
    raw, raw_path = raw_backbone(args, checkpoint, notes)
    raw = raw.to(device) if raw is not None else None
    bgr = backbone_spec(ConceptNet.BACKBONE).bgr
    del checkpoint

    feats = {s: extract(model, raw, bgr, d, args, device, f"features {s}") for s, d in splits.items()}
    labels = {s: np.asarray(d.targets)[feats[s]["index"]] for s, d in splits.items()}
    identities = truth["train"]["identity"].to_numpy() if truth["train"] is not None else None
    probes = run_probes(feats["train"], feats["eval"], labels["train"], labels["eval"], identities, args)
    if identities is None:
        notes.append("identity probes and identity colouring skipped: no identity ground truth.")

    if stage2 is not None:
        conf, pred, in_pool = stage2
        source = f"stage 2 ({os.path.abspath(args.confidence_dir)})"
    else:
        conf, pred = feats["train"]["confidence"].astype(np.float64), feats["train"]["pred"]
        _, _, in_pool = per_class_thresholds(conf, labels["train"], len(classes), args.percentile, classes)
        source = f"scored here, pools by stage 2's rule at percentile {args.percentile:g} (no --confidence_dir)"
    confidence = {
        "source": source,
        "train": confidence_section(conf, pred, labels["train"], classes, truth["train"], in_pool),
        "eval": confidence_section(
            feats["eval"]["confidence"].astype(np.float64),
            feats["eval"]["pred"],
            labels["eval"],
            classes,
            truth["eval"],
        ),
    }

    eval_set = splits["eval"]
    picks = [int(np.flatnonzero(labels["eval"] == c)[0]) for c in range(len(classes)) if (labels["eval"] == c).any()]
    picks = picks[: args.saliency_faces]
    images = torch.stack([eval_set[i]["image"] for i in picks])
    maps, predicted = saliency(model, images, args.cam_layer, device)
    attention = {
        "layer": args.cam_layer,
        "faces": len(picks),
        "mass_by_band": {name: band_mass(m) for name, m in maps.items()},
        "map_correlation": map_correlation(maps["emotion"], maps["non_emotion"]),
    }

    intensity = None
    if truth["train"] is not None:
        intensity = (conf, truth["train"]["intensity"].to_numpy(), labels["train"])
    figures = {
        "probes": probes_figure(probes),
        "embeddings": embeddings_figure(feats["train"], labels["train"], classes, identities, args),
        "reliability": reliability_figure(confidence, classes, intensity),
        "pools_grid": pools_figure(splits["train"], conf, labels["train"], in_pool, classes, args.grid_images),
        "saliency": saliency_figure(images, maps, predicted, labels["eval"][picks], classes, meta["mean"], meta["std"]),
    }
    report = {
        "concept_ckpt": os.path.abspath(args.concept_ckpt),
        "data_path": os.path.abspath(args.data_path),
        "eval_data_path": os.path.abspath(args.eval_data_path),
        "classes": classes,
        "images": {s: int(len(d)) for s, d in splits.items()},
        "raw_backbone": os.path.abspath(raw_path) if raw_path else None,
        "ground_truth": {s: truth[s] is not None for s in splits},
        "probes": probes,
        "confidence": confidence,
        "attention": attention,
        "goals": goals(probes, confidence),
        "skipped": notes,
        "figures": [f"{name}.png" for name in figures],
        "seconds": None,
    }

    # everything is computed: now write (each file atomically)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(args.log_dir or os.path.join(args.output_dir, "tb"))
    for name, fig in figures.items():
        save_figure(fig, os.path.join(args.output_dir, f"{name}.png"))
        writer.add_figure(f"analysis/{name}", fig, 0, close=False)
    writer.close()
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_json(os.path.join(args.output_dir, "analysis.json"), jsonable(report))
    for note in notes:
        print(f"note: {note}")
    print(summary_lines(report))


def summary_lines(report):
    lines = []
    for kind, results in report["probes"].items():
        parts = [f"{FEATURES[k]} {v['acc']:.1f} %" for k, v in results.items() if v]
        chance = max((v["chance"] for v in results.values() if v), default=float("nan"))
        lines.append(f"{kind} probe: " + ", ".join(parts) + f" (chance {chance:.1f} %)")
    for name, goal in report["goals"].items():
        lines.append(f"goal {name}: {goal['value']:.3f} ({goal['target']}: {'met' if goal['met'] else 'NOT met'})")
    lines.append(f"{len(report['figures'])} figures and analysis.json in {json.dumps(report['seconds'])} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
