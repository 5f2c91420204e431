"""Evaluation statistics that merge exactly across batches and processes.

Everything is kept as sums (a confusion matrix of counts, sufficient statistics of a regression), so
that per-process values can be added with one all-reduce and the figures computed once from the total:
the result never depends on how the data was split.
"""

import numpy as np
import torch

from utils.checkpoint import atomic_path
from utils.figures import new_figure, save_figure

__all__ = ["confusion_counts", "classification_summary", "RegressionStats", "save_confusion_matrix"]


def confusion_counts(target, pred, num_classes):
    """C×C int64 confusion matrix of counts (rows = true class, columns = predicted), a torch tensor on
    the device of ``target``; add matrices of several batches/processes to merge them."""
    target = torch.as_tensor(target).long().flatten()
    pred = torch.as_tensor(pred).long().flatten().to(target.device)
    if target.numel() != pred.numel():
        raise ValueError(f"confusion_counts got {target.numel()} targets and {pred.numel()} predictions")
    if target.numel() and (
        int(target.min()) < 0
        or int(target.max()) >= num_classes
        or int(pred.min()) < 0
        or int(pred.max()) >= num_classes
    ):
        raise ValueError(f"labels and predictions must lie in [0, {num_classes})")
    flat = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes)


def _as_numpy(x):
    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def classification_summary(confusion, classes):
    """Figures of a C×C confusion matrix of counts (rows = true, columns = predicted).

    Returns a dict:
      - ``accuracy``: trace / total;
      - ``mean_class_accuracy``: mean over classes with at least one sample of recall_c (= sklearn's
        balanced_accuracy_score; classes without samples are left out);
      - ``macro_precision``, ``macro_recall``, ``macro_f1`` (unweighted means over all C classes, as
        sklearn's classification_report "macro avg"), ``weighted_f1`` (support-weighted);
      - ``per_class``: {class name: {"precision", "recall", "f1", "support"}}; a ratio with a zero
        denominator is 0 (sklearn's zero_division behaviour);
      - ``total``: number of samples.
    An all-zero matrix raises ValueError.
    """
    cm = _as_numpy(confusion).astype(np.float64)
    classes = list(classes)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"classification_summary needs a C×C matrix for {len(classes)} classes, got shape {cm.shape}")
    total = cm.sum()
    if total <= 0:
        raise ValueError("classification_summary got an empty confusion matrix (no samples)")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)

    def _ratio(num, den):
        out = np.zeros_like(num)
        np.divide(num, den, out=out, where=den > 0)
        return out

    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = support > 0
    per_class = {
        name: {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(classes)
    }
    return {
        "accuracy": float(tp.sum() / total),
        "mean_class_accuracy": float(recall[present].mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / total),
        "per_class": per_class,
        "total": int(total),
    }


class RegressionStats:
    """Sufficient statistics of a K-dimensional regression, accumulated in float64.

    Per dimension: n, Σx, Σy, Σx², Σy², Σxy, Σ|x−y|, Σ(x−y)² with x = prediction, y = target.
    ``as_tensor()`` gives them as one flat float64 tensor (8·K values) to all-reduce (sum);
    ``from_tensor()`` rebuilds the object (after summing such tensors). ``compute()`` returns
    per-dimension MSE, MAE, Pearson r and Lin's concordance correlation coefficient
        CCC = 2·cov(x, y) / (var(x) + var(y) + (μx − μy)²)
    with population (1/n) moments. Both correlations are NaN when a variance is zero (r) or the
    denominator is zero (CCC). Σ(x−y)² is kept directly so MSE has no cancellation error.
    """

    FIELDS = ("n", "sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy", "sum_abs", "sum_sq")

    def __init__(self, num_dims, names=None, device=None):
        if int(num_dims) < 1:
            raise ValueError(f"RegressionStats needs at least one dimension, got {num_dims}")
        self.num_dims = int(num_dims)
        self.names = list(names) if names is not None else [str(k) for k in range(self.num_dims)]
        if len(self.names) != self.num_dims:
            raise ValueError(f"{len(self.names)} names for {self.num_dims} dimensions")
        self.stats = torch.zeros(
            len(self.FIELDS),
            self.num_dims,
            dtype=torch.float64,
            device=torch.device(device) if device is not None else None,
        )

    def update(self, pred, target):
        """Add a batch: pred and target of the same shape B×K (K = num_dims)."""
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(
                f"RegressionStats.update needs prediction and target of one shape, got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if pred.dim() != 2 or pred.shape[1] != self.num_dims:
            raise ValueError(f"RegressionStats.update needs B×{self.num_dims} tensors, got {tuple(pred.shape)}")
        x = pred.detach().to(device=self.stats.device, dtype=torch.float64)
        y = target.detach().to(device=self.stats.device, dtype=torch.float64)
        diff = x - y
        batch = torch.stack(
            [
                torch.full((self.num_dims,), float(x.shape[0]), dtype=torch.float64, device=x.device),
                x.sum(0),
                y.sum(0),
                (x * x).sum(0),
                (y * y).sum(0),
                (x * y).sum(0),
                diff.abs().sum(0),
                (diff * diff).sum(0),
            ]
        )
        self.stats += batch
        return self

    def as_tensor(self):
        """A flat float64 copy of the statistics (8·K values), ready for all-reduce with SUM."""
        return self.stats.reshape(-1).clone()

    @classmethod
    def from_tensor(cls, tensor, num_dims=None, names=None):
        """Rebuild from a tensor made by ``as_tensor`` (possibly summed over processes)."""
        tensor = torch.as_tensor(tensor).detach().to(torch.float64).reshape(-1)
        fields = len(cls.FIELDS)
        if num_dims is None:
            if tensor.numel() % fields:
                raise ValueError(f"a RegressionStats tensor has a multiple of {fields} values, got {tensor.numel()}")
            num_dims = tensor.numel() // fields
        if tensor.numel() != fields * num_dims:
            raise ValueError(f"expected {fields * num_dims} values for {num_dims} dimensions, got {tensor.numel()}")
        out = cls(num_dims, names=names, device=tensor.device)
        out.stats = tensor.reshape(fields, num_dims).clone()
        return out

    @property
    def count(self):
        return int(self.stats[0, 0].item())

    def compute(self):
        """{"n", "mse", "mae", "pearson", "ccc"}: n an int, the others numpy arrays of K float64 values."""
        s = self.stats.cpu().numpy()
        n, sx, sy, sxx, syy, sxy, sabs, ssq = s
        if n[0] <= 0:
            raise ValueError("RegressionStats.compute called before any sample was added")
        mx, my = sx / n, sy / n
        var_x = np.maximum(sxx / n - mx * mx, 0.0)
        var_y = np.maximum(syy / n - my * my, 0.0)
        cov = sxy / n - mx * my
        with np.errstate(divide="ignore", invalid="ignore"):
            pearson = cov / np.sqrt(var_x * var_y)
            ccc = 2.0 * cov / (var_x + var_y + (mx - my) ** 2)
        return {"n": int(n[0]), "mse": ssq / n, "mae": sabs / n, "pearson": pearson, "ccc": ccc}

    def as_dict(self, prefix=""):
        """Flat {"<prefix><name>_<metric>": float} for CSV rows, e.g. {"V_mse": ..., "V_ccc": ...}."""
        result = self.compute()
        out = {}
        for metric in ("mse", "mae", "pearson", "ccc"):
            for k, name in enumerate(self.names):
                out[f"{prefix}{name}_{metric}"] = float(result[metric][k])
        return out


def save_confusion_matrix(confusion, classes, csv_path, png_path):
    """Save a C×C confusion matrix of counts as CSV (class names as header and index) and as PNG.

    The picture is :func:`confusion_figure`. Both files are written atomically (temporary file in the same
    folder + os.replace); either path may be None to skip that file.
    """
    import pandas as pd

    cm = _as_numpy(confusion)
    classes = list(classes)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"save_confusion_matrix needs a C×C matrix for {len(classes)} classes, got shape {cm.shape}")
    if np.all(np.equal(np.mod(cm, 1), 0)):
        cm = cm.astype(np.int64)
    if csv_path is not None:
        frame = pd.DataFrame(cm, index=pd.Index(classes, name="true\\pred"), columns=classes)
        with atomic_path(csv_path) as tmp:
            frame.to_csv(tmp)
    if png_path is not None:
        save_figure(confusion_figure(cm, classes), png_path, dpi=120)


def confusion_figure(cm, classes):
    """The confusion matrix of counts as a figure: counts in each cell, coloured by the row-normalised fraction
    (recall of each true class)."""
    cm, classes = _as_numpy(cm), list(classes)
    if np.all(np.equal(np.mod(cm, 1), 0)):
        cm = cm.astype(np.int64)
    counts = cm.astype(np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(4.0, 0.8 * len(classes) + 2.0)
    fig, axes = new_figure(1, 1, figsize=(size + 1.0, size))
    ax = axes[0, 0]
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            value = cm[i, j]
            text = f"{value:d}" if np.issubdtype(cm.dtype, np.integer) else f"{value:g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if frac[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig
