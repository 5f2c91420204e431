"""Stage 2's library part: scoring a training set with the frozen concept model, the per-class
thresholds that split it into high- and low-confidence samples, and the histogram figure."""

import math
import os

import numpy as np
import pandas as pd
import torch

from utils import distributed as du
from utils.checkpoint import save_checkpoint, write_csv, write_json
from utils.engine import autocast, to_device
from utils.errors import UserError
from utils.figures import new_figure, save_figure
from utils.log import StepLines, progress


def per_class_thresholds(confidence, labels, num_classes: int, percentile: float, classes: list | None = None):
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
            raise UserError(
                f"class {name!r} has no training image, so it has no high-score pool; every class "
                f"needs training images."
            )
        thresholds.append(float(scores[int(math.floor(percentile * scores.size))]))
        counts.append(int(scores.size))
    mask = confidence >= np.asarray(thresholds)[labels]
    return thresholds, counts, mask


@torch.no_grad()
def score(
    model, loader, device: torch.device, amp_dtype=None, channels_last: bool = False, print_freq: int = 0
) -> dict:
    """Emotion features ``e``, ``logits``, ``confidence`` and dataset ``index`` of every sample of a
    sharded loader, gathered from every rank in index order (``model.emotion_forward`` only; autocast to
    ``amp_dtype`` when given; a progress line every ``print_freq`` batches when stdout is not a terminal)."""
    parts = {"index": [], "e": [], "logits": [], "confidence": []}
    lines = StepLines("scoring", len(loader), print_freq, device, du.get_world_size())
    for step, batch in enumerate(progress(loader, desc="scoring")):
        batch.pop("skipped", None)
        if "image" not in batch:
            continue
        batch = to_device(batch, device, channels_last)
        with autocast(device, amp_dtype):
            out = model.emotion_forward(batch["image"])
        lines.count(len(batch["index"]))
        if lines.due(step):
            lines.show(step, {})
        parts["index"].append(batch["index"].cpu())
        for key in ("e", "logits", "confidence"):
            parts[key].append(out[key].float().cpu())
    local = {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}
    gathered = du.all_gather_objects(local)
    merged = {k: torch.cat([g[k] for g in gathered]) for k in local}
    order = torch.argsort(merged["index"])
    return {k: v[order] for k, v in merged.items()}


def save_histograms(path: str, confidence, labels, classes: list, thresholds: list) -> None:
    """Per-class confidence histograms with each class's threshold marked, as PNG."""
    cols = min(4, len(classes))
    rows = math.ceil(len(classes) / cols)
    fig, axes = new_figure(rows, cols, figsize=(3.2 * cols, 2.4 * rows))
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


def write_artefacts(output_dir: str, dataset, scores: dict, percentile: float, extra: dict) -> dict:
    """Stage 2's artefacts from the scores of every training image (:func:`score`) of ``dataset``:
    scores_train.csv, pool.csv, thresholds.json, bank.pt and confidence_hist.png (all atomic).

    ``extra`` is recorded in thresholds.json and bank.pt; it must hold ``input_size``, ``mean``, ``std``,
    ``dataset``, ``concept_sha256`` and ``score_transform`` (what stage 3 checks the bank against).
    Returns {"images", "thresholds", "counts", "pool_sizes"}.
    """
    classes = dataset.classes
    indices = scores["index"].numpy()
    labels = np.asarray(dataset.targets)[indices]
    confidence = scores["confidence"].numpy().astype(np.float64)
    thresholds, counts, mask = per_class_thresholds(confidence, labels, len(classes), percentile, classes)
    frame = pd.DataFrame(
        {
            "path": [dataset.relpath(i) for i in indices],
            "label": labels,
            "class": [classes[c] for c in labels],
            "confidence": confidence,
            "pred": scores["logits"].argmax(1).numpy(),
        }
    )
    pool_sizes = [int(mask[labels == c].sum()) for c in range(len(classes))]
    os.makedirs(output_dir, exist_ok=True)
    write_csv(os.path.join(output_dir, "scores_train.csv"), frame)
    write_csv(os.path.join(output_dir, "pool.csv"), frame[mask])
    write_json(
        os.path.join(output_dir, "thresholds.json"),
        {
            "percentile": percentile,
            "classes": classes,
            "thresholds": thresholds,
            "counts": counts,
            "pool_sizes": pool_sizes,
            "score_transform": extra["score_transform"],
            "concept_sha256": extra["concept_sha256"],
        },
    )
    save_checkpoint(
        os.path.join(output_dir, "bank.pt"),
        {
            "features": scores["e"],
            "logits": scores["logits"],
            "confidence": scores["confidence"],
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "mask": torch.from_numpy(mask),
            "paths": list(frame["path"]),
            "classes": classes,
            "thresholds": thresholds,
            "percentile": percentile,
            "data_fingerprint": dataset.fingerprint(),
            **extra,
        },
    )
    save_histograms(os.path.join(output_dir, "confidence_hist.png"), confidence, labels, classes, thresholds)
    return {"images": len(frame), "thresholds": thresholds, "counts": counts, "pool_sizes": pool_sizes}


def filter_by_correctness(
    mask: torch.Tensor, correct: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, list[int]]:
    """The high-confidence mask restricted to samples the concept model classifies correctly
    (``--teacher_filter correct``): mask_i and correct_i. A class left with no such sample keeps its
    unfiltered mask (its pool would be empty otherwise); those classes are returned as the second value."""
    mask, correct, labels = mask.bool(), correct.bool(), labels.long()
    filtered = mask & correct
    kept = []
    for c in range(num_classes):
        rows = labels == c
        if mask[rows].any() and not filtered[rows].any():
            filtered[rows] = mask[rows]
            kept.append(c)
    return filtered, kept


def teacher_quality(bank: dict, eval_acc: float | None, min_acc: float) -> tuple[dict, str | None]:
    """How good the concept model is, from what stage 2 recorded and stage 1's best evaluation:
    ``train_acc`` (its accuracy on the training images it scored, %), ``eval_acc`` (its best eval-split
    accuracy, %, or None when unknown), ``chance`` (%). Returns (figures, warning or None): the warning
    when the eval accuracy (or, unknown, the training accuracy) is below ``min_acc``."""
    labels = bank["labels"]
    num_classes = len(bank["classes"])
    figures = {
        "train_acc": 100.0 * float((bank["logits"].argmax(1) == labels).double().mean()),
        "eval_acc": eval_acc,
        "chance": 100.0 / num_classes,
    }
    judged = eval_acc if eval_acc is not None else figures["train_acc"]
    if judged >= min_acc:
        return figures, None
    where = (
        f"{eval_acc:.1f} % on its eval split, " if eval_acc is not None else ""
    ) + f"{figures['train_acc']:.1f} % on the training images (chance {figures['chance']:.1f} %)"
    return figures, (
        f"warning: the concept model is weak ({where}, below --weak_teacher_acc {min_acc:g}); "
        f"concepts this weak can pull the perceptual network below one trained alone (README, "
        f"'A weak teacher'); --teacher_filter correct distils only where the concept model is right."
    )


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, bounds: tuple = (0.05, 20.0)) -> dict:
    """Temperature scaling of a classifier's logits: the T in ``bounds`` that minimises the mean negative
    log-likelihood of ``labels`` under softmax(logits / T) (a one-dimensional convex problem in 1/T, solved
    over log T by scipy's bounded scalar search). Returns ``temperature`` and, before (T = 1) and after,
    the mean NLL, the mean probability of the true class and the mean largest probability."""
    from scipy.optimize import minimize_scalar  # scipy is already a dependency (scikit-learn)

    logits = logits.detach().double().cpu()
    labels = labels.detach().long().cpu()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    found = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded")
    temperature = math.exp(found.x)

    def summary(t: float) -> dict:
        prob = (logits / t).softmax(1)
        return {
            "nll": nll(math.log(t)),
            "p_true": float(prob.gather(1, labels[:, None]).mean()),
            "p_max": float(prob.max(1).values.mean()),
        }

    return {"temperature": temperature, "before": summary(1.0), "after": summary(temperature)}
